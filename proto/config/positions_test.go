package config

import (
	"errors"
	"fmt"
	"strings"
	"testing"
)

// TestErrorPositions holds errors to the line of the fault, in the first
// document and in later ones, for syntax errors (which the YAML parser
// places at the start of the construct around the fault, or the line before
// it) and for schema errors.
func TestErrorPositions(t *testing.T) {
	const up = "apiVersion: meridian/v1\nkind: Upstream\nmetadata: {name: u}\nspec:\n  targets: [{address: 'a:1'}]\n"
	const route = "apiVersion: meridian/v1\nkind: Route\nmetadata:\n  name: r\nspec:\n  upstream: u\n"
	tests := []struct {
		name string
		in   string
		line int
		doc  int
		msg  string // a part of the message
	}{
		{"first document: indentation", "apiVersion: meridian/v1\nkind: Upstream\nmetadata:\n  name: u\n labels: {}\nspec: {}\n",
			5, 1, "did not find expected key"},
		{"first document: nested indentation", up + "  scheme: http\n   tls: {}\n", 7, 1, "mapping values are not allowed"},
		{"first document: unclosed flow", up + "  connectionPool: {maxIdle: 1\n  scheme: http\n", 6, 1, "did not find expected"},
		{"first document: bad token", up + "  scheme: @http\n", 6, 1, "cannot start any token"},
		{"first document: tab", up + "\tscheme: http\n", 6, 1, "cannot start any token"},
		{"first document: a value and a key on one line", "apiVersion: meridian/v1\nkind: Upstream\nmetadata: {name: u}\nspec: a: b\n",
			4, 1, "mapping values are not allowed"},
		{"second document: indentation", up + "---\n" + route + "  timeout: 5s\n   retry: {}\n", 14, 2, "mapping values are not allowed"},
		{"second document: top-level indentation", up + "---\napiVersion: meridian/v1\nkind: Route\nmetadata: {name: r}\n spec: {}\n",
			10, 2, "did not find expected key"},
		{"second document: list in a mapping", up + "---\n" + route + "  - /a\n", 13, 2, "did not find expected key"},
		{"third document: bad token", up + "---\n" + up + "---\n" + route + "  timeout: `5s`\n", 19, 3, "cannot start any token"},
		{"second document: unterminated quote", up + "---\n" + route + "  timeout: \"5s\n", 13, 2, "unexpected end of stream"},
		{"schema error in the first document", up + "  shceme: http\n", 6, 1, "unknown field"},
		{"schema error in the second document", up + "---\n" + route + "  timeout: 5\n", 13, 2, "expected a duration"},
		{"schema error in the third document", up + "---\n" + route + "---\n" + route + "  retry: {attempts: x}\n", 20, 3, "expected a non-negative integer"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Decode("f.yaml", []byte(tt.in))
			var list ErrorList
			if !errors.As(err, &list) {
				t.Fatalf("want an ErrorList, got %v", err)
			}
			e := list[0]
			if e.Pos.Line != tt.line || e.Pos.Doc != tt.doc || !strings.Contains(e.Msg, tt.msg) {
				t.Errorf("got line %d, document %d: %s\nwant line %d, document %d, a message with %q\ninput:\n%s",
					e.Pos.Line, e.Pos.Doc, e, tt.line, tt.doc, tt.msg, numbered(tt.in))
			}
		})
	}
}

// numbered prefixes each line of s with its number, for failure messages.
func numbered(s string) string {
	var b strings.Builder
	for i, l := range strings.Split(strings.TrimSuffix(s, "\n"), "\n") {
		fmt.Fprintf(&b, "%3d  %s\n", i+1, l)
	}
	return b.String()
}
