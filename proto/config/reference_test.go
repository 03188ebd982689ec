package config

import (
	"bufio"
	"maps"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	"google.golang.org/protobuf/reflect/protoreflect"

	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

// referenceDoc is the field reference that these tests hold in step with
// the protobuf API and this package's decoder.
const referenceDoc = "../../docs/configuration.md"

// refCommonSection heads the reference section of the fields every kind
// shares; each kind's own section is headed by its name.
const refCommonSection = "Fields of every kind"

// Convention of the reference, checked here:
//
//   - Every field has one table row whose first cell is its dotted path of
//     JSON names in backticks: `spec.healthCheck.active.interval`.
//   - The fields of list elements are written under the list with "[]":
//     `spec.match.paths[].template`. Map entries with message values would
//     be written the same way; today every map holds strings.
//   - A row lives in the "## <Kind>" section of its kind, or in the
//     "## Fields of every kind" section when all kinds share it (metadata,
//     spec, and the document-level apiVersion and kind).
//   - The second cell is the type, as refFieldType spells it.
//   - An enum field's row lists every word the decoder accepts, in
//     backticks.

// refDocumentFields are decoded by Decode itself rather than from a message.
var refDocumentFields = map[string]string{"apiVersion": "string", "kind": "string"}

// refRow is one table row of the reference that documents a field.
type refRow struct {
	line int
	path string
	typ  string
	text string // the whole row
}

var refRowPath = regexp.MustCompile("^`([A-Za-z][A-Za-z0-9.\\[\\]]*)`$")

// readReference returns the documented rows per section.
func readReference(t *testing.T) map[string]map[string]*refRow {
	t.Helper()
	f, err := os.Open(referenceDoc)
	if err != nil {
		t.Fatalf("open the field reference: %v", err)
	}
	defer f.Close()
	sections := map[string]map[string]*refRow{}
	section := ""
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		if h, ok := strings.CutPrefix(line, "## "); ok {
			section = strings.TrimSpace(h)
			continue
		}
		if !strings.HasPrefix(line, "|") {
			continue
		}
		cells := refSplitRow(line)
		if len(cells) < 2 {
			continue
		}
		m := refRowPath.FindStringSubmatch(cells[0])
		if m == nil {
			continue // header and separator rows
		}
		rows := sections[section]
		if rows == nil {
			rows = map[string]*refRow{}
			sections[section] = rows
		}
		if prev, dup := rows[m[1]]; dup {
			t.Errorf("%s:%d: %s is documented twice in section %q (first on line %d)", referenceDoc, n, m[1], section, prev.line)
			continue
		}
		rows[m[1]] = &refRow{line: n, path: m[1], typ: strings.Trim(cells[1], "` "), text: line}
	}
	if err := sc.Err(); err != nil {
		t.Fatalf("read the field reference: %v", err)
	}
	return sections
}

// refSplitRow splits a Markdown table row into trimmed cells, keeping escaped
// pipes ("\|") inside their cell.
func refSplitRow(line string) []string {
	line = strings.TrimSpace(line)
	line = strings.TrimPrefix(line, "|")
	line = strings.TrimSuffix(line, "|")
	var (
		cells []string
		cur   strings.Builder
	)
	for i := 0; i < len(line); i++ {
		switch {
		case line[i] == '\\' && i+1 < len(line) && line[i+1] == '|':
			cur.WriteByte('|')
			i++
		case line[i] == '|':
			cells = append(cells, strings.TrimSpace(cur.String()))
			cur.Reset()
		default:
			cur.WriteByte(line[i])
		}
	}
	return append(cells, strings.TrimSpace(cur.String()))
}

// refKindMessages returns every resource kind, named as Kind names it, with
// the descriptor of its message (the one holding metadata and spec).
func refKindMessages(t *testing.T) map[string]protoreflect.MessageDescriptor {
	t.Helper()
	res := (&meridianv1.Resource{}).ProtoReflect()
	od := res.Descriptor().Oneofs().ByName("kind")
	if od == nil {
		t.Fatal("meridian.v1.Resource has no oneof kind")
	}
	kinds := map[string]protoreflect.MessageDescriptor{}
	for i := range od.Fields().Len() {
		fd := od.Fields().Get(i)
		r := (&meridianv1.Resource{}).ProtoReflect()
		r.Set(fd, r.NewField(fd))
		kind := Kind(r.Interface().(*meridianv1.Resource))
		if kind == "" {
			t.Errorf("Resource.%s has no kind name in Kind()", fd.Name())
			continue
		}
		kinds[kind] = fd.Message()
	}
	if len(kinds) != len(Kinds()) {
		t.Errorf("Resource has %d kinds, Kinds() lists %d", len(kinds), len(Kinds()))
	}
	return kinds
}

// refFieldPaths adds every field reachable from md to out, keyed by its
// documented path.
func refFieldPaths(md protoreflect.MessageDescriptor, prefix string, stack []protoreflect.FullName, out map[string]protoreflect.FieldDescriptor) {
	if slices.Contains(stack, md.FullName()) {
		return // a recursive message is documented once, at its first level
	}
	stack = append(stack, md.FullName())
	fds := md.Fields()
	for i := range fds.Len() {
		fd := fds.Get(i)
		path := fd.JSONName()
		if prefix != "" {
			path = prefix + "." + path
		}
		out[path] = fd
		child, elem := fd.Message(), path
		switch {
		case fd.IsMap():
			child, elem = fd.MapValue().Message(), path+"[]"
		case fd.IsList():
			elem = path + "[]"
		}
		if child != nil && child.FullName() != durationName {
			refFieldPaths(child, elem, stack, out)
		}
	}
}

// refFieldType is how the reference spells a field's type.
func refFieldType(fd protoreflect.FieldDescriptor) string {
	switch {
	case fd.IsMap():
		return "map of " + refValueType(fd.MapKey()) + " to " + refValueType(fd.MapValue())
	case fd.IsList():
		return "list of " + refValueType(fd)
	}
	return refValueType(fd)
}

func refValueType(fd protoreflect.FieldDescriptor) string {
	switch {
	case fd.Message() != nil && fd.Message().FullName() == durationName:
		return "duration"
	case fd.Message() != nil:
		return "object"
	case fd.Enum() != nil:
		return "enum"
	}
	return fd.Kind().String()
}

// TestReferenceDocumentsEveryField fails when a field of any resource kind
// has no row in docs/configuration.md, when a row's type is wrong, when an
// enum row misses a word the decoder accepts, or when a row documents a
// field that does not exist.
func TestReferenceDocumentsEveryField(t *testing.T) {
	sections := readReference(t)
	common := sections[refCommonSection]
	if len(common) == 0 {
		t.Fatalf("%s: no section %q with field rows", referenceDoc, "## "+refCommonSection)
	}
	for kind, md := range refKindMessages(t) {
		t.Run(kind, func(t *testing.T) {
			rows := sections[kind]
			if len(rows) == 0 {
				t.Errorf("%s: no section %q with field rows", referenceDoc, "## "+kind)
			}
			fields := map[string]protoreflect.FieldDescriptor{}
			refFieldPaths(md, "", nil, fields)
			for _, path := range slices.Sorted(maps.Keys(fields)) {
				fd := fields[path]
				row := rows[path]
				if row == nil {
					row = common[path]
				}
				if row == nil {
					t.Errorf("%s: %s field %s (%s) is not documented: add a row starting with | `%s` | to section %q",
						referenceDoc, kind, path, fd.FullName(), path, "## "+kind)
					continue
				}
				if want := refFieldType(fd); row.typ != want {
					t.Errorf("%s:%d: %s has type %q, want %q", referenceDoc, row.line, path, row.typ, want)
				}
				if fd.Enum() != nil {
					for _, word := range enumWords(fd.Enum()) {
						if !strings.Contains(row.text, "`"+word+"`") {
							t.Errorf("%s:%d: %s does not list the value `%s`", referenceDoc, row.line, path, word)
						}
					}
				}
			}
			for _, row := range rows {
				if fields[row.path] == nil {
					t.Errorf("%s:%d: %s is not a field of %s (renamed or removed?)", referenceDoc, row.line, row.path, kind)
				}
			}
			for path, row := range common {
				if _, ok := refDocumentFields[path]; !ok && fields[path] == nil {
					t.Errorf("%s:%d: %s is in %q but is not a field of %s", referenceDoc, row.line, path, refCommonSection, kind)
				}
			}
		})
	}
	for path, typ := range refDocumentFields {
		row := common[path]
		switch {
		case row == nil:
			t.Errorf("%s: document field %s is not documented in %q", referenceDoc, path, refCommonSection)
		case row.typ != typ:
			t.Errorf("%s:%d: %s has type %q, want %q", referenceDoc, row.line, path, row.typ, typ)
		}
	}
}

// TestReferenceExamplesAreValid decodes every ```yaml block of the
// reference as one configuration: the examples must be accepted exactly as
// a user would copy them. Lines outside the blocks become blank, so error
// positions are lines of the reference itself.
func TestReferenceExamplesAreValid(t *testing.T) {
	data, err := os.ReadFile(referenceDoc)
	if err != nil {
		t.Fatalf("read the field reference: %v", err)
	}
	var (
		stream strings.Builder
		blocks int
		in     bool
	)
	for _, line := range strings.Split(string(data), "\n") {
		switch {
		case !in && strings.TrimSpace(line) == "```yaml":
			in = true
			blocks++
			stream.WriteString("---\n")
		case in && strings.TrimSpace(line) == "```":
			in = false
			stream.WriteString("\n")
		case in:
			stream.WriteString(line + "\n")
		default:
			stream.WriteString("\n")
		}
	}
	if blocks == 0 {
		t.Fatalf("%s has no ```yaml examples", referenceDoc)
	}
	docs, err := Decode(referenceDoc, []byte(stream.String()))
	if err != nil {
		t.Fatalf("the examples do not decode:\n%v", err)
	}
	if err := ValidateDocuments(docs); err != nil {
		t.Fatalf("the examples are not a valid configuration:\n%v", err)
	}
	kinds := map[string]bool{}
	for _, d := range docs {
		kinds[Kind(d.Resource)] = true
	}
	for _, k := range Kinds() {
		if !kinds[k] {
			t.Errorf("the examples have no %s", k)
		}
	}
}
