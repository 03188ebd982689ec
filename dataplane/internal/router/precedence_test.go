package router

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

func paths(ps ...*meridianv1.PathMatch) []*meridianv1.PathMatch { return ps }

func hdrExact(name, v string) *meridianv1.HeaderMatch {
	return &meridianv1.HeaderMatch{Name: name, Kind: &meridianv1.HeaderMatch_Exact{Exact: v}}
}

// TestPrecedence gives every rule its own small table, with names chosen so
// that the name tie-break would pick the other route if the rule under
// test did not apply.
func TestPrecedence(t *testing.T) {
	type req struct {
		host, method, path string
		header             http.Header
		want               string
	}
	tests := []struct {
		name string
		rts  []rt
		reqs []req
	}{
		{
			name: "exact > template > prefix > regex",
			rts: []rt{
				{name: "a-regex", priority: 100, paths: paths(regex(`/k/.*`))},
				{name: "b-prefix", priority: 50, paths: paths(prefix("/k/"))},
				{name: "c-template", priority: 10, paths: paths(tmpl("/k/{id}"))},
				{name: "d-exact", paths: paths(exact("/k/x"))},
			},
			reqs: []req{
				{path: "/k/x", want: "d-exact"},
				{path: "/k/y", want: "c-template"},
				{path: "/k/y/z", want: "b-prefix"},
			},
		},
		{
			name: "regex only when nothing else matches",
			rts: []rt{
				{name: "a-regex", priority: 100, paths: paths(regex(`/r/[0-9]+`))},
				{name: "b-prefix", paths: paths(prefix("/q"))},
			},
			reqs: []req{{path: "/r/1", want: "a-regex"}, {path: "/q/1", want: "b-prefix"}, {path: "/r/x"}},
		},
		{
			name: "longest prefix beats priority",
			rts: []rt{
				{name: "a-short", priority: 100, paths: paths(prefix("/api"))},
				{name: "b-long", paths: paths(prefix("/api/v1"))},
			},
			reqs: []req{{path: "/api/v1/x", want: "b-long"}, {path: "/api/v2", want: "a-short"}, {path: "/apiary", want: "a-short"}},
		},
		{
			name: "priority then name among equal paths",
			rts: []rt{
				{name: "a", paths: paths(exact("/e"), prefix("/p"), tmpl("/t/{x}"), regex("/r"))},
				{name: "b", paths: paths(exact("/e"), prefix("/p"), tmpl("/t/{y}"), regex("/r"))},
				{name: "c", priority: 1, paths: paths(exact("/e2"), prefix("/p2"), tmpl("/t2/{x}"), regex("/r2"))},
				{name: "d", priority: 2, paths: paths(exact("/e2"), prefix("/p2"), tmpl("/t2/{z}"), regex("/r2"))},
			},
			reqs: []req{
				{path: "/e", want: "a"}, {path: "/p", want: "a"}, {path: "/t/1", want: "a"}, {path: "/r", want: "a"},
				{path: "/e2", want: "d"}, {path: "/p2", want: "d"}, {path: "/t2/1", want: "d"}, {path: "/r2", want: "d"},
			},
		},
		{
			name: "more header matches rank above fewer at equal priority; methods only filter",
			rts: []rt{
				{name: "a-plain", paths: paths(prefix("/c"))},
				{name: "b-canary", paths: paths(prefix("/c")), headers: []*meridianv1.HeaderMatch{hdrExact("X-Canary", "1")}},
				{name: "c-canary-first", priority: 1, paths: paths(prefix("/d")), headers: []*meridianv1.HeaderMatch{hdrExact("X-Canary", "1")}},
				{name: "d-plain", paths: paths(prefix("/d"))},
			},
			reqs: []req{
				{path: "/c", header: http.Header{"X-Canary": {"1"}}, want: "b-canary"},
				{path: "/c", header: http.Header{"X-Canary": {"0"}}, want: "a-plain"},
				{path: "/c", want: "a-plain"},
				{path: "/d", header: http.Header{"X-Canary": {"1"}}, want: "c-canary-first"},
				{path: "/d", header: http.Header{"X-Canary": {"2"}}, want: "d-plain"},
			},
		},
		{
			name: "template specificity: literal > param > catch-all, left to right",
			rts: []rt{
				{name: "a-catch", priority: 9, paths: paths(tmpl("/f/{rest...}"))},
				{name: "b-param", priority: 5, paths: paths(tmpl("/f/{x}/c"))},
				{name: "c-literal", paths: paths(tmpl("/f/b/{y}"))},
				{name: "d-deep", paths: paths(tmpl("/f/{x}/{y}/{z}"))},
			},
			reqs: []req{
				{path: "/f/b/c", want: "c-literal"},
				{path: "/f/a/c", want: "b-param"},
				{path: "/f/a/d", want: "a-catch"},
				{path: "/f/a/b/c", want: "d-deep"},
				{path: "/f/a/b/c/d", want: "a-catch"},
				{path: "/f/", want: "a-catch"},
				{path: "/f"},
			},
		},
		{
			name: "template backtracks when the specific branch rejects",
			rts: []rt{
				{name: "a-literal-post", methods: []string{"POST"}, paths: paths(tmpl("/u/me/{x}"))},
				{name: "b-param", paths: paths(tmpl("/u/{id}/{x}"))},
				{name: "c-prefix-post", methods: []string{"POST"}, paths: paths(prefix("/v/long"))},
				{name: "d-prefix", paths: paths(prefix("/v/"))},
				{name: "e-exact-post", methods: []string{"POST"}, paths: paths(exact("/w"))},
				{name: "f-template", paths: paths(tmpl("/{any}"))},
			},
			reqs: []req{
				{method: "POST", path: "/u/me/1", want: "a-literal-post"},
				{method: "GET", path: "/u/me/1", want: "b-param"},
				{method: "POST", path: "/v/longer", want: "c-prefix-post"},
				{method: "GET", path: "/v/longer", want: "d-prefix"},
				{method: "POST", path: "/w", want: "e-exact-post"},
				{method: "GET", path: "/w", want: "f-template"},
			},
		},
		{
			name: "hosts: exact > longest wildcard > none, with fallback",
			rts: []rt{
				{name: "a-any", paths: paths(exact("/x"), prefix("/"))},
				{name: "b-wild", hosts: []string{"*.example.com"}, paths: paths(prefix("/"))},
				{name: "c-wild-deep", hosts: []string{"*.EU.example.com"}, paths: paths(prefix("/"))},
				{name: "d-exact-host", hosts: []string{"api.example.com."}, paths: paths(prefix("/only"))},
				{name: "e-two-hosts", hosts: []string{"one.test", "*.two.test"}, paths: paths(prefix("/"))},
				{name: "f-ipv6", hosts: []string{"[::1]"}, paths: paths(prefix("/"))},
				{name: "g-localhost", hosts: []string{"localhost"}, paths: paths(prefix("/"))},
			},
			reqs: []req{
				{host: "api.example.com", path: "/only/1", want: "d-exact-host"},
				{host: "API.Example.Com:443", path: "/only", want: "d-exact-host"},
				{host: "api.example.com", path: "/x", want: "b-wild"},
				{host: "a.b.example.com", path: "/x", want: "b-wild"},
				{host: "a.eu.example.com", path: "/x", want: "c-wild-deep"},
				{host: "eu.example.com", path: "/x", want: "b-wild"},
				{host: "example.com", path: "/x", want: "a-any"},
				{host: "example.com.evil", path: "/x", want: "a-any"},
				{host: "one.test", path: "/", want: "e-two-hosts"},
				{host: "x.two.test:80", path: "/", want: "e-two-hosts"},
				{host: "two.test", path: "/", want: "a-any"},
				{host: "", path: "/", want: "a-any"},
				{host: "[::1]:8080", path: "/", want: "f-ipv6"},
				{host: "[::1]", path: "/", want: "f-ipv6"},
				{host: "LOCALHOST:8080", path: "/", want: "g-localhost"},
				{host: "localhost.", path: "/", want: "g-localhost"},
				{host: "A-Very-Long-Host-Name.Example.Org.Uk", path: "/", want: "a-any"},
			},
		},
		{
			name: "methods",
			rts: []rt{
				{name: "a-get", methods: []string{"get", "HEAD"}, paths: paths(exact("/m"))},
				{name: "b-post", methods: []string{"POST"}, paths: paths(exact("/m"))},
			},
			reqs: []req{
				{method: "GET", path: "/m", want: "a-get"},
				{method: "HEAD", path: "/m", want: "a-get"},
				{method: "POST", path: "/m", want: "b-post"},
				{method: "DELETE", path: "/m"},
				{method: "get", path: "/m"}, // methods are case-sensitive on the wire
			},
		},
		{
			name: "headers: exact, regex, present, absent",
			rts: []rt{
				{name: "a-exact", paths: paths(exact("/h")), headers: []*meridianv1.HeaderMatch{hdrExact("x-env", "prod")}},
				{name: "b-regex", paths: paths(exact("/h")), headers: []*meridianv1.HeaderMatch{
					{Name: "X-Env", Kind: &meridianv1.HeaderMatch_Regex{Regex: "stag(e|ing)"}},
				}},
				{name: "c-present", paths: paths(exact("/h")), headers: []*meridianv1.HeaderMatch{
					{Name: "X-Env", Kind: &meridianv1.HeaderMatch_Present{Present: true}},
				}},
				{name: "d-absent", paths: paths(exact("/h")), headers: []*meridianv1.HeaderMatch{
					{Name: "X-Env", Kind: &meridianv1.HeaderMatch_Present{Present: false}},
				}},
				{name: "e-both", paths: paths(exact("/b")), headers: []*meridianv1.HeaderMatch{hdrExact("A", "1"), hdrExact("B", "2")}},
			},
			reqs: []req{
				{path: "/h", header: http.Header{"X-Env": {"dev", "prod"}}, want: "a-exact"},
				{path: "/h", header: http.Header{"X-Env": {"staging"}}, want: "b-regex"},
				{path: "/h", header: http.Header{"X-Env": {"xstaging"}}, want: "c-present"},
				{path: "/h", header: http.Header{"X-Env": {""}}, want: "c-present"},
				{path: "/h", want: "d-absent"},
				{path: "/b", header: http.Header{"A": {"1"}, "B": {"2"}}, want: "e-both"},
				{path: "/b", header: http.Header{"A": {"1"}}},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tbl := build(t, tt.rts)
			for _, q := range tt.reqs {
				method := q.method
				if method == "" {
					method = "GET"
				}
				got, _, ok := tbl.Find(q.host, method, q.path, q.header)
				if got != q.want || ok != (q.want != "") {
					t.Errorf("Find(%q, %s, %q, %v) = %q, %v; want %q", q.host, method, q.path, q.header, got, ok, q.want)
				}
			}
		})
	}
}

func TestParams(t *testing.T) {
	tbl := build(t, []rt{
		{name: "two", paths: paths(tmpl("/svc/users/{id}/orders/{orderId}"))},
		{name: "catch", paths: paths(tmpl("/files/{bucket}/{path...}"))},
		{name: "root-catch", paths: paths(tmpl("/{all...}"))},
		{name: "trailing", paths: paths(tmpl("/t/{x}/"))},
		{name: "none", paths: paths(exact("/svc"))},
	})
	tests := []struct {
		path, want, params string
	}{
		{"/svc/users/42/orders/7", "two", "id=42,orderId=7"},
		{"/files/b/a/b/c.txt", "catch", "bucket=b,path=a/b/c.txt"},
		{"/files/b/", "catch", "bucket=b,path="},
		{"/x/y", "root-catch", "all=x/y"},
		{"/t/1/", "trailing", "x=1"},
		{"/svc", "none", ""},
	}
	for _, tt := range tests {
		got, params, ok := tbl.Find("", "GET", tt.path, nil)
		if !ok || got != tt.want {
			t.Fatalf("Find(%q) = %q, %v; want %q", tt.path, got, ok, tt.want)
		}
		var ps []string
		params.Each(func(k, v string) {
			ps = append(ps, k+"="+v)
			if g, ok := params.Get(k); !ok || g != v {
				t.Errorf("%s: Get(%q) = %q, %v; want %q", tt.path, k, g, ok, v)
			}
		})
		if g := strings.Join(ps, ","); g != tt.params {
			t.Errorf("%s: params = %q, want %q", tt.path, g, tt.params)
		}
		if params.Len() != len(ps) {
			t.Errorf("%s: Len = %d, want %d", tt.path, params.Len(), len(ps))
		}
		if _, ok := params.Get("nope"); ok {
			t.Errorf("%s: Get(nope) found", tt.path)
		}
	}
}

func TestAllow(t *testing.T) {
	tbl := build(t, []rt{
		{name: "get", methods: []string{"GET", "HEAD"}, paths: paths(exact("/m"))},
		{name: "post", methods: []string{"POST", "GET"}, paths: paths(prefix("/m"))},
		{name: "put-hdr", methods: []string{"PUT"}, paths: paths(exact("/m")), headers: []*meridianv1.HeaderMatch{hdrExact("X-A", "1")}},
		{name: "patch-host", hosts: []string{"*.example.com"}, methods: []string{"PATCH"}, paths: paths(tmpl("/m/{x}"))},
		{name: "other-host", hosts: []string{"other.test"}, methods: []string{"OPTIONS"}, paths: paths(exact("/m"))},
		{name: "any-method", paths: paths(exact("/any"))},
		{name: "re", methods: []string{"DELETE"}, paths: paths(regex("/re/.*"))},
	})
	tests := []struct {
		name, host, method, path string
		header                   http.Header
		want                     string
	}{
		{"union of matching routes", "", "DELETE", "/m", nil, "GET, HEAD, POST"},
		{"header-gated route counts when headers match", "", "DELETE", "/m", http.Header{"X-A": {"1"}}, "GET, HEAD, POST, PUT"},
		{"wildcard host group counts", "a.example.com", "DELETE", "/m/1", nil, "GET, PATCH, POST"},
		{"other host does not count", "", "DELETE", "/m/1", nil, "GET, POST"},
		{"regex", "", "GET", "/re/x", nil, "DELETE"},
		{"no path match", "", "GET", "/nothing", nil, ""},
		{"method would have matched", "", "GET", "/m", nil, ""},
		{"route without methods", "", "DELETE", "/any", nil, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := httptest.NewRequest(tt.method, "http://x"+tt.path, nil)
			r.Host = tt.host
			r.Header = tt.header
			if got := tbl.Allow(r); got != tt.want {
				t.Errorf("Allow = %q, want %q", got, tt.want)
			}
			if tt.want != "" {
				if v, _, ok := tbl.Lookup(r); ok {
					t.Errorf("Lookup matched %q although Allow says 405", v)
				}
			}
		})
	}
}

func TestLookupDoesNotAllocate(t *testing.T) {
	tbl := build(t, []rt{
		{name: "exact", methods: []string{"GET"}, paths: paths(exact("/a/b"))},
		{name: "tmpl", paths: paths(tmpl("/u/{id}/o/{oid}"))},
		{name: "catch", paths: paths(tmpl("/f/{p...}"))},
		{name: "prefix", paths: paths(prefix("/p/"))},
		{name: "regex", paths: paths(regex("/r/[a-z]+"))},
		{name: "host", hosts: []string{"*.example.com"}, paths: paths(prefix("/h"))},
	})
	h := http.Header{"User-Agent": {"test"}}
	for _, q := range []struct{ host, path string }{
		{"", "/a/b"}, {"", "/u/1/o/2"}, {"", "/f/x/y"}, {"", "/p/q"}, {"", "/r/abc"},
		{"Upper.Example.COM:8443", "/h"}, {"", "/miss"},
	} {
		allocs := testing.AllocsPerRun(100, func() {
			_, params, _ := tbl.Find(q.host, "GET", q.path, h)
			params.Each(func(string, string) {})
		})
		if allocs != 0 {
			t.Errorf("Find(%q, %q): %v allocs, want 0", q.host, q.path, allocs)
		}
	}
}
