package cmd

import (
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/meridian-gw/meridian/gatewayctl/internal/printer"
	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

// NewAuditCommand returns `gatewayctl audit`.
func NewAuditCommand(o *Options) *cobra.Command {
	var (
		since string
		limit uint32
	)
	c := &cobra.Command{
		Use:   "audit [flags]",
		Short: "List audit records of changes and denied calls, oldest first",
		Long: "audit lists every admin call that changed something or was denied: who (PRINCIPAL,\n" +
			"ROLE), what (METHOD, TARGET), the OUTCOME (ok, denied or the error code), the\n" +
			"configuration VERSION it made and the caller's address. -o yaml adds the reason\n" +
			"of a denial or failure and the replica that served the call.",
		Example: "  gatewayctl audit --since 1h\n" +
			"  gatewayctl audit --since 2026-05-01T00:00:00Z --limit 50",
		Args: usageArgs(cobra.NoArgs),
		RunE: func(c *cobra.Command, _ []string) error {
			req := &meridianv1.ListAuditRequest{Limit: limit}
			if since != "" {
				t, err := parseSince(since, o.now())
				if err != nil {
					return err
				}
				req.Since = timestamppb.New(t)
			}
			client, err := o.admin()
			if err != nil {
				return err
			}
			ctx, cancel := o.rpcContext(c.Context())
			defer cancel()
			resp, err := client.ListAudit(ctx, req)
			if err != nil {
				return err
			}
			return o.printer().Print(resp, func(w io.Writer) error {
				rows := make([][]string, len(resp.GetRecords()))
				for i, r := range resp.GetRecords() {
					rows[i] = auditRow(r)
				}
				return printer.WriteTable(w, []string{"TIME", "PRINCIPAL", "ROLE", "METHOD", "TARGET", "OUTCOME", "VERSION", "PEER"}, rows)
			})
		},
	}
	c.Flags().StringVar(&since, "since", "", "only records this recent (1h, 30m) or at or after this time (RFC 3339)")
	c.Flags().Uint32Var(&limit, "limit", 0, "show at most this many records, the newest (0 = all)")
	return c
}

// parseSince reads --since: a duration back from now, or an RFC 3339 time.
func parseSince(s string, now time.Time) (time.Time, error) {
	if d, err := time.ParseDuration(s); err == nil {
		if d < 0 {
			return time.Time{}, usageErrorf("invalid --since %q: a duration must not be negative", s)
		}
		return now.Add(-d), nil
	}
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t, nil
	}
	return time.Time{}, usageErrorf("invalid --since %q: want a duration such as 1h or a time such as 2026-05-01T12:00:00Z", s)
}

// auditRow is one line of the audit table.
func auditRow(r *meridianv1.AuditRecord) []string {
	version := "-"
	if r.GetVersion() != 0 {
		version = strconv.FormatUint(r.GetVersion(), 10)
	}
	return []string{
		timestamp(r.GetTime().AsTime(), r.GetTime() != nil),
		dash(r.GetPrincipal()),
		dash(r.GetRole()),
		dash(shortMethod(r.GetMethod())),
		dash(r.GetTarget()),
		dash(r.GetOutcome()),
		version,
		dash(r.GetPeerAddress()),
	}
}

// shortMethod turns "/meridian.v1.AdminService/Apply" into "Apply".
func shortMethod(full string) string {
	if i := strings.LastIndex(full, "/"); i >= 0 {
		return full[i+1:]
	}
	return full
}
