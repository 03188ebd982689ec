package config

import (
	"fmt"
	"strings"

	"google.golang.org/protobuf/reflect/protoreflect"

	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

// A route's spec.upgrades is the allow-list of protocols a client may
// switch to through it (the Upgrade header, RFC 9110 section 7.8).
//
// A protobuf repeated field cannot tell an empty list from an unset one,
// neither on the wire to the data planes nor in storage, so "no upgrades"
// is spelt with the one entry UpgradeNone, and an explicit empty list in
// YAML is refused by Decode rather than silently read as the default.

// UpgradeNone, as the only entry of spec.upgrades, allows no upgrade.
const UpgradeNone = "none"

// UpgradeH2C is the HTTP/2-over-cleartext upgrade token. It is never
// tunnelled: a request offering it is forwarded as plain HTTP/1.1.
const UpgradeH2C = "h2c"

// defaultUpgrades is what a route without spec.upgrades allows.
var defaultUpgrades = []string{"websocket"}

// RouteUpgrades returns the protocols a client may switch to through a
// route with spec s: spec.upgrades, [websocket] when it is unset, none
// (an empty, non-nil slice) for [none]. The names are lower-case; the
// caller must not modify the slice.
func RouteUpgrades(s *meridianv1.RouteSpec) []string {
	u := s.GetUpgrades()
	switch {
	case len(u) == 0:
		return defaultUpgrades
	case len(u) == 1 && u[0] == UpgradeNone:
		return []string{}
	}
	return u
}

// upgrades checks spec.upgrades: RFC 9110 tokens in lower case (as the
// protocol names are matched, case-insensitively, against them), without a
// version, no duplicates, never h2c, and none only alone.
func (v *validator) upgrades(list []string) {
	seen := map[string]bool{}
	for i, u := range list {
		p := fmt.Sprintf("spec.upgrades[%d]", i)
		name, _, versioned := strings.Cut(u, "/")
		switch {
		case versioned && isToken(name):
			v.errf(p, "%q: write the protocol name without a version (%q); every version of it is allowed", u, name)
		case !isToken(u):
			v.errf(p, "%q is not a protocol name (an RFC 9110 token such as websocket)", u)
		case u != strings.ToLower(u):
			v.errf(p, "protocol names are lower-case: %q", strings.ToLower(u))
		case u == UpgradeH2C:
			v.errf(p, "h2c upgrades are never tunnelled (a request offering one is forwarded as plain HTTP/1.1); for HTTP/2 in clear text to the targets, set the upstream's spec.scheme to h2c")
		case seen[u]:
			v.errf(p, "duplicate protocol %q", u)
		case u == UpgradeNone && len(list) > 1:
			v.errf(p, "none allows no upgrades and must be the only entry")
		}
		seen[u] = true
	}
}

// emptyListMeanings names the list fields where YAML's explicit empty list
// would be read as unset, with a different meaning than a reader expects;
// Decode refuses it with this message.
var emptyListMeanings = map[protoreflect.FullName]string{
	(&meridianv1.RouteSpec{}).ProtoReflect().Descriptor().Fields().ByName("upgrades").FullName(): "an empty list reads as unset, which allows the default [websocket]; write [none] to allow no upgrades, or leave the field out",
}
