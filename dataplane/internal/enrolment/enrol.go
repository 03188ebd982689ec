package enrolment

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/meridian-gw/meridian/proto/identity"
	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

// refusedError marks an answer that retrying will not change until an
// operator acts: an unknown, expired or used-up token, a CA that does not
// match the pin, a node id the control plane will not issue.
type refusedError struct{ err error }

func (e *refusedError) Error() string { return e.err.Error() }
func (e *refusedError) Unwrap() error { return e.err }

func isRefused(err error) bool {
	var r *refusedError
	return errors.As(err, &r)
}

// enrol exchanges the join token for a certificate, retrying until that
// works; false means ctx ended first.
func (m *Manager) enrol(ctx context.Context) bool {
	refusals := 0
	for attempt := 0; ; attempt++ {
		err := m.enrolOnce(ctx)
		if err == nil {
			return true
		}
		if ctx.Err() != nil {
			return false
		}
		wait := backoff(m.cfg.RetryMin, maxEnrolBackoff, attempt)
		if isRefused(err) {
			wait = m.cfg.RefusedRetry
			m.logRefused(err, refusals, wait)
			refusals++
		} else {
			m.cfg.Log.Warn("enrolment: no control plane answered; serving the cached configuration meanwhile",
				"error", err, "retryIn", wait.String())
		}
		if !sleep(ctx, wait) {
			return false
		}
	}
}

// logRefused makes the first refusal stand out: nothing will connect
// until someone acts on it.
func (m *Manager) logRefused(err error, refusals int, wait time.Duration) {
	msg := "enrolment still refused"
	if refusals == 0 {
		msg = "ENROLMENT REFUSED: this data plane cannot connect to the control plane until the cause is fixed " +
			"(a new token from 'gatewayctl tokens create', or the right --controlplane)"
	}
	m.cfg.Log.Error(msg, "node", m.cfg.NodeID, "tokenID", m.cfg.Token.ID, "error", err, "retryIn", wait.String())
}

// enrolOnce tries every address once with a fresh key.
func (m *Manager) enrolOnce(ctx context.Context) error {
	csr, key, err := newRequest(m.cfg.NodeID)
	if err != nil {
		return err
	}
	req := &meridianv1.EnrolRequest{NodeId: m.cfg.NodeID, Csr: csr}
	var errs []error
	for _, addr := range m.cfg.Addresses {
		resp, err := m.enrolAt(ctx, addr, req)
		if err == nil {
			return m.adopt(material{key: key, chain: resp.GetCertificateChain(), ca: resp.GetCaBundle()}, "enrolled with the control plane", addr)
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// enrolAt calls Enrol on addr. The token goes only over a connection whose
// server chain includes the CA the token pins.
func (m *Manager) enrolAt(ctx context.Context, addr string, req *meridianv1.EnrolRequest) (*meridianv1.EnrolResponse, error) {
	host, pin := hostOf(addr), m.cfg.Token.Pin
	var pinErr atomic.Pointer[error]
	conf := &tls.Config{
		MinVersion: tls.VersionTLS12,
		// Not trusting nothing: VerifyPinned replaces the default check,
		// because the pin, not a root store, says which CA to trust.
		InsecureSkipVerify: true,
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			_, err := identity.VerifyPinned(raw, pin, host)
			if err != nil {
				pinErr.Store(&err)
			}
			return err
		},
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(conf)))
	if err != nil {
		return nil, fmt.Errorf("%s: dial: %w", addr, err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(ctx, m.cfg.CallTimeout)
	defer cancel()
	ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+m.cfg.Token.String())
	resp, err := meridianv1.NewIdentityServiceClient(conn).Enrol(ctx, req)
	if p := pinErr.Load(); p != nil {
		return nil, &refusedError{fmt.Errorf("%s: %w", addr, *p)}
	}
	if err != nil {
		return nil, classify(addr, err)
	}
	return resp, nil
}

// classify marks the status codes retrying cannot fix as refusals.
func classify(addr string, err error) error {
	wrapped := fmt.Errorf("%s: %w", addr, err)
	switch status.Code(err) {
	case codes.PermissionDenied, codes.Unauthenticated, codes.AlreadyExists, codes.FailedPrecondition, codes.InvalidArgument:
		return &refusedError{wrapped}
	}
	return wrapped
}

// adopt checks a control plane's answer, saves it and makes it current.
// A copy that cannot be saved is still used: serving matters more.
func (m *Manager) adopt(mat material, what, addr string) error {
	st, err := parse(mat)
	if err != nil {
		return &refusedError{fmt.Errorf("%s: answer: %w", addr, err)}
	}
	if st.nodeID != m.cfg.NodeID {
		return &refusedError{fmt.Errorf("%s: certificate issued for node %q, not %q", addr, st.nodeID, m.cfg.NodeID)}
	}
	if err := saveDir(m.cfg.Dir, mat); err != nil {
		m.cfg.Log.Error("identity not saved; a restart may need a new join token", "dir", m.cfg.Dir, "error", err)
	}
	st.obtained = time.Now()
	m.set(st)
	m.cfg.Log.Info(what, "controlplane", addr, "node", st.nodeID,
		"serial", st.leaf().SerialNumber.Text(16), "notAfter", st.leaf().NotAfter.UTC())
	return nil
}

// backoff is the wait after failure number attempt+1: doubling from lo,
// capped at hi, jittered in its upper half, never below lo.
func backoff(lo, hi time.Duration, attempt int) time.Duration {
	d := hi
	if attempt < 30 {
		d = min(lo<<attempt, hi)
	}
	return max(lo, d/2+rand.N(d/2+1))
}
