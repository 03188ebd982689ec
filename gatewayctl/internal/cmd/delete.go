package cmd

import (
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/meridian-gw/meridian/proto/config"
	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

// NewDeleteCommand returns `gatewayctl delete`.
func NewDeleteCommand(o *Options) *cobra.Command {
	var (
		message  string
		expected uint64
	)
	c := &cobra.Command{
		Use:     "delete KIND NAME [flags]",
		Short:   "Delete one resource as a new version",
		Example: "  gatewayctl delete route get-user -m \"retired\"",
		Args:    usageArgs(cobra.ExactArgs(2)),
		RunE: func(c *cobra.Command, args []string) error {
			kind, err := config.ParseKind(args[0])
			if err != nil {
				return usageError{err}
			}
			client, err := o.admin()
			if err != nil {
				return err
			}
			ctx, cancel := o.rpcContext(c.Context())
			defer cancel()
			resp, err := client.Delete(ctx, &meridianv1.DeleteRequest{
				Kind:            kind,
				Name:            args[1],
				Message:         message,
				Author:          o.author(),
				ExpectedVersion: expected,
			})
			if err != nil {
				return err
			}
			deleted := &meridianv1.Change{Action: meridianv1.ChangeAction_CHANGE_ACTION_DELETE, Kind: kind, Name: args[1]}
			return o.printer().Print(resp, func(w io.Writer) error {
				return writeOutcome(w, []*meridianv1.Change{deleted}, fmt.Sprintf("version %d", resp.GetVersion()))
			})
		},
	}
	c.Flags().StringVarP(&message, "message", "m", "", "message recorded in the history")
	c.Flags().Uint64Var(&expected, "expected-version", 0, "fail if the resource changed after this version")
	return c
}
