package config

import (
	"errors"
	"os"
	"strings"
	"testing"

	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

func write(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

const baseUpstream = `apiVersion: meridian/v1
kind: Upstream
metadata: {name: users}
spec: {targets: [{address: 127.0.0.1:9001}]}
`

// rsa1024 is a public key too weak for the data plane, indented for a
// YAML block scalar.
const rsa1024 = `        -----BEGIN PUBLIC KEY-----
        MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQC0x7DUcIcZGuK3sYZub+vqNKyH
        3mJlVsgPrUufkcTtbeCoJ11ncQpqeFpeD713enjiVg3TBl9ka7HIPP5gwB2yQF9d
        xZUaJIlvnuDeZjf3jhmWSW8TRewYsg1DD1UgFrAVOvWoo3jtP9pMOD0Ah4Sfj+9y
        EQb/Om5fc7KWubruSQIDAQAB
        -----END PUBLIC KEY-----
`

// upstreamHealth is baseUpstream with a health check on line 6.
func upstreamHealth(hc string) string {
	return "apiVersion: meridian/v1\nkind: Upstream\nmetadata: {name: users}\nspec:\n  targets: [{address: 127.0.0.1:9001}]\n  healthCheck: " + hc + "\n"
}

func route(name, spec string) string {
	return "---\napiVersion: meridian/v1\nkind: Route\nmetadata: {name: " + name + "}\nspec:\n" + spec
}

func TestValidateErrors(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want []string // every error, in order
	}{
		{"valid", baseUpstream + route("r", "  match: {paths: [{prefix: /}]}\n  upstream: users\n"), nil},
		{"missing upstream reference", baseUpstream + route("r", "  match: {paths: [{prefix: /}]}\n  upstream: nope\n"),
			[]string{`v.yaml:11: Route "r": spec.upstream: Upstream "nope" does not exist`}},
		{"bad template", baseUpstream + route("r", "  match:\n    paths:\n      - exact: /ok\n      - template: /users/{id\n  upstream: users\n"),
			[]string{`v.yaml:13: Route "r": spec.match.paths[1].template: segment "{id": a parameter must be a whole segment such as {id}`}},
		{"bad regex", baseUpstream + route("r", "  match: {paths: [{regex: '/a(b'}]}\n  upstream: users\n"),
			[]string{`v.yaml:10: Route "r": spec.match.paths[0].regex: invalid regular expression: missing closing ): ` + "`/a(b`"}},
		{"duplicate name", baseUpstream + "---\n" + baseUpstream,
			[]string{`v.yaml:8: Upstream "users": metadata.name: duplicate Upstream "users" (resource 1 has the same name)`}},
		{"conflicting routes", baseUpstream +
			route("a", "  match: {methods: [GET], paths: [{template: '/u/{id}'}]}\n  upstream: users\n") +
			route("b", "  match: {methods: [GET, POST], paths: [{template: '/u/{uid}'}]}\n  upstream: users\n"),
			[]string{`v.yaml:17: Route "b": spec.match.paths[0]: host *, method GET and this path match exactly the same requests as Route "a"; give one a different match or priority`}},
		{"same path different priority is fine", baseUpstream +
			route("a", "  match: {paths: [{prefix: /}]}\n  upstream: users\n") +
			route("b", "  match: {paths: [{prefix: /}]}\n  upstream: users\n  priority: 1\n"), nil},
		{"ranges", baseUpstream + "---\napiVersion: meridian/v1\nkind: CircuitBreaker\nmetadata: {name: cb}\nspec:\n  window: 10s\n  bucket: 3s\n  trip: {errorRate: 1.5}\n  open: {jitter: 2}\n",
			[]string{
				`v.yaml:11: CircuitBreaker "cb": spec.bucket: window (10s) must be a whole number of buckets`,
				`v.yaml:12: CircuitBreaker "cb": spec.trip.errorRate: must be between 0 and 1`,
				`v.yaml:13: CircuitBreaker "cb": spec.open.jitter: must be between 0 and 1`,
			}},
		{"jwt none and secrets", "apiVersion: meridian/v1\nkind: JWTProvider\nmetadata: {name: j}\nspec:\n  algorithms: [RS256, NoNe]\n  keys: [{kid: a, secretEnv: '1BAD'}]\n",
			[]string{
				`v.yaml:5: JWTProvider "j": spec.algorithms[1]: "none" is never accepted`,
				`v.yaml:6: JWTProvider "j": spec.keys[0].secretEnv: "1BAD" is not an environment variable name`,
			}},
		{"weak RSA key", "apiVersion: meridian/v1\nkind: JWTProvider\nmetadata: {name: j}\nspec:\n  algorithms: [RS256]\n  keys:\n    - kid: a\n      publicKeyPEM: |\n" + rsa1024,
			[]string{`v.yaml:8: JWTProvider "j": spec.keys[0].publicKeyPEM: RSA keys must be 2048 to 8192 bits, this one has 1024`}},
		{"rate limit", "apiVersion: meridian/v1\nkind: RateLimit\nmetadata: {name: rl}\nspec: {period: 0s, key: [ip]}\n",
			[]string{
				`v.yaml:4: RateLimit "rl": spec.limit: required, at least 1`,
				`v.yaml:4: RateLimit "rl": spec.period: must be greater than zero`,
				`v.yaml:4: RateLimit "rl": spec.key[0]: "ip" is not one of client_ip, route, consumer, header:<name>, claim:<name>`,
			}},
		{"rate limit queue and batch", "apiVersion: meridian/v1\nkind: RateLimit\nmetadata: {name: rl}\nspec:\n  algorithm: sliding_window\n  limit: 10\n  period: 1s\n  key: [route]\n  queue: {maxWait: 2m}\n  localBatch: 20\n",
			[]string{
				`v.yaml:9: RateLimit "rl": spec.queue.maxWait: must be at most 1m0s`,
				`v.yaml:9: RateLimit "rl": spec.queue: needs algorithm token_bucket or gcra, which can reserve a later turn`,
				`v.yaml:10: RateLimit "rl": spec.localBatch: applies to scope global only`,
			}},
		{"rate limit batch over limit", "apiVersion: meridian/v1\nkind: RateLimit\nmetadata: {name: rl}\nspec: {scope: global, limit: 10, period: 1s, key: [route], localBatch: 20}\n",
			[]string{`v.yaml:4: RateLimit "rl": spec.localBatch: must not exceed limit (10)`}},
		{"upstream fields", "apiVersion: meridian/v1\nkind: Upstream\nmetadata: {name: Bad Name}\nspec:\n  targets: [{address: localhost}]\n  loadBalancer: {policy: consistent_hash}\n",
			[]string{
				`v.yaml:3: Upstream "Bad Name": metadata.name: "Bad Name" is not a valid name (letters, digits, '.', '_' and '-', starting and ending with a letter or digit)`,
				`v.yaml:5: Upstream "Bad Name": spec.targets[0].address: "localhost" is not host:port`,
				`v.yaml:6: Upstream "Bad Name": spec.loadBalancer.hashOn: required with policy consistent_hash (header:<name>, cookie:<name>, client_ip, claim:<name> or param:<name>)`,
			}},
		{"health check interval at the floor, timeout unset", upstreamHealth("{active: {interval: 100ms}}"), nil},
		{"health check timeout equal to interval", upstreamHealth("{active: {interval: 1s, timeout: 1s}}"), nil},
		{"health check timeout equal to the default interval", upstreamHealth("{active: {timeout: 5s}}"), nil},
		{"health check defaults", upstreamHealth("{active: {}, passive: {}}"), nil},
		{"health check interval below the floor", upstreamHealth("{active: {interval: 1ns}}"),
			[]string{`v.yaml:6: Upstream "users": spec.healthCheck.active.interval: 1ns is below the 100ms floor (a probe every interval per target)`}},
		{"health check interval just below the floor", upstreamHealth("{active: {interval: 99ms, timeout: 50ms}}"),
			[]string{`v.yaml:6: Upstream "users": spec.healthCheck.active.interval: 99ms is below the 100ms floor (a probe every interval per target)`}},
		{"health check zero interval and timeout", upstreamHealth("{active: {interval: 0s, timeout: 0s}}"),
			[]string{
				`v.yaml:6: Upstream "users": spec.healthCheck.active.interval: must be greater than zero`,
				`v.yaml:6: Upstream "users": spec.healthCheck.active.timeout: must be greater than zero`,
			}},
		{"health check negative interval and timeout", upstreamHealth("{active: {interval: -1s, timeout: -1s}}"),
			[]string{
				`v.yaml:6: Upstream "users": spec.healthCheck.active.interval: must be greater than zero`,
				`v.yaml:6: Upstream "users": spec.healthCheck.active.timeout: must be greater than zero`,
			}},
		{"health check timeout over interval", upstreamHealth("{active: {interval: 1s, timeout: 2s}}"),
			[]string{`v.yaml:6: Upstream "users": spec.healthCheck.active.timeout: 2s must not exceed interval (1s)`}},
		{"health check timeout over the default interval", upstreamHealth("{active: {timeout: 10s}}"),
			[]string{`v.yaml:6: Upstream "users": spec.healthCheck.active.timeout: 10s must not exceed interval (5s, the default)`}},
		{"health check zero ejection time", upstreamHealth("{passive: {consecutiveFailures: 3, ejectionTime: 0s}}"),
			[]string{`v.yaml:6: Upstream "users": spec.healthCheck.passive.ejectionTime: must be greater than zero`}},
		{"health check negative ejection time", upstreamHealth("{passive: {ejectionTime: -30s, maxEjectionPercent: 101}}"),
			[]string{
				`v.yaml:6: Upstream "users": spec.healthCheck.passive.ejectionTime: must be greater than zero`,
				`v.yaml:6: Upstream "users": spec.healthCheck.passive.maxEjectionPercent: must be at most 100`,
			}},
		{"rewrite param not captured", baseUpstream + route("r", "  match: {paths: [{prefix: /a}]}\n  upstream: users\n  rewrite: {path: '/v2/{id}'}\n"),
			[]string{`v.yaml:12: Route "r": spec.rewrite.path: uses {id}, which spec.match.paths[0] does not capture`}},
		{"lower-case method and bad host", baseUpstream + route("r", "  match: {hosts: ['api.example.com:80'], methods: [get], paths: [{exact: x}]}\n  upstream: users\n"),
			[]string{
				`v.yaml:10: Route "r": spec.match.hosts[0]: "api.example.com:80" is not a host name or a wildcard such as *.example.com (no port, no scheme)`,
				`v.yaml:10: Route "r": spec.match.methods[0]: methods are upper-case: "GET"`,
				`v.yaml:10: Route "r": spec.match.paths[0].exact: "x" must start with /`,
			}},
		{"upgrades websocket and another", baseUpstream + upgradesRoute("[websocket, foo]"), nil},
		{"upgrades without websocket", baseUpstream + upgradesRoute("[foo]"), nil},
		{"upgrades none", baseUpstream + upgradesRoute("[none]"), nil},
		{"upgrades token characters", baseUpstream + upgradesRoute("[x-proto.2, \"a~b\"]"), nil},
		{"upgrades h2c", baseUpstream + upgradesRoute("[websocket, h2c]"),
			[]string{`v.yaml:12: Route "r": spec.upgrades[1]: h2c upgrades are never tunnelled (a request offering one is forwarded as plain HTTP/1.1); for HTTP/2 in clear text to the targets, set the upstream's spec.scheme to h2c`}},
		{"upgrades upper-case", baseUpstream + upgradesRoute("[WebSocket]"),
			[]string{`v.yaml:12: Route "r": spec.upgrades[0]: protocol names are lower-case: "websocket"`}},
		{"upgrades upper-case h2c", baseUpstream + upgradesRoute("[H2C]"),
			[]string{`v.yaml:12: Route "r": spec.upgrades[0]: protocol names are lower-case: "h2c"`}},
		{"upgrades duplicate", baseUpstream + upgradesRoute("[websocket, foo, websocket]"),
			[]string{`v.yaml:12: Route "r": spec.upgrades[2]: duplicate protocol "websocket"`}},
		{"upgrades not tokens", baseUpstream + upgradesRoute("[\"\", \"web socket\", \"a,b\", \"tls(1)\"]"),
			[]string{
				`v.yaml:12: Route "r": spec.upgrades[0]: "" is not a protocol name (an RFC 9110 token such as websocket)`,
				`v.yaml:12: Route "r": spec.upgrades[1]: "web socket" is not a protocol name (an RFC 9110 token such as websocket)`,
				`v.yaml:12: Route "r": spec.upgrades[2]: "a,b" is not a protocol name (an RFC 9110 token such as websocket)`,
				`v.yaml:12: Route "r": spec.upgrades[3]: "tls(1)" is not a protocol name (an RFC 9110 token such as websocket)`,
			}},
		{"upgrades with a version", baseUpstream + upgradesRoute("[websocket/13]"),
			[]string{`v.yaml:12: Route "r": spec.upgrades[0]: "websocket/13": write the protocol name without a version ("websocket"); every version of it is allowed`}},
		{"upgrades none with others", baseUpstream + upgradesRoute("[none, websocket]"),
			[]string{`v.yaml:12: Route "r": spec.upgrades[0]: none allows no upgrades and must be the only entry`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			docs, err := Decode("v.yaml", []byte(tt.in))
			if err != nil {
				t.Fatalf("decode: %v", err)
			}
			err = ValidateDocuments(docs)
			var got []string
			var list ErrorList
			if errors.As(err, &list) {
				for _, e := range list {
					got = append(got, e.Error())
				}
			} else if err != nil {
				t.Fatalf("error %T is not an ErrorList", err)
			}
			if strings.Join(got, "\n") != strings.Join(tt.want, "\n") {
				t.Errorf("errors\n got: %s\nwant: %s", strings.Join(got, "\n      "), strings.Join(tt.want, "\n      "))
			}
			// Without documents, the same problems are found, without lines.
			plain := Validate(Resources(docs))
			if (plain == nil) != (len(tt.want) == 0) {
				t.Errorf("Validate disagrees with ValidateDocuments: %v", plain)
			}
		})
	}
}

func TestHashIgnoresOrder(t *testing.T) {
	docs, err := Load("testdata/full.yaml")
	if err != nil {
		t.Fatal(err)
	}
	rs := Resources(docs)
	rev := make([]*meridianv1.Resource, len(rs))
	for i, r := range rs {
		rev[len(rs)-1-i] = r
	}
	if Hash(rs) != Hash(rev) {
		t.Error("hash depends on order")
	}
	if Kind(rs[0]) != KindUpstream {
		t.Error("Hash reordered its input")
	}
	if Hash(rs) == Hash(rs[1:]) {
		t.Error("hash ignores a resource")
	}
}

func TestParseTemplate(t *testing.T) {
	tests := []struct {
		in, shape, params, err string
	}{
		{in: "/users/{id}/orders/{orderId}", shape: "/users/{}/orders/{}", params: "id,orderId"},
		{in: "/files/{path...}", shape: "/files/{...}", params: "path"},
		{in: "/a/", shape: "/a/"},
		{in: "users", err: `"users" must start with /`},
		{in: "/a//b", err: `"/a//b" has an empty segment`},
		{in: "/a/{x...}/b", err: `segment "{x...}": a catch-all parameter must be the last segment`},
		{in: "/a/{x}/{x}", err: `parameter {x} appears twice`},
		{in: "/a/x{y}", err: `segment "x{y}": a parameter must be a whole segment such as {id}`},
		{in: "/a/{1x}", err: `segment "{1x}": "1x" is not a parameter name (letters, digits, _)`},
	}
	for _, tt := range tests {
		tpl, err := ParseTemplate(tt.in)
		if tt.err != "" {
			if err == nil || err.Error() != tt.err {
				t.Errorf("%s: err = %v, want %s", tt.in, err, tt.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", tt.in, err)
			continue
		}
		if tpl.Shape() != tt.shape || strings.Join(tpl.Params(), ",") != tt.params {
			t.Errorf("%s: shape %s params %v", tt.in, tpl.Shape(), tpl.Params())
		}
	}
}

func TestParseKind(t *testing.T) {
	for in, want := range map[string]string{"route": KindRoute, "Routes": KindRoute, "jwtprovider": KindJWTProvider, "RATELIMITS": KindRateLimit} {
		if got, err := ParseKind(in); err != nil || got != want {
			t.Errorf("ParseKind(%q) = %q, %v", in, got, err)
		}
	}
	if _, err := ParseKind("service"); err == nil {
		t.Error("ParseKind accepted an unknown kind")
	}
}

// upgradesRoute is a valid route with spec.upgrades on line 12 (after
// baseUpstream).
func upgradesRoute(list string) string {
	return route("r", "  match: {paths: [{prefix: /}]}\n  upstream: users\n  upgrades: "+list+"\n")
}
