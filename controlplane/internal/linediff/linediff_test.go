package linediff

import (
	"fmt"
	"strings"
	"testing"
)

func TestUnified(t *testing.T) {
	tests := []struct {
		name     string
		old, new string
		want     string
	}{
		{name: "equal", old: "a\nb\n", new: "a\nb\n", want: ""},
		{
			name: "create",
			old:  "",
			new:  "a\nb\n",
			want: "--- old\n+++ new\n@@ -0,0 +1,2 @@\n+a\n+b\n",
		},
		{
			name: "delete",
			old:  "a\n",
			new:  "",
			want: "--- old\n+++ new\n@@ -1 +0,0 @@\n-a\n",
		},
		{
			name: "change in the middle",
			old:  "1\n2\n3\n4\n5\n6\n7\n8\n9\n",
			new:  "1\n2\n3\n4\nfive\n6\n7\n8\n9\n",
			want: "--- old\n+++ new\n@@ -2,7 +2,7 @@\n 2\n 3\n 4\n-5\n+five\n 6\n 7\n 8\n",
		},
		{
			name: "insertion",
			old:  "a\nc\n",
			new:  "a\nb\nc\n",
			want: "--- old\n+++ new\n@@ -1,2 +1,3 @@\n a\n+b\n c\n",
		},
		{
			name: "missing final newline",
			old:  "a",
			new:  "b",
			want: "--- old\n+++ new\n@@ -1 +1 @@\n-a\n\\ No newline at end of file\n+b\n\\ No newline at end of file\n",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Unified("old", "new", tt.old, tt.new); got != tt.want {
				t.Errorf("Unified =\n%s\nwant\n%s", got, tt.want)
			}
		})
	}
}

func TestUnifiedSeparateHunks(t *testing.T) {
	var a, b []string
	for i := range 30 {
		a = append(a, fmt.Sprint(i))
		b = append(b, fmt.Sprint(i))
	}
	b[2], b[25] = "x", "y"
	got := Unified("o", "n", strings.Join(a, "\n")+"\n", strings.Join(b, "\n")+"\n")
	if n := strings.Count(got, "@@ -"); n != 2 {
		t.Fatalf("got %d hunks, want 2:\n%s", n, got)
	}
	for _, want := range []string{"@@ -1,6 +1,6 @@", "@@ -23,7 +23,7 @@", "-25\n+y\n"} {
		if !strings.Contains(got, want) {
			t.Errorf("diff lacks %q:\n%s", want, got)
		}
	}
}

// TestUnifiedReconstructs checks that applying the diff's lines recovers
// both texts, for a spread of edits.
func TestUnifiedReconstructs(t *testing.T) {
	texts := []string{"", "a\n", "a\nb\nc\n", "b\nc\nd\n", "x\na\ny\nb\nz\nc\n", "c\nb\na\n"}
	for _, old := range texts {
		for _, new := range texts {
			ops := diff(splitLines(old), splitLines(new))
			var gotOld, gotNew strings.Builder
			for _, o := range ops {
				if o.kind != add {
					gotOld.WriteString(o.text)
				}
				if o.kind != del {
					gotNew.WriteString(o.text)
				}
			}
			if gotOld.String() != old || gotNew.String() != new {
				t.Errorf("diff(%q, %q) rebuilds (%q, %q)", old, new, gotOld.String(), gotNew.String())
			}
		}
	}
}

func TestUnifiedLargeInputFallsBack(t *testing.T) {
	var a, b strings.Builder
	for i := range 3000 {
		fmt.Fprintf(&a, "a%d\n", i)
		fmt.Fprintf(&b, "b%d\n", i)
	}
	got := Unified("o", "n", a.String(), b.String())
	if !strings.HasPrefix(got, "--- o\n+++ n\n@@ -1,3000 +1,3000 @@\n") {
		t.Fatalf("unexpected header: %.80q", got)
	}
}
