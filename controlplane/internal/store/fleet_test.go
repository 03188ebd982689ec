package store

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// sizes records what WatchFleet publishes.
type sizes struct {
	mu  sync.Mutex
	got []int
	ch  chan struct{}
}

func newSizes() *sizes { return &sizes{ch: make(chan struct{}, 1)} }

func (s *sizes) publish(n int) {
	s.mu.Lock()
	s.got = append(s.got, n)
	s.mu.Unlock()
	select {
	case s.ch <- struct{}{}:
	default:
	}
}

func (s *sizes) all() []int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.got)
}

// waitFor blocks until exactly the publications want have arrived.
func (s *sizes) waitFor(t *testing.T, want ...int) {
	t.Helper()
	timeout := time.After(20 * time.Second)
	for {
		got := s.all()
		if len(got) >= len(want) {
			if !slices.Equal(got, want) {
				t.Fatalf("published %v, want %v", got, want)
			}
			return
		}
		select {
		case <-s.ch:
		case <-timeout:
			t.Fatalf("published %v, want %v", got, want)
		}
	}
}

func TestWatchFleetCounts(t *testing.T) {
	e := newEnv(t)
	s, ctx := e.store, testCtx(t)
	other := New(e.client, Options{ReplicaID: "cp-other"})
	t.Cleanup(func() { other.Close() })

	got := newSizes()
	runWatch(t, func(ctx context.Context) error { return e.store.WatchFleet(ctx, got.publish) })
	want := []int{0}
	got.waitFor(t, want...)

	steps := []struct {
		name string
		do   func() error
		// size is the expected next publication; 0 means none.
		size int
	}{
		{"connect dp1", func() error { return s.ConnectDataplane(ctx, "s1", status("dp1", 0, 0)) }, 1},
		{"connect dp2", func() error { return s.ConnectDataplane(ctx, "s2", status("dp2", 0, 0)) }, 2},
		// Refreshes and reconnects of connected nodes do not change the size.
		{"refresh dp1", func() error { return s.UpdateDataplane(ctx, "s1", status("dp1", 1, 0)) }, 0},
		{"dp2 reconnects", func() error { return s.ConnectDataplane(ctx, "s3", status("dp2", 0, 0)) }, 0},
		{"old stream of dp2 disconnects", func() error { return s.DisconnectDataplane(ctx, "s2", status("dp2", 0, 0)) }, 0},
		// Another replica's data planes count too.
		{"dp3 on another replica", func() error { return other.ConnectDataplane(ctx, "s4", status("dp3", 0, 0)) }, 3},
		{"disconnect dp1", func() error { return s.DisconnectDataplane(ctx, "s1", status("dp1", 1, 0)) }, 2},
		// Closing a replica revokes its lease: its data planes leave at once.
		{"other replica closes", other.Close, 1},
	}
	for _, step := range steps {
		if err := step.do(); err != nil {
			t.Fatalf("%s: %v", step.name, err)
		}
		if step.size != 0 {
			want = append(want, step.size)
			got.waitFor(t, want...)
		}
	}
}

func TestWatchFleetRelistsAfterCompaction(t *testing.T) {
	e := newEnv(t)
	s, ctx := e.store, testCtx(t)
	got := newSizes()
	w := &fleetWatcher{store: s, publish: got.publish}
	if err := w.list(ctx); err != nil {
		t.Fatal(err)
	}
	// While the watcher is not watching, the fleet grows to 2 and shrinks
	// to 1, and the revisions it would resume from are compacted away.
	for _, id := range []string{"dp1", "dp2"} {
		if err := s.ConnectDataplane(ctx, id, status(id, 0, 0)); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.DisconnectDataplane(ctx, "dp1", status("dp1", 0, 0)); err != nil {
		t.Fatal(err)
	}
	resp, err := e.client.Get(ctx, "any")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.client.Compact(ctx, resp.Header.Revision, clientv3.WithCompactPhysical()); err != nil {
		t.Fatal(err)
	}

	runWatch(t, func(ctx context.Context) error { return s.follow(ctx, "fleet", w) })
	// Replaying would have published 1, 2, 1; the relist publishes 1 once.
	got.waitFor(t, 0, 1)
	// And it keeps watching after the relist.
	if err := s.ConnectDataplane(ctx, "dp3", status("dp3", 0, 0)); err != nil {
		t.Fatal(err)
	}
	got.waitFor(t, 0, 1, 2)
}

func TestFleetSize(t *testing.T) {
	f := NewFleetSize()
	early, cancelEarly := f.Subscribe()
	defer cancelEarly()
	select {
	case n := <-early:
		t.Fatalf("unknown size delivered %d", n)
	default:
	}

	for n := range 5 {
		f.Set(n)
	}
	// The slow subscriber skipped 0..3 and sees only the latest.
	if got := <-early; got != 4 {
		t.Fatalf("early subscriber got %d, want 4", got)
	}
	// Setting the same size again is not news.
	f.Set(4)
	select {
	case n := <-early:
		t.Fatalf("repeated size delivered %d", n)
	default:
	}

	late, cancelLate := f.Subscribe()
	if got := <-late; got != 4 {
		t.Fatalf("late subscriber got %d, want current 4", got)
	}
	cancelLate()
	f.Set(0)
	if got := <-early; got != 0 {
		t.Fatalf("early subscriber got %d, want 0", got)
	}
	select {
	case n := <-late:
		t.Fatalf("cancelled subscriber got %d", n)
	default:
	}
	if n := len(f.subs); n != 1 {
		t.Fatalf("%d subscribers left, want 1", n)
	}
}
