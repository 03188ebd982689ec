package enrolment

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/meridian-gw/meridian/proto/identity"
)

// File names in the identity directory (the security contract's).
const (
	KeyFile  = "tls.key" // PEM private key, 0600
	CertFile = "tls.crt" // PEM certificate chain, leaf first
	CAFile   = "ca.crt"  // PEM CA bundle that verifies the control plane
)

// material is an identity as stored: PEM key, chain and CA bundle.
type material struct {
	key, chain, ca []byte
}

// state is a parsed identity, ready for TLS.
type state struct {
	cert   tls.Certificate // Leaf is set
	roots  *x509.CertPool
	nodeID string
	// obtained is when the certificate was received (its file's time for
	// a stored one): the control plane backdates NotBefore for clock skew,
	// so the lifetime is counted from here.
	obtained time.Time
}

func (s *state) leaf() *x509.Certificate { return s.cert.Leaf }

// parse checks that the key matches the leaf, that the bundle has a CA and
// that the leaf names a data plane. Errors never include key material.
func parse(m material) (*state, error) {
	cert, err := tls.X509KeyPair(m.chain, m.key)
	if err != nil {
		return nil, fmt.Errorf("certificate and key: %w", err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(m.ca) {
		return nil, errors.New("CA bundle has no PEM certificate")
	}
	id, err := identity.NodeID(cert.Leaf)
	if err != nil {
		return nil, err
	}
	return &state{cert: cert, roots: roots, nodeID: id}, nil
}

// loadDir reads the identity in dir. The error wraps fs.ErrNotExist when
// a file is missing.
func loadDir(dir string) (*state, error) {
	var m material
	for _, f := range []struct {
		name string
		dst  *[]byte
	}{{KeyFile, &m.key}, {CertFile, &m.chain}, {CAFile, &m.ca}} {
		data, err := os.ReadFile(filepath.Join(dir, f.name))
		if err != nil {
			return nil, err
		}
		*f.dst = data
	}
	st, err := parse(m)
	if err != nil {
		return nil, err
	}
	if fi, err := os.Stat(filepath.Join(dir, CertFile)); err == nil {
		st.obtained = fi.ModTime()
	}
	return st, nil
}

// saveDir replaces the identity in dir. Every file is first written and
// fsynced under a temporary name, then all are renamed into place, so a
// crash leaves either complete files or the old ones, never a torn file.
func saveDir(dir string, m material) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("identity dir: %w", err)
	}
	files := []struct {
		name string
		data []byte
	}{{CAFile, m.ca}, {CertFile, m.chain}, {KeyFile, m.key}}
	tmps := make([]string, len(files))
	defer func() {
		for _, t := range tmps {
			if t != "" {
				os.Remove(t) // no-op once renamed
			}
		}
	}()
	for i, f := range files {
		tmp, err := writeTemp(dir, f.name, f.data)
		if err != nil {
			return err
		}
		tmps[i] = tmp
	}
	for i, f := range files {
		if err := os.Rename(tmps[i], filepath.Join(dir, f.name)); err != nil {
			return fmt.Errorf("replace %s: %w", f.name, err)
		}
	}
	return syncDir(dir)
}

// writeTemp writes data to a new 0600 file next to name and fsyncs it.
func writeTemp(dir, name string, data []byte) (string, error) {
	f, err := os.CreateTemp(dir, name+".tmp-*") // CreateTemp makes it 0600
	if err != nil {
		return "", fmt.Errorf("%s temp file: %w", name, err)
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return f.Name(), fmt.Errorf("write %s: %w", name, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return f.Name(), fmt.Errorf("sync %s: %w", name, err)
	}
	if err := f.Close(); err != nil {
		return f.Name(), fmt.Errorf("close %s: %w", name, err)
	}
	return f.Name(), nil
}

// syncDir makes renames in dir durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("open identity dir: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync identity dir: %w", err)
	}
	return nil
}

// newRequest makes a fresh P-256 key and a certificate request for it,
// returning the request (DER) and the key (PEM).
func newRequest(nodeID string) (csr, keyPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("generate key: %w", err)
	}
	// The control plane decides the certificate's contents; the URI only
	// tells a human reading the request what it is for.
	tmpl := &x509.CertificateRequest{}
	if identity.CheckNodeID(nodeID) == nil {
		tmpl.URIs = append(tmpl.URIs, identity.URI(nodeID))
	}
	csr, err = x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		return nil, nil, fmt.Errorf("certificate request: %w", err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, fmt.Errorf("encode key: %w", err)
	}
	return csr, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}
