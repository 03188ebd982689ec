package printer

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// The JSON (and YAML) form of an API message is protojson's, with every
// field present (EmitUnpopulated: zero values, [] and {}, null for an unset
// message or timestamp), lowerCamelCase names and RFC 3339 timestamps, and
// two changes that make it read like the tables and configuration files and
// easy to script (docs/gatewayctl.md):
//
//   - an enum value is its configuration word, the value's name without the
//     enum's prefix, lower-cased: "synced", not "DATAPLANE_STATE_SYNCED";
//     the zero value is "unspecified", and a number this gatewayctl has no
//     name for stays a JSON number;
//   - a 64-bit integer (versions) is a JSON number, not protojson's string.
//
// It is done once, here, on protojson's output, guided by the message's
// descriptors, so every command prints the same schema.

// MarshalMessage renders m in gatewayctl's JSON schema, compact.
func MarshalMessage(m proto.Message) ([]byte, error) {
	data, err := protojson.MarshalOptions{EmitUnpopulated: true}.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("render json: %w", err)
	}
	v, err := decodeOrdered(data)
	if err != nil {
		return nil, fmt.Errorf("render json: %w", err)
	}
	v = convertMessage(m.ProtoReflect().Descriptor(), v)
	var buf bytes.Buffer
	if err := encodeOrdered(&buf, v); err != nil {
		return nil, fmt.Errorf("render json: %w", err)
	}
	return buf.Bytes(), nil
}

// EnumWord is the word gatewayctl prints, and configuration files use, for
// value num of enum ed: its name without the enum's prefix, lower-cased
// (SCHEME_H2C is "h2c", DATAPLANE_STATE_SYNCED is "synced"). A number with
// no name is returned as its decimal digits.
func EnumWord(ed protoreflect.EnumDescriptor, num protoreflect.EnumNumber) string {
	v := ed.Values().ByNumber(num)
	if v == nil {
		return strconv.Itoa(int(num))
	}
	return strings.ToLower(strings.TrimPrefix(string(v.Name()), enumPrefix(ed)))
}

// enumPrefix is the upper-snake prefix of ed's value names: the zero
// value's name without UNSPECIFIED (DATAPLANE_STATE_), else the enum's name
// in upper snake case (LoadBalancerPolicy: LOAD_BALANCER_POLICY_).
func enumPrefix(ed protoreflect.EnumDescriptor) string {
	if zero := ed.Values().ByNumber(0); zero != nil {
		if p, ok := strings.CutSuffix(string(zero.Name()), "UNSPECIFIED"); ok && p != "" {
			return p
		}
	}
	return upperSnake(string(ed.Name())) + "_"
}

// convertMessage rewrites v, protojson's rendering of a message of type
// md, into the schema above.
func convertMessage(md protoreflect.MessageDescriptor, v any) any {
	switch md.FullName() {
	case "google.protobuf.Int64Value", "google.protobuf.UInt64Value":
		return number(v)
	}
	if md.FullName().Parent() == "google.protobuf" {
		// Timestamp, Duration, Struct, Any...: protojson's own forms.
		return v
	}
	obj, ok := v.(*object)
	if !ok {
		return v // null
	}
	fields := md.Fields()
	for i, m := range obj.members {
		fd := fields.ByJSONName(m.key)
		if fd == nil {
			continue // an extension: left as protojson wrote it
		}
		obj.members[i].value = convertField(fd, m.value)
	}
	return obj
}

func convertField(fd protoreflect.FieldDescriptor, v any) any {
	switch {
	case fd.IsList():
		if list, ok := v.([]any); ok {
			for i, e := range list {
				list[i] = convertValue(fd, e)
			}
		}
	case fd.IsMap():
		if obj, ok := v.(*object); ok {
			for i, m := range obj.members {
				obj.members[i].value = convertValue(fd.MapValue(), m.value)
			}
		}
	default:
		return convertValue(fd, v)
	}
	return v
}

// convertValue rewrites one value (not a list or map) of field fd.
func convertValue(fd protoreflect.FieldDescriptor, v any) any {
	switch fd.Kind() {
	case protoreflect.EnumKind:
		ed := fd.Enum()
		if ed.FullName() == "google.protobuf.NullValue" {
			return v
		}
		if name, ok := v.(string); ok {
			if ev := ed.Values().ByName(protoreflect.Name(name)); ev != nil {
				return EnumWord(ed, ev.Number())
			}
		}
	case protoreflect.Int64Kind, protoreflect.Sint64Kind, protoreflect.Sfixed64Kind,
		protoreflect.Uint64Kind, protoreflect.Fixed64Kind:
		return number(v)
	case protoreflect.MessageKind, protoreflect.GroupKind:
		return convertMessage(fd.Message(), v)
	}
	return v
}

// number turns protojson's quoted 64-bit integer into a JSON number.
func number(v any) any {
	s, ok := v.(string)
	if !ok {
		return v
	}
	if _, err := strconv.ParseInt(s, 10, 64); err == nil {
		return json.Number(s)
	}
	if _, err := strconv.ParseUint(s, 10, 64); err == nil {
		return json.Number(s)
	}
	return v
}

// object is a JSON object that keeps its keys in order; protojson writes
// fields in the order of the .proto file, and so does gatewayctl.
type object struct {
	members []member
}

type member struct {
	key   string
	value any
}

// decodeOrdered parses one JSON document into *object, []any, string,
// json.Number, bool and nil values.
func decodeOrdered(data []byte) (any, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	v, err := decodeValue(dec)
	if err != nil {
		return nil, err
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, fmt.Errorf("trailing data after the JSON document")
	}
	return v, nil
}

func decodeValue(dec *json.Decoder) (any, error) {
	tok, err := dec.Token()
	if err != nil {
		return nil, err
	}
	d, ok := tok.(json.Delim)
	if !ok {
		return tok, nil
	}
	switch d {
	case '{':
		obj := &object{}
		for dec.More() {
			kt, err := dec.Token()
			if err != nil {
				return nil, err
			}
			key, ok := kt.(string)
			if !ok {
				return nil, fmt.Errorf("object key %v is not a string", kt)
			}
			val, err := decodeValue(dec)
			if err != nil {
				return nil, err
			}
			obj.members = append(obj.members, member{key: key, value: val})
		}
		_, err := dec.Token() // '}'
		return obj, err
	case '[':
		list := []any{}
		for dec.More() {
			val, err := decodeValue(dec)
			if err != nil {
				return nil, err
			}
			list = append(list, val)
		}
		_, err := dec.Token() // ']'
		return list, err
	}
	return nil, fmt.Errorf("unexpected %v", d)
}

// encodeOrdered writes v compact. Strings are escaped as encoding/json
// does, but without turning <, > and & into \u escapes.
func encodeOrdered(buf *bytes.Buffer, v any) error {
	switch v := v.(type) {
	case *object:
		buf.WriteByte('{')
		for i, m := range v.members {
			if i > 0 {
				buf.WriteByte(',')
			}
			if err := encodeString(buf, m.key); err != nil {
				return err
			}
			buf.WriteByte(':')
			if err := encodeOrdered(buf, m.value); err != nil {
				return err
			}
		}
		buf.WriteByte('}')
	case []any:
		buf.WriteByte('[')
		for i, e := range v {
			if i > 0 {
				buf.WriteByte(',')
			}
			if err := encodeOrdered(buf, e); err != nil {
				return err
			}
		}
		buf.WriteByte(']')
	case string:
		return encodeString(buf, v)
	case json.Number:
		buf.WriteString(v.String())
	case bool:
		buf.WriteString(strconv.FormatBool(v))
	case nil:
		buf.WriteString("null")
	default:
		return fmt.Errorf("unexpected JSON value %T", v)
	}
	return nil
}

func encodeString(buf *bytes.Buffer, s string) error {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(s); err != nil {
		return err
	}
	buf.Write(bytes.TrimSuffix(b.Bytes(), []byte("\n")))
	return nil
}
