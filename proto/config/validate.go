package config

import (
	"cmp"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

// Limits that keep a configuration sane; each is far above real use.
const (
	maxNameLen      = 253
	maxRegexLen     = 4096
	maxRetries      = 10
	maxWeight       = 1_000_000
	maxBreakerSlots = 10_000
	maxClockSkew    = 10 * time.Minute

	// minHealthCheckInterval is the floor for a set
	// spec.healthCheck.active.interval: every interval each target gets a
	// probe, so a tiny interval floods the targets with probes.
	minHealthCheckInterval = 100 * time.Millisecond
)

// DefaultHealthCheckInterval is the time between active probes of a target
// when spec.healthCheck.active.interval is unset. The data plane applies
// it; validation compares a set timeout with it.
const DefaultHealthCheckInterval = 5 * time.Second

// Options says what is being validated.
type Options struct {
	// Partial means the resources are part of a configuration whose other
	// resources are checked elsewhere (gatewayctl before an apply: the
	// control plane checks the merged configuration), so a reference to
	// a resource that is not given is left unchecked.
	Partial bool
	// Where says where a referenced resource was looked for, appended to
	// "does not exist": "in this apply or the stored configuration
	// (version 12)".
	Where string
}

// Validate checks a whole configuration: every resource's fields, unique
// names per kind, references between resources, and routes that would
// match the same requests. It returns an ErrorList, or nil.
func Validate(rs []*meridianv1.Resource) error {
	return ValidateWith(rs, Options{})
}

// ValidateWith is Validate with options.
func ValidateWith(rs []*meridianv1.Resource, opts Options) error {
	v := validate(rs, opts)
	list := make(ErrorList, len(v.errs))
	for i, e := range v.errs {
		list[i] = e.err
	}
	return list.Err()
}

// ValidateDocuments is Validate with each error placed at the file and
// line of the field it names.
func ValidateDocuments(docs []*Document) error {
	return validateDocuments(docs, Options{}).Err()
}

// validateDocuments places each error at the file and line of the field it
// names. A document that did not decode cleanly is validated too, so every
// problem shows in one run, but errors on the fields that failed to decode
// (or inside or around them) are left out: the decode error names them.
func validateDocuments(docs []*Document, opts Options) ErrorList {
	v := validate(Resources(docs), opts)
	var list ErrorList
	for _, e := range v.errs {
		if e.index >= 0 && e.index < len(docs) {
			d := docs[e.index]
			if d.shadows(e.err.Path) {
				continue
			}
			e.err.Pos = d.Position(e.err.Path)
		}
		list = append(list, e.err)
	}
	return list
}

// Check returns every problem of a set of files in one list: decodeErrs
// (from Decode or Load) and what ValidateDocuments finds in docs, ordered
// by file name and line.
func Check(docs []*Document, decodeErrs ErrorList, opts Options) ErrorList {
	all := append(slices.Clone(decodeErrs), validateDocuments(docs, opts)...)
	slices.SortStableFunc(all, func(a, b *FieldError) int {
		return cmp.Or(cmp.Compare(a.Pos.File, b.Pos.File), cmp.Compare(a.Pos.Line, b.Pos.Line))
	})
	return all
}

type indexedError struct {
	index int // which resource the error belongs to
	err   *FieldError
}

// validator collects every problem rather than stopping at the first, so an
// operator fixes a file in one pass.
type validator struct {
	opts  Options
	all   []*meridianv1.Resource
	names map[string]int // Key → index of first definition
	errs  []indexedError

	// the resource being checked
	index      int
	kind, name string
}

func validate(rs []*meridianv1.Resource, opts Options) *validator {
	v := &validator{opts: opts, all: rs, names: map[string]int{}}
	for i, r := range rs {
		v.index, v.kind, v.name = i, Kind(r), Name(r)
		if v.kind == "" {
			v.errf("", "empty resource (no kind set)")
			continue
		}
		v.metadata(Metadata(r))
		if first, dup := v.names[Key(r)]; dup {
			v.errf("metadata.name", "duplicate %s %q (resource %d has the same name)", v.kind, v.name, first+1)
		} else if v.name != "" {
			v.names[Key(r)] = i
		}
	}
	for i, r := range rs {
		v.index, v.kind, v.name = i, Kind(r), Name(r)
		switch k := r.GetKind().(type) {
		case *meridianv1.Resource_Upstream:
			v.upstream(k.Upstream.GetSpec())
		case *meridianv1.Resource_Route:
			v.route(k.Route.GetSpec())
		case *meridianv1.Resource_RateLimit:
			v.rateLimit(k.RateLimit.GetSpec())
		case *meridianv1.Resource_CircuitBreaker:
			v.circuitBreaker(k.CircuitBreaker.GetSpec())
		case *meridianv1.Resource_JwtProvider:
			v.jwtProvider(k.JwtProvider.GetSpec())
		}
	}
	v.routeConflicts()
	return v
}

func (v *validator) errf(path, format string, args ...any) {
	v.errs = append(v.errs, indexedError{index: v.index, err: &FieldError{Kind: v.kind, Name: v.name, Path: path, Msg: fmt.Sprintf(format, args...)}})
}

// ref checks that a reference names an existing resource of kind.
func (v *validator) ref(path, kind, name string) {
	if name == "" {
		return
	}
	if _, ok := v.names[kind+"/"+name]; ok || v.opts.Partial {
		return
	}
	if v.opts.Where != "" {
		v.errf(path, "%s %q does not exist %s", kind, name, v.opts.Where)
		return
	}
	v.errf(path, "%s %q does not exist", kind, name)
}

var namePattern = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?$`)

func (v *validator) metadata(md *meridianv1.Metadata) {
	switch name := md.GetName(); {
	case name == "":
		v.errf("metadata.name", "required")
	case len(name) > maxNameLen:
		v.errf("metadata.name", "longer than %d characters", maxNameLen)
	case !namePattern.MatchString(name):
		v.errf("metadata.name", "%q is not a valid name (letters, digits, '.', '_' and '-', starting and ending with a letter or digit)", name)
	}
	for k := range md.GetLabels() {
		if k == "" || len(k) > maxNameLen {
			v.errf("metadata.labels", "label keys must be 1 to %d characters", maxNameLen)
		}
	}
}

// duration checks an optional non-negative duration.
func (v *validator) duration(path string, d *durationpb.Duration) time.Duration {
	if d == nil {
		return 0
	}
	if err := d.CheckValid(); err != nil || d.AsDuration() < 0 {
		v.errf(path, "must not be negative")
		return 0
	}
	return d.AsDuration()
}

// positive checks a duration that, when given, must be above zero. It
// reports one error for a zero or negative value and returns 0 then.
func (v *validator) positive(path string, d *durationpb.Duration) time.Duration {
	if d == nil {
		return 0
	}
	if err := d.CheckValid(); err != nil || d.AsDuration() <= 0 {
		v.errf(path, "must be greater than zero")
		return 0
	}
	return d.AsDuration()
}

func (v *validator) status(path string, code uint32) {
	if code < 100 || code > 599 {
		v.errf(path, "%d is not an HTTP status (100-599)", code)
	}
}

// ---------------------------------------------------------------- Upstream

func (v *validator) upstream(s *meridianv1.UpstreamSpec) {
	if len(s.GetTargets()) == 0 {
		v.errf("spec.targets", "at least one target is required")
	}
	seen := map[string]bool{}
	for i, t := range s.GetTargets() {
		p := fmt.Sprintf("spec.targets[%d]", i)
		if err := checkHostPort(t.GetAddress()); err != nil {
			v.errf(p+".address", "%v", err)
		} else if seen[t.GetAddress()] {
			v.errf(p+".address", "duplicate target %q", t.GetAddress())
		}
		seen[t.GetAddress()] = true
		if t.GetWeight() > maxWeight {
			v.errf(p+".weight", "must be at most %d", maxWeight)
		}
	}
	lb := s.GetLoadBalancer()
	if lb.GetPolicy() == meridianv1.LoadBalancerPolicy_LOAD_BALANCER_POLICY_CONSISTENT_HASH {
		if lb.GetHashOn() == "" {
			v.errf("spec.loadBalancer.hashOn", "required with policy consistent_hash (header:<name>, cookie:<name>, client_ip, claim:<name> or param:<name>)")
		} else if err := checkKeySpec(lb.GetHashOn(), []string{"client_ip"}, []string{"header", "cookie", "claim", "param"}); err != nil {
			v.errf("spec.loadBalancer.hashOn", "%v", err)
		}
	} else if lb.GetHashOn() != "" {
		v.errf("spec.loadBalancer.hashOn", "only used with policy consistent_hash")
	}
	if a := s.GetHealthCheck().GetActive(); a != nil {
		if a.GetPath() != "" && !strings.HasPrefix(a.GetPath(), "/") {
			v.errf("spec.healthCheck.active.path", "must start with /")
		}
		interval := v.positive("spec.healthCheck.active.interval", a.GetInterval())
		if interval > 0 && interval < minHealthCheckInterval {
			v.errf("spec.healthCheck.active.interval", "%s is below the %s floor (a probe every interval per target)", interval, minHealthCheckInterval)
		}
		timeout := v.positive("spec.healthCheck.active.timeout", a.GetTimeout())
		switch {
		case a.GetInterval() == nil && timeout > DefaultHealthCheckInterval:
			v.errf("spec.healthCheck.active.timeout", "%s must not exceed interval (%s, the default)", timeout, DefaultHealthCheckInterval)
		case interval > 0 && timeout > interval:
			v.errf("spec.healthCheck.active.timeout", "%s must not exceed interval (%s)", timeout, interval)
		}
		for i, code := range a.GetExpectedStatuses() {
			v.status(fmt.Sprintf("spec.healthCheck.active.expectedStatuses[%d]", i), code)
		}
	}
	if p := s.GetHealthCheck().GetPassive(); p != nil {
		v.positive("spec.healthCheck.passive.ejectionTime", p.GetEjectionTime())
		if p.GetMaxEjectionPercent() > 100 {
			v.errf("spec.healthCheck.passive.maxEjectionPercent", "must be at most 100")
		}
	}
	cp := s.GetConnectionPool()
	v.duration("spec.connectionPool.idleConnTimeout", cp.GetIdleConnTimeout())
	v.duration("spec.connectionPool.tlsHandshakeTimeout", cp.GetTlsHandshakeTimeout())
	v.duration("spec.timeouts.connect", s.GetTimeouts().GetConnect())
	v.ref("spec.circuitBreaker", KindCircuitBreaker, s.GetCircuitBreaker())
	if tls := s.GetTls(); tls != nil {
		if s.GetScheme() != meridianv1.Scheme_SCHEME_HTTPS {
			v.errf("spec.tls", "only used with scheme https")
		}
		if tls.GetCaPem() != "" && !x509.NewCertPool().AppendCertsFromPEM([]byte(tls.GetCaPem())) {
			v.errf("spec.tls.caPEM", "no PEM certificate found")
		}
	}
}

func checkHostPort(addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("%q is not host:port", addr)
	}
	if host == "" {
		return fmt.Errorf("%q has no host", addr)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return fmt.Errorf("%q has an invalid port", addr)
	}
	return nil
}

// checkKeySpec accepts a bare word from words or "prefix:<name>" for a
// prefix from prefixes.
func checkKeySpec(spec string, words, prefixes []string) error {
	if slices.Contains(words, spec) {
		return nil
	}
	prefix, name, ok := strings.Cut(spec, ":")
	if ok && slices.Contains(prefixes, prefix) {
		if name == "" || !isToken(name) {
			return fmt.Errorf("%q needs a name after %q", spec, prefix+":")
		}
		return nil
	}
	want := slices.Clone(words)
	for _, p := range prefixes {
		want = append(want, p+":<name>")
	}
	return fmt.Errorf("%q is not one of %s", spec, strings.Join(want, ", "))
}

// isToken reports whether s is an RFC 9110 token (header names, methods).
func isToken(s string) bool {
	if s == "" {
		return false
	}
	for i := range len(s) {
		c := s[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0 {
			continue
		}
		return false
	}
	return true
}

// ------------------------------------------------------------------- Route

var hostPattern = regexp.MustCompile(`^(\*\.)?([a-z0-9]([a-z0-9-]*[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*$`)

func (v *validator) route(s *meridianv1.RouteSpec) {
	m := s.GetMatch()
	if m == nil {
		v.errf("spec.match", "required")
	}
	for i, h := range m.GetHosts() {
		if !hostPattern.MatchString(strings.ToLower(h)) {
			v.errf(fmt.Sprintf("spec.match.hosts[%d]", i), "%q is not a host name or a wildcard such as *.example.com (no port, no scheme)", h)
		}
	}
	methods := map[string]bool{}
	for i, meth := range m.GetMethods() {
		p := fmt.Sprintf("spec.match.methods[%d]", i)
		switch {
		case !isToken(meth):
			v.errf(p, "%q is not an HTTP method", meth)
		case meth != strings.ToUpper(meth):
			v.errf(p, "methods are upper-case: %q", strings.ToUpper(meth))
		case methods[meth]:
			v.errf(p, "duplicate method %q", meth)
		}
		methods[meth] = true
	}
	if m != nil && len(m.GetPaths()) == 0 {
		v.errf("spec.match.paths", "at least one path is required")
	}
	var params [][]string // parameters of each path; nil for non-template paths
	for i, pm := range m.GetPaths() {
		p := fmt.Sprintf("spec.match.paths[%d]", i)
		params = append(params, nil)
		switch k := pm.GetKind().(type) {
		case nil:
			v.errf(p, "one of exact, prefix, template, regex is required")
		case *meridianv1.PathMatch_Exact:
			v.absPath(p+".exact", k.Exact)
		case *meridianv1.PathMatch_Prefix:
			v.absPath(p+".prefix", k.Prefix)
		case *meridianv1.PathMatch_Template:
			t, err := ParseTemplate(k.Template)
			if err != nil {
				v.errf(p+".template", "%v", err)
				break
			}
			params[i] = t.Params()
		case *meridianv1.PathMatch_Regex:
			v.regex(p+".regex", k.Regex)
		}
	}
	for i, h := range m.GetHeaders() {
		p := fmt.Sprintf("spec.match.headers[%d]", i)
		if !isToken(h.GetName()) {
			v.errf(p+".name", "%q is not a header name", h.GetName())
		}
		switch k := h.GetKind().(type) {
		case nil:
			v.errf(p, "one of exact, regex, present is required")
		case *meridianv1.HeaderMatch_Regex:
			v.regex(p+".regex", k.Regex)
		case *meridianv1.HeaderMatch_Present:
			if !k.Present {
				v.errf(p+".present", "only present: true is supported; to match a missing header, use a regex on another route")
			}
		}
	}
	if s.GetUpstream() == "" {
		v.errf("spec.upstream", "required")
	}
	v.ref("spec.upstream", KindUpstream, s.GetUpstream())
	v.rewrite(s.GetRewrite(), params)
	v.headerOps("spec.headers.request", s.GetHeaders().GetRequest())
	v.headerOps("spec.headers.response", s.GetHeaders().GetResponse())
	v.duration("spec.timeout", s.GetTimeout())
	v.retry(s.GetRetry())
	v.ref("spec.auth.jwt", KindJWTProvider, s.GetAuth().GetJwt())
	v.auth(s.GetAuth())
	seen := map[string]bool{}
	for i, rl := range s.GetRateLimits() {
		p := fmt.Sprintf("spec.rateLimits[%d]", i)
		if seen[rl] {
			v.errf(p, "duplicate rate limit %q", rl)
		}
		seen[rl] = true
		v.ref(p, KindRateLimit, rl)
	}
	v.ref("spec.circuitBreaker", KindCircuitBreaker, s.GetCircuitBreaker())
	v.upgrades(s.GetUpgrades())
}

func (v *validator) auth(a *meridianv1.RouteAuth) {
	if a.GetJwt() == "" && (len(a.GetRequireClaims()) > 0 || a.GetForwardToken()) {
		v.errf("spec.auth.jwt", "required when requireClaims or forwardToken is set")
	}
	for i, c := range a.GetRequireClaims() {
		p := fmt.Sprintf("spec.auth.requireClaims[%d]", i)
		if c.GetClaim() == "" {
			v.errf(p+".claim", "required")
		}
		if (len(c.GetValues()) == 0) == (len(c.GetContains()) == 0) {
			v.errf(p, "exactly one of values, contains is required")
		}
	}
}

func (v *validator) absPath(path, p string) {
	if !strings.HasPrefix(p, "/") {
		v.errf(path, "%q must start with /", p)
	} else if strings.ContainsAny(p, "?#") {
		v.errf(path, "%q must not contain a query or fragment", p)
	}
}

func (v *validator) regex(path, expr string) {
	if len(expr) > maxRegexLen {
		v.errf(path, "longer than %d characters", maxRegexLen)
		return
	}
	if _, err := regexp.Compile(expr); err != nil {
		v.errf(path, "invalid regular expression: %v", strings.TrimPrefix(err.Error(), "error parsing regexp: "))
	}
}

func (v *validator) rewrite(rw *meridianv1.Rewrite, params [][]string) {
	if rw == nil {
		return
	}
	if rw.GetStripPrefix() != "" {
		v.absPath("spec.rewrite.stripPrefix", rw.GetStripPrefix())
	}
	if rw.GetPrefix() != "" {
		v.absPath("spec.rewrite.prefix", rw.GetPrefix())
	}
	if rw.GetPath() != "" {
		if rw.GetStripPrefix() != "" || rw.GetPrefix() != "" {
			v.errf("spec.rewrite.path", "replaces the whole path, so it cannot be combined with stripPrefix or prefix")
		}
		t, err := ParseTemplate(rw.GetPath())
		if err != nil {
			v.errf("spec.rewrite.path", "%v", err)
		} else {
			for _, name := range t.Params() {
				for i, ps := range params {
					if !slices.Contains(ps, name) {
						v.errf("spec.rewrite.path", "uses {%s}, which spec.match.paths[%d] does not capture", name, i)
					}
				}
			}
		}
	}
	if h := rw.GetHost(); h != "" {
		host := h
		if hh, _, err := net.SplitHostPort(h); err == nil {
			host = hh
		}
		if !hostPattern.MatchString(strings.ToLower(host)) || strings.HasPrefix(host, "*") {
			if net.ParseIP(host) == nil {
				v.errf("spec.rewrite.host", "%q is not a host name", h)
			}
		}
	}
}

func (v *validator) headerOps(path string, ops *meridianv1.HeaderOps) {
	check := func(p string, m map[string]string) {
		for _, name := range sortedKeys(m) {
			if !isToken(name) {
				v.errf(p, "%q is not a header name", name)
			}
			if strings.ContainsAny(m[name], "\r\n\x00") {
				v.errf(p+"["+name+"]", "header values must not contain CR, LF or NUL")
			}
		}
	}
	check(path+".set", ops.GetSet())
	check(path+".add", ops.GetAdd())
	for i, name := range ops.GetRemove() {
		if !isToken(name) {
			v.errf(fmt.Sprintf("%s.remove[%d]", path, i), "%q is not a header name", name)
		}
	}
}

func (v *validator) retry(r *meridianv1.RetryPolicy) {
	if r == nil {
		return
	}
	if r.GetAttempts() > maxRetries {
		v.errf("spec.retry.attempts", "must be at most %d", maxRetries)
	}
	for i, on := range r.GetOn() {
		switch on {
		case "connect_failure", "reset", "timeout", "5xx", "gateway_error":
			continue
		}
		if code, err := strconv.Atoi(on); err == nil && code >= 100 && code <= 599 {
			continue
		}
		v.errf(fmt.Sprintf("spec.retry.on[%d]", i), "%q is not connect_failure, reset, timeout, 5xx, gateway_error or an HTTP status", on)
	}
	base := v.duration("spec.retry.backoff.base", r.GetBackoff().GetBase())
	if maxDur := v.duration("spec.retry.backoff.max", r.GetBackoff().GetMax()); maxDur > 0 && base > maxDur {
		v.errf("spec.retry.backoff.base", "must not exceed max (%s)", maxDur)
	}
	if r.GetBudgetPercent() > 100 {
		v.errf("spec.retry.budgetPercent", "must be at most 100")
	}
}

// routeConflicts rejects two routes (or one route twice) that match exactly
// the same requests: one would silently shadow the other.
func (v *validator) routeConflicts() {
	owner := map[string]int{}
	for i, r := range v.all {
		rt := r.GetRoute()
		if rt == nil {
			continue
		}
		v.index, v.kind, v.name = i, KindRoute, rt.GetMetadata().GetName()
		m := rt.GetSpec().GetMatch()
		hosts := lowerAll(m.GetHosts())
		if len(hosts) == 0 {
			hosts = []string{"*"}
		}
		methods := m.GetMethods()
		if len(methods) == 0 {
			methods = []string{"*"}
		}
		headers := headerSignature(m.GetHeaders())
		for pi, pm := range m.GetPaths() {
			sig := pathSignature(pm)
			if sig == "" {
				continue
			}
			for _, h := range hosts {
				for _, meth := range methods {
					key := strings.Join([]string{h, meth, sig, headers, strconv.Itoa(int(rt.GetSpec().GetPriority()))}, "\x00")
					first, dup := owner[key]
					switch {
					case !dup:
						owner[key] = i
					case first == i:
						v.errf(fmt.Sprintf("spec.match.paths[%d]", pi), "matches the same requests as another path of this route")
					default:
						v.errf(fmt.Sprintf("spec.match.paths[%d]", pi), "host %s, method %s and this path match exactly the same requests as Route %q; give one a different match or priority", h, meth, v.all[first].GetRoute().GetMetadata().GetName())
					}
				}
			}
		}
	}
}

func lowerAll(ss []string) []string {
	out := make([]string, len(ss))
	for i, s := range ss {
		out[i] = strings.ToLower(s)
	}
	return out
}

// pathSignature is equal for path matches that accept the same paths:
// parameter names do not matter.
func pathSignature(pm *meridianv1.PathMatch) string {
	switch k := pm.GetKind().(type) {
	case *meridianv1.PathMatch_Exact:
		return "exact:" + k.Exact
	case *meridianv1.PathMatch_Prefix:
		return "prefix:" + k.Prefix
	case *meridianv1.PathMatch_Regex:
		return "regex:" + k.Regex
	case *meridianv1.PathMatch_Template:
		t, err := ParseTemplate(k.Template)
		if err != nil {
			return ""
		}
		return "template:" + t.Shape()
	}
	return ""
}

func headerSignature(hs []*meridianv1.HeaderMatch) string {
	parts := make([]string, 0, len(hs))
	for _, h := range hs {
		var kind string
		switch k := h.GetKind().(type) {
		case *meridianv1.HeaderMatch_Exact:
			kind = "exact:" + k.Exact
		case *meridianv1.HeaderMatch_Regex:
			kind = "regex:" + k.Regex
		case *meridianv1.HeaderMatch_Present:
			kind = "present"
		}
		parts = append(parts, strings.ToLower(h.GetName())+"="+kind)
	}
	slices.Sort(parts)
	return strings.Join(parts, "&")
}

// --------------------------------------------------------------- RateLimit

func (v *validator) rateLimit(s *meridianv1.RateLimitSpec) {
	if s.GetLimit() == 0 {
		v.errf("spec.limit", "required, at least 1")
	}
	if s.GetPeriod() == nil {
		v.errf("spec.period", "required, e.g. 1s")
	} else {
		v.positive("spec.period", s.GetPeriod())
	}
	if len(s.GetKey()) == 0 {
		v.errf("spec.key", "at least one key part is required (client_ip, route, consumer, header:<name>, claim:<name>)")
	}
	seen := map[string]bool{}
	for i, k := range s.GetKey() {
		p := fmt.Sprintf("spec.key[%d]", i)
		if err := checkKeySpec(k, []string{"client_ip", "route", "consumer"}, []string{"header", "claim"}); err != nil {
			v.errf(p, "%v", err)
		} else if seen[k] {
			v.errf(p, "duplicate key part %q", k)
		}
		seen[k] = true
	}
	if q := s.GetQueue(); q != nil {
		if q.GetMaxWait() == nil {
			v.errf("spec.queue.maxWait", "required, e.g. 500ms")
		} else if d := v.positive("spec.queue.maxWait", q.GetMaxWait()); d > maxQueueWait {
			v.errf("spec.queue.maxWait", "must be at most %s", maxQueueWait)
		}
		switch s.GetAlgorithm() {
		case meridianv1.RateLimitAlgorithm_RATE_LIMIT_ALGORITHM_UNSPECIFIED,
			meridianv1.RateLimitAlgorithm_RATE_LIMIT_ALGORITHM_TOKEN_BUCKET,
			meridianv1.RateLimitAlgorithm_RATE_LIMIT_ALGORITHM_GCRA:
		default:
			v.errf("spec.queue", "needs algorithm token_bucket or gcra, which can reserve a later turn")
		}
	}
	if b := s.GetLocalBatch(); b > 1 {
		switch {
		case s.GetScope() != meridianv1.RateLimitScope_RATE_LIMIT_SCOPE_GLOBAL:
			v.errf("spec.localBatch", "applies to scope global only")
		case s.GetQueue() != nil:
			v.errf("spec.localBatch", "cannot be combined with queue")
		case b > maxLocalBatch:
			v.errf("spec.localBatch", "must be at most %d", maxLocalBatch)
		case s.GetLimit() > 0 && uint64(b) > s.GetLimit():
			v.errf("spec.localBatch", "must not exceed limit (%d)", s.GetLimit())
		}
	}
}

// maxQueueWait bounds how long a queued request may hold its connection.
const maxQueueWait = time.Minute

// maxLocalBatch bounds the tokens one data plane may hold unspent.
const maxLocalBatch = 1000

// ---------------------------------------------------------- CircuitBreaker

func (v *validator) circuitBreaker(s *meridianv1.CircuitBreakerSpec) {
	window := v.positive("spec.window", s.GetWindow())
	bucket := v.positive("spec.bucket", s.GetBucket())
	if window > 0 && bucket > 0 {
		switch {
		case bucket > window:
			v.errf("spec.bucket", "must not exceed window (%s)", window)
		case window%bucket != 0:
			v.errf("spec.bucket", "window (%s) must be a whole number of buckets", window)
		case window/bucket > maxBreakerSlots:
			v.errf("spec.bucket", "window (%s) would need %d buckets, more than %d", window, window/bucket, maxBreakerSlots)
		}
	}
	t := s.GetTrip()
	if t.GetErrorRate() == 0 && t.GetLatency() == nil && t.GetConsecutiveFailures() == 0 {
		v.errf("spec.trip", "at least one of errorRate, latency, consecutiveFailures is required")
	}
	if r := t.GetErrorRate(); r < 0 || r > 1 {
		v.errf("spec.trip.errorRate", "must be between 0 and 1")
	}
	if l := t.GetLatency(); l != nil {
		if q := l.GetQuantile(); q <= 0 || q >= 1 {
			v.errf("spec.trip.latency.quantile", "must be between 0 and 1 exclusive, e.g. 0.95")
		}
		if l.GetThreshold() == nil {
			v.errf("spec.trip.latency.threshold", "required")
		}
		v.positive("spec.trip.latency.threshold", l.GetThreshold())
	}
	for i, code := range s.GetFailureStatuses() {
		v.status(fmt.Sprintf("spec.failureStatuses[%d]", i), code)
	}
	o := s.GetOpen()
	open := v.duration("spec.open.duration", o.GetDuration())
	if maxDur := v.duration("spec.open.maxDuration", o.GetMaxDuration()); maxDur > 0 && open > maxDur {
		v.errf("spec.open.maxDuration", "must not be less than duration (%s)", open)
	}
	if m := o.GetMultiplier(); m != 0 && m < 1 {
		v.errf("spec.open.multiplier", "must be at least 1")
	}
	if j := o.GetJitter(); j < 0 || j > 1 {
		v.errf("spec.open.jitter", "must be between 0 and 1")
	}
	if f := s.GetFallback(); f != nil {
		if f.GetStatus() != 0 {
			v.status("spec.fallback.status", f.GetStatus())
		}
		for _, name := range sortedKeys(f.GetHeaders()) {
			if !isToken(name) {
				v.errf("spec.fallback.headers", "%q is not a header name", name)
			}
		}
	}
}

// ------------------------------------------------------------- JWTProvider

// JWTAlgorithms is the set of signing algorithms a JWTProvider may allow.
func JWTAlgorithms() []string {
	return []string{"HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
}

var envNamePattern = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

func (v *validator) jwtProvider(s *meridianv1.JWTProviderSpec) {
	if len(s.GetAlgorithms()) == 0 {
		v.errf("spec.algorithms", "required: the allow-list of signing algorithms, e.g. [RS256]")
	}
	for i, alg := range s.GetAlgorithms() {
		p := fmt.Sprintf("spec.algorithms[%d]", i)
		switch {
		case strings.EqualFold(alg, "none"):
			v.errf(p, "\"none\" is never accepted")
		case !slices.Contains(JWTAlgorithms(), alg):
			v.errf(p, "%q is not one of %s", alg, strings.Join(JWTAlgorithms(), ", "))
		}
	}
	if u := s.GetJwksUri(); u != "" {
		parsed, err := url.Parse(u)
		if err != nil || (parsed.Scheme != "https" && parsed.Scheme != "http") || parsed.Host == "" {
			v.errf("spec.jwksURI", "must be an http(s) URL")
		}
	}
	if s.GetJwksUri() == "" && len(s.GetKeys()) == 0 {
		v.errf("spec", "one of jwksURI or keys is required")
	}
	kids := map[string]bool{}
	for i, k := range s.GetKeys() {
		p := fmt.Sprintf("spec.keys[%d]", i)
		if k.GetKid() != "" && kids[k.GetKid()] {
			v.errf(p+".kid", "duplicate kid %q", k.GetKid())
		}
		kids[k.GetKid()] = true
		set := 0
		for _, s := range []string{k.GetPublicKeyPem(), k.GetSecretEnv(), k.GetSecretFile()} {
			if s != "" {
				set++
			}
		}
		if set != 1 {
			v.errf(p, "exactly one of publicKeyPEM, secretEnv, secretFile is required")
		}
		if pemText := k.GetPublicKeyPem(); pemText != "" {
			block, _ := pem.Decode([]byte(pemText))
			if block == nil {
				v.errf(p+".publicKeyPEM", "no PEM block found")
			} else if pub, err := x509.ParsePKIXPublicKey(block.Bytes); err != nil {
				v.errf(p+".publicKeyPEM", "not a PKIX public key (a \"BEGIN PUBLIC KEY\" block)")
			} else if msg := publicKeyProblem(pub); msg != "" {
				v.errf(p+".publicKeyPEM", "%s", msg)
			}
		}
		if env := k.GetSecretEnv(); env != "" && !envNamePattern.MatchString(env) {
			v.errf(p+".secretEnv", "%q is not an environment variable name", env)
		}
	}
	v.duration("spec.jwksRefreshInterval", s.GetJwksRefreshInterval())
	if s.GetJwksRefreshInterval() != nil && s.GetJwksUri() == "" {
		v.errf("spec.jwksRefreshInterval", "only used with jwksURI")
	}
	if sk := v.duration("spec.clockSkew", s.GetClockSkew()); sk > maxClockSkew {
		v.errf("spec.clockSkew", "must be at most %s", maxClockSkew)
	}
	for i, src := range s.GetTokenFrom() {
		if err := checkKeySpec(src, nil, []string{"header", "query", "cookie"}); err != nil {
			v.errf(fmt.Sprintf("spec.tokenFrom[%d]", i), "%v", err)
		}
	}
	for _, claim := range sortedKeys(s.GetForwardClaims()) {
		if !isToken(s.GetForwardClaims()[claim]) {
			v.errf("spec.forwardClaims["+claim+"]", "%q is not a header name", s.GetForwardClaims()[claim])
		}
	}
}

// publicKeyProblem applies the data plane's key rules early, so a key every
// data plane would refuse is refused at apply time instead of as a NACK.
func publicKeyProblem(pub any) string {
	switch k := pub.(type) {
	case *rsa.PublicKey:
		if n := k.N.BitLen(); n < 2048 || n > 8192 {
			return fmt.Sprintf("RSA keys must be 2048 to 8192 bits, this one has %d", n)
		}
	case *ecdsa.PublicKey:
		switch k.Curve.Params().Name {
		case "P-256", "P-384", "P-521":
		default:
			return fmt.Sprintf("EC curve %s is not supported (P-256, P-384, P-521)", k.Curve.Params().Name)
		}
	case ed25519.PublicKey:
	default:
		return fmt.Sprintf("unsupported key type %T (RSA, EC or Ed25519)", pub)
	}
	return ""
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
