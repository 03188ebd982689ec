// Package snapshot holds the configuration the control plane serves to data
// planes: an immutable, versioned, hashed set of resources, and a cache that
// hands the latest one to every stream.
package snapshot

import (
	"errors"
	"fmt"
	"slices"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/meridian-gw/meridian/proto/config"
	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

// Snapshot is the whole configuration at one version. It never changes
// after New; its resources are shared by every stream that sends it and
// must not be modified.
type Snapshot struct {
	msg       *meridianv1.Snapshot
	committed time.Time
}

// New builds a snapshot of resources at version, which was committed at
// committed (zero when unknown). It checks that the set is consistent
// (every resource has a kind and a name, no key appears twice); whether
// the configuration is valid is the store's job, done before the version
// was written. resources is copied and sorted; the resources themselves
// are not copied.
//
// The message's created_at is the commit time, so every replica sends the
// same one for a version; the build time stands in when the commit time
// is unknown.
func New(version uint64, committed time.Time, resources []*meridianv1.Resource) (*Snapshot, error) {
	if version == 0 {
		return nil, errors.New("snapshot: version 0 is reserved for no configuration")
	}
	rs := slices.Clone(resources)
	seen := make(map[string]bool, len(rs))
	for i, r := range rs {
		switch {
		case r == nil || config.Kind(r) == "":
			return nil, fmt.Errorf("snapshot: resource %d has no kind", i)
		case config.Name(r) == "":
			return nil, fmt.Errorf("snapshot: %s resource %d has no name", config.Kind(r), i)
		case seen[config.Key(r)]:
			return nil, fmt.Errorf("snapshot: %s appears twice", config.Key(r))
		}
		seen[config.Key(r)] = true
	}
	config.Sort(rs)
	created := committed
	if created.IsZero() {
		created = time.Now()
	}
	return &Snapshot{
		msg: &meridianv1.Snapshot{
			Version:   version,
			Hash:      config.Hash(rs),
			Resources: rs,
			CreatedAt: timestamppb.New(created),
		},
		committed: committed,
	}, nil
}

// Version is the configuration version.
func (s *Snapshot) Version() uint64 { return s.msg.GetVersion() }

// Committed is when the version was committed; zero when unknown.
func (s *Snapshot) Committed() time.Time { return s.committed }

// Hash is the hex SHA-256 of the resources (config.Hash).
func (s *Snapshot) Hash() string { return s.msg.GetHash() }

// Resources returns the resources in config.Sort order. The slice is a
// copy; the resources are shared and must not be modified.
func (s *Snapshot) Resources() []*meridianv1.Resource { return slices.Clone(s.msg.GetResources()) }

// Message returns the snapshot as sent on a stream, with nonce set. The
// result shares the resources with s; treat it as read-only.
func (s *Snapshot) Message(nonce string) *meridianv1.Snapshot {
	return &meridianv1.Snapshot{
		Version:   s.msg.GetVersion(),
		Hash:      s.msg.GetHash(),
		Nonce:     nonce,
		Resources: s.msg.GetResources(),
		CreatedAt: s.msg.GetCreatedAt(),
	}
}
