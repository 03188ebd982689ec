package router

import (
	"net/url"
	"strings"
	"testing"
)

func TestCleanPath(t *testing.T) {
	tests := []struct{ in, want string }{
		{"/", "/"},
		{"", "/"},
		{"a/b", "/a/b"},
		{"/a/b", "/a/b"},
		{"/a/b/", "/a/b/"},
		{"//", "/"},
		{"///a//b///", "/a/b/"},
		{"/a/./b", "/a/b"},
		{"/a/b/.", "/a/b/"},
		{"/a/b/..", "/a/"},
		{"/a/b/../", "/a/"},
		{"/a/../../b", "/b"},
		{"/..", "/"},
		{"/../", "/"},
		{"/../../admin", "/admin"},
		{"/.", "/"},
		{"/admin/../public", "/public"},
		{"/public/../admin/x", "/admin/x"},
		{"/public/%2e%2e/admin", "/admin"},
		{"/public/%2E%2e/admin", "/admin"},
		{"/public/.%2E/admin", "/admin"},
		{"/public/%2e./admin", "/admin"},
		{"/a/%2e/b", "/a/b"},
		{"/a/%2e", "/a/"},
		// Not dot segments: copied byte for byte.
		{"/a/.../b", "/a/.../b"},
		{"/a/.b/..c/%2e%2e%2e/b", "/a/.b/..c/%2e%2e%2e/b"},
		{"/a/%2/b", "/a/%2/b"},
		{"/a/%2", "/a/%2"},
		{"/a/%", "/a/%"},
		{"/a/..;/b", "/a/..;/b"},
		// %2F is not a separator, before or after cleaning.
		{"/public%2F..%2Fadmin", "/public%2F..%2Fadmin"},
		{"/a/b%2F../c", "/a/b%2F../c"},
		{"/a/b%2f/../c", "/a/c"},
		{"/a%2F%2Fb//c", "/a%2F%2Fb/c"},
	}
	for _, tt := range tests {
		got := CleanPath(tt.in)
		if got != tt.want {
			t.Errorf("CleanPath(%q) = %q, want %q", tt.in, got, tt.want)
		}
		if again := CleanPath(got); again != got {
			t.Errorf("CleanPath(%q) = %q, not idempotent", got, again)
		}
	}
}

func TestCleanPathDoesNotAllocateWhenClean(t *testing.T) {
	for _, p := range []string{"/", "/a/b/c", "/svc123/users/42/orders/7", "/a/b/", "/.well-known/x", "/a/%2Fb/..c"} {
		if CleanPath(p) != p {
			t.Fatalf("%q is not clean", p)
		}
		if n := testing.AllocsPerRun(100, func() { CleanPath(p) }); n != 0 {
			t.Errorf("CleanPath(%q): %v allocs, want 0", p, n)
		}
	}
}

// refSegments is an independent, deliberately naive statement of what
// cleaning means: split the escaped path on '/', drop empty and "."
// segments, let ".." drop the previous one; a dot may be written "%2e".
func refSegments(p string) []string {
	var out []string
	for _, s := range strings.Split(p, "/") {
		switch strings.ReplaceAll(strings.ToLower(s), "%2e", ".") {
		case "", ".":
		case "..":
			if len(out) > 0 {
				out = out[:len(out)-1]
			}
		default:
			out = append(out, s)
		}
	}
	return out
}

// FuzzCleanPath checks these properties for any raw (escaped) path p:
//
//  1. CleanPath(p) starts with "/", is idempotent, and none of its
//     segments is empty (but a final one, a trailing slash) or a dot
//     segment in any spelling.
//  2. Its segments are exactly refSegments(p): segments are removed whole
//     or copied byte for byte, never split or joined, so a "%2F" is never
//     turned into a separator.
//  3. A normalised path never reaches a route its raw form could not: with
//     a restricted "/admin" + "/admin/" route and a public "/" route,
//     Find(CleanPath(p)) picks the restricted route if and only if the
//     first resolved segment of p is "admin". So
//     "/public/../admin/x" reaches it, "/admin/../public" does not, and no
//     "%2e%2e" or "//" spelling changes the answer.
//  4. The same holds for the decoded path the router is given in
//     production (url.PathUnescape of the cleaned path) towards an upstream
//     that decodes each segment but keeps "%2F" inside it: when the public
//     route is chosen, the first segment such an upstream sees is not
//     "admin".
func FuzzCleanPath(f *testing.F) {
	tbl := build(f, []rt{
		{name: "admin", paths: paths(exact("/admin"), prefix("/admin/"))},
		{name: "public", paths: paths(prefix("/"))},
	})
	for _, s := range []string{
		"/admin/../public", "/public/../admin/x", "/public/%2e%2e/admin/", "//admin//x", "/admin%2F..%2Fpublic",
		"/x%2F..%2Fadmin/", "/%61dmin/x", "/a/./b/../../admin", "/admin", "/admin/", "/.%2E/admin/.", "", "admin/x",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, p string) {
		c := CleanPath(p)
		// 1.
		if !strings.HasPrefix(c, "/") {
			t.Fatalf("CleanPath(%q) = %q does not start with /", p, c)
		}
		if again := CleanPath(c); again != c {
			t.Fatalf("CleanPath(%q) = %q but CleanPath(%q) = %q", p, c, c, again)
		}
		segs := strings.Split(c[1:], "/")
		for i, s := range segs {
			if (s == "" && i != len(segs)-1) || dots(s) != 0 {
				t.Fatalf("CleanPath(%q) = %q has segment %q", p, c, s)
			}
		}
		// 2.
		got := strings.Split(strings.TrimSuffix(c[1:], "/"), "/")
		if c == "/" {
			got = nil
		}
		want := refSegments(p)
		if strings.Join(got, "\x00") != strings.Join(want, "\x00") || len(got) != len(want) {
			t.Fatalf("CleanPath(%q) = %q, segments %q, want %q", p, c, got, want)
		}
		// 3.
		restricted := len(want) > 0 && want[0] == "admin"
		v, _, _ := tbl.Find("", "GET", c, nil)
		if (v == "admin") != restricted {
			t.Fatalf("raw %q cleaned %q routed to %q; resolved segments %q", p, c, v, want)
		}
		// 4.
		d, err := url.PathUnescape(c)
		if err != nil {
			return
		}
		v, _, _ = tbl.Find("", "GET", d, nil)
		if v == "public" && len(want) > 0 {
			if first, err := url.PathUnescape(want[0]); err == nil && first == "admin" {
				t.Fatalf("raw %q decoded %q routed to public, but an upstream sees first segment %q", p, d, first)
			}
		}
	})
}

// TestFuzzSeedsMeanSomething pins what the fuzz seeds route to, so the
// property in FuzzCleanPath is seen to say something about real attacks.
func TestFuzzSeedsMeanSomething(t *testing.T) {
	tbl := build(t, []rt{
		{name: "admin", paths: paths(exact("/admin"), prefix("/admin/"))},
		{name: "public", paths: paths(prefix("/"))},
	})
	for raw, want := range map[string]string{
		"/admin/../public":      "public",
		"/public/../admin/x":    "admin",
		"/public/%2e%2e/admin/": "admin",
		"//admin//x":            "admin",
		"/admin%2F..%2Fpublic":  "public",
	} {
		if got, _, _ := tbl.Find("", "GET", CleanPath(raw), nil); got != want {
			t.Errorf("%q → %q routes to %q, want %q", raw, CleanPath(raw), got, want)
		}
	}
}
