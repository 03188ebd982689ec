package cmd

import (
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/meridian-gw/meridian/gatewayctl/internal/printer"
	"github.com/meridian-gw/meridian/proto/config"
	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

// NewDataplanesCommand returns `gatewayctl dataplanes`.
func NewDataplanesCommand(o *Options) *cobra.Command {
	c := &cobra.Command{
		Use:   "dataplanes",
		Short: "List the data planes of the fleet and what configuration each applied",
		Long: "dataplanes lists every known data plane with the version it applied and its state:\n" +
			"  SYNCED        applied the current version\n" +
			"  STALE         connected, behind the current version\n" +
			"  NACKED        rejected the current version (ERROR says why)\n" +
			"  DISCONNECTED  not connected to any control-plane replica\n" +
			"`gatewayctl dataplanes revoke ID` cuts one off.",
		// Any argument that is not a subcommand is a mistyped one.
		Args:                       unknownCommand,
		SuggestionsMinimumDistance: 2,
		RunE: func(c *cobra.Command, _ []string) error {
			client, err := o.admin()
			if err != nil {
				return err
			}
			ctx, cancel := o.rpcContext(c.Context())
			defer cancel()
			resp, err := client.ListDataplanes(ctx, &meridianv1.ListDataplanesRequest{})
			if err != nil {
				return err
			}
			now := o.now()
			return o.printer().Print(resp, func(w io.Writer) error {
				rows := make([][]string, len(resp.GetDataplanes()))
				for i, d := range resp.GetDataplanes() {
					rows[i] = dataplaneRow(d, now)
				}
				return printer.WriteTable(w, []string{"ID", "ADDRESS", "VERSION", "STATE", "LAST-SEEN", "ERROR"}, rows)
			})
		},
	}
	c.AddCommand(NewDataplanesRevokeCommand(o))
	return c
}

// dataplaneRow is one line of the dataplanes table.
func dataplaneRow(d *meridianv1.DataplaneStatus, now time.Time) []string {
	addr := d.GetNode().GetListenAddress()
	if addr == "" {
		addr = d.GetPeerAddress()
	}
	lastSeen := "-"
	if d.GetLastSeen() != nil {
		lastSeen = age(now.Sub(d.GetLastSeen().AsTime())) + " ago"
	}
	errText := ""
	if d.GetState() == meridianv1.DataplaneState_DATAPLANE_STATE_NACKED && d.GetLastNack().GetError() != nil {
		errText = config.FieldErrorFromProto(d.GetLastNack().GetError()).Error()
	}
	return []string{
		d.GetNode().GetId(),
		addr,
		strconv.FormatUint(d.GetAppliedVersion(), 10),
		stateWord(d.GetState()),
		lastSeen,
		errText,
	}
}

// stateWord is the STATE column: the word -o json prints, in capitals
// (SYNCED for "synced"), or UNKNOWN.
func stateWord(s meridianv1.DataplaneState) string {
	if s == meridianv1.DataplaneState_DATAPLANE_STATE_UNSPECIFIED || s.Descriptor().Values().ByNumber(s.Number()) == nil {
		return "UNKNOWN"
	}
	return strings.ToUpper(printer.EnumWord(s.Descriptor(), s.Number()))
}

// age rounds d the way kubectl's AGE column does: 42s, 5m, 3h, 2d.
func age(d time.Duration) string {
	switch {
	case d < 0:
		return "0s"
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d/time.Second))
	case d < time.Hour:
		return fmt.Sprintf("%dm", int(d/time.Minute))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh", int(d/time.Hour))
	}
	return fmt.Sprintf("%dd", int(d/(24*time.Hour)))
}
