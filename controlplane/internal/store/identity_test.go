package store

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/proto"

	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

// A secret as identity.ParseJoinToken accepts them; no error may repeat it.
const testSecret = "abcdefghijklmnopqrstuvwxyz234567"

func enrol(ctx context.Context, s *Store, tokenID, nodeID, serial string, now time.Time) (*meridianv1.StoredJoinToken, error) {
	return s.EnrolIdentity(ctx, tokenID, testSecret, &meridianv1.Identity{NodeId: nodeID, Serial: serial}, now)
}

func mustEnrol(t *testing.T, s *Store, tokenID, nodeID, serial string) {
	t.Helper()
	if _, err := enrol(testCtx(t), s, tokenID, nodeID, serial, time.Now()); err != nil {
		t.Fatalf("enrol %s with serial %s: %v", nodeID, serial, err)
	}
}

func storedUses(t *testing.T, s *Store, tokenID string) uint32 {
	t.Helper()
	toks, err := s.ListJoinTokens(testCtx(t))
	if err != nil {
		t.Fatalf("ListJoinTokens: %v", err)
	}
	for _, tok := range toks {
		if tok.GetInfo().GetId() == tokenID {
			return tok.GetInfo().GetUses()
		}
	}
	t.Fatalf("no join token %s", tokenID)
	return 0
}

func TestEnrolIdentity(t *testing.T) {
	e := newEnv(t)
	s, ctx := e.store, testCtx(t)
	now := time.Unix(1700000000, 0)
	mustCreateToken(t, s, joinToken("toka", testSecret, now, 2, now.Add(time.Hour)))

	// The token's labels win over the node's own.
	id := &meridianv1.Identity{NodeId: "dp1", Serial: "42", Labels: map[string]string{"zone": "mine", "extra": "x"}}
	used, err := s.EnrolIdentity(ctx, "toka", testSecret, id, now)
	if err != nil {
		t.Fatalf("EnrolIdentity: %v", err)
	}
	if used.GetInfo().GetUses() != 1 || storedUses(t, s, "toka") != 1 {
		t.Fatalf("token after enrolment: %v, stored uses %d; want 1 use", used, storedUses(t, s, "toka"))
	}
	stored, err := s.Identity(ctx, "dp1")
	if err != nil {
		t.Fatalf("Identity: %v", err)
	}
	if !proto.Equal(stored, id) || stored.GetTokenId() != "toka" || stored.GetSerial() != "42" ||
		!stored.GetEnrolledAt().AsTime().Equal(now) || len(stored.GetLabels()) != 1 || stored.GetLabels()["zone"] != "eu-1" {
		t.Fatalf("stored identity %v (filled in %v)", stored, id)
	}
	if _, err := s.Identity(ctx, "dp2"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Identity of an unknown node: %v, want ErrNotFound", err)
	}
	if _, err := enrol(ctx, s, "toka", "bad/id", "1", now); !errors.Is(err, ErrInvalid) {
		t.Fatalf("enrol with a bad node id: %v, want ErrInvalid", err)
	}
	if _, err := enrol(ctx, s, "toka", "dp3", "", now); !errors.Is(err, ErrInvalid) {
		t.Fatalf("enrol without a serial: %v, want ErrInvalid", err)
	}
}

func TestEnrolDenied(t *testing.T) {
	e := newEnv(t)
	s, ctx := e.store, testCtx(t)
	now := time.Unix(1700000000, 0)
	mustCreateToken(t, s, joinToken("live", testSecret, now, 0, now.Add(time.Hour)))
	mustCreateToken(t, s, joinToken("once", testSecret, now, 1, time.Time{}))
	mustEnrol(t, s, "once", "dp0", "1")

	tests := []struct {
		name, token, secret string
		now                 time.Time
		reason              string
	}{
		{"unknown token", "nope", testSecret, now, "join token nope is unknown"},
		{"wrong secret", "live", strings.ToUpper(testSecret), now, "join token live: wrong secret"},
		{"expired", "live", testSecret, now.Add(2 * time.Hour), "join token live expired"},
		{"at expiry", "live", testSecret, now.Add(time.Hour), "join token live expired"},
		{"used up", "once", testSecret, now, "join token once is used up (1 of 1 uses)"},
		// The secret is checked before the token's state is told.
		{"wrong secret of a used-up token", "once", "x", now, "join token once: wrong secret"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := s.EnrolIdentity(ctx, tt.token, tt.secret, &meridianv1.Identity{NodeId: "dp1", Serial: "1"}, tt.now)
			if !errors.Is(err, ErrDenied) || !strings.Contains(err.Error(), tt.reason) {
				t.Fatalf("EnrolIdentity: %v, want ErrDenied saying %q", err, tt.reason)
			}
			if strings.Contains(strings.ToLower(err.Error()), testSecret) {
				t.Fatalf("error repeats the secret: %v", err)
			}
			if _, err := s.Identity(ctx, "dp1"); !errors.Is(err, ErrNotFound) {
				t.Fatalf("denied enrolment recorded an identity: %v", err)
			}
		})
	}
	if uses := storedUses(t, s, "live"); uses != 0 {
		t.Fatalf("denied enrolments used the token %d times", uses)
	}
}

func TestEnrolMaxUsesUnderConcurrency(t *testing.T) {
	e := newEnv(t)
	s, ctx := e.store, testCtx(t)
	mustCreateToken(t, s, joinToken("toka", testSecret, time.Now(), 3, time.Time{}))

	const n = 10
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = enrol(ctx, s, "toka", fmt.Sprintf("dp%d", i), "1", time.Now())
		}()
	}
	wg.Wait()
	var enrolled []string
	for i, err := range errs {
		switch {
		case err == nil:
			enrolled = append(enrolled, fmt.Sprintf("dp%d", i))
		case !errors.Is(err, ErrDenied):
			t.Errorf("enrolment %d: %v, want success or ErrDenied", i, err)
		}
	}
	if len(enrolled) != 3 {
		t.Fatalf("%d enrolments succeeded (%v), want 3", len(enrolled), enrolled)
	}
	if uses := storedUses(t, s, "toka"); uses != 3 {
		t.Fatalf("token used %d times, want 3", uses)
	}
	for i := range n {
		_, err := s.Identity(ctx, fmt.Sprintf("dp%d", i))
		if has := slices.Contains(enrolled, fmt.Sprintf("dp%d", i)); has != (err == nil) {
			t.Errorf("dp%d: enrolled %v, Identity error %v", i, has, err)
		}
	}
}

func TestEnrolTakeover(t *testing.T) {
	e := newEnv(t)
	s, ctx := e.store, testCtx(t)
	mustCreateToken(t, s, joinToken("toka", testSecret, time.Now(), 0, time.Time{}))
	mustEnrol(t, s, "toka", "dp1", "1")
	// The node's stream is live on another replica.
	other := New(e.client, Options{ReplicaID: "cp-other"})
	t.Cleanup(func() { other.Close() })
	if err := other.ConnectDataplane(ctx, "s1", status("dp1", 0, 0)); err != nil {
		t.Fatal(err)
	}

	_, err := enrol(ctx, s, "toka", "dp1", "2", time.Now())
	if !errors.Is(err, ErrConflict) || !strings.Contains(err.Error(), "gatewayctl dataplanes revoke dp1") {
		t.Fatalf("takeover of a connected node: %v, want ErrConflict naming the way out", err)
	}
	if _, err := s.EnrolIdentity(ctx, "toka", "wrong", &meridianv1.Identity{NodeId: "dp1", Serial: "2"}, time.Now()); !errors.Is(err, ErrDenied) {
		t.Fatalf("takeover with a wrong secret: %v, want ErrDenied before anything about the node", err)
	}
	if id, err := s.Identity(ctx, "dp1"); err != nil || id.GetSerial() != "1" {
		t.Fatalf("identity after refused takeover: %v, %v; want serial 1", id, err)
	}
	if uses := storedUses(t, s, "toka"); uses != 1 {
		t.Fatalf("refused takeover used the token: %d uses, want 1", uses)
	}

	if err := other.DisconnectDataplane(ctx, "s1", status("dp1", 0, 0)); err != nil {
		t.Fatal(err)
	}
	mustEnrol(t, s, "toka", "dp1", "2")
	if _, err := s.CheckCertificate(ctx, "dp1", "1"); !errors.Is(err, ErrDenied) {
		t.Fatalf("certificate of the replaced identity: %v, want ErrDenied", err)
	}
	if _, err := s.CheckCertificate(ctx, "dp1", "2"); err != nil {
		t.Fatalf("certificate of the new identity: %v", err)
	}
}

func TestCertificateSerials(t *testing.T) {
	e := newEnv(t)
	s, ctx := e.store, testCtx(t)
	mustCreateToken(t, s, joinToken("toka", testSecret, time.Now(), 0, time.Time{}))
	mustEnrol(t, s, "toka", "dp1", "1")
	notAfter := time.Unix(1800000000, 0)

	steps := []struct {
		name string
		// renew from presented to next when next is set; else check presented.
		presented, next string
		denied          bool
	}{
		{"enrolled certificate", "1", "", false},
		{"unknown serial", "2", "", true},
		{"empty serial", "", "", true},
		{"renew", "1", "2", false},
		{"previous still valid", "1", "", false},
		{"current valid", "2", "", false},
		// The answer of the last renewal was lost: the node renews with 1 again.
		{"renew with previous", "1", "3", false},
		{"lost certificate superseded", "2", "", true},
		{"renewal from superseded", "2", "4", true},
		{"renew", "3", "5", false},
		{"two back is invalid", "1", "", true},
		{"previous", "3", "", false},
	}
	for _, step := range steps {
		var id *meridianv1.Identity
		var err error
		if step.next != "" {
			id, err = s.RenewIdentity(ctx, "dp1", step.presented, step.next, notAfter)
		} else {
			id, err = s.CheckCertificate(ctx, "dp1", step.presented)
		}
		if step.denied {
			if !errors.Is(err, ErrDenied) {
				t.Fatalf("%s: %v, want ErrDenied", step.name, err)
			}
			continue
		}
		if err != nil {
			t.Fatalf("%s: %v", step.name, err)
		}
		if step.next != "" && (id.GetSerial() != step.next || id.GetPreviousSerial() != step.presented || !id.GetNotAfter().AsTime().Equal(notAfter)) {
			t.Fatalf("%s: identity %v", step.name, id)
		}
	}
	if id, err := s.Identity(ctx, "dp1"); err != nil || id.GetSerial() != "5" || id.GetPreviousSerial() != "3" || id.GetTokenId() != "toka" {
		t.Fatalf("stored identity %v, %v", id, err)
	}
	if _, err := s.RenewIdentity(ctx, "dp9", "1", "2", notAfter); !errors.Is(err, ErrDenied) {
		t.Fatalf("renewal of an unknown node: %v, want ErrDenied", err)
	}
	if _, err := s.CheckCertificate(ctx, "dp9", "1"); !errors.Is(err, ErrDenied) {
		t.Fatalf("certificate of an unknown node: %v, want ErrDenied", err)
	}
}

func TestRevokeDataplane(t *testing.T) {
	e := newEnv(t)
	s, ctx := e.store, testCtx(t)
	mustCreateToken(t, s, joinToken("toka", testSecret, time.Now(), 0, time.Time{}))
	for _, id := range []string{"dp0", "dp1"} {
		mustEnrol(t, s, "toka", id, "1")
	}
	// dp2 has a status but no identity (an insecure-mode node).
	if err := s.ConnectDataplane(ctx, "s2", status("dp2", 0, 0)); err != nil {
		t.Fatal(err)
	}
	now := time.Unix(1700000000, 0)
	if err := s.RevokeDataplane(ctx, "dp0", "admin", now, time.Minute); err != nil {
		t.Fatalf("RevokeDataplane dp0: %v", err)
	}

	got := newRecorder[string]()
	w := &revocationWatcher{store: s, revoked: got.add}
	if err := w.list(ctx); err != nil {
		t.Fatal(err)
	}
	if err := s.RevokeDataplane(ctx, "dp1", "alice", now, 30*time.Second); err != nil {
		t.Fatalf("RevokeDataplane dp1: %v", err)
	}
	runWatch(t, func(ctx context.Context) error { return s.follow(ctx, "revocations", w) })
	got.waitUntil(t, "dp1's revocation", func(ids []string) bool { return len(ids) > 0 })

	if _, err := s.CheckCertificate(ctx, "dp1", "1"); !errors.Is(err, ErrDenied) {
		t.Fatalf("certificate of a revoked node: %v, want ErrDenied", err)
	}
	if _, err := s.Identity(ctx, "dp1"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("identity of a revoked node: %v, want ErrNotFound", err)
	}
	if _, err := s.CheckCertificate(ctx, "dp0", "1"); !errors.Is(err, ErrDenied) {
		t.Fatalf("certificate of dp0: %v, want ErrDenied", err)
	}
	resp, err := e.client.Get(ctx, s.revocationKey("dp1"))
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("revocation record: %v, %v", resp, err)
	}
	rev := &meridianv1.Revocation{}
	if err := proto.Unmarshal(resp.Kvs[0].Value, rev); err != nil || rev.GetNodeId() != "dp1" || rev.GetRevokedBy() != "alice" || !rev.GetRevokedAt().AsTime().Equal(now) {
		t.Fatalf("revocation record %v, %v", rev, err)
	}
	ttl, err := e.client.TimeToLive(ctx, clientv3.LeaseID(resp.Kvs[0].Lease))
	if err != nil || ttl.GrantedTTL != 30 || ttl.TTL <= 0 {
		t.Fatalf("revocation lease %+v, %v; want a 30s lease", ttl, err)
	}

	if err := s.RevokeDataplane(ctx, "dp2", "alice", now, time.Minute); err != nil {
		t.Fatalf("RevokeDataplane of a node with only a status: %v", err)
	}
	if err := s.RevokeDataplane(ctx, "dp9", "alice", now, time.Minute); !errors.Is(err, ErrNotFound) {
		t.Fatalf("RevokeDataplane of an unknown node: %v, want ErrNotFound", err)
	}
	// dp0, revoked before the list, is not reported.
	got.waitUntil(t, "dp2's revocation", func(ids []string) bool { return len(ids) >= 2 })
	if ids := got.all(); !slices.Equal(ids, []string{"dp1", "dp2"}) {
		t.Fatalf("revocations reported %v, want [dp1 dp2]", ids)
	}
}

func TestWatchRevocationsRelistsAfterCompaction(t *testing.T) {
	e := newEnv(t)
	s, ctx := e.store, testCtx(t)
	for _, id := range []string{"dp1", "dp2"} {
		if err := s.ConnectDataplane(ctx, id, status(id, 0, 0)); err != nil {
			t.Fatal(err)
		}
	}
	got := newRecorder[string]()
	w := &revocationWatcher{store: s, revoked: got.add}
	if err := w.list(ctx); err != nil {
		t.Fatal(err)
	}
	// dp1's revocation falls in revisions compacted before the watch runs.
	if err := s.RevokeDataplane(ctx, "dp1", "admin", time.Now(), time.Minute); err != nil {
		t.Fatal(err)
	}
	// Compaction keeps the revision it is given, so write once more.
	resp, err := e.client.Put(ctx, "unrelated", "x")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.client.Compact(ctx, resp.Header.Revision, clientv3.WithCompactPhysical()); err != nil {
		t.Fatal(err)
	}
	runWatch(t, func(ctx context.Context) error { return s.follow(ctx, "revocations", w) })
	// The watch must relist and keep going. A revocation written before
	// the relist is not reported either, so revoke dp2 until one is.
	deadline := time.Now().Add(20 * time.Second)
	for len(got.all()) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("no revocation reported after the compaction")
		}
		if err := s.RevokeDataplane(ctx, "dp2", "admin", time.Now(), time.Minute); err != nil {
			t.Fatal(err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	for _, id := range got.all() {
		if id != "dp2" {
			t.Fatalf("revocations reported %v, want only dp2", got.all())
		}
	}
}

func TestPublishCA(t *testing.T) {
	e := newEnv(t)
	s, ctx := e.store, testCtx(t)
	ours, theirs := []byte("ca certificate one"), []byte("ca certificate two")
	tests := []struct {
		name string
		der  []byte
		want error
	}{
		{"first replica publishes", ours, nil},
		{"same CA again", ours, nil},
		{"different CA", theirs, ErrConflict},
		{"no certificate", nil, ErrInvalid},
	}
	for _, tt := range tests {
		err := s.PublishCA(ctx, tt.der)
		if !errors.Is(err, tt.want) || (tt.want == nil) != (err == nil) {
			t.Fatalf("%s: %v, want %v", tt.name, err, tt.want)
		}
		if tt.want == ErrConflict && !strings.Contains(err.Error(), "copy ca.crt and ca.key") {
			t.Fatalf("%s: %v does not say how to fix it", tt.name, err)
		}
	}
	resp, err := e.client.Get(ctx, s.caKey())
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("pki/ca: %v, %v", resp, err)
	}
	ca := &meridianv1.CAPublic{}
	if err := proto.Unmarshal(resp.Kvs[0].Value, ca); err != nil || string(ca.GetCertificate()) != string(ours) {
		t.Fatalf("published CA %q, %v; want the first one", ca.GetCertificate(), err)
	}
}
