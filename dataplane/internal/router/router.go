// Package router compiles route matches into an immutable lookup table and
// finds the route a request belongs to.
//
// Precedence is deterministic:
//
//  1. Host: an exact host beats the longest matching wildcard
//     ("*.example.com"), which beats routes with no host. When no route of
//     the most specific host group matches, the next group is tried.
//  2. Path kind: exact > template > longest prefix > regex.
//     Among templates, a literal segment beats {param}, which beats {rest...}.
//  3. Among routes with the same path: higher priority, then more header
//     matches, then a method restriction, then route name, then path order.
//
// Methods and headers filter candidates: a candidate that fails them lets
// the next one in precedence order try. Prefixes are plain string prefixes
// ("/api" matches "/apiary"), as in Envoy and Traefik. Regexes and header
// regexes must match the whole path or value.
//
// A lookup that matches allocates nothing, except for lower-casing a host
// that arrives with upper-case letters.
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
	// Priority breaks ties between routes of equal match precedence.
	Priority int32
	Match    *meridianv1.RouteMatch
	Value    T
}

// Table is a compiled, immutable set of routes. It is safe for concurrent
// lookups.
type Table[T any] struct {
	exactHosts    map[string]*pathIndex[T]
	wildcardHosts map[string]*pathIndex[T] // keyed by suffix, ".example.com"
	anyHost       *pathIndex[T]
}

// Params are the template parameters of a match. The zero value has none.
// Values are computed on demand from the matched path, so a lookup does not
// allocate for them.
type Params struct {
	tmpl *template
	path string
}

// Len returns the number of parameters.
func (p Params) Len() int {
	if p.tmpl == nil {
		return 0
	}
	return p.tmpl.params
}

// Each calls fn with every parameter name and value, in template order.
func (p Params) Each(fn func(name, value string)) {
	if p.tmpl == nil || p.tmpl.params == 0 {
		return
	}
	rest := p.path[1:]
	for _, s := range p.tmpl.segs {
		if s.catchAll {
			fn(s.name, rest)
			return
		}
		seg, after, _ := strings.Cut(rest, "/")
		if s.param {
			fn(s.name, seg)
		}
		rest = after
	}
}

// New compiles entries. Errors name the route and field, as a
// *config.FieldError (several as config.ErrorList).
func New[T any](entries []Entry[T]) (*Table[T], error) {
	t := &Table[T]{
		exactHosts:    map[string]*pathIndex[T]{},
		wildcardHosts: map[string]*pathIndex[T]{},
	}
	var errs config.ErrorList
	for _, e := range entries {
		if err := t.add(e); err != nil {
			errs = append(errs, err...)
		}
	}
	if err := errs.Err(); err != nil {
		return nil, err
	}
	t.forEachIndex((*pathIndex[T]).finish)
	return t, nil
}

func (t *Table[T]) forEachIndex(fn func(*pathIndex[T])) {
	for _, ix := range t.exactHosts {
		fn(ix)
	}
	for _, ix := range t.wildcardHosts {
		fn(ix)
	}
	if t.anyHost != nil {
		fn(t.anyHost)
	}
}

func fieldErr(name, path, format string, args ...any) *config.FieldError {
	return &config.FieldError{Kind: config.KindRoute, Name: name, Path: path, Msg: fmt.Sprintf(format, args...)}
}

func (t *Table[T]) add(e Entry[T]) config.ErrorList {
	var errs config.ErrorList
	m := e.Match
	base := route[T]{value: e.Value, name: e.Name, priority: e.Priority}
	for _, meth := range m.GetMethods() {
		base.methods = append(base.methods, strings.ToUpper(meth))
	}
	for i, hm := range m.GetHeaders() {
		h, err := compileHeader(hm)
		if err != nil {
			errs = append(errs, fieldErr(e.Name, fmt.Sprintf("spec.match.headers[%d]", i), "%v", err))
			continue
		}
		base.headers = append(base.headers, h)
	}
	if len(m.GetPaths()) == 0 {
		errs = append(errs, fieldErr(e.Name, "spec.match.paths", "at least one path is required"))
	}

	var rs []*route[T]
	for i, pm := range m.GetPaths() {
		r := base
		r.pathIndex = i
		switch k := pm.GetKind().(type) {
		case *meridianv1.PathMatch_Exact:
			r.kind, r.path = kindExact, k.Exact
		case *meridianv1.PathMatch_Prefix:
			r.kind, r.path = kindPrefix, k.Prefix
		case *meridianv1.PathMatch_Template:
			tmpl, err := parseTemplate(k.Template)
			if err != nil {
				errs = append(errs, fieldErr(e.Name, fmt.Sprintf("spec.match.paths[%d].template", i), "%v", err))
				continue
			}
			r.kind, r.path, r.tmpl = kindTemplate, k.Template, tmpl
		case *meridianv1.PathMatch_Regex:
			re, err := regexp.Compile(`^(?:` + k.Regex + `)$`)
			if err != nil {
				errs = append(errs, fieldErr(e.Name, fmt.Sprintf("spec.match.paths[%d].regex", i), "invalid regex: %v", err))
				continue
			}
			r.kind, r.path, r.re = kindRegex, k.Regex, re
		default:
			errs = append(errs, fieldErr(e.Name, fmt.Sprintf("spec.match.paths[%d]", i), "one of exact, prefix, template or regex is required"))
			continue
		}
		if r.kind != kindRegex && !strings.HasPrefix(r.path, "/") {
			errs = append(errs, fieldErr(e.Name, fmt.Sprintf("spec.match.paths[%d]", i), "path %q must start with /", r.path))
			continue
		}
		rs = append(rs, &r)
	}
	if len(errs) > 0 {
		return errs
	}

	hosts := m.GetHosts()
	if len(hosts) == 0 {
		if t.anyHost == nil {
			t.anyHost = newPathIndex[T]()
		}
		t.anyHost.add(rs)
		return nil
	}
	for i, h := range hosts {
		h = strings.TrimSuffix(strings.ToLower(h), ".")
		group := t.exactHosts
		key := h
		if suffix, ok := strings.CutPrefix(h, "*"); ok {
			if !strings.HasPrefix(suffix, ".") || len(suffix) < 2 || strings.Contains(suffix, "*") {
				errs = append(errs, fieldErr(e.Name, fmt.Sprintf("spec.match.hosts[%d]", i), "wildcard host %q must look like *.example.com", hosts[i]))
				continue
			}
			group, key = t.wildcardHosts, suffix
		} else if h == "" || strings.Contains(h, "*") {
			errs = append(errs, fieldErr(e.Name, fmt.Sprintf("spec.match.hosts[%d]", i), "invalid host %q", hosts[i]))
			continue
		}
		ix := group[key]
		if ix == nil {
			ix = newPathIndex[T]()
			group[key] = ix
		}
		ix.add(rs)
	}
	return errs
}

// Lookup finds the route for r. ok is false when no route matches.
func (t *Table[T]) Lookup(r *http.Request) (value T, params Params, ok bool) {
	return t.Find(r.Host, r.Method, r.URL.Path, r.Header)
}

// Find is Lookup on the parts of a request. host may carry a port.
func (t *Table[T]) Find(host, method, path string, h http.Header) (value T, params Params, ok bool) {
	host = normalizeHost(host)
	q := query{method: method, path: path, header: h}
	if ix := t.exactHosts[host]; ix != nil {
		if r, p := ix.find(&q); r != nil {
			return r.value, p, true
		}
	}
	if len(t.wildcardHosts) > 0 {
		// Longest suffix first; the wildcard must cover at least one byte.
		for i := 1; i < len(host); i++ {
			if host[i] != '.' {
				continue
			}
			if ix := t.wildcardHosts[host[i:]]; ix != nil {
				if r, p := ix.find(&q); r != nil {
					return r.value, p, true
				}
			}
		}
	}
	if t.anyHost != nil {
		if r, p := t.anyHost.find(&q); r != nil {
			return r.value, p, true
		}
	}
	return value, Params{}, false
}

// normalizeHost drops the port and a trailing dot, and lower-cases.
func normalizeHost(host string) string {
	if i := strings.LastIndexByte(host, ':'); i >= 0 && !strings.Contains(host[i:], "]") {
		host = host[:i]
	}
	host = strings.TrimSuffix(host, ".")
	for i := 0; i < len(host); i++ {
		if c := host[i]; 'A' <= c && c <= 'Z' {
			return strings.ToLower(host)
		}
	}
	return host
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
type route[T any] struct {
	value     T
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

func (r *route[T]) accepts(q *query) bool {
	if len(r.methods) > 0 && !slices.Contains(r.methods, q.method) {
		return false
	}
	for i := range r.headers {
		if !r.headers[i].matches(q.header) {
			return false
		}
	}
	return true
}

// compareRoutes orders candidates of equal path precedence.
func compareRoutes[T any](a, b *route[T]) int {
	if c := cmp.Compare(b.priority, a.priority); c != 0 {
		return c
	}
	if c := cmp.Compare(len(b.headers), len(a.headers)); c != 0 {
		return c
	}
	if c := cmp.Compare(min(len(b.methods), 1), min(len(a.methods), 1)); c != 0 {
		return c
	}
	if c := cmp.Compare(a.name, b.name); c != 0 {
		return c
	}
	return cmp.Compare(a.pathIndex, b.pathIndex)
}

func firstAccepting[T any](rs []*route[T], q *query) *route[T] {
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
			return headerMatch{}, fmt.Errorf("regex: %w", err)
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

// pathIndex holds every route of one host group.
type pathIndex[T any] struct {
	exact      map[string][]*route[T]
	prefixes   map[string][]*route[T]
	prefixLens []int // distinct prefix lengths, longest first
	tmpl       *tnode[T]
	regexes    []*route[T]
}

func newPathIndex[T any]() *pathIndex[T] {
	return &pathIndex[T]{exact: map[string][]*route[T]{}, prefixes: map[string][]*route[T]{}}
}

func (ix *pathIndex[T]) add(rs []*route[T]) {
	for _, r := range rs {
		switch r.kind {
		case kindExact:
			ix.exact[r.path] = append(ix.exact[r.path], r)
		case kindPrefix:
			ix.prefixes[r.path] = append(ix.prefixes[r.path], r)
		case kindTemplate:
			if ix.tmpl == nil {
				ix.tmpl = &tnode[T]{}
			}
			ix.tmpl.insert(r)
		case kindRegex:
			ix.regexes = append(ix.regexes, r)
		}
	}
}

// finish sorts every candidate list once all routes are added.
func (ix *pathIndex[T]) finish() {
	for _, rs := range ix.exact {
		slices.SortFunc(rs, compareRoutes[T])
	}
	seen := map[int]bool{}
	for p, rs := range ix.prefixes {
		slices.SortFunc(rs, compareRoutes[T])
		if !seen[len(p)] {
			seen[len(p)] = true
			ix.prefixLens = append(ix.prefixLens, len(p))
		}
	}
	slices.SortFunc(ix.prefixLens, func(a, b int) int { return cmp.Compare(b, a) })
	slices.SortFunc(ix.regexes, compareRoutes[T])
	if ix.tmpl != nil {
		ix.tmpl.finish()
	}
}

func (ix *pathIndex[T]) find(q *query) (*route[T], Params) {
	if rs := ix.exact[q.path]; rs != nil {
		if r := firstAccepting(rs, q); r != nil {
			return r, Params{}
		}
	}
	if ix.tmpl != nil && strings.HasPrefix(q.path, "/") {
		if r := ix.tmpl.find(q.path[1:], q); r != nil {
			return r, Params{tmpl: r.tmpl, path: q.path}
		}
	}
	for _, n := range ix.prefixLens {
		if n > len(q.path) {
			continue
		}
		if rs := ix.prefixes[q.path[:n]]; rs != nil {
			if r := firstAccepting(rs, q); r != nil {
				return r, Params{}
			}
		}
	}
	for _, r := range ix.regexes {
		if r.re.MatchString(q.path) && r.accepts(q) {
			return r, Params{}
		}
	}
	return nil, Params{}
}
