package config

import (
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"google.golang.org/protobuf/reflect/protoreflect"
)

// The tests here hold the prose of the user documentation in step with the
// API, where reference_test.go holds the reference's tables:
//
//   - A backticked field path in the text (`spec.healthCheck.active.interval`,
//     `spec.match.paths[].template`, `spec.match.paths[1].template`,
//     `spec.headers.request.set[X-Gateway]`, `metadata.name`, also inside an
//     error message quoted in backticks) must be a field of a resource kind.
//     In a "## <Kind>" section of the reference it must be a field of that
//     kind, or of a kind the same paragraph (or table row) names, so "the
//     route's `spec.timeout`" may stand in the Upstream section; anywhere
//     else it may be a field of any kind.
//   - In the reference, a bare field name written in lowerCamelCase
//     (`hashOn`, `ejectionTime`) or with an index (`targets[0]`) must be the
//     tail of a field path of the section's kind (or of a kind the paragraph
//     names; any kind outside a kind's section).
//   - Nothing may be described as unfinished ("enforced in a later release",
//     "not enforced", "not yet implemented", ...) unless it names a field of
//     docUnenforced, the fields the data plane decodes but does not act on.
//   - A relative link must point at a file that exists.
//
// Fenced code blocks are not prose: examples are checked by decoding them
// (TestReferenceExamplesAreValid), and error messages in them quote input.

// docPages are the pages whose prose is checked, relative to this package:
// the README and every page under docs/.
func docPages(t *testing.T) []string {
	t.Helper()
	pages, err := filepath.Glob("../../docs/*.md")
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(pages, referenceDoc) {
		t.Fatalf("%s is not among the pages under docs/", referenceDoc)
	}
	return append([]string{"../../README.md"}, pages...)
}

// docUnenforced lists the fields, by documented path, that are decoded,
// validated and distributed but not acted on by the data plane yet; only
// text that names one of them may say so. Empty: every field is enforced.
var docUnenforced = map[string]bool{}

// docUnfinished matches wording that says something is not done.
var docUnfinished = regexp.MustCompile(`(?i)\b(` + strings.Join([]string{
	`(later|future|next|upcoming|coming) releases?`,
	`in a later version`,
	`not (yet )?(enforced|implemented|supported|wired|acted on)`,
	`(is|are) ignored for now`,
	`does not act on (it|them) yet`,
	`unimplemented`,
	`coming soon`,
	`planned`,
	`TODO`,
	`FIXME`,
	`TBD`,
}, "|") + `)\b`)

// docUnit is a paragraph, a list item or a table row of a page, the scope
// within which a field path may lean on a kind the text names.
type docUnit struct {
	page    string
	section string // the "## " heading it is under
	lines   []docLine
}

type docLine struct {
	n    int
	text string
}

// joined is the unit's text on one line: its lines trimmed and joined by
// single spaces.
func (u *docUnit) joined() string {
	parts := make([]string, len(u.lines))
	for i, l := range u.lines {
		parts[i] = strings.TrimSpace(l.text)
	}
	return strings.Join(parts, " ")
}

// lineAt returns the number of the line that byte off of joined() is on.
func (u *docUnit) lineAt(off int) int {
	for _, l := range u.lines {
		n := len(strings.TrimSpace(l.text)) + 1
		if off < n {
			return l.n
		}
		off -= n
	}
	return u.lines[len(u.lines)-1].n
}

func (u *docUnit) text() string {
	var b strings.Builder
	for _, l := range u.lines {
		b.WriteString(l.text)
		b.WriteByte('\n')
	}
	return b.String()
}

// readDocUnits splits a page into units of prose, leaving out fenced code
// blocks and headings.
func readDocUnits(t *testing.T, page string) []*docUnit {
	t.Helper()
	data, err := os.ReadFile(page)
	if err != nil {
		t.Fatalf("read %s: %v", page, err)
	}
	var (
		units   []*docUnit
		cur     *docUnit
		section string
		fence   string // the open fence's marker, "" outside a block
	)
	end := func() { cur = nil }
	for i, line := range strings.Split(string(data), "\n") {
		n := i + 1
		trimmed := strings.TrimSpace(line)
		if fence != "" {
			if strings.HasPrefix(trimmed, fence) && strings.Trim(trimmed, fence[:1]) == "" {
				fence = ""
			}
			continue
		}
		if strings.HasPrefix(trimmed, "```") || strings.HasPrefix(trimmed, "~~~") {
			fence = trimmed[:3]
			end()
			continue
		}
		if h, ok := strings.CutPrefix(line, "## "); ok {
			section = strings.TrimSpace(h)
			end()
			continue
		}
		if strings.HasPrefix(line, "#") || trimmed == "" {
			end()
			continue
		}
		item := strings.HasPrefix(trimmed, "|") || docListItem.MatchString(line)
		if cur == nil || item || strings.HasPrefix(cur.lines[0].text, "|") {
			cur = &docUnit{page: page, section: section}
			units = append(units, cur)
		}
		cur.lines = append(cur.lines, docLine{n, line})
	}
	return units
}

// docListItem matches the first line of a list item; a nested item starts
// a unit of its own too.
var docListItem = regexp.MustCompile(`^\s*([-*+]|[0-9]+\.) `)

// docCode matches a code span.
var docCode = regexp.MustCompile("`([^`]+)`")

// docKindNames matches a kind named in prose, in any case, with or without
// spaces between the words of its name ("route", "Routes", "upstream's",
// "rate limit", "JWT provider"), or by the short names of docKindAliases.
func docKindNames(kinds []string) map[string]*regexp.Regexp {
	out := map[string]*regexp.Regexp{}
	for _, k := range kinds {
		names := append([]string{strings.Join(docCamelWords(k), ` ?`)}, docKindAliases[k]...)
		out[k] = regexp.MustCompile(`(?i)\b(` + strings.Join(names, "|") + `)s?\b`)
	}
	return out
}

// docCamelWords splits a kind's name into words: RateLimit is Rate and
// Limit, JWTProvider is JWT and Provider.
func docCamelWords(name string) []string {
	var words []string
	start := 0
	for i := 1; i < len(name); i++ {
		upper := func(j int) bool { return name[j] >= 'A' && name[j] <= 'Z' }
		if upper(i) && (!upper(i-1) || i+1 < len(name) && !upper(i+1)) {
			words = append(words, name[start:i])
			start = i
		}
	}
	return append(words, name[start:])
}

// docKindAliases are the short names prose gives some kinds: "the
// provider's spec.tokenFrom", "the breaker's spec.window".
var docKindAliases = map[string][]string{
	KindJWTProvider:    {"provider"},
	KindCircuitBreaker: {"breaker"},
}

// docFieldPaths finds the absolute field paths in a code span: spec... or
// metadata... at a word boundary, with its dotted names and [index] or
// [key] parts. A bare "spec" or "metadata" is not a path worth checking.
func docFieldPaths(span string) []string {
	var out []string
	for i := 0; i < len(span); i++ {
		var root string
		switch {
		case strings.HasPrefix(span[i:], "spec."):
			root = "spec"
		case strings.HasPrefix(span[i:], "metadata."):
			root = "metadata"
		default:
			continue
		}
		if i > 0 && docPathByte(span[i-1]) {
			continue
		}
		j := i + len(root)
	scan:
		for j < len(span) {
			switch {
			case span[j] == '.' && j+1 < len(span) && docIdentStart(span[j+1]):
				j++
				for j < len(span) && docIdentByte(span[j]) {
					j++
				}
			case span[j] == '[':
				k := strings.IndexByte(span[j:], ']')
				if k < 0 {
					break scan
				}
				j += k + 1
			default:
				break scan
			}
		}
		if j < len(span) && docIdentByte(span[j]) {
			continue // specification, spec.x_y: not a path
		}
		out = append(out, span[i:j])
		i = j
	}
	return out
}

func docIdentStart(c byte) bool { return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' }

func docIdentByte(c byte) bool { return docIdentStart(c) || c >= '0' && c <= '9' || c == '_' }

func docPathByte(c byte) bool { return docIdentByte(c) || c == '.' || c == '-' || c == '/' }

// docAbsolute reports whether path starts at the top of a document, where
// docFieldPaths finds it.
func docAbsolute(path string) bool {
	return strings.HasPrefix(path, "spec.") || strings.HasPrefix(path, "metadata.")
}

// docRelativePath matches a code span that is a bare field name or the tail
// of a path, alone or followed by ": value" (`policy: consistent_hash`).
var docRelativePath = regexp.MustCompile(`^([a-z][A-Za-z0-9]*(?:\[[^\]\s]*\])?(?:\.[a-z][A-Za-z0-9]*(?:\[[^\]\s]*\])?)*)(?::(?:\s.*)?)?$`)

// docIndex matches an [index] or [key] part of a path.
var docIndex = regexp.MustCompile(`\[[^\]]*\]`)

// docKnown reports whether path, absolute or (with relative) a tail of a
// path, is a field in fields: indexes and keys are written "[]" there, and
// a path ending in an index needs a list or map field.
func docKnown(path string, relative bool, fields map[string]protoreflect.FieldDescriptor) bool {
	path = docIndex.ReplaceAllString(path, "[]")
	base, indexed := strings.CutSuffix(path, "[]")
	fits := func(fd protoreflect.FieldDescriptor) bool {
		return !indexed || fd != nil && (fd.IsList() || fd.IsMap())
	}
	if fd, ok := fields[base]; ok && fits(fd) {
		return true
	}
	if !relative {
		return false
	}
	for p, fd := range fields {
		if strings.HasSuffix(p, "."+base) && fits(fd) {
			return true
		}
	}
	return false
}

// TestDocsFieldPathsExist fails when the prose of the README or a page under
// docs/ mentions a field path that no resource kind has, when a kind's
// section of the reference mentions a field its kind lacks, or when a page
// says something is not done yet (see the top of this file).
func TestDocsFieldPathsExist(t *testing.T) {
	kinds := map[string]map[string]protoreflect.FieldDescriptor{}
	anyKind := map[string]protoreflect.FieldDescriptor{}
	for kind, md := range refKindMessages(t) {
		fields := map[string]protoreflect.FieldDescriptor{}
		refFieldPaths(md, "", nil, fields)
		kinds[kind] = fields
		maps.Copy(anyKind, fields)
	}
	// apiVersion and kind are fields of every document, decoded by Decode.
	for _, fields := range kinds {
		for path := range refDocumentFields {
			fields[path] = nil
		}
	}
	kindNames := docKindNames(slices.Sorted(maps.Keys(kinds)))
	for path := range docUnenforced {
		if anyKind[path] == nil {
			t.Errorf("docUnenforced lists %s, which is not a field of any kind", path)
		}
	}

	checked := 0
	for _, page := range docPages(t) {
		reference := page == referenceDoc
		for _, u := range readDocUnits(t, page) {
			text := u.text()
			// The kinds a path of this unit may belong to.
			var allowed []string
			if _, own := kinds[u.section]; reference && own {
				allowed = append(allowed, u.section)
				// Kinds named in the prose, not in code: `spec.upstream`
				// names no kind.
				prose := docCode.ReplaceAllString(text, " ")
				for k, re := range kindNames {
					if k != u.section && re.MatchString(prose) {
						allowed = append(allowed, k)
					}
				}
			} else {
				allowed = slices.Collect(maps.Keys(kinds))
			}
			slices.Sort(allowed)
			known := func(path string, relative bool) bool {
				for _, k := range allowed {
					if docKnown(path, relative, kinds[k]) {
						return true
					}
				}
				return false
			}
			where := "any kind"
			if len(allowed) < len(kinds) {
				where = strings.Join(allowed, " or ")
			}

			var mentioned []string // every absolute path in the unit
			for _, l := range u.lines {
				for _, m := range docCode.FindAllStringSubmatch(l.text, -1) {
					span := m[1]
					for _, path := range docFieldPaths(span) {
						checked++
						mentioned = append(mentioned, docIndex.ReplaceAllString(path, "[]"))
						if !known(path, false) {
							t.Errorf("%s:%d: `%s` is not a field of %s (renamed or removed?)", page, l.n, path, where)
						}
					}
					if !reference {
						continue
					}
					rel := docRelativePath.FindStringSubmatch(span)
					if rel != nil && !docAbsolute(rel[1]) && strings.ContainsAny(rel[1], "ABCDEFGHIJKLMNOPQRSTUVWXYZ[") {
						checked++
						if !known(rel[1], true) {
							t.Errorf("%s:%d: `%s` is not the name of a field of %s (renamed or removed?)", page, l.n, rel[1], where)
						}
					}
				}
			}
			// Wording may wrap, so it is looked for in the unit's text with
			// its lines joined by spaces.
			if docUnfinished.MatchString(u.joined()) && !slices.ContainsFunc(mentioned, func(p string) bool { return docUnenforced[strings.TrimSuffix(p, "[]")] }) {
				joined := u.joined()
				for _, loc := range docUnfinished.FindAllStringIndex(joined, -1) {
					t.Errorf("%s:%d: %q says something is not done, but no field it names is in docUnenforced (every field is enforced): say what the gateway does today",
						page, u.lineAt(loc[0]), joined[loc[0]:loc[1]])
				}
			}
		}
	}
	if checked == 0 {
		t.Fatal("no field paths found in the docs; is the scanner broken?")
	}
}

// docLink matches an inline Markdown link's target.
var docLink = regexp.MustCompile(`\]\(([^)\s]+)\)`)

// TestDocsLinksExist fails when the README or a page under docs/ links to
// a file of the repository that does not exist.
func TestDocsLinksExist(t *testing.T) {
	for _, page := range docPages(t) {
		for _, u := range readDocUnits(t, page) {
			for _, l := range u.lines {
				for _, m := range docLink.FindAllStringSubmatch(l.text, -1) {
					target, _, _ := strings.Cut(m[1], "#")
					if target == "" || strings.Contains(target, "://") || strings.HasPrefix(target, "mailto:") {
						continue
					}
					p := filepath.Join(filepath.Dir(page), filepath.FromSlash(target))
					if _, err := os.Stat(p); err != nil {
						t.Errorf("%s:%d: link to %s: %v", page, l.n, m[1], fmt.Errorf("no such file %s", filepath.ToSlash(p)))
					}
				}
			}
		}
	}
}
