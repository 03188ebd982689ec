// Package statelog writes the data plane's state-change log lines: an
// upstream target becoming unhealthy or healthy again (active health
// checks), ejected or returned (passive outlier detection), and a circuit
// breaker opening, going half-open and closing. Metrics show these states;
// the lines say when each changed and why, with the numbers behind it.
//
// A Logger is the upstream pools' and the breakers' Observer. Each
// transition is one line, unless the resource flaps: lines are limited per
// target (upstream and address) and per breaker instance by a Throttle, a
// token bucket that lets DefaultBurst lines through at once and then one
// every DefaultEvery. A line after refused ones carries their count as
// "suppressed". The log is written synchronously: transitions are rare, and
// the request path only pays for them when it makes one.
package statelog

import (
	"context"
	"fmt"
	"log/slog"
	"math"
	"time"

	"github.com/meridian-gw/meridian/dataplane/internal/breaker"
	"github.com/meridian-gw/meridian/dataplane/internal/upstream"
)

// Defaults of the Options a Logger is given as zero: at most 5 lines at
// once per target or breaker, then one every 10 s. A breaker's ordinary
// trip and recovery (opened, half-open, closed) and a failed recovery on
// top take 5; a target's ejection and return, or loss and recovery, 2.
const (
	DefaultEvery = 10 * time.Second
	DefaultBurst = 5
)

// Options tune a Logger. The zero value uses the defaults.
type Options struct {
	// Every and Burst are each key's token bucket: Burst lines at once,
	// then one more every Every.
	Every time.Duration
	Burst int
	// Now is the throttle's clock (lines take their time from the
	// handler). Default: time.Now.
	Now func() time.Time
}

// Logger writes the state-change lines to a slog.Logger. It is safe for
// concurrent use.
type Logger struct {
	log      *slog.Logger
	now      func() time.Time
	targets  *Throttle[targetKey]
	breakers *Throttle[BreakerNames]
}

type targetKey struct{ upstream, target string }

var (
	_ upstream.Observer = (*Logger)(nil)
	_ breaker.Observer  = (*breakerObserver)(nil)
)

// New returns a Logger writing to log.
func New(log *slog.Logger, opts Options) *Logger {
	if opts.Every <= 0 {
		opts.Every = DefaultEvery
	}
	if opts.Burst < 1 {
		opts.Burst = DefaultBurst
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	return &Logger{
		log:      log,
		now:      opts.Now,
		targets:  NewThrottle[targetKey](opts.Every, opts.Burst),
		breakers: NewThrottle[BreakerNames](opts.Every, opts.Burst),
	}
}

// emit writes one line for key unless its level is off or the throttle
// refuses it; attrs builds the line's fields only when it is written.
func emit[K comparable](l *Logger, th *Throttle[K], key K, level slog.Level, msg string, attrs func() []slog.Attr) {
	ctx := context.Background()
	if !l.log.Enabled(ctx, level) {
		return
	}
	ok, suppressed := th.Allow(key, l.now())
	if !ok {
		return
	}
	a := attrs()
	if suppressed > 0 {
		a = append(a, slog.Int("suppressed", suppressed))
	}
	l.log.LogAttrs(ctx, level, msg, a...)
}

// TargetTransition implements upstream.Observer.
func (l *Logger) TargetTransition(tr upstream.Transition) {
	level, msg := slog.LevelInfo, ""
	switch {
	case tr.To == upstream.Unhealthy:
		level, msg = slog.LevelWarn, "upstream target unhealthy"
	case tr.To == upstream.Ejected:
		level, msg = slog.LevelWarn, "upstream target ejected"
	case tr.From == upstream.Ejected:
		msg = "upstream target returned"
	default:
		msg = "upstream target healthy"
	}
	emit(l, l.targets, targetKey{tr.Upstream, tr.Target}, level, msg, func() []slog.Attr {
		a := []slog.Attr{
			slog.String("upstream", tr.Upstream), slog.String("target", tr.Target),
			slog.String("check", tr.Check.String()),
			slog.String("from", tr.From.String()), slog.String("to", tr.To.String()),
		}
		switch {
		case tr.To == upstream.Unhealthy && tr.First:
			a = append(a, slog.String("reason", "first probe failed: "+errText(tr.Err)),
				slog.Int("failed_probes", tr.Count), slog.Int("threshold", tr.Threshold))
		case tr.To == upstream.Unhealthy:
			a = append(a, slog.String("reason", streak(tr.Count, "failed probe")+": "+errText(tr.Err)),
				slog.Int("failed_probes", tr.Count), slog.Int("threshold", tr.Threshold))
		case tr.To == upstream.Ejected:
			a = append(a, slog.String("reason", fmt.Sprintf("%s (last: %s), ejected for %s",
				streak(tr.Count, "failed request"), errText(tr.Err), tr.Ejection)),
				slog.Int("failed_requests", tr.Count), slog.Int("threshold", tr.Threshold),
				slog.String("ejection", tr.Ejection.String()), slog.Int("ejections", tr.Ejections))
		case tr.From == upstream.Ejected:
			a = append(a, slog.String("reason", fmt.Sprintf("ejection of %s ended", tr.Ejection)),
				slog.String("ejection", tr.Ejection.String()))
		default:
			a = append(a, slog.String("reason", streak(tr.Count, "passed probe")),
				slog.Int("passed_probes", tr.Count), slog.Int("threshold", tr.Threshold))
		}
		return a
	})
}

// BreakerNames name a breaker instance in its lines: its CircuitBreaker and
// what its scope applies it to. A part the scope does not use is "" and
// left out of the line.
type BreakerNames struct {
	Breaker, Upstream, Route, Target string
}

// Breaker returns the Observer of the breaker instance names name. A nil
// Logger returns nil.
func (l *Logger) Breaker(names BreakerNames) breaker.Observer {
	if l == nil {
		return nil
	}
	return &breakerObserver{l: l, names: names}
}

type breakerObserver struct {
	l     *Logger
	names BreakerNames
}

// BreakerTransition implements breaker.Observer.
func (o *breakerObserver) BreakerTransition(tr breaker.Transition) {
	level, msg := slog.LevelInfo, "circuit breaker closed"
	switch tr.To {
	case breaker.Open:
		level, msg = slog.LevelWarn, "circuit breaker opened"
	case breaker.HalfOpen:
		msg = "circuit breaker half-open"
	}
	emit(o.l, o.l.breakers, o.names, level, msg, func() []slog.Attr {
		a := make([]slog.Attr, 0, 16)
		a = append(a, slog.String("breaker", o.names.Breaker))
		for _, n := range [...]struct{ key, value string }{
			{"route", o.names.Route}, {"upstream", o.names.Upstream}, {"target", o.names.Target},
		} {
			if n.value != "" {
				a = append(a, slog.String(n.key, n.value))
			}
		}
		a = append(a, slog.String("from", tr.From.String()), slog.String("to", tr.To.String()))
		switch tr.To {
		case breaker.Open:
			a = append(a, slog.String("cause", tr.Cause))
			a = appendTrip(a, tr)
			a = append(a, slog.String("open_for", tr.OpenFor.String()))
		case breaker.HalfOpen:
			a = append(a, slog.String("reason", "open time is up: probing"),
				slog.Int("probes", tr.Probes), slog.Int("successes_needed", tr.Successes))
		case breaker.Closed:
			a = append(a, slog.String("reason", streak(tr.Successes, "successful probe")),
				slog.String("probe", tr.Probe.String()), slog.String("probe_latency", tr.ProbeLatency.String()),
				slog.Int("successful_probes", tr.Successes))
		}
		return a
	})
}

// appendTrip appends the reason of a trip and the numbers behind it.
func appendTrip(a []slog.Attr, tr breaker.Transition) []slog.Attr {
	switch tr.Cause {
	case breaker.CauseErrorRate:
		ratio := ratio(tr.Failures, tr.Requests)
		return append(a,
			slog.String("reason", fmt.Sprintf("%d of %d requests failed in the last %s: ratio %g, threshold %g",
				tr.Failures, tr.Requests, tr.Window, ratio, round(tr.Threshold))),
			slog.Int64("requests", tr.Requests), slog.Int64("failures", tr.Failures),
			slog.Float64("failure_ratio", ratio), slog.Float64("threshold", round(tr.Threshold)),
			slog.String("window", tr.Window.String()))
	case breaker.CauseLatency:
		ratio := ratio(tr.Slow, tr.Requests)
		return append(a,
			slog.String("reason", fmt.Sprintf("%d of %d requests slower than %s in the last %s: ratio %g, threshold %g",
				tr.Slow, tr.Requests, tr.LatencyThreshold, tr.Window, ratio, round(tr.Threshold))),
			slog.Int64("requests", tr.Requests), slog.Int64("slow", tr.Slow),
			slog.Float64("slow_ratio", ratio), slog.Float64("threshold", round(tr.Threshold)),
			slog.String("latency_threshold", tr.LatencyThreshold.String()),
			slog.String("window", tr.Window.String()))
	case breaker.CauseConsecutiveFailures:
		return append(a,
			slog.String("reason", streak(int(tr.Failures), "failure")),
			slog.Int64("consecutive_failures", tr.Failures), slog.Int64("threshold", int64(tr.Threshold)))
	case breaker.CauseProbe:
		probe := tr.Probe.String()
		if tr.Probe == breaker.Success {
			probe = "slow" // a success reopens the breaker only by being slow
		}
		reason := fmt.Sprintf("half-open probe failed: %s after %s", probe, tr.ProbeLatency)
		if tr.LatencyThreshold > 0 && tr.Probe == breaker.Success {
			reason += fmt.Sprintf(", over %s", tr.LatencyThreshold)
		}
		return append(a, slog.String("reason", reason),
			slog.String("probe", probe), slog.String("probe_latency", tr.ProbeLatency.String()))
	}
	return a
}

// ratio is n/of rounded, 0 when of is.
func ratio(n, of int64) float64 {
	if of == 0 {
		return 0
	}
	return round(float64(n) / float64(of))
}

// round rounds x to 4 decimals, so that a line shows 0.1 for a threshold
// computed as 1-0.9.
func round(x float64) float64 { return math.Round(x*1e4) / 1e4 }

// streak says "1 failure" or "3 consecutive failures".
func streak(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return fmt.Sprintf("%d consecutive %ss", n, what)
}

func errText(err error) string {
	if err == nil {
		return "unknown error"
	}
	return err.Error()
}
