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

// Error lists one problem per line.
func (l ErrorList) Error() string {
	lines := make([]string, len(l))
	for i, e := range l {
		lines[i] = e.Error()
	}
	return strings.Join(lines, "\n")
}

// Err returns nil for an empty list, so callers can `return list.Err()`.
func (l ErrorList) Err() error {
	if len(l) == 0 {
		return nil
	}
	return l
}
