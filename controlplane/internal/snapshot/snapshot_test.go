package snapshot_test

import (
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/meridian-gw/meridian/controlplane/internal/snapshot"
	"github.com/meridian-gw/meridian/proto/config"
	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

func upstream(name, addr string) *meridianv1.Resource {
	return &meridianv1.Resource{Kind: &meridianv1.Resource_Upstream{Upstream: &meridianv1.Upstream{
		Metadata: &meridianv1.Metadata{Name: name},
		Spec:     &meridianv1.UpstreamSpec{Targets: []*meridianv1.Target{{Address: addr}}},
	}}}
}

func route(name, up string) *meridianv1.Resource {
	return &meridianv1.Resource{Kind: &meridianv1.Resource_Route{Route: &meridianv1.Route{
		Metadata: &meridianv1.Metadata{Name: name},
		Spec: &meridianv1.RouteSpec{
			Upstream: up,
			Match:    &meridianv1.RouteMatch{Paths: []*meridianv1.PathMatch{{Kind: &meridianv1.PathMatch_Prefix{Prefix: "/"}}}},
		},
	}}}
}

func TestNew(t *testing.T) {
	tests := []struct {
		name      string
		version   uint64
		resources []*meridianv1.Resource
		wantErr   bool
		wantKeys  []string
	}{
		{name: "empty", version: 1, wantKeys: []string{}},
		{
			name:      "sorted by kind then name",
			version:   3,
			resources: []*meridianv1.Resource{route("r", "b"), upstream("b", "x:1"), upstream("a", "x:2")},
			wantKeys:  []string{"Upstream/a", "Upstream/b", "Route/r"},
		},
		{name: "version zero", version: 0, wantErr: true},
		{name: "nil resource", version: 1, resources: []*meridianv1.Resource{nil}, wantErr: true},
		{name: "no kind", version: 1, resources: []*meridianv1.Resource{{}}, wantErr: true},
		{name: "no name", version: 1, resources: []*meridianv1.Resource{upstream("", "x:1")}, wantErr: true},
		{name: "duplicate", version: 1, resources: []*meridianv1.Resource{upstream("a", "x:1"), upstream("a", "x:2")}, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := snapshot.New(tt.version, time.Time{}, tt.resources)
			if tt.wantErr {
				if err == nil {
					t.Fatal("New succeeded, want error")
				}
				return
			}
			if err != nil {
				t.Fatalf("New: %v", err)
			}
			if s.Version() != tt.version {
				t.Errorf("Version = %d, want %d", s.Version(), tt.version)
			}
			keys := []string{}
			for _, r := range s.Resources() {
				keys = append(keys, config.Key(r))
			}
			if len(keys) != len(tt.wantKeys) {
				t.Fatalf("keys = %v, want %v", keys, tt.wantKeys)
			}
			for i := range keys {
				if keys[i] != tt.wantKeys[i] {
					t.Fatalf("keys = %v, want %v", keys, tt.wantKeys)
				}
			}
			if s.Hash() != config.Hash(tt.resources) {
				t.Errorf("Hash = %s, want config.Hash of the input", s.Hash())
			}
		})
	}
}

func TestNewDoesNotReorderInput(t *testing.T) {
	in := []*meridianv1.Resource{route("r", "a"), upstream("a", "x:1")}
	if _, err := snapshot.New(1, time.Time{}, in); err != nil {
		t.Fatal(err)
	}
	if config.Kind(in[0]) != config.KindRoute {
		t.Fatal("New reordered its input")
	}
}

func TestMessage(t *testing.T) {
	committed := time.Date(2025, 3, 1, 12, 0, 0, 5, time.UTC)
	s, err := snapshot.New(7, committed, []*meridianv1.Resource{upstream("a", "x:1")})
	if err != nil {
		t.Fatal(err)
	}
	if !s.Committed().Equal(committed) {
		t.Fatalf("Committed() = %v, want %v", s.Committed(), committed)
	}
	m1, m2 := s.Message("n1"), s.Message("n2")
	if m1.GetNonce() != "n1" || m2.GetNonce() != "n2" {
		t.Fatalf("nonces = %q, %q", m1.GetNonce(), m2.GetNonce())
	}
	if m1.GetVersion() != 7 || m1.GetHash() != s.Hash() || len(m1.GetResources()) != 1 {
		t.Fatalf("message = %v", m1)
	}
	if !proto.Equal(m1.GetResources()[0], upstream("a", "x:1")) {
		t.Fatalf("resource = %v", m1.GetResources()[0])
	}
	if s.Message("").GetNonce() != "" {
		t.Fatal("message without nonce has one")
	}
	// created_at is the commit time, the same on every replica.
	if got := m1.GetCreatedAt().AsTime(); !got.Equal(committed) {
		t.Fatalf("created_at = %v, want the commit time %v", got, committed)
	}
}

func TestUnknownCommitTime(t *testing.T) {
	before := time.Now()
	s, err := snapshot.New(1, time.Time{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !s.Committed().IsZero() {
		t.Fatalf("Committed() = %v, want zero", s.Committed())
	}
	// The build time stands in for created_at.
	if got := s.Message("n").GetCreatedAt().AsTime(); got.Before(before) {
		t.Fatalf("created_at = %v, before the build started at %v", got, before)
	}
}

func mustNew(t *testing.T, v uint64) *snapshot.Snapshot {
	t.Helper()
	s, err := snapshot.New(v, time.Time{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestCacheSubscribeGetsLatestOnly(t *testing.T) {
	c := snapshot.NewCache()
	if c.Current() != nil {
		t.Fatal("new cache has a snapshot")
	}
	early, cancelEarly := c.Subscribe()
	defer cancelEarly()
	select {
	case s := <-early:
		t.Fatalf("empty cache delivered version %d", s.Version())
	default:
	}

	for v := uint64(1); v <= 5; v++ {
		if !c.Set(mustNew(t, v)) {
			t.Fatalf("Set(%d) = false", v)
		}
	}
	// The slow subscriber skipped 1..4 and sees only the latest.
	if got := (<-early).Version(); got != 5 {
		t.Fatalf("early subscriber got %d, want 5", got)
	}
	select {
	case s := <-early:
		t.Fatalf("second receive got %d, want nothing", s.Version())
	default:
	}

	late, cancelLate := c.Subscribe()
	defer cancelLate()
	if got := (<-late).Version(); got != 5 {
		t.Fatalf("late subscriber got %d, want current 5", got)
	}
}

func TestCacheIgnoresOlderVersions(t *testing.T) {
	c := snapshot.NewCache()
	c.Set(mustNew(t, 4))
	tests := []struct {
		version uint64
		want    bool
		current uint64
	}{
		{version: 4, want: false, current: 4},
		{version: 3, want: false, current: 4},
		{version: 6, want: true, current: 6},
	}
	for _, tt := range tests {
		if got := c.Set(mustNew(t, tt.version)); got != tt.want {
			t.Errorf("Set(%d) = %v, want %v", tt.version, got, tt.want)
		}
		if got := c.Current().Version(); got != tt.current {
			t.Errorf("after Set(%d) current = %d, want %d", tt.version, got, tt.current)
		}
	}
	if c.Set(nil) {
		t.Error("Set(nil) = true")
	}
}

func TestCacheCancelStopsDelivery(t *testing.T) {
	c := snapshot.NewCache()
	ch, cancel := c.Subscribe()
	cancel()
	c.Set(mustNew(t, 1))
	select {
	case s := <-ch:
		t.Fatalf("cancelled subscriber got %d", s.Version())
	default:
	}
}
