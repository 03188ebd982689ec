package cmd

import (
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/meridian-gw/meridian/gatewayctl/internal/printer"
	"github.com/meridian-gw/meridian/proto/config"
	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

// NewGetCommand returns `gatewayctl get`.
func NewGetCommand(o *Options) *cobra.Command {
	return &cobra.Command{
		Use:   "get [KIND [NAME]]",
		Short: "List resources, all of one kind, or show one",
		Long: "get lists every resource, every resource of one kind, or one resource.\n" +
			"KIND is one of " + strings.Join(config.Kinds(), ", ") + ", in any case, singular or plural.\n" +
			"-o yaml prints YAML that apply accepts back.",
		Example: "  gatewayctl get\n" +
			"  gatewayctl get routes\n" +
			"  gatewayctl get route get-user -o yaml > get-user.yaml",
		Args: usageArgs(cobra.RangeArgs(0, 2)),
		RunE: func(c *cobra.Command, args []string) error {
			kind := ""
			if len(args) > 0 {
				k, err := config.ParseKind(args[0])
				if err != nil {
					return usageError{err}
				}
				kind = k
			}
			client, err := o.admin()
			if err != nil {
				return err
			}
			ctx, cancel := o.rpcContext(c.Context())
			defer cancel()
			if len(args) == 2 {
				resp, err := client.Get(ctx, &meridianv1.GetRequest{Kind: kind, Name: args[1]})
				if err != nil {
					return err
				}
				return o.printer().Resource(resp.GetResource())
			}
			resp, err := client.List(ctx, &meridianv1.ListRequest{Kind: kind})
			if err != nil {
				return err
			}
			resources := resp.GetResources()
			if len(resources) == 0 && o.format == printer.Table {
				// On stderr, like kubectl, so stdout stays empty for scripts.
				what := "resources"
				if kind != "" {
					what = kind + " resources"
				}
				_, err := fmt.Fprintf(o.Err, "no %s found\n", what)
				return err
			}
			return o.printer().Resources(resources)
		},
	}
}
