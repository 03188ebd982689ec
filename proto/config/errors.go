package config

import (
	"fmt"
	"strings"

	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

// Position is where something is in a YAML source. Line and Doc are 1-based;
// a zero Position means "not from a file" (for example a resource received
// over gRPC).
type Position struct {
	File   string
	Line   int
	Column int
	// Doc is the 1-based index of the YAML document within File.
	Doc int
}

// IsZero reports whether p carries no location.
func (p Position) IsZero() bool { return p.File == "" && p.Line == 0 }

// FieldError is one problem in one field of one resource.
type FieldError struct {
	Pos  Position
	Kind string // resource kind, when known
	Name string // resource name, when known
	Path string // field path such as spec.match.paths[1].template
	Msg  string
}

// Error renders the error the way operators read it:
//
//	gateway.yaml:14: Route "get-user": spec.match.paths[1].template: unclosed "{"
func (e *FieldError) Error() string {
	var b strings.Builder
	if !e.Pos.IsZero() {
		if e.Pos.File != "" {
			b.WriteString(e.Pos.File)
			b.WriteByte(':')
		}
		fmt.Fprintf(&b, "%d: ", e.Pos.Line)
	}
	if e.Kind != "" {
		b.WriteString(e.Kind)
		if e.Name != "" {
			fmt.Fprintf(&b, " %q", e.Name)
		}
		b.WriteString(": ")
	} else if e.Pos.Doc > 0 {
		fmt.Fprintf(&b, "document %d: ", e.Pos.Doc)
	}
	if e.Path != "" {
		b.WriteString(e.Path)
		b.WriteString(": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

// Proto converts e for a NACK or an admin error detail.
func (e *FieldError) Proto() *meridianv1.ConfigError {
	return &meridianv1.ConfigError{Kind: e.Kind, Name: e.Name, Field: e.Path, Message: e.Msg}
}

// FieldErrorFromProto is the inverse of Proto (without position).
func FieldErrorFromProto(c *meridianv1.ConfigError) *FieldError {
	return &FieldError{Kind: c.GetKind(), Name: c.GetName(), Path: c.GetField(), Msg: c.GetMessage()}
}

// ErrorList is every problem found in a configuration. A configuration with
// any problem is rejected whole.
type ErrorList []*FieldError

// MaxReported is how many problems an ErrorList spells out; the rest are
// counted in one last line, so a broken directory does not bury the first
// problems (or overflow a gRPC status).
const MaxReported = 50

// Error lists one problem per line, at most MaxReported of them.
func (l ErrorList) Error() string {
	return strings.Join(l.Lines(MaxReported), "\n")
}

// Lines renders at most max problems, one per line, and then "and N more
// problems" when there are more.
func (l ErrorList) Lines(max int) []string {
	n := min(len(l), max)
	lines := make([]string, n, n+1)
	for i, e := range l[:n] {
		lines[i] = e.Error()
	}
	switch rest := len(l) - n; {
	case rest == 1:
		lines = append(lines, "and 1 more problem")
	case rest > 1:
		lines = append(lines, fmt.Sprintf("and %d more problems", rest))
	}
	return lines
}

// Err returns nil for an empty list, so callers can `return list.Err()`.
func (l ErrorList) Err() error {
	if len(l) == 0 {
		return nil
	}
	return l
}
