package global

import (
	"context"
	"math"
	"strconv"
	"sync/atomic"
	"testing"
	"time"
)

// benchParallelism multiplies GOMAXPROCS into the number of goroutines
// deciding at once: decisions wait on Redis, not on the CPU, so a data plane
// serving real traffic has many more in flight than it has cores.
const benchParallelism = 16

// benchLimit never denies at benchmark rates (2^31-1 per second), so
// decisions/s measures Redis-backed decisions, not local denials.
func benchLimit(name string, batch int64) Limit {
	return Limit{Name: name, Algorithm: tokenBucket, Limit: math.MaxInt32, Period: time.Second, Batch: batch}
}

// BenchmarkAllow measures decisions per second of one Limiter against a real
// redis-server, and the script commands Redis ran per decision, read from
// INFO commandstats (cmdstat_evalsha + cmdstat_eval) rather than from the
// Limiter's own Stats.
func BenchmarkAllow(b *testing.B) {
	b.Run("exact/hot-key", func(b *testing.B) {
		benchAllow(b, benchLimit("bench-hot", 0), func(int64) string { return "hot" })
	})
	b.Run("exact/key-per-goroutine", func(b *testing.B) {
		// Each goroutine decides its own key one request at a time, so no
		// two decisions ever share a script call.
		benchAllow(b, benchLimit("bench-keys", 0), func(g int64) string { return "g" + strconv.FormatInt(g, 10) })
	})
	b.Run("batch20/hot-key", func(b *testing.B) {
		benchAllow(b, benchLimit("bench-batch", 20), func(int64) string { return "hot" })
	})
}

// benchAllow runs b.N decisions of limit from parallel goroutines, goroutine
// g using key(g), on a fresh redis-server and Limiter.
func benchAllow(b *testing.B, limit Limit, key func(g int64) string) {
	srv := startRedis(b)
	l := New(srv.client(), Options{Timeout: time.Second, Logger: quietOptions().Logger})
	// Load the script so the measured calls are EVALSHA only.
	if _, err := l.Allow(context.Background(), limit, "warm-up"); err != nil {
		b.Fatalf("Allow: %v", err)
	}
	before, redisBefore := l.Stats(), srv.scriptCalls()
	var goroutines atomic.Int64
	b.SetParallelism(benchParallelism)
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		k := key(goroutines.Add(1))
		ctx := context.Background()
		for pb.Next() {
			d, err := l.Allow(ctx, limit, k)
			if err != nil {
				b.Errorf("Allow: %v", err)
				return
			}
			if !d.Allowed {
				b.Errorf("denied under a non-limiting limit: %+v", d)
				return
			}
		}
	})
	b.StopTimer()
	st := l.Stats()
	decisions := float64(st.Decisions - before.Decisions)
	b.ReportMetric(decisions/b.Elapsed().Seconds(), "decisions/s")
	b.ReportMetric(float64(srv.scriptCalls()-redisBefore)/decisions, "cmds/decision")
	b.ReportMetric(float64(st.ScriptCalls-before.ScriptCalls)/decisions, "calls/decision")
}
