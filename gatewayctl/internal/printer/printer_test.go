package printer

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
	"google.golang.org/protobuf/types/known/durationpb"

	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

func TestParseFormat(t *testing.T) {
	tests := []struct {
		in      string
		want    Format
		wantErr bool
	}{
		{in: "table", want: Table},
		{in: "json", want: JSON},
		{in: "YAML", want: YAML},
		{in: "xml", wantErr: true},
		{in: "", wantErr: true},
	}
	for _, tt := range tests {
		got, err := ParseFormat(tt.in)
		if (err != nil) != tt.wantErr || got != tt.want {
			t.Errorf("ParseFormat(%q) = %q, %v; want %q, error %v", tt.in, got, err, tt.want, tt.wantErr)
		}
	}
}

func TestPrint(t *testing.T) {
	msg := &meridianv1.DeleteResponse{Version: 8}
	plain := struct {
		Name string `json:"name"`
		N    int    `json:"n"`
	}{Name: "x", N: 3}
	text := func(w io.Writer) error {
		_, err := io.WriteString(w, "human form\n")
		return err
	}
	tests := []struct {
		name   string
		format Format
		v      any
		want   string
	}{
		{name: "table calls text", format: Table, v: msg, want: "human form\n"},
		{name: "proto json", format: JSON, v: msg, want: "{\n  \"version\": 8\n}\n"},
		{name: "proto yaml", format: YAML, v: msg, want: "version: 8\n"},
		{name: "struct json", format: JSON, v: plain, want: "{\n  \"name\": \"x\",\n  \"n\": 3\n}\n"},
		{name: "struct yaml", format: YAML, v: plain, want: "name: x\nn: 3\n"},
		{name: "empty proto yaml", format: YAML, v: &meridianv1.ListDataplanesResponse{}, want: "dataplanes: []\ncurrentVersion: 0\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var buf bytes.Buffer
			if err := New(&buf, tt.format).Print(tt.v, text); err != nil {
				t.Fatal(err)
			}
			if buf.String() != tt.want {
				t.Errorf("got:\n%q\nwant:\n%q", buf.String(), tt.want)
			}
		})
	}
}

func TestPrintTextError(t *testing.T) {
	boom := errors.New("boom")
	err := New(io.Discard, Table).Print(&meridianv1.DeleteResponse{}, func(io.Writer) error { return boom })
	if !errors.Is(err, boom) {
		t.Errorf("err = %v, want boom", err)
	}
}

func TestJSONToYAML(t *testing.T) {
	tests := []struct {
		in, want string
	}{
		{in: `{"b":1,"a":{"c":[1,"2",true,null]}}`, want: "b: 1\na:\n  c:\n    - 1\n    - \"2\"\n    - true\n    - null\n"},
		{in: `{"s":"yes","t":"2026-04-30T09:30:00Z","m":"line\nbreak"}`, want: "s: yes\nt: \"2026-04-30T09:30:00Z\"\nm: |-\n  line\n  break\n"},
	}
	for _, tt := range tests {
		got, err := JSONToYAML([]byte(tt.in))
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != tt.want {
			t.Errorf("JSONToYAML(%s):\n%q\nwant:\n%q", tt.in, got, tt.want)
		}
	}
	if _, err := JSONToYAML([]byte(`{"a":`)); err == nil {
		t.Error("JSONToYAML of broken JSON: no error")
	}
}

func TestWriteTable(t *testing.T) {
	var buf bytes.Buffer
	err := WriteTable(&buf, []string{"A", "LONGER", "C"}, [][]string{
		{"x", "y", ""},
		{"tab\there", "new\nline", "z"},
	})
	if err != nil {
		t.Fatal(err)
	}
	want := "" +
		"A          LONGER     C\n" +
		"x          y\n" +
		"tab here   new line   z\n"
	if buf.String() != want {
		t.Errorf("got:\n%q\nwant:\n%q", buf.String(), want)
	}
}

func TestSummary(t *testing.T) {
	d := durationpb.New
	tests := []struct {
		name string
		r    *meridianv1.Resource
		want string
	}{
		{
			name: "route",
			r: &meridianv1.Resource{Kind: &meridianv1.Resource_Route{Route: &meridianv1.Route{Spec: &meridianv1.RouteSpec{
				Match: &meridianv1.RouteMatch{
					Methods: []string{"GET", "HEAD"},
					Hosts:   []string{"api.example.com", "*.example.com"},
					Paths: []*meridianv1.PathMatch{
						{Kind: &meridianv1.PathMatch_Template{Template: "/users/{id}"}},
						{Kind: &meridianv1.PathMatch_Prefix{Prefix: "/static/"}},
						{Kind: &meridianv1.PathMatch_Exact{Exact: "/healthz"}},
						{Kind: &meridianv1.PathMatch_Regex{Regex: "^/v[0-9]+/.*$"}},
					},
				},
				Upstream: "users",
			}}}},
			want: "GET,HEAD api.example.com,*.example.com /users/{id},/static/*,=/healthz,~^/v[0-9]+/.*$ -> users",
		},
		{
			name: "route matching only a path",
			r: &meridianv1.Resource{Kind: &meridianv1.Resource_Route{Route: &meridianv1.Route{Spec: &meridianv1.RouteSpec{
				Match:    &meridianv1.RouteMatch{Paths: []*meridianv1.PathMatch{{Kind: &meridianv1.PathMatch_Prefix{Prefix: "/"}}}},
				Upstream: "web",
			}}}},
			want: "/* -> web",
		},
		{
			name: "upstream",
			r: &meridianv1.Resource{Kind: &meridianv1.Resource_Upstream{Upstream: &meridianv1.Upstream{Spec: &meridianv1.UpstreamSpec{
				Scheme:       meridianv1.Scheme_SCHEME_H2C,
				Targets:      []*meridianv1.Target{{Address: "10.0.0.1:80"}, {Address: "10.0.0.2:80", Weight: 3}},
				LoadBalancer: &meridianv1.LoadBalancer{Policy: meridianv1.LoadBalancerPolicy_LOAD_BALANCER_POLICY_LEAST_REQUEST},
			}}}},
			want: "h2c 10.0.0.1:80, 10.0.0.2:80 (weight 3) least_request",
		},
		{
			name: "rate limit",
			r: &meridianv1.Resource{Kind: &meridianv1.Resource_RateLimit{RateLimit: &meridianv1.RateLimit{Spec: &meridianv1.RateLimitSpec{
				Limit: 100, Period: d(time.Second), Burst: 20,
				Scope:     meridianv1.RateLimitScope_RATE_LIMIT_SCOPE_GLOBAL,
				Algorithm: meridianv1.RateLimitAlgorithm_RATE_LIMIT_ALGORITHM_SLIDING_WINDOW,
				Key:       []string{"consumer", "route"},
				Shadow:    true,
			}}}},
			want: "100/1s burst 20 global sliding_window key=consumer+route shadow",
		},
		{
			name: "circuit breaker",
			r: &meridianv1.Resource{Kind: &meridianv1.Resource_CircuitBreaker{CircuitBreaker: &meridianv1.CircuitBreaker{Spec: &meridianv1.CircuitBreakerSpec{
				Window: d(10 * time.Second),
				Trip: &meridianv1.TripConditions{
					ErrorRate: 0.5,
					Latency:   &meridianv1.LatencyTrip{Quantile: 0.95, Threshold: d(300 * time.Millisecond)},
				},
				Open:  &meridianv1.OpenPolicy{Duration: d(5 * time.Second)},
				Scope: meridianv1.BreakerScope_BREAKER_SCOPE_TARGET,
			}}}},
			want: "errorRate>0.5 p0.95>300ms window 10s open 5s scope target",
		},
		{
			name: "jwt provider",
			r: &meridianv1.Resource{Kind: &meridianv1.Resource_JwtProvider{JwtProvider: &meridianv1.JWTProvider{Spec: &meridianv1.JWTProviderSpec{
				Issuer: "https://sso.example.com", Algorithms: []string{"RS256", "ES256"},
			}}}},
			want: "https://sso.example.com RS256,ES256",
		},
		{name: "empty resource", r: &meridianv1.Resource{}, want: ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Summary(tt.r); got != tt.want {
				t.Errorf("Summary = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestResourcesTable(t *testing.T) {
	var buf bytes.Buffer
	rs := []*meridianv1.Resource{{Kind: &meridianv1.Resource_JwtProvider{JwtProvider: &meridianv1.JWTProvider{
		Metadata: &meridianv1.Metadata{Name: "corp-sso"},
		Spec:     &meridianv1.JWTProviderSpec{Issuer: "https://sso"},
	}}}}
	if err := New(&buf, Table).Resources(rs); err != nil {
		t.Fatal(err)
	}
	want := "KIND          NAME       SUMMARY\nJWTProvider   corp-sso   https://sso\n"
	if buf.String() != want {
		t.Errorf("got:\n%q\nwant:\n%q", buf.String(), want)
	}
}

func TestText(t *testing.T) {
	tests := []struct {
		name, in, want, wantLines string
	}{
		{name: "plain", in: "route/get-user configured", want: "route/get-user configured", wantLines: "route/get-user configured"},
		{name: "unicode stays", in: "café ✓ 日本", want: "café ✓ 日本", wantLines: "café ✓ 日本"},
		{name: "replacement character stays", in: "a\uFFFDb", want: "a\uFFFDb", wantLines: "a\uFFFDb"},
		{name: "escape sequences", in: "\x1b[2J\x1b]0;title\x07", want: `\x1b[2J\x1b]0;title\x07`, wantLines: `\x1b[2J\x1b]0;title\x07`},
		{name: "carriage return", in: "ok\rFAIL", want: `ok\x0dFAIL`, wantLines: `ok\x0dFAIL`},
		{name: "newline and tab", in: "a\n\tb", want: `a\x0a\x09b`, wantLines: "a\n\tb"},
		{name: "nul, backspace, DEL", in: "\x00\x08\x7f", want: `\x00\x08\x7f`, wantLines: `\x00\x08\x7f`},
		{name: "C1 as a character", in: "\u009b31m\u0085", want: `\u009b31m\u0085`, wantLines: `\u009b31m\u0085`},
		{name: "C1 as a raw byte", in: "a\x9b31m", want: `a\x9b31m`, wantLines: `a\x9b31m`},
		{name: "broken UTF-8", in: "\xe2\x82", want: `\xe2\x82`, wantLines: `\xe2\x82`},
		{name: "bidi override", in: "abc\u202edcb", want: `abc\u202edcb`, wantLines: `abc\u202edcb`},
		{name: "bidi isolate", in: "\u2066x\u2069", want: `\u2066x\u2069`, wantLines: `\u2066x\u2069`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Text(tt.in); got != tt.want {
				t.Errorf("Text(%q) = %q, want %q", tt.in, got, tt.want)
			}
			if got := Lines(tt.in); got != tt.wantLines {
				t.Errorf("Lines(%q) = %q, want %q", tt.in, got, tt.wantLines)
			}
		})
	}
}

func TestWriteTableEscapes(t *testing.T) {
	var buf bytes.Buffer
	err := WriteTable(&buf, []string{"ID", "ERROR"}, [][]string{
		{"dp-\x1b[31m1", "bad\x1b[2Kline\nnext"},
		{"dp-2", "ok"},
	})
	if err != nil {
		t.Fatal(err)
	}
	want := "" +
		"ID             ERROR\n" +
		`dp-\x1b[31m1   bad\x1b[2Kline next` + "\n" +
		"dp-2           ok\n"
	if buf.String() != want {
		t.Errorf("got:\n%q\nwant:\n%q", buf.String(), want)
	}
}

func TestPrintEscapesOnlyTable(t *testing.T) {
	msg := &meridianv1.HistoryResponse{Entries: []*meridianv1.HistoryEntry{{Message: "x\x1by\u009b"}}}
	text := func(w io.Writer) error {
		_, err := io.WriteString(w, "line one\n\t"+msg.GetEntries()[0].GetMessage()+"\n")
		return err
	}
	tests := []struct {
		format Format
		want   string
	}{
		{format: Table, want: "line one\n\t" + `x\x1by\u009b` + "\n"},
		{format: JSON, want: "{\n  \"entries\": [\n    {\n      \"version\": 0,\n      \"time\": null,\n      \"author\": \"\",\n" +
			"      \"message\": \"x\\u001by\u009b\",\n      \"changes\": [],\n      \"resourceCount\": 0,\n      \"hash\": \"\"\n    }\n  ]\n}\n"},
	}
	for _, tt := range tests {
		var buf bytes.Buffer
		if err := New(&buf, tt.format).Print(msg, text); err != nil {
			t.Fatal(err)
		}
		if buf.String() != tt.want {
			t.Errorf("%s: got\n%q\nwant\n%q", tt.format, buf.String(), tt.want)
		}
	}
}

func TestJSONToYAMLKeepsEveryCharacter(t *testing.T) {
	// Characters JSON carries raw but a YAML stream refuses or reads as a
	// line break must come back unchanged.
	in := "esc\x1b del\x7f c1\u009b nel\u0085 ls\u2028 ps\u2029 bom\ufeff nul\x00 cr\r"
	data, err := json.Marshal(map[string]string{"m": in})
	if err != nil {
		t.Fatal(err)
	}
	out, err := JSONToYAML(data)
	if err != nil {
		t.Fatalf("JSONToYAML: %v", err)
	}
	var got map[string]string
	if err := yaml.Unmarshal(out, &got); err != nil {
		t.Fatalf("output is not YAML: %v\n%s", err, out)
	}
	if got["m"] != in {
		t.Errorf("round trip gave %q, want %q\n%s", got["m"], in, out)
	}
}
