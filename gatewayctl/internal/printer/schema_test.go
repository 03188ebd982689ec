package printer

import (
	"bytes"
	"encoding/json"
	"math"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/known/timestamppb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

func TestMarshalMessageSchema(t *testing.T) {
	at := timestamppb.New(time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC))
	tests := []struct {
		name string
		m    proto.Message
		want string
		// part: want is only part of the output.
		part bool
	}{
		{
			name: "enum words and numbers",
			m: &meridianv1.ListDataplanesResponse{CurrentVersion: 7, Dataplanes: []*meridianv1.DataplaneStatus{{
				Node:  &meridianv1.Node{Id: "dp-1", Labels: map[string]string{"zone": "a", "env": "prod"}},
				State: meridianv1.DataplaneState_DATAPLANE_STATE_SYNCED, AppliedVersion: 7, LastSeen: at,
			}}},
			want: `{"dataplanes":[{"node":{"id":"dp-1","labels":{"env":"prod","zone":"a"},"buildVersion":"","listenAddress":""},` +
				`"peerAddress":"","controlplane":"","state":"synced","appliedVersion":7,"appliedHash":"","lastNack":null,` +
				`"lastSeen":"2026-05-01T12:00:00Z","connectedAt":null,"connected":false}],"currentVersion":7}`,
		},
		{
			name: "every change action",
			m: &meridianv1.RollbackResponse{Version: 9, RestoredVersion: 6, Changes: []*meridianv1.Change{
				{Action: meridianv1.ChangeAction_CHANGE_ACTION_CREATE},
				{Action: meridianv1.ChangeAction_CHANGE_ACTION_UPDATE},
				{Action: meridianv1.ChangeAction_CHANGE_ACTION_DELETE},
				{Action: meridianv1.ChangeAction_CHANGE_ACTION_UNCHANGED},
				{},
				{Action: 42},
			}},
			want: `{"version":9,"restoredVersion":6,"changes":[` +
				`{"action":"create","kind":"","name":"","diff":""},{"action":"update","kind":"","name":"","diff":""},` +
				`{"action":"delete","kind":"","name":"","diff":""},{"action":"unchanged","kind":"","name":"","diff":""},` +
				`{"action":"unspecified","kind":"","name":"","diff":""},{"action":42,"kind":"","name":"","diff":""}]}`,
		},
		{
			name: "the largest version keeps every digit",
			m:    &meridianv1.DeleteResponse{Version: math.MaxUint64},
			want: `{"version":18446744073709551615}`,
		},
		{
			name: "strings are not HTML-escaped",
			m:    &meridianv1.AuditRecord{Target: "<a&b>", Message: "tab\there \"q\""},
			want: `{"time":null,"principal":"","role":"","method":"","target":"<a&b>","outcome":"","version":0,` +
				`"peerAddress":"","message":"tab\there \"q\"","controlplane":""}`,
		},
		{
			name: "resource enums are the configuration words",
			m: &meridianv1.UpstreamSpec{Scheme: meridianv1.Scheme_SCHEME_H2C,
				LoadBalancer: &meridianv1.LoadBalancer{Policy: meridianv1.LoadBalancerPolicy_LOAD_BALANCER_POLICY_LEAST_REQUEST}},
			want: `"policy":"least_request"`, part: true,
		},
		{name: "scheme word", m: &meridianv1.UpstreamSpec{Scheme: meridianv1.Scheme_SCHEME_H2C}, want: `"scheme":"h2c"`, part: true},
		{name: "64-bit wrapper", m: wrapperspb.UInt64(5), want: `5`},
		{name: "timestamp", m: at, want: `"2026-05-01T12:00:00Z"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := MarshalMessage(tt.m)
			if err != nil {
				t.Fatal(err)
			}
			if !json.Valid(got) {
				t.Fatalf("not JSON: %s", got)
			}
			if match := string(got) == tt.want || tt.part && strings.Contains(string(got), tt.want); !match {
				t.Errorf("got\n%s\nwant\n%s", got, tt.want)
			}
		})
	}
}

// TestMarshalMessageLossless reads the schema back into the message: the
// words and numbers carry everything protojson's names and strings did.
func TestMarshalMessageLossless(t *testing.T) {
	at := func(s int64) *timestamppb.Timestamp {
		return timestamppb.New(time.Unix(1777636800+s, 250_000_000).UTC())
	}
	msgs := []proto.Message{
		&meridianv1.ListDataplanesResponse{CurrentVersion: math.MaxUint64, Dataplanes: []*meridianv1.DataplaneStatus{
			{Node: &meridianv1.Node{Id: "a", Labels: map[string]string{"k": "v"}}, State: meridianv1.DataplaneState_DATAPLANE_STATE_NACKED,
				AppliedVersion: 1 << 60, LastNack: &meridianv1.Nack{Version: 3, Error: &meridianv1.ConfigError{Field: "spec"}, Time: at(1)},
				LastSeen: at(2), ConnectedAt: at(3), Connected: true},
			{State: meridianv1.DataplaneState_DATAPLANE_STATE_DISCONNECTED},
			{State: meridianv1.DataplaneState_DATAPLANE_STATE_STALE},
			{},
		}},
		&meridianv1.HistoryResponse{Entries: []*meridianv1.HistoryEntry{{Version: 7, Time: at(0), Author: "x\u2028y", ResourceCount: 3,
			Changes: []*meridianv1.Change{{Action: meridianv1.ChangeAction_CHANGE_ACTION_UPDATE, Kind: "Route", Name: "r"}}}}},
		&meridianv1.ListAuditResponse{Records: []*meridianv1.AuditRecord{{Time: at(0), Version: 9, Message: "<&>\x1b"}}},
		&meridianv1.CreateJoinTokenResponse{Token: "t", Info: &meridianv1.JoinToken{Id: "i", MaxUses: 3, Labels: map[string]string{"a": "b"}}},
		&meridianv1.Resource{Kind: &meridianv1.Resource_RateLimit{RateLimit: &meridianv1.RateLimit{Spec: &meridianv1.RateLimitSpec{
			Limit: 100, Burst: math.MaxUint64, Scope: meridianv1.RateLimitScope_RATE_LIMIT_SCOPE_GLOBAL,
			Algorithm: meridianv1.RateLimitAlgorithm_RATE_LIMIT_ALGORITHM_GCRA}}}},
	}
	for _, m := range msgs {
		data, err := MarshalMessage(m)
		if err != nil {
			t.Fatal(err)
		}
		for _, name := range []string{"_STATE_", "CHANGE_ACTION", "RATE_LIMIT_"} {
			if bytes.Contains(data, []byte(name)) {
				t.Errorf("%s still names an enum value in full: %s", data, name)
			}
		}
		if bytes.Contains(data, []byte(`"version":"`)) {
			t.Errorf("a version is still a string: %s", data)
		}
		back := m.ProtoReflect().New().Interface()
		if err := unmarshalSchema(data, back); err != nil {
			t.Fatalf("read back %s: %v", data, err)
		}
		if !proto.Equal(back, m) {
			t.Errorf("read back\n%v\nwant\n%v\nfrom %s", back, m, data)
		}
	}
}

// unmarshalSchema is MarshalMessage's inverse: enum words become value
// names again, and protojson reads the rest (it takes numbers for 64-bit
// integers).
func unmarshalSchema(data []byte, m proto.Message) error {
	v, err := decodeOrdered(data)
	if err != nil {
		return err
	}
	v = unconvertMessage(m.ProtoReflect().Descriptor(), v)
	var buf bytes.Buffer
	if err := encodeOrdered(&buf, v); err != nil {
		return err
	}
	return protojson.Unmarshal(buf.Bytes(), m)
}

func unconvertMessage(md protoreflect.MessageDescriptor, v any) any {
	obj, ok := v.(*object)
	if !ok || md.FullName().Parent() == "google.protobuf" {
		return v
	}
	for i, m := range obj.members {
		fd := md.Fields().ByJSONName(m.key)
		if fd == nil {
			continue
		}
		one := func(v any) any {
			switch {
			case fd.Enum() != nil:
				if w, ok := v.(string); ok {
					return enumPrefix(fd.Enum()) + strings.ToUpper(w)
				}
			case fd.Message() != nil && !fd.IsMap():
				return unconvertMessage(fd.Message(), v)
			case fd.IsMap() && fd.MapValue().Message() != nil:
				return unconvertMessage(fd.MapValue().Message(), v)
			}
			return v
		}
		switch val := m.value.(type) {
		case []any:
			for j := range val {
				val[j] = one(val[j])
			}
		default:
			if !fd.IsMap() || fd.MapValue().Message() == nil {
				obj.members[i].value = one(val)
			}
		}
	}
	return obj
}

// TestEnumWords checks every enum of the API: each value has a distinct
// lower-case word that leads back to it, and the zero value is
// "unspecified".
func TestEnumWords(t *testing.T) {
	n := 0
	protoregistry.GlobalFiles.RangeFilesByPackage("meridian.v1", func(fd protoreflect.FileDescriptor) bool {
		for i := range fd.Enums().Len() {
			ed := fd.Enums().Get(i)
			seen := map[string]bool{}
			for j := range ed.Values().Len() {
				v := ed.Values().Get(j)
				w := EnumWord(ed, v.Number())
				if w == "" || w != strings.ToLower(w) || seen[w] || strings.Contains(w, strings.ToLower(string(ed.Name()))) {
					t.Errorf("%s: word %q", v.FullName(), w)
				}
				if v.Number() == 0 && w != "unspecified" {
					t.Errorf("%s: zero value word %q, want unspecified", v.FullName(), w)
				}
				if got := ed.Values().ByName(protoreflect.Name(enumPrefix(ed) + strings.ToUpper(w))); got != v {
					t.Errorf("%s: word %q does not lead back to it", v.FullName(), w)
				}
				seen[w] = true
				n++
			}
		}
		return true
	})
	if n < 20 {
		t.Errorf("checked only %d enum values; is meridian/v1 registered?", n)
	}
	if got := EnumWord(meridianv1.DataplaneState(0).Descriptor(), 99); got != "99" {
		t.Errorf("unknown number: %q", got)
	}
}
