package store

import (
	"context"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// WatchFleet follows how many data planes have a live stream to any
// control-plane replica: it counts the liveness keys at a revision R, then
// watches them from R+1. It calls publish with the count after every list
// (even when it did not change) and whenever a watch response changes it;
// liveness refreshes of connected data planes do not. When the watch falls
// behind a compaction or fails, it lists again; while etcd is down it keeps
// retrying with backoff. It returns ctx.Err() once ctx is done. publish
// runs on WatchFleet's goroutine.
func (s *Store) WatchFleet(ctx context.Context, publish func(connected int)) error {
	return s.follow(ctx, "fleet", &fleetWatcher{store: s, publish: publish})
}

type fleetWatcher struct {
	store   *Store
	publish func(connected int)

	// rev is the etcd revision live reflects; 0 means list.
	rev int64
	// live holds the node ids with a liveness key.
	live map[string]struct{}
}

func (w *fleetWatcher) needsList() bool { return w.rev == 0 }

func (w *fleetWatcher) list(ctx context.Context) error {
	lctx, cancel := context.WithTimeout(ctx, listTimeout)
	defer cancel()
	prefix := w.store.liveKey("")
	start := time.Now()
	resp, err := w.store.client.Get(lctx, prefix, clientv3.WithPrefix(), clientv3.WithKeysOnly())
	w.store.observe(opListFleet, start, err)
	if err != nil {
		return etcdError(err)
	}
	w.rev = resp.Header.Revision
	w.live = make(map[string]struct{}, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		w.live[strings.TrimPrefix(string(kv.Key), prefix)] = struct{}{}
	}
	w.publish(len(w.live))
	return nil
}

// watch follows changes from w.rev+1 until the watch ends.
func (w *fleetWatcher) watch(ctx context.Context) error {
	prefix := w.store.liveKey("")
	return w.store.watchPrefix(ctx, prefix, &w.rev, func(events []*clientv3.Event) {
		before := len(w.live)
		for _, ev := range events {
			id := strings.TrimPrefix(string(ev.Kv.Key), prefix)
			if ev.Type == clientv3.EventTypeDelete {
				delete(w.live, id)
			} else {
				w.live[id] = struct{}{}
			}
		}
		if len(w.live) != before {
			w.publish(len(w.live))
		}
	})
}

// FleetSize holds the latest fleet size (connected data planes) and hands
// it to subscribers. Its Set method fits WatchFleet's publish. The zero
// value is not usable; call NewFleetSize.
type FleetSize struct {
	mu    sync.Mutex
	known bool
	size  int
	subs  map[chan int]struct{}
}

// NewFleetSize returns a FleetSize that knows no size yet.
func NewFleetSize() *FleetSize {
	return &FleetSize{subs: make(map[chan int]struct{})}
}

// Set records the fleet size and offers it to every subscriber, unless it
// is the size already recorded. Set never blocks on a subscriber.
func (f *FleetSize) Set(connected int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.known && f.size == connected {
		return
	}
	f.known, f.size = true, connected
	for ch := range f.subs {
		// Only Set sends, under f.mu, so after draining there is room.
		select {
		case <-ch:
		default:
		}
		ch <- connected
	}
}

// Subscribe returns a channel that always holds the latest size not yet
// received: a slow subscriber skips intermediate sizes instead of holding
// up Set. The current size, if known, is already in the channel. Call
// cancel when done; the channel is never closed.
func (f *FleetSize) Subscribe() (updates <-chan int, cancel func()) {
	ch := make(chan int, 1)
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.known {
		ch <- f.size
	}
	f.subs[ch] = struct{}{}
	return ch, func() {
		f.mu.Lock()
		defer f.mu.Unlock()
		delete(f.subs, ch)
	}
}
