package store

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"google.golang.org/protobuf/proto"

	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

// grantTimeout bounds a lease grant, so a data-plane stream does not hang
// on an unreachable etcd.
const grantTimeout = 5 * time.Second

func (s *Store) dataplaneKey(id string) string { return s.prefix + "dataplanes/" + id }
func (s *Store) liveKey(id string) string      { return s.prefix + "dataplanes-live/" + id }

// liveValue identifies one stream of this replica, so an old stream of a
// node that has reconnected elsewhere cannot overwrite or delete the new
// stream's state.
func (s *Store) liveValue(stream string) string { return s.replicaID + " " + stream }

// lease returns this replica's lease, granting a new one when there is
// none or the old one expired (etcd was unreachable for longer than the
// TTL).
func (s *Store) lease(ctx context.Context) (clientv3.LeaseID, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return 0, fmt.Errorf("%w: closed", ErrUnavailable)
	}
	if s.session != nil {
		select {
		case <-s.session.Done():
			s.session = nil
		default:
			return s.session.Lease(), nil
		}
	}
	gctx, cancel := context.WithTimeout(ctx, grantTimeout)
	defer cancel()
	ttl := int64(max(1, s.leaseTTL.Seconds()))
	start := time.Now()
	grant, err := s.client.Grant(gctx, ttl)
	s.observe(opGrantLease, start, err)
	if err != nil {
		return 0, etcdError(err)
	}
	// The session keeps the lease alive on the store's context, which
	// outlives this request; Close ends it.
	sess, err := concurrency.NewSession(s.client, concurrency.WithLease(grant.ID), concurrency.WithTTL(int(ttl)), concurrency.WithContext(s.ctx))
	if err != nil {
		return 0, etcdError(err)
	}
	s.session = sess
	return grant.ID, nil
}

func validStatus(st *meridianv1.DataplaneStatus) (string, error) {
	id := st.GetNode().GetId()
	if err := checkNodeID(id); err != nil {
		return "", fmt.Errorf("data-plane status: %w", err)
	}
	return id, nil
}

// ConnectDataplane records that stream (unique per stream of this replica)
// now serves the data plane st.Node.Id, taking over from any earlier
// stream of the same node.
func (s *Store) ConnectDataplane(ctx context.Context, stream string, st *meridianv1.DataplaneStatus) error {
	id, value, err := s.record(st, true)
	if err != nil {
		return err
	}
	lease, err := s.lease(ctx)
	if err != nil {
		return err
	}
	start := time.Now()
	_, err = s.client.Txn(ctx).Then(
		clientv3.OpPut(s.liveKey(id), s.liveValue(stream), clientv3.WithLease(lease)),
		clientv3.OpPut(s.dataplaneKey(id), value),
	).Commit()
	s.observe(opConnectDataplane, start, err)
	if err != nil {
		return etcdError(err)
	}
	return nil
}

// UpdateDataplane records the status of a connected data plane (an ACK, a
// NACK or a last-seen refresh). It writes only while stream still owns the
// node, and restores the liveness key if it was lost with an expired lease.
func (s *Store) UpdateDataplane(ctx context.Context, stream string, st *meridianv1.DataplaneStatus) error {
	id, value, err := s.record(st, true)
	if err != nil {
		return err
	}
	lease, err := s.lease(ctx)
	if err != nil {
		return err
	}
	live := s.liveKey(id)
	writes := []clientv3.Op{
		clientv3.OpPut(live, s.liveValue(stream), clientv3.WithLease(lease)),
		clientv3.OpPut(s.dataplaneKey(id), value),
	}
	start := time.Now()
	_, err = s.client.Txn(ctx).
		If(clientv3.Compare(clientv3.Value(live), "=", s.liveValue(stream))).
		Then(writes...).
		Else(clientv3.OpTxn([]clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(live), "=", 0)}, writes, nil)).
		Commit()
	s.observe(opUpdateDataplane, start, err)
	if err != nil {
		return etcdError(err)
	}
	return nil
}

// DisconnectDataplane records that stream ended: the node shows as
// disconnected unless another stream has taken it over.
func (s *Store) DisconnectDataplane(ctx context.Context, stream string, st *meridianv1.DataplaneStatus) error {
	id, value, err := s.record(st, false)
	if err != nil {
		return err
	}
	live := s.liveKey(id)
	start := time.Now()
	_, err = s.client.Txn(ctx).
		If(clientv3.Compare(clientv3.Value(live), "=", s.liveValue(stream))).
		Then(clientv3.OpDelete(live), clientv3.OpPut(s.dataplaneKey(id), value)).
		Commit()
	s.observe(opDisconnectDataplane, start, err)
	if err != nil {
		return etcdError(err)
	}
	return nil
}

// record validates st and returns its node id and its stored form: a copy
// with the serving replica and the connection flag set, and the state left
// for ListDataplanes to derive.
func (s *Store) record(st *meridianv1.DataplaneStatus, connected bool) (id, value string, err error) {
	id, err = validStatus(st)
	if err != nil {
		return "", "", err
	}
	st = proto.CloneOf(st)
	st.Controlplane = s.replicaID
	st.Connected = connected
	st.State = meridianv1.DataplaneState_DATAPLANE_STATE_UNSPECIFIED
	b, err := proto.Marshal(st)
	if err != nil {
		return "", "", fmt.Errorf("encode status: %w", err)
	}
	return id, string(b), nil
}

// ListDataplanes returns every data plane the fleet has seen, sorted by
// node id, with connected and state derived against the current version,
// and that version.
func (s *Store) ListDataplanes(ctx context.Context) ([]*meridianv1.DataplaneStatus, uint64, error) {
	start := time.Now()
	resp, err := s.client.Txn(ctx).Then(
		clientv3.OpGet(s.dataplaneKey(""), clientv3.WithPrefix()),
		clientv3.OpGet(s.liveKey(""), clientv3.WithPrefix()),
		clientv3.OpGet(s.versionKey()),
	).Commit()
	s.observe(opListDataplanes, start, err)
	if err != nil {
		return nil, 0, etcdError(err)
	}
	var current uint64
	if kvs := resp.Responses[2].GetResponseRange().GetKvs(); len(kvs) == 1 {
		if current, err = parseVersion(kvs[0].Value); err != nil {
			return nil, 0, err
		}
	}
	live := map[string]string{}
	for _, kv := range resp.Responses[1].GetResponseRange().GetKvs() {
		replica, _, _ := strings.Cut(string(kv.Value), " ")
		live[strings.TrimPrefix(string(kv.Key), s.liveKey(""))] = replica
	}
	var out []*meridianv1.DataplaneStatus
	var errs []error
	for _, kv := range resp.Responses[0].GetResponseRange().GetKvs() {
		st := &meridianv1.DataplaneStatus{}
		if err := proto.Unmarshal(kv.Value, st); err != nil {
			errs = append(errs, fmt.Errorf("etcd key %s: %w", kv.Key, err))
			continue
		}
		replica, connected := live[strings.TrimPrefix(string(kv.Key), s.dataplaneKey(""))]
		st.Connected = connected
		if connected {
			st.Controlplane = replica
		}
		st.State = dataplaneState(st, current)
		out = append(out, st)
	}
	if len(errs) > 0 {
		s.log.Warn("skipped unreadable data-plane status", "err", errors.Join(errs...))
	}
	return out, current, nil
}

func dataplaneState(st *meridianv1.DataplaneStatus, current uint64) meridianv1.DataplaneState {
	switch {
	case !st.GetConnected():
		return meridianv1.DataplaneState_DATAPLANE_STATE_DISCONNECTED
	case st.GetAppliedVersion() == current:
		return meridianv1.DataplaneState_DATAPLANE_STATE_SYNCED
	case st.GetLastNack() != nil && st.GetLastNack().GetVersion() >= current:
		return meridianv1.DataplaneState_DATAPLANE_STATE_NACKED
	}
	return meridianv1.DataplaneState_DATAPLANE_STATE_STALE
}
