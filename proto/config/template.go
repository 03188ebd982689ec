package config

import (
	"fmt"
	"regexp"
	"strings"
)

// Template is a parsed path template such as /users/{id}/files/{path...}.
// The router and rewrites share this parser so they agree on the syntax.
type Template struct {
	Segments []Segment
}

// Segment is one '/'-separated part of a template: a literal, a parameter
// that matches one segment, or a trailing catch-all parameter.
type Segment struct {
	Literal  string
	Param    string
	CatchAll bool
}

var paramName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// ParseTemplate parses a path template. Parameters occupy whole segments;
// {name...} may only be the last segment.
func ParseTemplate(s string) (*Template, error) {
	if !strings.HasPrefix(s, "/") {
		return nil, fmt.Errorf("%q must start with /", s)
	}
	if strings.ContainsAny(s, "?#") {
		return nil, fmt.Errorf("%q must not contain a query or fragment", s)
	}
	parts := strings.Split(s[1:], "/")
	t := &Template{Segments: make([]Segment, 0, len(parts))}
	seen := map[string]bool{}
	for i, part := range parts {
		if part == "" && i != len(parts)-1 {
			return nil, fmt.Errorf("%q has an empty segment", s)
		}
		if !strings.ContainsAny(part, "{}") {
			t.Segments = append(t.Segments, Segment{Literal: part})
			continue
		}
		if !strings.HasPrefix(part, "{") || !strings.HasSuffix(part, "}") || strings.Count(part, "{") != 1 || strings.Count(part, "}") != 1 {
			return nil, fmt.Errorf("segment %q: a parameter must be a whole segment such as {id}", part)
		}
		name := part[1 : len(part)-1]
		seg := Segment{Param: name}
		if n, ok := strings.CutSuffix(name, "..."); ok {
			if i != len(parts)-1 {
				return nil, fmt.Errorf("segment %q: a catch-all parameter must be the last segment", part)
			}
			seg = Segment{Param: n, CatchAll: true}
		}
		if !paramName.MatchString(seg.Param) {
			return nil, fmt.Errorf("segment %q: %q is not a parameter name (letters, digits, _)", part, seg.Param)
		}
		if seen[seg.Param] {
			return nil, fmt.Errorf("parameter {%s} appears twice", seg.Param)
		}
		seen[seg.Param] = true
		t.Segments = append(t.Segments, seg)
	}
	return t, nil
}

// Params lists the template's parameter names in order.
func (t *Template) Params() []string {
	var names []string
	for _, s := range t.Segments {
		if s.Param != "" {
			names = append(names, s.Param)
		}
	}
	return names
}

// Shape is the template with parameter names erased: two templates with
// equal shapes match exactly the same paths.
func (t *Template) Shape() string {
	var b strings.Builder
	for _, s := range t.Segments {
		b.WriteByte('/')
		switch {
		case s.CatchAll:
			b.WriteString("{...}")
		case s.Param != "":
			b.WriteString("{}")
		default:
			b.WriteString(s.Literal)
		}
	}
	return b.String()
}
