package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/durationpb"

	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

// maxDocumentBytes bounds one input stream so a hostile file cannot make the
// decoder allocate without limit.
const maxDocumentBytes = 16 << 20

// Document is one decoded YAML document: a resource and where its fields
// came from, so validation errors can name file and line.
type Document struct {
	Resource *meridianv1.Resource
	// Pos is the start of the document.
	Pos Position
	// fields maps a field path ("spec.match.paths[1].template") to where
	// its value starts.
	fields map[string]Position
	// failed holds the paths of the fields that did not decode, when the
	// document is only partly decoded.
	failed []string
}

// shadows reports whether a validation error at path is likely a
// consequence of a field that did not decode: the same field, one inside
// it, or one that holds it (other than the whole resource).
func (d *Document) shadows(path string) bool {
	for _, f := range d.failed {
		if path == f || within(path, f) || (path != "" && within(f, path)) {
			return true
		}
	}
	return false
}

// within reports whether path is a field inside parent: "a.b[1]" and
// "a.b.c" are within "a.b".
func within(path, parent string) bool {
	if parent == "" {
		return path != ""
	}
	rest, ok := strings.CutPrefix(path, parent)
	return ok && rest != "" && (rest[0] == '.' || rest[0] == '[')
}

// Position returns where the field at path (or, failing that, its nearest
// recorded parent) is in the source.
func (d *Document) Position(path string) Position {
	for p := path; p != ""; p = parentPath(p) {
		if pos, ok := d.fields[p]; ok {
			return pos
		}
	}
	return d.Pos
}

// parentPath drops the last element of a field path: "a.b[2]" → "a.b",
// "a.b" → "a".
func parentPath(p string) string {
	i := strings.LastIndexAny(p, ".[")
	if i < 0 {
		return ""
	}
	return p[:i]
}

// Decode parses one YAML stream of one or more documents. file is only used
// in error positions. On any problem it returns an ErrorList naming file,
// line, document and field path, together with the documents that decoded,
// some perhaps only in part: they are good for nothing but
// ValidateDocuments, which finds the rest of the problems in one run.
func Decode(file string, data []byte) ([]*Document, error) {
	if len(data) > maxDocumentBytes {
		return nil, ErrorList{{Pos: Position{File: file, Line: 1}, Msg: fmt.Sprintf("input is %d bytes, more than the %d allowed", len(data), maxDocumentBytes)}}
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var (
		docs []*Document
		errs ErrorList
	)
	for n := 1; ; n++ {
		var root yaml.Node
		err := dec.Decode(&root)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			errs = append(errs, syntaxError(file, data, n, err))
			break // the parser cannot resynchronise after a syntax error
		}
		d := &decoder{file: file, doc: n, fields: map[string]Position{}}
		res := d.document(&root)
		errs = append(errs, d.errs...)
		if res != nil {
			docs = append(docs, &Document{Resource: res, Pos: d.pos(&root), fields: d.fields, failed: d.failedPaths()})
		}
	}
	return docs, errs.Err()
}

// failedPaths lists the field paths of the document's errors.
func (d *decoder) failedPaths() []string {
	paths := make([]string, len(d.errs))
	for i, e := range d.errs {
		paths[i] = e.Path
	}
	return paths
}

// yamlLine finds "line N" in the parser's message.
var yamlLine = regexp.MustCompile(`line (\d+)`)

// maxFaultScanBytes bounds the re-reading faultLine does, so a huge
// document with a syntax error costs little more than reading it.
const maxFaultScanBytes = 8 << 20

func syntaxError(file string, data []byte, doc int, err error) *FieldError {
	reported, msg := yamlMessage(err)
	pos := Position{File: file, Line: faultLine(data, reported, msg), Doc: doc}
	return &FieldError{Pos: pos, Msg: "invalid YAML: " + msg}
}

// yamlMessage splits the parser's error into the line it names (0 when
// none) and the message without it.
func yamlMessage(err error) (int, string) {
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	m := yamlLine.FindStringSubmatch(msg)
	if m == nil {
		return 0, msg
	}
	line, _ := strconv.Atoi(m[1])
	return line, strings.TrimSpace(strings.Replace(msg, m[0]+":", "", 1))
}

// faultLine finds the line of a syntax error. The parser names the line
// where the construct around the fault began, and for parser (not
// scanner) errors the line before that: in a later document often its
// "---". So the document is read again from there one more line at a time,
// and the fault is on the last line of the first prefix that fails with
// the same message. It falls back to the parser's line.
func faultLine(data []byte, reported int, msg string) int {
	starts := lineStarts(data)
	lines := len(starts) - 1
	first := documentStart(data, starts, min(reported, lines-1))
	budget := maxFaultScanBytes
	for end := max(first+1, reported); end <= lines; end++ {
		chunk := data[starts[first]:starts[end]]
		if budget -= len(chunk); budget < 0 {
			break
		}
		if m, failed := firstSyntaxError(chunk); failed && m == msg {
			return end
		}
	}
	return max(reported, 1)
}

// lineStarts returns the offset of each line of data and, last, len(data).
func lineStarts(data []byte) []int {
	starts := []int{0}
	for i, b := range data {
		if b == '\n' && i+1 < len(data) {
			starts = append(starts, i+1)
		}
	}
	return append(starts, len(data))
}

// documentStart returns the 0-based line of the "---" that begins the
// document holding line (0-based), or 0.
func documentStart(data []byte, starts []int, line int) int {
	for i := line; i > 0; i-- {
		l := data[starts[i]:starts[i+1]]
		if rest, ok := bytes.CutPrefix(l, []byte("---")); ok && (len(rest) == 0 || rest[0] == ' ' || rest[0] == '\t' || rest[0] == '\n' || rest[0] == '\r') {
			return i
		}
	}
	return 0
}

// firstSyntaxError reads every document of data and returns the message
// of the first syntax error.
func firstSyntaxError(data []byte) (string, bool) {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	for {
		var n yaml.Node
		err := dec.Decode(&n)
		if errors.Is(err, io.EOF) {
			return "", false
		}
		if err != nil {
			_, msg := yamlMessage(err)
			return msg, true
		}
	}
}

// Load decodes every path: a file, a directory (its *.yaml and *.yml files,
// recursively, in lexical order) or "-" for standard input. Problems from
// all files are reported together, with the documents, as Decode does.
func Load(paths ...string) ([]*Document, error) {
	return load(os.Stdin, paths)
}

func load(stdin io.Reader, paths []string) ([]*Document, error) {
	if len(paths) == 0 {
		return nil, errors.New("no file given")
	}
	var (
		docs []*Document
		errs ErrorList
	)
	for _, p := range paths {
		files, err := expand(p)
		if err != nil {
			return nil, err
		}
		for _, f := range files {
			var data []byte
			if f == "-" {
				data, err = io.ReadAll(io.LimitReader(stdin, maxDocumentBytes+1))
				f = "<stdin>"
			} else {
				data, err = os.ReadFile(f)
			}
			if err != nil {
				return nil, fmt.Errorf("read %s: %w", f, err)
			}
			d, err := Decode(f, data)
			var list ErrorList
			if errors.As(err, &list) {
				errs = append(errs, list...)
			}
			docs = append(docs, d...)
		}
	}
	return docs, errs.Err()
}

// expand turns a path into the files it stands for.
func expand(p string) ([]string, error) {
	if p == "-" {
		return []string{p}, nil
	}
	info, err := os.Stat(p)
	if err != nil {
		return nil, err
	}
	if !info.IsDir() {
		return []string{p}, nil
	}
	var files []string
	err = filepath.WalkDir(p, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if ext := filepath.Ext(path); !d.IsDir() && (ext == ".yaml" || ext == ".yml") {
			files = append(files, path)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if len(files) == 0 {
		return nil, fmt.Errorf("%s: no .yaml or .yml files", p)
	}
	slices.Sort(files)
	return files, nil
}

// decoder walks one document's node tree into protobuf messages through
// protoreflect, so every kind is decoded by the same strict rules.
type decoder struct {
	file   string
	doc    int
	kind   string
	name   string
	fields map[string]Position
	errs   ErrorList
}

func (d *decoder) pos(n *yaml.Node) Position {
	return Position{File: d.file, Line: n.Line, Column: n.Column, Doc: d.doc}
}

func (d *decoder) fail(n *yaml.Node, path, format string, args ...any) {
	d.errs = append(d.errs, &FieldError{Pos: d.pos(n), Kind: d.kind, Name: d.name, Path: path, Msg: fmt.Sprintf(format, args...)})
}

// document decodes the top level: apiVersion, kind, metadata, spec. It
// returns nil for an empty document and for one whose kind is unknown; a
// document with errors in d.errs may be decoded only in part.
func (d *decoder) document(root *yaml.Node) *meridianv1.Resource {
	n := root
	if n.Kind == yaml.DocumentNode {
		if len(n.Content) == 0 {
			return nil
		}
		n = n.Content[0]
	}
	if isNull(n) {
		return nil
	}
	if n.Kind != yaml.MappingNode {
		d.fail(n, "", "a resource must be a mapping with apiVersion, kind, metadata and spec, got %s", describe(n))
		return nil
	}
	d.identify(n)
	top := map[string]*yaml.Node{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		switch k.Value {
		case "apiVersion", "kind", "metadata", "spec":
		default:
			d.fail(k, k.Value, "unknown field (want apiVersion, kind, metadata, spec)")
			continue
		}
		if _, dup := top[k.Value]; dup {
			d.fail(k, k.Value, "duplicate field")
			continue
		}
		top[k.Value] = v
	}
	av, kn := top["apiVersion"], top["kind"]
	switch {
	case av == nil:
		d.fail(n, "apiVersion", "required (want %q)", APIVersion)
	case av.Kind != yaml.ScalarNode || av.Value != APIVersion:
		d.fail(av, "apiVersion", "unsupported apiVersion %q (want %q)", av.Value, APIVersion)
	}
	if kn == nil {
		d.fail(n, "kind", "required (want one of %s)", strings.Join(Kinds(), ", "))
		return nil
	}
	res, msg := newResource(kn.Value)
	if res == nil {
		d.fail(kn, "kind", "unknown kind %q (want one of %s)", kn.Value, strings.Join(Kinds(), ", "))
		return nil
	}
	m := msg.ProtoReflect()
	fds := m.Descriptor().Fields()
	for _, key := range []string{"metadata", "spec"} {
		v := top[key]
		if v == nil {
			d.fail(n, key, "required")
			continue
		}
		d.fields[key] = d.pos(v)
		fd := fds.ByName(protoreflect.Name(key))
		d.message(v, m.Mutable(fd).Message(), key)
	}
	return res
}

// identify reads kind and metadata.name ahead of decoding, so that every
// error of the document, even the first, carries them.
func (d *decoder) identify(n *yaml.Node) {
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		switch {
		case k.Value == "kind" && v.Kind == yaml.ScalarNode:
			if r, _ := newResource(v.Value); r != nil {
				d.kind = v.Value
			}
		case k.Value == "metadata" && v.Kind == yaml.MappingNode:
			for j := 0; j+1 < len(v.Content); j += 2 {
				if v.Content[j].Value == "name" && v.Content[j+1].Kind == yaml.ScalarNode {
					d.name = v.Content[j+1].Value
				}
			}
		}
	}
}

// newResource returns an empty resource of kind and its inner message.
func newResource(kind string) (*meridianv1.Resource, interface {
	ProtoReflect() protoreflect.Message
}) {
	switch kind {
	case KindUpstream:
		m := &meridianv1.Upstream{}
		return &meridianv1.Resource{Kind: &meridianv1.Resource_Upstream{Upstream: m}}, m
	case KindRoute:
		m := &meridianv1.Route{}
		return &meridianv1.Resource{Kind: &meridianv1.Resource_Route{Route: m}}, m
	case KindRateLimit:
		m := &meridianv1.RateLimit{}
		return &meridianv1.Resource{Kind: &meridianv1.Resource_RateLimit{RateLimit: m}}, m
	case KindCircuitBreaker:
		m := &meridianv1.CircuitBreaker{}
		return &meridianv1.Resource{Kind: &meridianv1.Resource_CircuitBreaker{CircuitBreaker: m}}, m
	case KindJWTProvider:
		m := &meridianv1.JWTProvider{}
		return &meridianv1.Resource{Kind: &meridianv1.Resource_JwtProvider{JwtProvider: m}}, m
	}
	return nil, nil
}

// durationName is decoded from and encoded to Go duration strings.
const durationName protoreflect.FullName = "google.protobuf.Duration"

// message decodes a mapping node into m.
func (d *decoder) message(n *yaml.Node, m protoreflect.Message, path string) {
	if isNull(n) {
		return
	}
	if n.Kind != yaml.MappingNode {
		d.fail(n, path, "expected a mapping, got %s", describe(n))
		return
	}
	fds := m.Descriptor().Fields()
	seen := map[string]bool{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		fpath := joinPath(path, k.Value)
		if k.Kind != yaml.ScalarNode {
			d.fail(k, path, "field names must be plain strings, got %s", describe(k))
			continue
		}
		fd := fds.ByJSONName(k.Value)
		if fd == nil {
			d.fail(k, fpath, "unknown field (want one of %s)", fieldNames(fds))
			continue
		}
		if seen[k.Value] {
			d.fail(k, fpath, "duplicate field")
			continue
		}
		seen[k.Value] = true
		if od := fd.ContainingOneof(); od != nil {
			if other := m.WhichOneof(od); other != nil {
				d.fail(k, fpath, "only one of %s may be set (%s is already)", oneofNames(od), other.JSONName())
				continue
			}
		}
		d.fields[fpath] = d.pos(v)
		switch {
		case fd.IsMap():
			d.mapField(v, m, fd, fpath)
		case fd.IsList():
			d.listField(v, m, fd, fpath)
		case fd.Message() != nil && fd.Message().FullName() != durationName:
			if isNull(v) && fd.ContainingOneof() == nil {
				continue
			}
			d.message(v, m.Mutable(fd).Message(), fpath)
		default:
			if val, ok := d.scalar(v, fd, fpath); ok {
				m.Set(fd, val)
			}
		}
	}
}

func (d *decoder) mapField(n *yaml.Node, m protoreflect.Message, fd protoreflect.FieldDescriptor, path string) {
	if isNull(n) {
		return
	}
	if n.Kind != yaml.MappingNode {
		d.fail(n, path, "expected a mapping, got %s", describe(n))
		return
	}
	mp := m.Mutable(fd).Map()
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		epath := path + "[" + k.Value + "]"
		if k.Kind != yaml.ScalarNode {
			d.fail(k, path, "keys must be strings, got %s", describe(k))
			continue
		}
		key := protoreflect.ValueOfString(k.Value).MapKey()
		if mp.Has(key) {
			d.fail(k, epath, "duplicate key")
			continue
		}
		d.fields[epath] = d.pos(v)
		vd := fd.MapValue()
		if vd.Message() != nil && vd.Message().FullName() != durationName {
			val := mp.NewValue()
			d.message(v, val.Message(), epath)
			mp.Set(key, val)
			continue
		}
		if val, ok := d.scalar(v, vd, epath); ok {
			mp.Set(key, val)
		}
	}
}

func (d *decoder) listField(n *yaml.Node, m protoreflect.Message, fd protoreflect.FieldDescriptor, path string) {
	if isNull(n) {
		return
	}
	if n.Kind != yaml.SequenceNode {
		d.fail(n, path, "expected a list, got %s", describe(n))
		return
	}
	if msg, ok := emptyListMeanings[fd.FullName()]; ok && len(n.Content) == 0 {
		d.fail(n, path, "%s", msg)
		return
	}
	list := m.Mutable(fd).List()
	for i, v := range n.Content {
		epath := fmt.Sprintf("%s[%d]", path, i)
		d.fields[epath] = d.pos(v)
		if fd.Message() != nil && fd.Message().FullName() != durationName {
			val := list.NewElement()
			d.message(v, val.Message(), epath)
			list.Append(val)
			continue
		}
		if val, ok := d.scalar(v, fd, epath); ok {
			list.Append(val)
		}
	}
}

// scalar decodes a scalar node into a value of fd's kind.
func (d *decoder) scalar(n *yaml.Node, fd protoreflect.FieldDescriptor, path string) (protoreflect.Value, bool) {
	if n.Kind == yaml.AliasNode {
		d.fail(n, path, "YAML aliases are not supported")
		return protoreflect.Value{}, false
	}
	if n.Kind != yaml.ScalarNode || isNull(n) {
		d.fail(n, path, "expected %s, got %s", want(fd), describe(n))
		return protoreflect.Value{}, false
	}
	tag := n.ShortTag()
	bad := func() (protoreflect.Value, bool) {
		hint := ""
		if fd.Kind() == protoreflect.StringKind {
			hint = fmt.Sprintf("; quote it: \"%s\"", n.Value)
		}
		d.fail(n, path, "expected %s, got %s%s", want(fd), describe(n), hint)
		return protoreflect.Value{}, false
	}
	if fd.Message() != nil { // google.protobuf.Duration
		if tag != "!!str" {
			d.fail(n, path, "expected a duration such as \"250ms\" or \"5s\", got %s", describe(n))
			return protoreflect.Value{}, false
		}
		dur, err := time.ParseDuration(n.Value)
		if err != nil {
			d.fail(n, path, "invalid duration %q (use a number with a unit: 250ms, 5s, 1m)", n.Value)
			return protoreflect.Value{}, false
		}
		return protoreflect.ValueOfMessage(durationpb.New(dur).ProtoReflect()), true
	}
	switch fd.Kind() {
	case protoreflect.StringKind:
		if tag != "!!str" {
			return bad()
		}
		return protoreflect.ValueOfString(n.Value), true
	case protoreflect.BoolKind:
		if tag != "!!bool" {
			return bad()
		}
		b, _ := strconv.ParseBool(strings.ToLower(n.Value))
		return protoreflect.ValueOfBool(b), true
	case protoreflect.Int32Kind, protoreflect.Sint32Kind, protoreflect.Sfixed32Kind:
		v, ok := d.integer(n, path, tag, math.MinInt32, math.MaxInt32)
		return protoreflect.ValueOfInt32(int32(v)), ok
	case protoreflect.Int64Kind, protoreflect.Sint64Kind, protoreflect.Sfixed64Kind:
		v, ok := d.integer(n, path, tag, math.MinInt64, math.MaxInt64)
		return protoreflect.ValueOfInt64(v), ok
	case protoreflect.Uint32Kind, protoreflect.Fixed32Kind:
		v, ok := d.unsigned(n, path, tag, math.MaxUint32)
		return protoreflect.ValueOfUint32(uint32(v)), ok
	case protoreflect.Uint64Kind, protoreflect.Fixed64Kind:
		v, ok := d.unsigned(n, path, tag, math.MaxUint64)
		return protoreflect.ValueOfUint64(v), ok
	case protoreflect.DoubleKind, protoreflect.FloatKind:
		if tag != "!!int" && tag != "!!float" {
			return bad()
		}
		f, err := strconv.ParseFloat(strings.ReplaceAll(n.Value, "_", ""), 64)
		if err != nil || math.IsNaN(f) || math.IsInf(f, 0) {
			d.fail(n, path, "invalid number %q", n.Value)
			return protoreflect.Value{}, false
		}
		if fd.Kind() == protoreflect.FloatKind {
			return protoreflect.ValueOfFloat32(float32(f)), true
		}
		return protoreflect.ValueOfFloat64(f), true
	case protoreflect.EnumKind:
		if tag != "!!str" {
			return bad()
		}
		num, ok := enumNumber(fd.Enum(), n.Value)
		if !ok {
			d.fail(n, path, "unknown value %q (want one of %s)", n.Value, strings.Join(enumWords(fd.Enum()), ", "))
			return protoreflect.Value{}, false
		}
		return protoreflect.ValueOfEnum(num), true
	}
	d.fail(n, path, "unsupported field type %s", fd.Kind())
	return protoreflect.Value{}, false
}

func (d *decoder) integer(n *yaml.Node, path, tag string, lo, hi int64) (int64, bool) {
	if tag != "!!int" {
		d.fail(n, path, "expected an integer, got %s", describe(n))
		return 0, false
	}
	v, err := strconv.ParseInt(strings.ReplaceAll(n.Value, "_", ""), 0, 64)
	if err != nil || v < lo || v > hi {
		d.fail(n, path, "integer %s out of range [%d, %d]", n.Value, lo, hi)
		return 0, false
	}
	return v, true
}

func (d *decoder) unsigned(n *yaml.Node, path, tag string, hi uint64) (uint64, bool) {
	if tag != "!!int" {
		d.fail(n, path, "expected a non-negative integer, got %s", describe(n))
		return 0, false
	}
	v, err := strconv.ParseUint(strings.ReplaceAll(n.Value, "_", ""), 0, 64)
	if err != nil || v > hi {
		d.fail(n, path, "expected a non-negative integer no larger than %d, got %s", hi, n.Value)
		return 0, false
	}
	return v, true
}

// enumPrefix is the upper-snake prefix shared by an enum's values, taken
// from its zero value ("SCHEME_UNSPECIFIED" → "SCHEME_").
func enumPrefix(ed protoreflect.EnumDescriptor) string {
	return strings.TrimSuffix(string(ed.Values().ByNumber(0).Name()), "UNSPECIFIED")
}

// enumWords lists the lower-case words users write for ed's values.
func enumWords(ed protoreflect.EnumDescriptor) []string {
	prefix := enumPrefix(ed)
	var words []string
	vals := ed.Values()
	for i := range vals.Len() {
		if v := vals.Get(i); v.Number() != 0 {
			words = append(words, strings.ToLower(strings.TrimPrefix(string(v.Name()), prefix)))
		}
	}
	return words
}

// enumWord is the lower-case word for one enum value.
func enumWord(ed protoreflect.EnumDescriptor, num protoreflect.EnumNumber) string {
	v := ed.Values().ByNumber(num)
	if v == nil {
		return strconv.Itoa(int(num))
	}
	return strings.ToLower(strings.TrimPrefix(string(v.Name()), enumPrefix(ed)))
}

func enumNumber(ed protoreflect.EnumDescriptor, word string) (protoreflect.EnumNumber, bool) {
	if word == "" || word != strings.ToLower(word) || strings.EqualFold(word, "unspecified") {
		return 0, false
	}
	v := ed.Values().ByName(protoreflect.Name(enumPrefix(ed) + strings.ToUpper(word)))
	if v == nil {
		return 0, false
	}
	return v.Number(), true
}

func fieldNames(fds protoreflect.FieldDescriptors) string {
	names := make([]string, fds.Len())
	for i := range fds.Len() {
		names[i] = fds.Get(i).JSONName()
	}
	return strings.Join(names, ", ")
}

func oneofNames(od protoreflect.OneofDescriptor) string {
	fds := od.Fields()
	names := make([]string, fds.Len())
	for i := range fds.Len() {
		names[i] = fds.Get(i).JSONName()
	}
	return strings.Join(names, ", ")
}

func joinPath(path, field string) string {
	if path == "" {
		return field
	}
	return path + "." + field
}

func isNull(n *yaml.Node) bool {
	return n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null"
}

// describe names a node's type for error messages without echoing long
// values.
func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.AliasNode:
		return "an alias"
	case yaml.DocumentNode:
		return "a document"
	}
	switch n.ShortTag() {
	case "!!null":
		return "nothing"
	case "!!bool":
		return "a boolean " + n.Value
	case "!!int":
		return "an integer " + n.Value
	case "!!float":
		return "a number " + n.Value
	case "!!str":
		return "a string"
	}
	return "a value tagged " + n.ShortTag()
}

func want(fd protoreflect.FieldDescriptor) string {
	switch fd.Kind() {
	case protoreflect.StringKind:
		return "a string"
	case protoreflect.BoolKind:
		return "true or false"
	case protoreflect.EnumKind:
		return "one of " + strings.Join(enumWords(fd.Enum()), ", ")
	case protoreflect.DoubleKind, protoreflect.FloatKind:
		return "a number"
	case protoreflect.MessageKind:
		return "a duration such as \"250ms\""
	}
	return "an integer"
}
