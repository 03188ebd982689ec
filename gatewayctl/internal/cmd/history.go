package cmd

import (
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/meridian-gw/meridian/gatewayctl/internal/printer"
	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

// NewHistoryCommand returns `gatewayctl history`.
func NewHistoryCommand(o *Options) *cobra.Command {
	var limit uint32
	c := &cobra.Command{
		Use:     "history [flags]",
		Short:   "List recorded configuration versions, newest first",
		Example: "  gatewayctl history --limit 10",
		Args:    usageArgs(cobra.NoArgs),
		RunE: func(c *cobra.Command, _ []string) error {
			client, err := o.admin()
			if err != nil {
				return err
			}
			ctx, cancel := o.rpcContext(c.Context())
			defer cancel()
			resp, err := client.History(ctx, &meridianv1.HistoryRequest{Limit: limit})
			if err != nil {
				return err
			}
			return o.printer().Print(resp, func(w io.Writer) error {
				rows := make([][]string, len(resp.GetEntries()))
				for i, e := range resp.GetEntries() {
					rows[i] = []string{
						strconv.FormatUint(e.GetVersion(), 10),
						timestamp(e.GetTime().AsTime(), e.GetTime() != nil),
						e.GetAuthor(),
						changeCounts(e.GetChanges()),
						e.GetMessage(),
					}
				}
				return printer.WriteTable(w, []string{"VERSION", "TIME", "AUTHOR", "CHANGES", "MESSAGE"}, rows)
			})
		},
	}
	c.Flags().Uint32Var(&limit, "limit", 0, "show at most this many versions (0 = all)")
	return c
}

// changeCounts reads "1 created, 2 configured".
func changeCounts(changes []*meridianv1.Change) string {
	counts := map[meridianv1.ChangeAction]int{}
	for _, ch := range changes {
		counts[ch.GetAction()]++
	}
	var parts []string
	for _, a := range []meridianv1.ChangeAction{
		meridianv1.ChangeAction_CHANGE_ACTION_CREATE,
		meridianv1.ChangeAction_CHANGE_ACTION_UPDATE,
		meridianv1.ChangeAction_CHANGE_ACTION_DELETE,
	} {
		if n := counts[a]; n > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", n, changeVerb(a)))
		}
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, ", ")
}

// timestamp renders t in UTC, to the second, or "-" when unknown.
func timestamp(t time.Time, ok bool) string {
	if !ok {
		return "-"
	}
	return t.UTC().Format(time.RFC3339)
}
