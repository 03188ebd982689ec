// Package pki keeps the control plane's certificate authorities and the
// certificates they issue: the cluster CA that signs the gRPC server
// certificate and data-plane client certificates, and a separate CA that
// only the embedded etcd trusts, so no data-plane certificate can ever
// reach etcd.
package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"math/big"
	"net/url"
	"slices"
	"time"

	"github.com/meridian-gw/meridian/proto/identity"
)

// clockSkew backdates NotBefore so a certificate issued by one replica is
// already valid on a peer whose clock is slightly behind.
const clockSkew = time.Minute

// RSA key sizes a data plane may enrol with: below the minimum is weak,
// above the maximum crypto/tls refuses the peer key anyway.
const (
	minRSABits = 2048
	maxRSABits = 8192
)

// Authority is a CA that can sign certificates.
type Authority struct {
	cert    *x509.Certificate
	certPEM []byte
	key     crypto.Signer
}

// Certificate returns the CA's certificate.
func (a *Authority) Certificate() *x509.Certificate { return a.cert }

// CertPEM returns the CA's certificate as PEM.
func (a *Authority) CertPEM() []byte { return slices.Clone(a.certPEM) }

// Pool returns a new pool holding only the CA's certificate; a new one
// each call, because callers may add to it.
func (a *Authority) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(a.cert)
	return p
}

// newAuthority creates a self-signed ECDSA P-256 CA valid for 10 years and
// returns it with its key as PEM.
func newAuthority(commonName string, now time.Time) (*Authority, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("generate CA key: %w", err)
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{Organization: []string{"meridian"}, CommonName: commonName},
		NotBefore:             now.Add(-clockSkew),
		NotAfter:              now.AddDate(10, 0, 0),
		IsCA:                  true,
		BasicConstraintsValid: true,
		MaxPathLenZero:        true, // it signs leaves only, never intermediates
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, nil, fmt.Errorf("create CA certificate: %w", err)
	}
	return newAuthorityFromDER(der, key)
}

func newAuthorityFromDER(der []byte, key crypto.Signer) (*Authority, []byte, error) {
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, fmt.Errorf("parse CA certificate: %w", err)
	}
	keyPEM, err := encodeKey(key)
	if err != nil {
		return nil, nil, err
	}
	return &Authority{cert: cert, certPEM: encodeCert(der), key: key}, keyPEM, nil
}

// SignDataplane checks a PKCS#10 CSR (DER) and signs a client certificate
// for nodeID: ClientAuth only, no CN, exactly one URI SAN
// identity.URI(nodeID), valid from now-1m to now+ttl. Only the CSR's public
// key is used; its subject and SANs are ignored, so a data plane cannot ask
// for another identity. It returns the certificate and its PEM (leaf only).
func (a *Authority) SignDataplane(csrDER []byte, nodeID string, ttl time.Duration, now time.Time) (*x509.Certificate, []byte, error) {
	uri, err := dataplaneURI(nodeID)
	if err != nil {
		return nil, nil, err
	}
	if ttl <= 0 {
		return nil, nil, fmt.Errorf("certificate lifetime %s is not positive", ttl)
	}
	pub, err := csrPublicKey(csrDER)
	if err != nil {
		return nil, nil, err
	}
	cert, err := a.issue(&x509.Certificate{
		NotBefore:   now.Add(-clockSkew),
		NotAfter:    now.Add(ttl),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		URIs:        []*url.URL{uri},
	}, pub, now)
	if err != nil {
		return nil, nil, err
	}
	return cert, encodeCert(cert.Raw), nil
}

// dataplaneURI returns the SPIFFE id for nodeID, refusing ids that would
// not read back as themselves through identity.NodeID (for example
// non-ASCII ones, which a URI escapes).
func dataplaneURI(nodeID string) (*url.URL, error) {
	if err := identity.CheckNodeID(nodeID); err != nil {
		return nil, err
	}
	uri := identity.URI(nodeID)
	if uri == nil || uri.String() != identity.SPIFFEPrefix+nodeID {
		return nil, fmt.Errorf("node id %q does not round-trip through a URI; use ASCII", nodeID)
	}
	return uri, nil
}

// csrPublicKey parses a CSR, checks its signature (proof that the caller
// holds the private key) and returns its public key if the key is strong.
func csrPublicKey(csrDER []byte) (crypto.PublicKey, error) {
	csr, err := x509.ParseCertificateRequest(csrDER)
	if err != nil {
		return nil, fmt.Errorf("parse CSR: %w", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("CSR signature: %w", err)
	}
	if err := checkPublicKey(csr.PublicKey); err != nil {
		return nil, fmt.Errorf("CSR key: %w", err)
	}
	return csr.PublicKey, nil
}

func checkPublicKey(pub crypto.PublicKey) error {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() && k.Curve != elliptic.P384() {
			return fmt.Errorf("ECDSA curve %s is not allowed; use P-256 or P-384", k.Curve.Params().Name)
		}
	case ed25519.PublicKey:
	case *rsa.PublicKey:
		if n := k.N.BitLen(); n < minRSABits || n > maxRSABits {
			return fmt.Errorf("RSA key has %d bits; want %d to %d", n, minRSABits, maxRSABits)
		}
	default:
		return fmt.Errorf("key type %T is not allowed; use ECDSA P-256/P-384, Ed25519 or RSA", pub)
	}
	return nil
}

// issue signs tmpl for pub with a fresh serial. The certificate's NotAfter
// is capped at the CA's: it could not be verified any longer than that.
func (a *Authority) issue(tmpl *x509.Certificate, pub crypto.PublicKey, now time.Time) (*x509.Certificate, error) {
	if !now.Before(a.cert.NotAfter) {
		return nil, fmt.Errorf("%s expired on %s", a.cert.Subject.CommonName, a.cert.NotAfter.Format(time.DateOnly))
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, err
	}
	tmpl.SerialNumber = serial
	tmpl.BasicConstraintsValid = true
	if tmpl.NotAfter.After(a.cert.NotAfter) {
		tmpl.NotAfter = a.cert.NotAfter
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, a.cert, pub, a.key)
	if err != nil {
		return nil, fmt.Errorf("sign certificate: %w", err)
	}
	return x509.ParseCertificate(der)
}

// randomSerial returns a random positive serial of at most 128 bits.
func randomSerial() (*big.Int, error) {
	limit := new(big.Int).Lsh(big.NewInt(1), 128)
	for {
		n, err := rand.Int(rand.Reader, limit)
		if err != nil {
			return nil, fmt.Errorf("serial number: %w", err)
		}
		if n.Sign() > 0 {
			return n, nil
		}
	}
}

// keyMatches reports whether key is the private half of cert's public key.
func keyMatches(key crypto.Signer, cert *x509.Certificate) bool {
	pub, ok := key.Public().(interface{ Equal(crypto.PublicKey) bool })
	return ok && pub.Equal(cert.PublicKey)
}
