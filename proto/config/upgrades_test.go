package config

import (
	"errors"
	"slices"
	"testing"

	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

func TestRouteUpgrades(t *testing.T) {
	tests := []struct {
		name string
		in   []string
		want []string
	}{
		{"unset is websocket", nil, []string{"websocket"}},
		{"empty is unset", []string{}, []string{"websocket"}},
		{"none", []string{"none"}, []string{}},
		{"as listed", []string{"foo"}, []string{"foo"}},
		{"websocket and another", []string{"websocket", "foo"}, []string{"websocket", "foo"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := RouteUpgrades(&meridianv1.RouteSpec{Upgrades: tt.in})
			if !slices.Equal(got, tt.want) || got == nil {
				t.Errorf("RouteUpgrades(%q) = %#v, want %q", tt.in, got, tt.want)
			}
		})
	}
}

// An explicit empty list cannot travel as such (a protobuf repeated field
// has no presence), so YAML that spells one is refused, not read as the
// default that allows WebSocket.
func TestDecodeRefusesEmptyUpgrades(t *testing.T) {
	const head = "apiVersion: meridian/v1\nkind: Route\nmetadata: {name: r}\nspec:\n  match: {paths: [{prefix: /}]}\n  upstream: u\n"
	for in, line := range map[string]string{"  upgrades: []\n": "7", "  upgrades:\n    []\n": "8"} {
		_, err := Decode("f.yaml", []byte(head+in))
		var list ErrorList
		if !errors.As(err, &list) {
			t.Fatalf("%q: error %v is not an ErrorList", in, err)
		}
		want := "f.yaml:" + line + `: Route "r": spec.upgrades: an empty list reads as unset, which allows the default [websocket]; write [none] to allow no upgrades, or leave the field out`
		if len(list) != 1 || list[0].Error() != want {
			t.Errorf("%q: errors %v, want one: %s", in, list, want)
		}
	}
	// null is unset, as for every field; [none] round-trips.
	for in, want := range map[string][]string{"  upgrades: null\n": nil, "  upgrades: [none]\n": {"none"}} {
		docs, err := Decode("f.yaml", []byte(head+in))
		if err != nil {
			t.Fatalf("%q: %v", in, err)
		}
		spec := docs[0].Resource.GetRoute().GetSpec()
		if !slices.Equal(spec.GetUpgrades(), want) {
			t.Errorf("%q: upgrades = %q, want %q", in, spec.GetUpgrades(), want)
		}
		out, err := MarshalYAML(Resources(docs)...)
		if err != nil {
			t.Fatal(err)
		}
		again, err := Decode("again.yaml", out)
		if err != nil {
			t.Fatalf("%q: re-decoding the encoded form: %v\n%s", in, err, out)
		}
		if got := again[0].Resource.GetRoute().GetSpec().GetUpgrades(); !slices.Equal(got, want) {
			t.Errorf("%q: after a round trip upgrades = %q, want %q", in, got, want)
		}
	}
}
