package router

import (
	"bytes"
	"strings"
)

// CleanPath normalises an escaped URL path (r.URL.EscapedPath(), not the
// decoded r.URL.Path) before routing, and is the path to send upstream:
//
//   - "." and ".." segments are resolved as in RFC 3986 section 5.2.4, with
//     a percent-encoded dot ("%2e", "%2E") counted as a dot, since servers
//     that decode before resolving would otherwise see a ".." the router
//     did not; ".." never climbs above the root;
//   - empty segments ("//") are dropped;
//   - a trailing slash is kept, and one is added where the last segment
//     was "." or ".." ("/a/b/.." is "/a/");
//   - every other segment is copied byte for byte: nothing is decoded, so
//     "%2F" stays inside its segment and never becomes a separator.
//
// The result always starts with "/": a path that does not is treated as if
// it did, so callers that must reject other request targets ("*",
// authority form) do so first. CleanPath is idempotent and does not
// allocate when p is already clean.
//
// After cleaning the escaped path, the decoded path is
// url.PathUnescape(CleanPath(escaped)). It may still hold dot segments or
// "//" that came from "%2F"; an upstream that decodes "%2F" into "/" would
// resolve them, so a caller that does not trust every upstream to keep
// "%2F" opaque can reject such a request (CleanPath(decoded) != decoded).
func CleanPath(p string) string {
	if isClean(p) {
		return p
	}
	return clean(p)
}

// isClean reports whether p starts with "/" and has no empty segment but a
// final one (a trailing slash), and no dot segment. Only a segment that
// starts with '.' or '%' can be a dot segment, so most are skipped unread.
func isClean(p string) bool {
	if p == "" || p[0] != '/' {
		return false
	}
	for i := 0; i < len(p)-1; i++ {
		if p[i] != '/' {
			continue
		}
		switch p[i+1] {
		case '/':
			return false
		case '.', '%':
			seg := p[i+1:]
			if j := slash(seg); j >= 0 {
				seg = seg[:j]
			}
			if dots(seg) > 0 {
				return false
			}
		}
	}
	return true
}

// dots returns 1 for a "." segment, 2 for a ".." segment (either possibly
// written with "%2e"), and 0 otherwise.
func dots(seg string) int {
	n := 0
	for i := 0; i < len(seg); {
		switch {
		case seg[i] == '.':
			i++
		case seg[i] == '%' && i+2 < len(seg) && seg[i+1] == '2' && (seg[i+2]|0x20) == 'e':
			i += 3
		default:
			return 0
		}
		n++
		if n > 2 {
			return 0
		}
	}
	return n
}

func clean(p string) string {
	// out always ends with '/' while segments are added.
	out := make([]byte, 1, len(p)+1)
	out[0] = '/'
	rest := strings.TrimPrefix(p, "/")
	dirEnd := true // the output should end with '/'
	for {
		seg, after, more := strings.Cut(rest, "/")
		switch dots(seg) {
		case 1:
			dirEnd = true
		case 2:
			if len(out) > 1 {
				out = out[:bytes.LastIndexByte(out[:len(out)-1], '/')+1]
			}
			dirEnd = true
		default:
			if seg != "" {
				out = append(out, seg...)
				out = append(out, '/')
				dirEnd = false
			} else {
				dirEnd = true
			}
		}
		if !more {
			break
		}
		rest = after
	}
	if !dirEnd && len(out) > 1 {
		out = out[:len(out)-1]
	}
	return string(out)
}
