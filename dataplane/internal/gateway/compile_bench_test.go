package gateway

import (
	"context"
	"fmt"
	"testing"

	"github.com/meridian-gw/meridian/proto/config"
	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

// BenchmarkCompile is the whole cost of taking a snapshot live on a data
// plane: hash check, validation (the control plane's code), secret checks,
// upstream pools, route compilation and the router. Routes mix exact,
// prefix and template paths over 10 upstreams.
func BenchmarkCompile(b *testing.B) {
	for _, n := range []int{1_000, 10_000} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			var rs []*meridianv1.Resource
			for u := range 10 {
				rs = append(rs, upstreamRes(fmt.Sprintf("u%d", u), targets(fmt.Sprintf("127.0.0.1:%d", 9000+u))))
			}
			for i := range n {
				var pm *meridianv1.PathMatch
				switch i % 3 {
				case 0:
					pm = &meridianv1.PathMatch{Kind: &meridianv1.PathMatch_Exact{Exact: fmt.Sprintf("/svc%d/health", i)}}
				case 1:
					pm = prefix(fmt.Sprintf("/svc%d/", i))
				default:
					pm = &meridianv1.PathMatch{Kind: &meridianv1.PathMatch_Template{Template: fmt.Sprintf("/svc%d/users/{id}", i)}}
				}
				rs = append(rs, routeRes(fmt.Sprintf("r%d", i), fmt.Sprintf("u%d", i%10), pm))
			}
			snap := &meridianv1.Snapshot{Version: 1, Hash: config.Hash(rs), Resources: rs}
			b.ReportAllocs()
			b.ResetTimer()
			for i := range b.N {
				g := newGateway()
				snap.Version = uint64(i + 1)
				if err := g.Apply(context.Background(), snap, SourceControlPlane); err != nil {
					b.Fatal(err)
				}
				g.Close()
			}
		})
	}
}
