// Package configtest builds small, valid resources for tests in every
// module, so each test states only what matters to it.
package configtest

import (
	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

// Upstream returns an Upstream with one target per address.
func Upstream(name string, addrs ...string) *meridianv1.Resource {
	spec := &meridianv1.UpstreamSpec{}
	for _, a := range addrs {
		spec.Targets = append(spec.Targets, &meridianv1.Target{Address: a})
	}
	return &meridianv1.Resource{Kind: &meridianv1.Resource_Upstream{Upstream: &meridianv1.Upstream{
		Metadata: &meridianv1.Metadata{Name: name}, Spec: spec,
	}}}
}

// Route returns a Route sending every path under prefix to upstream.
func Route(name, upstream, prefix string) *meridianv1.Resource {
	return &meridianv1.Resource{Kind: &meridianv1.Resource_Route{Route: &meridianv1.Route{
		Metadata: &meridianv1.Metadata{Name: name},
		Spec: &meridianv1.RouteSpec{
			Upstream: upstream,
			Match:    &meridianv1.RouteMatch{Paths: []*meridianv1.PathMatch{{Kind: &meridianv1.PathMatch_Prefix{Prefix: prefix}}}},
		},
	}}}
}
