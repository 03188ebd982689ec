package config

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"

	"go.yaml.in/yaml/v3"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/durationpb"

	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

// MarshalYAML renders resources as a multi-document YAML stream in the
// form Decode reads.
func MarshalYAML(rs ...*meridianv1.Resource) ([]byte, error) {
	if len(rs) == 0 {
		return nil, nil
	}
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	for _, r := range rs {
		n, err := resourceNode(r)
		if err != nil {
			return nil, err
		}
		if err := enc.Encode(n); err != nil {
			return nil, fmt.Errorf("encode %s: %w", Key(r), err)
		}
	}
	if err := enc.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// MarshalJSON renders resources as an indented JSON array of objects with
// apiVersion, kind, metadata and spec, fields in the same order as YAML.
func MarshalJSON(rs ...*meridianv1.Resource) ([]byte, error) {
	var buf bytes.Buffer
	buf.WriteByte('[')
	for i, r := range rs {
		n, err := resourceNode(r)
		if err != nil {
			return nil, err
		}
		if i > 0 {
			buf.WriteByte(',')
		}
		if err := writeJSON(&buf, n); err != nil {
			return nil, fmt.Errorf("encode %s: %w", Key(r), err)
		}
	}
	buf.WriteByte(']')
	var out bytes.Buffer
	if err := json.Indent(&out, buf.Bytes(), "", "  "); err != nil {
		return nil, err
	}
	out.WriteByte('\n')
	return out.Bytes(), nil
}

// resourceNode builds the YAML tree of one resource.
func resourceNode(r *meridianv1.Resource) (*yaml.Node, error) {
	kind := Kind(r)
	if kind == "" {
		return nil, fmt.Errorf("empty resource")
	}
	inner := r.ProtoReflect()
	od := inner.Descriptor().Oneofs().ByName("kind")
	msg := inner.Get(inner.WhichOneof(od)).Message()
	root := mapping()
	addPair(root, "apiVersion", str(APIVersion))
	addPair(root, "kind", str(kind))
	fds := msg.Descriptor().Fields()
	addPair(root, "metadata", messageNode(msg.Get(fds.ByName("metadata")).Message()))
	addPair(root, "spec", messageNode(msg.Get(fds.ByName("spec")).Message()))
	return root, nil
}

func messageNode(m protoreflect.Message) *yaml.Node {
	n := mapping()
	fds := m.Descriptor().Fields()
	for i := range fds.Len() {
		fd := fds.Get(i)
		if !m.Has(fd) {
			continue
		}
		v := m.Get(fd)
		switch {
		case fd.IsMap():
			mn := mapping()
			keys := make([]string, 0, v.Map().Len())
			v.Map().Range(func(k protoreflect.MapKey, _ protoreflect.Value) bool {
				keys = append(keys, k.String())
				return true
			})
			slices.Sort(keys)
			for _, k := range keys {
				addPair(mn, k, valueNode(fd.MapValue(), v.Map().Get(protoreflect.ValueOfString(k).MapKey())))
			}
			addPair(n, fd.JSONName(), mn)
		case fd.IsList():
			sn := &yaml.Node{Kind: yaml.SequenceNode}
			for j := range v.List().Len() {
				sn.Content = append(sn.Content, valueNode(fd, v.List().Get(j)))
			}
			addPair(n, fd.JSONName(), sn)
		default:
			addPair(n, fd.JSONName(), valueNode(fd, v))
		}
	}
	return n
}

func valueNode(fd protoreflect.FieldDescriptor, v protoreflect.Value) *yaml.Node {
	if md := fd.Message(); md != nil {
		if d, ok := v.Message().Interface().(*durationpb.Duration); ok {
			return str(d.AsDuration().String())
		}
		return messageNode(v.Message())
	}
	switch fd.Kind() {
	case protoreflect.StringKind:
		return str(v.String())
	case protoreflect.BoolKind:
		return scalar("!!bool", strconv.FormatBool(v.Bool()))
	case protoreflect.EnumKind:
		return str(enumWord(fd.Enum(), v.Enum()))
	case protoreflect.DoubleKind, protoreflect.FloatKind:
		return scalar("!!float", strconv.FormatFloat(v.Float(), 'g', -1, 64))
	case protoreflect.Uint32Kind, protoreflect.Uint64Kind, protoreflect.Fixed32Kind, protoreflect.Fixed64Kind:
		return scalar("!!int", strconv.FormatUint(v.Uint(), 10))
	default:
		return scalar("!!int", strconv.FormatInt(v.Int(), 10))
	}
}

func mapping() *yaml.Node { return &yaml.Node{Kind: yaml.MappingNode} }

func str(s string) *yaml.Node { return scalar("!!str", s) }

func scalar(tag, value string) *yaml.Node {
	return &yaml.Node{Kind: yaml.ScalarNode, Tag: tag, Value: value}
}

func addPair(m *yaml.Node, key string, value *yaml.Node) {
	m.Content = append(m.Content, str(key), value)
}

// writeJSON writes a node tree built by resourceNode as JSON, keeping the
// field order of the YAML form.
func writeJSON(buf *bytes.Buffer, n *yaml.Node) error {
	switch n.Kind {
	case yaml.MappingNode:
		buf.WriteByte('{')
		for i := 0; i+1 < len(n.Content); i += 2 {
			if i > 0 {
				buf.WriteByte(',')
			}
			k, _ := json.Marshal(n.Content[i].Value)
			buf.Write(k)
			buf.WriteByte(':')
			if err := writeJSON(buf, n.Content[i+1]); err != nil {
				return err
			}
		}
		buf.WriteByte('}')
	case yaml.SequenceNode:
		buf.WriteByte('[')
		for i, c := range n.Content {
			if i > 0 {
				buf.WriteByte(',')
			}
			if err := writeJSON(buf, c); err != nil {
				return err
			}
		}
		buf.WriteByte(']')
	case yaml.ScalarNode:
		if n.Tag == "!!str" {
			b, err := json.Marshal(n.Value)
			if err != nil {
				return err
			}
			buf.Write(b)
		} else {
			buf.WriteString(n.Value)
		}
	default:
		return fmt.Errorf("unexpected YAML node kind %d", n.Kind)
	}
	return nil
}
