// Command minttoken signs one RS256 JWT with an RSA private key and prints
// it. bench/proxies.sh uses it for the meridian-jwt target; it signs with
// go-jose, an implementation other than the data plane's verifier.
package main

import (
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/go-jose/go-jose/v4"
	josejwt "github.com/go-jose/go-jose/v4/jwt"
)

func main() {
	keyFile := flag.String("key", "", "PEM file with the RSA private key (PKCS#1 or PKCS#8)")
	kid := flag.String("kid", "", "key id put in the token header (omitted when empty)")
	sub := flag.String("sub", "bench", "subject claim")
	iss := flag.String("iss", "", "issuer claim (omitted when empty)")
	aud := flag.String("aud", "", "audience claim (omitted when empty)")
	ttl := flag.Duration("ttl", time.Hour, "time until the token expires")
	flag.Parse()
	if flag.NArg() > 0 || *keyFile == "" || *ttl <= 0 {
		fmt.Fprintln(os.Stderr, "usage: minttoken --key FILE [--kid ID] [--sub SUB] [--iss ISS] [--aud AUD] [--ttl DURATION]")
		os.Exit(2)
	}
	token, err := mint(*keyFile, *kid, josejwt.Claims{
		Subject:  *sub,
		Issuer:   *iss,
		Audience: audience(*aud),
		IssuedAt: josejwt.NewNumericDate(time.Now()),
		Expiry:   josejwt.NewNumericDate(time.Now().Add(*ttl)),
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "minttoken:", err)
		os.Exit(1)
	}
	fmt.Println(token)
}

func audience(aud string) josejwt.Audience {
	if aud == "" {
		return nil
	}
	return josejwt.Audience{aud}
}

// mint signs claims with the RSA key in keyFile.
func mint(keyFile, kid string, claims josejwt.Claims) (string, error) {
	key, err := readKey(keyFile)
	if err != nil {
		return "", err
	}
	opts := &jose.SignerOptions{}
	if kid != "" {
		opts = opts.WithHeader("kid", kid)
	}
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.RS256, Key: key}, opts.WithType("JWT"))
	if err != nil {
		return "", fmt.Errorf("signer: %w", err)
	}
	token, err := josejwt.Signed(signer).Claims(claims).Serialize()
	if err != nil {
		return "", fmt.Errorf("sign: %w", err)
	}
	return token, nil
}

// readKey parses the first PEM block of path as an RSA private key.
func readKey(path string) (*rsa.PrivateKey, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, fmt.Errorf("%s: no PEM block", path)
	}
	if key, err := x509.ParsePKCS1PrivateKey(block.Bytes); err == nil {
		return key, nil
	}
	parsed, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%s: not an RSA private key: %w", path, err)
	}
	key, ok := parsed.(*rsa.PrivateKey)
	if !ok {
		return nil, errors.New(path + ": not an RSA private key")
	}
	return key, nil
}
