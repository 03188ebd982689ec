// Package linediff renders the difference between two texts as a unified
// diff, the form operators know from `diff -u` and `kubectl diff`.
package linediff

import (
	"fmt"
	"strings"
)

// context is how many unchanged lines surround each change.
const context = 3

// maxCells bounds the LCS table. Resources are small; beyond this the diff
// degrades to "remove everything, add everything", which is still correct.
const maxCells = 4 << 20

type opKind byte

const (
	keep opKind = ' '
	del  opKind = '-'
	add  opKind = '+'
)

type op struct {
	kind opKind
	// line index in the old text (for keep and del) or the new text (add).
	oldLine, newLine int
	text             string
}

// Unified returns a unified diff from oldText to newText with headers
// naming oldName and newName, or "" when the texts are equal. An empty
// text stands for a file that does not exist (a create or a delete).
func Unified(oldName, newName, oldText, newText string) string {
	if oldText == newText {
		return ""
	}
	a, b := splitLines(oldText), splitLines(newText)
	ops := diff(a, b)
	var out strings.Builder
	fmt.Fprintf(&out, "--- %s\n+++ %s\n", oldName, newName)
	for _, h := range hunks(ops) {
		writeHunk(&out, ops[h[0]:h[1]])
	}
	return out.String()
}

func splitLines(s string) []string {
	if s == "" {
		return nil
	}
	lines := strings.SplitAfter(s, "\n")
	if lines[len(lines)-1] == "" {
		lines = lines[:len(lines)-1]
	}
	return lines
}

// diff returns the edit script from a to b along a longest common
// subsequence, deletions before additions within a change.
func diff(a, b []string) []op {
	// Trim the common prefix and suffix: typical edits touch a few lines.
	pre := 0
	for pre < len(a) && pre < len(b) && a[pre] == b[pre] {
		pre++
	}
	suf := 0
	for suf < len(a)-pre && suf < len(b)-pre && a[len(a)-1-suf] == b[len(b)-1-suf] {
		suf++
	}
	var ops []op
	for i := range pre {
		ops = append(ops, op{keep, i, i, a[i]})
	}
	ops = append(ops, middle(a[pre:len(a)-suf], b[pre:len(b)-suf], pre)...)
	for k := suf; k > 0; k-- {
		i, j := len(a)-k, len(b)-k
		ops = append(ops, op{keep, i, j, a[i]})
	}
	return ops
}

// middle diffs a and b, whose first lines are line off of both texts.
func middle(a, b []string, off int) []op {
	n, m := len(a), len(b)
	var ops []op
	if n*m > maxCells {
		for i := range a {
			ops = append(ops, op{del, off + i, off, a[i]})
		}
		for j := range b {
			ops = append(ops, op{add, off + n, off + j, b[j]})
		}
		return ops
	}
	// lcs[i][j] is the LCS length of a[i:] and b[j:].
	lcs := make([][]int, n+1)
	for i := range lcs {
		lcs[i] = make([]int, m+1)
	}
	for i := n - 1; i >= 0; i-- {
		for j := m - 1; j >= 0; j-- {
			if a[i] == b[j] {
				lcs[i][j] = lcs[i+1][j+1] + 1
			} else {
				lcs[i][j] = max(lcs[i+1][j], lcs[i][j+1])
			}
		}
	}
	i, j := 0, 0
	for i < n || j < m {
		switch {
		case i < n && j < m && a[i] == b[j]:
			ops = append(ops, op{keep, off + i, off + j, a[i]})
			i++
			j++
		case j == m || (i < n && lcs[i+1][j] >= lcs[i][j+1]):
			ops = append(ops, op{del, off + i, off + j, a[i]})
			i++
		default:
			ops = append(ops, op{add, off + i, off + j, b[j]})
			j++
		}
	}
	return ops
}

// hunks returns [start, end) ranges of ops: each change with up to context
// unchanged lines around it, merging changes that are close.
func hunks(ops []op) [][2]int {
	var out [][2]int
	for i := 0; i < len(ops); i++ {
		if ops[i].kind == keep {
			continue
		}
		start := max(0, i-context)
		end := i
		// Extend while the next change is within 2*context unchanged lines.
		for end < len(ops) {
			if ops[end].kind != keep {
				end++
				continue
			}
			run := end
			for run < len(ops) && ops[run].kind == keep {
				run++
			}
			if run == len(ops) || run-end > 2*context {
				end = min(end+context, len(ops))
				break
			}
			end = run
		}
		if n := len(out); n > 0 && start <= out[n-1][1] {
			out[n-1][1] = end
		} else {
			out = append(out, [2]int{start, end})
		}
		i = end - 1
	}
	return out
}

func writeHunk(out *strings.Builder, ops []op) {
	oldStart, newStart := ops[0].oldLine, ops[0].newLine
	var oldCount, newCount int
	for _, o := range ops {
		switch o.kind {
		case keep:
			oldCount++
			newCount++
		case del:
			oldCount++
		case add:
			newCount++
		}
	}
	fmt.Fprintf(out, "@@ -%s +%s @@\n", span(oldStart, oldCount), span(newStart, newCount))
	for _, o := range ops {
		out.WriteByte(byte(o.kind))
		out.WriteString(o.text)
		if !strings.HasSuffix(o.text, "\n") {
			out.WriteString("\n\\ No newline at end of file\n")
		}
	}
}

// span renders a hunk range the way diff -u does: 1-based start, and for
// an empty range the line before it.
func span(start, count int) string {
	switch count {
	case 0:
		return fmt.Sprintf("%d,0", start)
	case 1:
		return fmt.Sprintf("%d", start+1)
	}
	return fmt.Sprintf("%d,%d", start+1, count)
}
