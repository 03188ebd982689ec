package store

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/meridian-gw/meridian/controlplane/internal/etcdtest"
	"github.com/meridian-gw/meridian/proto/config"
	"github.com/meridian-gw/meridian/proto/config/configtest"
	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

// These tests play someone with write access to etcd who goes around the
// control plane. The guarantee under test: nothing reaches the watcher's
// publish without a history record that matches its hash and validates,
// which only store.mutate writes.

const notAccounted = "configuration in etcd is not accounted for by its history; not publishing it"

// logEntry is one record a logRecorder saw, attributes as text.
type logEntry struct {
	level slog.Level
	msg   string
	attrs map[string]string
}

// logRecorder is a slog.Handler that keeps every record for assertions.
type logRecorder struct {
	mu      sync.Mutex
	entries []logEntry
	changed chan struct{}
}

func newLogRecorder() *logRecorder { return &logRecorder{changed: make(chan struct{}, 1)} }

func (l *logRecorder) Enabled(context.Context, slog.Level) bool { return true }
func (l *logRecorder) WithAttrs([]slog.Attr) slog.Handler       { return l }
func (l *logRecorder) WithGroup(string) slog.Handler            { return l }

func (l *logRecorder) Handle(_ context.Context, r slog.Record) error {
	e := logEntry{level: r.Level, msg: r.Message, attrs: map[string]string{}}
	r.Attrs(func(a slog.Attr) bool {
		e.attrs[a.Key] = a.Value.String()
		return true
	})
	l.mu.Lock()
	l.entries = append(l.entries, e)
	l.mu.Unlock()
	select {
	case l.changed <- struct{}{}:
	default:
	}
	return nil
}

// waitFor blocks until an entry with msg about version is logged, and
// returns the first.
func (l *logRecorder) waitFor(t *testing.T, msg string, version uint64) logEntry {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		if es := l.matching(msg, version); len(es) > 0 {
			return es[0]
		}
		select {
		case <-l.changed:
		case <-timeout:
			t.Fatalf("never logged %q for version %d; logged %v", msg, version, l.all())
		}
	}
}

// matching returns the entries with msg about version.
func (l *logRecorder) matching(msg string, version uint64) []logEntry {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []logEntry
	for _, e := range l.entries {
		if e.msg == msg && e.attrs["version"] == fmt.Sprint(version) {
			out = append(out, e)
		}
	}
	return out
}

func (l *logRecorder) all() []logEntry {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.entries)
}

func (c *collector) last() published {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.got[len(c.got)-1]
}

// newLoggedEnv is newEnv with the store's log recorded.
func newLoggedEnv(t *testing.T) (*env, *logRecorder) {
	t.Helper()
	logs := newLogRecorder()
	c := etcdtest.Start(t)
	s := New(c, Options{ReplicaID: "cp-test", LeaseTTL: 5 * time.Second, Logger: slog.New(logs)})
	t.Cleanup(func() { s.Close() })
	return &env{client: c, store: s}, logs
}

// rogueResource encodes r as the store would, for writing behind its back.
func rogueResource(t *testing.T, r *meridianv1.Resource, version uint64) string {
	t.Helper()
	b, err := proto.Marshal(&meridianv1.StoredResource{Resource: r, Version: version})
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// rogueRecord encodes a history record for version holding rs, with hash
// as its entry hash.
func rogueRecord(t *testing.T, version uint64, hash string, rs ...*meridianv1.Resource) string {
	t.Helper()
	b, err := proto.Marshal(&meridianv1.HistoryRecord{
		Entry:     &meridianv1.HistoryEntry{Version: version, Time: timestamppb.Now(), Hash: hash, ResourceCount: uint32(len(rs))},
		Resources: rs,
	})
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func keysOf(rs []*meridianv1.Resource) []string {
	out := make([]string, len(rs))
	for i, r := range rs {
		out[i] = config.Key(r)
	}
	return out
}

var (
	upstreamA = configtest.Upstream("a", "127.0.0.1:1")
	upstreamB = configtest.Upstream("b", "127.0.0.1:2")
	rogue     = configtest.Route("rogue", "a", "/rogue")
)

// TestWatchIgnoresVersionsWithoutTrustedHistory bumps the version behind
// the store's back in every way a record can fail to account for it. None
// is published; the next legitimate apply is, and it is exactly its record.
func TestWatchIgnoresVersionsWithoutTrustedHistory(t *testing.T) {
	e, logs := newLoggedEnv(t)
	mustApply(t, e.store, ApplyInput{Resources: []*meridianv1.Resource{upstreamA}})
	c := newCollector()
	runWatch(t, func(ctx context.Context) error { return e.store.Watch(ctx, c.publish) })
	c.waitFor(t, 1)

	legit := []*meridianv1.Resource{upstreamA, rogue}
	tests := []struct {
		name string
		// record returns the history value forged for version v; "" writes none.
		record func(t *testing.T, v uint64) string
		reason string
	}{
		{"no record", func(*testing.T, uint64) string { return "" }, "no history record"},
		{"hash mismatch", func(t *testing.T, v uint64) string {
			// The hash of the configuration before the rogue route.
			return rogueRecord(t, v, config.Hash([]*meridianv1.Resource{upstreamA}), legit...)
		}, "hash does not match"},
		{"invalid config", func(t *testing.T, v uint64) string {
			bad := []*meridianv1.Resource{upstreamA, configtest.Route("rogue", "missing", "/rogue")}
			return rogueRecord(t, v, config.Hash(bad), bad...)
		}, "recorded configuration is invalid"},
		{"record of another version", func(t *testing.T, v uint64) string {
			return rogueRecord(t, v+7, config.Hash(legit), legit...)
		}, "history record is for version"},
		{"undecodable record", func(*testing.T, uint64) string { return "\xff\xff\xff" }, "does not decode"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := testCtx(t)
			before := c.last()
			cur, err := e.store.Current(ctx)
			if err != nil {
				t.Fatal(err)
			}
			forged := cur + 1
			ops := []clientv3.Op{
				clientv3.OpPut(e.store.resourceKey("Route/rogue"), rogueResource(t, rogue, forged)),
				clientv3.OpPut(e.store.versionKey(), fmt.Sprint(forged)),
			}
			if rec := tt.record(t, forged); rec != "" {
				ops = append(ops, clientv3.OpPut(e.store.historyKey(forged), rec))
			}
			if _, err := e.client.Txn(ctx).Then(ops...).Commit(); err != nil {
				t.Fatal(err)
			}

			logged := logs.waitFor(t, notAccounted, forged)
			if !strings.Contains(logged.attrs["reason"], tt.reason) {
				t.Errorf("logged reason %q, want it to contain %q", logged.attrs["reason"], tt.reason)
			}
			if logged.level != slog.LevelError {
				t.Errorf("logged at %v, want ERROR", logged.level)
			}
			// The log comes where the publish would have: nothing new was
			// published, and the last publication is the old version.
			if slices.Contains(c.versions(), forged) {
				t.Fatalf("forged version %d was published: %v", forged, c.versions())
			}
			if got := c.last(); got.version != before.version || !slices.Equal(keysOf(got.resources), keysOf(before.resources)) {
				t.Fatalf("last publication is version %d %v, want version %d %v", got.version, keysOf(got.resources), before.version, keysOf(before.resources))
			}

			// Clean up behind the forgery through the store: the next
			// version is published, and it is what its record says.
			next, _, err := e.store.Apply(ctx, ApplyInput{Resources: []*meridianv1.Resource{upstreamA}, Prune: true})
			if err != nil {
				t.Fatalf("Apply after forgery: %v", err)
			}
			p := c.waitFor(t, next)
			if got := keysOf(p.resources); !slices.Equal(got, []string{"Upstream/a"}) {
				t.Fatalf("version %d published %v, want [Upstream/a]", next, got)
			}
		})
	}
}

// TestWatchIgnoresResourcesWrittenBehindItsBack writes resource keys
// without a version: they are never published, and the drift is logged
// once per version. The next apply builds on the history record, not on
// the keys, so it undoes the rogue writes, and its summary says so.
func TestWatchIgnoresResourcesWrittenBehindItsBack(t *testing.T) {
	e, logs := newLoggedEnv(t)
	ctx := testCtx(t)
	mustApply(t, e.store, ApplyInput{Resources: []*meridianv1.Resource{upstreamA}})
	c := newCollector()
	runWatch(t, func(ctx context.Context) error { return e.store.Watch(ctx, c.publish) })
	c.waitFor(t, 1)
	const drift = "resources in etcd differ from the history record of the published version; serving the recorded configuration"

	// A new key and a changed one, each in its own write.
	moved := configtest.Upstream("a", "10.0.0.66:80")
	if _, err := e.client.Put(ctx, e.store.resourceKey("Route/rogue"), rogueResource(t, rogue, 1)); err != nil {
		t.Fatal(err)
	}
	logged := logs.waitFor(t, drift, 1)
	if logged.level != slog.LevelWarn || logged.attrs["keys"] != "[Route/rogue]" {
		t.Errorf("drift logged at %v naming %s, want WARN naming [Route/rogue]", logged.level, logged.attrs["keys"])
	}
	if _, err := e.client.Put(ctx, e.store.resourceKey("Upstream/a"), rogueResource(t, moved, 1)); err != nil {
		t.Fatal(err)
	}
	if got := c.versions(); !slices.Equal(got, []uint64{1}) {
		t.Fatalf("published versions %v, want [1]", got)
	}
	if p := c.last(); len(p.resources) != 1 || !proto.Equal(p.resources[0], upstreamA) {
		t.Fatalf("published %v, want the recorded Upstream/a alone", p.resources)
	}

	// The next apply restores the recorded Upstream/a and deletes the
	// rogue route, and reports both as changes.
	v2, changes, err := e.store.Apply(ctx, ApplyInput{Resources: []*meridianv1.Resource{upstreamB}})
	if err != nil {
		t.Fatal(err)
	}
	actions := map[string]meridianv1.ChangeAction{}
	for _, ch := range changes {
		actions[ch.GetKind()+"/"+ch.GetName()] = ch.GetAction()
	}
	if actions["Route/rogue"] != meridianv1.ChangeAction_CHANGE_ACTION_DELETE || actions["Upstream/b"] != meridianv1.ChangeAction_CHANGE_ACTION_CREATE {
		t.Errorf("changes %v: want the rogue route deleted and Upstream/b created", actions)
	}
	p := c.waitFor(t, v2)
	// The watcher handles events in order, so by now it saw both rogue
	// writes to version 1, and warned once.
	if n := len(logs.matching(drift, 1)); n != 1 {
		t.Errorf("drift logged %d times for version 1, want once", n)
	}
	rec, err := e.store.Record(ctx, v2)
	if err != nil {
		t.Fatal(err)
	}
	sameConfig(t, byKey(p.resources), rec.GetResources())
	if got, want := keysOf(p.resources), []string{"Upstream/a", "Upstream/b"}; !slices.Equal(got, want) {
		t.Fatalf("version %d published %v, want %v", v2, got, want)
	}
	if !proto.Equal(byKey(p.resources)["Upstream/a"], upstreamA) {
		t.Fatalf("version %d took in the Upstream/a written behind its back", v2)
	}
	live, _, err := e.store.List(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	if got := len(live); got != 2 {
		t.Fatalf("%d resources in etcd after the apply, want the 2 recorded", got)
	}
}

// TestVersionSetBackIsRefused: a version key set back behind the control
// plane's back never makes an apply overwrite a history record.
func TestVersionSetBackIsRefused(t *testing.T) {
	e, _ := newLoggedEnv(t)
	ctx := testCtx(t)
	mustApply(t, e.store, ApplyInput{Resources: []*meridianv1.Resource{upstreamA}})
	mustApply(t, e.store, ApplyInput{Resources: []*meridianv1.Resource{upstreamB}})
	if _, err := e.client.Put(ctx, e.store.versionKey(), "1"); err != nil {
		t.Fatal(err)
	}
	_, _, err := e.store.Apply(ctx, ApplyInput{Resources: []*meridianv1.Resource{configtest.Upstream("c", "127.0.0.1:3")}})
	if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "set back") {
		t.Fatalf("Apply over a set-back version: %v, want ErrInvalid naming it", err)
	}
	rec, err := e.store.Record(ctx, 2)
	if err != nil || len(rec.GetResources()) != 2 {
		t.Fatalf("history record 2 changed: %v, %v", rec, err)
	}
}

// TestListPublishesOnlyAccountedVersions starts watching while the
// current version is forged: the list publishes nothing at first, and a
// relist publishes the last accounted version again.
func TestListPublishesOnlyAccountedVersions(t *testing.T) {
	e, logs := newLoggedEnv(t)
	ctx := testCtx(t)
	forge := func(v uint64) {
		t.Helper()
		_, err := e.client.Txn(ctx).Then(
			clientv3.OpPut(e.store.resourceKey("Route/rogue"), rogueResource(t, rogue, v)),
			clientv3.OpPut(e.store.versionKey(), fmt.Sprint(v)),
		).Commit()
		if err != nil {
			t.Fatal(err)
		}
	}
	mustApply(t, e.store, ApplyInput{Resources: []*meridianv1.Resource{upstreamA}})
	forge(2)

	c := newCollector()
	w := &watcher{store: e.store, publish: c.publish}
	if err := w.list(ctx); err != nil {
		t.Fatal(err)
	}
	if got := logs.waitFor(t, notAccounted, 2).attrs["reason"]; got != "no history record" {
		t.Errorf("logged reason %q, want %q", got, "no history record")
	}
	if got := c.versions(); len(got) != 0 {
		t.Fatalf("list of a forged version published %v, want nothing", got)
	}

	v3 := mustApply(t, e.store, ApplyInput{Resources: []*meridianv1.Resource{upstreamA}, Prune: true})
	if err := w.list(ctx); err != nil {
		t.Fatal(err)
	}
	forge(v3 + 1)
	if err := w.list(ctx); err != nil {
		t.Fatal(err)
	}
	logs.waitFor(t, notAccounted, v3+1)
	// Both lists published version 3, the second because a list always
	// tells the caller the store is reachable.
	if got := c.versions(); !slices.Equal(got, []uint64{v3, v3}) {
		t.Fatalf("published versions %v, want [%d %d]", got, v3, v3)
	}
	if got := keysOf(c.last().resources); !slices.Equal(got, []string{"Upstream/a"}) {
		t.Fatalf("relist published %v, want [Upstream/a]", got)
	}
}

func TestDriftKeys(t *testing.T) {
	a, b := configtest.Upstream("a", "127.0.0.1:1"), configtest.Upstream("b", "127.0.0.1:2")
	tests := []struct {
		name     string
		live     map[string]*meridianv1.Resource
		recorded []*meridianv1.Resource
		want     []string
	}{
		{"same", map[string]*meridianv1.Resource{"Upstream/a": a, "Upstream/b": b}, []*meridianv1.Resource{a, b}, nil},
		{"extra", map[string]*meridianv1.Resource{"Upstream/a": a, "Route/r": rogue}, []*meridianv1.Resource{a}, []string{"Route/r"}},
		{"missing", map[string]*meridianv1.Resource{"Upstream/a": a}, []*meridianv1.Resource{a, b}, []string{"Upstream/b"}},
		{"changed", map[string]*meridianv1.Resource{"Upstream/a": configtest.Upstream("a", "10.0.0.1:1")}, []*meridianv1.Resource{a}, []string{"Upstream/a"}},
		{"undecodable", map[string]*meridianv1.Resource{"Upstream/a": nil}, []*meridianv1.Resource{a}, []string{"Upstream/a"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := driftKeys(tt.live, tt.recorded); !slices.Equal(got, tt.want) {
				t.Fatalf("driftKeys = %v, want %v", got, tt.want)
			}
		})
	}
}
