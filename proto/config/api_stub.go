package config

import (
	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

// Document is one decoded YAML document: a resource and where its fields
// came from, so validation errors can name file and line.
type Document struct {
	Resource *meridianv1.Resource
	// Pos is the start of the document.
	Pos Position
	// fields maps a field path ("spec.match.paths[1].template") to where
	// its value starts.
	fields map[string]Position
}

// Decode parses one YAML stream of one or more documents. file is only used
// in error positions. On any problem it returns an ErrorList naming file,
// line, document and field path, and no documents.
func Decode(file string, data []byte) ([]*Document, error) { panic("TODO") }

// Load decodes every path: a file, a directory (its *.yaml and *.yml files,
// recursively, in lexical order) or "-" for standard input. Problems from
// all files are reported together.
func Load(paths ...string) ([]*Document, error) { panic("TODO") }

// Resources returns the resources of docs, in order.
func Resources(docs []*Document) []*meridianv1.Resource {
	out := make([]*meridianv1.Resource, len(docs))
	for i, d := range docs {
		out[i] = d.Resource
	}
	return out
}

// Validate checks a whole configuration: every resource's fields, unique
// names per kind, references between resources, and routes that would
// match the same requests. It returns an ErrorList, or nil.
func Validate(rs []*meridianv1.Resource) error { panic("TODO") }

// ValidateDocuments is Validate with each error placed at the file and line
// of the field it names.
func ValidateDocuments(docs []*Document) error { panic("TODO") }

// MarshalYAML renders resources as a multi-document YAML stream in the
// form Decode reads.
func MarshalYAML(rs ...*meridianv1.Resource) ([]byte, error) { panic("TODO") }

// MarshalJSON renders resources as a JSON array of objects with apiVersion,
// kind, metadata and spec.
func MarshalJSON(rs ...*meridianv1.Resource) ([]byte, error) { panic("TODO") }
