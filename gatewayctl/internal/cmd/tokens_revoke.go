package cmd

import (
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/meridian-gw/meridian/proto/identity"
	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

// NewTokensRevokeCommand returns `gatewayctl tokens revoke`.
func NewTokensRevokeCommand(o *Options) *cobra.Command {
	return &cobra.Command{
		Use:   "revoke ID",
		Short: "Delete a join token; data planes already enrolled with it keep their certificates",
		Long: "revoke deletes the join token with this ID (the ID column of `tokens list`, the\n" +
			"part of a token before the first dot); a whole token is accepted too. Data planes\n" +
			"enrolled with it stay enrolled: see `gatewayctl dataplanes revoke`.",
		Example: "  gatewayctl tokens revoke 4k2q7vxa",
		Args:    usageArgs(cobra.ExactArgs(1)),
		RunE: func(c *cobra.Command, args []string) error {
			id := args[0]
			// Never send a pasted whole token's secret, even to the control
			// plane: it would end up in the audit record as the target.
			if tok, err := identity.ParseJoinToken(id); err == nil {
				id = tok.ID
			}
			if id == "" {
				return usageErrorf("ID is empty: pass the ID column of `gatewayctl tokens list`")
			}
			client, err := o.admin()
			if err != nil {
				return err
			}
			ctx, cancel := o.rpcContext(c.Context())
			defer cancel()
			resp, err := client.RevokeJoinToken(ctx, &meridianv1.RevokeJoinTokenRequest{Id: id})
			if err != nil {
				return err
			}
			return o.printer().Print(resp, func(w io.Writer) error {
				_, err := fmt.Fprintf(w, "token %s revoked\n", id)
				return err
			})
		},
	}
}
