package router

import (
	"errors"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/meridian-gw/meridian/proto/config"
	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

func exact(p string) *meridianv1.PathMatch {
	return &meridianv1.PathMatch{Kind: &meridianv1.PathMatch_Exact{Exact: p}}
}
func prefix(p string) *meridianv1.PathMatch {
	return &meridianv1.PathMatch{Kind: &meridianv1.PathMatch_Prefix{Prefix: p}}
}
func tmpl(p string) *meridianv1.PathMatch {
	return &meridianv1.PathMatch{Kind: &meridianv1.PathMatch_Template{Template: p}}
}
func regex(p string) *meridianv1.PathMatch {
	return &meridianv1.PathMatch{Kind: &meridianv1.PathMatch_Regex{Regex: p}}
}

type rt struct {
	name     string
	hosts    []string
	methods  []string
	paths    []*meridianv1.PathMatch
	headers  []*meridianv1.HeaderMatch
	priority int32
}

func build(t testing.TB, rts []rt) *Table[string] {
	t.Helper()
	entries := make([]Entry[string], len(rts))
	for i, r := range rts {
		entries[i] = Entry[string]{
			Name:     r.name,
			Priority: r.priority,
			Value:    r.name,
			Match:    &meridianv1.RouteMatch{Hosts: r.hosts, Methods: r.methods, Paths: r.paths, Headers: r.headers},
		}
	}
	tbl, err := New(entries)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return tbl
}

func TestLookup(t *testing.T) {
	tbl := build(t, []rt{
		{name: "root", paths: []*meridianv1.PathMatch{prefix("/")}},
		{name: "api", paths: []*meridianv1.PathMatch{prefix("/api")}},
		{name: "api-v1", paths: []*meridianv1.PathMatch{prefix("/api/v1/")}},
		{name: "api-exact", paths: []*meridianv1.PathMatch{exact("/api/v1/status")}},
		{name: "user", paths: []*meridianv1.PathMatch{tmpl("/api/v1/users/{id}")}},
		{name: "user-me", paths: []*meridianv1.PathMatch{tmpl("/api/v1/users/me")}},
		{name: "files", paths: []*meridianv1.PathMatch{tmpl("/files/{path...}")}},
		{name: "re", paths: []*meridianv1.PathMatch{regex(`/re/[0-9]+`)}},
		{name: "get-only", methods: []string{"GET", "HEAD"}, paths: []*meridianv1.PathMatch{exact("/m")}},
		{name: "post-only", methods: []string{"POST"}, paths: []*meridianv1.PathMatch{exact("/m")}},
		{name: "canary", paths: []*meridianv1.PathMatch{prefix("/c")}, headers: []*meridianv1.HeaderMatch{
			{Name: "x-canary", Kind: &meridianv1.HeaderMatch_Exact{Exact: "true"}},
		}},
		{name: "stable", paths: []*meridianv1.PathMatch{prefix("/c")}},
		{name: "has-token", paths: []*meridianv1.PathMatch{prefix("/t")}, headers: []*meridianv1.HeaderMatch{
			{Name: "X-Token", Kind: &meridianv1.HeaderMatch_Present{Present: true}},
		}},
		{name: "ua-regex", paths: []*meridianv1.PathMatch{prefix("/ua")}, headers: []*meridianv1.HeaderMatch{
			{Name: "User-Agent", Kind: &meridianv1.HeaderMatch_Regex{Regex: "curl/.*"}},
		}},
		{name: "low", priority: 1, paths: []*meridianv1.PathMatch{exact("/p")}},
		{name: "high", priority: 5, paths: []*meridianv1.PathMatch{exact("/p")}},
		{name: "host-exact", hosts: []string{"API.example.com"}, paths: []*meridianv1.PathMatch{prefix("/")}},
		{name: "host-wild", hosts: []string{"*.example.com"}, paths: []*meridianv1.PathMatch{prefix("/")}},
		{name: "host-wild-deep", hosts: []string{"*.eu.example.com"}, paths: []*meridianv1.PathMatch{prefix("/")}},
		{name: "host-exact-narrow", hosts: []string{"narrow.example.com"}, paths: []*meridianv1.PathMatch{prefix("/only")}},
	})

	tests := []struct {
		name   string
		host   string
		method string
		path   string
		header http.Header
		want   string // "" = no match
		params string
	}{
		{name: "root prefix", path: "/x", want: "root"},
		{name: "longest prefix", path: "/api/v1/other", want: "api-v1"},
		{name: "plain string prefix", path: "/apiary", want: "api"},
		{name: "exact beats template and prefix", path: "/api/v1/status", want: "api-exact"},
		{name: "template beats prefix", path: "/api/v1/users/42", want: "user", params: "id=42"},
		{name: "literal segment beats param", path: "/api/v1/users/me", want: "user-me"},
		{name: "template needs whole segments", path: "/api/v1/users/42/x", want: "api-v1"},
		{name: "catch-all", path: "/files/a/b/c.txt", want: "files", params: "path=a/b/c.txt"},
		{name: "catch-all empty rest", path: "/files/", want: "files", params: "path="},
		{name: "catch-all needs slash", path: "/files", want: "root"},
		{name: "prefix beats regex", path: "/re/123", want: "root"},
		{name: "method GET", method: "GET", path: "/m", want: "get-only"},
		{name: "method POST", method: "POST", path: "/m", want: "post-only"},
		{name: "method falls through", method: "DELETE", path: "/m", want: "root"},
		{name: "header exact", path: "/c", header: http.Header{"X-Canary": {"true"}}, want: "canary"},
		{name: "header exact mismatch", path: "/c", header: http.Header{"X-Canary": {"false"}}, want: "stable"},
		{name: "header absent", path: "/c", want: "stable"},
		{name: "header present", path: "/t", header: http.Header{"X-Token": {""}}, want: "has-token"},
		{name: "header missing", path: "/t", want: "root"},
		{name: "header regex", path: "/ua", header: http.Header{"User-Agent": {"curl/8.0"}}, want: "ua-regex"},
		{name: "header regex anchored", path: "/ua", header: http.Header{"User-Agent": {"xcurl/8.0"}}, want: "root"},
		{name: "priority", path: "/p", want: "high"},
		{name: "host exact case-insensitive with port", host: "Api.Example.COM:8443", path: "/", want: "host-exact"},
		{name: "host wildcard", host: "foo.example.com", path: "/", want: "host-wild"},
		{name: "host longest wildcard", host: "a.eu.example.com", path: "/", want: "host-wild-deep"},
		{name: "wildcard needs a label", host: "example.com", path: "/", want: "root"},
		{name: "exact host falls back to wildcard", host: "narrow.example.com", path: "/else", want: "host-wild"},
		{name: "exact host", host: "narrow.example.com", path: "/only", want: "host-exact-narrow"},
		{name: "trailing dot", host: "api.example.com.", path: "/", want: "host-exact"},
		{name: "other host", host: "other.test", path: "/api", want: "api"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			method := tt.method
			if method == "" {
				method = "GET"
			}
			got, params, ok := tbl.Find(tt.host, method, tt.path, tt.header)
			if tt.want == "" {
				if ok {
					t.Fatalf("got %q, want no match", got)
				}
				return
			}
			if !ok || got != tt.want {
				t.Fatalf("got %q (ok=%v), want %q", got, ok, tt.want)
			}
			var ps []string
			params.Each(func(k, v string) { ps = append(ps, k+"="+v) })
			if g := strings.Join(ps, ","); g != tt.params {
				t.Errorf("params = %q, want %q", g, tt.params)
			}
		})
	}
}

func TestNoMatch(t *testing.T) {
	tbl := build(t, []rt{
		{name: "a", hosts: []string{"a.test"}, paths: []*meridianv1.PathMatch{prefix("/")}},
		{name: "b", paths: []*meridianv1.PathMatch{exact("/b")}},
	})
	for _, q := range []struct{ host, path string }{{"b.test", "/"}, {"", "/bb"}, {"a.test.evil", "/"}} {
		if got, _, ok := tbl.Find(q.host, "GET", q.path, nil); ok {
			t.Errorf("Find(%q, %q) = %q, want no match", q.host, q.path, got)
		}
	}
}

func TestNewErrors(t *testing.T) {
	tests := []struct {
		name string
		r    rt
		path string
	}{
		{"bad regex", rt{name: "r", paths: []*meridianv1.PathMatch{exact("/"), regex("(")}}, "spec.match.paths[1].regex"},
		{"partial segment", rt{name: "r", paths: []*meridianv1.PathMatch{tmpl("/a/{id}.json")}}, "spec.match.paths[0].template"},
		{"catch-all not last", rt{name: "r", paths: []*meridianv1.PathMatch{tmpl("/a/{p...}/b")}}, "spec.match.paths[0].template"},
		{"duplicate param", rt{name: "r", paths: []*meridianv1.PathMatch{tmpl("/{a}/{a}")}}, "spec.match.paths[0].template"},
		{"relative path", rt{name: "r", paths: []*meridianv1.PathMatch{prefix("api")}}, "spec.match.paths[0]"},
		{"bad wildcard", rt{name: "r", hosts: []string{"*example.com"}, paths: []*meridianv1.PathMatch{prefix("/")}}, "spec.match.hosts[0]"},
		{"no paths", rt{name: "r"}, "spec.match.paths"},
		{"bad method", rt{name: "r", methods: []string{"GE T"}, paths: []*meridianv1.PathMatch{prefix("/")}}, "spec.match.methods[0]"},
		{"host with port", rt{name: "r", hosts: []string{"a.test:8080"}, paths: []*meridianv1.PathMatch{prefix("/")}}, "spec.match.hosts[0]"},
		{"bad host", rt{name: "r", hosts: []string{"a/b"}, paths: []*meridianv1.PathMatch{prefix("/")}}, "spec.match.hosts[0]"},
		{"missing kind", rt{name: "r", paths: []*meridianv1.PathMatch{{}}}, "spec.match.paths[0]"},
		{"bad header regex", rt{name: "r", paths: []*meridianv1.PathMatch{prefix("/")}, headers: []*meridianv1.HeaderMatch{
			{Name: "X", Kind: &meridianv1.HeaderMatch_Regex{Regex: "["}},
		}}, "spec.match.headers[0]"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := New([]Entry[string]{{Name: tt.r.name, Match: &meridianv1.RouteMatch{
				Hosts: tt.r.hosts, Methods: tt.r.methods, Paths: tt.r.paths, Headers: tt.r.headers,
			}}})
			var list config.ErrorList
			if !errors.As(err, &list) || len(list) == 0 {
				t.Fatalf("err = %v, want ErrorList", err)
			}
			if list[0].Path != tt.path || list[0].Kind != "Route" || list[0].Name != "r" {
				t.Errorf("error = %+v, want path %q on Route r", list[0], tt.path)
			}
		})
	}
}

func TestRegex(t *testing.T) {
	tbl := build(t, []rt{
		{name: "re", paths: []*meridianv1.PathMatch{regex(`/re/[0-9]+`)}},
		{name: "re-low", priority: -1, paths: []*meridianv1.PathMatch{regex(`/re/.*`)}},
	})
	tests := []struct{ path, want string }{
		{"/re/123", "re"},
		{"/re/123x", "re-low"},
		{"/x/re/1", ""},
	}
	for _, tt := range tests {
		got, _, ok := tbl.Find("", "GET", tt.path, nil)
		if got != tt.want || ok != (tt.want != "") {
			t.Errorf("Find(%q) = %q, %v; want %q", tt.path, got, ok, tt.want)
		}
	}
}

func TestDeterministicTieBreak(t *testing.T) {
	// Same path, same priority: the name decides, whatever the input order.
	a := rt{name: "a", paths: []*meridianv1.PathMatch{prefix("/x")}}
	b := rt{name: "b", paths: []*meridianv1.PathMatch{prefix("/x")}}
	for _, order := range [][]rt{{a, b}, {b, a}} {
		got, _, _ := build(t, order).Find("", "GET", "/x", nil)
		if got != "a" {
			t.Errorf("got %q, want a", got)
		}
	}
}

// FuzzLookup checks that lookups never panic, that parameters are
// consistent, and that Allow agrees with Find: after a hit Allow is empty,
// and after a miss every method Allow lists would have hit.
func FuzzLookup(f *testing.F) {
	tbl := build(f, []rt{
		{name: "root", methods: []string{"GET"}, paths: paths(prefix("/"))},
		{name: "user", paths: paths(tmpl("/users/{id}/x/{rest...}"))},
		{name: "order", methods: []string{"PUT", "PATCH"}, paths: paths(tmpl("/users/{id}/orders/{orderId}"))},
		{name: "e", hosts: []string{"*.example.com"}, methods: []string{"DELETE"}, paths: paths(exact("/e"), regex("/r.*"))},
		{name: "h", methods: []string{"POST"}, paths: paths(prefix("/h")), headers: []*meridianv1.HeaderMatch{
			{Name: "X-A", Kind: &meridianv1.HeaderMatch_Regex{Regex: "a+"}},
		}},
	})
	f.Add("a.example.com:80", "GET", "/users/1/x/y/z", "aaa")
	f.Add("[::1]:80", "POST", "/h", "")
	f.Add("", "", "", "")
	f.Add("A.EXAMPLE.COM.", "GET", "//e", "\x00")
	f.Add("b.example.com", "POST", "/users/1/orders/2", "a")
	f.Fuzz(func(t *testing.T, host, method, path, hv string) {
		h := http.Header{"X-A": {hv}}
		v, params, ok := tbl.Find(host, method, path, h)
		if ok && v == "" {
			t.Fatal("match with empty value")
		}
		n := 0
		params.Each(func(name, value string) {
			n++
			if g, ok := params.Get(name); !ok || g != value || !strings.Contains(path, value) {
				t.Fatalf("param %s=%q, Get = %q, %v; path %q", name, value, g, ok, path)
			}
		})
		if n != params.Len() {
			t.Fatalf("Each gave %d params, Len %d", n, params.Len())
		}
		r := &http.Request{Host: host, Method: method, URL: &url.URL{Path: path}, Header: h}
		allow := tbl.Allow(r)
		if ok {
			if allow != "" {
				t.Fatalf("Find hit %q but Allow = %q", v, allow)
			}
			return
		}
		if allow == "" {
			return
		}
		for _, m := range strings.Split(allow, ", ") {
			if _, _, ok := tbl.Find(host, m, path, h); !ok {
				t.Fatalf("Allow = %q but %s %q does not match", allow, m, path)
			}
		}
	})
}
