package cmd

import (
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/protoadapt"

	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

// TestPartialFiles: a file may name a resource only the control plane
// stores. gatewayctl sends it (the control plane checks the merged
// configuration), and the control plane's verdict comes back placed at
// the file and line of the field it names.
func TestPartialFiles(t *testing.T) {
	const route = "apiVersion: meridian/v1\nkind: Route\nmetadata: {name: x}\nspec:\n  match: {paths: [{prefix: /x}]}\n  upstream: demo\n"
	missing := `Upstream "demo" does not exist in this apply or the stored configuration (version 4)`
	st, err := status.New(codes.InvalidArgument, `Route "x": spec.upstream: `+missing).WithDetails(
		protoadapt.MessageV1Of(&meridianv1.ConfigError{Kind: "Route", Name: "x", Field: "spec.upstream", Message: missing}),
		protoadapt.MessageV1Of(&meridianv1.ConfigError{Kind: "Route", Name: "stored", Field: "spec.upstream", Message: `Upstream "gone" does not exist`}),
	)
	if err != nil {
		t.Fatal(err)
	}
	for _, verb := range []string{"apply", "diff"} {
		t.Run(verb+" accepted", func(t *testing.T) {
			fake := newFakeAdmin().
				respond("Apply", &meridianv1.ApplyResponse{Version: 5, Changes: []*meridianv1.Change{{Kind: "Route", Name: "x", Action: meridianv1.ChangeAction_CHANGE_ACTION_CREATE}}}).
				respond("Diff", &meridianv1.DiffResponse{Version: 4})
			res := run(t, nil, route, "--server", serve(t, fake), verb, "-f", "-")
			if res.code != 0 {
				t.Fatalf("exit code %d; stderr: %s", res.code, res.stderr)
			}
			if n := len(fake.recorded()); n != 1 {
				t.Errorf("the control plane got %d calls, want 1", n)
			}
		})
		t.Run(verb+" refused", func(t *testing.T) {
			fake := newFakeAdmin().fail("Apply", st.Err()).fail("Diff", st.Err())
			res := run(t, nil, route, "--server", serve(t, fake), verb, "-f", "-")
			want := "error: <stdin>:6: Route \"x\": spec.upstream: " + missing + "\n" +
				"error: Route \"stored\": spec.upstream: Upstream \"gone\" does not exist\n"
			if res.code != 1 || res.stderr != want {
				t.Errorf("exit %d, stderr:\n%s\nwant exit 1 and:\n%s", res.code, res.stderr, want)
			}
		})
	}
	t.Run("with prune the files are the whole configuration", func(t *testing.T) {
		fake := newFakeAdmin()
		res := run(t, nil, route, "--server", serve(t, fake), "apply", "--prune", "-f", "-")
		want := "error: <stdin>:6: Route \"x\": spec.upstream: Upstream \"demo\" does not exist in the files (with --prune they are the whole configuration)\n"
		if res.code != 1 || res.stderr != want || len(fake.recorded()) != 0 {
			t.Errorf("exit %d, %d calls, stderr:\n%s\nwant exit 1, no call, and:\n%s", res.code, len(fake.recorded()), res.stderr, want)
		}
	})
}

// TestEveryProblemAtOnce: decode errors and validation errors of several
// files are reported together, in file and line order.
func TestEveryProblemAtOnce(t *testing.T) {
	fake := newFakeAdmin()
	res := run(t, nil, "", "--server", serve(t, fake), "apply", "-f", "testdata/valid.yaml", "-f", "testdata/invalid.yaml")
	lines := strings.Split(strings.TrimSuffix(res.stderr, "\n"), "\n")
	want := []string{
		`error: testdata/invalid.yaml:7: Route "bad-user": spec.match.paths[0].template: `,
		`error: testdata/invalid.yaml:9: Route "bad-user": spec.timeout: expected a duration`,
	}
	if res.code != 1 || len(lines) != len(want) {
		t.Fatalf("exit %d, stderr:\n%s", res.code, res.stderr)
	}
	for i := range want {
		if !strings.HasPrefix(lines[i], want[i]) {
			t.Errorf("line %d = %q, want it to start %q", i, lines[i], want[i])
		}
	}
}
