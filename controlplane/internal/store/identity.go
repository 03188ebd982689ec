package store

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/meridian-gw/meridian/proto/identity"
	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

// Operations of the identity and revocation records.
const (
	opReadJoinToken   = "read_join_token"
	opEnrol           = "enrol"
	opReadIdentity    = "read_identity"
	opRenewIdentity   = "renew_identity"
	opFindDataplane   = "find_dataplane"
	opRevokeDataplane = "revoke_dataplane"
	opReadRevocation  = "read_revocation"
	opListRevocations = "list_revocations"
)

// casAttempts bounds how often a guarded write of a credential record
// re-reads and retries after another writer won the race.
const casAttempts = 10

func (s *Store) identityKey(nodeID string) string   { return s.prefix + "auth/identities/" + nodeID }
func (s *Store) revocationKey(nodeID string) string { return s.prefix + "auth/revocations/" + nodeID }

func checkNodeID(id string) error {
	if err := identity.CheckNodeID(id); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	return nil
}

// retryPause waits before the next attempt of a guarded write, or gives
// up with ErrContention after the last one.
func retryPause(ctx context.Context, attempt int) error {
	if attempt >= casAttempts {
		return fmt.Errorf("%w: gave up after %d attempts", ErrContention, attempt)
	}
	return sleep(ctx, time.Duration(rand.Int64N(int64(10*time.Millisecond*time.Duration(attempt)))))
}

// EnrolIdentity consumes one use of join token tokenID and records id as
// the identity of node id.NodeId, in one transaction guarded by the
// token's revision and by the node having no live stream on any replica:
// a connected node cannot be taken over (ErrConflict), while the identity
// of a disconnected node is replaced. An unknown, expired or used-up
// token, or a wrong secret, is ErrDenied naming which. It fills
// id.TokenId, id.Labels (the token's), id.EnrolledAt when unset, clears
// id.PreviousSerial, and returns the token as stored after the use.
func (s *Store) EnrolIdentity(ctx context.Context, tokenID, secret string, id *meridianv1.Identity, now time.Time) (*meridianv1.StoredJoinToken, error) {
	if err := checkNodeID(id.GetNodeId()); err != nil {
		return nil, err
	}
	if err := checkTokenID(tokenID); err != nil {
		return nil, err
	}
	if id.GetSerial() == "" {
		return nil, fmt.Errorf("%w: identity of %s has no certificate serial", ErrInvalid, id.GetNodeId())
	}
	for attempt := 1; ; attempt++ {
		tok, rev, err := s.readJoinToken(ctx, tokenID)
		if err != nil {
			return nil, err
		}
		if err := AdmitJoinToken(tok, secret, now); err != nil {
			return nil, err
		}
		used := proto.CloneOf(tok)
		used.Info.Uses++
		id.TokenId, id.Labels, id.PreviousSerial = tokenID, maps.Clone(tok.GetInfo().GetLabels()), ""
		if id.EnrolledAt == nil {
			id.EnrolledAt = timestamppb.New(now)
		}
		ok, err := s.commitEnrolment(ctx, used, rev, id)
		if err != nil {
			return nil, err
		}
		if ok {
			return used, nil
		}
		if err := retryPause(ctx, attempt); err != nil {
			return nil, err
		}
	}
}

// readJoinToken returns a token and its key's ModRevision; an absent
// token is ErrDenied, since only credentials are looked up this way.
func (s *Store) readJoinToken(ctx context.Context, id string) (*meridianv1.StoredJoinToken, int64, error) {
	start := time.Now()
	resp, err := s.client.Get(ctx, s.joinTokenKey(id))
	s.observe(opReadJoinToken, start, err)
	if err != nil {
		return nil, 0, etcdError(err)
	}
	if len(resp.Kvs) == 0 {
		return nil, 0, fmt.Errorf("%w: join token %s is unknown (revoked or never created)", ErrDenied, id)
	}
	tok, err := decodeToken(resp.Kvs[0].Value)
	if err == nil && tok.GetInfo() == nil {
		err = errors.New("join token without info")
	}
	if err != nil {
		return nil, 0, fmt.Errorf("etcd key %s: %w", resp.Kvs[0].Key, err)
	}
	return tok, resp.Kvs[0].ModRevision, nil
}

// AdmitJoinToken reports (ErrDenied, saying why) when tok cannot admit one
// more data plane at now. The secret is checked first, so only its holder
// learns the token's state.
func AdmitJoinToken(tok *meridianv1.StoredJoinToken, secret string, now time.Time) error {
	info := tok.GetInfo()
	switch {
	case !identity.SecretMatches(secret, tok.GetSecretSha256()):
		return fmt.Errorf("%w: join token %s: wrong secret", ErrDenied, info.GetId())
	case info.GetExpiresAt() != nil && !now.Before(info.GetExpiresAt().AsTime()):
		return fmt.Errorf("%w: join token %s expired at %s", ErrDenied, info.GetId(), info.GetExpiresAt().AsTime().Format(time.RFC3339))
	case info.GetMaxUses() > 0 && info.GetUses() >= info.GetMaxUses():
		return fmt.Errorf("%w: join token %s is used up (%d of %d uses)", ErrDenied, info.GetId(), info.GetUses(), info.GetMaxUses())
	}
	return nil
}

// commitEnrolment writes the used token and the identity if the token is
// still at revision tokenRev and the node has no live stream. It reports
// whether it wrote; a live stream is ErrConflict.
func (s *Store) commitEnrolment(ctx context.Context, used *meridianv1.StoredJoinToken, tokenRev int64, id *meridianv1.Identity) (bool, error) {
	tb, err := proto.Marshal(used)
	if err != nil {
		return false, fmt.Errorf("encode join token: %w", err)
	}
	ib, err := proto.Marshal(id)
	if err != nil {
		return false, fmt.Errorf("encode identity: %w", err)
	}
	nodeID, tokenKey, live := id.GetNodeId(), s.joinTokenKey(used.GetInfo().GetId()), s.liveKey(id.GetNodeId())
	start := time.Now()
	resp, err := s.client.Txn(ctx).
		If(
			clientv3.Compare(clientv3.ModRevision(tokenKey), "=", tokenRev),
			clientv3.Compare(clientv3.CreateRevision(live), "=", 0),
		).
		Then(clientv3.OpPut(tokenKey, string(tb)), clientv3.OpPut(s.identityKey(nodeID), string(ib))).
		Else(clientv3.OpGet(live, clientv3.WithCountOnly())).
		Commit()
	s.observe(opEnrol, start, err)
	if err != nil {
		return false, etcdError(err)
	}
	if !resp.Succeeded && resp.Responses[0].GetResponseRange().GetCount() > 0 {
		return false, fmt.Errorf("%w: data plane %s is connected; revoke it first (gatewayctl dataplanes revoke %s) or pick another --node-id", ErrConflict, nodeID, nodeID)
	}
	return resp.Succeeded, nil
}

// Identity returns a node's identity record (ErrNotFound when it has
// none).
func (s *Store) Identity(ctx context.Context, nodeID string) (*meridianv1.Identity, error) {
	if err := checkNodeID(nodeID); err != nil {
		return nil, err
	}
	id, _, err := s.readIdentity(ctx, nodeID)
	return id, err
}

// readIdentity returns a node's identity and its key's ModRevision.
func (s *Store) readIdentity(ctx context.Context, nodeID string) (*meridianv1.Identity, int64, error) {
	start := time.Now()
	resp, err := s.client.Get(ctx, s.identityKey(nodeID))
	s.observe(opReadIdentity, start, err)
	if err != nil {
		return nil, 0, etcdError(err)
	}
	if len(resp.Kvs) == 0 {
		return nil, 0, fmt.Errorf("%w: identity of data plane %s", ErrNotFound, nodeID)
	}
	id := &meridianv1.Identity{}
	if err := proto.Unmarshal(resp.Kvs[0].Value, id); err != nil {
		return nil, 0, fmt.Errorf("etcd key %s: %w", resp.Kvs[0].Key, err)
	}
	return id, resp.Kvs[0].ModRevision, nil
}

// CheckCertificate returns the node's identity if serial is its current
// certificate serial or the previous one, which stays valid until the
// next renewal so that a renewal whose answer was lost does not lock the
// node out. Otherwise it fails with ErrDenied naming the reason.
func (s *Store) CheckCertificate(ctx context.Context, nodeID, serial string) (*meridianv1.Identity, error) {
	if err := checkNodeID(nodeID); err != nil {
		return nil, err
	}
	id, _, err := s.currentIdentity(ctx, nodeID, serial)
	return id, err
}

// currentIdentity reads the node's identity and its revision, and checks
// that serial is one of its two valid serials.
func (s *Store) currentIdentity(ctx context.Context, nodeID, serial string) (*meridianv1.Identity, int64, error) {
	id, rev, err := s.readIdentity(ctx, nodeID)
	if errors.Is(err, ErrNotFound) {
		return nil, 0, fmt.Errorf("%w: data plane %s has no identity: it was revoked or never enrolled", ErrDenied, nodeID)
	}
	if err != nil {
		return nil, 0, err
	}
	if serial == "" || serial != id.GetSerial() && serial != id.GetPreviousSerial() {
		return nil, 0, fmt.Errorf("%w: certificate %s of data plane %s is no longer current: the node re-enrolled or renewed since", ErrDenied, serial, nodeID)
	}
	return id, rev, nil
}

// RenewIdentity makes serial (valid until notAfter) the node's current
// certificate and keeps presented, the one the node holds, as the
// previous. presented must be current or previous (else ErrDenied). The
// write is guarded by the identity's revision and retried when another
// writer won.
func (s *Store) RenewIdentity(ctx context.Context, nodeID, presented string, serial string, notAfter time.Time) (*meridianv1.Identity, error) {
	if err := checkNodeID(nodeID); err != nil {
		return nil, err
	}
	if serial == "" {
		return nil, fmt.Errorf("%w: renewal of %s has no certificate serial", ErrInvalid, nodeID)
	}
	for attempt := 1; ; attempt++ {
		cur, rev, err := s.currentIdentity(ctx, nodeID, presented)
		if err != nil {
			return nil, err
		}
		next := proto.CloneOf(cur)
		next.PreviousSerial, next.Serial, next.NotAfter = presented, serial, timestamppb.New(notAfter)
		ok, err := s.swapIdentity(ctx, next, rev)
		if err != nil {
			return nil, err
		}
		if ok {
			return next, nil
		}
		if err := retryPause(ctx, attempt); err != nil {
			return nil, err
		}
	}
}

// swapIdentity writes id if its key is still at revision rev.
func (s *Store) swapIdentity(ctx context.Context, id *meridianv1.Identity, rev int64) (bool, error) {
	b, err := proto.Marshal(id)
	if err != nil {
		return false, fmt.Errorf("encode identity: %w", err)
	}
	key := s.identityKey(id.GetNodeId())
	start := time.Now()
	resp, err := s.client.Txn(ctx).
		If(clientv3.Compare(clientv3.ModRevision(key), "=", rev)).
		Then(clientv3.OpPut(key, string(b))).
		Commit()
	s.observe(opRenewIdentity, start, err)
	if err != nil {
		return false, etcdError(err)
	}
	return resp.Succeeded, nil
}

// RevokeDataplane deletes the node's identity, so none of its
// certificates opens a stream again, and records revocations/<id> under a
// new lease of ttl, in one transaction; replicas serving the node learn
// of it through WatchRevocations. It fails with ErrNotFound when the node
// has neither an identity nor a status.
func (s *Store) RevokeDataplane(ctx context.Context, nodeID, by string, now time.Time, ttl time.Duration) error {
	if err := checkNodeID(nodeID); err != nil {
		return err
	}
	if ttl <= 0 {
		return fmt.Errorf("%w: revocation ttl %s", ErrInvalid, ttl)
	}
	if err := s.findDataplane(ctx, nodeID); err != nil {
		return err
	}
	b, err := proto.Marshal(&meridianv1.Revocation{NodeId: nodeID, RevokedAt: timestamppb.New(now), RevokedBy: by})
	if err != nil {
		return fmt.Errorf("encode revocation: %w", err)
	}
	lease, err := s.grant(ctx, ttl)
	if err != nil {
		return err
	}
	start := time.Now()
	_, err = s.client.Txn(ctx).Then(
		clientv3.OpDelete(s.identityKey(nodeID)),
		clientv3.OpPut(s.revocationKey(nodeID), string(b), clientv3.WithLease(lease)),
	).Commit()
	s.observe(opRevokeDataplane, start, err)
	if err != nil {
		return etcdError(err)
	}
	return nil
}

// findDataplane fails with ErrNotFound unless the node has an identity
// or a status.
func (s *Store) findDataplane(ctx context.Context, nodeID string) error {
	start := time.Now()
	resp, err := s.client.Txn(ctx).Then(
		clientv3.OpGet(s.identityKey(nodeID), clientv3.WithCountOnly()),
		clientv3.OpGet(s.dataplaneKey(nodeID), clientv3.WithCountOnly()),
	).Commit()
	s.observe(opFindDataplane, start, err)
	if err != nil {
		return etcdError(err)
	}
	if resp.Responses[0].GetResponseRange().GetCount()+resp.Responses[1].GetResponseRange().GetCount() == 0 {
		return fmt.Errorf("%w: data plane %s", ErrNotFound, nodeID)
	}
	return nil
}

// grant returns a new lease of ttl (rounded up to whole seconds), not
// kept alive: what is written under it disappears after ttl.
func (s *Store) grant(ctx context.Context, ttl time.Duration) (clientv3.LeaseID, error) {
	gctx, cancel := context.WithTimeout(ctx, grantTimeout)
	defer cancel()
	seconds := int64((ttl + time.Second - 1) / time.Second)
	start := time.Now()
	resp, err := s.client.Grant(gctx, seconds)
	s.observe(opGrantLease, start, err)
	if err != nil {
		return 0, etcdError(err)
	}
	return resp.ID, nil
}

// WatchRevocations calls revoked with the node id of every revocation
// written after it first lists them; revocations that exist at that list
// are not reported. It relists after a compaction (revocations written in
// the lost revisions are not reported either) and retries while etcd is
// down, as Watch does, and returns ctx.Err() once ctx is done. revoked
// runs on WatchRevocations' goroutine.
func (s *Store) WatchRevocations(ctx context.Context, revoked func(nodeID string)) error {
	return s.follow(ctx, "revocations", &revocationWatcher{store: s, revoked: revoked})
}

type revocationWatcher struct {
	store   *Store
	revoked func(nodeID string)
	// rev is the etcd revision the watch resumes after; 0 means list.
	rev int64
}

func (w *revocationWatcher) needsList() bool { return w.rev == 0 }

// list only learns the current revision: revocations already written
// were acted on when they were new.
func (w *revocationWatcher) list(ctx context.Context) error {
	lctx, cancel := context.WithTimeout(ctx, listTimeout)
	defer cancel()
	start := time.Now()
	resp, err := w.store.client.Get(lctx, w.store.revocationKey(""), clientv3.WithPrefix(), clientv3.WithCountOnly())
	w.store.observe(opListRevocations, start, err)
	if err != nil {
		return etcdError(err)
	}
	w.rev = resp.Header.Revision
	return nil
}

// watch reports revocations from w.rev+1 until the watch ends.
func (w *revocationWatcher) watch(ctx context.Context) error {
	prefix := w.store.revocationKey("")
	return w.store.watchPrefix(ctx, prefix, &w.rev, func(events []*clientv3.Event) {
		for _, ev := range events {
			// Deletes are leases expiring, not news.
			if ev.Type == clientv3.EventTypePut {
				w.revoked(strings.TrimPrefix(string(ev.Kv.Key), prefix))
			}
		}
	})
}

// opPublishCA labels the one request PublishCA makes.
const opPublishCA = "publish_ca"

func (s *Store) caKey() string { return s.prefix + "auth/ca" }

// PublishCA records the cluster CA's certificate (DER) at pki/ca unless
// one is there. A different certificate there means this replica made or
// was given another CA, whose certificates the fleet would not trust: it
// fails with ErrConflict telling the operator how to share the CA.
func (s *Store) PublishCA(ctx context.Context, certDER []byte) error {
	if len(certDER) == 0 {
		return fmt.Errorf("%w: empty CA certificate", ErrInvalid)
	}
	b, err := proto.Marshal(&meridianv1.CAPublic{Certificate: certDER})
	if err != nil {
		return fmt.Errorf("encode CA certificate: %w", err)
	}
	key := s.caKey()
	start := time.Now()
	resp, err := s.client.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
		Then(clientv3.OpPut(key, string(b))).
		Else(clientv3.OpGet(key)).
		Commit()
	s.observe(opPublishCA, start, err)
	if err != nil {
		return etcdError(err)
	}
	if resp.Succeeded {
		return nil
	}
	return s.sameCA(resp.Responses[0].GetResponseRange().GetKvs(), certDER)
}

// sameCA compares the published CA (kvs of a read of pki/ca) with ours.
func (s *Store) sameCA(kvs []*mvccpb.KeyValue, certDER []byte) error {
	if len(kvs) == 0 {
		// Deleted between the compare and the read; only a retry can tell.
		return fmt.Errorf("%w: %s vanished while publishing the CA; retry", ErrConflict, s.caKey())
	}
	published := &meridianv1.CAPublic{}
	if err := proto.Unmarshal(kvs[0].Value, published); err != nil {
		return fmt.Errorf("etcd key %s: %w", kvs[0].Key, err)
	}
	if bytes.Equal(published.GetCertificate(), certDER) {
		return nil
	}
	return fmt.Errorf("%w: this replica's CA (sha256 %s) is not the cluster CA published at %s (sha256 %s): "+
		"stop this replica, copy ca.crt and ca.key from the pki directory of a replica already running into this replica's <data-dir>/pki/, "+
		"remove its server.crt and server.key, and start it again",
		ErrConflict, shortSum(certDER), s.caKey(), shortSum(published.GetCertificate()))
}

// shortSum names a certificate in messages: the start of its SHA-256.
func shortSum(der []byte) string {
	sum := sha256.Sum256(der)
	return hex.EncodeToString(sum[:6])
}

// Revocation returns the node's revocation, or nil when it has none (or it
// expired).
func (s *Store) Revocation(ctx context.Context, nodeID string) (*meridianv1.Revocation, error) {
	start := time.Now()
	resp, err := s.client.Get(ctx, s.revocationKey(nodeID))
	s.observe(opReadRevocation, start, err)
	if err != nil {
		return nil, etcdError(err)
	}
	if len(resp.Kvs) == 0 {
		return nil, nil
	}
	rev := &meridianv1.Revocation{}
	if err := proto.Unmarshal(resp.Kvs[0].Value, rev); err != nil {
		return nil, fmt.Errorf("etcd key %s: %w", resp.Kvs[0].Key, err)
	}
	return rev, nil
}
