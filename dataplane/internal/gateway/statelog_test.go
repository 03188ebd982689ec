package gateway

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meridian-gw/meridian/dataplane/internal/breaker"
	"github.com/meridian-gw/meridian/dataplane/internal/upstream"
	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

// lines returns the lines whose msg is msg.
func (l *lockedBuffer) lines(t *testing.T, msg string) []map[string]any {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []map[string]any
	for line := range strings.Lines(l.b.String()) {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("line %q: %v", line, err)
		}
		if m["msg"] == msg {
			out = append(out, m)
		}
	}
	return out
}

// TestStateChangesLogged: the Gateway's pools and breakers report their
// transitions to its logger, named as metrics name them.
func TestStateChangesLogged(t *testing.T) {
	buf := &lockedBuffer{}
	g := New(Options{Logger: slog.New(slog.NewJSONHandler(buf, nil))})
	defer g.Close()
	spec := targets("127.0.0.1:1", "127.0.0.1:2")
	spec.HealthCheck = &meridianv1.HealthCheck{Passive: &meridianv1.PassiveHealthCheck{ConsecutiveFailures: 1}}
	route := routeRes("r", "up", prefix("/"))
	route.GetRoute().Spec.CircuitBreaker = "cb"
	snap := snapshot(1, upstreamRes("up", spec), breakerRes("cb", meridianv1.BreakerScope_BREAKER_SCOPE_ROUTE, 1), route)
	if err := g.Apply(context.Background(), snap, SourceControlPlane); err != nil {
		t.Fatal(err)
	}

	pool := g.Current().Upstream("up")
	tg, err := pool.Pick(nil)
	if err != nil {
		t.Fatal(err)
	}
	pool.Done(tg, upstream.Outcome{Status: 503})
	ejected := buf.lines(t, "upstream target ejected")
	if len(ejected) != 1 || ejected[0]["upstream"] != "up" || ejected[0]["target"] != tg.Address() || ejected[0]["level"] != "WARN" {
		t.Errorf("ejection lines %v, want one for up/%s", ejected, tg.Address())
	}

	b := g.Current().breakers["cb/route/r"].b
	tk, err := b.Allow()
	if err != nil {
		t.Fatal(err)
	}
	b.Record(tk, breaker.Failure, time.Millisecond)
	opened := buf.lines(t, "circuit breaker opened")
	if len(opened) != 1 || opened[0]["breaker"] != "cb" || opened[0]["route"] != "r" || opened[0]["upstream"] != "up" ||
		opened[0]["cause"] != breaker.CauseConsecutiveFailures || opened[0]["level"] != "WARN" {
		t.Errorf("breaker lines %v, want one for cb on route r", opened)
	}
}
