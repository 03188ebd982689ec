package cmd

import (
	"fmt"
	"io"
	"runtime"
	"runtime/debug"

	"github.com/spf13/cobra"

	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

// versionInfo is what `gatewayctl version -o json|yaml` prints.
type versionInfo struct {
	Client clientVersion  `json:"client"`
	Server *serverVersion `json:"server,omitempty"`
}

type clientVersion struct {
	Version   string `json:"version"`
	GoVersion string `json:"goVersion"`
}

type serverVersion struct {
	Address       string `json:"address"`
	Reachable     bool   `json:"reachable"`
	ConfigVersion uint64 `json:"configVersion"`
}

// NewVersionCommand returns `gatewayctl version`.
func NewVersionCommand(o *Options) *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print gatewayctl's version and whether the control plane answers",
		Args:  usageArgs(cobra.NoArgs),
		RunE: func(c *cobra.Command, _ []string) error {
			info := versionInfo{Client: clientVersion{Version: buildVersion(o.Version), GoVersion: runtime.Version()}}
			client, err := o.admin()
			if err != nil {
				return err
			}
			ctx, cancel := o.rpcContext(c.Context())
			defer cancel()
			// History is the cheapest call that proves the server is
			// there, accepts our token, and tells the current version.
			resp, rpcErr := client.History(ctx, &meridianv1.HistoryRequest{Limit: 1})
			if rpcErr == nil {
				info.Server = &serverVersion{Address: o.Server, Reachable: true}
				if entries := resp.GetEntries(); len(entries) > 0 {
					info.Server.ConfigVersion = entries[0].GetVersion()
				}
			}
			err = o.printer().Print(info, func(w io.Writer) error {
				fmt.Fprintf(w, "client: gatewayctl %s (%s)\n", info.Client.Version, info.Client.GoVersion)
				if info.Server != nil {
					fmt.Fprintf(w, "server: %s reachable, configuration version %d\n", info.Server.Address, info.Server.ConfigVersion)
				}
				return nil
			})
			if err != nil {
				return err
			}
			return rpcErr
		},
	}
}

// buildVersion is stamped, the version main was linked with (make sets
// main.version to git describe), or else the main module's version as the
// Go toolchain recorded it (go install ...@v1.2.3), or "(devel)".
func buildVersion(stamped string) string {
	if stamped != "" {
		return stamped
	}
	bi, ok := debug.ReadBuildInfo()
	if !ok || bi.Main.Version == "" {
		return "(devel)"
	}
	return bi.Main.Version
}
