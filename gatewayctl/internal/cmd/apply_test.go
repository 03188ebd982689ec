package cmd

import (
	"os"
	"regexp"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/meridian-gw/meridian/proto/config"
	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

func change(action meridianv1.ChangeAction, kind, name, diff string) *meridianv1.Change {
	return &meridianv1.Change{Action: action, Kind: kind, Name: name, Diff: diff}
}

// validResources is testdata/valid.yaml as the server must receive it.
func validResources(t *testing.T) []*meridianv1.Resource {
	t.Helper()
	docs, err := config.Load("testdata/valid.yaml")
	if err != nil {
		t.Fatal(err)
	}
	return config.Resources(docs)
}

func TestApply(t *testing.T) {
	valid, err := os.ReadFile("testdata/valid.yaml")
	if err != nil {
		t.Fatal(err)
	}
	created := []*meridianv1.Change{
		change(meridianv1.ChangeAction_CHANGE_ACTION_CREATE, "Upstream", "users", ""),
		change(meridianv1.ChangeAction_CHANGE_ACTION_UPDATE, "Route", "get-user", ""),
		change(meridianv1.ChangeAction_CHANGE_ACTION_DELETE, "RateLimit", "per-user", ""),
	}
	unchanged := []*meridianv1.Change{
		change(meridianv1.ChangeAction_CHANGE_ACTION_UNCHANGED, "Upstream", "users", ""),
		change(meridianv1.ChangeAction_CHANGE_ACTION_UNCHANGED, "Route", "get-user", ""),
	}
	tests := []struct {
		name    string
		args    []string
		stdin   string
		resp    *meridianv1.ApplyResponse
		want    string
		wantReq *meridianv1.ApplyRequest
	}{
		{
			name: "file",
			args: []string{"apply", "-f", "testdata/valid.yaml", "-m", "first", "--prune", "--expected-version", "6"},
			resp: &meridianv1.ApplyResponse{Version: 7, Changes: created},
			want: "upstream/users created\nroute/get-user configured\nratelimit/per-user deleted\nversion 7\n",
			wantReq: &meridianv1.ApplyRequest{
				Resources: validResources(t), Prune: true, Message: "first", Author: "erin@build-host", ExpectedVersion: 6,
			},
		},
		{
			name:    "directory, dry run",
			args:    []string{"apply", "-f", "testdata/dir", "--dry-run"},
			resp:    &meridianv1.ApplyResponse{Version: 6, Changes: created[:1], DryRun: true},
			want:    "upstream/users created\nversion 6 (dry run)\n",
			wantReq: &meridianv1.ApplyRequest{Resources: validResources(t), DryRun: true, Author: "erin@build-host"},
		},
		{
			name:    "stdin, no changes",
			args:    []string{"apply", "-f", "-"},
			stdin:   string(valid),
			resp:    &meridianv1.ApplyResponse{Version: 7, Changes: unchanged},
			want:    "upstream/users unchanged\nroute/get-user unchanged\nno changes; version 7\n",
			wantReq: &meridianv1.ApplyRequest{Resources: validResources(t), Author: "erin@build-host"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fake := newFakeAdmin().respond("Apply", tt.resp)
			addr := serve(t, fake)
			res := run(t, map[string]string{"USER": "erin"}, tt.stdin, append([]string{"--server", addr}, tt.args...)...)
			if res.code != 0 {
				t.Fatalf("exit code = %d; stderr: %s", res.code, res.stderr)
			}
			if res.stdout != tt.want {
				t.Errorf("stdout:\n%s\nwant:\n%s", res.stdout, tt.want)
			}
			calls := fake.recorded()
			if len(calls) != 1 || !proto.Equal(calls[0].req, tt.wantReq) {
				t.Errorf("calls = %v, want one Apply %v", calls, tt.wantReq)
			}
		})
	}
}

func TestApplyRejectsInvalidFilesLocally(t *testing.T) {
	for _, verb := range []string{"apply", "diff"} {
		t.Run(verb, func(t *testing.T) {
			fake := newFakeAdmin()
			addr := serve(t, fake)
			res := run(t, nil, "", "--server", addr, verb, "-f", "testdata/valid.yaml", "-f", "testdata/invalid.yaml")
			if res.code != 1 {
				t.Fatalf("exit code = %d, want 1; stderr: %s", res.code, res.stderr)
			}
			if n := len(fake.recorded()); n != 0 {
				t.Errorf("the server received %d calls; an invalid configuration must not be sent", n)
			}
			line := regexp.MustCompile(`^error: testdata/invalid\.yaml:\d+: Route "bad-user": spec\.\S+: .+$`)
			lines := strings.Split(strings.TrimSuffix(res.stderr, "\n"), "\n")
			if len(lines) < 2 {
				t.Errorf("want one line per problem (two problems), got %q", res.stderr)
			}
			for _, l := range lines {
				if !line.MatchString(l) {
					t.Errorf("stderr line %q does not match %s", l, line)
				}
			}
			if res.stdout != "" {
				t.Errorf("stdout = %q, want nothing", res.stdout)
			}
		})
	}
}

func TestApplyInputErrors(t *testing.T) {
	tests := []struct {
		name       string
		args       []string
		stdin      string
		wantCode   int
		wantStderr string
	}{
		{name: "missing file", args: []string{"apply", "-f", "testdata/nope.yaml"}, wantCode: 1, wantStderr: "testdata/nope.yaml"},
		{name: "empty input", args: []string{"apply", "-f", "-"}, stdin: "", wantCode: 1, wantStderr: "error: no resources in -\n"},
		{name: "stdin twice", args: []string{"apply", "-f", "-", "-f", "-"}, wantCode: 2, wantStderr: "-f - given more than once"},
		{name: "broken yaml on stdin", args: []string{"apply", "-f", "-"}, stdin: "kind: [", wantCode: 1, wantStderr: "error: <stdin>:"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fake := newFakeAdmin()
			addr := serve(t, fake)
			res := run(t, nil, tt.stdin, append([]string{"--server", addr}, tt.args...)...)
			if res.code != tt.wantCode || !strings.Contains(res.stderr, tt.wantStderr) {
				t.Errorf("exit code %d, stderr %q; want %d and %q", res.code, res.stderr, tt.wantCode, tt.wantStderr)
			}
			if n := len(fake.recorded()); n != 0 {
				t.Errorf("the server received %d calls", n)
			}
		})
	}
}

func TestDiff(t *testing.T) {
	const routeDiff = "--- Route/get-user (version 7)\n+++ Route/get-user (local)\n@@ -5 +5 @@\n-  upstream: old\n+  upstream: users\n"
	tests := []struct {
		name     string
		args     []string
		resp     *meridianv1.DiffResponse
		wantCode int
		want     string
		wantReq  *meridianv1.DiffRequest
	}{
		{
			name: "difference",
			args: []string{"diff", "-f", "testdata/valid.yaml", "--prune"},
			resp: &meridianv1.DiffResponse{Version: 7, Changes: []*meridianv1.Change{
				change(meridianv1.ChangeAction_CHANGE_ACTION_UNCHANGED, "Upstream", "users", ""),
				change(meridianv1.ChangeAction_CHANGE_ACTION_UPDATE, "Route", "get-user", routeDiff),
				change(meridianv1.ChangeAction_CHANGE_ACTION_DELETE, "RateLimit", "per-user", ""),
			}},
			wantCode: 1,
			want:     routeDiff + "ratelimit/per-user would be deleted\n",
			wantReq:  &meridianv1.DiffRequest{Resources: validResources(t), Prune: true},
		},
		{
			name: "no difference",
			args: []string{"diff", "-f", "testdata/valid.yaml"},
			resp: &meridianv1.DiffResponse{Version: 7, Changes: []*meridianv1.Change{
				change(meridianv1.ChangeAction_CHANGE_ACTION_UNCHANGED, "Upstream", "users", ""),
			}},
			wantCode: 0,
			want:     "",
			wantReq:  &meridianv1.DiffRequest{Resources: validResources(t)},
		},
		{
			name: "difference as json still exits 1",
			args: []string{"diff", "-f", "testdata/valid.yaml", "-o", "json"},
			resp: &meridianv1.DiffResponse{Version: 7, Changes: []*meridianv1.Change{
				change(meridianv1.ChangeAction_CHANGE_ACTION_CREATE, "Upstream", "users", "+x\n"),
			}},
			wantCode: 1,
			want:     "{\n  \"version\": 7,\n  \"changes\": [\n    {\n      \"action\": \"create\",\n      \"kind\": \"Upstream\",\n      \"name\": \"users\",\n      \"diff\": \"+x\\n\"\n    }\n  ]\n}\n",
			wantReq:  &meridianv1.DiffRequest{Resources: validResources(t)},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fake := newFakeAdmin().respond("Diff", tt.resp)
			addr := serve(t, fake)
			res := run(t, nil, "", append([]string{"--server", addr}, tt.args...)...)
			if res.code != tt.wantCode {
				t.Fatalf("exit code = %d, want %d; stderr: %s", res.code, tt.wantCode, res.stderr)
			}
			if res.stderr != "" {
				t.Errorf("stderr = %q, want nothing", res.stderr)
			}
			if res.stdout != tt.want {
				t.Errorf("stdout:\n%s\nwant:\n%s", res.stdout, tt.want)
			}
			calls := fake.recorded()
			if len(calls) != 1 || !proto.Equal(calls[0].req, tt.wantReq) {
				t.Errorf("calls = %v, want one Diff %v", calls, tt.wantReq)
			}
		})
	}
}

func TestGetResourceFormats(t *testing.T) {
	route := routeResource("get-user", "users", "/api/v1/users/{id}")
	fake := fullFake()
	addr := serve(t, fake)

	t.Run("yaml is re-appliable", func(t *testing.T) {
		res := run(t, nil, "", "--server", addr, "get", "route", "get-user", "-o", "yaml")
		if res.code != 0 {
			t.Fatalf("exit code = %d; stderr: %s", res.code, res.stderr)
		}
		docs, err := config.Decode("out.yaml", []byte(res.stdout))
		if err != nil {
			t.Fatalf("output does not decode: %v\n%s", err, res.stdout)
		}
		if len(docs) != 1 || !proto.Equal(docs[0].Resource, route) {
			t.Errorf("round trip gave %v, want %v", config.Resources(docs), route)
		}
	})
	t.Run("yaml list", func(t *testing.T) {
		res := run(t, nil, "", "--server", addr, "get", "-o", "yaml")
		docs, err := config.Decode("out.yaml", []byte(res.stdout))
		if err != nil || len(docs) != 2 {
			t.Fatalf("decode: %v, %d documents\n%s", err, len(docs), res.stdout)
		}
	})
	t.Run("json object for one", func(t *testing.T) {
		res := run(t, nil, "", "--server", addr, "get", "route", "get-user", "-o", "json")
		if !strings.HasPrefix(res.stdout, "{\n  \"apiVersion\": \"meridian/v1\",\n  \"kind\": \"Route\",") {
			t.Errorf("stdout = %s, want a JSON object", res.stdout)
		}
	})
	t.Run("json array for a list", func(t *testing.T) {
		res := run(t, nil, "", "--server", addr, "get", "routes", "-o", "json")
		if !strings.HasPrefix(res.stdout, "[\n  {\n    \"apiVersion\": \"meridian/v1\",") {
			t.Errorf("stdout = %s, want a JSON array", res.stdout)
		}
	})
}

func TestGetNothing(t *testing.T) {
	addr := serve(t, newFakeAdmin().respond("List", &meridianv1.ListResponse{Version: 1}))
	tests := []struct {
		format     string
		wantStdout string
		wantStderr string
	}{
		{format: "table", wantStdout: "", wantStderr: "no Route resources found\n"},
		{format: "json", wantStdout: "[]\n"},
	}
	for _, tt := range tests {
		t.Run(tt.format, func(t *testing.T) {
			res := run(t, nil, "", "--server", addr, "-o", tt.format, "get", "route")
			if res.code != 0 || res.stdout != tt.wantStdout || res.stderr != tt.wantStderr {
				t.Errorf("code %d, stdout %q, stderr %q; want 0, %q, %q", res.code, res.stdout, res.stderr, tt.wantStdout, tt.wantStderr)
			}
		})
	}
}
