package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/meridian-gw/meridian/proto/identity"
)

// renewBefore is how long before expiry a stored certificate is replaced.
const renewBefore = 30 * 24 * time.Hour

// Common names of the certificates the control plane issues itself.
const (
	clusterCAName   = "meridian cluster CA"
	etcdCAName      = "meridian etcd CA"
	serverName      = "meridian-controlplane"
	etcdServerName  = "meridian-etcd"
	etcdClientName  = "meridian-controlplane"
	clusterCABase   = "ca"
	etcdCABase      = "etcd-ca"
	serverBase      = "server"
	etcdServerBase  = "etcd-server"
	etcdClientBase  = "etcd-client"
	certExt, keyExt = ".crt", ".key"
)

// Files is the control plane's PKI directory (<data-dir>/pki). Its methods
// read and write files in Dir and are not safe for concurrent use.
type Files struct {
	CA     *Authority // cluster CA (ca.crt/ca.key)
	EtcdCA *Authority // etcd-only CA (etcd-ca.crt/etcd-ca.key)
	Dir    string
}

// EtcdFiles are the paths embed.Config's TLSInfo points at.
type EtcdFiles struct {
	CAFile, ServerCertFile, ServerKeyFile, ClientCertFile, ClientKeyFile string
}

// Load creates dir (0700) and any missing CA (ECDSA P-256, 10 years, keys
// 0600), or loads the existing ones. created reports whether the cluster
// CA was created now. Half a CA (a certificate without its key or the
// reverse) or a key that does not match its certificate is an error naming
// the file: replacing a CA silently would cut off every enrolled data plane.
func Load(dir string, now time.Time) (f *Files, created bool, err error) {
	if err := os.MkdirAll(dir, dirMode); err != nil {
		return nil, false, fmt.Errorf("pki directory: %w", err)
	}
	ca, created, err := loadOrCreateAuthority(dir, clusterCABase, clusterCAName, now)
	if err != nil {
		return nil, false, err
	}
	etcdCA, _, err := loadOrCreateAuthority(dir, etcdCABase, etcdCAName, now)
	if err != nil {
		return nil, false, err
	}
	if identity.Pin(ca.cert) == identity.Pin(etcdCA.cert) {
		return nil, false, fmt.Errorf("%s has the key of %s: the etcd CA must be separate so no data-plane certificate can reach etcd",
			filepath.Join(dir, etcdCABase+certExt), filepath.Join(dir, clusterCABase+certExt))
	}
	return &Files{CA: ca, EtcdCA: etcdCA, Dir: dir}, created, nil
}

func loadOrCreateAuthority(dir, base, commonName string, now time.Time) (*Authority, bool, error) {
	certPath, keyPath := filepath.Join(dir, base+certExt), filepath.Join(dir, base+keyExt)
	haveCert, err := exists(certPath)
	if err != nil {
		return nil, false, err
	}
	haveKey, err := exists(keyPath)
	if err != nil {
		return nil, false, err
	}
	switch {
	case haveCert && haveKey:
		a, err := loadAuthority(certPath, keyPath)
		return a, false, err
	case haveCert || haveKey:
		return nil, false, halfPairError(certPath, keyPath, haveCert)
	}
	a, err := createAuthority(certPath, keyPath, commonName, now)
	return a, err == nil, err
}

func halfPairError(certPath, keyPath string, haveCert bool) error {
	present, missing := certPath, keyPath
	if !haveCert {
		present, missing = keyPath, certPath
	}
	return fmt.Errorf("%s exists but %s is missing: restore both files of the CA (copy them from another replica)", present, missing)
}

func loadAuthority(certPath, keyPath string) (*Authority, error) {
	certPEM, err := os.ReadFile(certPath)
	if err != nil {
		return nil, err
	}
	cert, err := parseCert(certPEM)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", certPath, err)
	}
	if !cert.IsCA {
		return nil, fmt.Errorf("%s is not a CA certificate", certPath)
	}
	key, err := readKey(keyPath)
	if err != nil {
		return nil, err
	}
	if !keyMatches(key, cert) {
		return nil, fmt.Errorf("%s does not match %s", keyPath, certPath)
	}
	return &Authority{cert: cert, certPEM: encodeCert(cert.Raw), key: key}, nil
}

func readKey(path string) (crypto.Signer, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	key, err := parseKey(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return key, nil
}

// createAuthority writes the key before the certificate: the certificate
// is the one a reader trusts, so it must never appear without its key.
func createAuthority(certPath, keyPath, commonName string, now time.Time) (*Authority, error) {
	a, keyPEM, err := newAuthority(commonName, now)
	if err != nil {
		return nil, err
	}
	if err := writeFileAtomic(keyPath, keyPEM, keyMode); err != nil {
		return nil, err
	}
	if err := writeFileAtomic(certPath, a.certPEM, certMode); err != nil {
		return nil, err
	}
	return a, nil
}

// ServerCert returns the gRPC server certificate for hosts (DNS names and
// IPs): server.crt/server.key when signed by f.CA, covering every host and
// valid for more than 30 days from now, otherwise a new one (1 year,
// ServerAuth), written there. The chain is [leaf, CA certificate] so a
// data plane can find the pinned CA in the handshake.
func (f *Files) ServerCert(hosts []string, now time.Time) (tls.Certificate, error) {
	h, err := parseHosts(hosts)
	if err != nil {
		return tls.Certificate{}, err
	}
	if h.empty() {
		return tls.Certificate{}, errors.New("server certificate: no hosts")
	}
	spec := leafSpec{base: serverBase, commonName: serverName, hosts: h,
		usages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	cert, key, err := f.leaf(f.CA, spec, now)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("server certificate: %w", err)
	}
	return tls.Certificate{Certificate: [][]byte{cert.Raw, f.CA.cert.Raw}, PrivateKey: key, Leaf: cert}, nil
}

// EtcdCerts makes sure the embedded etcd's server certificate
// (etcd-server.crt/key, ServerAuth+ClientAuth for client and peer
// listeners, SANs = hosts) and the control plane's etcd client certificate
// (etcd-client.crt/key, ClientAuth, CN meridian-controlplane) exist, are
// signed by f.EtcdCA and are not about to expire, under the same rules as
// ServerCert, and returns the paths of the files.
func (f *Files) EtcdCerts(hosts []string, now time.Time) (EtcdFiles, error) {
	h, err := parseHosts(hosts)
	if err != nil {
		return EtcdFiles{}, err
	}
	if h.empty() {
		return EtcdFiles{}, errors.New("etcd server certificate: no hosts")
	}
	server := leafSpec{base: etcdServerBase, commonName: etcdServerName, hosts: h,
		usages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}}
	if _, _, err := f.leaf(f.EtcdCA, server, now); err != nil {
		return EtcdFiles{}, fmt.Errorf("etcd server certificate: %w", err)
	}
	client := leafSpec{base: etcdClientBase, commonName: etcdClientName,
		usages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	if _, _, err := f.leaf(f.EtcdCA, client, now); err != nil {
		return EtcdFiles{}, fmt.Errorf("etcd client certificate: %w", err)
	}
	return EtcdFiles{
		CAFile:         f.path(etcdCABase + certExt),
		ServerCertFile: f.path(etcdServerBase + certExt),
		ServerKeyFile:  f.path(etcdServerBase + keyExt),
		ClientCertFile: f.path(etcdClientBase + certExt),
		ClientKeyFile:  f.path(etcdClientBase + keyExt),
	}, nil
}

func (f *Files) path(name string) string { return filepath.Join(f.Dir, name) }

// leafSpec describes a certificate the control plane issues to itself.
type leafSpec struct {
	base       string // file name without extension
	commonName string
	hosts      hostSet
	usages     []x509.ExtKeyUsage
}

// leaf returns the stored certificate and key for spec if they still fit,
// or issues and stores new ones. These are the control plane's own, so a
// missing, unreadable-as-PEM or mismatched pair is simply replaced.
func (f *Files) leaf(ca *Authority, spec leafSpec, now time.Time) (*x509.Certificate, crypto.Signer, error) {
	cert, key, err := readLeaf(f.path(spec.base+certExt), f.path(spec.base+keyExt))
	if err != nil {
		return nil, nil, err
	}
	if cert != nil && spec.fits(cert, ca, now) {
		return cert, key, nil
	}
	return f.issueLeaf(ca, spec, now)
}

// readLeaf returns nil, nil, nil when the pair is missing, corrupt or
// mismatched, and an error only when a file cannot be read.
func readLeaf(certPath, keyPath string) (*x509.Certificate, crypto.Signer, error) {
	certPEM, err := os.ReadFile(certPath)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil, nil
	} else if err != nil {
		return nil, nil, err
	}
	keyPEM, err := os.ReadFile(keyPath)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil, nil
	} else if err != nil {
		return nil, nil, err
	}
	cert, certErr := parseCert(certPEM)
	key, keyErr := parseKey(keyPEM)
	if certErr != nil || keyErr != nil || !keyMatches(key, cert) {
		return nil, nil, nil
	}
	return cert, key, nil
}

// fits reports whether a stored certificate can be used as spec's: it
// chains to ca, is valid now and for more than renewBefore, has exactly
// spec's usages and name, and covers every wanted host.
func (s leafSpec) fits(cert *x509.Certificate, ca *Authority, now time.Time) bool {
	opts := x509.VerifyOptions{Roots: ca.Pool(), CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}
	if _, err := cert.Verify(opts); err != nil {
		return false
	}
	return now.Add(renewBefore).Before(cert.NotAfter) &&
		slices.Equal(cert.ExtKeyUsage, s.usages) &&
		cert.Subject.CommonName == s.commonName &&
		s.hosts.coveredBy(cert)
}

func (f *Files) issueLeaf(ca *Authority, spec leafSpec, now time.Time) (*x509.Certificate, crypto.Signer, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("generate key: %w", err)
	}
	cert, err := ca.issue(&x509.Certificate{
		Subject:     pkix.Name{CommonName: spec.commonName},
		NotBefore:   now.Add(-clockSkew),
		NotAfter:    now.AddDate(1, 0, 0),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: spec.usages,
		DNSNames:    spec.hosts.dns,
		IPAddresses: spec.hosts.ips,
	}, key.Public(), now)
	if err != nil {
		return nil, nil, err
	}
	if err := f.writeLeaf(spec.base, cert, key); err != nil {
		return nil, nil, err
	}
	return cert, key, nil
}

// writeLeaf writes the key first: after a crash between the two writes the
// old certificate no longer matches and the pair is reissued.
func (f *Files) writeLeaf(base string, cert *x509.Certificate, key crypto.Signer) error {
	keyPEM, err := encodeKey(key)
	if err != nil {
		return err
	}
	if err := writeFileAtomic(f.path(base+keyExt), keyPEM, keyMode); err != nil {
		return err
	}
	return writeFileAtomic(f.path(base+certExt), encodeCert(cert.Raw), certMode)
}
