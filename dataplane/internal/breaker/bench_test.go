package breaker

import (
	"testing"
	"time"

	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

// benchBreaker has every trip condition on, so Record does all its work.
func benchBreaker(b *testing.B) *Breaker {
	b.Helper()
	br, err := New(testSpec(func(s *meridianv1.CircuitBreakerSpec) {
		s.Trip = &meridianv1.TripConditions{
			ErrorRate:           0.5,
			Latency:             &meridianv1.LatencyTrip{Quantile: 0.99, Threshold: dur(300 * time.Millisecond)},
			ConsecutiveFailures: 20,
		}
	}), Options{})
	if err != nil {
		b.Fatal(err)
	}
	return br
}

// BenchmarkAllowRecord is the proxy's path: AllowAt with the start time
// the proxy reads anyway, Record with the latency it measures anyway.
// Time moves on by 64µs every 64 requests, so the window turns over as it
// would at 1M requests/s and the judge runs every 25,000 requests.
func BenchmarkAllowRecord(b *testing.B) {
	br := benchBreaker(b)
	start := time.Now()
	now := start
	var i int64
	b.ReportAllocs()
	for b.Loop() {
		if i++; i%64 == 0 {
			now = start.Add(time.Duration(i) * time.Microsecond)
		}
		tk, err := br.AllowAt(now)
		if err != nil {
			b.Fatal(err)
		}
		br.Record(tk, Success, 20*time.Millisecond)
	}
}

// BenchmarkAllowRecordClock is the same with Allow reading the clock
// (time.Now) itself.
func BenchmarkAllowRecordClock(b *testing.B) {
	br := benchBreaker(b)
	b.ReportAllocs()
	for b.Loop() {
		tk, err := br.Allow()
		if err != nil {
			b.Fatal(err)
		}
		br.Record(tk, Success, 20*time.Millisecond)
	}
}

// BenchmarkAllowRecordParallel is BenchmarkAllowRecord from GOMAXPROCS
// goroutines sharing one breaker, each with its own 1M requests/s.
func BenchmarkAllowRecordParallel(b *testing.B) {
	br := benchBreaker(b)
	start := time.Now()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		now := start
		var i int64
		for pb.Next() {
			if i++; i%64 == 0 {
				now = start.Add(time.Duration(i) * time.Microsecond)
			}
			tk, err := br.AllowAt(now)
			if err != nil {
				b.Error(err)
				return
			}
			br.Record(tk, Success, 20*time.Millisecond)
		}
	})
}

// BenchmarkAllowRecordClockParallel is BenchmarkAllowRecordClock from
// GOMAXPROCS goroutines.
func BenchmarkAllowRecordClockParallel(b *testing.B) {
	br := benchBreaker(b)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			tk, err := br.Allow()
			if err != nil {
				b.Error(err)
				return
			}
			br.Record(tk, Success, 20*time.Millisecond)
		}
	})
}

// BenchmarkAllowOpen is the cost of refusing a request.
func BenchmarkAllowOpen(b *testing.B) {
	br := benchBreaker(b)
	start := time.Now()
	br.mu.Lock()
	br.open(0, Transition{Cause: CauseErrorRate})
	br.openUntil.Store(int64(time.Hour))
	br.mu.Unlock()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := br.AllowAt(start); err != ErrOpen {
			b.Fatal(err)
		}
	}
}

// BenchmarkJudge is one run of the judge over a full window of 100
// buckets, which happens at most every 25ms.
func BenchmarkJudge(b *testing.B) {
	br := benchBreaker(b)
	start := time.Now()
	for i := range 10_000 {
		tk, _ := br.AllowAt(start.Add(time.Duration(i) * time.Millisecond))
		br.Record(tk, Success, 20*time.Millisecond)
	}
	now := br.since(start.Add(10 * time.Second))
	b.ReportAllocs()
	for b.Loop() {
		if tr := br.judge(now); tr.Cause != "" {
			b.Fatal(tr.Cause)
		}
	}
}
