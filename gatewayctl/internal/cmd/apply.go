package cmd

import (
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/proto"

	"github.com/meridian-gw/meridian/proto/config"
	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

// maxStdinBytes bounds what -f - reads; config.Decode rejects inputs far
// smaller than this with a clear message.
const maxStdinBytes = 64 << 20

// NewApplyCommand returns `gatewayctl apply`.
func NewApplyCommand(o *Options) *cobra.Command {
	var (
		files    []string
		dryRun   bool
		prune    bool
		message  string
		expected uint64
	)
	c := &cobra.Command{
		Use:   "apply -f FILE|DIR|- [flags]",
		Short: "Create or update resources from YAML files as one new version",
		Long: "apply validates the resources locally, then sends them to the control plane, which\n" +
			"stores them as one new version. It prints one line per resource and the version.",
		Example: "  gatewayctl apply -f gateway.yaml\n" +
			"  gatewayctl apply -f ./config/ --prune -m \"move users to v2\"\n" +
			"  cat gateway.yaml | gatewayctl apply -f - --dry-run",
		Args: usageArgs(cobra.NoArgs),
		RunE: func(c *cobra.Command, _ []string) error {
			docs, err := o.loadResources(files, prune)
			if err != nil {
				return err
			}
			req := &meridianv1.ApplyRequest{
				Resources:       config.Resources(docs),
				DryRun:          dryRun,
				Prune:           prune,
				Message:         message,
				Author:          o.author(),
				ExpectedVersion: expected,
			}
			if err := checkApplySize("apply", req); err != nil {
				return err
			}
			client, err := o.admin()
			if err != nil {
				return err
			}
			ctx, cancel := o.rpcContext(c.Context())
			defer cancel()
			resp, err := client.Apply(ctx, req)
			if err != nil {
				return placeErrors(err, docs)
			}
			return o.printer().Print(resp, func(w io.Writer) error {
				return writeOutcome(w, resp.GetChanges(), versionLine(resp.GetVersion(), resp.GetChanges(), resp.GetDryRun()))
			})
		},
	}
	addFilenameFlag(c, &files)
	c.Flags().BoolVar(&dryRun, "dry-run", false, "validate and show what would change; store nothing")
	c.Flags().BoolVar(&prune, "prune", false, "delete stored resources that are not in the given files")
	c.Flags().StringVarP(&message, "message", "m", "", "message recorded in the history")
	c.Flags().Uint64Var(&expected, "expected-version", 0, "fail if anything this apply touches changed after this version")
	return c
}

// addFilenameFlag adds the repeatable -f flag of apply and diff.
func addFilenameFlag(c *cobra.Command, files *[]string) {
	c.Flags().StringSliceVarP(files, "filename", "f", nil, "YAML file, directory (recursively) or - for standard input; repeatable")
}

// loadResources decodes and validates the -f paths. Every problem in every
// file comes back together, and nothing is sent when there is one. Without
// prune the files may name resources that are only stored: the control
// plane checks those references against the configuration they merge into.
func (o *Options) loadResources(paths []string, prune bool) ([]*config.Document, error) {
	if len(paths) == 0 {
		return nil, usageErrorf("no input: pass -f FILE, -f DIR or -f - for standard input")
	}
	var (
		docs     []*config.Document
		problems config.ErrorList
		stdin    bool
	)
	for _, p := range paths {
		var (
			ds  []*config.Document
			err error
		)
		if p == "-" {
			// Read o.In rather than letting config.Load read os.Stdin, so
			// the command reads what it was given.
			if stdin {
				return nil, usageErrorf("-f - given more than once")
			}
			stdin = true
			data, rerr := io.ReadAll(io.LimitReader(o.In, maxStdinBytes))
			if rerr != nil {
				return nil, fmt.Errorf("read standard input: %w", rerr)
			}
			ds, err = config.Decode("<stdin>", data)
		} else {
			ds, err = config.Load(p)
		}
		var list config.ErrorList
		switch {
		case errors.As(err, &list):
			problems = append(problems, list...)
		case err != nil:
			return nil, err
		}
		docs = append(docs, ds...)
	}
	opts := config.Options{Partial: !prune, Where: "in the files (with --prune they are the whole configuration)"}
	if err := config.Check(docs, problems, opts).Err(); err != nil {
		return nil, err
	}
	if len(docs) == 0 {
		return nil, fmt.Errorf("no resources in %s", strings.Join(paths, ", "))
	}
	return docs, nil
}

// placeErrors gives each configuration problem the control plane found
// the file and line of the field it names, when its resource came from
// docs; problems of stored resources have no position.
func placeErrors(err error, docs []*config.Document) error {
	st, ok := grpcStatus(err)
	if !ok {
		return err
	}
	list := configErrors(st)
	if len(list) == 0 {
		return err
	}
	byKey := make(map[string]*config.Document, len(docs))
	for _, d := range docs {
		byKey[config.Key(d.Resource)] = d
	}
	for _, fe := range list {
		if d, ok := byKey[fe.Kind+"/"+fe.Name]; ok {
			fe.Pos = d.Position(fe.Path)
		}
	}
	return list
}

// checkApplySize refuses, before anything is sent, a request larger than
// config.MaxApplyBytes, which the control plane would refuse anyway; what
// names the request in the message.
func checkApplySize(what string, req proto.Message) error {
	n := proto.Size(req)
	if n <= config.MaxApplyBytes {
		return nil
	}
	return fmt.Errorf("the %s is %s; one apply may be at most %s (config.MaxApplyBytes): split the files into several applies",
		what, mebibytes(n), mebibytes(config.MaxApplyBytes))
}

// mebibytes reads "8 MiB" or "9.3 MiB", rounded up so that a size just
// past a limit never reads as the limit.
func mebibytes(n int) string {
	tenths := (n*10 + (1<<20 - 1)) >> 20
	if tenths%10 == 0 {
		return fmt.Sprintf("%d MiB", tenths/10)
	}
	return fmt.Sprintf("%d.%d MiB", tenths/10, tenths%10)
}

// writeOutcome writes one line per change, kubectl style, then last.
func writeOutcome(w io.Writer, changes []*meridianv1.Change, last string) error {
	for _, ch := range changes {
		if _, err := fmt.Fprintf(w, "%s %s\n", changeKey(ch), changeVerb(ch.GetAction())); err != nil {
			return err
		}
	}
	_, err := fmt.Fprintln(w, last)
	return err
}

// versionLine is the last line of apply and delete.
func versionLine(version uint64, changes []*meridianv1.Change, dryRun bool) string {
	switch {
	case !anyChange(changes):
		return fmt.Sprintf("no changes; version %d", version)
	case dryRun:
		return fmt.Sprintf("version %d (dry run)", version)
	}
	return fmt.Sprintf("version %d", version)
}

// changeKey reads "route/get-user".
func changeKey(ch *meridianv1.Change) string {
	return strings.ToLower(ch.GetKind()) + "/" + ch.GetName()
}

// changeVerb is the past-tense word kubectl users know.
func changeVerb(a meridianv1.ChangeAction) string {
	switch a {
	case meridianv1.ChangeAction_CHANGE_ACTION_CREATE:
		return "created"
	case meridianv1.ChangeAction_CHANGE_ACTION_UPDATE:
		return "configured"
	case meridianv1.ChangeAction_CHANGE_ACTION_DELETE:
		return "deleted"
	case meridianv1.ChangeAction_CHANGE_ACTION_UNCHANGED:
		return "unchanged"
	}
	return "changed"
}

// isChange reports whether a changes anything.
func isChange(a meridianv1.ChangeAction) bool {
	return a != meridianv1.ChangeAction_CHANGE_ACTION_UNCHANGED
}

// anyChange reports whether changes holds anything but "unchanged".
func anyChange(changes []*meridianv1.Change) bool {
	for _, ch := range changes {
		if isChange(ch.GetAction()) {
			return true
		}
	}
	return false
}
