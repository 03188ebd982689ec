package cmd

import (
	"encoding/json"
	"regexp"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
	"go.yaml.in/yaml/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func routeResource(name, upstream, template string) *meridianv1.Resource {
	return &meridianv1.Resource{Kind: &meridianv1.Resource_Route{Route: &meridianv1.Route{
		Metadata: &meridianv1.Metadata{Name: name},
		Spec: &meridianv1.RouteSpec{
			Match: &meridianv1.RouteMatch{
				Methods: []string{"GET"},
				Hosts:   []string{"api.example.com"},
				Paths:   []*meridianv1.PathMatch{{Kind: &meridianv1.PathMatch_Template{Template: template}}},
			},
			Upstream: upstream,
		},
	}}}
}

func upstreamResource(name string, addrs ...string) *meridianv1.Resource {
	spec := &meridianv1.UpstreamSpec{Scheme: meridianv1.Scheme_SCHEME_HTTP}
	for _, a := range addrs {
		spec.Targets = append(spec.Targets, &meridianv1.Target{Address: a})
	}
	return &meridianv1.Resource{Kind: &meridianv1.Resource_Upstream{Upstream: &meridianv1.Upstream{
		Metadata: &meridianv1.Metadata{Name: name},
		Spec:     spec,
	}}}
}

func historyResponse() *meridianv1.HistoryResponse {
	return &meridianv1.HistoryResponse{Entries: []*meridianv1.HistoryEntry{
		{
			Version: 7,
			Time:    timestamppb.New(time.Date(2026, 4, 30, 9, 30, 0, 0, time.UTC)),
			Author:  "alice@laptop",
			Message: "add users route",
			Changes: []*meridianv1.Change{
				{Action: meridianv1.ChangeAction_CHANGE_ACTION_CREATE, Kind: "Route", Name: "get-user"},
				{Action: meridianv1.ChangeAction_CHANGE_ACTION_UPDATE, Kind: "Upstream", Name: "users"},
				{Action: meridianv1.ChangeAction_CHANGE_ACTION_UPDATE, Kind: "Upstream", Name: "orders"},
			},
		},
		{
			Version: 6,
			Time:    timestamppb.New(time.Date(2026, 4, 29, 17, 0, 0, 0, time.UTC)),
			Author:  "bob@ci",
			Changes: []*meridianv1.Change{{Action: meridianv1.ChangeAction_CHANGE_ACTION_DELETE, Kind: "Route", Name: "old"}},
		},
	}}
}

func dataplanesResponse() *meridianv1.ListDataplanesResponse {
	seen := timestamppb.New(testNow().Add(-12 * time.Second))
	return &meridianv1.ListDataplanesResponse{
		CurrentVersion: 7,
		Dataplanes: []*meridianv1.DataplaneStatus{
			{
				Node:           &meridianv1.Node{Id: "dp-1", ListenAddress: "10.0.0.1:8080"},
				State:          meridianv1.DataplaneState_DATAPLANE_STATE_SYNCED,
				AppliedVersion: 7,
				LastSeen:       seen,
				Connected:      true,
			},
			{
				Node:           &meridianv1.Node{Id: "dp-2"},
				PeerAddress:    "10.0.0.2:51234",
				State:          meridianv1.DataplaneState_DATAPLANE_STATE_NACKED,
				AppliedVersion: 6,
				LastSeen:       timestamppb.New(testNow().Add(-5 * time.Minute)),
				LastNack: &meridianv1.Nack{Version: 7, Error: &meridianv1.ConfigError{
					Kind: "Route", Name: "get-user", Field: "spec.match.paths[0].regex", Message: "missing closing )",
				}},
				Connected: true,
			},
			{
				Node:           &meridianv1.Node{Id: "dp-3", ListenAddress: "10.0.0.3:8080"},
				State:          meridianv1.DataplaneState_DATAPLANE_STATE_DISCONNECTED,
				AppliedVersion: 5,
			},
		},
	}
}

// fullFake answers every read-only call.
func fullFake() *fakeAdmin {
	return newFakeAdmin().
		respond("List", &meridianv1.ListResponse{Version: 7, Resources: []*meridianv1.Resource{
			upstreamResource("users", "127.0.0.1:9001", "127.0.0.1:9002"),
			routeResource("get-user", "users", "/api/v1/users/{id}"),
		}}).
		respond("Get", &meridianv1.GetResponse{Version: 7, Resource: routeResource("get-user", "users", "/api/v1/users/{id}")}).
		respond("History", historyResponse()).
		respond("ListDataplanes", dataplanesResponse()).
		respond("Delete", &meridianv1.DeleteResponse{Version: 8}).
		respond("Rollback", &meridianv1.RollbackResponse{Version: 9, RestoredVersion: 6, Changes: []*meridianv1.Change{
			{Action: meridianv1.ChangeAction_CHANGE_ACTION_DELETE, Kind: "Route", Name: "get-user"},
		}})
}

func TestExitCodes(t *testing.T) {
	tests := []struct {
		name       string
		args       []string
		env        map[string]string
		fail       map[string]error
		wantCode   int
		wantStderr []string // each must appear in stderr
		wantCalls  int      // RPCs the fake must have received
	}{
		{name: "help", args: []string{"get", "--help"}, wantCode: 0},
		{name: "root help", args: []string{"--help"}, wantCode: 0},
		{name: "help command", args: []string{"help"}, wantCode: 0},
		{name: "unknown command", args: []string{"frobnicate"}, wantCode: 2,
			wantStderr: []string{`error: unknown command "frobnicate" for "gatewayctl"; see 'gatewayctl --help'`}},
		{name: "misspelt command gets a suggestion", args: []string{"gett"}, wantCode: 2,
			wantStderr: []string{`did you mean "get"?`}},
		{name: "unknown flag", args: []string{"get", "--bogus"}, wantCode: 2,
			wantStderr: []string{"error: unknown flag: --bogus; see 'gatewayctl get --help'"}},
		{name: "unknown global flag", args: []string{"--bogus"}, wantCode: 2, wantStderr: []string{"unknown flag: --bogus"}},
		{name: "too few arguments", args: []string{"delete", "route"}, wantCode: 2, wantStderr: []string{"accepts 2 arg(s), received 1"}},
		{name: "too many arguments", args: []string{"get", "route", "a", "b"}, wantCode: 2},
		{name: "arguments where none are taken", args: []string{"history", "now"}, wantCode: 2},
		{name: "unknown kind", args: []string{"get", "widgets"}, wantCode: 2, wantStderr: []string{`unknown kind "widgets"`}},
		{name: "unknown output format", args: []string{"-o", "xml", "get"}, wantCode: 2, wantStderr: []string{`unknown output format "xml"`}},
		{name: "bad output format from env", args: []string{"get"}, env: map[string]string{"MERIDIAN_OUTPUT": "csv"}, wantCode: 2},
		{name: "bad duration from env", args: []string{"get"}, env: map[string]string{"MERIDIAN_TIMEOUT": "soon"}, wantCode: 2,
			wantStderr: []string{"invalid MERIDIAN_TIMEOUT"}},
		{name: "zero timeout", args: []string{"--timeout", "0s", "get"}, wantCode: 2},
		{name: "bad flag value", args: []string{"history", "--limit", "-1"}, wantCode: 2},
		{name: "rollback to a word", args: []string{"rollback", "yesterday"}, wantCode: 2, wantStderr: []string{`VERSION must be a positive number, got "yesterday"`}},
		{name: "apply without files", args: []string{"apply"}, wantCode: 2, wantStderr: []string{"no input: pass -f FILE"}},
		{name: "diff without files", args: []string{"diff"}, wantCode: 2},
		{name: "get everything", args: []string{"get"}, wantCode: 0, wantCalls: 1},
		{name: "internal server error", args: []string{"get"}, fail: map[string]error{"List": status.Error(codes.Internal, "etcd: leader changed")},
			wantCode: 1, wantCalls: 1, wantStderr: []string{"error: control plane error (Internal): etcd: leader changed"}},
		{name: "not found", args: []string{"get", "route", "nope"}, fail: map[string]error{"Get": status.Error(codes.NotFound, `Route "nope" not found`)},
			wantCode: 1, wantCalls: 1, wantStderr: []string{"error: Route \"nope\" not found\n"}},
		{name: "conflict", args: []string{"delete", "route", "get-user"}, fail: map[string]error{"Delete": status.Error(codes.Aborted, "Route \"get-user\" changed in version 9")},
			wantCode: 1, wantCalls: 1, wantStderr: []string{"error: conflict: Route \"get-user\" changed in version 9; re-run diff and apply again"}},
		{name: "unauthenticated", args: []string{"history"}, fail: map[string]error{"History": status.Error(codes.Unauthenticated, "bad token")},
			wantCode: 1, wantCalls: 1, wantStderr: []string{"error: not authenticated: bad token; check --token, MERIDIAN_TOKEN or the token in --config\n"}},
		{name: "unauthenticated without a message", args: []string{"history"}, fail: map[string]error{"History": status.Error(codes.Unauthenticated, "")},
			wantCode: 1, wantCalls: 1, wantStderr: []string{"error: not authenticated; check --token, MERIDIAN_TOKEN or the token in --config\n"}},
		{name: "permission denied", args: []string{"delete", "route", "get-user"},
			fail:     map[string]error{"Delete": status.Error(codes.PermissionDenied, "viewer \"ci\" may not call Delete (needs operator)")},
			wantCode: 1, wantCalls: 1, wantStderr: []string{"error: permission denied: viewer \"ci\" may not call Delete (needs operator)\n"}},
		{name: "resource exhausted", args: []string{"rollback"},
			fail:     map[string]error{"Rollback": status.Error(codes.ResourceExhausted, "too many concurrent applies (at most 4)")},
			wantCode: 1, wantCalls: 1, wantStderr: []string{"error: the control plane refused the request: too many concurrent applies (at most 4)\n"}},
		{name: "insecure from env is a bool", args: []string{"get"}, env: map[string]string{"MERIDIAN_INSECURE": "maybe"}, wantCode: 2,
			wantStderr: []string{"error: invalid MERIDIAN_INSECURE: not a valid --insecure (bool)"}},
		{name: "invalid argument lines", args: []string{"rollback", "3"},
			fail:     map[string]error{"Rollback": status.Error(codes.InvalidArgument, "Route \"a\": spec.upstream: unknown upstream \"x\"\nRoute \"b\": spec.timeout: must be positive")},
			wantCode: 1, wantCalls: 1,
			wantStderr: []string{"error: Route \"a\": spec.upstream: unknown upstream \"x\"\nerror: Route \"b\": spec.timeout: must be positive\n"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fake := fullFake()
			for method, err := range tt.fail {
				fake.fail(method, err)
			}
			addr := serve(t, fake)
			res := run(t, tt.env, "", append([]string{"--server", addr}, tt.args...)...)
			if res.code != tt.wantCode {
				t.Fatalf("exit code = %d, want %d\nstdout: %s\nstderr: %s", res.code, tt.wantCode, res.stdout, res.stderr)
			}
			for _, want := range tt.wantStderr {
				if !strings.Contains(res.stderr, want) {
					t.Errorf("stderr = %q, want it to contain %q", res.stderr, want)
				}
			}
			if tt.wantCode != 0 && strings.Count(res.stderr, "error: ") != strings.Count(res.stderr, "\n") {
				t.Errorf("every stderr line should start with \"error: \": %q", res.stderr)
			}
			if got := len(fake.recorded()); got != tt.wantCalls {
				t.Errorf("fake received %d calls, want %d", got, tt.wantCalls)
			}
		})
	}
}

func TestControlCharactersReplaced(t *testing.T) {
	const esc = "\x1b]0;pwned\x07\x1b[2J"
	history := &meridianv1.HistoryResponse{Entries: []*meridianv1.HistoryEntry{{
		Version: 3, Author: "mallory\r\x1b[1A", Message: "fix " + esc + "\u009b31m",
		Changes: []*meridianv1.Change{{Action: meridianv1.ChangeAction_CHANGE_ACTION_CREATE, Kind: "Route", Name: "r"}},
	}}}
	dataplanes := &meridianv1.ListDataplanesResponse{Dataplanes: []*meridianv1.DataplaneStatus{{
		Node:  &meridianv1.Node{Id: "dp-\x1b[31mred", ListenAddress: "10.0.0.1:8080"},
		State: meridianv1.DataplaneState_DATAPLANE_STATE_NACKED,
		LastNack: &meridianv1.Nack{Version: 3, Error: &meridianv1.ConfigError{
			Kind: "Route", Name: "r", Field: "spec", Message: "bad " + esc + "\u202eevil",
		}},
	}}}
	apply := &meridianv1.ApplyResponse{Version: 4, Changes: []*meridianv1.Change{
		{Action: meridianv1.ChangeAction_CHANGE_ACTION_CREATE, Kind: "Route", Name: "get-\x1b[8muser"},
	}}
	diff := &meridianv1.DiffResponse{Version: 4, Changes: []*meridianv1.Change{
		{Action: meridianv1.ChangeAction_CHANGE_ACTION_UPDATE, Kind: "Route", Name: "r", Diff: "--- a\n+++ b\n-\tx: 1\n+\tx: \x1b[2J\n"},
	}}
	fake := newFakeAdmin().respond("History", history).respond("ListDataplanes", dataplanes).
		respond("Apply", apply).respond("Diff", diff).
		fail("Delete", status.Error(codes.FailedPrecondition, "Route \"r\" is used by\x1b[2K\nRoute \"s\"\u009b"))
	addr := serve(t, fake)
	tests := []struct {
		name       string
		args       []string
		wantStdout string
		wantStderr string
	}{
		{
			name: "history messages",
			args: []string{"history"},
			wantStdout: "" +
				"VERSION   TIME   AUTHOR            CHANGES     MESSAGE\n" +
				`3         -      mallory \x1b[1A   1 created   fix \x1b]0;pwned\x07\x1b[2J\u009b31m` + "\n",
		},
		{
			name: "NACK errors",
			args: []string{"dataplanes"},
			wantStdout: "" +
				"ID               ADDRESS         VERSION   STATE    LAST-SEEN   ERROR\n" +
				`dp-\x1b[31mred   10.0.0.1:8080   0         NACKED   -           Route "r": spec: bad \x1b]0;pwned\x07\x1b[2J\u202eevil` + "\n",
		},
		{
			name:       "change lines",
			args:       []string{"apply", "-f", "testdata/valid.yaml"},
			wantStdout: `route/get-\x1b[8muser created` + "\nversion 4\n",
		},
		{
			name:       "diff text keeps lines and tabs",
			args:       []string{"diff", "-f", "testdata/valid.yaml"},
			wantStdout: "--- a\n+++ b\n-\tx: 1\n+\tx: \\x1b[2J\n",
		},
		{
			name:       "error lines",
			args:       []string{"delete", "route", "r"},
			wantStderr: `error: Route "r" is used by\x1b[2K` + "\n" + `error: Route "s"\u009b` + "\n",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res := run(t, nil, "", append([]string{"--server", addr}, tt.args...)...)
			if res.stdout != tt.wantStdout || res.stderr != tt.wantStderr {
				t.Errorf("stdout:\n%q\nwant:\n%q\nstderr:\n%q\nwant:\n%q", res.stdout, tt.wantStdout, res.stderr, tt.wantStderr)
			}
		})
	}
	// JSON and YAML stay exact: scripts get what the server sent.
	for _, format := range []string{"json", "yaml"} {
		res := run(t, nil, "", "--server", addr, "-o", format, "history")
		type entry struct {
			Author  string `json:"author" yaml:"author"`
			Message string `json:"message" yaml:"message"`
		}
		var got struct {
			Entries []entry `json:"entries" yaml:"entries"`
		}
		var err error
		if format == "json" {
			err = json.Unmarshal([]byte(res.stdout), &got)
		} else {
			err = yaml.Unmarshal([]byte(res.stdout), &got)
		}
		want := history.GetEntries()[0]
		if err != nil || len(got.Entries) != 1 || got.Entries[0] != (entry{Author: want.GetAuthor(), Message: want.GetMessage()}) {
			t.Errorf("-o %s: decoded %+v (%v), want exactly %q and %q", format, got, err, want.GetAuthor(), want.GetMessage())
		}
	}
}

func TestNoCommand(t *testing.T) {
	res := run(t, nil, "")
	if res.code != ExitUsage || res.stdout != "" {
		t.Fatalf("exit code %d, stdout %q; want %d and nothing", res.code, res.stdout, ExitUsage)
	}
	if !strings.HasPrefix(res.stderr, "Usage:\n  gatewayctl [flags]\n") || !strings.Contains(res.stderr, "Available Commands:") ||
		!strings.HasSuffix(res.stderr, "\nerror: no command given; see 'gatewayctl --help'\n") {
		t.Errorf("stderr = %q, want the usage, then the error", res.stderr)
	}
	for _, args := range [][]string{{"--help"}, {"help"}} {
		res := run(t, nil, "", args...)
		if res.code != ExitOK || !strings.HasPrefix(res.stdout, "gatewayctl applies") || res.stderr != "" {
			t.Errorf("gatewayctl %v: exit code %d, stdout %q, stderr %q; want 0 and the help on stdout", args, res.code, res.stdout, res.stderr)
		}
	}
}

func TestUnreachableServer(t *testing.T) {
	addr := deadAddress(t)
	res := run(t, nil, "", "--server", addr, "get")
	if res.code != 1 {
		t.Fatalf("exit code = %d, want 1; stderr: %s", res.code, res.stderr)
	}
	want := "error: cannot reach control plane at " + addr + ": "
	if !strings.HasPrefix(res.stderr, want) || strings.Count(res.stderr, "\n") != 1 {
		t.Errorf("stderr = %q, want one line starting %q", res.stderr, want)
	}
}

func TestFlagAndEnvPrecedence(t *testing.T) {
	fake := fullFake()
	live := serve(t, fake)
	dead := deadAddress(t)
	tests := []struct {
		name     string
		env      map[string]string
		args     []string
		wantCode int
		// check inspects the run and the last call the fake saw (nil if none).
		check func(t *testing.T, res result, last *fakeCall)
	}{
		{
			name: "server from env", env: map[string]string{"MERIDIAN_SERVER": live},
			args: []string{"history"},
			check: func(t *testing.T, res result, last *fakeCall) {
				if last == nil || last.method != "History" {
					t.Errorf("last call = %+v, want History", last)
				}
			},
		},
		{
			name: "server flag wins over env", env: map[string]string{"MERIDIAN_SERVER": dead},
			args: []string{"--server", live, "history"},
		},
		{
			name: "server flag wins over env, the other way", env: map[string]string{"MERIDIAN_SERVER": live},
			args: []string{"--server", dead, "history"}, wantCode: 1,
			check: func(t *testing.T, res result, _ *fakeCall) {
				if !strings.Contains(res.stderr, "cannot reach control plane at "+dead) {
					t.Errorf("stderr = %q, want it to name %s", res.stderr, dead)
				}
			},
		},
		{
			name: "token from env", env: map[string]string{"MERIDIAN_SERVER": live, "MERIDIAN_TOKEN": "env-token"},
			args: []string{"history"},
			check: func(t *testing.T, _ result, last *fakeCall) {
				if got := last.auth; len(got) != 1 || got[0] != "Bearer env-token" {
					t.Errorf("authorization = %q, want [Bearer env-token]", got)
				}
			},
		},
		{
			name: "token flag wins over env", env: map[string]string{"MERIDIAN_SERVER": live, "MERIDIAN_TOKEN": "env-token"},
			args: []string{"--token", "flag-token", "history"},
			check: func(t *testing.T, _ result, last *fakeCall) {
				if got := last.auth; len(got) != 1 || got[0] != "Bearer flag-token" {
					t.Errorf("authorization = %q, want [Bearer flag-token]", got)
				}
			},
		},
		{
			name: "no token, no header", env: map[string]string{"MERIDIAN_SERVER": live},
			args: []string{"history"},
			check: func(t *testing.T, _ result, last *fakeCall) {
				if len(last.auth) != 0 {
					t.Errorf("authorization = %q, want none", last.auth)
				}
			},
		},
		{
			name: "output from env", env: map[string]string{"MERIDIAN_SERVER": live, "MERIDIAN_OUTPUT": "json"},
			args: []string{"history"},
			check: func(t *testing.T, res result, _ *fakeCall) {
				if !json.Valid([]byte(res.stdout)) {
					t.Errorf("stdout is not JSON: %q", res.stdout)
				}
			},
		},
		{
			name: "output flag wins over env", env: map[string]string{"MERIDIAN_SERVER": live, "MERIDIAN_OUTPUT": "json"},
			args: []string{"-o", "table", "history"},
			check: func(t *testing.T, res result, _ *fakeCall) {
				if !strings.HasPrefix(res.stdout, "VERSION") {
					t.Errorf("stdout = %q, want a table", res.stdout)
				}
			},
		},
		{
			name: "command flag from env", env: map[string]string{"MERIDIAN_SERVER": live, "MERIDIAN_LIMIT": "3"},
			args: []string{"history"},
			check: func(t *testing.T, _ result, last *fakeCall) {
				if got := last.req.(*meridianv1.HistoryRequest).GetLimit(); got != 3 {
					t.Errorf("limit = %d, want 3", got)
				}
			},
		},
		{
			name: "command flag wins over env", env: map[string]string{"MERIDIAN_SERVER": live, "MERIDIAN_LIMIT": "3"},
			args: []string{"history", "--limit", "5"},
			check: func(t *testing.T, _ result, last *fakeCall) {
				if got := last.req.(*meridianv1.HistoryRequest).GetLimit(); got != 5 {
					t.Errorf("limit = %d, want 5", got)
				}
			},
		},
		{
			name: "message from env", env: map[string]string{"MERIDIAN_SERVER": live, "MERIDIAN_MESSAGE": "from env", "USER": "carol"},
			args: []string{"rollback"},
			check: func(t *testing.T, _ result, last *fakeCall) {
				req := last.req.(*meridianv1.RollbackRequest)
				if req.GetMessage() != "from env" || req.GetAuthor() != "carol@build-host" || req.GetVersion() != 0 {
					t.Errorf("request = %v, want message from env, author carol@build-host, version 0", req)
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := len(fake.recorded())
			res := run(t, tt.env, "", tt.args...)
			if res.code != tt.wantCode {
				t.Fatalf("exit code = %d, want %d\nstderr: %s", res.code, tt.wantCode, res.stderr)
			}
			var last *fakeCall
			if calls := fake.recorded(); len(calls) > before {
				last = &calls[len(calls)-1]
			}
			if tt.wantCode == 0 && last == nil {
				t.Fatal("the fake received no call")
			}
			if tt.check != nil {
				tt.check(t, res, last)
			}
		})
	}
}

func TestTableOutput(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want string
	}{
		{
			name: "get",
			args: []string{"get"},
			want: "" +
				"KIND       NAME       SUMMARY\n" +
				"Upstream   users      http 127.0.0.1:9001, 127.0.0.1:9002\n" +
				"Route      get-user   GET api.example.com /api/v1/users/{id} -> users\n",
		},
		{
			name: "history",
			args: []string{"history"},
			want: "" +
				"VERSION   TIME                   AUTHOR         CHANGES                   MESSAGE\n" +
				"7         2026-04-30T09:30:00Z   alice@laptop   1 created, 2 configured   add users route\n" +
				"6         2026-04-29T17:00:00Z   bob@ci         1 deleted\n",
		},
		{
			name: "dataplanes",
			args: []string{"dataplanes"},
			want: "" +
				"ID     ADDRESS          VERSION   STATE          LAST-SEEN   ERROR\n" +
				"dp-1   10.0.0.1:8080    7         SYNCED         12s ago\n" +
				"dp-2   10.0.0.2:51234   6         NACKED         5m ago      Route \"get-user\": spec.match.paths[0].regex: missing closing )\n" +
				"dp-3   10.0.0.3:8080    5         DISCONNECTED   -\n",
		},
		{
			name: "delete",
			args: []string{"delete", "routes", "get-user", "-m", "retired"},
			want: "route/get-user deleted\nversion 8\n",
		},
		{
			name: "rollback",
			args: []string{"rollback", "6"},
			want: "route/get-user deleted\nversion 9 (restored version 6)\n",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			addr := serve(t, fullFake())
			res := run(t, nil, "", append([]string{"--server", addr}, tt.args...)...)
			if res.code != 0 {
				t.Fatalf("exit code = %d; stderr: %s", res.code, res.stderr)
			}
			if res.stdout != tt.want {
				t.Errorf("stdout:\n%s\nwant:\n%s", res.stdout, tt.want)
			}
		})
	}
}

func TestRequestsCarryArguments(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want proto.Message
	}{
		{name: "get by plural kind", args: []string{"get", "routes"}, want: &meridianv1.ListRequest{Kind: "Route"}},
		{name: "get one", args: []string{"get", "Upstream", "users"}, want: &meridianv1.GetRequest{Kind: "Upstream", Name: "users"}},
		{name: "delete", args: []string{"delete", "ratelimit", "per-user", "-m", "gone", "--expected-version", "4"},
			want: &meridianv1.DeleteRequest{Kind: "RateLimit", Name: "per-user", Message: "gone", Author: "dave@build-host", ExpectedVersion: 4}},
		{name: "rollback", args: []string{"rollback", "6", "-m", "undo"},
			want: &meridianv1.RollbackRequest{Version: 6, Message: "undo", Author: "dave@build-host"}},
		{name: "history limit", args: []string{"history", "--limit", "2"}, want: &meridianv1.HistoryRequest{Limit: 2}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fake := fullFake()
			addr := serve(t, fake)
			res := run(t, map[string]string{"USER": "dave"}, "", append([]string{"--server", addr}, tt.args...)...)
			if res.code != 0 {
				t.Fatalf("exit code = %d; stderr: %s", res.code, res.stderr)
			}
			calls := fake.recorded()
			if len(calls) != 1 {
				t.Fatalf("fake received %d calls, want 1", len(calls))
			}
			if !proto.Equal(calls[0].req, tt.want) {
				t.Errorf("request = %v, want %v", calls[0].req, tt.want)
			}
		})
	}
}

func TestMessageOutputFormats(t *testing.T) {
	addr := serve(t, fullFake())
	t.Run("history json", func(t *testing.T) {
		res := run(t, nil, "", "--server", addr, "-o", "json", "history")
		var got struct {
			Entries []struct {
				Version uint64 `json:"version"`
				Author  string `json:"author"`
				Time    string `json:"time"`
				Changes []struct {
					Action string `json:"action"`
				} `json:"changes"`
			} `json:"entries"`
		}
		if err := json.Unmarshal([]byte(res.stdout), &got); err != nil {
			t.Fatalf("stdout is not JSON: %v\n%s", err, res.stdout)
		}
		if len(got.Entries) != 2 || got.Entries[0].Version != 7 || got.Entries[0].Author != "alice@laptop" ||
			got.Entries[0].Time != "2026-04-30T09:30:00Z" || got.Entries[0].Changes[0].Action != "create" ||
			got.Entries[0].Changes[1].Action != "update" {
			t.Errorf("decoded %+v", got)
		}
		if !strings.Contains(res.stdout, "\n  \"entries\": [\n") {
			t.Errorf("want indented JSON, got:\n%s", res.stdout)
		}
	})
	t.Run("dataplanes yaml", func(t *testing.T) {
		res := run(t, nil, "", "--server", addr, "-o", "yaml", "dataplanes")
		var got struct {
			Dataplanes []struct {
				Node struct {
					ID string `yaml:"id"`
				} `yaml:"node"`
				State    string `yaml:"state"`
				LastNack struct {
					Error struct {
						Field string `yaml:"field"`
					} `yaml:"error"`
				} `yaml:"lastNack"`
			} `yaml:"dataplanes"`
			CurrentVersion uint64 `yaml:"currentVersion"`
		}
		if err := yaml.Unmarshal([]byte(res.stdout), &got); err != nil {
			t.Fatalf("stdout is not YAML: %v\n%s", err, res.stdout)
		}
		if len(got.Dataplanes) != 3 || got.Dataplanes[1].Node.ID != "dp-2" || got.Dataplanes[1].State != "nacked" ||
			got.Dataplanes[1].LastNack.Error.Field != "spec.match.paths[0].regex" || got.CurrentVersion != 7 {
			t.Errorf("decoded %+v from\n%s", got, res.stdout)
		}
		if strings.Contains(res.stdout, "{\"") {
			t.Errorf("want block-style YAML, got:\n%s", res.stdout)
		}
	})
	t.Run("version json", func(t *testing.T) {
		res := run(t, nil, "", "--server", addr, "-o", "json", "version")
		var got versionInfo
		if err := json.Unmarshal([]byte(res.stdout), &got); err != nil {
			t.Fatalf("stdout is not JSON: %v\n%s", err, res.stdout)
		}
		if got.Client.Version == "" || got.Server == nil || !got.Server.Reachable || got.Server.ConfigVersion != 7 || got.Server.Address != addr {
			t.Errorf("decoded %+v", got)
		}
	})
}

func TestVersion(t *testing.T) {
	addr := serve(t, fullFake())
	res := run(t, nil, "", "--server", addr, "version")
	if res.code != 0 {
		t.Fatalf("exit code = %d; stderr: %s", res.code, res.stderr)
	}
	want := regexp.MustCompile(`^client: gatewayctl ` + regexp.QuoteMeta(testVersion) + ` \(go[^)]+\)\nserver: ` + regexp.QuoteMeta(addr) + ` reachable, configuration version 7\n$`)
	if !want.MatchString(res.stdout) {
		t.Errorf("stdout = %q, want to match %s", res.stdout, want)
	}

	dead := deadAddress(t)
	res = run(t, nil, "", "--server", dead, "version")
	if res.code != 1 || !strings.HasPrefix(res.stdout, "client: gatewayctl") || !strings.Contains(res.stderr, "cannot reach control plane at "+dead) {
		t.Errorf("unreachable server: code %d, stdout %q, stderr %q", res.code, res.stdout, res.stderr)
	}
}

func TestTokenNeverPrinted(t *testing.T) {
	const token = "tok-S3CRET-4f9a"
	// A careless server echoing the token back must not make us print it.
	echo := status.Error(codes.PermissionDenied, "token "+token+" may not delete")
	fake := fullFake().fail("Delete", echo).fail("Get", status.Error(codes.Internal, "saw "+token)).
		fail("ListAudit", status.Error(codes.Unauthenticated, "unknown token "+token))
	addr := serve(t, fake)
	dead := deadAddress(t)
	cfg := writeFile(t, t.TempDir(), "gatewayctl.yaml", "insecure: true\ntoken: "+token+"\n")
	badCfg := writeFile(t, t.TempDir(), "bad.yaml", "token: "+token+"\ninsecure: "+token+"\n")
	runs := [][]string{
		{"get"},
		{"get", "route", "get-user"},
		{"history", "-o", "yaml"},
		{"dataplanes", "-o", "json"},
		{"version"},
		{"delete", "route", "get-user"},
		{"audit"},
		{"tokens", "list"},
		{"--help"},
		{"get", "--bogus"},
		{"--server", dead, "get"},
		{"--timeout", "-1s", "get"},
	}
	for _, via := range []string{"flag", "env", "config"} {
		for _, args := range runs {
			env := map[string]string{}
			full := append([]string{"--server", addr}, args...)
			switch via {
			case "flag":
				full = append([]string{"--token", token}, full...)
			case "env":
				env["MERIDIAN_TOKEN"] = token
			case "config":
				env["MERIDIAN_CONFIG"] = cfg
			}
			res := run(t, env, "", full...)
			if strings.Contains(res.stdout, token) || strings.Contains(res.stderr, token) {
				t.Errorf("gatewayctl %v (token via %s) printed the token:\nstdout: %s\nstderr: %s", args, via, res.stdout, res.stderr)
			}
		}
	}
	// A config file that does not parse has not given its token yet.
	res := run(t, nil, "", "--config", badCfg, "get")
	if res.code != ExitUsage || strings.Contains(res.stderr, token) {
		t.Errorf("broken config file: exit code %d, stderr %q; want %d and no token", res.code, res.stderr, ExitUsage)
	}
	// And the token did travel, as metadata.
	for _, c := range fake.recorded() {
		if len(c.auth) != 1 || c.auth[0] != "Bearer "+token {
			t.Errorf("%s call carried authorization %q", c.method, c.auth)
		}
	}
	if len(fake.recorded()) == 0 {
		t.Error("the fake received no call")
	}
}
