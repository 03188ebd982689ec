package enrolment

import (
	"context"
	"errors"
	"fmt"
	"time"

	"google.golang.org/grpc"

	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

// renewAt is 2/3 through the certificate's validity, counted from when it
// was obtained if that is later than its NotBefore (which the control
// plane backdates a little for clock skew).
func renewAt(notBefore, notAfter, obtained time.Time) time.Time {
	start := notBefore
	if obtained.After(start) && obtained.Before(notAfter) {
		start = obtained
	}
	return start.Add(notAfter.Sub(start) * 2 / 3)
}

// renewLoop renews the current certificate at 2/3 of its lifetime,
// retrying failures with backoff (at most a tenth of the lifetime apart),
// until the certificate expires or ctx is done.
func (m *Manager) renewLoop(ctx context.Context) {
	failures := 0
	for {
		cur := m.cur.Load()
		leaf := cur.leaf()
		wait := time.Until(renewAt(leaf.NotBefore, leaf.NotAfter, cur.obtained))
		if failures > 0 {
			hi := max(m.cfg.RetryMin, leaf.NotAfter.Sub(leaf.NotBefore)/10)
			wait = backoff(m.cfg.RetryMin, hi, failures-1)
		}
		if !sleep(ctx, max(0, min(wait, time.Until(leaf.NotAfter)))) {
			return
		}
		if !time.Now().Before(leaf.NotAfter) {
			m.cfg.Log.Error("client certificate expired before it could be renewed", "node", m.cfg.NodeID, "notAfter", leaf.NotAfter.UTC())
			return
		}
		err := m.renewOnce(ctx)
		switch {
		case ctx.Err() != nil:
			return
		case err != nil:
			failures++
			m.cfg.Log.Warn("certificate renewal failed; retrying", "error", err, "failures", failures, "notAfter", leaf.NotAfter.UTC())
		default:
			failures = 0
		}
	}
}

// renewOnce asks every address in turn for a certificate for a new key.
func (m *Manager) renewOnce(ctx context.Context) error {
	csr, key, err := newRequest(m.cfg.NodeID)
	if err != nil {
		return err
	}
	var errs []error
	for _, addr := range m.cfg.Addresses {
		resp, err := m.renewAt(ctx, addr, csr)
		if err == nil {
			return m.adopt(material{key: key, chain: resp.GetCertificateChain(), ca: resp.GetCaBundle()}, "client certificate renewed", addr)
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// renewAt calls Renew on addr over mTLS with the current certificate.
func (m *Manager) renewAt(ctx context.Context, addr string, csr []byte) (*meridianv1.RenewResponse, error) {
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(m.TransportCredentials(addr)))
	if err != nil {
		return nil, fmt.Errorf("%s: dial: %w", addr, err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(ctx, m.cfg.CallTimeout)
	defer cancel()
	resp, err := meridianv1.NewIdentityServiceClient(conn).Renew(ctx, &meridianv1.RenewRequest{Csr: csr})
	if err != nil {
		return nil, fmt.Errorf("%s: %w", addr, err)
	}
	return resp, nil
}
