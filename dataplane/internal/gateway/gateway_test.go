package gateway

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.uber.org/goleak"

	"github.com/meridian-gw/meridian/proto/config"
	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func upstreamRes(name string, spec *meridianv1.UpstreamSpec) *meridianv1.Resource {
	return &meridianv1.Resource{Kind: &meridianv1.Resource_Upstream{Upstream: &meridianv1.Upstream{
		Metadata: &meridianv1.Metadata{Name: name}, Spec: spec,
	}}}
}

func routeRes(name, up string, paths ...*meridianv1.PathMatch) *meridianv1.Resource {
	return &meridianv1.Resource{Kind: &meridianv1.Resource_Route{Route: &meridianv1.Route{
		Metadata: &meridianv1.Metadata{Name: name},
		Spec:     &meridianv1.RouteSpec{Upstream: up, Match: &meridianv1.RouteMatch{Paths: paths}},
	}}}
}

func jwtRes(name string, key *meridianv1.JWTKey) *meridianv1.Resource {
	return &meridianv1.Resource{Kind: &meridianv1.Resource_JwtProvider{JwtProvider: &meridianv1.JWTProvider{
		Metadata: &meridianv1.Metadata{Name: name},
		Spec:     &meridianv1.JWTProviderSpec{Algorithms: []string{"HS256"}, Keys: []*meridianv1.JWTKey{key}},
	}}}
}

func prefix(p string) *meridianv1.PathMatch {
	return &meridianv1.PathMatch{Kind: &meridianv1.PathMatch_Prefix{Prefix: p}}
}

func snapshot(version uint64, rs ...*meridianv1.Resource) *meridianv1.Snapshot {
	return &meridianv1.Snapshot{Version: version, Hash: config.Hash(rs), Nonce: "n", Resources: rs}
}

func targets(addrs ...string) *meridianv1.UpstreamSpec {
	spec := &meridianv1.UpstreamSpec{}
	for _, a := range addrs {
		spec.Targets = append(spec.Targets, &meridianv1.Target{Address: a})
	}
	return spec
}

func newGateway() *Gateway {
	return New(Options{Logger: discardLogger()})
}

func discardLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func TestApplyAllOrNothing(t *testing.T) {
	g := newGateway()
	defer g.Close()
	ctx := context.Background()
	good := snapshot(1, upstreamRes("users", targets("127.0.0.1:9001")), routeRes("r", "users", prefix("/")))
	if err := g.Apply(ctx, good, SourceControlPlane); err != nil {
		t.Fatalf("Apply good: %v", err)
	}
	before := g.Current()

	bad := []struct {
		name string
		snap *meridianv1.Snapshot
	}{
		{"dangling upstream reference", snapshot(2, upstreamRes("users", targets("127.0.0.1:9001")), routeRes("r", "missing", prefix("/")))},
		{"invalid regex", snapshot(2, upstreamRes("users", targets("127.0.0.1:9001")),
			routeRes("r", "users", &meridianv1.PathMatch{Kind: &meridianv1.PathMatch_Regex{Regex: "("}}))},
		{"missing secret", snapshot(2, upstreamRes("users", targets("127.0.0.1:9001")), routeRes("r", "users", prefix("/")),
			jwtRes("sso", &meridianv1.JWTKey{Kid: "k", SecretEnv: "MERIDIAN_TEST_UNSET_SECRET"}))},
		{"hash mismatch", func() *meridianv1.Snapshot {
			s := snapshot(2, upstreamRes("users", targets("127.0.0.1:9001")), routeRes("r", "users", prefix("/")))
			s.Hash = "deadbeef"
			return s
		}()},
	}
	for _, tt := range bad {
		t.Run(tt.name, func(t *testing.T) {
			if err := g.Apply(ctx, tt.snap, SourceControlPlane); err == nil {
				t.Fatal("Apply succeeded, want error")
			}
			if got := g.Current(); got != before {
				t.Fatalf("live config changed to version %d after a failed apply", got.Version())
			}
			if v, h := g.Applied(); v != 1 || h != good.GetHash() {
				t.Errorf("Applied() = %d %q, want 1 %q", v, h, good.GetHash())
			}
		})
	}
}

func TestApplyHashMismatch(t *testing.T) {
	g := newGateway()
	s := snapshot(1, upstreamRes("u", targets("127.0.0.1:1")))
	s.Hash = "0000"
	if err := g.Apply(context.Background(), s, SourceCache); !errors.Is(err, ErrHashMismatch) {
		t.Fatalf("err = %v, want ErrHashMismatch", err)
	}
}

func TestApplyMetadata(t *testing.T) {
	g := newGateway()
	defer g.Close()
	if g.Current() != nil {
		t.Fatal("new gateway has a config")
	}
	if v, h := g.Applied(); v != 0 || h != "" {
		t.Fatalf("Applied() = %d %q before any apply", v, h)
	}
	s := snapshot(7, upstreamRes("u", targets("127.0.0.1:1")))
	if err := g.Apply(context.Background(), s, SourceCache); err != nil {
		t.Fatal(err)
	}
	c := g.Current()
	if c.Version() != 7 || c.Hash() != s.GetHash() || c.Source() != SourceCache || c.AppliedAt().IsZero() {
		t.Errorf("config = %d %q %q %v", c.Version(), c.Hash(), c.Source(), c.AppliedAt())
	}
	// The same version again is a no-op, even from another source.
	if err := g.Apply(context.Background(), s, SourceControlPlane); err != nil || g.Current() != c {
		t.Errorf("re-applying the live version: err %v, replaced %v", err, g.Current() != c)
	}
}

func TestMissingSecretEnv(t *testing.T) {
	g := newGateway()
	s := snapshot(1,
		jwtRes("corp-sso", &meridianv1.JWTKey{Kid: "a", SecretEnv: "MERIDIAN_TEST_SET_SECRET"}),
		&meridianv1.Resource{Kind: &meridianv1.Resource_JwtProvider{JwtProvider: &meridianv1.JWTProvider{
			Metadata: &meridianv1.Metadata{Name: "other"},
			Spec: &meridianv1.JWTProviderSpec{Algorithms: []string{"HS256"}, Keys: []*meridianv1.JWTKey{
				{Kid: "a", SecretEnv: "MERIDIAN_TEST_SET_SECRET"},
				{Kid: "b", SecretEnv: "MERIDIAN_TEST_UNSET_SECRET"},
			}},
		}}},
	)
	t.Setenv("MERIDIAN_TEST_SET_SECRET", "s3cr3t-value")
	os.Unsetenv("MERIDIAN_TEST_UNSET_SECRET")

	err := g.Apply(context.Background(), s, SourceControlPlane)
	var list config.ErrorList
	if !errors.As(err, &list) || len(list) != 1 {
		t.Fatalf("err = %v, want one FieldError", err)
	}
	fe := list[0]
	want := config.FieldError{Kind: "JWTProvider", Name: "other", Path: "spec.keys[1].secretEnv",
		Msg: `environment variable "MERIDIAN_TEST_UNSET_SECRET" is not set on this data plane`}
	if fe.Kind != want.Kind || fe.Name != want.Name || fe.Path != want.Path || fe.Msg != want.Msg {
		t.Errorf("error = %+v\nwant    %+v", *fe, want)
	}
	if strings.Contains(err.Error(), "s3cr3t-value") {
		t.Error("error message contains a secret value")
	}
}

func TestSecretFile(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "secret")
	if err := os.WriteFile(good, []byte("top-secret-top-secret-top-secret-32"), 0o600); err != nil {
		t.Fatal(err)
	}
	empty := filepath.Join(dir, "empty")
	if err := os.WriteFile(empty, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		file    string
		wantErr string
	}{
		{"readable", good, ""},
		{"missing", filepath.Join(dir, "nope"), "is not readable on this data plane: no such file or directory"},
		{"empty", empty, "is empty on this data plane"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := newGateway()
			defer g.Close()
			err := g.Apply(context.Background(), snapshot(1, jwtRes("p", &meridianv1.JWTKey{Kid: "k", SecretFile: tt.file})), SourceControlPlane)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("Apply: %v", err)
				}
				return
			}
			var list config.ErrorList
			if !errors.As(err, &list) || list[0].Path != "spec.keys[0].secretFile" || !strings.Contains(list[0].Msg, tt.wantErr) {
				t.Fatalf("err = %v, want secretFile error containing %q", err, tt.wantErr)
			}
			if strings.Contains(err.Error(), "top-secret") {
				t.Error("error message contains the secret")
			}
		})
	}
}

func TestTransportReuse(t *testing.T) {
	g := newGateway()
	defer g.Close()
	ctx := context.Background()
	users := upstreamRes("users", targets("127.0.0.1:9001", "127.0.0.1:9002"))
	orders := upstreamRes("orders", targets("127.0.0.1:9101"))
	if err := g.Apply(ctx, snapshot(1, users, orders, routeRes("r", "users", prefix("/"))), SourceControlPlane); err != nil {
		t.Fatal(err)
	}
	c1 := g.Current()

	// users unchanged, orders gets a new target, a route is added.
	orders2 := upstreamRes("orders", targets("127.0.0.1:9101", "127.0.0.1:9102"))
	if err := g.Apply(ctx, snapshot(2, users, orders2, routeRes("r", "users", prefix("/")), routeRes("o", "orders", prefix("/orders"))), SourceControlPlane); err != nil {
		t.Fatal(err)
	}
	c2 := g.Current()
	if c2.Upstream("users") != c1.Upstream("users") {
		t.Error("unchanged upstream: pool not reused")
	}
	if c2.Upstream("orders") == c1.Upstream("orders") {
		t.Error("changed targets: pool reused")
	}
	if c2.Upstream("orders").Transport() != c1.Upstream("orders").Transport() {
		t.Error("changed targets only: transport not reused")
	}

	// A connection-pool change builds a new transport.
	users3 := upstreamRes("users", &meridianv1.UpstreamSpec{
		Targets:        targets("127.0.0.1:9001").Targets,
		ConnectionPool: &meridianv1.ConnectionPool{MaxIdleConnsPerHost: 8},
	})
	if err := g.Apply(ctx, snapshot(3, users3, orders2, routeRes("r", "users", prefix("/"))), SourceControlPlane); err != nil {
		t.Fatal(err)
	}
	if g.Current().Upstream("users").Transport() == c2.Upstream("users").Transport() {
		t.Error("changed connection pool: transport reused")
	}
}

func TestCheckSecretsNeverReadsValueIntoMessage(t *testing.T) {
	rs := []*meridianv1.Resource{jwtRes("p", &meridianv1.JWTKey{Kid: "k", SecretEnv: "X"})}
	err := checkSecrets(rs, func(string) (string, bool) { return "", true }, os.ReadFile)
	var list config.ErrorList
	if !errors.As(err, &list) || !strings.Contains(list[0].Msg, `"X" is empty`) {
		t.Fatalf("err = %v, want empty-variable error", err)
	}
}
