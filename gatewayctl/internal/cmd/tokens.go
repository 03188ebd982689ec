package cmd

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

// NewTokensCommand returns `gatewayctl tokens`, the join tokens data
// planes enrol with.
func NewTokensCommand(o *Options) *cobra.Command {
	c := &cobra.Command{
		Use:   "tokens",
		Short: "Create, list and revoke the join tokens data planes enrol with",
		Long: "A join token lets a data plane enrol: started with --join-token, it verifies the\n" +
			"control plane against the CA the token pins and receives a short-lived client\n" +
			"certificate. The control plane stores only a hash of the token's secret.",
		Example: "  TOKEN=$(gatewayctl tokens create --ttl 30m --uses 3 | head -1)\n" +
			"  gatewayctl tokens list\n" +
			"  gatewayctl tokens revoke 4k2q7vxa",
		Args:                       unknownCommand,
		SuggestionsMinimumDistance: 2,
		RunE: func(c *cobra.Command, _ []string) error {
			return c.Help()
		},
	}
	c.AddCommand(
		NewTokensCreateCommand(o),
		NewTokensListCommand(o),
		NewTokensRevokeCommand(o),
	)
	return c
}

// usesText reads "1/3", or "2/unlimited" when any number may enrol.
func usesText(tok *meridianv1.JoinToken) string {
	limit := "unlimited"
	if tok.GetMaxUses() > 0 {
		limit = fmt.Sprint(tok.GetMaxUses())
	}
	return fmt.Sprintf("%d/%s", tok.GetUses(), limit)
}

// expiresText is the token's expiry in UTC, "never", or marked expired.
func expiresText(tok *meridianv1.JoinToken, now time.Time) string {
	if tok.GetExpiresAt() == nil {
		return "never"
	}
	at := tok.GetExpiresAt().AsTime()
	if !at.After(now) {
		return timestamp(at, true) + " (expired)"
	}
	return timestamp(at, true)
}

// labelsText reads "env=prod,zone=a", sorted by key.
func labelsText(labels map[string]string) string {
	parts := make([]string, 0, len(labels))
	for _, k := range slices.Sorted(maps.Keys(labels)) {
		parts = append(parts, k+"="+labels[k])
	}
	return strings.Join(parts, ",")
}
