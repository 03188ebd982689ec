// Package identity holds what the control plane and the data planes must
// agree on to trust each other: the SPIFFE identity a data plane's
// certificate carries, the join token's format, and the pin of the CA
// the token commits to.
package identity

import (
	"crypto/sha256"
	"crypto/subtle"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"unicode"
)

// SPIFFEPrefix starts every data plane's URI SAN; the node id follows.
const SPIFFEPrefix = "spiffe://meridian/dataplane/"

// MaxNodeIDLen keeps node ids usable as etcd key parts, URI paths and
// table cells.
const MaxNodeIDLen = 253

// CheckNodeID reports why id cannot name a data plane.
func CheckNodeID(id string) error {
	switch {
	case id == "":
		return errors.New("node id is empty")
	case len(id) > MaxNodeIDLen:
		return fmt.Errorf("node id is longer than %d bytes", MaxNodeIDLen)
	case strings.ContainsFunc(id, func(r rune) bool {
		return r == '/' || r == '%' || r == '?' || r == '#' || unicode.IsSpace(r) || !unicode.IsPrint(r)
	}):
		return errors.New("node id must not contain '/', '%', '?', '#', spaces or control characters")
	}
	return nil
}

// URI is the SPIFFE id of a data plane's certificate.
func URI(nodeID string) *url.URL {
	u, _ := url.Parse(SPIFFEPrefix + nodeID)
	return u
}

// NodeID returns the node id a data-plane certificate was issued to: the
// path of its one spiffe://meridian/dataplane/ URI SAN.
func NodeID(cert *x509.Certificate) (string, error) {
	id, found := "", 0
	for _, u := range cert.URIs {
		if s := u.String(); strings.HasPrefix(s, SPIFFEPrefix) {
			id, found = strings.TrimPrefix(s, SPIFFEPrefix), found+1
		}
	}
	switch {
	case found == 0:
		return "", errors.New("certificate has no " + SPIFFEPrefix + "<id> URI SAN")
	case found > 1:
		return "", errors.New("certificate names more than one data plane")
	}
	if err := CheckNodeID(id); err != nil {
		return "", fmt.Errorf("certificate identity: %w", err)
	}
	return id, nil
}

// Pin is the SHA-256 of a certificate's public key (its
// SubjectPublicKeyInfo), hex: what a join token commits to, as kubeadm's
// --discovery-token-ca-cert-hash does.
func Pin(cert *x509.Certificate) string {
	sum := sha256.Sum256(cert.RawSubjectPublicKeyInfo)
	return hex.EncodeToString(sum[:])
}

// JoinToken is "<id>.<secret>.<pin>". The id is public (it names the token
// in lists and audit records), the secret authenticates, the pin says which
// CA the control plane must present before the secret is sent.
type JoinToken struct {
	ID, Secret, Pin string
}

// String formats the token.
func (t JoinToken) String() string { return t.ID + "." + t.Secret + "." + t.Pin }

// Token part lengths: ids and secrets are lower-case base32 text, the pin
// is hex SHA-256.
const (
	TokenIDLen     = 8
	TokenSecretLen = 32
	pinLen         = 64
)

// ErrMalformedToken says a string is not a join token at all. Its message
// never repeats the input, which may be a secret.
var ErrMalformedToken = errors.New("malformed join token: want <id>.<secret>.<ca pin>, as printed by `gatewayctl tokens create`")

// ParseJoinToken splits s into its parts.
func ParseJoinToken(s string) (JoinToken, error) {
	parts := strings.Split(strings.TrimSpace(s), ".")
	if len(parts) != 3 {
		return JoinToken{}, ErrMalformedToken
	}
	t := JoinToken{ID: parts[0], Secret: parts[1], Pin: parts[2]}
	if len(t.ID) != TokenIDLen || len(t.Secret) != TokenSecretLen || len(t.Pin) != pinLen ||
		!isBase32(t.ID) || !isBase32(t.Secret) || !isHex(t.Pin) {
		return JoinToken{}, ErrMalformedToken
	}
	return t, nil
}

// SecretHash is what the control plane stores for a token's secret.
func SecretHash(secret string) []byte {
	sum := sha256.Sum256([]byte(secret))
	return sum[:]
}

// SecretMatches compares a presented secret with a stored hash in
// constant time.
func SecretMatches(secret string, hash []byte) bool {
	return subtle.ConstantTimeCompare(SecretHash(secret), hash) == 1
}

func isBase32(s string) bool {
	return !strings.ContainsFunc(s, func(r rune) bool { return !(r >= 'a' && r <= 'z' || r >= '2' && r <= '7') })
}

func isHex(s string) bool {
	return !strings.ContainsFunc(s, func(r rune) bool { return !(r >= '0' && r <= '9' || r >= 'a' && r <= 'f') })
}

// VerifyPinned checks a server's TLS chain (raw DER certificates, leaf
// first, as crypto/tls hands them to VerifyPeerCertificate) against a pin:
// some certificate of the chain must have the pinned public key, and the
// leaf must chain to it and be valid for serverName. It returns the pinned
// CA certificate, which the caller may trust from then on.
func VerifyPinned(rawCerts [][]byte, pin, serverName string) (*x509.Certificate, error) {
	if len(rawCerts) == 0 {
		return nil, errors.New("the control plane sent no certificate")
	}
	certs := make([]*x509.Certificate, len(rawCerts))
	for i, raw := range rawCerts {
		c, err := x509.ParseCertificate(raw)
		if err != nil {
			return nil, fmt.Errorf("control plane certificate %d: %w", i, err)
		}
		certs[i] = c
	}
	var ca *x509.Certificate
	for _, c := range certs {
		if Pin(c) == pin {
			ca = c
		}
	}
	if ca == nil {
		return nil, fmt.Errorf("the control plane's certificate chain does not include the CA the join token pins (sha256 %s…): wrong control plane, or a token from another cluster", pin[:min(12, len(pin))])
	}
	roots, inter := x509.NewCertPool(), x509.NewCertPool()
	roots.AddCert(ca)
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	opts := x509.VerifyOptions{Roots: roots, Intermediates: inter, DNSName: serverName, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	if certs[0].Equal(ca) {
		return nil, errors.New("the control plane presents its CA as its server certificate")
	}
	if _, err := certs[0].Verify(opts); err != nil {
		return nil, fmt.Errorf("control plane certificate: %w", err)
	}
	return ca, nil
}
