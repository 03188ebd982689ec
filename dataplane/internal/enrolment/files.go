package enrolment

import (
	"context"
	"fmt"
	"os"
	"strings"
	"time"
)

// loadFiles reads operator-provided certificate files; the certificate
// must name nodeID, as the control plane checks streams against it.
func loadFiles(f Files, nodeID string) (*state, error) {
	var m material
	for _, x := range []struct {
		path string
		dst  *[]byte
	}{{f.Key, &m.key}, {f.Cert, &m.chain}, {f.CA, &m.ca}} {
		data, err := os.ReadFile(x.path)
		if err != nil {
			return nil, fmt.Errorf("control-plane certificate files: %w", err)
		}
		*x.dst = data
	}
	st, err := parse(m)
	if err != nil {
		return nil, fmt.Errorf("control-plane certificate files: %w", err)
	}
	if st.nodeID != nodeID {
		return nil, fmt.Errorf("control-plane certificate %s is for node %q, not --node-id %q", f.Cert, st.nodeID, nodeID)
	}
	return st, nil
}

// stamp sums up the files' modification times and sizes; any change
// means they are read again.
func stamp(f Files) string {
	var b strings.Builder
	for _, p := range []string{f.CA, f.Cert, f.Key} {
		if fi, err := os.Stat(p); err == nil {
			fmt.Fprintf(&b, "%d/%d;", fi.ModTime().UnixNano(), fi.Size())
		} else {
			b.WriteString("missing;")
		}
	}
	return b.String()
}

// reloadLoop reads the files again whenever they change, until ctx is
// done. A set that does not load (half written, say) keeps the previous
// one in use.
func (m *Manager) reloadLoop(ctx context.Context) {
	f, seen := *m.cfg.Files, m.filesStamp
	t := time.NewTicker(m.cfg.ReloadEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		now := stamp(f)
		if now == seen {
			continue
		}
		seen = now
		st, err := loadFiles(f, m.cfg.NodeID)
		if err != nil {
			m.cfg.Log.Error("control-plane certificate files changed but cannot be used; keeping the previous ones", "error", err)
			continue
		}
		m.set(st)
		m.cfg.Log.Info("control-plane certificate files reloaded", "cert", f.Cert,
			"serial", st.leaf().SerialNumber.Text(16), "notAfter", st.leaf().NotAfter.UTC())
	}
}
