package config

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

func TestLoadFullExample(t *testing.T) {
	docs, err := Load("testdata/full.yaml")
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	if err := ValidateDocuments(docs); err != nil {
		t.Fatalf("ValidateDocuments: %v", err)
	}
	var kinds []string
	for _, d := range docs {
		kinds = append(kinds, Kind(d.Resource))
	}
	if got, want := strings.Join(kinds, ","), "Upstream,Route,RateLimit,CircuitBreaker,JWTProvider"; got != want {
		t.Fatalf("kinds = %s, want %s", got, want)
	}
	rt := docs[1].Resource.GetRoute().GetSpec()
	if got := rt.GetTimeout().AsDuration(); got != 5*time.Second {
		t.Errorf("route timeout = %v, want 5s", got)
	}
	if got := rt.GetMatch().GetPaths()[0].GetTemplate(); got != "/api/v1/users/{id}" {
		t.Errorf("template = %q", got)
	}
	if got := rt.GetRetry().GetOn(); strings.Join(got, ",") != "connect_failure,reset,502,503,504" {
		t.Errorf("retry.on = %v", got)
	}
	us := docs[0].Resource.GetUpstream()
	if us.GetSpec().GetLoadBalancer().GetPolicy() != meridianv1.LoadBalancerPolicy_LOAD_BALANCER_POLICY_ROUND_ROBIN {
		t.Errorf("policy = %v", us.GetSpec().GetLoadBalancer().GetPolicy())
	}
	if us.GetMetadata().GetLabels()["team"] != "accounts" {
		t.Errorf("labels = %v", us.GetMetadata().GetLabels())
	}
	rl := docs[2].Resource.GetRateLimit().GetSpec()
	if rl.GetAlgorithm() != meridianv1.RateLimitAlgorithm_RATE_LIMIT_ALGORITHM_SLIDING_WINDOW || rl.GetOnStoreFailure() != meridianv1.StoreFailurePolicy_STORE_FAILURE_POLICY_LOCAL {
		t.Errorf("rate limit enums = %v %v", rl.GetAlgorithm(), rl.GetOnStoreFailure())
	}
	cb := docs[3].Resource.GetCircuitBreaker().GetSpec()
	if cb.GetTrip().GetLatency().GetQuantile() != 0.95 || cb.GetOpen().GetMultiplier() != 2 {
		t.Errorf("breaker numbers = %v", cb)
	}
	jwt := docs[4].Resource.GetJwtProvider().GetSpec()
	if jwt.GetJwksUri() == "" || !strings.Contains(jwt.GetKeys()[0].GetPublicKeyPem(), "BEGIN PUBLIC KEY") {
		t.Errorf("jwt fields with explicit JSON names not decoded: %v", jwt)
	}
}

func TestRoundTrip(t *testing.T) {
	docs, err := Load("testdata/full.yaml")
	if err != nil {
		t.Fatal(err)
	}
	rs := Resources(docs)
	out, err := MarshalYAML(rs...)
	if err != nil {
		t.Fatal(err)
	}
	again, err := Decode("roundtrip.yaml", out)
	if err != nil {
		t.Fatalf("decode of encoded output: %v\n%s", err, out)
	}
	if len(again) != len(rs) {
		t.Fatalf("got %d resources back, want %d", len(again), len(rs))
	}
	for i := range rs {
		if !proto.Equal(rs[i], again[i].Resource) {
			t.Errorf("resource %d differs after round trip:\n%v\n%v", i, rs[i], again[i].Resource)
		}
	}
	js, err := MarshalJSON(rs...)
	if err != nil {
		t.Fatal(err)
	}
	var arr []map[string]any
	if err := json.Unmarshal(js, &arr); err != nil {
		t.Fatalf("MarshalJSON is not JSON: %v\n%s", err, js)
	}
	if len(arr) != len(rs) || arr[1]["kind"] != "Route" {
		t.Fatalf("unexpected JSON shape: %s", js)
	}
	if arr[1]["spec"].(map[string]any)["timeout"] != "5s" {
		t.Errorf("JSON duration = %v, want \"5s\"", arr[1]["spec"].(map[string]any)["timeout"])
	}
}

func TestDecodeErrors(t *testing.T) {
	const head = "apiVersion: meridian/v1\nkind: Upstream\nmetadata: {name: u}\n"
	tests := []struct {
		name string
		in   string
		want string // the whole first error
	}{
		{"unknown field", head + "spec:\n  targets: [{address: a:1}]\n  shceme: http\n",
			`f.yaml:6: Upstream "u": spec.shceme: unknown field (want one of targets, scheme, loadBalancer, healthCheck, connectionPool, timeouts, circuitBreaker, tls)`},
		{"wrong type", head + "spec:\n  targets: {address: a:1}\n",
			`f.yaml:5: Upstream "u": spec.targets: expected a list, got a mapping`},
		{"duplicate field", head + "spec:\n  scheme: http\n  scheme: https\n",
			`f.yaml:6: Upstream "u": spec.scheme: duplicate field`},
		{"bad enum", head + "spec:\n  scheme: HTTP\n",
			`f.yaml:5: Upstream "u": spec.scheme: unknown value "HTTP" (want one of http, https, h2c)`},
		{"bad duration", head + "spec:\n  timeouts: {connect: 5}\n",
			`f.yaml:5: Upstream "u": spec.timeouts.connect: expected a duration such as "250ms" or "5s", got an integer 5`},
		{"bad duration string", head + "spec:\n  timeouts: {connect: 5 seconds}\n",
			`f.yaml:5: Upstream "u": spec.timeouts.connect: invalid duration "5 seconds" (use a number with a unit: 250ms, 5s, 1m)`},
		{"negative uint", head + "spec:\n  targets: [{address: a:1, weight: -1}]\n",
			`f.yaml:5: Upstream "u": spec.targets[0].weight: expected a non-negative integer no larger than 4294967295, got -1`},
		{"string wanted", "apiVersion: meridian/v1\nkind: Route\nmetadata: {name: r}\nspec:\n  retry: {on: [502]}\n",
			`f.yaml:5: Route "r": spec.retry.on[0]: expected a string, got an integer 502; quote it: "502"`},
		{"two oneof members", "apiVersion: meridian/v1\nkind: Route\nmetadata: {name: r}\nspec:\n  match: {paths: [{exact: /a, prefix: /b}]}\n",
			`f.yaml:5: Route "r": spec.match.paths[0].prefix: only one of exact, prefix, template, regex may be set (exact is already)`},
		{"unknown kind", "apiVersion: meridian/v1\nkind: Service\nmetadata: {name: s}\nspec: {}\n",
			`f.yaml:2: document 1: kind: unknown kind "Service" (want one of CircuitBreaker, RateLimit, JWTProvider, Upstream, Route)`},
		{"bad apiVersion", "apiVersion: v2\nkind: Upstream\nmetadata: {name: u}\nspec: {}\n",
			`f.yaml:1: Upstream "u": apiVersion: unsupported apiVersion "v2" (want "meridian/v1")`},
		{"missing spec", "apiVersion: meridian/v1\nkind: Upstream\nmetadata: {name: u}\n",
			`f.yaml:1: Upstream "u": spec: required`},
		{"unknown top-level field", head + "spec: {}\nstatus: {}\n",
			`f.yaml:5: Upstream "u": status: unknown field (want apiVersion, kind, metadata, spec)`},
		{"second document", head + "spec: {}\n---\n" + head + "spec: {bogus: 1}\n",
			`f.yaml:9: Upstream "u": spec.bogus: unknown field (want one of targets, scheme, loadBalancer, healthCheck, connectionPool, timeouts, circuitBreaker, tls)`},
		{"not a mapping", "- a\n- b\n",
			`f.yaml:1: document 1: a resource must be a mapping with apiVersion, kind, metadata and spec, got a list`},
		{"syntax error", head + "spec:\n  targets: [\n",
			`f.yaml:5: document 1: invalid YAML: did not find expected node content`},
		{"alias", head + "spec:\n  scheme: &s http\n  circuitBreaker: *s\n",
			`f.yaml:6: Upstream "u": spec.circuitBreaker: YAML aliases are not supported`},
		{"duplicate map key", head + "spec: {}\n---\napiVersion: meridian/v1\nkind: Route\nmetadata: {name: r}\nspec:\n  headers: {request: {set: {A: x, A: y}}}\n",
			`f.yaml:10: Route "r": spec.headers.request.set[A]: duplicate key`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			docs, err := Decode("f.yaml", []byte(tt.in))
			if err == nil {
				t.Fatalf("no error; decoded %d documents", len(docs))
			}
			var list ErrorList
			if !errors.As(err, &list) {
				t.Fatalf("error %T is not an ErrorList", err)
			}
			if got := list[0].Error(); got != tt.want {
				t.Errorf("error\n got: %s\nwant: %s", got, tt.want)
			}
		})
	}
}

func TestLoadDirectoryAndErrorsFromAllFiles(t *testing.T) {
	dir := t.TempDir()
	write(t, dir+"/b.yaml", "apiVersion: meridian/v1\nkind: Upstream\nmetadata: {name: u}\nspec: {targets: [{address: 'a:1'}]}\n")
	write(t, dir+"/a.yml", "apiVersion: meridian/v1\nkind: RateLimit\nmetadata: {name: r}\nspec: {limit: 1, period: 1s, key: [route]}\n")
	write(t, dir+"/ignored.txt", "not yaml: [")
	docs, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(docs) != 2 || Kind(docs[0].Resource) != KindRateLimit {
		t.Fatalf("want a.yml then b.yaml, got %d docs", len(docs))
	}
	write(t, dir+"/c.yaml", "apiVersion: meridian/v1\nkind: Upstream\nmetadata: {name: x}\nspec: {nope: 1}\n")
	write(t, dir+"/d.yaml", "kind: Nope\n")
	_, err = Load(dir)
	var list ErrorList
	if !errors.As(err, &list) || len(list) < 2 {
		t.Fatalf("want errors from both bad files, got %v", err)
	}
	if !strings.HasPrefix(list[0].Error(), dir+"/c.yaml:4:") || !strings.HasPrefix(list[len(list)-1].Error(), dir+"/d.yaml:1:") {
		t.Errorf("errors do not name their files:\n%v", err)
	}
}

func TestLoadStdin(t *testing.T) {
	docs, err := load(strings.NewReader("apiVersion: meridian/v1\nkind: Upstream\nmetadata: {name: u}\nspec: {targets: [{address: 'a:1'}]}\n"), []string{"-"})
	if err != nil || len(docs) != 1 || docs[0].Pos.File != "<stdin>" {
		t.Fatalf("docs=%v err=%v", docs, err)
	}
}

// FuzzDecode holds the decoder to two promises: it never panics, and every
// error it reports names a line.
func FuzzDecode(f *testing.F) {
	f.Add([]byte("apiVersion: meridian/v1\nkind: Route\nmetadata: {name: r}\nspec: {match: {paths: [{prefix: /}]}, upstream: u}\n"))
	f.Add([]byte("apiVersion: meridian/v1\nkind: Upstream\nmetadata: {name: u}\nspec: {targets: [{address: 'a:1', weight: 3}], timeouts: {connect: 1s}}\n---\n"))
	f.Add([]byte("kind: CircuitBreaker\nspec: {trip: {errorRate: .5}, failureStatuses: [500]}\n"))
	f.Add([]byte("a: &x [*x]\n"))
	f.Add([]byte("{"))
	f.Fuzz(func(t *testing.T, data []byte) {
		docs, err := Decode("fuzz.yaml", data)
		if err != nil {
			var list ErrorList
			if !errors.As(err, &list) || len(list) == 0 {
				t.Fatalf("error is not a non-empty ErrorList: %v", err)
			}
			for _, e := range list {
				if e.Pos.Line <= 0 || e.Pos.File != "fuzz.yaml" {
					t.Fatalf("error without a position: %#v", e)
				}
			}
			// Partly decoded documents are validated too, for the rest
			// of the problems; that must not panic either.
			_ = Check(docs, list, Options{})
			return
		}
		// Whatever decodes must validate without panicking and encode back.
		_ = ValidateDocuments(docs)
		if _, err := MarshalYAML(Resources(docs)...); err != nil {
			t.Fatalf("decoded resources do not encode: %v", err)
		}
	})
}
