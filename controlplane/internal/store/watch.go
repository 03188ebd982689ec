package store

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/proto"

	"github.com/meridian-gw/meridian/proto/config"
	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

// PublishFunc receives the whole configuration at a version. committed is
// when that version was committed, as its history record says (the
// committing replica's clock); it is zero for version 0 and when the
// record is missing. resources are sorted as config.Sort and must not be
// modified.
type PublishFunc func(version uint64, committed time.Time, resources []*meridianv1.Resource)

// Watch keeps an in-memory copy of the configuration: it lists it at a
// revision R, then watches from R+1. It calls publish after every list
// (even when the version did not move, so callers learn the store is
// reachable) and whenever a watch response advances the version. When the
// watch falls behind a compaction or fails, it lists again; while etcd is
// down it keeps retrying with backoff. It returns ctx.Err() once ctx is
// done. publish runs on Watch's goroutine.
func (s *Store) Watch(ctx context.Context, publish PublishFunc) error {
	return s.follow(ctx, "config", &watcher{store: s, publish: publish})
}

const (
	minBackoff  = 100 * time.Millisecond
	maxBackoff  = 5 * time.Second
	listTimeout = 10 * time.Second
)

type watcher struct {
	store   *Store
	publish PublishFunc

	// rev is the etcd revision the in-memory copy reflects; 0 means list.
	rev       int64
	version   uint64
	committed time.Time
	resources map[string]*meridianv1.Resource
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
	st, err := w.store.load(lctx)
	if err != nil {
		return err
	}
	committed, err := w.store.committed(lctx, st.version)
	if err != nil {
		return err
	}
	w.rev, w.version, w.committed = st.revision, st.version, committed
	w.resources = make(map[string]*meridianv1.Resource, len(st.resources))
	for key, sr := range st.resources {
		w.resources[key] = sr.GetResource()
	}
	w.emit()
	return nil
}

// watch follows changes from w.rev+1 until the watch ends. It resets
// w.rev to 0 when only a new list can recover.
//
// The watched range starts at the history records, which sort just before
// the resources: a version's record (and so its commit time) is written in
// the same transaction as the version key and arrives in the same
// response. The price is that every change brings the whole configuration
// once more, in the record.
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
		advanced := false
		committed := map[uint64]time.Time{}
		for _, ev := range resp.Events {
			key := string(ev.Kv.Key)
			switch {
			case strings.HasPrefix(key, s.historyPrefix()):
				if ev.Type != clientv3.EventTypePut {
					break
				}
				rec := &meridianv1.HistoryRecord{}
				if err := proto.Unmarshal(ev.Kv.Value, rec); err != nil {
					w.rev = 0
					return fmt.Errorf("etcd key %s: %w", key, err)
				}
				committed[rec.GetEntry().GetVersion()] = commitTime(rec)
			case key == s.versionKey() && ev.Type == clientv3.EventTypePut:
				v, err := parseVersion(ev.Kv.Value)
				if err != nil {
					w.rev = 0
					return fmt.Errorf("etcd key %s: %w", key, err)
				}
				advanced = advanced || v != w.version
				w.version = v
			case strings.HasPrefix(key, s.resourcesPrefix()):
				name := strings.TrimPrefix(key, s.resourcesPrefix())
				if ev.Type == clientv3.EventTypeDelete {
					delete(w.resources, name)
					break
				}
				sr := &meridianv1.StoredResource{}
				if err := proto.Unmarshal(ev.Kv.Value, sr); err != nil {
					w.rev = 0
					return fmt.Errorf("etcd key %s: %w", key, err)
				}
				w.resources[name] = sr.GetResource()
			}
			w.rev = ev.Kv.ModRevision
		}
		// A transaction's events share one revision and arrive in one
		// response, so the map is consistent whenever the version moved,
		// and the version's history record came with it.
		if advanced {
			w.committed = committed[w.version]
			w.emit()
		}
	}
	return errors.New("watch channel closed")
}

func (w *watcher) emit() {
	rs := make([]*meridianv1.Resource, 0, len(w.resources))
	for _, r := range w.resources {
		rs = append(rs, r)
	}
	config.Sort(rs)
	w.publish(w.version, w.committed, rs)
}

// committed returns the commit time of version from its history record;
// zero for version 0 or when the record is missing.
func (s *Store) committed(ctx context.Context, version uint64) (time.Time, error) {
	if version == 0 {
		return time.Time{}, nil
	}
	rec, err := s.Record(ctx, version)
	if errors.Is(err, ErrNotFound) {
		s.log.Warn("no history record for the current version; its commit time is unknown", "version", version)
		return time.Time{}, nil
	}
	if err != nil {
		return time.Time{}, err
	}
	return commitTime(rec), nil
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
