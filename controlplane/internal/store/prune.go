package store

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/proto"

	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

// Operations of data-plane pruning.
const (
	opListPrunable   = "list_prunable"
	opPruneDataplane = "prune_dataplane"
)

// PruneDataplanes deletes the status of every data plane that is not
// connected (has no liveness key) and was last seen before before (or
// never), and returns their ids, sorted. Each delete is guarded by the
// status's revision and the liveness key's absence, so a node that
// reconnected meanwhile is kept. Identities are left alone: a pruned node
// may still come back with its certificate.
func (s *Store) PruneDataplanes(ctx context.Context, before time.Time) ([]string, error) {
	start := time.Now()
	resp, err := s.client.Txn(ctx).Then(
		clientv3.OpGet(s.dataplaneKey(""), clientv3.WithPrefix()),
		clientv3.OpGet(s.liveKey(""), clientv3.WithPrefix(), clientv3.WithKeysOnly()),
	).Commit()
	s.observe(opListPrunable, start, err)
	if err != nil {
		return nil, etcdError(err)
	}
	live := map[string]bool{}
	for _, kv := range resp.Responses[1].GetResponseRange().GetKvs() {
		live[strings.TrimPrefix(string(kv.Key), s.liveKey(""))] = true
	}
	var pruned []string
	var errs []error
	for _, kv := range resp.Responses[0].GetResponseRange().GetKvs() {
		id := strings.TrimPrefix(string(kv.Key), s.dataplaneKey(""))
		st := &meridianv1.DataplaneStatus{}
		if err := proto.Unmarshal(kv.Value, st); err != nil {
			errs = append(errs, fmt.Errorf("etcd key %s: %w", kv.Key, err))
			continue
		}
		if live[id] || !st.GetLastSeen().AsTime().Before(before) {
			continue
		}
		ok, err := s.pruneDataplane(ctx, id, kv.ModRevision)
		if err != nil {
			return pruned, err
		}
		if ok {
			pruned = append(pruned, id)
		}
	}
	if len(errs) > 0 {
		s.log.Warn("skipped unreadable data-plane status while pruning", "err", errors.Join(errs...))
	}
	return pruned, nil
}

// pruneDataplane deletes the status of node id if it is still at revision
// rev and the node has no live stream. It reports whether it did.
func (s *Store) pruneDataplane(ctx context.Context, id string, rev int64) (bool, error) {
	key := s.dataplaneKey(id)
	start := time.Now()
	resp, err := s.client.Txn(ctx).
		If(
			clientv3.Compare(clientv3.ModRevision(key), "=", rev),
			clientv3.Compare(clientv3.CreateRevision(s.liveKey(id)), "=", 0),
		).
		Then(clientv3.OpDelete(key)).
		Commit()
	s.observe(opPruneDataplane, start, err)
	if err != nil {
		return false, etcdError(err)
	}
	return resp.Succeeded, nil
}
