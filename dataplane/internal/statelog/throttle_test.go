package statelog

import (
	"testing"
	"time"
)

func TestThrottle(t *testing.T) {
	type step struct {
		key        string
		at         time.Duration // since the start
		ok         bool
		suppressed int
	}
	tests := []struct {
		name  string
		every time.Duration
		burst int
		steps []step
	}{
		{
			name: "burst then one every interval", every: 10 * time.Second, burst: 3,
			steps: []step{
				{"a", 0, true, 0}, {"a", 0, true, 0}, {"a", time.Second, true, 0},
				{"a", 2 * time.Second, false, 0}, {"a", 3 * time.Second, false, 0},
				// The first token is back 10 s after the first line; the
				// line carries the three refused before it.
				{"a", 9 * time.Second, false, 0},
				{"a", 10 * time.Second, true, 3},
				{"a", 11 * time.Second, false, 0},
				{"a", 20 * time.Second, true, 1},
			},
		},
		{
			name: "keys are independent", every: 10 * time.Second, burst: 1,
			steps: []step{
				{"a", 0, true, 0}, {"a", time.Second, false, 0},
				{"b", time.Second, true, 0}, {"b", 2 * time.Second, false, 0},
				{"a", 10 * time.Second, true, 1}, {"b", 10 * time.Second, false, 0},
				{"b", 11 * time.Second, true, 2},
			},
		},
		{
			name: "a quiet key refills to the burst and no more", every: time.Second, burst: 2,
			steps: []step{
				{"a", 0, true, 0}, {"a", 0, true, 0}, {"a", 0, false, 0},
				{"a", time.Hour, true, 1}, {"a", time.Hour, true, 0}, {"a", time.Hour, false, 0},
			},
		},
		{
			name: "burst of one is one line per interval", every: 5 * time.Second, burst: 1,
			steps: []step{
				{"a", 0, true, 0}, {"a", 4999 * time.Millisecond, false, 0},
				{"a", 5 * time.Second, true, 1}, {"a", 10 * time.Second, true, 0},
			},
		},
	}
	start := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			th := NewThrottle[string](tt.every, tt.burst)
			for i, s := range tt.steps {
				ok, n := th.Allow(s.key, start.Add(s.at))
				if ok != s.ok || n != s.suppressed {
					t.Errorf("step %d (%s at %s): Allow = %v, %d; want %v, %d", i, s.key, s.at, ok, n, s.ok, s.suppressed)
				}
			}
		})
	}
}

func TestThrottleForgets(t *testing.T) {
	th := NewThrottle[string](time.Second, 1)
	start := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	th.Allow("quiet", start)
	th.Allow("owed", start)
	th.Allow("owed", start) // refused: owed a count
	if n := th.len(); n != 2 {
		t.Fatalf("%d keys, want 2", n)
	}
	// A full bucket with nothing owed is dropped at the next sweep; one
	// owed a count is kept for its next line...
	th.Allow("other", start.Add(time.Minute))
	if n := th.len(); n != 2 {
		t.Fatalf("after a minute: %d keys, want owed and other", n)
	}
	if ok, n := th.Allow("owed", start.Add(2*time.Minute)); !ok || n != 1 {
		t.Fatalf("owed key: Allow = %v, %d; want true, 1", ok, n)
	}
	// ...but not for ever.
	th.Allow("owed", start.Add(2*time.Minute)) // refused again
	th.Allow("other", start.Add(2*time.Minute+forgetAfter+time.Second))
	if n := th.len(); n != 1 {
		t.Fatalf("after %s: %d keys, want only the new line's", forgetAfter, n)
	}
}
