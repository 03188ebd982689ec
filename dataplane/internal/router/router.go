// Package router compiles route matches into an immutable lookup table and
// finds the route a request belongs to.
//
// Precedence is deterministic and is, in order:
//
//  1. Host group. An exact host ("api.example.com") beats the longest
//     matching wildcard ("*.eu.example.com" before "*.example.com"), which
//     beats routes that name no host. Hosts compare case-insensitively,
//     without port or trailing dot; a wildcard covers one or more labels
//     ("*.example.com" matches "a.b.example.com" but not "example.com").
//     The host is decided first, as in Envoy's virtual hosts: every route of
//     the most specific group is tried before any route of the next one, so
//     a prefix "/" route on api.example.com beats an exact "/health" route
//     that names no host. When nothing in a group matches, the next group is
//     tried, so host-less routes stay a fallback for every host.
//  2. Path kind: exact > template > longest prefix > regex. Among templates
//     the more specific wins segment by segment from the left: a literal
//     segment beats {param}, which beats a trailing {rest...}.
//  3. Among candidates of equal path precedence (the same exact path, the
//     same prefix, templates of the same shape, or any two regexes): higher
//     priority, then route name, then the order of the route's paths.
//
// Methods and headers filter candidates: a candidate that fails them lets
// the next one in precedence order try. Prefixes are plain string prefixes
// ("/api" matches "/apiary"), as in Envoy and Traefik; write "/api/" to stop
// at a segment boundary. Regexes, and header regexes, must match the whole
// path or value.
//
// The table matches the path it is given as it is: callers clean the path
// with CleanPath first, and send that same path upstream.
//
// A lookup allocates nothing, unless the host is longer than 32 bytes and
// has upper-case letters (one allocation to lower-case it).
package router

import (
	"cmp"
	"fmt"
	"net/http"
	"regexp"
	"slices"
	"strings"

	"github.com/meridian-gw/meridian/proto/config"
	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

// Entry is one route to compile: its match and the value a lookup returns.
type Entry[T any] struct {
	// Name is the route's name, used in errors and to break ties.
	Name string
	// Priority breaks ties between routes of equal match precedence; higher
	// wins.
	Priority int32
	Match    *meridianv1.RouteMatch
	Value    T
}

// Table is a compiled, immutable set of routes. It is safe for concurrent
// lookups.
type Table[T any] struct {
	m      matcher
	values []T // by route index
}

// matcher is the table without its values. Keeping the matching code free
// of type parameters lets the compiler inline it and call it directly.
type matcher struct {
	exactHosts    map[string]*pathIndex
	wildcardHosts map[string]*pathIndex // keyed by suffix, ".example.com"
	anyHost       *pathIndex
}

// New compiles entries. Errors name the route and field, as a
// *config.FieldError (several as config.ErrorList).
func New[T any](entries []Entry[T]) (*Table[T], error) {
	t := &Table[T]{
		m: matcher{
			exactHosts:    map[string]*pathIndex{},
			wildcardHosts: map[string]*pathIndex{},
		},
		values: make([]T, len(entries)),
	}
	var errs config.ErrorList
	for i, e := range entries {
		t.values[i] = e.Value
		errs = append(errs, t.m.add(i, e.Name, e.Priority, e.Match)...)
	}
	if err := errs.Err(); err != nil {
		return nil, err
	}
	for _, ix := range t.m.exactHosts {
		ix.finish()
	}
	for _, ix := range t.m.wildcardHosts {
		ix.finish()
	}
	if t.m.anyHost != nil {
		t.m.anyHost.finish()
	}
	return t, nil
}

func fieldErr(name, path, format string, args ...any) *config.FieldError {
	return &config.FieldError{Kind: config.KindRoute, Name: name, Path: path, Msg: fmt.Sprintf(format, args...)}
}

// add compiles the route with index id.
func (t *matcher) add(id int, name string, priority int32, m *meridianv1.RouteMatch) config.ErrorList {
	var errs config.ErrorList
	base := route{id: id, name: name, priority: priority}
	for i, meth := range m.GetMethods() {
		if meth == "" || strings.ContainsAny(meth, " \t\r\n,") {
			errs = append(errs, fieldErr(name, fmt.Sprintf("spec.match.methods[%d]", i), "invalid method %q", meth))
			continue
		}
		base.methods = append(base.methods, strings.ToUpper(meth))
	}
	for i, hm := range m.GetHeaders() {
		h, err := compileHeader(hm)
		if err != nil {
			errs = append(errs, fieldErr(name, fmt.Sprintf("spec.match.headers[%d]", i), "%v", err))
			continue
		}
		base.headers = append(base.headers, h)
	}
	if len(m.GetPaths()) == 0 {
		errs = append(errs, fieldErr(name, "spec.match.paths", "at least one path is required"))
	}

	var rs []*route
	for i, pm := range m.GetPaths() {
		r := base
		r.pathIndex = i
		at := func() string { return fmt.Sprintf("spec.match.paths[%d]", i) }
		switch k := pm.GetKind().(type) {
		case *meridianv1.PathMatch_Exact:
			r.kind, r.path = kindExact, k.Exact
		case *meridianv1.PathMatch_Prefix:
			r.kind, r.path = kindPrefix, k.Prefix
		case *meridianv1.PathMatch_Template:
			tmpl, err := parseTemplate(k.Template)
			if err != nil {
				errs = append(errs, fieldErr(name, at()+".template", "%v", err))
				continue
			}
			r.kind, r.path, r.tmpl = kindTemplate, k.Template, tmpl
		case *meridianv1.PathMatch_Regex:
			re, err := regexp.Compile(`^(?:` + k.Regex + `)$`)
			if err != nil {
				errs = append(errs, fieldErr(name, at()+".regex", "invalid regex: %v", err))
				continue
			}
			r.kind, r.path, r.re = kindRegex, k.Regex, re
		default:
			errs = append(errs, fieldErr(name, at(), "one of exact, prefix, template or regex is required"))
			continue
		}
		if r.kind != kindRegex && !strings.HasPrefix(r.path, "/") {
			errs = append(errs, fieldErr(name, at(), "path %q must start with /", r.path))
			continue
		}
		rs = append(rs, &r)
	}

	hosts := m.GetHosts()
	type target struct {
		group map[string]*pathIndex
		key   string
	}
	var targets []target
	for i, h := range hosts {
		h = strings.TrimSuffix(strings.ToLower(h), ".")
		if suffix, ok := strings.CutPrefix(h, "*"); ok {
			if !strings.HasPrefix(suffix, ".") || len(suffix) < 2 || strings.Contains(suffix, "*") {
				errs = append(errs, fieldErr(name, fmt.Sprintf("spec.match.hosts[%d]", i), "wildcard host %q must look like *.example.com", hosts[i]))
				continue
			}
			targets = append(targets, target{t.wildcardHosts, suffix})
			continue
		}
		if h == "" || strings.ContainsAny(h, "*/ ") {
			errs = append(errs, fieldErr(name, fmt.Sprintf("spec.match.hosts[%d]", i), "invalid host %q", hosts[i]))
			continue
		}
		if trimHost(h) != h {
			// Request hosts are matched without their port.
			errs = append(errs, fieldErr(name, fmt.Sprintf("spec.match.hosts[%d]", i), "host %q must not have a port", hosts[i]))
			continue
		}
		targets = append(targets, target{t.exactHosts, h})
	}
	if len(errs) > 0 {
		return errs
	}

	if len(hosts) == 0 {
		if t.anyHost == nil {
			t.anyHost = newPathIndex()
		}
		t.anyHost.add(rs)
		return nil
	}
	for _, tg := range targets {
		ix := tg.group[tg.key]
		if ix == nil {
			ix = newPathIndex()
			tg.group[tg.key] = ix
		}
		ix.add(rs)
	}
	return nil
}

// Lookup finds the route for r, matching r.Host, r.Method, r.URL.Path and
// r.Header. ok is false when no route matches.
func (t *Table[T]) Lookup(r *http.Request) (value T, params Params, ok bool) {
	return t.Find(r.Host, r.Method, r.URL.Path, r.Header)
}

// Find is Lookup on the parts of a request. host may carry a port.
func (t *Table[T]) Find(host, method, path string, h http.Header) (value T, params Params, ok bool) {
	q := query{method: method, path: path, header: h}
	host = trimHost(host)
	var r *route
	if hasUpper(host) {
		r, params = t.m.findFolded(host, &q)
	} else {
		r, params = t.m.find(host, &q)
	}
	if r == nil {
		return value, Params{}, false
	}
	return t.values[r.id], params, true
}

// findFolded is find for a host with upper-case letters. Converting a short
// byte slice to a string that does not escape uses a stack buffer, so this
// does not allocate for hosts up to 32 bytes (strings.ToLower would). It is
// kept out of Find so the common path does not pay for its stack frame.
//
//go:noinline
func (t *matcher) findFolded(host string, q *query) (*route, Params) {
	b := []byte(host)
	for i, c := range b {
		if 'A' <= c && c <= 'Z' {
			b[i] = c + 'a' - 'A'
		}
	}
	return t.find(string(b), q)
}

func (t *matcher) find(host string, q *query) (*route, Params) {
	if len(t.exactHosts) > 0 {
		if ix := t.exactHosts[host]; ix != nil {
			if r, p := ix.find(q); r != nil {
				return r, p
			}
		}
	}
	if len(t.wildcardHosts) > 0 {
		// Longest suffix first; the wildcard must cover at least one byte.
		for i := 1; i < len(host); i++ {
			if host[i] != '.' {
				continue
			}
			if ix := t.wildcardHosts[host[i:]]; ix != nil {
				if r, p := ix.find(q); r != nil {
					return r, p
				}
			}
		}
	}
	if t.anyHost != nil {
		return t.anyHost.find(q)
	}
	return nil, Params{}
}

// Allow reports, for a request Lookup did not match, the methods that would
// have matched: the sorted union of the methods of every route whose host,
// path and headers match r, comma-separated for an Allow header ("GET,
// HEAD"). It returns "" when no route matches r's host, path and headers,
// or when one of them accepts r.Method (r is then not a 405). It allocates
// and is meant for the miss path only.
func (t *Table[T]) Allow(r *http.Request) string {
	return t.m.allow(r)
}

func (t *matcher) allow(r *http.Request) string {
	q := query{method: r.Method, path: r.URL.Path, header: r.Header}
	lower := strings.ToLower(trimHost(r.Host))
	var methods []string
	anyMethod := false
	collect := func(rt *route) {
		if !rt.headersMatch(q.header) {
			return
		}
		if len(rt.methods) == 0 || slices.Contains(rt.methods, q.method) {
			anyMethod = true
			return
		}
		methods = append(methods, rt.methods...)
	}
	if ix := t.exactHosts[lower]; ix != nil {
		ix.each(q.path, collect)
	}
	for i := 1; i < len(lower) && len(t.wildcardHosts) > 0; i++ {
		if lower[i] == '.' {
			if ix := t.wildcardHosts[lower[i:]]; ix != nil {
				ix.each(q.path, collect)
			}
		}
	}
	if t.anyHost != nil {
		t.anyHost.each(q.path, collect)
	}
	if anyMethod || len(methods) == 0 {
		return ""
	}
	slices.Sort(methods)
	return strings.Join(slices.Compact(methods), ", ")
}

// trimHost drops a port and a trailing dot.
func trimHost(host string) string {
	for i := len(host) - 1; i >= 0; i-- {
		if c := host[i]; c == ':' {
			host = host[:i]
			break
		} else if c == ']' || c == '.' {
			break // an IPv6 literal without port, or no port
		}
	}
	return strings.TrimSuffix(host, ".")
}

func hasUpper(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; 'A' <= c && c <= 'Z' {
			return true
		}
	}
	return false
}

// Params are the template parameters of a match. The zero value has none.
// Values are sliced from the matched path on demand, so neither the lookup
// nor reading them allocates. Values are as they appear in the matched path.
type Params struct {
	tmpl *template
	path string
}

// Len returns the number of parameters.
func (p Params) Len() int {
	if p.tmpl == nil {
		return 0
	}
	return len(p.tmpl.names)
}

// Each calls fn with every parameter name and value, in template order.
func (p Params) Each(fn func(name, value string)) {
	if p.tmpl == nil {
		return
	}
	rest := p.path[1:]
	seg := 0
	for i, name := range p.tmpl.names {
		rest = skipSegments(rest, p.tmpl.paramSeg[i]-seg)
		seg = p.tmpl.paramSeg[i]
		fn(name, paramValue(rest, i == len(p.tmpl.names)-1 && p.tmpl.catchAll))
	}
}

// Get returns the value of the named parameter.
func (p Params) Get(name string) (string, bool) {
	if p.tmpl == nil {
		return "", false
	}
	for i, n := range p.tmpl.names {
		if n == name {
			rest := skipSegments(p.path[1:], p.tmpl.paramSeg[i])
			return paramValue(rest, i == len(p.tmpl.names)-1 && p.tmpl.catchAll), true
		}
	}
	return "", false
}

// skipSegments drops the first n '/'-terminated segments of rest.
func skipSegments(rest string, n int) string {
	for range n {
		i := slash(rest)
		if i < 0 {
			return ""
		}
		rest = rest[i+1:]
	}
	return rest
}

// slash is strings.IndexByte(s, '/'); path segments are short, and a plain
// loop beats the vectorised search's set-up on them.
func slash(s string) int {
	for i := 0; i < len(s); i++ {
		if s[i] == '/' {
			return i
		}
	}
	return -1
}

// paramValue returns the first segment of rest, or all of it for a
// catch-all.
func paramValue(rest string, catchAll bool) string {
	if catchAll {
		return rest
	}
	if i := slash(rest); i >= 0 {
		return rest[:i]
	}
	return rest
}

type query struct {
	method string
	path   string
	header http.Header
}

type pathKind int

const (
	kindExact pathKind = iota
	kindTemplate
	kindPrefix
	kindRegex
)

// route is one (route, path) pair.
type route struct {
	id        int // index of the route's Entry
	name      string
	priority  int32
	pathIndex int
	methods   []string
	headers   []headerMatch
	kind      pathKind
	path      string
	tmpl      *template
	re        *regexp.Regexp
}

func (r *route) accepts(q *query) bool {
	if len(r.methods) > 0 && !slices.Contains(r.methods, q.method) {
		return false
	}
	return r.headersMatch(q.header)
}

func (r *route) headersMatch(h http.Header) bool {
	for i := range r.headers {
		if !r.headers[i].matches(h) {
			return false
		}
	}
	return true
}

// compareRoutes orders candidates of equal path precedence: priority, then
// the number of header matches (so a header-gated canary route is tried
// before the ungated route on the same path, as in Kong), then name, then
// the order of the route's paths.
func compareRoutes(a, b *route) int {
	if c := cmp.Compare(b.priority, a.priority); c != 0 {
		return c
	}
	if c := cmp.Compare(len(b.headers), len(a.headers)); c != 0 {
		return c
	}
	if c := cmp.Compare(a.name, b.name); c != 0 {
		return c
	}
	return cmp.Compare(a.pathIndex, b.pathIndex)
}

func firstAccepting(rs []*route, q *query) *route {
	for _, r := range rs {
		if r.accepts(q) {
			return r
		}
	}
	return nil
}

type headerMatch struct {
	key     string // canonical
	exact   string
	re      *regexp.Regexp
	present bool
	isExact bool
}

func compileHeader(m *meridianv1.HeaderMatch) (headerMatch, error) {
	if m.GetName() == "" {
		return headerMatch{}, fmt.Errorf("name is required")
	}
	h := headerMatch{key: http.CanonicalHeaderKey(m.GetName())}
	switch k := m.GetKind().(type) {
	case *meridianv1.HeaderMatch_Exact:
		h.exact, h.isExact = k.Exact, true
	case *meridianv1.HeaderMatch_Regex:
		re, err := regexp.Compile(`^(?:` + k.Regex + `)$`)
		if err != nil {
			return headerMatch{}, fmt.Errorf("invalid regex: %w", err)
		}
		h.re = re
	case *meridianv1.HeaderMatch_Present:
		h.present = k.Present
	default:
		h.present = true
	}
	return h, nil
}

// matches holds when any value of the header matches; present: false
// requires the header to be absent.
func (m *headerMatch) matches(h http.Header) bool {
	vs := h[m.key]
	switch {
	case m.isExact:
		return slices.Contains(vs, m.exact)
	case m.re != nil:
		for _, v := range vs {
			if m.re.MatchString(v) {
				return true
			}
		}
		return false
	default:
		return (len(vs) > 0) == m.present
	}
}

// pathIndex holds every route of one host group. Exact paths live in the
// segment trie with the templates: an exact path is an all-literal chain,
// which the trie tries before any branch with a parameter, so a single walk
// finds exact matches first and template matches after them.
type pathIndex struct {
	segs     *tnode
	prefixes *pnode
	regexes  []*route
}

func newPathIndex() *pathIndex {
	return &pathIndex{}
}

func (ix *pathIndex) add(rs []*route) {
	for _, r := range rs {
		switch r.kind {
		case kindExact, kindTemplate:
			if ix.segs == nil {
				ix.segs = &tnode{}
			}
			ix.segs.insert(r)
		case kindPrefix:
			if ix.prefixes == nil {
				ix.prefixes = &pnode{}
			}
			ix.prefixes.insert(r.path, r)
		case kindRegex:
			ix.regexes = append(ix.regexes, r)
		}
	}
}

// finish sorts every candidate list once all routes are added.
func (ix *pathIndex) finish() {
	if ix.segs != nil {
		ix.segs.finish()
	}
	if ix.prefixes != nil {
		ix.prefixes.finish()
	}
	slices.SortFunc(ix.regexes, compareRoutes)
}

func (ix *pathIndex) find(q *query) (*route, Params) {
	if ix.segs != nil && len(q.path) > 0 && q.path[0] == '/' {
		if r := ix.segs.find(q.path[1:], q); r != nil {
			return r, Params{tmpl: r.tmpl, path: q.path}
		}
	}
	if ix.prefixes != nil {
		if r := ix.prefixes.find(q.path, q); r != nil {
			return r, Params{}
		}
	}
	for _, r := range ix.regexes {
		if r.re.MatchString(q.path) && r.accepts(q) {
			return r, Params{}
		}
	}
	return nil, Params{}
}

// each calls fn with every route whose path matches, in no particular order.
func (ix *pathIndex) each(path string, fn func(*route)) {
	if ix.segs != nil && strings.HasPrefix(path, "/") {
		ix.segs.each(path[1:], fn)
	}
	if ix.prefixes != nil {
		ix.prefixes.each(path, fn)
	}
	for _, r := range ix.regexes {
		if r.re.MatchString(path) {
			fn(r)
		}
	}
}
