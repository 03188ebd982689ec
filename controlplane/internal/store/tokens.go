package store

import (
	"cmp"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/proto"

	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

// ErrDenied: a credential (join token, certificate) is unknown, expired,
// used up or no longer current. Its messages never contain secrets.
var ErrDenied = errors.New("denied")

// Operations of the join-token records.
const (
	opCreateJoinToken = "create_join_token"
	opListJoinTokens  = "list_join_tokens"
	opDeleteJoinToken = "delete_join_token"
)

func (s *Store) joinTokenKey(id string) string { return s.prefix + "auth/join-tokens/" + id }

func checkTokenID(id string) error {
	if id == "" || strings.Contains(id, "/") {
		return fmt.Errorf("%w: join token id %q", ErrInvalid, id)
	}
	return nil
}

// CreateJoinToken stores a new join token. It fails with ErrConflict when
// a token with the same id exists.
func (s *Store) CreateJoinToken(ctx context.Context, tok *meridianv1.StoredJoinToken) error {
	id := tok.GetInfo().GetId()
	if err := checkTokenID(id); err != nil {
		return err
	}
	if len(tok.GetSecretSha256()) != sha256.Size {
		return fmt.Errorf("%w: join token %s has no SHA-256 of its secret", ErrInvalid, id)
	}
	b, err := proto.Marshal(tok)
	if err != nil {
		return fmt.Errorf("encode join token: %w", err)
	}
	key := s.joinTokenKey(id)
	start := time.Now()
	resp, err := s.client.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
		Then(clientv3.OpPut(key, string(b))).
		Commit()
	s.observe(opCreateJoinToken, start, err)
	if err != nil {
		return etcdError(err)
	}
	if !resp.Succeeded {
		return fmt.Errorf("%w: join token %s exists", ErrConflict, id)
	}
	return nil
}

// ListJoinTokens returns every join token, sorted by creation time, then
// id. Unreadable records are skipped with a warning.
func (s *Store) ListJoinTokens(ctx context.Context) ([]*meridianv1.StoredJoinToken, error) {
	start := time.Now()
	resp, err := s.client.Get(ctx, s.joinTokenKey(""), clientv3.WithPrefix())
	s.observe(opListJoinTokens, start, err)
	if err != nil {
		return nil, etcdError(err)
	}
	out := slices.Collect(maps.Values(s.decodeTokens(resp.Kvs)))
	slices.SortFunc(out, func(a, b *meridianv1.StoredJoinToken) int {
		return cmp.Or(
			a.GetInfo().GetCreatedAt().AsTime().Compare(b.GetInfo().GetCreatedAt().AsTime()),
			cmp.Compare(a.GetInfo().GetId(), b.GetInfo().GetId()),
		)
	})
	return out, nil
}

// decodeTokens returns the readable join tokens among kvs by id. A bad
// record must not hide the others, nor stop a watch, so it is only
// logged.
func (s *Store) decodeTokens(kvs []*mvccpb.KeyValue) map[string]*meridianv1.StoredJoinToken {
	out := make(map[string]*meridianv1.StoredJoinToken, len(kvs))
	for _, kv := range kvs {
		if tok, err := decodeToken(kv.Value); err != nil {
			s.log.Warn("skipped unreadable join token", "key", string(kv.Key), "err", err)
		} else {
			out[strings.TrimPrefix(string(kv.Key), s.joinTokenKey(""))] = tok
		}
	}
	return out
}

func decodeToken(b []byte) (*meridianv1.StoredJoinToken, error) {
	tok := &meridianv1.StoredJoinToken{}
	if err := proto.Unmarshal(b, tok); err != nil {
		return nil, err
	}
	return tok, nil
}

// DeleteJoinToken removes a join token (ErrNotFound when there is none).
// Data planes it admitted keep their identities.
func (s *Store) DeleteJoinToken(ctx context.Context, id string) error {
	if err := checkTokenID(id); err != nil {
		return err
	}
	start := time.Now()
	resp, err := s.client.Txn(ctx).Then(clientv3.OpDelete(s.joinTokenKey(id))).Commit()
	s.observe(opDeleteJoinToken, start, err)
	if err != nil {
		return etcdError(err)
	}
	if resp.Responses[0].GetResponseDeleteRange().GetDeleted() == 0 {
		return fmt.Errorf("%w: join token %s", ErrNotFound, id)
	}
	return nil
}

// WatchJoinTokens follows the join tokens: it lists them at a revision R,
// then watches from R+1, and calls publish with the whole current set by
// id after every list and every watch response that changed it. It
// relists after a compaction and retries while etcd is down, as Watch
// does, and returns ctx.Err() once ctx is done. publish runs on
// WatchJoinTokens' goroutine; it owns the map, but must not modify the
// tokens.
func (s *Store) WatchJoinTokens(ctx context.Context, publish func(map[string]*meridianv1.StoredJoinToken)) error {
	return s.follow(ctx, "join tokens", &tokenWatcher{store: s, publish: publish})
}

type tokenWatcher struct {
	store   *Store
	publish func(map[string]*meridianv1.StoredJoinToken)

	// rev is the etcd revision tokens reflects; 0 means list.
	rev    int64
	tokens map[string]*meridianv1.StoredJoinToken
}

func (w *tokenWatcher) needsList() bool { return w.rev == 0 }

func (w *tokenWatcher) list(ctx context.Context) error {
	lctx, cancel := context.WithTimeout(ctx, listTimeout)
	defer cancel()
	start := time.Now()
	resp, err := w.store.client.Get(lctx, w.store.joinTokenKey(""), clientv3.WithPrefix())
	w.store.observe(opListJoinTokens, start, err)
	if err != nil {
		return etcdError(err)
	}
	w.rev = resp.Header.Revision
	w.tokens = w.store.decodeTokens(resp.Kvs)
	w.publish(maps.Clone(w.tokens))
	return nil
}

// watch follows changes from w.rev+1 until the watch ends.
func (w *tokenWatcher) watch(ctx context.Context) error {
	prefix := w.store.joinTokenKey("")
	return w.store.watchPrefix(ctx, prefix, &w.rev, func(events []*clientv3.Event) {
		for _, ev := range events {
			w.apply(ev, prefix)
		}
		w.publish(maps.Clone(w.tokens))
	})
}

func (w *tokenWatcher) apply(ev *clientv3.Event, prefix string) {
	id := strings.TrimPrefix(string(ev.Kv.Key), prefix)
	if ev.Type == clientv3.EventTypeDelete {
		delete(w.tokens, id)
		return
	}
	tok, err := decodeToken(ev.Kv.Value)
	if err != nil {
		w.store.log.Warn("skipped unreadable join token", "key", string(ev.Kv.Key), "err", err)
		delete(w.tokens, id)
		return
	}
	w.tokens[id] = tok
}
