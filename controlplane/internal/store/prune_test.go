package store

import (
	"slices"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"
)

func TestPruneDataplanes(t *testing.T) {
	e := newEnv(t)
	s, ctx := e.store, testCtx(t)
	now := time.Now()
	old, cutoff := now.Add(-2*time.Hour), now.Add(-time.Hour)
	nodes := []struct {
		id        string
		lastSeen  time.Time // zero: never
		connected bool
	}{
		{"gone", old, false},
		{"never-seen", time.Time{}, false},
		{"connected-old", old, true},
		{"recent", now, false},
		{"at-cutoff", cutoff, false},
	}
	for _, n := range nodes {
		st := status(n.id, 0, 0)
		st.LastSeen = nil
		if !n.lastSeen.IsZero() {
			st.LastSeen = timestamppb.New(n.lastSeen)
		}
		if err := s.ConnectDataplane(ctx, "s-"+n.id, st); err != nil {
			t.Fatal(err)
		}
		if !n.connected {
			if err := s.DisconnectDataplane(ctx, "s-"+n.id, st); err != nil {
				t.Fatal(err)
			}
		}
	}

	pruned, err := s.PruneDataplanes(ctx, cutoff)
	if err != nil {
		t.Fatalf("PruneDataplanes: %v", err)
	}
	if want := []string{"gone", "never-seen"}; !slices.Equal(pruned, want) {
		t.Fatalf("pruned %v, want %v", pruned, want)
	}
	left := fleet(t, s)
	for _, id := range []string{"connected-old", "recent", "at-cutoff"} {
		if left[id] == nil {
			t.Errorf("%s was pruned", id)
		}
	}
	if len(left) != 3 {
		t.Errorf("left %d data planes, want 3", len(left))
	}
	if pruned, err := s.PruneDataplanes(ctx, cutoff); err != nil || len(pruned) != 0 {
		t.Fatalf("second PruneDataplanes = %v, %v; want nothing", pruned, err)
	}
}

// A node that reconnects between the list and the delete is kept.
func TestPruneDataplaneGuard(t *testing.T) {
	e := newEnv(t)
	s, ctx := e.store, testCtx(t)
	if err := s.ConnectDataplane(ctx, "s1", status("dp1", 0, 0)); err != nil {
		t.Fatal(err)
	}
	if err := s.DisconnectDataplane(ctx, "s1", status("dp1", 0, 0)); err != nil {
		t.Fatal(err)
	}
	resp, err := e.client.Get(ctx, s.dataplaneKey("dp1"))
	if err != nil {
		t.Fatal(err)
	}
	listed := resp.Kvs[0].ModRevision

	// Reconnected: the liveness key exists.
	if err := s.ConnectDataplane(ctx, "s2", status("dp1", 0, 0)); err != nil {
		t.Fatal(err)
	}
	if ok, err := s.pruneDataplane(ctx, "dp1", listed); err != nil || ok {
		t.Fatalf("prune of a reconnected node = %v, %v; want kept", ok, err)
	}
	// Reconnected and gone again: the status changed since the list.
	if err := s.DisconnectDataplane(ctx, "s2", status("dp1", 0, 0)); err != nil {
		t.Fatal(err)
	}
	if ok, err := s.pruneDataplane(ctx, "dp1", listed); err != nil || ok {
		t.Fatalf("prune of a status changed since the list = %v, %v; want kept", ok, err)
	}
	if fleet(t, s)["dp1"] == nil {
		t.Fatal("dp1's status was deleted")
	}
	resp, err = e.client.Get(ctx, s.dataplaneKey("dp1"))
	if err != nil {
		t.Fatal(err)
	}
	if ok, err := s.pruneDataplane(ctx, "dp1", resp.Kvs[0].ModRevision); err != nil || !ok {
		t.Fatalf("prune at the current revision = %v, %v; want deleted", ok, err)
	}
}
