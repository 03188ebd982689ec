package security

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"

	"github.com/meridian-gw/meridian/controlplane/internal/auth"
)

// adminTokens loads the tokens file. On a first start without one, it
// writes one holding a fresh admin token's hash, and the gatewayctl config
// holding the token itself, the CA and the address.
func (s *Security) adminTokens(addr string) (*auth.TokenFile, error) {
	path := s.cfg.TokensFile
	if path == "" {
		path = filepath.Join(s.cfg.DataDir, "admin-tokens")
		if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
			if err := s.bootstrap(path, addr); err != nil {
				return nil, err
			}
		}
	}
	return auth.LoadTokenFile(path, s.cfg.Logger)
}

func (s *Security) bootstrap(tokensPath, addr string) error {
	token := auth.NewToken()
	header := "# Meridian admin tokens: <principal> <role> <sha256 of the token>. Roles: viewer, operator, admin.\n" +
		"# Reloaded when it changes. Hash a new token with: printf %s TOKEN | sha256sum\n"
	if err := writeFile(tokensPath, header+auth.TokenLine("admin", auth.RoleAdmin, token)); err != nil {
		return err
	}
	ctlPath := filepath.Join(s.cfg.DataDir, "gatewayctl.yaml")
	if err := writeFile(ctlPath, s.gatewayctlConfig(addr, token)); err != nil {
		return err
	}
	s.cfg.Logger.Info("created the admin token; gatewayctl finds it with --config "+ctlPath+" (or MERIDIAN_CONFIG)",
		"tokens_file", tokensPath, "gatewayctl_config", ctlPath)
	return nil
}

// gatewayctlConfig is the kubeconfig-like file gatewayctl --config reads.
func (s *Security) gatewayctlConfig(addr, token string) string {
	var b strings.Builder
	b.WriteString("# gatewayctl configuration written by the control plane on its first start.\n")
	b.WriteString("# It holds an admin token: keep it private.\n")
	fmt.Fprintf(&b, "server: %s\n", dialAddress(addr))
	b.WriteString("ca: |\n")
	for line := range strings.Lines(string(s.caBundle)) {
		b.WriteString("  " + line)
	}
	fmt.Fprintf(&b, "token: %s\n", token)
	return b.String()
}

// dialAddress is the listener's address, with a wildcard host made
// loopback.
func dialAddress(addr string) string {
	host, port, err := net.SplitHostPort(addr)
	if err != nil || host == "" || host == "0.0.0.0" || host == "::" {
		return net.JoinHostPort("127.0.0.1", port)
	}
	return addr
}

// writeFile writes a private file, refusing to replace one.
func writeFile(path, content string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.WriteString(content); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
