package upstream

import (
	"net/http/httptest"
	"testing"

	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

// BenchmarkPick measures one attempt's balancer cost, Pick plus Done, on
// ten targets.
func BenchmarkPick(b *testing.B) {
	equal := weightedTargets(1, 1, 1, 1, 1, 1, 1, 1, 1, 1)
	uneven := weightedTargets(5, 1, 1, 3, 2, 1, 1, 4, 1, 1)
	passive := &meridianv1.HealthCheck{Passive: &meridianv1.PassiveHealthCheck{}}
	benches := []struct {
		name   string
		policy meridianv1.LoadBalancerPolicy
		ts     []*meridianv1.Target
		hc     *meridianv1.HealthCheck
	}{
		{"round_robin", meridianv1.LoadBalancerPolicy_LOAD_BALANCER_POLICY_ROUND_ROBIN, equal, nil},
		{"round_robin/passive", meridianv1.LoadBalancerPolicy_LOAD_BALANCER_POLICY_ROUND_ROBIN, equal, passive},
		{"round_robin/weighted", meridianv1.LoadBalancerPolicy_LOAD_BALANCER_POLICY_ROUND_ROBIN, uneven, nil},
		{"least_request", meridianv1.LoadBalancerPolicy_LOAD_BALANCER_POLICY_LEAST_REQUEST, equal, nil},
		{"least_request/weighted", meridianv1.LoadBalancerPolicy_LOAD_BALANCER_POLICY_LEAST_REQUEST, uneven, nil},
		{"random", meridianv1.LoadBalancerPolicy_LOAD_BALANCER_POLICY_RANDOM, uneven, nil},
		{"consistent_hash", meridianv1.LoadBalancerPolicy_LOAD_BALANCER_POLICY_CONSISTENT_HASH, equal, nil},
	}
	r := httptest.NewRequest("GET", "/", nil)
	r.Header.Set("X-User", "user-12345")
	for _, bb := range benches {
		spec := lbSpec(bb.policy, "", bb.ts)
		if bb.policy == meridianv1.LoadBalancerPolicy_LOAD_BALANCER_POLICY_CONSISTENT_HASH {
			spec.LoadBalancer.HashOn = "header:X-User"
		}
		spec.HealthCheck = bb.hc
		p := testPool(b, spec, nil, nil)
		b.Run(bb.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				t, err := p.Pick(r)
				if err != nil {
					b.Fatal(err)
				}
				p.Done(t, Outcome{Status: 200})
			}
		})
		b.Run(bb.name+"/parallel", func(b *testing.B) {
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					t, err := p.Pick(r)
					if err != nil {
						b.Error(err)
						return
					}
					p.Done(t, Outcome{Status: 200})
				}
			})
		})
	}
}

// TestPickDoesNotAllocate holds the benchmark's 0 allocs/op in the
// ordinary test run.
func TestPickDoesNotAllocate(t *testing.T) {
	r := httptest.NewRequest("GET", "/", nil)
	r.Header.Set("X-User", "u")
	r.Header.Set("Cookie", "a=1; sid=2")
	r.SetPathValue("id", "3")
	tests := []struct {
		name   string
		policy meridianv1.LoadBalancerPolicy
		hashOn string
		ws     []uint32
	}{
		{"round_robin", meridianv1.LoadBalancerPolicy_LOAD_BALANCER_POLICY_ROUND_ROBIN, "", []uint32{1, 1, 1}},
		{"round_robin weighted", meridianv1.LoadBalancerPolicy_LOAD_BALANCER_POLICY_ROUND_ROBIN, "", []uint32{3, 1, 1}},
		{"least_request", meridianv1.LoadBalancerPolicy_LOAD_BALANCER_POLICY_LEAST_REQUEST, "", []uint32{3, 1, 1}},
		{"random", meridianv1.LoadBalancerPolicy_LOAD_BALANCER_POLICY_RANDOM, "", []uint32{3, 1, 1}},
		{"hash header", meridianv1.LoadBalancerPolicy_LOAD_BALANCER_POLICY_CONSISTENT_HASH, "header:X-User", []uint32{1, 1, 1}},
		{"hash cookie", meridianv1.LoadBalancerPolicy_LOAD_BALANCER_POLICY_CONSISTENT_HASH, "cookie:sid", []uint32{1, 1, 1}},
		{"hash param", meridianv1.LoadBalancerPolicy_LOAD_BALANCER_POLICY_CONSISTENT_HASH, "param:id", []uint32{1, 1, 1}},
		{"hash client_ip", meridianv1.LoadBalancerPolicy_LOAD_BALANCER_POLICY_CONSISTENT_HASH, "client_ip", []uint32{1, 1, 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			spec := lbSpec(tt.policy, tt.hashOn, weightedTargets(tt.ws...))
			spec.HealthCheck = &meridianv1.HealthCheck{Passive: &meridianv1.PassiveHealthCheck{}}
			p := testPool(t, spec, nil, nil)
			allocs := testing.AllocsPerRun(1000, func() {
				tg, err := p.Pick(r)
				if err != nil {
					t.Fatal(err)
				}
				p.Done(tg, Outcome{Status: 200})
			})
			if allocs != 0 {
				t.Errorf("%v allocs per Pick+Done", allocs)
			}
		})
	}
}
