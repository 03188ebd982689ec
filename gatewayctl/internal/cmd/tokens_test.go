package cmd

import (
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

// testJoinToken is well formed: 8-letter id, 32-letter secret, 64-hex pin.
const (
	testTokenID     = "4k2q7vxa"
	testTokenSecret = "abcdefghijklmnopqrstuvwxyz234567"
	testJoinToken   = testTokenID + "." + testTokenSecret + "." +
		"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
)

func tokensFake() *fakeAdmin {
	ts := func(d time.Duration) *timestamppb.Timestamp { return timestamppb.New(testNow().Add(d)) }
	return newFakeAdmin().
		respond("CreateJoinToken", &meridianv1.CreateJoinTokenResponse{
			Token: testJoinToken,
			Info:  &meridianv1.JoinToken{Id: testTokenID, CreatedAt: ts(0), CreatedBy: "admin", ExpiresAt: ts(30 * time.Minute), MaxUses: 3},
		}).
		respond("ListJoinTokens", &meridianv1.ListJoinTokensResponse{Tokens: []*meridianv1.JoinToken{
			{Id: "aaaaaaaa", CreatedAt: ts(-2 * time.Hour), CreatedBy: "admin", ExpiresAt: ts(-time.Hour), MaxUses: 1, Uses: 1},
			{Id: testTokenID, CreatedAt: ts(0), CreatedBy: "alice", ExpiresAt: ts(30 * time.Minute), MaxUses: 3, Uses: 1,
				Labels: map[string]string{"zone": "a", "env": "prod"}},
			{Id: "bbbbbbbb", CreatedAt: ts(-time.Minute), Uses: 2},
		}}).
		respond("RevokeJoinToken", &meridianv1.RevokeJoinTokenResponse{}).
		respond("RevokeDataplane", &meridianv1.RevokeDataplaneResponse{RefusedUntil: ts(24 * time.Hour)})
}

func TestTokensAndRevoke(t *testing.T) {
	tests := []struct {
		name    string
		env     map[string]string
		args    []string
		want    string // stdout
		wantReq proto.Message
	}{
		{
			name: "create",
			args: []string{"tokens", "create", "--ttl", "30m", "--uses", "3", "--labels", "zone=a,env=prod"},
			want: testJoinToken + "\nid 4k2q7vxa, expires 2026-05-01T12:30:00Z, uses 0/3\n",
			wantReq: &meridianv1.CreateJoinTokenRequest{Ttl: durationpb.New(30 * time.Minute), MaxUses: 3,
				Labels: map[string]string{"zone": "a", "env": "prod"}},
		},
		{
			name:    "create with the control plane's defaults",
			args:    []string{"tokens", "create"},
			want:    testJoinToken + "\nid 4k2q7vxa, expires 2026-05-01T12:30:00Z, uses 0/3\n",
			wantReq: &meridianv1.CreateJoinTokenRequest{},
		},
		{
			name:    "create from the environment",
			env:     map[string]string{"MERIDIAN_TTL": "10m", "MERIDIAN_USES": "1", "MERIDIAN_LABELS": "zone=b"},
			args:    []string{"tokens", "create"},
			want:    testJoinToken + "\nid 4k2q7vxa, expires 2026-05-01T12:30:00Z, uses 0/3\n",
			wantReq: &meridianv1.CreateJoinTokenRequest{Ttl: durationpb.New(10 * time.Minute), MaxUses: 1, Labels: map[string]string{"zone": "b"}},
		},
		{
			name: "create as json keeps the token",
			args: []string{"tokens", "create", "-o", "json"},
			want: "{\n  \"token\": \"" + testJoinToken + "\",\n  \"info\": {\n    \"id\": \"4k2q7vxa\",\n" +
				"    \"createdAt\": \"2026-05-01T12:00:00Z\",\n    \"createdBy\": \"admin\",\n    \"expiresAt\": \"2026-05-01T12:30:00Z\",\n" +
				"    \"maxUses\": 3,\n    \"uses\": 0,\n    \"labels\": {}\n  }\n}\n",
			wantReq: &meridianv1.CreateJoinTokenRequest{},
		},
		{
			name: "list",
			args: []string{"tokens", "list"},
			want: "" +
				"ID         CREATED                CREATED-BY   EXPIRES                          USES          LABELS\n" +
				"aaaaaaaa   2026-05-01T10:00:00Z   admin        2026-05-01T11:00:00Z (expired)   1/1\n" +
				"4k2q7vxa   2026-05-01T12:00:00Z   alice        2026-05-01T12:30:00Z             1/3           env=prod,zone=a\n" +
				"bbbbbbbb   2026-05-01T11:59:00Z   -            never                            2/unlimited\n",
			wantReq: &meridianv1.ListJoinTokensRequest{},
		},
		{
			name:    "revoke",
			args:    []string{"tokens", "revoke", testTokenID},
			want:    "token 4k2q7vxa revoked\n",
			wantReq: &meridianv1.RevokeJoinTokenRequest{Id: testTokenID},
		},
		{
			name:    "revoke by the whole token sends only its id",
			args:    []string{"tokens", "revoke", testJoinToken},
			want:    "token 4k2q7vxa revoked\n",
			wantReq: &meridianv1.RevokeJoinTokenRequest{Id: testTokenID},
		},
		{
			name:    "dataplanes revoke",
			args:    []string{"dataplanes", "revoke", "dp-2"},
			want:    "dataplane dp-2 revoked; its certificates are refused until 2026-05-02T12:00:00Z\n",
			wantReq: &meridianv1.RevokeDataplaneRequest{Id: "dp-2"},
		},
		{
			name:    "dataplanes revoke as yaml",
			args:    []string{"dataplanes", "revoke", "dp-2", "-o", "yaml"},
			want:    "refusedUntil: \"2026-05-02T12:00:00Z\"\n",
			wantReq: &meridianv1.RevokeDataplaneRequest{Id: "dp-2"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fake := tokensFake()
			addr := serve(t, fake)
			res := run(t, tt.env, "", append([]string{"--server", addr}, tt.args...)...)
			if res.code != 0 {
				t.Fatalf("exit code = %d; stderr: %s", res.code, res.stderr)
			}
			if res.stdout != tt.want {
				t.Errorf("stdout:\n%s\nwant:\n%s", res.stdout, tt.want)
			}
			calls := fake.recorded()
			if len(calls) != 1 || !proto.Equal(calls[0].req, tt.wantReq) {
				t.Errorf("calls = %v, want one with %v", calls, tt.wantReq)
			}
			if strings.Contains(tt.args[len(tt.args)-1], testTokenSecret) && strings.Contains(res.stdout+res.stderr, testTokenSecret) {
				t.Errorf("the secret of the token was printed back: %q", res.stdout+res.stderr)
			}
		})
	}
}

func TestTokensCreateFirstLine(t *testing.T) {
	addr := serve(t, tokensFake())
	res := run(t, nil, "", "--server", addr, "tokens", "create")
	first, _, _ := strings.Cut(res.stdout, "\n")
	if res.code != 0 || first != testJoinToken {
		t.Errorf("first line = %q (exit %d), want the token alone", first, res.code)
	}
}

func TestAudit(t *testing.T) {
	ts := func(d time.Duration) *timestamppb.Timestamp { return timestamppb.New(testNow().Add(d)) }
	resp := &meridianv1.ListAuditResponse{Records: []*meridianv1.AuditRecord{
		{Time: ts(-time.Hour), Principal: "alice", Role: "operator", Method: "/meridian.v1.AdminService/Apply",
			Target: "Route/get-user", Outcome: "ok", Version: 8, PeerAddress: "10.0.0.9:50112"},
		{Time: ts(-time.Minute), Method: "/meridian.v1.AdminService/Delete", Outcome: "denied",
			PeerAddress: "10.0.0.66:40000", Message: "no token"},
	}}
	since := func(t time.Time) *timestamppb.Timestamp { return timestamppb.New(t) }
	tests := []struct {
		name       string
		env        map[string]string
		args       []string
		wantCode   int
		wantReq    *meridianv1.ListAuditRequest
		wantStderr string
	}{
		{name: "everything", args: []string{"audit"}, wantReq: &meridianv1.ListAuditRequest{}},
		{name: "since a duration", args: []string{"audit", "--since", "1h"}, wantReq: &meridianv1.ListAuditRequest{Since: since(testNow().Add(-time.Hour))}},
		{name: "since a compound duration", args: []string{"audit", "--since", "2h30m", "--limit", "5"},
			wantReq: &meridianv1.ListAuditRequest{Since: since(testNow().Add(-150 * time.Minute)), Limit: 5}},
		{name: "since a time", args: []string{"audit", "--since", "2026-04-30T00:00:00Z"},
			wantReq: &meridianv1.ListAuditRequest{Since: since(time.Date(2026, 4, 30, 0, 0, 0, 0, time.UTC))}},
		{name: "since a time with an offset", args: []string{"audit", "--since", "2026-04-30T02:00:00+02:00"},
			wantReq: &meridianv1.ListAuditRequest{Since: since(time.Date(2026, 4, 30, 0, 0, 0, 0, time.UTC))}},
		{name: "since from the environment", env: map[string]string{"MERIDIAN_SINCE": "15m"}, args: []string{"audit"},
			wantReq: &meridianv1.ListAuditRequest{Since: since(testNow().Add(-15 * time.Minute))}},
		{name: "since a word", args: []string{"audit", "--since", "yesterday"}, wantCode: 2,
			wantStderr: `error: invalid --since "yesterday": want a duration such as 1h or a time such as 2026-05-01T12:00:00Z; see 'gatewayctl audit --help'` + "\n"},
		{name: "since a negative duration", args: []string{"audit", "--since", "-1h"}, wantCode: 2,
			wantStderr: `error: invalid --since "-1h": a duration must not be negative`},
		{name: "since a date alone", args: []string{"audit", "--since", "2026-04-30"}, wantCode: 2, wantStderr: `error: invalid --since "2026-04-30": want a duration`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fake := newFakeAdmin().respond("ListAudit", resp)
			addr := serve(t, fake)
			res := run(t, tt.env, "", append([]string{"--server", addr}, tt.args...)...)
			if res.code != tt.wantCode || !strings.HasPrefix(res.stderr, tt.wantStderr) {
				t.Fatalf("exit code %d, stderr %q; want %d, %q", res.code, res.stderr, tt.wantCode, tt.wantStderr)
			}
			calls := fake.recorded()
			if tt.wantReq == nil {
				if len(calls) != 0 {
					t.Errorf("the server received %d calls", len(calls))
				}
				return
			}
			if len(calls) != 1 || !proto.Equal(calls[0].req, tt.wantReq) {
				t.Errorf("calls = %v, want one with %v", calls, tt.wantReq)
			}
			want := "" +
				"TIME                   PRINCIPAL   ROLE       METHOD   TARGET           OUTCOME   VERSION   PEER\n" +
				"2026-05-01T11:00:00Z   alice       operator   Apply    Route/get-user   ok        8         10.0.0.9:50112\n" +
				"2026-05-01T11:59:00Z   -           -          Delete   -                denied    -         10.0.0.66:40000\n"
			if res.stdout != want {
				t.Errorf("stdout:\n%s\nwant:\n%s", res.stdout, want)
			}
		})
	}
}

func TestNewCommandErrors(t *testing.T) {
	tests := []struct {
		name       string
		args       []string
		fail       map[string]error
		wantCode   int
		wantStderr string
		wantCalls  int
	}{
		{name: "tokens alone prints help", args: []string{"tokens"}, wantCode: 0},
		{name: "tokens with an unknown subcommand", args: []string{"tokens", "frobnicate"}, wantCode: 2,
			wantStderr: `error: unknown command "frobnicate" for "gatewayctl tokens"; see 'gatewayctl tokens --help'` + "\n"},
		{name: "tokens with a misspelt subcommand", args: []string{"tokens", "craete"}, wantCode: 2, wantStderr: `did you mean "create"?`},
		{name: "dataplanes with a misspelt subcommand", args: []string{"dataplanes", "revok", "dp-1"}, wantCode: 2, wantStderr: `did you mean "revoke"?`},
		{name: "dataplanes revoke without an id", args: []string{"dataplanes", "revoke"}, wantCode: 2, wantStderr: "accepts 1 arg(s), received 0"},
		{name: "tokens revoke without an id", args: []string{"tokens", "revoke"}, wantCode: 2, wantStderr: "accepts 1 arg(s), received 0"},
		{name: "tokens create with a negative ttl", args: []string{"tokens", "create", "--ttl", "-1m"}, wantCode: 2,
			wantStderr: "--ttl must not be negative, got -1m0s"},
		{name: "tokens create with bad labels", args: []string{"tokens", "create", "--labels", "zone"}, wantCode: 2},
		{name: "tokens create with a bad uses", args: []string{"tokens", "create", "--uses", "many"}, wantCode: 2},
		{name: "token not found", args: []string{"tokens", "revoke", "zzzzzzzz"},
			fail:     map[string]error{"RevokeJoinToken": status.Error(codes.NotFound, `join token "zzzzzzzz" not found`)},
			wantCode: 1, wantCalls: 1, wantStderr: "error: join token \"zzzzzzzz\" not found\n"},
		{name: "viewer may not revoke", args: []string{"dataplanes", "revoke", "dp-1"},
			fail:     map[string]error{"RevokeDataplane": status.Error(codes.PermissionDenied, "viewer \"ci\" may not call RevokeDataplane (needs admin)")},
			wantCode: 1, wantCalls: 1, wantStderr: "error: permission denied: viewer \"ci\" may not call RevokeDataplane (needs admin)\n"},
		{name: "unauthenticated audit", args: []string{"audit"},
			fail:     map[string]error{"ListAudit": status.Error(codes.Unauthenticated, "unknown token")},
			wantCode: 1, wantCalls: 1, wantStderr: "error: not authenticated: unknown token; check --token, MERIDIAN_TOKEN or the token in --config\n"},
		{name: "old control plane", args: []string{"tokens", "list"},
			fail:     map[string]error{"ListJoinTokens": status.Error(codes.Unimplemented, "unknown method ListJoinTokens")},
			wantCode: 1, wantCalls: 1, wantStderr: "does not support this command (is it older than gatewayctl?)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fake := tokensFake()
			for method, err := range tt.fail {
				fake.fail(method, err)
			}
			addr := serve(t, fake)
			res := run(t, nil, "", append([]string{"--server", addr}, tt.args...)...)
			if res.code != tt.wantCode {
				t.Fatalf("exit code = %d, want %d\nstdout: %s\nstderr: %s", res.code, tt.wantCode, res.stdout, res.stderr)
			}
			if !strings.Contains(res.stderr, tt.wantStderr) {
				t.Errorf("stderr = %q, want it to contain %q", res.stderr, tt.wantStderr)
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
