package router

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"

	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

// manyRoutes builds n routes: a quarter each of exact, prefix, two-parameter
// template and catch-all paths, one in ten on its own host, all GET only.
func manyRoutes(n int) []Entry[int] {
	entries := make([]Entry[int], n)
	for i := range entries {
		var pm *meridianv1.PathMatch
		switch i % 4 {
		case 0:
			pm = exact(fmt.Sprintf("/svc%d/status", i))
		case 1:
			pm = prefix(fmt.Sprintf("/svc%d/", i))
		case 2:
			pm = tmpl(fmt.Sprintf("/svc%d/users/{id}/orders/{orderId}", i))
		case 3:
			pm = tmpl(fmt.Sprintf("/svc%d/files/{rest...}", i))
		}
		var hosts []string
		if i%10 == 0 {
			hosts = []string{fmt.Sprintf("h%d.example.com", i)}
		}
		entries[i] = Entry[int]{
			Name:  fmt.Sprintf("r%d", i),
			Value: i,
			Match: &meridianv1.RouteMatch{Hosts: hosts, Methods: []string{"GET"}, Paths: []*meridianv1.PathMatch{pm}},
		}
	}
	return entries
}

// routeNear returns the route index of kind (i%4) nearest below n/2 that
// names no host.
func routeNear(n, kind int) int {
	i := n/2 - (n/2)%4 + kind
	for i >= n/2 || i%10 == 0 {
		i -= 4
	}
	return i
}

func BenchmarkCompile(b *testing.B) {
	for _, n := range []int{1000, 10000} {
		entries := manyRoutes(n)
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := New(entries); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkLookup measures Lookup on a real *http.Request, as the gateway
// calls it, for tables of 10, 1,000 and 10,000 routes.
func BenchmarkLookup(b *testing.B) {
	for _, n := range []int{10, 1000, 10000} {
		tbl, err := New(manyRoutes(n))
		if err != nil {
			b.Fatal(err)
		}
		cases := []struct {
			name, host, path string
			want             int
		}{
			{"static", "gw.test", fmt.Sprintf("/svc%d/status", routeNear(n, 0)), routeNear(n, 0)},
			{"params2", "gw.test", fmt.Sprintf("/svc%d/users/42/orders/7", routeNear(n, 2)), routeNear(n, 2)},
			{"prefix", "gw.test", fmt.Sprintf("/svc%d/anything/here", routeNear(n, 1)), routeNear(n, 1)},
			{"catchall", "gw.test", fmt.Sprintf("/svc%d/files/a/b/c", routeNear(n, 3)), routeNear(n, 3)},
			{"host", "H0.Example.com:8443", "/svc0/status", 0},
			{"miss", "gw.test", "/nothing/here", -1},
		}
		for _, c := range cases {
			r := httptest.NewRequest(http.MethodGet, "http://x"+c.path, nil)
			r.Host = c.host
			r.Header.Set("User-Agent", "bench")
			if v, _, ok := tbl.Lookup(r); (c.want < 0 && ok) || (c.want >= 0 && v != c.want) {
				b.Fatalf("%s: Lookup = %d, %v; want %d", c.name, v, ok, c.want)
			}
			b.Run(fmt.Sprintf("%s/routes=%d", c.name, n), func(b *testing.B) {
				b.ReportAllocs()
				for b.Loop() {
					_, params, _ := tbl.Lookup(r)
					params.Each(func(string, string) {})
				}
			})
		}
	}
}

func BenchmarkCleanPath(b *testing.B) {
	for _, p := range []string{"/svc123/users/42/orders/7", "/svc123//users/./42/../42/orders/7"} {
		b.Run(p, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				CleanPath(p)
			}
		})
	}
}

// TestManyRoutes checks every route of a large table is found by a path
// made for it, which exercises the hashed child tables of wide trie nodes.
func TestManyRoutes(t *testing.T) {
	const n = 2000
	tbl, err := New(manyRoutes(n))
	if err != nil {
		t.Fatal(err)
	}
	for i := range n {
		host := "gw.test"
		if i%10 == 0 {
			host = fmt.Sprintf("H%d.example.com:443", i)
		}
		var path, params string
		switch i % 4 {
		case 0:
			path = fmt.Sprintf("/svc%d/status", i)
		case 1:
			path = fmt.Sprintf("/svc%d/x", i)
		case 2:
			path, params = fmt.Sprintf("/svc%d/users/u%d/orders/o%d", i, i, i), fmt.Sprintf("id=u%d orderId=o%d ", i, i)
		case 3:
			path, params = fmt.Sprintf("/svc%d/files/a/%d", i, i), fmt.Sprintf("rest=a/%d ", i)
		}
		v, p, ok := tbl.Find(host, "GET", path, nil)
		if !ok || v != i {
			t.Fatalf("Find(%q, %q) = %d, %v; want %d", host, path, v, ok, i)
		}
		var got string
		p.Each(func(k, v string) { got += k + "=" + v + " " })
		if got != params {
			t.Fatalf("Find(%q): params %q, want %q", path, got, params)
		}
		if _, _, ok := tbl.Find(host, "GET", fmt.Sprintf("/svc%dx/status", i), nil); ok {
			t.Fatalf("/svc%dx/status matched", i)
		}
	}
}
