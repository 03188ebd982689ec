package store

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/proto"

	"github.com/meridian-gw/meridian/proto/config"
	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

// PublishFunc receives the whole configuration at a version. committed is
// when that version was committed, as its history record says (the
// committing replica's clock); it is zero for version 0. resources are
// sorted as config.Sort and must not be modified.
type PublishFunc func(version uint64, committed time.Time, resources []*meridianv1.Resource)

// Watch keeps an in-memory copy of the configuration: it lists it at a
// revision R, then watches from R+1. It calls publish after every list
// (even when the version did not move, so callers learn the store is
// reachable) and whenever a watch response advances the version. When the
// watch falls behind a compaction or fails, it lists again; while etcd is
// down it keeps retrying with backoff. It returns ctx.Err() once ctx is
// done. publish runs on Watch's goroutine.
//
// Only configurations the history accounts for are published: what is
// published for version V is the resource set of V's history record,
// written by the same transaction as the version (commit), provided it
// matches the record's hash and passes config.Validate. A version whose
// record is missing, does not match or does not validate is logged as an
// error and not published; the previous version stays served (a list that
// finds such a version publishes the previous one again, or nothing if
// there is none). Keys under resources/ that differ from the record (a
// write behind the control plane's back) are logged as a warning, once
// per published version, and never published.
func (s *Store) Watch(ctx context.Context, publish PublishFunc) error {
	return s.follow(ctx, "config", &watcher{store: s, publish: publish})
}

const (
	minBackoff  = 100 * time.Millisecond
	maxBackoff  = 5 * time.Second
	listTimeout = 10 * time.Second
	// maxDriftKeys bounds how many differing keys a drift warning names.
	maxDriftKeys = 10
)

type watcher struct {
	store   *Store
	publish PublishFunc

	// rev is the etcd revision the in-memory copy reflects; 0 means list.
	rev int64
	// version is the version key's value at rev, published or not.
	version uint64
	// live is every key under resources/ at rev, by config.Key; a nil
	// value did not decode. It is only compared with what is published.
	live map[string]*meridianv1.Resource
	// published is the configuration last handed to publish; nil before
	// the first.
	published *accounted
	// warned says the drift of live from published was logged already.
	warned bool
}

// accounted is a configuration its history record accounts for.
type accounted struct {
	version   uint64
	committed time.Time
	// resources in config.Sort order.
	resources []*meridianv1.Resource
}

// listWatcher is one list-then-watch follower that follow drives.
type listWatcher interface {
	// list loads the current state and the revision it reflects.
	list(ctx context.Context) error
	// watch follows changes from that revision until the watch ends.
	watch(ctx context.Context) error
	// needsList reports whether only a new list can recover.
	needsList() bool
}

func (w *watcher) needsList() bool { return w.rev == 0 }

// follow lists and watches with w until ctx is done: a failed list is
// retried with growing backoff, an interrupted watch resumes (or lists
// again when w needs it) after a short pause. what names the data in logs.
func (s *Store) follow(ctx context.Context, what string, w listWatcher) error {
	backoff := minBackoff
	for {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if w.needsList() {
			if err := w.list(ctx); err != nil {
				if ctx.Err() == nil {
					s.log.Warn(what+" list failed, retrying", "err", err, "retry_in", backoff)
				}
				if sleep(ctx, jitter(backoff)) != nil {
					return ctx.Err()
				}
				backoff = min(2*backoff, maxBackoff)
				continue
			}
		}
		err := w.watch(ctx)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		s.log.Warn(what+" watch interrupted", "err", err, "relist", w.needsList())
		if sleep(ctx, jitter(minBackoff)) != nil {
			return ctx.Err()
		}
		backoff = minBackoff
	}
}

func (w *watcher) list(ctx context.Context) error {
	lctx, cancel := context.WithTimeout(ctx, listTimeout)
	defer cancel()
	live, err := w.store.readLive(lctx)
	if err != nil {
		return err
	}
	// History records never change, so reading the record after the
	// revision of the list still reads the one its version was written
	// with.
	raw, err := w.store.readRecord(lctx, live.version)
	if err != nil {
		return err
	}
	w.rev, w.version, w.live = live.revision, live.version, live.resources
	if !w.accept(live.version, raw) && w.published != nil {
		p := w.published
		w.publish(p.version, p.committed, p.resources)
	}
	w.checkDrift()
	return nil
}

// watch follows changes from w.rev+1 until the watch ends. It resets
// w.rev to 0 when only a new list can recover.
//
// The watched range starts at the history records, which sort just before
// the resources: a version's record is written in the same transaction as
// the version key and arrives in the same response. The price is that
// every change brings the whole configuration once more, in the record.
func (w *watcher) watch(ctx context.Context) error {
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	s := w.store
	wch := s.client.Watch(wctx, s.historyPrefix(), clientv3.WithRange(s.configEnd()), clientv3.WithRev(w.rev+1))
	for resp := range wch {
		if err := watchFailure(resp, w.rev); err != nil {
			w.rev = 0
			return err
		}
		changed, advanced, records, err := w.apply(resp.Events)
		if err != nil {
			w.rev = 0
			return err
		}
		if advanced {
			raw, ok := records[w.version]
			if !ok {
				if raw, err = s.readRecord(ctx, w.version); err != nil {
					w.rev = 0
					return err
				}
			}
			w.accept(w.version, raw)
		}
		if changed {
			w.checkDrift()
		}
	}
	return errors.New("watch channel closed")
}

// apply folds one watch response into w.version and w.live. It reports
// whether a resource or the version changed, whether the version moved,
// and the raw history records the response carried, by version.
func (w *watcher) apply(events []*clientv3.Event) (changed, advanced bool, records map[uint64][]byte, err error) {
	s := w.store
	records = map[uint64][]byte{}
	for _, ev := range events {
		key := string(ev.Kv.Key)
		switch {
		case strings.HasPrefix(key, s.historyPrefix()):
			if v, ok := s.historyVersion(key); ok && ev.Type == clientv3.EventTypePut {
				records[v] = ev.Kv.Value
			}
		case key == s.versionKey() && ev.Type == clientv3.EventTypePut:
			v, err := parseVersion(ev.Kv.Value)
			if err != nil {
				return false, false, nil, fmt.Errorf("etcd key %s: %w", key, err)
			}
			changed, advanced = true, advanced || v != w.version
			w.version = v
		case strings.HasPrefix(key, s.resourcesPrefix()):
			changed = true
			name := strings.TrimPrefix(key, s.resourcesPrefix())
			if ev.Type == clientv3.EventTypeDelete {
				delete(w.live, name)
				break
			}
			w.live[name] = decodeResource(ev.Kv.Value)
		}
		w.rev = ev.Kv.ModRevision
	}
	return changed, advanced, records, nil
}

// accept publishes version if raw, its history record, accounts for it,
// and logs why not otherwise. It reports whether it published.
func (w *watcher) accept(version uint64, raw []byte) bool {
	acc, err := account(version, raw)
	if err != nil {
		w.store.log.Error("configuration in etcd is not accounted for by its history; not publishing it",
			"version", version, "reason", err)
		return false
	}
	if w.published == nil || w.published.version != acc.version {
		w.warned = false
	}
	w.published = acc
	w.publish(acc.version, acc.committed, acc.resources)
	return true
}

// account returns the configuration of version from its raw history
// record, or why the record does not account for it. Version 0 is the
// empty configuration and needs no record.
func account(version uint64, raw []byte) (*accounted, error) {
	if version == 0 {
		return &accounted{resources: []*meridianv1.Resource{}}, nil
	}
	if raw == nil {
		return nil, errors.New("no history record")
	}
	rec := &meridianv1.HistoryRecord{}
	if err := proto.Unmarshal(raw, rec); err != nil {
		return nil, fmt.Errorf("history record does not decode: %w", err)
	}
	if v := rec.GetEntry().GetVersion(); v != version {
		return nil, fmt.Errorf("history record is for version %d", v)
	}
	rs := rec.GetResources()
	if config.Hash(rs) != rec.GetEntry().GetHash() {
		return nil, errors.New("history record's hash does not match its resources")
	}
	if err := config.Validate(rs); err != nil {
		return nil, fmt.Errorf("recorded configuration is invalid: %w", err)
	}
	config.Sort(rs)
	return &accounted{version: version, committed: commitTime(rec), resources: rs}, nil
}

// checkDrift logs, once per published version, the keys under resources/
// that differ from the published configuration.
func (w *watcher) checkDrift() {
	if w.warned || w.published == nil {
		return
	}
	keys := driftKeys(w.live, w.published.resources)
	if len(keys) == 0 {
		return
	}
	w.warned = true
	w.store.log.Warn("resources in etcd differ from the history record of the published version; serving the recorded configuration",
		"version", w.published.version, "differing", len(keys), "keys", keys[:min(len(keys), maxDriftKeys)])
}

// driftKeys lists, in sortKeys order, the keys whose live value is not the
// recorded one: missing, different, extra or undecodable.
func driftKeys(live map[string]*meridianv1.Resource, recorded []*meridianv1.Resource) []string {
	var keys []string
	seen := make(map[string]bool, len(recorded))
	for _, r := range recorded {
		key := config.Key(r)
		seen[key] = true
		if l, ok := live[key]; !ok || !proto.Equal(l, r) {
			keys = append(keys, key)
		}
	}
	for key := range live {
		if !seen[key] {
			keys = append(keys, key)
		}
	}
	sortKeys(keys)
	return keys
}

// liveConfig is what etcd holds under resources/ and version at one
// revision.
type liveConfig struct {
	revision int64
	version  uint64
	// resources by config.Key; a nil value did not decode.
	resources map[string]*meridianv1.Resource
}

// readLive reads the configuration keys like load, but keeps going past a
// resource that does not decode: the watcher only compares them, and a
// stray value must not stop it from following the history.
func (s *Store) readLive(ctx context.Context) (*liveConfig, error) {
	start := time.Now()
	resp, err := s.client.Get(ctx, s.resourcesPrefix(), clientv3.WithRange(s.configEnd()))
	s.observe(opReadConfig, start, err)
	if err != nil {
		return nil, etcdError(err)
	}
	lc := &liveConfig{revision: resp.Header.Revision, resources: make(map[string]*meridianv1.Resource, len(resp.Kvs))}
	for _, kv := range resp.Kvs {
		key := string(kv.Key)
		switch {
		case key == s.versionKey():
			if lc.version, err = parseVersion(kv.Value); err != nil {
				return nil, fmt.Errorf("etcd key %s: %w", key, err)
			}
		case strings.HasPrefix(key, s.resourcesPrefix()):
			lc.resources[strings.TrimPrefix(key, s.resourcesPrefix())] = decodeResource(kv.Value)
		}
	}
	return lc, nil
}

// decodeResource decodes a StoredResource value; nil when it does not.
func decodeResource(b []byte) *meridianv1.Resource {
	sr := &meridianv1.StoredResource{}
	if err := proto.Unmarshal(b, sr); err != nil {
		return nil
	}
	return sr.GetResource()
}

// readRecord returns the encoded history record of version; nil when there
// is none.
func (s *Store) readRecord(ctx context.Context, version uint64) ([]byte, error) {
	if version == 0 {
		return nil, nil
	}
	start := time.Now()
	resp, err := s.client.Get(ctx, s.historyKey(version))
	s.observe(opReadRecord, start, err)
	if err != nil {
		return nil, etcdError(err)
	}
	if len(resp.Kvs) == 0 {
		return nil, nil
	}
	return resp.Kvs[0].Value, nil
}

// historyVersion returns the version a history key names.
func (s *Store) historyVersion(key string) (uint64, bool) {
	v, err := strconv.ParseUint(strings.TrimPrefix(key, s.historyPrefix()), 10, 64)
	return v, err == nil
}

func commitTime(rec *meridianv1.HistoryRecord) time.Time {
	if t := rec.GetEntry().GetTime(); t != nil {
		return t.AsTime()
	}
	return time.Time{}
}

// jitter spreads retries of many replicas: d ± 20%.
func jitter(d time.Duration) time.Duration {
	return d*8/10 + time.Duration(rand.Int64N(int64(d*4/10)+1))
}

// watchFailure returns why a watch response from revision rev+1 on ends
// the watch: the revisions it needs were compacted, or the watch failed.
func watchFailure(resp clientv3.WatchResponse, rev int64) error {
	if resp.CompactRevision != 0 {
		return fmt.Errorf("revision %d compacted (oldest is %d)", rev+1, resp.CompactRevision)
	}
	return resp.Err()
}

// watchPrefix follows the keys under prefix from *rev+1 until the watch
// ends, handing each response's events to handle after moving *rev past
// them. It sets *rev to 0 when only a new list can recover.
func (s *Store) watchPrefix(ctx context.Context, prefix string, rev *int64, handle func([]*clientv3.Event)) error {
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	wch := s.client.Watch(wctx, prefix, clientv3.WithPrefix(), clientv3.WithRev(*rev+1))
	for resp := range wch {
		if err := watchFailure(resp, *rev); err != nil {
			*rev = 0
			return err
		}
		if n := len(resp.Events); n > 0 {
			*rev = resp.Events[n-1].Kv.ModRevision
			handle(resp.Events)
		}
	}
	return errors.New("watch channel closed")
}
