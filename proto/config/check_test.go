package config

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"
)

// TestCheckReportsEverythingAtOnce: decode errors of every file and the
// validation errors of every document, the partly decoded ones included,
// come back in one list, ordered by file and line, without a second error
// for a field that did not decode.
func TestCheckReportsEverythingAtOnce(t *testing.T) {
	dir := t.TempDir()
	files := map[string]string{
		// A bad enum and an integer timeout (decode errors) beside a
		// broken template (a validation error) in the same document.
		"a.yaml": "apiVersion: meridian/v1\nkind: Upstream\nmetadata: {name: u}\nspec:\n  targets: [{address: 'a:1'}]\n  scheme: HTTP\n" +
			"---\napiVersion: meridian/v1\nkind: Route\nmetadata: {name: r}\nspec:\n  upstream: u\n  timeout: 5\n  match: {paths: [{template: '/users/{id'}]}\n",
		// Only validation errors.
		"b.yaml": "apiVersion: meridian/v1\nkind: Upstream\nmetadata: {name: empty}\nspec: {}\n",
		// A syntax error: nothing of it decodes.
		"c.yaml": "apiVersion: meridian/v1\nkind: Upstream\n metadata: {}\n",
		// A field of the wrong type must not also be reported as missing.
		"d.yaml": "apiVersion: meridian/v1\nkind: Route\nmetadata: {name: d}\nspec:\n  upstream: [u]\n  match: {paths: [{prefix: /d}]}\n",
	}
	for name, body := range files {
		write(t, filepath.Join(dir, name), body)
	}
	docs, err := Load(dir)
	decodeErrs, _ := err.(ErrorList)
	got := Check(docs, decodeErrs, Options{})
	want := []string{
		`a.yaml:6: Upstream "u": spec.scheme: unknown value "HTTP" (want one of http, https, h2c)`,
		`a.yaml:13: Route "r": spec.timeout: expected a duration such as "250ms" or "5s", got an integer 5`,
		`a.yaml:14: Route "r": spec.match.paths[0].template: `,
		`b.yaml:4: Upstream "empty": spec.targets: at least one target is required`,
		`c.yaml:3: document 1: invalid YAML: `,
		`d.yaml:5: Route "d": spec.upstream: expected a string, got a list`,
	}
	if len(got) != len(want) {
		t.Fatalf("got %d problems, want %d:\n%v", len(got), len(want), got)
	}
	for i, e := range got {
		if line := strings.TrimPrefix(e.Error(), dir+"/"); !strings.HasPrefix(line, want[i]) {
			t.Errorf("problem %d\n got: %s\nwant: %s...", i, line, want[i])
		}
	}
}

func TestCheckPartial(t *testing.T) {
	const route = "apiVersion: meridian/v1\nkind: Route\nmetadata: {name: x}\nspec:\n  upstream: demo\n  match: {paths: [{prefix: /}]}\n"
	docs, err := Decode("route.yaml", []byte(route))
	if err != nil {
		t.Fatal(err)
	}
	if got := Check(docs, nil, Options{Partial: true}); len(got) != 0 {
		t.Errorf("a partial configuration's references are the control plane's to check; got %v", got)
	}
	got := Check(docs, nil, Options{Where: "in this apply or the stored configuration (version 3)"})
	want := `route.yaml:5: Route "x": spec.upstream: Upstream "demo" does not exist in this apply or the stored configuration (version 3)`
	if len(got) != 1 || got[0].Error() != want {
		t.Errorf("got %v\nwant %s", got, want)
	}
}

func TestErrorListCap(t *testing.T) {
	for _, n := range []int{0, 1, MaxReported, MaxReported + 1, MaxReported + 7} {
		var l ErrorList
		for i := range n {
			l = append(l, &FieldError{Msg: fmt.Sprint("problem ", i)})
		}
		lines := l.Lines(MaxReported)
		wantLines, last := n, fmt.Sprint("problem ", n-1)
		switch {
		case n == MaxReported+1:
			wantLines, last = MaxReported+1, "and 1 more problem"
		case n > MaxReported:
			wantLines, last = MaxReported+1, fmt.Sprintf("and %d more problems", n-MaxReported)
		}
		if len(lines) != wantLines || (n > 0 && lines[len(lines)-1] != last) {
			t.Errorf("%d problems: %d lines ending %q, want %d ending %q", n, len(lines), lines[len(lines)-1:], wantLines, last)
		}
		if n > 0 && strings.Count(l.Error(), "\n") != wantLines-1 {
			t.Errorf("%d problems: Error() has %d lines, want %d", n, strings.Count(l.Error(), "\n")+1, wantLines)
		}
	}
}
