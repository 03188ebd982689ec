package store

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

// Operations of the audit records.
const (
	opAppendAudit = "append_audit"
	opListAudit   = "list_audit"
	opPruneAudit  = "prune_audit"
)

// auditSuffixChars spell the random end of an audit key, which keeps two
// records of the same nanosecond (on two replicas) apart.
const auditSuffixChars = "abcdefghijklmnopqrstuvwxyz234567"

func (s *Store) auditPrefix() string { return s.prefix + "audit/" }

// auditFrom is where the keys of records at or after t start: keys sort
// by time, since the time is zero-padded. Times outside what UnixNano
// represents are clamped, so a zero time is the start, not garbage.
func (s *Store) auditFrom(t time.Time) string {
	var nanos int64
	switch {
	case t.Before(time.Unix(0, 0)):
		nanos = 0
	case t.After(time.Unix(0, math.MaxInt64)):
		nanos = math.MaxInt64
	default:
		nanos = t.UnixNano()
	}
	return fmt.Sprintf("%s%020d", s.auditPrefix(), nanos)
}

func (s *Store) auditKey(t time.Time) string {
	suffix := make([]byte, 8)
	for i := range suffix {
		suffix[i] = auditSuffixChars[rand.IntN(len(auditSuffixChars))]
	}
	return s.auditFrom(t) + "-" + string(suffix)
}

// AppendAudit stores one record under a key made from its time (now when
// unset, set on a copy).
func (s *Store) AppendAudit(ctx context.Context, rec *meridianv1.AuditRecord) error {
	if rec.GetTime() == nil {
		rec = proto.CloneOf(rec)
		rec.Time = timestamppb.New(s.now())
	}
	if rec.GetTime().AsTime().Before(time.Unix(0, 0)) {
		return fmt.Errorf("%w: audit record time %s is before 1970", ErrInvalid, rec.GetTime().AsTime())
	}
	b, err := proto.Marshal(rec)
	if err != nil {
		return fmt.Errorf("encode audit record: %w", err)
	}
	start := time.Now()
	_, err = s.client.Txn(ctx).Then(clientv3.OpPut(s.auditKey(rec.GetTime().AsTime()), string(b))).Commit()
	s.observe(opAppendAudit, start, err)
	if err != nil {
		return etcdError(err)
	}
	return nil
}

// ListAudit returns the records at or after since (zero: all), oldest
// first. limit > 0 keeps only the newest limit of them.
func (s *Store) ListAudit(ctx context.Context, since time.Time, limit int) ([]*meridianv1.AuditRecord, error) {
	from := s.auditPrefix()
	if !since.IsZero() {
		from = s.auditFrom(since)
	}
	opts := []clientv3.OpOption{clientv3.WithRange(clientv3.GetPrefixRangeEnd(s.auditPrefix()))}
	if limit > 0 {
		// The newest limit are the first limit in descending order.
		opts = append(opts, clientv3.WithSort(clientv3.SortByKey, clientv3.SortDescend), clientv3.WithLimit(int64(limit)))
	}
	start := time.Now()
	resp, err := s.client.Get(ctx, from, opts...)
	s.observe(opListAudit, start, err)
	if err != nil {
		return nil, etcdError(err)
	}
	out := make([]*meridianv1.AuditRecord, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		rec := &meridianv1.AuditRecord{}
		if err := proto.Unmarshal(kv.Value, rec); err != nil {
			return nil, fmt.Errorf("etcd key %s: %w", kv.Key, err)
		}
		out = append(out, rec)
	}
	if limit > 0 {
		slices.Reverse(out)
	}
	return out, nil
}

// PruneAudit deletes the records older than before with one range delete
// and returns how many it deleted.
func (s *Store) PruneAudit(ctx context.Context, before time.Time) (int64, error) {
	start := time.Now()
	resp, err := s.client.Txn(ctx).Then(
		clientv3.OpDelete(s.auditPrefix(), clientv3.WithRange(s.auditFrom(before))),
	).Commit()
	s.observe(opPruneAudit, start, err)
	if err != nil {
		return 0, etcdError(err)
	}
	return resp.Responses[0].GetResponseDeleteRange().GetDeleted(), nil
}
