package store

import (
	"github.com/meridian-gw/meridian/proto/config/configtest"
	"testing"

	"google.golang.org/protobuf/types/known/timestamppb"

	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

func status(id string, applied uint64, nack uint64) *meridianv1.DataplaneStatus {
	st := &meridianv1.DataplaneStatus{
		Node:           &meridianv1.Node{Id: id},
		PeerAddress:    "127.0.0.1:5555",
		AppliedVersion: applied,
		LastSeen:       timestamppb.Now(),
	}
	if nack > 0 {
		st.LastNack = &meridianv1.Nack{Version: nack, Error: &meridianv1.ConfigError{Message: "bad"}, Time: timestamppb.Now()}
	}
	return st
}

func fleet(t *testing.T, s *Store) map[string]*meridianv1.DataplaneStatus {
	t.Helper()
	dps, _, err := s.ListDataplanes(testCtx(t))
	if err != nil {
		t.Fatalf("ListDataplanes: %v", err)
	}
	m := map[string]*meridianv1.DataplaneStatus{}
	for _, d := range dps {
		m[d.GetNode().GetId()] = d
	}
	return m
}

func TestDataplaneStates(t *testing.T) {
	const (
		synced       = meridianv1.DataplaneState_DATAPLANE_STATE_SYNCED
		stale        = meridianv1.DataplaneState_DATAPLANE_STATE_STALE
		nacked       = meridianv1.DataplaneState_DATAPLANE_STATE_NACKED
		disconnected = meridianv1.DataplaneState_DATAPLANE_STATE_DISCONNECTED
	)
	e := newEnv(t)
	s := e.store
	ctx := testCtx(t)
	mustApply(t, s, ApplyInput{Resources: []*meridianv1.Resource{configtest.Upstream("a", "127.0.0.1:1")}})
	mustApply(t, s, ApplyInput{Resources: []*meridianv1.Resource{configtest.Upstream("a", "127.0.0.1:2")}})
	// Current version is 2.

	steps := []struct {
		name   string
		do     func() error
		node   string
		state  meridianv1.DataplaneState
		actual uint64
	}{
		{"connect behind", func() error { return s.ConnectDataplane(ctx, "s1", status("dp1", 1, 0)) }, "dp1", stale, 1},
		{"ack current", func() error { return s.UpdateDataplane(ctx, "s1", status("dp1", 2, 0)) }, "dp1", synced, 2},
		{"connect current", func() error { return s.ConnectDataplane(ctx, "s2", status("dp2", 2, 0)) }, "dp2", synced, 2},
		{"nack current", func() error { return s.ConnectDataplane(ctx, "s3", status("dp3", 1, 2)) }, "dp3", nacked, 1},
		{"nack of an older version", func() error { return s.ConnectDataplane(ctx, "s4", status("dp4", 0, 1)) }, "dp4", stale, 0},
		{"disconnect", func() error { return s.DisconnectDataplane(ctx, "s1", status("dp1", 2, 0)) }, "dp1", disconnected, 2},
		// dp2 reconnects on a new stream; the old stream's late writes
		// must not undo that.
		{"take over", func() error { return s.ConnectDataplane(ctx, "s5", status("dp2", 1, 0)) }, "dp2", stale, 1},
		{"old stream update ignored", func() error { return s.UpdateDataplane(ctx, "s2", status("dp2", 2, 0)) }, "dp2", stale, 1},
		{"old stream disconnect ignored", func() error { return s.DisconnectDataplane(ctx, "s2", status("dp2", 2, 0)) }, "dp2", stale, 1},
	}
	for _, step := range steps {
		if err := step.do(); err != nil {
			t.Fatalf("%s: %v", step.name, err)
		}
		d := fleet(t, s)[step.node]
		if d.GetState() != step.state || d.GetAppliedVersion() != step.actual {
			t.Fatalf("%s: %s is %v at version %d, want %v at %d", step.name, step.node, d.GetState(), d.GetAppliedVersion(), step.state, step.actual)
		}
		if d.GetConnected() != (step.state != disconnected) || d.GetControlplane() != "cp-test" || d.GetLastSeen() == nil {
			t.Fatalf("%s: status %v", step.name, d)
		}
	}

	if err := s.ConnectDataplane(ctx, "s6", status("bad/id", 0, 0)); err == nil {
		t.Fatal("node id with a slash accepted")
	}

	// Another replica sees the whole fleet; closing this replica revokes
	// its lease, so its data planes show as disconnected at once.
	other := New(e.client, Options{ReplicaID: "cp-other"})
	defer other.Close()
	if n := len(fleet(t, other)); n != 4 {
		t.Fatalf("other replica sees %d data planes, want 4", n)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	for id, d := range fleet(t, other) {
		if d.GetState() != disconnected {
			t.Errorf("after Close %s is %v, want disconnected", id, d.GetState())
		}
	}
	if err := s.UpdateDataplane(ctx, "s5", status("dp2", 2, 0)); err == nil {
		t.Error("closed store accepted an update")
	}
}
