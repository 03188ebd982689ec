package store

import (
	"slices"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

func principals(recs []*meridianv1.AuditRecord) []string {
	var out []string
	for _, r := range recs {
		out = append(out, r.GetPrincipal())
	}
	return out
}

func TestAudit(t *testing.T) {
	e := newEnv(t)
	s, ctx := e.store, testCtx(t)
	t0 := time.Unix(1700000000, 0)
	at := func(sec int) time.Time { return t0.Add(time.Duration(sec) * time.Second) }
	// Appended out of order: keys order them by time. p10 sorts before p2
	// as text but not as time, which the zero padding keeps apart.
	for _, r := range []struct {
		principal string
		sec       int
	}{{"p3", 3}, {"p0", 0}, {"p10", 10}, {"p2", 2}, {"p1", 1}} {
		rec := &meridianv1.AuditRecord{Time: timestamppb.New(at(r.sec)), Principal: r.principal, Outcome: "ok"}
		if err := s.AppendAudit(ctx, rec); err != nil {
			t.Fatalf("AppendAudit %s: %v", r.principal, err)
		}
	}

	tests := []struct {
		name  string
		since time.Time
		limit int
		want  []string
	}{
		{"all", time.Time{}, 0, []string{"p0", "p1", "p2", "p3", "p10"}},
		{"since is inclusive", at(2), 0, []string{"p2", "p3", "p10"}},
		{"since between records", at(2).Add(time.Nanosecond), 0, []string{"p3", "p10"}},
		{"newest two, oldest first", time.Time{}, 2, []string{"p3", "p10"}},
		{"since and limit", at(1), 10, []string{"p1", "p2", "p3", "p10"}},
		{"since and a small limit", at(1), 1, []string{"p10"}},
		{"since after all", at(11), 0, nil},
	}
	for _, tt := range tests {
		recs, err := s.ListAudit(ctx, tt.since, tt.limit)
		if err != nil {
			t.Fatalf("%s: ListAudit: %v", tt.name, err)
		}
		if got := principals(recs); !slices.Equal(got, tt.want) {
			t.Errorf("%s: ListAudit = %v, want %v", tt.name, got, tt.want)
		}
	}

	prunes := []struct {
		before time.Time
		n      int64
		left   []string
	}{
		{time.Time{}, 0, []string{"p0", "p1", "p2", "p3", "p10"}},
		// Records at before are kept.
		{at(2), 2, []string{"p2", "p3", "p10"}},
		{at(2), 0, []string{"p2", "p3", "p10"}},
		{at(100), 3, nil},
	}
	for _, p := range prunes {
		n, err := s.PruneAudit(ctx, p.before)
		if err != nil || n != p.n {
			t.Fatalf("PruneAudit(%v) = %d, %v; want %d", p.before, n, err, p.n)
		}
		recs, err := s.ListAudit(ctx, time.Time{}, 0)
		if got := principals(recs); err != nil || !slices.Equal(got, p.left) {
			t.Fatalf("after PruneAudit(%v): %v, %v; want %v", p.before, got, err, p.left)
		}
	}
}

func TestAuditRecordsOfOneInstant(t *testing.T) {
	e := newEnv(t)
	s, ctx := e.store, testCtx(t)
	now := time.Unix(1700000000, 0)
	s.now = func() time.Time { return now }
	// Two replicas may record the same nanosecond; both are kept. A record
	// without a time gets the store's clock.
	for _, rec := range []*meridianv1.AuditRecord{
		{Time: timestamppb.New(now), Principal: "a"},
		{Time: timestamppb.New(now), Principal: "b"},
		{Principal: "c"},
	} {
		if err := s.AppendAudit(ctx, rec); err != nil {
			t.Fatalf("AppendAudit: %v", err)
		}
	}
	recs, err := s.ListAudit(ctx, now, 0)
	if err != nil || len(recs) != 3 {
		t.Fatalf("ListAudit = %v, %v; want 3 records", recs, err)
	}
	for _, r := range recs {
		if !r.GetTime().AsTime().Equal(now) {
			t.Errorf("record %s at %v, want %v", r.GetPrincipal(), r.GetTime().AsTime(), now)
		}
	}
	if got := principals(recs); !slices.Contains(got, "a") || !slices.Contains(got, "b") || !slices.Contains(got, "c") {
		t.Fatalf("records %v, want a, b and c", got)
	}
}
