package proxy

import (
	"net/http"
	"strings"
	"testing"
)

func TestPseudonym(t *testing.T) {
	for in, want := range map[string]string{
		"":                      "meridian",
		"dp-1.eu.example.com":   "dp-1.eu.example.com",
		"node a/b(c),d":         "node-a-b-c--d",
		strings.Repeat("x", 80): strings.Repeat("x", maxNodeIDLen),
	} {
		if got := pseudonym(in); got != want {
			t.Errorf("pseudonym(%q) = %q, want %q", in, got, want)
		}
	}
	h := NewHop("node a")
	if !strings.HasPrefix(h.Name(), "node-a-") || len(h.Name()) != len("node-a-")+16 {
		t.Errorf("Name() = %q, want node-a-<16 hex>", h.Name())
	}
	for _, e := range [][]string{h.v10, h.v11, h.v2} {
		if len(e) != 1 || cap(e) != 1 {
			t.Errorf("entry %q: len %d cap %d, want 1 and 1 so appends copy", e, len(e), cap(e))
		}
	}
	r := &http.Request{ProtoMajor: 1, ProtoMinor: 0}
	if got := h.entry(r)[0]; got != "1.0 "+h.Name() {
		t.Errorf("HTTP/1.0 entry %q", got)
	}
}

func TestRefuse(t *testing.T) {
	h := &Hop{name: "me-0011223344556677"}
	tests := []struct {
		vals []string
		want string
	}{
		{nil, ""},
		{[]string{""}, ""},
		{[]string{"1.1 a, , 1.1 b,"}, ""},
		{[]string{"1.1 me-0011223344556677"}, errLoopDetected},
		{[]string{"HTTP/1.1 me-0011223344556677"}, errLoopDetected},
		{[]string{"1.0 a (x, y), 1.1\tme-0011223344556677\t(comment)"}, errLoopDetected},
		{[]string{"1.1 a (me-0011223344556677)"}, ""},
		{[]string{`1.1 a (nested (me-0011223344556677, \) x) y), 1.1 b`}, ""},
		{[]string{"1.1 me-0011223344556677x", "1.1 xme-0011223344556677"}, ""},
		{[]string{strings.Repeat("1.1 p, ", MaxHops)}, ""},
		{[]string{strings.Repeat("1.1 p, ", MaxHops), "1.1 q"}, errTooManyHops},
		{[]string{strings.Repeat("1.1, ", MaxHops+1)}, errTooManyHops}, // received-by missing: still hops
	}
	for _, tc := range tests {
		got, body := h.refuse(tc.vals)
		if got != tc.want || (got == "") != (body == nil) {
			t.Errorf("refuse(%q) = %q, %q; want %q", tc.vals, got, body, tc.want)
		}
	}
	vals := []string{"1.0 cdn, 1.1 lb (nginx)", "2 edge"}
	if n := testing.AllocsPerRun(100, func() { h.refuse(vals) }); n != 0 {
		t.Errorf("refuse allocates %v times", n)
	}
}

// The lean path adds Via without allocating when the client sent none or
// one line.
func TestAppendViaAllocs(t *testing.T) {
	rt := &Route{hop: NewHop("n")}
	in := &http.Request{ProtoMajor: 1, ProtoMinor: 1}
	h := make(http.Header, 4)
	var spare [2]string
	for _, prior := range [][]string{nil, {"1.0 cdn"}} {
		if n := testing.AllocsPerRun(100, func() { rt.appendVia(h, in, prior, &spare) }); n != 0 {
			t.Errorf("%d prior lines: %v allocations", len(prior), n)
		}
		if got := h[headerVia]; len(got) != len(prior)+1 || got[len(got)-1] != "1.1 "+rt.hop.Name() {
			t.Errorf("Via = %q", got)
		}
	}
	prior := []string{"1.0 a", "1.1 b"}
	rt.appendVia(h, in, prior, &spare)
	if got := h[headerVia]; len(got) != 3 || prior[1] != "1.1 b" {
		t.Errorf("Via = %q, prior %q", got, prior)
	}
}
