package store

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/meridian-gw/meridian/controlplane/internal/linediff"
	"github.com/meridian-gw/meridian/proto/config"
	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

// maxAttempts bounds how often a write re-reads and retries after another
// writer moved the version first.
const maxAttempts = 20

// ApplyInput is one apply: the desired state of some resources.
type ApplyInput struct {
	Resources []*meridianv1.Resource
	// Prune deletes every stored resource not in Resources.
	Prune   bool
	Message string
	Author  string
	// ExpectedVersion, when non-zero, makes the apply fail with
	// ErrConflict if any resource it touches changed after that version.
	ExpectedVersion uint64
	// DryRun validates and computes the changes without writing.
	DryRun bool
}

// Apply validates the configuration that results from in and stores it as
// one new version. It returns the new version (the current one when
// nothing changed or DryRun) and the changes: create, update and delete for
// every changed resource with a unified diff of its YAML form, and
// unchanged for the resources in in that already matched. A configuration
// with any problem is rejected whole with an error wrapping ErrInvalid and
// a config.ErrorList.
func (s *Store) Apply(ctx context.Context, in ApplyInput) (uint64, []*meridianv1.Change, error) {
	given := make(map[string]bool, len(in.Resources))
	for _, r := range in.Resources {
		given[config.Key(r)] = true
	}
	desired := func(ctx context.Context, st *state) ([]*meridianv1.Resource, error) {
		// Resources from the input come first and keep their order, so
		// validation errors count documents the way the operator wrote them.
		out := slices.Clone(in.Resources)
		if in.Prune {
			return out, nil
		}
		recorded, err := s.recorded(ctx, st)
		if err != nil {
			return nil, err
		}
		for _, key := range sortedKeys(recorded) {
			if !given[key] {
				out = append(out, recorded[key])
			}
		}
		return out, nil
	}
	where := func(st *state) string {
		if in.Prune {
			return "in this apply (with prune it is the whole configuration)"
		}
		return fmt.Sprintf("in this apply or the stored configuration (version %d)", st.version)
	}
	version, changes, err := s.mutate(ctx, mutation{
		desired:         desired,
		where:           where,
		message:         in.Message,
		author:          in.Author,
		expectedVersion: in.ExpectedVersion,
		dryRun:          in.DryRun,
	})
	changes = slices.DeleteFunc(changes, func(c *meridianv1.Change) bool {
		return c.GetAction() == meridianv1.ChangeAction_CHANGE_ACTION_UNCHANGED && !given[c.GetKind()+"/"+c.GetName()]
	})
	return version, changes, err
}

// Delete removes one resource as a new version. The remaining
// configuration is validated: deleting something still referenced fails
// with ErrInvalid.
func (s *Store) Delete(ctx context.Context, kind, name, message, author string, expectedVersion uint64) (uint64, error) {
	kind, err := parseKind(kind)
	if err != nil {
		return 0, err
	}
	key := kind + "/" + name
	version, _, err := s.mutate(ctx, mutation{
		desired: func(ctx context.Context, st *state) ([]*meridianv1.Resource, error) {
			recorded, err := s.recorded(ctx, st)
			if err != nil {
				return nil, err
			}
			if _, ok := recorded[key]; !ok {
				return nil, fmt.Errorf("%w: %s %q", ErrNotFound, kind, name)
			}
			var out []*meridianv1.Resource
			for _, k := range sortedKeys(recorded) {
				if k != key {
					out = append(out, recorded[k])
				}
			}
			return out, nil
		},
		where:           func(*state) string { return "after this delete" },
		message:         message,
		author:          author,
		expectedVersion: expectedVersion,
	})
	return version, err
}

// Rollback makes a new version whose configuration equals the one
// recorded for target (0 = the version before the current one). It
// returns the new version, the restored version and the changes. A
// version with no history record fails with ErrNotFound.
func (s *Store) Rollback(ctx context.Context, target uint64, message, author string) (version, restored uint64, changes []*meridianv1.Change, err error) {
	restored = target
	if restored == 0 {
		cur, err := s.Current(ctx)
		if err != nil {
			return 0, 0, nil, err
		}
		if cur < 2 {
			return cur, 0, nil, fmt.Errorf("%w: no version before %d", ErrNotFound, cur)
		}
		restored = cur - 1
	}
	// History records never change, so one read serves every retry.
	rec, err := s.Record(ctx, restored)
	if err != nil {
		return 0, 0, nil, err
	}
	version, changes, err = s.mutate(ctx, mutation{
		desired: func(context.Context, *state) ([]*meridianv1.Resource, error) {
			return rec.GetResources(), nil
		},
		where:   func(*state) string { return fmt.Sprintf("in version %d", restored) },
		message: cmp.Or(message, fmt.Sprintf("rollback to version %d", restored)),
		author:  author,
	})
	changes = slices.DeleteFunc(changes, func(c *meridianv1.Change) bool {
		return c.GetAction() == meridianv1.ChangeAction_CHANGE_ACTION_UNCHANGED
	})
	return version, restored, changes, err
}

// recorded returns the configuration of st's version as its history
// record holds it. Changes build on it rather than on the resource keys,
// so a key written behind the control plane's back is not taken into the
// next version: the plan undoes it (and its summary shows that).
func (s *Store) recorded(ctx context.Context, st *state) (map[string]*meridianv1.Resource, error) {
	out := map[string]*meridianv1.Resource{}
	if st.version == 0 {
		return out, nil
	}
	rec, err := s.Record(ctx, st.version)
	if errors.Is(err, ErrNotFound) {
		return nil, fmt.Errorf("%w: version %d has no history record: etcd was changed behind the control plane's back; roll back to a recorded version", ErrInvalid, st.version)
	}
	if err != nil {
		return nil, err
	}
	for _, r := range rec.GetResources() {
		out[config.Key(r)] = r
	}
	return out, nil
}

// mutation describes one write: how to compute the whole desired
// configuration from the current state.
type mutation struct {
	desired func(ctx context.Context, st *state) ([]*meridianv1.Resource, error)
	// where says where a referenced resource was looked for, for the
	// "does not exist" error.
	where           func(st *state) string
	message, author string
	expectedVersion uint64
	dryRun          bool
}

// mutate is the one write path: read, compute, validate, check for
// conflicts, then one transaction guarded by the version key's revision.
// Losing the race re-reads and tries again.
func (s *Store) mutate(ctx context.Context, m mutation) (uint64, []*meridianv1.Change, error) {
	for attempt := 1; ; attempt++ {
		st, err := s.load(ctx)
		if err != nil {
			return 0, nil, err
		}
		desired, err := m.desired(ctx, st)
		if err != nil {
			return st.version, nil, err
		}
		if err := config.ValidateWith(desired, config.Options{Where: m.where(st)}); err != nil {
			return st.version, nil, fmt.Errorf("%w: %w", ErrInvalid, err)
		}
		plan := planChanges(st, desired)
		if err := s.checkConflicts(ctx, st, m.expectedVersion, plan); err != nil {
			return st.version, nil, err
		}
		if !plan.changed() || m.dryRun {
			changes, err := plan.summary(st, true)
			return st.version, changes, err
		}
		ok, err := s.commit(ctx, st, plan, desired, m)
		if err != nil {
			return st.version, nil, err
		}
		if ok {
			changes, err := plan.summary(st, true)
			return st.version + 1, changes, err
		}
		if attempt == maxAttempts {
			return 0, nil, fmt.Errorf("%w: gave up after %d attempts", ErrContention, attempt)
		}
		if err := sleep(ctx, time.Duration(rand.Int64N(int64(10*time.Millisecond*time.Duration(attempt))))); err != nil {
			return 0, nil, err
		}
	}
}

// plan is what a desired configuration changes against a state.
type plan struct {
	// desired resources by key.
	next map[string]*meridianv1.Resource
	// every key of the state and of next, with its action.
	actions map[string]meridianv1.ChangeAction
}

func planChanges(st *state, desired []*meridianv1.Resource) *plan {
	p := &plan{next: make(map[string]*meridianv1.Resource, len(desired)), actions: map[string]meridianv1.ChangeAction{}}
	for _, r := range desired {
		p.next[config.Key(r)] = r
	}
	for key, r := range p.next {
		old, ok := st.resources[key]
		switch {
		case !ok:
			p.actions[key] = meridianv1.ChangeAction_CHANGE_ACTION_CREATE
		case proto.Equal(old.GetResource(), r):
			p.actions[key] = meridianv1.ChangeAction_CHANGE_ACTION_UNCHANGED
		default:
			p.actions[key] = meridianv1.ChangeAction_CHANGE_ACTION_UPDATE
		}
	}
	for key := range st.resources {
		if _, ok := p.next[key]; !ok {
			p.actions[key] = meridianv1.ChangeAction_CHANGE_ACTION_DELETE
		}
	}
	return p
}

func (p *plan) changed() bool {
	for _, a := range p.actions {
		if a != meridianv1.ChangeAction_CHANGE_ACTION_UNCHANGED {
			return true
		}
	}
	return false
}

// touched lists the keys the plan creates, updates or deletes.
func (p *plan) touched() []string {
	var keys []string
	for key, a := range p.actions {
		if a != meridianv1.ChangeAction_CHANGE_ACTION_UNCHANGED {
			keys = append(keys, key)
		}
	}
	sortKeys(keys)
	return keys
}

// summary lists every change in config.Sort order, with unified diffs of
// the YAML form when withDiff.
func (p *plan) summary(st *state, withDiff bool) ([]*meridianv1.Change, error) {
	keys := make([]string, 0, len(p.actions))
	for key := range p.actions {
		keys = append(keys, key)
	}
	sortKeys(keys)
	out := make([]*meridianv1.Change, 0, len(keys))
	for _, key := range keys {
		kind, name := splitKey(key)
		c := &meridianv1.Change{Action: p.actions[key], Kind: kind, Name: name}
		if withDiff && c.Action != meridianv1.ChangeAction_CHANGE_ACTION_UNCHANGED {
			d, err := yamlDiff(key, st.resources[key].GetResource(), p.next[key])
			if err != nil {
				return nil, err
			}
			c.Diff = d
		}
		out = append(out, c)
	}
	return out, nil
}

func yamlDiff(key string, old, next *meridianv1.Resource) (string, error) {
	var a, b []byte
	var err error
	if old != nil {
		if a, err = config.MarshalYAML(old); err != nil {
			return "", fmt.Errorf("render %s: %w", key, err)
		}
	}
	if next != nil {
		if b, err = config.MarshalYAML(next); err != nil {
			return "", fmt.Errorf("render %s: %w", key, err)
		}
	}
	oldName, newName := "stored/"+key, "desired/"+key
	if old == nil {
		oldName = "/dev/null"
	}
	if next == nil {
		newName = "/dev/null"
	}
	return linediff.Unified(oldName, newName, string(a), string(b)), nil
}

// checkConflicts enforces ExpectedVersion: a touched resource must not
// have been created, changed or deleted after it.
func (s *Store) checkConflicts(ctx context.Context, st *state, expected uint64, p *plan) error {
	if expected == 0 {
		return nil
	}
	if expected > st.version {
		return fmt.Errorf("%w: expected version %d is newer than the current version %d", ErrConflict, expected, st.version)
	}
	var then map[string]bool // keys present at the expected version, read on demand
	for _, key := range p.touched() {
		kind, name := splitKey(key)
		if cur, ok := st.resources[key]; ok {
			if cur.GetVersion() > expected {
				return fmt.Errorf("%w: %s %q changed in version %d, after version %d", ErrConflict, kind, name, cur.GetVersion(), expected)
			}
			continue
		}
		if expected == st.version {
			continue
		}
		// Absent now: was it deleted after the expected version?
		if then == nil {
			rec, err := s.Record(ctx, expected)
			if err != nil {
				return err
			}
			then = map[string]bool{}
			for _, r := range rec.GetResources() {
				then[config.Key(r)] = true
			}
		}
		if then[key] {
			return fmt.Errorf("%w: %s %q was deleted after version %d", ErrConflict, kind, name, expected)
		}
	}
	return nil
}

// commit writes the plan as version st.version+1 if nobody else wrote a
// version since st was read. It reports whether it did.
func (s *Store) commit(ctx context.Context, st *state, p *plan, desired []*meridianv1.Resource, m mutation) (bool, error) {
	next := st.version + 1
	changes, err := p.summary(st, false)
	if err != nil {
		return false, err
	}
	var ops []clientv3.Op
	var recorded []*meridianv1.Change
	for _, c := range changes {
		key := c.GetKind() + "/" + c.GetName()
		switch c.GetAction() {
		case meridianv1.ChangeAction_CHANGE_ACTION_CREATE, meridianv1.ChangeAction_CHANGE_ACTION_UPDATE:
			b, err := proto.Marshal(&meridianv1.StoredResource{Resource: p.next[key], Version: next})
			if err != nil {
				return false, fmt.Errorf("encode %s: %w", key, err)
			}
			ops = append(ops, clientv3.OpPut(s.resourceKey(key), string(b)))
		case meridianv1.ChangeAction_CHANGE_ACTION_DELETE:
			ops = append(ops, clientv3.OpDelete(s.resourceKey(key)))
		default:
			continue
		}
		recorded = append(recorded, c)
	}
	all := slices.Clone(desired)
	config.Sort(all)
	rec := &meridianv1.HistoryRecord{
		Entry: &meridianv1.HistoryEntry{
			Version:       next,
			Time:          timestamppb.New(s.now()),
			Author:        m.author,
			Message:       m.message,
			Changes:       recorded,
			ResourceCount: uint32(len(all)),
			Hash:          config.Hash(all),
		},
		Resources: all,
	}
	b, err := proto.Marshal(rec)
	if err != nil {
		return false, fmt.Errorf("encode history: %w", err)
	}
	if len(b) > config.MaxApplyBytes {
		return false, fmt.Errorf("%w: the configuration would be %.1f MiB; the limit is %d MiB for one apply and for the whole configuration",
			ErrTooLarge, float64(len(b))/(1<<20), config.MaxApplyBytes>>20)
	}
	ops = append(ops,
		clientv3.OpPut(s.versionKey(), fmt.Sprint(next)),
		clientv3.OpPut(s.historyKey(next), string(b)),
	)
	start := time.Now()
	resp, err := s.client.Txn(ctx).
		If(clientv3.Compare(clientv3.ModRevision(s.versionKey()), "=", st.versionRev),
			// A record is never overwritten, even if the version key was
			// set back behind the control plane's back.
			clientv3.Compare(clientv3.CreateRevision(s.historyKey(next)), "=", 0)).
		Then(ops...).
		Else(clientv3.OpGet(s.versionKey())).
		Commit()
	s.observe(opCommit, start, err)
	if err != nil {
		return false, etcdError(err)
	}
	if kvs := resp.Responses[0].GetResponseRange().GetKvs(); !resp.Succeeded && len(kvs) == 1 && kvs[0].ModRevision == st.versionRev {
		// Nobody else wrote: the record of the next version exists.
		return false, fmt.Errorf("%w: version %d is already recorded in the history, but etcd's version key says %d: it was set back behind the control plane's back; set it to the newest recorded version", ErrInvalid, next, st.version)
	}
	return resp.Succeeded, nil
}

// History returns up to limit entries (0 = all), newest first.
func (s *Store) History(ctx context.Context, limit int) ([]*meridianv1.HistoryEntry, error) {
	opts := []clientv3.OpOption{clientv3.WithPrefix(), clientv3.WithSort(clientv3.SortByKey, clientv3.SortDescend)}
	if limit > 0 {
		opts = append(opts, clientv3.WithLimit(int64(limit)))
	}
	start := time.Now()
	resp, err := s.client.Get(ctx, s.historyPrefix(), opts...)
	s.observe(opReadHistory, start, err)
	if err != nil {
		return nil, etcdError(err)
	}
	out := make([]*meridianv1.HistoryEntry, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		rec := &meridianv1.HistoryRecord{}
		if err := proto.Unmarshal(kv.Value, rec); err != nil {
			return nil, fmt.Errorf("etcd key %s: %w", kv.Key, err)
		}
		out = append(out, rec.GetEntry())
	}
	return out, nil
}

// Record returns the history record of one version.
func (s *Store) Record(ctx context.Context, version uint64) (*meridianv1.HistoryRecord, error) {
	start := time.Now()
	resp, err := s.client.Get(ctx, s.historyKey(version))
	s.observe(opReadRecord, start, err)
	if err != nil {
		return nil, etcdError(err)
	}
	if len(resp.Kvs) == 0 {
		return nil, fmt.Errorf("%w: version %d", ErrNotFound, version)
	}
	rec := &meridianv1.HistoryRecord{}
	if err := proto.Unmarshal(resp.Kvs[0].Value, rec); err != nil {
		return nil, fmt.Errorf("etcd key %s: %w", resp.Kvs[0].Key, err)
	}
	return rec, nil
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sortKeys(keys)
	return keys
}

// sortKeys orders "Kind/name" keys as config.Sort orders resources.
func sortKeys(keys []string) {
	rank := func(kind string) int {
		if i := slices.Index(config.Kinds(), kind); i >= 0 {
			return i
		}
		return len(config.Kinds())
	}
	slices.SortFunc(keys, func(a, b string) int {
		ka, na := splitKey(a)
		kb, nb := splitKey(b)
		return cmp.Or(cmp.Compare(rank(ka), rank(kb)), cmp.Compare(na, nb))
	})
}

func splitKey(key string) (kind, name string) {
	for i := range len(key) {
		if key[i] == '/' {
			return key[:i], key[i+1:]
		}
	}
	return key, ""
}

// sleep waits for d or until ctx is done.
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
