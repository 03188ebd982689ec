package cmd

import (
	"fmt"
	"io"
	"strconv"

	"github.com/spf13/cobra"

	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

// NewRollbackCommand returns `gatewayctl rollback`.
func NewRollbackCommand(o *Options) *cobra.Command {
	var message string
	c := &cobra.Command{
		Use:   "rollback [VERSION] [flags]",
		Short: "Make a new version equal to an earlier one (default: the one before current)",
		Long: "rollback restores the configuration of an earlier version as a new version;\n" +
			"history is never rewritten. Without VERSION it restores the version before the\n" +
			"current one. See `gatewayctl history` for the versions.",
		Example: "  gatewayctl rollback\n" +
			"  gatewayctl rollback 41 -m \"bad retry policy\"",
		Args: usageArgs(cobra.MaximumNArgs(1)),
		RunE: func(c *cobra.Command, args []string) error {
			var version uint64
			if len(args) == 1 {
				v, err := strconv.ParseUint(args[0], 10, 64)
				if err != nil || v == 0 {
					return usageErrorf("VERSION must be a positive number, got %q", args[0])
				}
				version = v
			}
			client, err := o.admin()
			if err != nil {
				return err
			}
			ctx, cancel := o.rpcContext(c.Context())
			defer cancel()
			resp, err := client.Rollback(ctx, &meridianv1.RollbackRequest{
				Version: version,
				Message: message,
				Author:  o.author(),
			})
			if err != nil {
				return err
			}
			return o.printer().Print(resp, func(w io.Writer) error {
				last := fmt.Sprintf("version %d (restored version %d)", resp.GetVersion(), resp.GetRestoredVersion())
				if !anyChange(resp.GetChanges()) {
					last = fmt.Sprintf("no changes; version %d already equals version %d", resp.GetVersion(), resp.GetRestoredVersion())
				}
				return writeOutcome(w, resp.GetChanges(), last)
			})
		},
	}
	c.Flags().StringVarP(&message, "message", "m", "", "message recorded in the history")
	return c
}
