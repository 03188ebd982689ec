package printer

import (
	"fmt"
	"io"
	"strings"
	"unicode/utf8"
)

// Text makes server-supplied s safe to show on a terminal as one line:
// every control character (C0 including tab and newline, DEL, C1), every
// bidirectional-override character and every byte that is not UTF-8 is
// replaced by a visible escape such as \x1b or \u009b. A control plane,
// or a data plane whose NACK it relays, must not be able to move the
// cursor, recolour the screen or retitle the window of the operator.
func Text(s string) string {
	return escape(s, false)
}

// Lines is Text for multi-line output: newlines and tabs are kept, as
// they only move the cursor forward; everything else Text escapes is
// escaped.
func Lines(s string) string {
	return escape(s, true)
}

// escape does Text and Lines. The common case, nothing to escape, returns
// s itself.
func escape(s string, keepLayout bool) string {
	if !needsEscape(s, keepLayout) {
		return s
	}
	var b strings.Builder
	b.Grow(len(s) + 8)
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			fmt.Fprintf(&b, `\x%02x`, s[i])
		case unsafeRune(r, keepLayout) && r < 0x80:
			fmt.Fprintf(&b, `\x%02x`, r)
		case unsafeRune(r, keepLayout):
			fmt.Fprintf(&b, `\u%04x`, r)
		default:
			b.WriteString(s[i : i+size])
		}
		i += size
	}
	return b.String()
}

func needsEscape(s string, keepLayout bool) bool {
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		if (r == utf8.RuneError && size == 1) || unsafeRune(r, keepLayout) {
			return true
		}
		i += size
	}
	return false
}

// unsafeRune reports whether a terminal could act on r rather than show it.
func unsafeRune(r rune, keepLayout bool) bool {
	switch {
	case keepLayout && (r == '\n' || r == '\t'):
		return false
	case r < 0x20, r == 0x7f, r >= 0x80 && r <= 0x9f:
		return true
	case r >= 0x202a && r <= 0x202e, r >= 0x2066 && r <= 0x2069:
		// Bidi embeddings, overrides and isolates reorder what follows.
		return true
	}
	return false
}

// lineWriter passes what is written through Lines. Each Write is escaped
// on its own, so a writer must not split a character across two calls;
// the text callbacks of Print write whole strings.
type lineWriter struct{ w io.Writer }

func (lw lineWriter) Write(p []byte) (int, error) {
	s := string(p)
	if _, err := io.WriteString(lw.w, Lines(s)); err != nil {
		return 0, err
	}
	return len(p), nil
}
