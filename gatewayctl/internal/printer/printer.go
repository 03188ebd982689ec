// Package printer renders gatewayctl output in one of three formats: an
// aligned table (or plain lines) for people, JSON and YAML for scripts.
package printer

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"go.yaml.in/yaml/v3"
	"google.golang.org/protobuf/proto"

	"github.com/meridian-gw/meridian/proto/config"
	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

// Format is an output format.
type Format string

// The output formats -o accepts.
const (
	Table Format = "table"
	JSON  Format = "json"
	YAML  Format = "yaml"
)

// ParseFormat accepts table, json or yaml.
func ParseFormat(s string) (Format, error) {
	switch f := Format(strings.ToLower(s)); f {
	case Table, JSON, YAML:
		return f, nil
	}
	return "", fmt.Errorf("unknown output format %q (want table, json or yaml)", s)
}

// Printer writes values to one writer in one format.
type Printer struct {
	w      io.Writer
	format Format
}

// New returns a Printer writing format to w.
func New(w io.Writer, format Format) *Printer {
	return &Printer{w: w, format: format}
}

// Format returns the printer's format.
func (p *Printer) Format() Format { return p.format }

// Print writes v as JSON or YAML. A proto.Message is rendered in the schema
// of MarshalMessage (protojson's field names, enum words, numbers for
// versions); anything else goes through encoding/json. In
// the table format Print calls text instead, which writes the human form;
// what text writes passes through Lines, so server-supplied text cannot
// drive the terminal. JSON and YAML stay exact: they escape on their own.
func (p *Printer) Print(v any, text func(w io.Writer) error) error {
	if p.format == Table {
		return text(lineWriter{p.w})
	}
	data, err := marshalJSON(v)
	if err != nil {
		return err
	}
	return p.writeJSON(data)
}

// Resources writes rs as a KIND NAME SUMMARY table, a JSON array or a YAML
// stream that `gatewayctl apply -f -` accepts back.
func (p *Printer) Resources(rs []*meridianv1.Resource) error {
	switch p.format {
	case JSON:
		data, err := config.MarshalJSON(rs...)
		if err != nil {
			return err
		}
		return p.writeRaw(data)
	case YAML:
		data, err := config.MarshalYAML(rs...)
		if err != nil {
			return err
		}
		return p.writeRaw(data)
	}
	rows := make([][]string, len(rs))
	for i, r := range rs {
		rows[i] = []string{config.Kind(r), config.Name(r), Summary(r)}
	}
	return WriteTable(p.w, []string{"KIND", "NAME", "SUMMARY"}, rows)
}

// Resource writes one resource: a table row, a JSON object (not an array)
// or one YAML document.
func (p *Printer) Resource(r *meridianv1.Resource) error {
	if p.format != JSON {
		return p.Resources([]*meridianv1.Resource{r})
	}
	data, err := config.MarshalJSON(r)
	if err != nil {
		return err
	}
	var items []json.RawMessage
	if err := json.Unmarshal(data, &items); err != nil || len(items) != 1 {
		// Not the documented array of one: print what the codec gave.
		return p.writeRaw(data)
	}
	var buf bytes.Buffer
	if err := json.Indent(&buf, items[0], "", "  "); err != nil {
		return fmt.Errorf("render json: %w", err)
	}
	buf.WriteByte('\n')
	_, err = p.w.Write(buf.Bytes())
	return err
}

// WriteTable writes header and rows as space-aligned columns. Cells pass
// through Text, so one holding control characters stays one cell and
// cannot drive the terminal.
func WriteTable(w io.Writer, header []string, rows [][]string) error {
	var buf bytes.Buffer
	tw := tabwriter.NewWriter(&buf, 0, 8, 3, ' ', 0)
	clean := strings.NewReplacer("\t", " ", "\n", " ", "\r", " ")
	fmt.Fprintln(tw, strings.Join(header, "\t"))
	for _, row := range rows {
		cells := make([]string, len(row))
		for i, c := range row {
			// A tab or newline inside a cell would break the columns; a
			// space reads better there than an escape.
			cells[i] = Text(clean.Replace(c))
		}
		fmt.Fprintln(tw, strings.Join(cells, "\t"))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	// An empty last cell leaves the padding of the one before it.
	lines := strings.SplitAfter(buf.String(), "\n")
	for i, l := range lines {
		lines[i] = strings.TrimRight(strings.TrimSuffix(l, "\n"), " ")
		if strings.HasSuffix(l, "\n") {
			lines[i] += "\n"
		}
	}
	_, err := io.WriteString(w, strings.Join(lines, ""))
	return err
}

func marshalJSON(v any) ([]byte, error) {
	m, ok := v.(proto.Message)
	if !ok {
		data, err := json.Marshal(v)
		if err != nil {
			return nil, fmt.Errorf("render json: %w", err)
		}
		return data, nil
	}
	return MarshalMessage(m)
}

// writeJSON writes compact JSON data re-indented, or converted to YAML.
// Re-indenting also drops the random spacing protojson adds to keep callers
// from depending on its exact bytes; our output should be stable.
func (p *Printer) writeJSON(data []byte) error {
	var buf bytes.Buffer
	if p.format == YAML {
		out, err := JSONToYAML(data)
		if err != nil {
			return err
		}
		buf.Write(out)
	} else {
		if err := json.Indent(&buf, data, "", "  "); err != nil {
			return fmt.Errorf("render json: %w", err)
		}
		buf.WriteByte('\n')
	}
	_, err := p.w.Write(buf.Bytes())
	return err
}

func (p *Printer) writeRaw(data []byte) error {
	if len(data) > 0 && data[len(data)-1] != '\n' {
		data = append(data, '\n')
	}
	_, err := p.w.Write(data)
	return err
}

// JSONToYAML converts a JSON document to block-style YAML, keeping the key
// order of the input.
func JSONToYAML(data []byte) ([]byte, error) {
	var n yaml.Node
	if err := yaml.Unmarshal(yamlSafeJSON(data), &n); err != nil {
		return nil, fmt.Errorf("render yaml: %w", err)
	}
	plainStyle(&n)
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(&n); err != nil {
		return nil, fmt.Errorf("render yaml: %w", err)
	}
	if err := enc.Close(); err != nil {
		return nil, fmt.Errorf("render yaml: %w", err)
	}
	return buf.Bytes(), nil
}

// yamlSafeJSON escapes, as \uXXXX, the characters JSON allows raw in a
// string but a YAML stream does not (DEL, C1, non-characters) or reads as
// a line break (NEL, U+2028, U+2029). Only strings can hold them, and the
// escape means the same in JSON and YAML, so the value is unchanged.
func yamlSafeJSON(data []byte) []byte {
	if !bytes.ContainsFunc(data, yamlUnsafe) {
		return data
	}
	var buf bytes.Buffer
	buf.Grow(len(data) + 16)
	for _, r := range string(data) {
		if yamlUnsafe(r) {
			fmt.Fprintf(&buf, `\u%04x`, r)
			continue
		}
		buf.WriteRune(r)
	}
	return buf.Bytes()
}

func yamlUnsafe(r rune) bool {
	return r >= 0x7f && r <= 0x9f || r == 0x2028 || r == 0x2029 || r == 0xfeff || r == 0xfffe || r == 0xffff
}

// plainStyle drops the flow and quoting styles the JSON input carried; the
// encoder quotes any string that would otherwise read back as another type.
func plainStyle(n *yaml.Node) {
	n.Style = 0
	for _, c := range n.Content {
		plainStyle(c)
	}
}
