package store

import (
	"context"
	"errors"
	"maps"
	"slices"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/meridian-gw/meridian/proto/identity"
	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

// joinToken is a stored token with secret, created at created, allowing
// maxUses enrolments (0 = any) until expires (zero = never).
func joinToken(id, secret string, created time.Time, maxUses uint32, expires time.Time) *meridianv1.StoredJoinToken {
	tok := &meridianv1.StoredJoinToken{
		Info: &meridianv1.JoinToken{
			Id:        id,
			CreatedAt: timestamppb.New(created),
			CreatedBy: "admin",
			MaxUses:   maxUses,
			Labels:    map[string]string{"zone": "eu-1"},
		},
		SecretSha256: identity.SecretHash(secret),
	}
	if !expires.IsZero() {
		tok.Info.ExpiresAt = timestamppb.New(expires)
	}
	return tok
}

func mustCreateToken(t *testing.T, s *Store, tok *meridianv1.StoredJoinToken) {
	t.Helper()
	if err := s.CreateJoinToken(testCtx(t), tok); err != nil {
		t.Fatalf("CreateJoinToken %s: %v", tok.GetInfo().GetId(), err)
	}
}

func tokenIDs(toks []*meridianv1.StoredJoinToken) []string {
	var ids []string
	for _, tok := range toks {
		ids = append(ids, tok.GetInfo().GetId())
	}
	return ids
}

func TestJoinTokenRecords(t *testing.T) {
	e := newEnv(t)
	s, ctx := e.store, testCtx(t)
	t0 := time.Unix(1700000000, 0)
	// Creation time orders the list; the id breaks ties.
	for _, tok := range []*meridianv1.StoredJoinToken{
		joinToken("tokc", "secret", t0.Add(time.Second), 0, time.Time{}),
		joinToken("toka", "secret", t0.Add(time.Second), 0, time.Time{}),
		joinToken("tokb", "secret", t0, 0, time.Time{}),
	} {
		mustCreateToken(t, s, tok)
	}

	bad := []struct {
		name string
		tok  *meridianv1.StoredJoinToken
		want error
	}{
		{"same id", joinToken("toka", "other", t0, 0, time.Time{}), ErrConflict},
		{"no id", joinToken("", "secret", t0, 0, time.Time{}), ErrInvalid},
		{"slash in id", joinToken("a/b", "secret", t0, 0, time.Time{}), ErrInvalid},
		{"no secret hash", &meridianv1.StoredJoinToken{Info: &meridianv1.JoinToken{Id: "tokd"}}, ErrInvalid},
	}
	for _, tt := range bad {
		if err := s.CreateJoinToken(ctx, tt.tok); !errors.Is(err, tt.want) {
			t.Errorf("CreateJoinToken %s: %v, want %v", tt.name, err, tt.want)
		}
	}

	toks, err := s.ListJoinTokens(ctx)
	if err != nil {
		t.Fatalf("ListJoinTokens: %v", err)
	}
	if got, want := tokenIDs(toks), []string{"tokb", "toka", "tokc"}; !slices.Equal(got, want) {
		t.Fatalf("ListJoinTokens = %v, want %v", got, want)
	}
	// The conflicting create did not overwrite the first token.
	if !proto.Equal(toks[1], joinToken("toka", "secret", t0.Add(time.Second), 0, time.Time{})) {
		t.Errorf("toka stored as %v", toks[1])
	}

	if err := s.DeleteJoinToken(ctx, "toka"); err != nil {
		t.Fatalf("DeleteJoinToken: %v", err)
	}
	if err := s.DeleteJoinToken(ctx, "toka"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("second DeleteJoinToken: %v, want ErrNotFound", err)
	}
	toks, err = s.ListJoinTokens(ctx)
	if got, want := tokenIDs(toks), []string{"tokb", "tokc"}; err != nil || !slices.Equal(got, want) {
		t.Fatalf("ListJoinTokens after delete = %v, %v; want %v", got, err, want)
	}
}

// recorder keeps what a watcher publishes.
type recorder[T any] struct {
	mu  sync.Mutex
	got []T
	ch  chan struct{}
}

func newRecorder[T any]() *recorder[T] { return &recorder[T]{ch: make(chan struct{}, 1)} }

func (r *recorder[T]) add(v T) {
	r.mu.Lock()
	r.got = append(r.got, v)
	r.mu.Unlock()
	select {
	case r.ch <- struct{}{}:
	default:
	}
}

func (r *recorder[T]) all() []T {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.got)
}

// waitUntil blocks until ok accepts what was published so far.
func (r *recorder[T]) waitUntil(t *testing.T, what string, ok func([]T) bool) {
	t.Helper()
	timeout := time.After(20 * time.Second)
	for !ok(r.all()) {
		select {
		case <-r.ch:
		case <-timeout:
			t.Fatalf("waiting for %s; published %v", what, r.all())
		}
	}
}

func TestWatchJoinTokens(t *testing.T) {
	e := newEnv(t)
	s, ctx := e.store, testCtx(t)
	now := time.Now()
	mustCreateToken(t, s, joinToken("toka", "secret", now, 0, time.Time{}))
	got := newRecorder[map[string]*meridianv1.StoredJoinToken]()
	runWatch(t, func(ctx context.Context) error { return s.WatchJoinTokens(ctx, got.add) })

	// latest reports whether the newest publication holds exactly ids,
	// with toka used uses times.
	latest := func(uses uint32, ids ...string) func([]map[string]*meridianv1.StoredJoinToken) bool {
		return func(pubs []map[string]*meridianv1.StoredJoinToken) bool {
			if len(pubs) == 0 {
				return false
			}
			last := pubs[len(pubs)-1]
			return slices.Equal(slices.Sorted(maps.Keys(last)), ids) &&
				(last["toka"] == nil || last["toka"].GetInfo().GetUses() == uses)
		}
	}
	got.waitUntil(t, "the initial list", latest(0, "toka"))
	steps := []struct {
		name string
		do   func() error
		want func([]map[string]*meridianv1.StoredJoinToken) bool
	}{
		{"create tokb", func() error { return s.CreateJoinToken(ctx, joinToken("tokb", "secret", now, 0, time.Time{})) }, latest(0, "toka", "tokb")},
		{"enrol with toka", func() error {
			_, err := s.EnrolIdentity(ctx, "toka", "secret", &meridianv1.Identity{NodeId: "dp1", Serial: "1"}, now)
			return err
		}, latest(1, "toka", "tokb")},
		{"delete toka", func() error { return s.DeleteJoinToken(ctx, "toka") }, latest(0, "tokb")},
	}
	for _, step := range steps {
		if err := step.do(); err != nil {
			t.Fatalf("%s: %v", step.name, err)
		}
		got.waitUntil(t, step.name, step.want)
	}
}
