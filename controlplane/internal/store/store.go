// Package store keeps Meridian's configuration in etcd: one key per
// resource, a dense version counter, a history record per version holding
// the whole configuration (so rollback never depends on etcd's MVCC
// history), and the status of every data plane in the fleet.
//
// Key layout under the prefix (default "/meridian/"):
//
//	resources/<Kind>/<name>   meridianv1.StoredResource
//	version                   current version, decimal
//	history/<%020d version>   meridianv1.HistoryRecord
//	dataplanes/<node id>      meridianv1.DataplaneStatus (persistent)
//	dataplanes-live/<node id> "<replica id> <stream id>", under the serving replica's lease
//	audit/<%020d unix nanos>-<8 random chars>  meridianv1.AuditRecord
//	auth/join-tokens/<id>     meridianv1.StoredJoinToken (the secret only hashed)
//	auth/identities/<node id> meridianv1.Identity: the certificate serials that open the node's stream
//	auth/revocations/<node id> meridianv1.Revocation, under a lease of the revocation TTL
//	auth/ca                   meridianv1.CAPublic: the cluster CA certificate, never a key
//
// The auth/ records sort before history/, outside the range the
// configuration watch follows, so enrolments and renewals never wake it.
//
// Every replica watches the configuration keys and the history records,
// which carry each version's commit time (Watch), and counts the
// dataplanes-live keys (WatchFleet), so each sees the whole fleet.
package store

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"google.golang.org/protobuf/proto"

	"github.com/meridian-gw/meridian/controlplane/internal/metrics"
	"github.com/meridian-gw/meridian/proto/config"
	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

// DefaultPrefix is where the configuration lives in etcd unless Options
// says otherwise.
const DefaultPrefix = "/meridian/"

// Errors callers tell apart with errors.Is.
var (
	// ErrInvalid: the request or the configuration it would produce is
	// invalid. Configuration problems are also a config.ErrorList in the
	// chain (errors.As).
	ErrInvalid = errors.New("invalid")
	// ErrConflict: a resource this change touches changed after the
	// version the caller based it on.
	ErrConflict = errors.New("conflict")
	// ErrNotFound: no such resource or version.
	ErrNotFound = errors.New("not found")
	// ErrUnavailable: etcd did not answer, or the store was closed.
	ErrUnavailable = errors.New("store unavailable")
	// ErrTooLarge: the change does not fit in one etcd transaction.
	ErrTooLarge = errors.New("change too large")
	// ErrContention: other writers kept winning the race for the version
	// key; retrying later is fine.
	ErrContention = errors.New("too many concurrent changes")
)

// Options configure a Store.
type Options struct {
	// Prefix of every key; DefaultPrefix when empty. It should end in "/".
	Prefix string
	// ReplicaID names this control-plane replica in data-plane status.
	ReplicaID string
	// Logger receives the watcher's and status writer's problems.
	// slog.Default() when nil.
	Logger *slog.Logger
	// LeaseTTL is how long a crashed replica's data planes keep showing as
	// connected. 15s when zero.
	LeaseTTL time.Duration
	// Metrics records the latency of every etcd request; nil records
	// nothing.
	Metrics *metrics.Metrics
}

// Store is the etcd-backed configuration store. It is safe for concurrent
// use. Close releases the replica's lease.
type Store struct {
	client    *clientv3.Client
	prefix    string
	replicaID string
	log       *slog.Logger
	leaseTTL  time.Duration
	metrics   *metrics.Metrics
	now       func() time.Time

	// ctx outlives requests: the lease keep-alive runs on it.
	ctx    context.Context
	cancel context.CancelFunc

	mu      sync.Mutex
	session *concurrency.Session
	closed  bool
}

// New returns a store using client. The client stays owned by the caller.
func New(client *clientv3.Client, opts Options) *Store {
	if opts.Prefix == "" {
		opts.Prefix = DefaultPrefix
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.LeaseTTL <= 0 {
		opts.LeaseTTL = 15 * time.Second
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Store{
		client:    client,
		prefix:    opts.Prefix,
		replicaID: opts.ReplicaID,
		log:       opts.Logger,
		leaseTTL:  opts.LeaseTTL,
		metrics:   opts.Metrics,
		now:       time.Now,
		ctx:       ctx,
		cancel:    cancel,
	}
}

// Close revokes this replica's lease, so its data planes show as
// disconnected at once, and stops the lease keep-alive.
func (s *Store) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	var err error
	if s.session != nil {
		err = s.session.Close()
		s.session = nil
	}
	s.cancel()
	return err
}

// Operations label the etcd request metrics: one per kind of request the
// store makes.
const (
	opReadConfig          = "read_config"
	opReadVersion         = "read_version"
	opReadResource        = "read_resource"
	opReadHistory         = "read_history"
	opReadRecord          = "read_record"
	opCommit              = "commit"
	opGrantLease          = "grant_lease"
	opConnectDataplane    = "connect_dataplane"
	opUpdateDataplane     = "update_dataplane"
	opDisconnectDataplane = "disconnect_dataplane"
	opListDataplanes      = "list_dataplanes"
	opListFleet           = "list_fleet"
)

// observe records an etcd request of operation op that started at start.
func (s *Store) observe(op string, start time.Time, err error) {
	s.metrics.ObserveEtcdRequest(op, time.Since(start), err)
}

func (s *Store) resourcesPrefix() string { return s.prefix + "resources/" }
func (s *Store) versionKey() string      { return s.prefix + "version" }
func (s *Store) historyPrefix() string   { return s.prefix + "history/" }
func (s *Store) historyKey(v uint64) string {
	return fmt.Sprintf("%s%020d", s.historyPrefix(), v)
}
func (s *Store) resourceKey(key string) string { return s.resourcesPrefix() + key }

// configEnd ends the key range that holds the configuration: resources/
// and version are adjacent under the prefix, so one range read (or watch)
// sees both at a single revision.
func (s *Store) configEnd() string { return s.versionKey() + "\x00" }

// state is the configuration as read at one etcd revision.
type state struct {
	revision int64
	version  uint64
	// versionRev is the version key's ModRevision (0 when absent); every
	// write compares it.
	versionRev int64
	// resources by config.Key.
	resources map[string]*meridianv1.StoredResource
}

func (s *Store) load(ctx context.Context) (*state, error) {
	start := time.Now()
	resp, err := s.client.Get(ctx, s.resourcesPrefix(), clientv3.WithRange(s.configEnd()))
	s.observe(opReadConfig, start, err)
	if err != nil {
		return nil, etcdError(err)
	}
	st := &state{revision: resp.Header.Revision, resources: make(map[string]*meridianv1.StoredResource, len(resp.Kvs))}
	for _, kv := range resp.Kvs {
		key := string(kv.Key)
		switch {
		case key == s.versionKey():
			v, err := parseVersion(kv.Value)
			if err != nil {
				return nil, fmt.Errorf("etcd key %s: %w", key, err)
			}
			st.version, st.versionRev = v, kv.ModRevision
		case strings.HasPrefix(key, s.resourcesPrefix()):
			sr := &meridianv1.StoredResource{}
			if err := proto.Unmarshal(kv.Value, sr); err != nil {
				return nil, fmt.Errorf("etcd key %s: %w", key, err)
			}
			st.resources[strings.TrimPrefix(key, s.resourcesPrefix())] = sr
		}
	}
	return st, nil
}

func parseVersion(b []byte) (uint64, error) {
	v, err := strconv.ParseUint(string(b), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("bad version %q", b)
	}
	return v, nil
}

// Current returns the current configuration version (0 before the first
// apply).
func (s *Store) Current(ctx context.Context) (uint64, error) {
	start := time.Now()
	resp, err := s.client.Get(ctx, s.versionKey())
	s.observe(opReadVersion, start, err)
	if err != nil {
		return 0, etcdError(err)
	}
	if len(resp.Kvs) == 0 {
		return 0, nil
	}
	return parseVersion(resp.Kvs[0].Value)
}

// Get returns one resource and the current version. kind may be spelled
// any way config.ParseKind accepts.
func (s *Store) Get(ctx context.Context, kind, name string) (*meridianv1.Resource, uint64, error) {
	kind, err := parseKind(kind)
	if err != nil {
		return nil, 0, err
	}
	key := kind + "/" + name
	start := time.Now()
	resp, err := s.client.Txn(ctx).Then(
		clientv3.OpGet(s.resourceKey(key)),
		clientv3.OpGet(s.versionKey()),
	).Commit()
	s.observe(opReadResource, start, err)
	if err != nil {
		return nil, 0, etcdError(err)
	}
	var version uint64
	if kvs := resp.Responses[1].GetResponseRange().GetKvs(); len(kvs) == 1 {
		if version, err = parseVersion(kvs[0].Value); err != nil {
			return nil, 0, err
		}
	}
	kvs := resp.Responses[0].GetResponseRange().GetKvs()
	if len(kvs) == 0 {
		return nil, version, fmt.Errorf("%w: %s %q", ErrNotFound, kind, name)
	}
	sr := &meridianv1.StoredResource{}
	if err := proto.Unmarshal(kvs[0].Value, sr); err != nil {
		return nil, 0, fmt.Errorf("etcd key %s: %w", kvs[0].Key, err)
	}
	return sr.GetResource(), version, nil
}

// List returns every resource (kind "") or every resource of one kind,
// sorted as config.Sort, and the current version.
func (s *Store) List(ctx context.Context, kind string) ([]*meridianv1.Resource, uint64, error) {
	if kind != "" {
		var err error
		if kind, err = parseKind(kind); err != nil {
			return nil, 0, err
		}
	}
	st, err := s.load(ctx)
	if err != nil {
		return nil, 0, err
	}
	var out []*meridianv1.Resource
	for _, sr := range st.resources {
		if kind == "" || config.Kind(sr.GetResource()) == kind {
			out = append(out, sr.GetResource())
		}
	}
	config.Sort(out)
	return out, st.version, nil
}

func parseKind(kind string) (string, error) {
	k, err := config.ParseKind(kind)
	if err != nil {
		return "", fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	return k, nil
}

// etcdError classifies an etcd client error for callers.
func etcdError(err error) error {
	switch {
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return err
	case errors.Is(err, rpctypes.ErrTooManyOps), errors.Is(err, rpctypes.ErrRequestTooLarge):
		return fmt.Errorf("%w for one etcd transaction (raise etcd's --max-txn-ops / --max-request-bytes): %w", ErrTooLarge, err)
	}
	return fmt.Errorf("%w: %w", ErrUnavailable, err)
}
