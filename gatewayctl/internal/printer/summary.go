package printer

import (
	"fmt"
	"strconv"
	"strings"

	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/durationpb"

	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

// Summary is the one-line description of r shown in the SUMMARY column of
// `gatewayctl get`: what an operator scans for first in each kind.
func Summary(r *meridianv1.Resource) string {
	switch {
	case r.GetRoute() != nil:
		return routeSummary(r.GetRoute().GetSpec())
	case r.GetUpstream() != nil:
		return upstreamSummary(r.GetUpstream().GetSpec())
	case r.GetRateLimit() != nil:
		return rateLimitSummary(r.GetRateLimit().GetSpec())
	case r.GetCircuitBreaker() != nil:
		return breakerSummary(r.GetCircuitBreaker().GetSpec())
	case r.GetJwtProvider() != nil:
		return jwtSummary(r.GetJwtProvider().GetSpec())
	}
	return ""
}

// routeSummary reads "GET,HEAD api.example.com /users/{id} -> users".
func routeSummary(s *meridianv1.RouteSpec) string {
	var parts []string
	m := s.GetMatch()
	if len(m.GetMethods()) > 0 {
		parts = append(parts, strings.Join(m.GetMethods(), ","))
	}
	if len(m.GetHosts()) > 0 {
		parts = append(parts, strings.Join(m.GetHosts(), ","))
	}
	paths := make([]string, 0, len(m.GetPaths()))
	for _, p := range m.GetPaths() {
		paths = append(paths, pathString(p))
	}
	if len(paths) > 0 {
		parts = append(parts, strings.Join(paths, ","))
	}
	parts = append(parts, "->", s.GetUpstream())
	return strings.Join(parts, " ")
}

// pathString marks how a path matches, nginx-style: exact with a leading
// "=", prefix with a trailing "*", templates as written, regex with "~".
func pathString(p *meridianv1.PathMatch) string {
	switch p.GetKind().(type) {
	case *meridianv1.PathMatch_Exact:
		return "=" + p.GetExact()
	case *meridianv1.PathMatch_Prefix:
		return p.GetPrefix() + "*"
	case *meridianv1.PathMatch_Template:
		return p.GetTemplate()
	case *meridianv1.PathMatch_Regex:
		return "~" + p.GetRegex()
	}
	return "?"
}

// upstreamSummary reads "http 10.0.0.1:80, 10.0.0.2:80 (weight 3) round_robin".
func upstreamSummary(s *meridianv1.UpstreamSpec) string {
	var parts []string
	if s.GetScheme() != meridianv1.Scheme_SCHEME_UNSPECIFIED {
		parts = append(parts, enumWord(s.GetScheme()))
	}
	targets := make([]string, 0, len(s.GetTargets()))
	for _, t := range s.GetTargets() {
		if t.GetWeight() > 1 {
			targets = append(targets, fmt.Sprintf("%s (weight %d)", t.GetAddress(), t.GetWeight()))
		} else {
			targets = append(targets, t.GetAddress())
		}
	}
	parts = append(parts, strings.Join(targets, ", "))
	if p := s.GetLoadBalancer().GetPolicy(); p != meridianv1.LoadBalancerPolicy_LOAD_BALANCER_POLICY_UNSPECIFIED {
		parts = append(parts, enumWord(p))
	}
	return strings.Join(parts, " ")
}

// rateLimitSummary reads "100/1s burst 20 global sliding_window key=consumer".
func rateLimitSummary(s *meridianv1.RateLimitSpec) string {
	parts := []string{strconv.FormatUint(s.GetLimit(), 10) + "/" + duration(s.GetPeriod())}
	if s.GetBurst() > 0 {
		parts = append(parts, "burst "+strconv.FormatUint(s.GetBurst(), 10))
	}
	if s.GetScope() != meridianv1.RateLimitScope_RATE_LIMIT_SCOPE_UNSPECIFIED {
		parts = append(parts, enumWord(s.GetScope()))
	}
	if s.GetAlgorithm() != meridianv1.RateLimitAlgorithm_RATE_LIMIT_ALGORITHM_UNSPECIFIED {
		parts = append(parts, enumWord(s.GetAlgorithm()))
	}
	if len(s.GetKey()) > 0 {
		parts = append(parts, "key="+strings.Join(s.GetKey(), "+"))
	}
	if s.GetShadow() {
		parts = append(parts, "shadow")
	}
	return strings.Join(parts, " ")
}

// breakerSummary reads "errorRate>0.5 p0.95>300ms window 10s open 5s".
func breakerSummary(s *meridianv1.CircuitBreakerSpec) string {
	var parts []string
	t := s.GetTrip()
	if t.GetErrorRate() > 0 {
		parts = append(parts, "errorRate>"+strconv.FormatFloat(t.GetErrorRate(), 'g', -1, 64))
	}
	if l := t.GetLatency(); l != nil {
		parts = append(parts, "p"+strconv.FormatFloat(l.GetQuantile(), 'g', -1, 64)+">"+duration(l.GetThreshold()))
	}
	if t.GetConsecutiveFailures() > 0 {
		parts = append(parts, fmt.Sprintf("consecutiveFailures>=%d", t.GetConsecutiveFailures()))
	}
	if s.GetWindow() != nil {
		parts = append(parts, "window "+duration(s.GetWindow()))
	}
	if s.GetOpen().GetDuration() != nil {
		parts = append(parts, "open "+duration(s.GetOpen().GetDuration()))
	}
	if s.GetScope() != meridianv1.BreakerScope_BREAKER_SCOPE_UNSPECIFIED {
		parts = append(parts, "scope "+enumWord(s.GetScope()))
	}
	return strings.Join(parts, " ")
}

// jwtSummary reads "https://sso.example.com RS256,ES256".
func jwtSummary(s *meridianv1.JWTProviderSpec) string {
	parts := []string{s.GetIssuer()}
	if len(s.GetAlgorithms()) > 0 {
		parts = append(parts, strings.Join(s.GetAlgorithms(), ","))
	}
	return strings.Join(parts, " ")
}

// duration renders a protobuf duration the way the YAML spells it ("250ms").
func duration(d *durationpb.Duration) string {
	if d == nil {
		return "0s"
	}
	return d.AsDuration().String()
}

// enumWord is the YAML spelling of an enum value: its name without the
// enum's prefix, lower-cased (SCHEME_H2C is "h2c").
func enumWord(e protoreflect.Enum) string {
	return EnumWord(e.Descriptor(), e.Number())
}

// upperSnake turns "LoadBalancerPolicy" into "LOAD_BALANCER_POLICY".
func upperSnake(s string) string {
	var b strings.Builder
	for i, r := range s {
		if i > 0 && r >= 'A' && r <= 'Z' {
			b.WriteByte('_')
		}
		b.WriteRune(r)
	}
	return strings.ToUpper(b.String())
}
