package jwt

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"strings"

	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

const (
	// RFC 7518 §3.2 wants an HMAC key at least as long as the hash; 32 bytes
	// is the floor for every HS* algorithm.
	minSecretLen = 32
	// Below 2048 bits RSA is breakable in practice.
	minRSABits = 2048
	// Larger moduli only make verification slower: a key set served to us
	// must not be able to turn every request into a CPU sink.
	maxRSABits = 8192
)

// key is one verification key: an HMAC secret ([]byte), *rsa.PublicKey,
// *ecdsa.PublicKey or ed25519.PublicKey.
type key struct {
	kid string
	// alg is the algorithm a JWK pins the key to ("alg" member); empty
	// allows every algorithm of the key's family.
	alg string
	pub any
}

// fits reports whether k may verify a token signed with alg. It is the
// single place that ties a key to its algorithm family, so an HMAC
// algorithm can never be verified with a public key (RS→HS confusion) and
// an ES256 token never with a P-384 key.
func (k *key) fits(alg string) bool {
	if k.alg != "" && k.alg != alg {
		return false
	}
	switch pub := k.pub.(type) {
	case []byte:
		// RFC 7518 §3.2: the key is at least as long as the hash.
		switch alg {
		case "HS256":
			return len(pub) >= 32
		case "HS384":
			return len(pub) >= 48
		case "HS512":
			return len(pub) >= 64
		}
	case *rsa.PublicKey:
		switch alg {
		case "RS256", "RS384", "RS512", "PS256", "PS384", "PS512":
			return true
		}
	case *ecdsa.PublicKey:
		switch alg {
		case "ES256":
			return pub.Curve == elliptic.P256()
		case "ES384":
			return pub.Curve == elliptic.P384()
		case "ES512":
			return pub.Curve == elliptic.P521()
		}
	case ed25519.PublicKey:
		return alg == "EdDSA"
	}
	return false
}

// keySet is an immutable set of keys, indexed by kid.
type keySet struct {
	byKid map[string]*key
	// anon are the keys without a kid; they may verify a token whatever
	// its kid, as long as no key carries that kid.
	anon []*key
	all  []*key
}

func newKeySet(keys []*key) *keySet {
	s := &keySet{byKid: make(map[string]*key, len(keys)), all: keys}
	for _, k := range keys {
		if k.kid == "" {
			s.anon = append(s.anon, k)
			continue
		}
		if _, dup := s.byKid[k.kid]; !dup {
			s.byKid[k.kid] = k
		}
	}
	return s
}

// inlineKeys loads the keys a JWTProviderSpec lists. Secrets are read
// here, once; errors name the key and where its secret was expected, never
// the secret.
func inlineKeys(spec *meridianv1.JWTProviderSpec, opts Options) ([]*key, error) {
	keys := make([]*key, 0, len(spec.GetKeys()))
	for i, k := range spec.GetKeys() {
		pub, err := inlineKey(k, opts)
		if err != nil {
			return nil, fmt.Errorf("keys[%d]: %w", i, err)
		}
		keys = append(keys, &key{kid: k.GetKid(), pub: pub})
	}
	return keys, nil
}

func inlineKey(k *meridianv1.JWTKey, opts Options) (any, error) {
	switch {
	case k.GetPublicKeyPem() != "":
		return parsePublicKeyPEM(k.GetPublicKeyPem())
	case k.GetSecretEnv() != "":
		v, ok := opts.LookupEnv(k.GetSecretEnv())
		if !ok {
			return nil, fmt.Errorf("secretEnv: environment variable %s is not set", k.GetSecretEnv())
		}
		return checkSecret([]byte(v), "secretEnv "+k.GetSecretEnv())
	case k.GetSecretFile() != "":
		b, err := opts.ReadFile(k.GetSecretFile())
		if err != nil {
			// The error from reading names the path, not the content.
			return nil, fmt.Errorf("secretFile: %w", err)
		}
		// Files written with echo or an editor end in a newline that is
		// not part of the secret.
		b = []byte(strings.TrimSuffix(strings.TrimSuffix(string(b), "\n"), "\r"))
		return checkSecret(b, "secretFile "+k.GetSecretFile())
	}
	return nil, errors.New("one of publicKeyPEM, secretEnv, secretFile is required")
}

func checkSecret(b []byte, where string) ([]byte, error) {
	if len(b) < minSecretLen {
		return nil, fmt.Errorf("%s: HMAC secret is shorter than %d bytes", where, minSecretLen)
	}
	return b, nil
}

func parsePublicKeyPEM(text string) (any, error) {
	block, _ := pem.Decode([]byte(text))
	if block == nil {
		return nil, errors.New("publicKeyPEM: no PEM block found")
	}
	pub, err := x509.ParsePKIXPublicKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("publicKeyPEM: %w", err)
	}
	if err := checkPublicKey(pub); err != nil {
		return nil, fmt.Errorf("publicKeyPEM: %w", err)
	}
	return pub, nil
}

func checkPublicKey(pub any) error {
	switch pub := pub.(type) {
	case *rsa.PublicKey:
		if n := pub.N.BitLen(); n < minRSABits || n > maxRSABits {
			return fmt.Errorf("RSA key of %d bits, want %d to %d", n, minRSABits, maxRSABits)
		}
		return nil
	case *ecdsa.PublicKey:
		switch pub.Curve {
		case elliptic.P256(), elliptic.P384(), elliptic.P521():
			return nil
		}
		return fmt.Errorf("EC curve %s is not used by JWT", pub.Curve.Params().Name)
	case ed25519.PublicKey:
		return nil
	}
	return fmt.Errorf("unsupported key type %T", pub)
}

// jwk is the part of an RFC 7517 JSON Web Key that verification needs.
// Private members, if a careless issuer publishes them, are never read.
type jwk struct {
	Kty string `json:"kty"`
	Kid string `json:"kid"`
	Use string `json:"use"`
	Alg string `json:"alg"`
	N   string `json:"n"`
	E   string `json:"e"`
	Crv string `json:"crv"`
	X   string `json:"x"`
	Y   string `json:"y"`
}

// parseJWKS decodes a JWK Set. Keys that cannot be used (unknown type,
// "use" other than sig, symmetric "oct" keys, which must never come from an
// HTTP endpoint) are skipped and reported in skipped, so one odd key does
// not cost the whole set.
func parseJWKS(body []byte) (keys []*key, skipped []string, err error) {
	var set struct {
		Keys []json.RawMessage `json:"keys"`
	}
	if err := json.Unmarshal(body, &set); err != nil {
		return nil, nil, fmt.Errorf("decode JWKS: %w", err)
	}
	for i, raw := range set.Keys {
		var j jwk
		if err := json.Unmarshal(raw, &j); err != nil {
			skipped = append(skipped, fmt.Sprintf("keys[%d]: %v", i, err))
			continue
		}
		k, err := j.key()
		if err != nil {
			skipped = append(skipped, fmt.Sprintf("keys[%d] (kid %q): %v", i, j.Kid, err))
			continue
		}
		keys = append(keys, k)
	}
	if len(keys) == 0 {
		return nil, skipped, errors.New("JWKS has no usable keys")
	}
	return keys, skipped, nil
}

func (j *jwk) key() (*key, error) {
	if j.Use != "" && j.Use != "sig" {
		return nil, fmt.Errorf("use %q is not sig", j.Use)
	}
	var pub any
	var err error
	switch j.Kty {
	case "RSA":
		pub, err = j.rsa()
	case "EC":
		pub, err = j.ec()
	case "OKP":
		pub, err = j.okp()
	default:
		return nil, fmt.Errorf("kty %q is not RSA, EC or OKP", j.Kty)
	}
	if err != nil {
		return nil, err
	}
	if err := checkPublicKey(pub); err != nil {
		return nil, err
	}
	k := &key{kid: j.Kid, alg: j.Alg, pub: pub}
	if j.Alg != "" && !k.fits(j.Alg) {
		return nil, fmt.Errorf("alg %q does not match the key", j.Alg)
	}
	return k, nil
}

func (j *jwk) rsa() (*rsa.PublicKey, error) {
	n, err := b64(j.N, "n")
	if err != nil {
		return nil, err
	}
	e, err := b64(j.E, "e")
	if err != nil {
		return nil, err
	}
	if len(e) == 0 || len(e) > 4 {
		return nil, errors.New("RSA exponent out of range")
	}
	exp := new(big.Int).SetBytes(e)
	if exp.Int64() < 3 || exp.Int64()%2 == 0 || exp.Int64() > 1<<31-1 {
		return nil, errors.New("RSA exponent out of range")
	}
	return &rsa.PublicKey{N: new(big.Int).SetBytes(n), E: int(exp.Int64())}, nil
}

func (j *jwk) ec() (*ecdsa.PublicKey, error) {
	var curve elliptic.Curve
	var size int
	switch j.Crv {
	case "P-256":
		curve, size = elliptic.P256(), 32
	case "P-384":
		curve, size = elliptic.P384(), 48
	case "P-521":
		curve, size = elliptic.P521(), 66
	default:
		return nil, fmt.Errorf("crv %q is not P-256, P-384 or P-521", j.Crv)
	}
	x, err := b64(j.X, "x")
	if err != nil {
		return nil, err
	}
	y, err := b64(j.Y, "y")
	if err != nil {
		return nil, err
	}
	if len(x) != size || len(y) != size {
		return nil, fmt.Errorf("%s coordinates must be %d bytes", j.Crv, size)
	}
	point := make([]byte, 0, 1+2*size)
	point = append(point, 4)
	point = append(point, x...)
	point = append(point, y...)
	// Rejects points off the curve (invalid-curve attacks).
	return ecdsa.ParseUncompressedPublicKey(curve, point)
}

func (j *jwk) okp() (ed25519.PublicKey, error) {
	if j.Crv != "Ed25519" {
		return nil, fmt.Errorf("crv %q is not Ed25519", j.Crv)
	}
	x, err := b64(j.X, "x")
	if err != nil {
		return nil, err
	}
	if len(x) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("Ed25519 key must be %d bytes", ed25519.PublicKeySize)
	}
	return ed25519.PublicKey(x), nil
}

func b64(s, member string) ([]byte, error) {
	b, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(s, "="))
	if err != nil {
		return nil, fmt.Errorf("member %s: %w", member, err)
	}
	if len(b) == 0 {
		return nil, fmt.Errorf("member %s is empty", member)
	}
	return b, nil
}
