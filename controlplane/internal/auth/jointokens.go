package auth

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/meridian-gw/meridian/controlplane/internal/store"
	"github.com/meridian-gw/meridian/proto/identity"
	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

// JoinTokenLister reads every join token; the store implements it.
type JoinTokenLister interface {
	ListJoinTokens(ctx context.Context) ([]*meridianv1.StoredJoinToken, error)
}

// JoinTokens is the tap handle's copy of the stored join tokens, kept
// current by the store's watch (Set). A token it has not seen yet (created
// on another replica a moment ago) is looked up in the store once, so a
// data plane enrolling right after `gatewayctl tokens create` is not
// turned away. The Enrol handler checks and consumes the token again in
// etcd; this check only keeps strangers from sending a message at all.
type JoinTokens struct {
	store JoinTokenLister
	pin   string

	mu     sync.RWMutex
	tokens map[string]*meridianv1.StoredJoinToken
}

// lookupTimeout bounds the store read for a token not yet seen.
const lookupTimeout = 2 * time.Second

// NewJoinTokens returns an empty cache. pin is the CA pin of this control
// plane: a token pinning another CA was made for another cluster.
func NewJoinTokens(store JoinTokenLister, pin string) *JoinTokens {
	return &JoinTokens{store: store, pin: pin, tokens: map[string]*meridianv1.StoredJoinToken{}}
}

// Set replaces the cached tokens; it fits store.WatchJoinTokens.
func (j *JoinTokens) Set(tokens map[string]*meridianv1.StoredJoinToken) {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.tokens = tokens
}

// CheckJoinToken implements JoinTokenChecker.
func (j *JoinTokens) CheckJoinToken(ctx context.Context, tok identity.JoinToken, now time.Time) error {
	if tok.Pin != j.pin {
		return errors.New("the join token pins another CA: it was made by another control plane")
	}
	stored, err := j.lookup(ctx, tok.ID)
	if err != nil {
		return err
	}
	return store.AdmitJoinToken(stored, tok.Secret, now)
}

func (j *JoinTokens) lookup(ctx context.Context, id string) (*meridianv1.StoredJoinToken, error) {
	j.mu.RLock()
	stored, ok := j.tokens[id]
	j.mu.RUnlock()
	if ok {
		return stored, nil
	}
	ctx, cancel := context.WithTimeout(ctx, lookupTimeout)
	defer cancel()
	all, err := j.store.ListJoinTokens(ctx)
	if err != nil {
		return nil, fmt.Errorf("join token %s cannot be checked now: %w", id, err)
	}
	for _, t := range all {
		if t.GetInfo().GetId() == id {
			return t, nil
		}
	}
	return nil, fmt.Errorf("unknown join token %s (revoked, or never created)", id)
}
