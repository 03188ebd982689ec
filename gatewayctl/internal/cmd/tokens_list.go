package cmd

import (
	"io"

	"github.com/spf13/cobra"

	"github.com/meridian-gw/meridian/gatewayctl/internal/printer"
	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

// NewTokensListCommand returns `gatewayctl tokens list`.
func NewTokensListCommand(o *Options) *cobra.Command {
	return &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List join tokens (never their secrets), oldest first",
		Args:    usageArgs(cobra.NoArgs),
		RunE: func(c *cobra.Command, _ []string) error {
			client, err := o.admin()
			if err != nil {
				return err
			}
			ctx, cancel := o.rpcContext(c.Context())
			defer cancel()
			resp, err := client.ListJoinTokens(ctx, &meridianv1.ListJoinTokensRequest{})
			if err != nil {
				return err
			}
			now := o.now()
			return o.printer().Print(resp, func(w io.Writer) error {
				rows := make([][]string, len(resp.GetTokens()))
				for i, tok := range resp.GetTokens() {
					rows[i] = []string{
						tok.GetId(),
						timestamp(tok.GetCreatedAt().AsTime(), tok.GetCreatedAt() != nil),
						dash(tok.GetCreatedBy()),
						expiresText(tok, now),
						usesText(tok),
						labelsText(tok.GetLabels()),
					}
				}
				return printer.WriteTable(w, []string{"ID", "CREATED", "CREATED-BY", "EXPIRES", "USES", "LABELS"}, rows)
			})
		},
	}
}

// dash stands in for an empty cell in the middle of a row.
func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
