package store

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/goleak"
	"go.uber.org/zap"
	"google.golang.org/protobuf/proto"

	"github.com/meridian-gw/meridian/controlplane/internal/embedetcd"
	"github.com/meridian-gw/meridian/controlplane/internal/etcdtest"
	"github.com/meridian-gw/meridian/proto/config"
	"github.com/meridian-gw/meridian/proto/config/configtest"
	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

type env struct {
	client *clientv3.Client
	store  *Store
}

func newEnv(t *testing.T) *env {
	t.Helper()
	c := etcdtest.Start(t)
	s := New(c, Options{ReplicaID: "cp-test", LeaseTTL: 5 * time.Second})
	t.Cleanup(func() { s.Close() })
	return &env{client: c, store: s}
}

func testCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func mustApply(t *testing.T, s *Store, in ApplyInput) uint64 {
	t.Helper()
	v, _, err := s.Apply(testCtx(t), in)
	if err != nil {
		t.Fatalf("Apply: %v", err)
	}
	return v
}

// list returns the stored configuration keyed by config.Key.
func list(t *testing.T, s *Store) (map[string]*meridianv1.Resource, uint64) {
	t.Helper()
	rs, v, err := s.List(testCtx(t), "")
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	return byKey(rs), v
}

func byKey(rs []*meridianv1.Resource) map[string]*meridianv1.Resource {
	m := map[string]*meridianv1.Resource{}
	for _, r := range rs {
		m[config.Key(r)] = r
	}
	return m
}

func sameConfig(t *testing.T, got map[string]*meridianv1.Resource, want []*meridianv1.Resource) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("config has %d resources, want %d: %v", len(got), len(want), got)
	}
	for _, w := range want {
		if !proto.Equal(got[config.Key(w)], w) {
			t.Fatalf("%s = %v, want %v", config.Key(w), got[config.Key(w)], w)
		}
	}
}

type change struct {
	action meridianv1.ChangeAction
	key    string
}

func summary(cs []*meridianv1.Change) []change {
	out := []change{}
	for _, c := range cs {
		out = append(out, change{c.GetAction(), c.GetKind() + "/" + c.GetName()})
	}
	return out
}

func sameChanges(t *testing.T, got []*meridianv1.Change, want ...change) {
	t.Helper()
	g := summary(got)
	if fmt.Sprint(g) != fmt.Sprint(want) {
		t.Fatalf("changes = %v, want %v", g, want)
	}
}

const (
	create    = meridianv1.ChangeAction_CHANGE_ACTION_CREATE
	update    = meridianv1.ChangeAction_CHANGE_ACTION_UPDATE
	del       = meridianv1.ChangeAction_CHANGE_ACTION_DELETE
	unchanged = meridianv1.ChangeAction_CHANGE_ACTION_UNCHANGED
)

func TestRoundTrip(t *testing.T) {
	e := newEnv(t)
	s, ctx := e.store, testCtx(t)

	if v, err := s.Current(ctx); err != nil || v != 0 {
		t.Fatalf("Current on empty store = %d, %v; want 0, nil", v, err)
	}

	v1 := []*meridianv1.Resource{configtest.Upstream("users", "127.0.0.1:9001"), configtest.Route("get-user", "users", "/users")}
	v, changes, err := s.Apply(ctx, ApplyInput{Resources: v1, Message: "first", Author: "alice"})
	if err != nil || v != 1 {
		t.Fatalf("Apply v1 = %d, %v; want 1", v, err)
	}
	sameChanges(t, changes, change{create, "Upstream/users"}, change{create, "Route/get-user"})
	if d := changes[0].GetDiff(); !strings.Contains(d, "+++ desired/Upstream/users") || !strings.Contains(d, "+    - address: 127.0.0.1:9001") && !strings.Contains(d, "127.0.0.1:9001") {
		t.Errorf("create diff lacks the new content:\n%s", d)
	}

	got, gv, err := s.Get(ctx, "route", "get-user")
	if err != nil || gv != 1 || !proto.Equal(got, v1[1]) {
		t.Fatalf("Get = %v, %d, %v", got, gv, err)
	}
	if _, _, err := s.Get(ctx, "Route", "nope"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Get missing: %v, want ErrNotFound", err)
	}
	if _, _, err := s.Get(ctx, "Gizmo", "x"); !errors.Is(err, ErrInvalid) {
		t.Fatalf("Get bad kind: %v, want ErrInvalid", err)
	}
	routes, _, err := s.List(ctx, "Routes")
	if err != nil || len(routes) != 1 || config.Name(routes[0]) != "get-user" {
		t.Fatalf("List(Routes) = %v, %v", routes, err)
	}

	// Update one, repeat the other: one update, one unchanged.
	v2up := configtest.Upstream("users", "127.0.0.1:9002")
	v, changes, err = s.Apply(ctx, ApplyInput{Resources: []*meridianv1.Resource{v2up, v1[1]}, Message: "move", Author: "bob"})
	if err != nil || v != 2 {
		t.Fatalf("Apply v2 = %d, %v; want 2", v, err)
	}
	sameChanges(t, changes, change{update, "Upstream/users"}, change{unchanged, "Route/get-user"})
	if d := changes[0].GetDiff(); !strings.Contains(d, "-") || !strings.Contains(d, "9002") || !strings.Contains(d, "9001") {
		t.Errorf("update diff:\n%s", d)
	}
	if changes[1].GetDiff() != "" {
		t.Errorf("unchanged resource has a diff: %s", changes[1].GetDiff())
	}

	// Applying the same again changes nothing and makes no version.
	v, changes, err = s.Apply(ctx, ApplyInput{Resources: []*meridianv1.Resource{v2up}})
	if err != nil || v != 2 {
		t.Fatalf("no-op Apply = %d, %v; want 2", v, err)
	}
	sameChanges(t, changes, change{unchanged, "Upstream/users"})

	v, err = s.Delete(ctx, "Route", "get-user", "drop", "carol", 0)
	if err != nil || v != 3 {
		t.Fatalf("Delete = %d, %v; want 3", v, err)
	}
	if _, err := s.Delete(ctx, "Route", "get-user", "", "", 0); !errors.Is(err, ErrNotFound) {
		t.Fatalf("second Delete: %v, want ErrNotFound", err)
	}

	hist, err := s.History(ctx, 0)
	if err != nil {
		t.Fatalf("History: %v", err)
	}
	wantHist := []struct {
		version         uint64
		author, message string
		count           uint32
	}{{3, "carol", "drop", 1}, {2, "bob", "move", 2}, {1, "alice", "first", 2}}
	if len(hist) != len(wantHist) {
		t.Fatalf("History has %d entries, want %d", len(hist), len(wantHist))
	}
	for i, w := range wantHist {
		h := hist[i]
		if h.GetVersion() != w.version || h.GetAuthor() != w.author || h.GetMessage() != w.message || h.GetResourceCount() != w.count || h.GetTime() == nil || h.GetHash() == "" {
			t.Errorf("History[%d] = %v, want %+v", i, h, w)
		}
		for _, c := range h.GetChanges() {
			if c.GetDiff() != "" || c.GetAction() == unchanged {
				t.Errorf("History[%d] change %v should have no diff and no unchanged entries", i, c)
			}
		}
	}
	if limited, err := s.History(ctx, 1); err != nil || len(limited) != 1 || limited[0].GetVersion() != 3 {
		t.Fatalf("History(1) = %v, %v", limited, err)
	}

	// Rollback to the version before current restores version 2.
	v, restored, changes, err := s.Rollback(ctx, 0, "", "dave")
	if err != nil || v != 4 || restored != 2 {
		t.Fatalf("Rollback(0) = %d, %d, %v; want 4, 2", v, restored, err)
	}
	sameChanges(t, changes, change{create, "Route/get-user"})
	cfg, _ := list(t, s)
	sameConfig(t, cfg, []*meridianv1.Resource{v2up, v1[1]})

	v, restored, _, err = s.Rollback(ctx, 1, "back to the start", "dave")
	if err != nil || v != 5 || restored != 1 {
		t.Fatalf("Rollback(1) = %d, %d, %v; want 5, 1", v, restored, err)
	}
	cfg, cur := list(t, s)
	sameConfig(t, cfg, v1)
	if cur != 5 {
		t.Fatalf("current = %d, want 5", cur)
	}
	rec, err := s.Record(ctx, 5)
	if err != nil || rec.GetEntry().GetMessage() != "back to the start" || rec.GetEntry().GetHash() != config.Hash(v1) {
		t.Fatalf("Record(5) = %v, %v", rec.GetEntry(), err)
	}

	if _, _, _, err := s.Rollback(ctx, 99, "", ""); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Rollback(99): %v, want ErrNotFound", err)
	}
}

func TestRollbackWithoutEarlierVersion(t *testing.T) {
	e := newEnv(t)
	ctx := testCtx(t)
	if _, _, _, err := e.store.Rollback(ctx, 0, "", ""); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Rollback on empty store: %v, want ErrNotFound", err)
	}
	mustApply(t, e.store, ApplyInput{Resources: []*meridianv1.Resource{configtest.Upstream("a", "127.0.0.1:1")}})
	if _, _, _, err := e.store.Rollback(ctx, 0, "", ""); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Rollback at version 1: %v, want ErrNotFound", err)
	}
}

func TestPrune(t *testing.T) {
	e := newEnv(t)
	mustApply(t, e.store, ApplyInput{Resources: []*meridianv1.Resource{configtest.Upstream("a", "127.0.0.1:1"), configtest.Upstream("b", "127.0.0.1:2")}})
	v, changes, err := e.store.Apply(testCtx(t), ApplyInput{Resources: []*meridianv1.Resource{configtest.Upstream("a", "127.0.0.1:1")}, Prune: true})
	if err != nil || v != 2 {
		t.Fatalf("Apply prune = %d, %v", v, err)
	}
	sameChanges(t, changes, change{unchanged, "Upstream/a"}, change{del, "Upstream/b"})
	if !strings.Contains(changes[1].GetDiff(), "+++ /dev/null") {
		t.Errorf("delete diff:\n%s", changes[1].GetDiff())
	}
	cfg, _ := list(t, e.store)
	sameConfig(t, cfg, []*meridianv1.Resource{configtest.Upstream("a", "127.0.0.1:1")})
}

func TestHistorySurvivesCompaction(t *testing.T) {
	e := newEnv(t)
	ctx := testCtx(t)
	v1 := []*meridianv1.Resource{configtest.Upstream("a", "127.0.0.1:1"), configtest.Route("r", "a", "/")}
	mustApply(t, e.store, ApplyInput{Resources: v1})
	for i := range 5 {
		mustApply(t, e.store, ApplyInput{Resources: []*meridianv1.Resource{configtest.Upstream("a", fmt.Sprintf("127.0.0.1:%d", i+2))}})
	}
	mustApply(t, e.store, ApplyInput{Resources: []*meridianv1.Resource{configtest.Upstream("b", "127.0.0.1:99")}})
	resp, err := e.client.Get(ctx, "any")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.client.Compact(ctx, resp.Header.Revision, clientv3.WithCompactPhysical()); err != nil {
		t.Fatalf("Compact: %v", err)
	}
	// MVCC history is gone...
	if _, err := e.client.Get(ctx, e.store.versionKey(), clientv3.WithRev(2)); err == nil {
		t.Fatal("read at a compacted revision succeeded; the test does not compact")
	}
	// ...and rollback still restores version 1 exactly.
	v, restored, _, err := e.store.Rollback(ctx, 1, "", "")
	if err != nil || restored != 1 || v != 8 {
		t.Fatalf("Rollback(1) = %d, %d, %v; want 8, 1", v, restored, err)
	}
	cfg, _ := list(t, e.store)
	sameConfig(t, cfg, v1)
}

func TestDryRunWritesNothing(t *testing.T) {
	e := newEnv(t)
	ctx := testCtx(t)
	mustApply(t, e.store, ApplyInput{Resources: []*meridianv1.Resource{configtest.Upstream("a", "127.0.0.1:1")}})
	before, err := e.client.Get(ctx, e.store.prefix, clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	v, changes, err := e.store.Apply(ctx, ApplyInput{
		Resources: []*meridianv1.Resource{configtest.Upstream("a", "127.0.0.1:2"), configtest.Upstream("b", "127.0.0.1:3")},
		Prune:     true,
		DryRun:    true,
	})
	if err != nil || v != 1 {
		t.Fatalf("dry run = %d, %v; want 1", v, err)
	}
	sameChanges(t, changes, change{update, "Upstream/a"}, change{create, "Upstream/b"})
	if changes[0].GetDiff() == "" {
		t.Error("dry run update has no diff")
	}
	after, err := e.client.Get(ctx, e.store.prefix, clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	if after.Header.Revision != before.Header.Revision {
		t.Fatalf("dry run moved etcd from revision %d to %d", before.Header.Revision, after.Header.Revision)
	}
}

// TestPartialApply: a Route applied alone may name an Upstream that is only
// stored; the references are checked against the stored configuration
// merged with the apply.
func TestPartialApply(t *testing.T) {
	e := newEnv(t)
	mustApply(t, e.store, ApplyInput{Resources: []*meridianv1.Resource{configtest.Upstream("demo", "127.0.0.1:1")}})
	v, changes, err := e.store.Apply(testCtx(t), ApplyInput{Resources: []*meridianv1.Resource{configtest.Route("x", "demo", "/x")}})
	if err != nil || v != 2 {
		t.Fatalf("apply a route naming a stored upstream = %d, %v; want version 2", v, err)
	}
	sameChanges(t, changes, change{create, "Route/x"})
	cfg, _ := listEnv(t, e)
	if len(cfg) != 2 {
		t.Errorf("stored %d resources, want the upstream and the route", len(cfg))
	}
}

func TestInvalidConfigRejectedWhole(t *testing.T) {
	base := []*meridianv1.Resource{configtest.Upstream("users", "127.0.0.1:1"), configtest.Route("r", "users", "/")}
	tests := []struct {
		name   string
		apply  func(s *Store) error
		inList string // text one of the reported problems contains
	}{
		{
			name: "dangling reference with a valid sibling",
			apply: func(s *Store) error {
				_, _, err := s.Apply(testCtx(t), ApplyInput{Resources: []*meridianv1.Resource{configtest.Upstream("ok", "127.0.0.1:2"), configtest.Route("bad", "missing", "/bad")}})
				return err
			},
			inList: `Upstream "missing" does not exist in this apply or the stored configuration (version 1)`,
		},
		{
			name: "duplicate in one apply",
			apply: func(s *Store) error {
				_, _, err := s.Apply(testCtx(t), ApplyInput{Resources: []*meridianv1.Resource{configtest.Upstream("x", "127.0.0.1:2"), configtest.Upstream("x", "127.0.0.1:3")}})
				return err
			},
			inList: "duplicate",
		},
		{
			name: "empty resource",
			apply: func(s *Store) error {
				_, _, err := s.Apply(testCtx(t), ApplyInput{Resources: []*meridianv1.Resource{{}}})
				return err
			},
			inList: "no kind",
		},
		{
			name: "prune would orphan a route",
			apply: func(s *Store) error {
				_, _, err := s.Apply(testCtx(t), ApplyInput{Resources: []*meridianv1.Resource{configtest.Route("r", "users", "/")}, Prune: true})
				return err
			},
			inList: `Upstream "users" does not exist in this apply (with prune it is the whole configuration)`,
		},
		{
			name: "delete a referenced upstream",
			apply: func(s *Store) error {
				_, err := s.Delete(testCtx(t), "Upstream", "users", "", "", 0)
				return err
			},
			inList: `Upstream "users" does not exist after this delete`,
		},
	}
	e := newEnv(t)
	mustApply(t, e.store, ApplyInput{Resources: base})
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.apply(e.store)
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("err = %v, want ErrInvalid", err)
			}
			var list config.ErrorList
			if !errors.As(err, &list) || len(list) == 0 {
				t.Fatalf("err = %v, want a config.ErrorList", err)
			}
			if !strings.Contains(list.Error(), tt.inList) {
				t.Fatalf("problems:\n%s\nwant one containing %q", list.Error(), tt.inList)
			}
			cfg, v := listEnv(t, e)
			if v != 1 {
				t.Fatalf("version = %d, want 1", v)
			}
			sameConfig(t, cfg, base)
		})
	}
}

func listEnv(t *testing.T, e *env) (map[string]*meridianv1.Resource, uint64) {
	t.Helper()
	return list(t, e.store)
}

func TestConcurrentAppliesAllLand(t *testing.T) {
	e := newEnv(t)
	const n = 20
	versions := make([]uint64, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			versions[i], _, errs[i] = e.store.Apply(testCtx(t), ApplyInput{
				Resources: []*meridianv1.Resource{configtest.Upstream(fmt.Sprintf("u%02d", i), fmt.Sprintf("127.0.0.1:%d", 1000+i))},
				Author:    fmt.Sprint(i),
			})
		})
	}
	wg.Wait()
	seen := map[uint64]bool{}
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("apply %d: %v", i, errs[i])
		}
		if versions[i] < 1 || versions[i] > n || seen[versions[i]] {
			t.Fatalf("apply %d got version %d; versions so far %v", i, versions[i], seen)
		}
		seen[versions[i]] = true
	}
	cfg, v := list(t, e.store)
	if v != n || len(cfg) != n {
		t.Fatalf("after %d applies: version %d, %d resources", n, v, len(cfg))
	}
	hist, err := e.store.History(testCtx(t), 0)
	if err != nil || len(hist) != n {
		t.Fatalf("History = %d entries, %v; want %d", len(hist), err, n)
	}
}

func TestStaleExpectedVersionConflicts(t *testing.T) {
	e := newEnv(t)
	base := mustApply(t, e.store, ApplyInput{Resources: []*meridianv1.Resource{configtest.Upstream("a", "127.0.0.1:1")}})

	// Two operators edit the same resource based on the same version.
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for i := range 2 {
		wg.Go(func() {
			_, _, errs[i] = e.store.Apply(testCtx(t), ApplyInput{
				Resources:       []*meridianv1.Resource{configtest.Upstream("a", fmt.Sprintf("127.0.0.1:%d", 10+i))},
				ExpectedVersion: base,
			})
		})
	}
	wg.Wait()
	var ok, conflicts int
	for _, err := range errs {
		switch {
		case err == nil:
			ok++
		case errors.Is(err, ErrConflict):
			conflicts++
		default:
			t.Fatalf("unexpected error: %v", err)
		}
	}
	if ok != 1 || conflicts != 1 {
		t.Fatalf("%d succeeded and %d conflicted, want 1 and 1 (%v)", ok, conflicts, errs)
	}
	if _, v := list(t, e.store); v != base+1 {
		t.Fatalf("version = %d, want %d", v, base+1)
	}
}

func TestExpectedVersion(t *testing.T) {
	// Version 1: a, b. Version 2: a changed. Version 3: b deleted, c created.
	e := newEnv(t)
	mustApply(t, e.store, ApplyInput{Resources: []*meridianv1.Resource{configtest.Upstream("a", "127.0.0.1:1"), configtest.Upstream("b", "127.0.0.1:2")}})
	mustApply(t, e.store, ApplyInput{Resources: []*meridianv1.Resource{configtest.Upstream("a", "127.0.0.1:3")}})
	if _, err := e.store.Delete(testCtx(t), "Upstream", "b", "", "", 0); err != nil {
		t.Fatal(err)
	}
	mustApply(t, e.store, ApplyInput{Resources: []*meridianv1.Resource{configtest.Upstream("c", "127.0.0.1:4")}})
	// Now version 4.
	tests := []struct {
		name     string
		expected uint64
		apply    []*meridianv1.Resource
		conflict bool
	}{
		{"changed after expected", 1, []*meridianv1.Resource{configtest.Upstream("a", "127.0.0.1:9")}, true},
		{"deleted after expected", 2, []*meridianv1.Resource{configtest.Upstream("b", "127.0.0.1:9")}, true},
		{"created after expected", 3, []*meridianv1.Resource{configtest.Upstream("c", "127.0.0.1:9")}, true},
		{"expected is in the future", 10, []*meridianv1.Resource{configtest.Upstream("d", "127.0.0.1:9")}, true},
		{"unchanged resource is not touched", 1, []*meridianv1.Resource{configtest.Upstream("a", "127.0.0.1:3")}, false},
		{"untouched since expected", 2, []*meridianv1.Resource{configtest.Upstream("a", "127.0.0.1:5")}, false},
		{"new resource never existed", 1, []*meridianv1.Resource{configtest.Upstream("e", "127.0.0.1:9")}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := e.store.Apply(testCtx(t), ApplyInput{Resources: tt.apply, ExpectedVersion: tt.expected, DryRun: true})
			if got := errors.Is(err, ErrConflict); got != tt.conflict || (!tt.conflict && err != nil) {
				t.Fatalf("err = %v, want conflict %v", err, tt.conflict)
			}
		})
	}
	// Delete honours the expected version too.
	if _, err := e.store.Delete(testCtx(t), "Upstream", "c", "", "", 3); !errors.Is(err, ErrConflict) {
		t.Fatalf("Delete with stale version: %v, want ErrConflict", err)
	}
}

// collector records what a watcher publishes.
type collector struct {
	mu  sync.Mutex
	got []published
	ch  chan struct{}
}

type published struct {
	version   uint64
	committed time.Time
	resources []*meridianv1.Resource
}

func newCollector() *collector { return &collector{ch: make(chan struct{}, 1)} }

func (c *collector) publish(v uint64, committed time.Time, rs []*meridianv1.Resource) {
	c.mu.Lock()
	c.got = append(c.got, published{v, committed, rs})
	c.mu.Unlock()
	select {
	case c.ch <- struct{}{}:
	default:
	}
}

// waitFor blocks until a publication of version v arrives.
func (c *collector) waitFor(t *testing.T, v uint64) published {
	t.Helper()
	timeout := time.After(20 * time.Second)
	for {
		c.mu.Lock()
		for _, p := range c.got {
			if p.version == v {
				c.mu.Unlock()
				return p
			}
		}
		c.mu.Unlock()
		select {
		case <-c.ch:
		case <-timeout:
			t.Fatalf("version %d never published; got %v", v, c.versions())
		}
	}
}

func (c *collector) versions() []uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []uint64
	for _, p := range c.got {
		out = append(out, p.version)
	}
	return out
}

// runWatch runs fn until the test ends.
func runWatch(t *testing.T, fn func(ctx context.Context) error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- fn(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Errorf("Watch returned %v, want context.Canceled", err)
		}
	})
}

func TestWatchPublishesVersionsInOrder(t *testing.T) {
	e := newEnv(t)
	c := newCollector()
	runWatch(t, func(ctx context.Context) error { return e.store.Watch(ctx, c.publish) })
	c.waitFor(t, 0)
	for i := 1; i <= 5; i++ {
		mustApply(t, e.store, ApplyInput{Resources: []*meridianv1.Resource{configtest.Upstream(fmt.Sprintf("u%d", i), "127.0.0.1:1")}})
		c.waitFor(t, uint64(i))
	}
	if _, err := e.store.Delete(testCtx(t), "Upstream", "u3", "", "", 0); err != nil {
		t.Fatal(err)
	}
	last := c.waitFor(t, 6)
	if got := fmt.Sprint(c.versions()); got != "[0 1 2 3 4 5 6]" {
		t.Fatalf("published versions %s, want [0 1 2 3 4 5 6]", got)
	}
	for _, p := range c.got {
		if p.version == 0 {
			if !p.committed.IsZero() {
				t.Errorf("version 0 published with commit time %v", p.committed)
			}
			continue
		}
		rec, err := e.store.Record(testCtx(t), p.version)
		if err != nil {
			t.Fatal(err)
		}
		sameConfig(t, byKey(p.resources), rec.GetResources())
		// The commit time comes from the version's own history record.
		if want := rec.GetEntry().GetTime().AsTime(); !p.committed.Equal(want) {
			t.Errorf("version %d published with commit time %v, want %v", p.version, p.committed, want)
		}
	}
	if len(last.resources) != 4 {
		t.Fatalf("version 6 has %d resources, want 4", len(last.resources))
	}
}

func TestWatchRelistsAfterCompaction(t *testing.T) {
	e := newEnv(t)
	ctx := testCtx(t)
	mustApply(t, e.store, ApplyInput{Resources: []*meridianv1.Resource{configtest.Upstream("a", "127.0.0.1:1")}})

	c := newCollector()
	w := &watcher{store: e.store, publish: c.publish}
	if err := w.list(ctx); err != nil {
		t.Fatal(err)
	}
	// While the watcher is not watching, versions 2 and 3 land and the
	// revisions it would resume from are compacted away.
	mustApply(t, e.store, ApplyInput{Resources: []*meridianv1.Resource{configtest.Upstream("b", "127.0.0.1:2")}})
	mustApply(t, e.store, ApplyInput{Resources: []*meridianv1.Resource{configtest.Upstream("c", "127.0.0.1:3")}})
	resp, err := e.client.Get(ctx, "any")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.client.Compact(ctx, resp.Header.Revision, clientv3.WithCompactPhysical()); err != nil {
		t.Fatal(err)
	}

	runWatch(t, func(ctx context.Context) error { return e.store.follow(ctx, "config", w) })
	p := c.waitFor(t, 3)
	sameConfig(t, byKey(p.resources), []*meridianv1.Resource{configtest.Upstream("a", "127.0.0.1:1"), configtest.Upstream("b", "127.0.0.1:2"), configtest.Upstream("c", "127.0.0.1:3")})
	// A list reads the commit time from the history record too.
	rec, err := e.store.Record(ctx, 3)
	if err != nil {
		t.Fatal(err)
	}
	if want := rec.GetEntry().GetTime().AsTime(); !p.committed.Equal(want) {
		t.Fatalf("relisted version 3 has commit time %v, want %v", p.committed, want)
	}
	// Version 2 was never seen: the watcher relisted instead of replaying.
	if got := fmt.Sprint(c.versions()); got != "[1 3]" {
		t.Fatalf("published versions %s, want [1 3]", got)
	}
	// And it keeps watching after the relist.
	mustApply(t, e.store, ApplyInput{Resources: []*meridianv1.Resource{configtest.Upstream("d", "127.0.0.1:4")}})
	c.waitFor(t, 4)
}

// TestWatchSurvivesEtcdRestart takes ~15s: etcd waits out its request
// timeout for the open watch stream each time it stops.
func TestWatchSurvivesEtcdRestart(t *testing.T) {
	cfg := embedetcd.Config{Dir: t.TempDir(), ClientAddr: etcdtest.FreeAddr(t), PeerAddr: etcdtest.FreeAddr(t)}
	srv, err := embedetcd.Start(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { srv.Close() }()
	c, err := clientv3.New(clientv3.Config{Endpoints: srv.Endpoints(), DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	s := New(c, Options{Logger: slog.New(slog.DiscardHandler)})
	defer s.Close()

	col := newCollector()
	runWatch(t, func(ctx context.Context) error { return s.Watch(ctx, col.publish) })
	col.waitFor(t, 0)

	srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	_, _, err = s.Apply(ctx, ApplyInput{Resources: []*meridianv1.Resource{configtest.Upstream("a", "127.0.0.1:1")}})
	cancel()
	if err == nil {
		t.Fatal("Apply succeeded with etcd down")
	}

	if srv, err = embedetcd.Start(context.Background(), cfg); err != nil {
		t.Fatalf("restart etcd: %v", err)
	}
	mustApply(t, s, ApplyInput{Resources: []*meridianv1.Resource{configtest.Upstream("a", "127.0.0.1:1")}})
	col.waitFor(t, 1)
	// The watch is cancelled (by runWatch's cleanup) while etcd is down
	// again; Watch must still return.
	srv.Close()
}
