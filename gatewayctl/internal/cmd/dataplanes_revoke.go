package cmd

import (
	"fmt"
	"io"

	"github.com/spf13/cobra"

	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

// NewDataplanesRevokeCommand returns `gatewayctl dataplanes revoke`.
func NewDataplanesRevokeCommand(o *Options) *cobra.Command {
	return &cobra.Command{
		Use:   "revoke ID",
		Short: "Cut a data plane off: close its streams and refuse its certificates",
		Long: "revoke closes the data plane's discovery streams on every control-plane replica\n" +
			"and refuses its certificates until they expire. To let it back in, enrol it\n" +
			"again with a new join token once the refusal ends.",
		Example: "  gatewayctl dataplanes revoke dp-7",
		Args:    usageArgs(cobra.ExactArgs(1)),
		RunE: func(c *cobra.Command, args []string) error {
			client, err := o.admin()
			if err != nil {
				return err
			}
			ctx, cancel := o.rpcContext(c.Context())
			defer cancel()
			resp, err := client.RevokeDataplane(ctx, &meridianv1.RevokeDataplaneRequest{Id: args[0]})
			if err != nil {
				return err
			}
			return o.printer().Print(resp, func(w io.Writer) error {
				line := fmt.Sprintf("dataplane %s revoked", args[0])
				if until := resp.GetRefusedUntil(); until != nil {
					line += "; its certificates are refused until " + timestamp(until.AsTime(), true)
				}
				_, err := fmt.Fprintln(w, line)
				return err
			})
		},
	}
}
