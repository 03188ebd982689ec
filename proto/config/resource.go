package config

import (
	"cmp"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"slices"
	"strings"

	"google.golang.org/protobuf/proto"

	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

// APIVersion is the only apiVersion the decoder accepts.
const APIVersion = "meridian/v1"

// The resource kinds, as written in YAML.
const (
	KindUpstream       = "Upstream"
	KindRoute          = "Route"
	KindRateLimit      = "RateLimit"
	KindCircuitBreaker = "CircuitBreaker"
	KindJWTProvider    = "JWTProvider"
)

// Kinds returns every kind in dependency order: a kind only refers to kinds
// listed before it. Listings and snapshots use this order.
func Kinds() []string {
	return []string{KindCircuitBreaker, KindRateLimit, KindJWTProvider, KindUpstream, KindRoute}
}

// kindRank orders kinds as Kinds does; unknown kinds sort last.
func kindRank(kind string) int {
	if i := slices.Index(Kinds(), kind); i >= 0 {
		return i
	}
	return len(Kinds())
}

// ParseKind accepts a kind the way an operator types it ("route", "Routes",
// "jwtprovider") and returns its canonical spelling.
func ParseKind(s string) (string, error) {
	want := strings.ToLower(s)
	for _, k := range Kinds() {
		lk := strings.ToLower(k)
		if want == lk || want == lk+"s" {
			return k, nil
		}
	}
	return "", fmt.Errorf("unknown kind %q (want one of %s)", s, strings.Join(Kinds(), ", "))
}

// Kind returns the kind of r, or "" when r holds nothing.
func Kind(r *meridianv1.Resource) string {
	switch r.GetKind().(type) {
	case *meridianv1.Resource_Upstream:
		return KindUpstream
	case *meridianv1.Resource_Route:
		return KindRoute
	case *meridianv1.Resource_RateLimit:
		return KindRateLimit
	case *meridianv1.Resource_CircuitBreaker:
		return KindCircuitBreaker
	case *meridianv1.Resource_JwtProvider:
		return KindJWTProvider
	}
	return ""
}

// Metadata returns r's metadata, or nil.
func Metadata(r *meridianv1.Resource) *meridianv1.Metadata {
	switch k := r.GetKind().(type) {
	case *meridianv1.Resource_Upstream:
		return k.Upstream.GetMetadata()
	case *meridianv1.Resource_Route:
		return k.Route.GetMetadata()
	case *meridianv1.Resource_RateLimit:
		return k.RateLimit.GetMetadata()
	case *meridianv1.Resource_CircuitBreaker:
		return k.CircuitBreaker.GetMetadata()
	case *meridianv1.Resource_JwtProvider:
		return k.JwtProvider.GetMetadata()
	}
	return nil
}

// Name returns r's metadata.name.
func Name(r *meridianv1.Resource) string { return Metadata(r).GetName() }

// Key identifies a resource within a configuration: "Route/get-user".
func Key(r *meridianv1.Resource) string { return Kind(r) + "/" + Name(r) }

// Sort orders resources by kind (as Kinds) and then by name.
func Sort(rs []*meridianv1.Resource) {
	slices.SortStableFunc(rs, func(a, b *meridianv1.Resource) int {
		if c := cmp.Compare(kindRank(Kind(a)), kindRank(Kind(b))); c != 0 {
			return c
		}
		return cmp.Compare(Name(a), Name(b))
	})
}

// Hash is a hex SHA-256 over the resources in Sort order, each encoded
// deterministically. Equal configurations hash equally whatever the input
// order. rs itself is not reordered.
func Hash(rs []*meridianv1.Resource) string {
	sorted := slices.Clone(rs)
	Sort(sorted)
	h := sha256.New()
	opts := proto.MarshalOptions{Deterministic: true}
	var buf []byte
	for _, r := range sorted {
		var err error
		buf, err = opts.MarshalAppend(buf[:0], r)
		if err != nil {
			// Marshalling a valid in-memory message cannot fail; hash the
			// error text so the result still differs from any real config.
			buf = []byte(err.Error())
		}
		var n [8]byte
		for i := range n {
			n[i] = byte(len(buf) >> (8 * i))
		}
		h.Write(n[:])
		h.Write(buf)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// Resources returns the resources of docs, in order.
func Resources(docs []*Document) []*meridianv1.Resource {
	out := make([]*meridianv1.Resource, len(docs))
	for i, d := range docs {
		out[i] = d.Resource
	}
	return out
}
