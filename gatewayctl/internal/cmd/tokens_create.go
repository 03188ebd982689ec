package cmd

import (
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/types/known/durationpb"

	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

// NewTokensCreateCommand returns `gatewayctl tokens create`.
func NewTokensCreateCommand(o *Options) *cobra.Command {
	var (
		ttl    time.Duration
		uses   uint32
		labels map[string]string
	)
	c := &cobra.Command{
		Use:   "create [flags]",
		Short: "Create a join token; the token is printed once, on the first line",
		Long: "create makes a join token and prints it alone on the first line, so that\n" +
			"$(gatewayctl tokens create | head -1) is the token, then its id, expiry and uses.\n" +
			"The token is shown only this once.",
		Example: "  gatewayctl tokens create\n" +
			"  dataplane --join-token \"$(gatewayctl tokens create --ttl 10m --uses 1 --labels zone=a | head -1)\"",
		Args: usageArgs(cobra.NoArgs),
		RunE: func(c *cobra.Command, _ []string) error {
			if ttl < 0 {
				return usageErrorf("--ttl must not be negative, got %s", ttl)
			}
			req := &meridianv1.CreateJoinTokenRequest{MaxUses: uses, Labels: labels}
			if ttl > 0 {
				req.Ttl = durationpb.New(ttl)
			}
			client, err := o.admin()
			if err != nil {
				return err
			}
			ctx, cancel := o.rpcContext(c.Context())
			defer cancel()
			resp, err := client.CreateJoinToken(ctx, req)
			if err != nil {
				return err
			}
			return o.printer().Print(resp, func(w io.Writer) error {
				info := resp.GetInfo()
				// One write, so `| head -1` cannot cut the process off between lines.
				_, err := fmt.Fprintf(w, "%s\nid %s, expires %s, uses %s\n",
					resp.GetToken(), info.GetId(), expiresText(info, o.now()), usesText(info))
				return err
			})
		},
	}
	c.Flags().DurationVar(&ttl, "ttl", 0, "how long the token may be used (default: the control plane's, 1h)")
	c.Flags().Uint32Var(&uses, "uses", 0, "how many data planes may enrol with it (0 = any number)")
	c.Flags().StringToStringVar(&labels, "labels", nil, "labels every data plane enrolled with it carries, k=v,k=v")
	return c
}
