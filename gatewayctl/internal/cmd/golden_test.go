package cmd

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/meridian-gw/meridian/gatewayctl/internal/printer"
	"github.com/meridian-gw/meridian/proto/config"
	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

// go test ./gatewayctl/internal/cmd -run TestGolden -update rewrites the
// golden files and the examples of docs/gatewayctl.md from what the
// commands print now.
var update = flag.Bool("update", false, "rewrite testdata/golden/ and the examples in docs/gatewayctl.md")

// docPath is the reference page whose examples are the golden files.
const docPath = "../../../docs/gatewayctl.md"

// The stand-ins the golden output shows for what changes from run to run.
const (
	goldenServer    = "127.0.0.1:7400"
	goldenGoVersion = "go1.26.0"
)

// goldenCases is every command's -o json output, and a few -o yaml: the
// schema docs/gatewayctl.md documents and scripts rely on.
var goldenCases = []struct {
	file string // under testdata/golden/
	args []string
	code int
}{
	{file: "apply.json", args: []string{"apply", "-f", "testdata/valid.yaml", "-m", "add users", "-o", "json"}},
	{file: "apply.yaml", args: []string{"apply", "-f", "testdata/valid.yaml", "-m", "add users", "-o", "yaml"}},
	{file: "diff.json", args: []string{"diff", "-f", "testdata/valid.yaml", "-o", "json"}, code: ExitFailure},
	{file: "get.json", args: []string{"get", "-o", "json"}},
	{file: "get-route.json", args: []string{"get", "route", "get-user", "-o", "json"}},
	{file: "get.yaml", args: []string{"get", "-o", "yaml"}},
	{file: "delete.json", args: []string{"delete", "route", "get-user", "-m", "retired", "-o", "json"}},
	{file: "history.json", args: []string{"history", "-o", "json"}},
	{file: "history.yaml", args: []string{"history", "-o", "yaml"}},
	{file: "rollback.json", args: []string{"rollback", "6", "-o", "json"}},
	{file: "dataplanes.json", args: []string{"dataplanes", "-o", "json"}},
	{file: "dataplanes.yaml", args: []string{"dataplanes", "-o", "yaml"}},
	{file: "dataplanes-revoke.json", args: []string{"dataplanes", "revoke", "dp-2", "-o", "json"}},
	{file: "tokens-create.json", args: []string{"tokens", "create", "--ttl", "30m", "--uses", "3", "--labels", "zone=a", "-o", "json"}},
	{file: "tokens-list.json", args: []string{"tokens", "list", "-o", "json"}},
	{file: "tokens-revoke.json", args: []string{"tokens", "revoke", testTokenID, "-o", "json"}},
	{file: "audit.json", args: []string{"audit", "-o", "json"}},
	{file: "version.json", args: []string{"version", "-o", "json"}},
	{file: "version.yaml", args: []string{"version", "-o", "yaml"}},
}

// goldenFake answers every call a golden case makes, at testNow.
func goldenFake() *fakeAdmin {
	ts := func(d time.Duration) *timestamppb.Timestamp { return timestamppb.New(testNow().Add(d)) }
	f := fullFake()
	for method, resp := range tokensFake().responses {
		f.respond(method, resp)
	}
	// What a real control plane fills in and the table tests leave out.
	fleet := dataplanesResponse()
	for i, d := range fleet.GetDataplanes() {
		d.Node.BuildVersion = testVersion
		d.AppliedHash = fakeHash(d.GetAppliedVersion())
		if d.PeerAddress == "" {
			d.PeerAddress = fmt.Sprintf("10.0.0.%d:4031%d", i+1, i)
		}
		d.Node.Labels = map[string]string{"zone": "a"}
		d.Controlplane = "cp-1"
		d.ConnectedAt = ts(-time.Duration(i+1) * time.Hour)
	}
	fleet.Dataplanes[1].LastNack.Time = ts(-5 * time.Minute)
	history := historyResponse()
	for _, e := range history.GetEntries() {
		e.ResourceCount = 2
		e.Hash = fakeHash(e.GetVersion())
	}
	f.respond("ListDataplanes", fleet).respond("History", history)
	routeDiff := "--- Route/get-user (version 7)\n+++ Route/get-user (local)\n@@ -5 +5 @@\n-  upstream: old\n+  upstream: users\n"
	return f.
		respond("Apply", &meridianv1.ApplyResponse{Version: 8, Changes: []*meridianv1.Change{
			{Action: meridianv1.ChangeAction_CHANGE_ACTION_UNCHANGED, Kind: "Upstream", Name: "users"},
			{Action: meridianv1.ChangeAction_CHANGE_ACTION_CREATE, Kind: "Route", Name: "get-user"},
		}}).
		respond("Diff", &meridianv1.DiffResponse{Version: 7, Changes: []*meridianv1.Change{
			{Action: meridianv1.ChangeAction_CHANGE_ACTION_UNCHANGED, Kind: "Upstream", Name: "users"},
			{Action: meridianv1.ChangeAction_CHANGE_ACTION_UPDATE, Kind: "Route", Name: "get-user", Diff: routeDiff},
		}}).
		respond("ListAudit", &meridianv1.ListAuditResponse{Records: []*meridianv1.AuditRecord{
			{Time: ts(-time.Hour), Principal: "alice", Role: "operator", Method: "/meridian.v1.AdminService/Apply",
				Target: "Route/get-user", Outcome: "ok", Version: 8, PeerAddress: "10.0.0.9:50112", Controlplane: "cp-1"},
			{Time: ts(-time.Minute), Method: "/meridian.v1.AdminService/Delete", Outcome: "denied",
				PeerAddress: "10.0.0.66:40000", Message: "no token", Controlplane: "cp-1"},
		}})
}

// fakeHash stands in for config.Hash of the configuration at version v.
func fakeHash(v uint64) string {
	sum := sha256.Sum256([]byte(fmt.Sprint(v)))
	return hex.EncodeToString(sum[:])
}

// goldenOutput runs one case and returns stdout with the run's server
// address and Go version replaced by the stand-ins.
func goldenOutput(t *testing.T, addr string, args []string, wantCode int) string {
	t.Helper()
	res := run(t, nil, "", append([]string{"--server", addr}, args...)...)
	if res.code != wantCode || res.stderr != "" {
		t.Fatalf("gatewayctl %s: exit code %d, stderr %q; want %d and nothing", strings.Join(args, " "), res.code, res.stderr, wantCode)
	}
	out := strings.ReplaceAll(res.stdout, addr, goldenServer)
	return strings.ReplaceAll(out, runtime.Version(), goldenGoVersion)
}

func TestGolden(t *testing.T) {
	addr := serve(t, goldenFake())
	outputs := map[string]string{}
	for _, tc := range goldenCases {
		t.Run(tc.file, func(t *testing.T) {
			got := goldenOutput(t, addr, tc.args, tc.code)
			outputs[tc.file] = got
			path := filepath.Join("testdata", "golden", tc.file)
			if *update {
				if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run with -update to write it)", err)
			}
			if got != string(want) {
				t.Errorf("gatewayctl %s:\n%s\nwant (%s; -update rewrites it):\n%s", strings.Join(tc.args, " "), got, path, want)
			}
		})
	}
	t.Run("docs", func(t *testing.T) {
		// Run again what -run TestGolden/docs skipped.
		for _, tc := range goldenCases {
			if _, ok := outputs[tc.file]; !ok {
				outputs[tc.file] = goldenOutput(t, addr, tc.args, tc.code)
			}
		}
		checkDocExamples(t, outputs)
	})
}

// docExample is one example of docs/gatewayctl.md: a marker line naming
// its golden file, then a fenced block with the file's content.
var docExample = regexp.MustCompile("(?s)<!-- golden: ([^ ]+) -->\n```(json|yaml)\n(.*?)```\n")

// checkDocExamples checks that every example of docs/gatewayctl.md is its
// golden file's content, and that every golden file has an example; with
// -update it rewrites the examples instead.
func checkDocExamples(t *testing.T, outputs map[string]string) {
	doc, err := os.ReadFile(docPath)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	// stale examples -update rewrites; broken ones it cannot fix.
	var stale, broken []string
	updated := docExample.ReplaceAllFunc(doc, func(block []byte) []byte {
		m := docExample.FindSubmatch(block)
		file, lang, body := string(m[1]), string(m[2]), string(m[3])
		seen[file] = true
		want, ok := outputs[file]
		switch {
		case !ok:
			broken = append(broken, fmt.Sprintf("example %s names no golden case", file))
			return block
		case lang != strings.TrimPrefix(filepath.Ext(file), "."):
			broken = append(broken, fmt.Sprintf("example %s is fenced as %s", file, lang))
			return block
		case body != want:
			stale = append(stale, fmt.Sprintf("example %s differs from the output:\n%s", file, want))
		}
		return fmt.Appendf(nil, "<!-- golden: %s -->\n```%s\n%s```\n", file, lang, want)
	})
	for _, tc := range goldenCases {
		if !seen[tc.file] {
			broken = append(broken, fmt.Sprintf("no example for %s: add \"<!-- golden: %s -->\" and a fenced block", tc.file, tc.file))
		}
	}
	for _, p := range broken {
		t.Errorf("%s: %s", docPath, p)
	}
	if !*update {
		for _, p := range stale {
			t.Errorf("%s: %s (-update rewrites the examples)", docPath, p)
		}
		return
	}
	if !bytes.Equal(updated, doc) {
		if err := os.WriteFile(docPath, updated, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// TestGetRoundTrip checks that what get prints is what apply reads: every
// field of every kind, enums as the configuration words, survives
// `gatewayctl get -o yaml` (and the JSON object of one resource) and
// config.Decode.
func TestGetRoundTrip(t *testing.T) {
	docs, err := config.Load("../../../proto/config/testdata/full.yaml")
	if err != nil {
		t.Fatal(err)
	}
	resources := config.Resources(docs)
	fake := newFakeAdmin().respond("List", &meridianv1.ListResponse{Version: 3, Resources: resources})
	addr := serve(t, fake)
	res := run(t, nil, "", "--server", addr, "get", "-o", "yaml")
	back, err := config.Decode("get.yaml", []byte(res.stdout))
	if err != nil || res.code != 0 {
		t.Fatalf("get -o yaml (exit %d) does not decode: %v\n%s", res.code, err, res.stdout)
	}
	if err := config.ValidateDocuments(back); err != nil {
		t.Errorf("get -o yaml does not validate: %v", err)
	}
	got := config.Resources(back)
	if len(got) != len(resources) {
		t.Fatalf("%d resources back, want %d", len(got), len(resources))
	}
	for i := range got {
		if !proto.Equal(got[i], resources[i]) {
			t.Errorf("round trip of %s:\n%v\nwant\n%v", config.Key(resources[i]), got[i], resources[i])
		}
	}
	for _, r := range resources {
		one := newFakeAdmin().respond("Get", &meridianv1.GetResponse{Version: 3, Resource: r})
		addr := serve(t, one)
		res := run(t, nil, "", "--server", addr, "get", config.Kind(r), config.Name(r), "-o", "json")
		back, err := config.Decode("get.json", []byte(res.stdout))
		if err != nil || len(back) != 1 || !proto.Equal(back[0].Resource, r) {
			t.Errorf("get %s -o json does not read back (%v):\n%s", config.Key(r), err, res.stdout)
		}
	}
}

func TestBuildVersion(t *testing.T) {
	if got := buildVersion("v1.2.3-4-gabcdef0"); got != "v1.2.3-4-gabcdef0" {
		t.Errorf("stamped: %q", got)
	}
	if got := buildVersion(""); got == "" {
		t.Error("unstamped: empty, want the build information's or (devel)")
	}
}

// TestStateWords keeps the STATE column and -o json saying the same thing.
func TestStateWords(t *testing.T) {
	vals := meridianv1.DataplaneState(0).Descriptor().Values()
	for i := range vals.Len() {
		s := meridianv1.DataplaneState(vals.Get(i).Number())
		data, err := printer.MarshalMessage(&meridianv1.DataplaneStatus{State: s})
		if err != nil {
			t.Fatal(err)
		}
		var got struct {
			State string `json:"state"`
		}
		if err := json.Unmarshal(data, &got); err != nil {
			t.Fatal(err)
		}
		want := strings.ToLower(stateWord(s))
		if s == meridianv1.DataplaneState_DATAPLANE_STATE_UNSPECIFIED {
			want = "unspecified" // the table says UNKNOWN
		}
		if got.State != want {
			t.Errorf("%v: -o json says %q, the table %q", s, got.State, stateWord(s))
		}
	}
}
