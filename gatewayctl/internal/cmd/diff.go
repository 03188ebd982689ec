package cmd

import (
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"

	"github.com/meridian-gw/meridian/proto/config"
	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

// NewDiffCommand returns `gatewayctl diff`.
func NewDiffCommand(o *Options) *cobra.Command {
	var (
		files []string
		prune bool
	)
	c := &cobra.Command{
		Use:   "diff -f FILE|DIR|- [flags]",
		Short: "Show what apply would change; exit 1 when there is a difference",
		Example: "  gatewayctl diff -f gateway.yaml && echo up to date\n" +
			"  gatewayctl diff -f ./config/ --prune",
		Args: usageArgs(cobra.NoArgs),
		RunE: func(c *cobra.Command, _ []string) error {
			docs, err := o.loadResources(files, prune)
			if err != nil {
				return err
			}
			req := &meridianv1.DiffRequest{Resources: config.Resources(docs), Prune: prune}
			if err := checkApplySize("diff request", req); err != nil {
				return err
			}
			client, err := o.admin()
			if err != nil {
				return err
			}
			ctx, cancel := o.rpcContext(c.Context())
			defer cancel()
			resp, err := client.Diff(ctx, req)
			if err != nil {
				return placeErrors(err, docs)
			}
			err = o.printer().Print(resp, func(w io.Writer) error {
				return writeDiffs(w, resp.GetChanges())
			})
			if err != nil {
				return err
			}
			if anyChange(resp.GetChanges()) {
				return exitError{code: ExitFailure}
			}
			return nil
		},
	}
	addFilenameFlag(c, &files)
	c.Flags().BoolVar(&prune, "prune", false, "also show the deletions apply --prune would make")
	return c
}

// writeDiffs writes the unified diff of every change, or its summary line
// when the server sent no diff text.
func writeDiffs(w io.Writer, changes []*meridianv1.Change) error {
	for _, ch := range changes {
		if !isChange(ch.GetAction()) {
			continue
		}
		text := ch.GetDiff()
		if text == "" {
			text = fmt.Sprintf("%s %s\n", changeKey(ch), wouldVerb(ch.GetAction()))
		} else if !strings.HasSuffix(text, "\n") {
			text += "\n"
		}
		if _, err := io.WriteString(w, text); err != nil {
			return err
		}
	}
	return nil
}

// wouldVerb describes a change that has not happened yet.
func wouldVerb(a meridianv1.ChangeAction) string {
	switch a {
	case meridianv1.ChangeAction_CHANGE_ACTION_CREATE:
		return "would be created"
	case meridianv1.ChangeAction_CHANGE_ACTION_UPDATE:
		return "would be configured"
	case meridianv1.ChangeAction_CHANGE_ACTION_DELETE:
		return "would be deleted"
	}
	return "would change"
}
