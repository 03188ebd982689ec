package jwt

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	jwtlib "github.com/golang-jwt/jwt/v5"
	"golang.org/x/net/http/httpguts"
	"google.golang.org/protobuf/proto"

	"github.com/meridian-gw/meridian/dataplane/internal/metrics"
	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

// MaxTokenSize is the longest token accepted. Longer ones are rejected
// before any decoding, so a megabyte of garbage costs a length check.
const MaxTokenSize = 8 << 10

// maxCandidates bounds the signature checks one token without a usable kid
// can cost; see Provider.keysFor.
const maxCandidates = 4

// Options are the provider's dependencies. The zero value uses the real
// ones.
type Options struct {
	// HTTPClient fetches the JWKS. Default: a client with a 10s timeout.
	HTTPClient *http.Client
	// Now is the clock for claim checks and the JWKS refresh spacing.
	// Default: time.Now.
	Now func() time.Time
	// Logger receives JWKS problems and rejected tokens (at debug level);
	// never a token or a secret. Default: slog.Default().
	Logger *slog.Logger
	// LookupEnv reads secretEnv. Default: os.LookupEnv.
	LookupEnv func(string) (string, bool)
	// ReadFile reads secretFile. Default: os.ReadFile.
	ReadFile func(string) ([]byte, error)
	// CacheSize bounds the verified-token cache. 0 means DefaultCacheSize;
	// negative disables the cache.
	CacheSize int
	// Metrics records the requests the provider judges; nil: none.
	Metrics *metrics.JWT
}

func (o Options) withDefaults() Options {
	if o.HTTPClient == nil {
		o.HTTPClient = &http.Client{Timeout: jwksFetchTimeout}
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.LookupEnv == nil {
		o.LookupEnv = os.LookupEnv
	}
	if o.ReadFile == nil {
		o.ReadFile = os.ReadFile
	}
	if o.CacheSize == 0 {
		o.CacheSize = DefaultCacheSize
	}
	return o
}

// Provider verifies the tokens of one JWTProvider resource. It holds only
// what its spec determines (keys, the JWKS it keeps fresh, verified
// tokens), so a config push that leaves the spec unchanged can keep it:
// see Matches. It is safe for concurrent use.
type Provider struct {
	name        string
	spec        *meridianv1.JWTProviderSpec
	algs        []string
	issuer      string
	audiences   []string
	skew        time.Duration
	sources     []source
	forward     []forwardClaim
	consumer    string
	cacheMaxAge time.Duration

	static  *keySet
	jwks    *jwksSource // nil without jwksURI
	cache   *tokenCache
	parser  *jwtlib.Parser
	now     func() time.Time
	log     *slog.Logger
	metrics *metrics.JWT

	closeOnce sync.Once
}

type forwardClaim struct{ claim, header string }

// NewProvider builds the provider of the JWTProvider resource name. It
// reads secretEnv/secretFile secrets now, and, with a jwksURI, starts the
// goroutine that keeps the key set fresh; the first fetch runs in the
// background and requests arriving meanwhile wait for it. ctx bounds
// construction only: the provider lives until Close.
func NewProvider(ctx context.Context, name string, spec *meridianv1.JWTProviderSpec, opts Options) (*Provider, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if spec == nil {
		return nil, fmt.Errorf("JWTProvider %q: no spec", name)
	}
	opts = opts.withDefaults()
	p := &Provider{
		name:      name,
		spec:      proto.Clone(spec).(*meridianv1.JWTProviderSpec),
		issuer:    spec.GetIssuer(),
		audiences: slices.Clone(spec.GetAudiences()),
		skew:      spec.GetClockSkew().AsDuration(),
		consumer:  spec.GetConsumerClaim(),
		now:       opts.Now,
		log:       opts.Logger.With("jwtProvider", name),
		metrics:   opts.Metrics,
	}
	if err := p.init(spec, opts); err != nil {
		return nil, fmt.Errorf("JWTProvider %q: %w", name, err)
	}
	p.cache = newTokenCache(opts.CacheSize)
	if uri := spec.GetJwksUri(); uri != "" {
		p.jwks = newJWKSSource(uri, opts.HTTPClient, p.cacheMaxAge, opts.Now, p.log)
	}
	return p, nil
}

// init checks and compiles the spec; it starts nothing.
func (p *Provider) init(spec *meridianv1.JWTProviderSpec, opts Options) error {
	if len(spec.GetAlgorithms()) == 0 {
		return errors.New("algorithms: the allow-list is empty")
	}
	for _, alg := range spec.GetAlgorithms() {
		if !slices.Contains(supportedAlgorithms, alg) {
			return fmt.Errorf("algorithms: %q is not supported", alg)
		}
		p.algs = append(p.algs, alg)
	}
	if p.skew < 0 {
		return errors.New("clockSkew: negative")
	}
	p.cacheMaxAge = DefaultJWKSRefreshInterval
	if d := spec.GetJwksRefreshInterval().AsDuration(); d > 0 {
		p.cacheMaxAge = d
	} else if d < 0 {
		return errors.New("jwksRefreshInterval: negative")
	}
	if spec.GetJwksUri() == "" && len(spec.GetKeys()) == 0 {
		return errors.New("one of jwksURI or keys is required")
	}
	keys, err := inlineKeys(spec, opts)
	if err != nil {
		return err
	}
	p.static = newKeySet(keys)

	from := spec.GetTokenFrom()
	if len(from) == 0 {
		from = []string{"header:Authorization"}
	}
	for i, s := range from {
		src, err := parseSource(s)
		if err != nil {
			return fmt.Errorf("tokenFrom[%d]: %w", i, err)
		}
		p.sources = append(p.sources, src)
	}

	claims := make([]string, 0, len(spec.GetForwardClaims()))
	for c := range spec.GetForwardClaims() {
		claims = append(claims, c)
	}
	slices.Sort(claims)
	for _, c := range claims {
		h := spec.GetForwardClaims()[c]
		if !httpguts.ValidHeaderFieldName(h) {
			return fmt.Errorf("forwardClaims[%s]: %q is not a header name", c, h)
		}
		p.forward = append(p.forward, forwardClaim{claim: c, header: http.CanonicalHeaderKey(h)})
	}

	p.parser = jwtlib.NewParser(
		jwtlib.WithValidMethods(p.algs),
		jwtlib.WithJSONNumber(),
		jwtlib.WithStrictDecoding(),
		// Claims are checked by checkClaims, the same code the cache
		// path uses.
		jwtlib.WithoutClaimsValidation(),
	)
	return nil
}

var supportedAlgorithms = []string{
	"HS256", "HS384", "HS512",
	"RS256", "RS384", "RS512",
	"PS256", "PS384", "PS512",
	"ES256", "ES384", "ES512",
	"EdDSA",
}

// Name returns the JWTProvider's name.
func (p *Provider) Name() string { return p.name }

// Matches reports whether the provider was built from this name and spec,
// so a config push can keep it (and its fetched keys and verified tokens)
// instead of building a new one. Secrets are read once at construction: a
// changed secretEnv/secretFile content is only picked up by a new
// provider.
func (p *Provider) Matches(name string, spec *meridianv1.JWTProviderSpec) bool {
	return p.name == name && proto.Equal(p.spec, spec)
}

// Close stops the JWKS refresh goroutine and waits for it to exit. The
// provider still verifies tokens afterwards, with the keys it has, so
// requests in flight on an old snapshot are not failed by a push.
// Close is idempotent.
func (p *Provider) Close() {
	p.closeOnce.Do(func() {
		if p.jwks != nil {
			p.jwks.close()
		}
	})
}

// verify returns the identity a token establishes, from the cache when
// it has been verified before and is still within its validity.
func (p *Provider) verify(ctx context.Context, token string) (*identity, *authError) {
	if len(token) > MaxTokenSize {
		return nil, errTooLarge
	}
	now := p.now()
	h := sha256.Sum256([]byte(token))
	if id := p.cache.get(h, now); id != nil {
		return id, nil
	}
	claims := jwtlib.MapClaims{}
	tok, err := p.parser.ParseWithClaims(token, claims, func(t *jwtlib.Token) (any, error) {
		return p.keyFor(ctx, t)
	})
	if err != nil {
		return nil, p.classify(tok, err)
	}
	id, aerr := p.checkClaims(claims, now)
	if aerr != nil {
		return nil, aerr
	}
	// Bounded by the refresh interval too, so a key the issuer withdraws
	// stops vouching for cached tokens within one interval.
	id.notAfter = minTime(id.notAfter, now.Add(p.cacheMaxAge))
	p.cache.put(h, id, now)
	return id, nil
}

// classify turns a parse error into the answer the client gets.
func (p *Provider) classify(tok *jwtlib.Token, err error) *authError {
	var aerr *authError
	switch {
	case errors.As(err, &aerr):
		return aerr
	case errors.Is(err, jwtlib.ErrTokenMalformed):
		return errMalformed
	case tok == nil || tok.Method == nil || !slices.Contains(p.algs, tok.Method.Alg()):
		// alg missing, unknown ("NONE") or not in the allow-list.
		return errAlgorithm
	case errors.Is(err, jwtlib.ErrTokenSignatureInvalid):
		return errSignature
	}
	return errMalformed
}

// keyFor is the jwtlib.Keyfunc. The parser has already matched alg against
// the allow-list; it is checked again here because nothing below this line
// may ever see a key chosen for another algorithm.
func (p *Provider) keyFor(ctx context.Context, t *jwtlib.Token) (any, error) {
	alg := t.Method.Alg()
	if !slices.Contains(p.algs, alg) {
		return nil, errAlgorithm
	}
	// RFC 7515 §4.1.11: extensions listed in crit must be understood; we
	// understand none (this also refuses unencoded payloads, RFC 7797).
	if _, ok := t.Header["crit"]; ok {
		return nil, errCrit
	}
	// jku, x5u, jwk and x5c are never read: keys come from the spec only.
	kid := ""
	if v, ok := t.Header["kid"]; ok {
		s, isString := v.(string)
		if !isString {
			return nil, errMalformed
		}
		kid = s
	}
	keys, err := p.keysFor(ctx, alg, kid)
	if err != nil {
		return nil, err
	}
	if len(keys) == 1 {
		return keys[0].pub, nil
	}
	set := jwtlib.VerificationKeySet{Keys: make([]jwtlib.VerificationKey, len(keys))}
	for i, k := range keys {
		set.Keys[i] = k.pub
	}
	return set, nil
}

// keysFor picks the keys that may verify a token with this alg and kid.
// A kid names one key, which must fit alg. A token whose kid no key
// carries may use the fitting keys without a kid (a pasted PEM usually has
// none); a token without a kid may use every fitting key. Either way at
// most maxCandidates, inline keys first. An unknown kid, or no fitting key
// at all, asks the JWKS for a refresh (rate-limited) first: that is how an
// issuer's key rotation arrives without a config push.
func (p *Provider) keysFor(ctx context.Context, alg, kid string) ([]*key, error) {
	jwks := p.jwksKeys()
	for attempt := 0; ; attempt++ {
		if kid != "" {
			k := p.static.byKid[kid]
			if k == nil {
				k = jwks.byKid[kid]
			}
			if k != nil {
				if !k.fits(alg) {
					return nil, errKidMismatch
				}
				return []*key{k}, nil
			}
		}
		var cands []*key
		if kid != "" {
			cands = fitting(cands, alg, p.static.anon, jwks.anon)
		} else {
			cands = fitting(cands, alg, p.static.all, jwks.all)
		}
		if p.jwks == nil || attempt > 0 || (kid == "" && len(cands) > 0) {
			switch {
			case len(cands) > 0:
				return cands, nil
			case kid != "":
				return nil, errUnknownKid
			}
			return nil, errNoKey
		}
		jwks = p.jwks.refresh(ctx)
	}
}

func (p *Provider) jwksKeys() *keySet {
	if p.jwks == nil {
		return emptyKeySet
	}
	return p.jwks.current()
}

var emptyKeySet = newKeySet(nil)

func fitting(dst []*key, alg string, lists ...[]*key) []*key {
	for _, l := range lists {
		for _, k := range l {
			if len(dst) == maxCandidates {
				return dst
			}
			if k.fits(alg) {
				dst = append(dst, k)
			}
		}
	}
	return dst
}

// checkClaims applies the time, issuer and audience rules to verified
// claims and builds the identity.
func (p *Provider) checkClaims(m jwtlib.MapClaims, now time.Time) (*identity, *authError) {
	exp, ok, err := numericDate(m, "exp")
	if err != nil {
		return nil, errBadTime
	}
	if !ok {
		return nil, errNoExp
	}
	id := &identity{claims: &Claims{m: m}, notAfter: exp.Add(p.skew)}
	if !now.Before(id.notAfter) {
		return nil, errExpired
	}
	for _, name := range []string{"nbf", "iat"} {
		t, ok, err := numericDate(m, name)
		if err != nil {
			return nil, errBadTime
		}
		if !ok {
			continue
		}
		if t = t.Add(-p.skew); t.After(id.notBefore) {
			id.notBefore = t
		}
		if now.Before(t) {
			if name == "nbf" {
				return nil, errNotYet
			}
			return nil, errIssuedFuture
		}
	}
	if p.issuer != "" {
		if iss, ok := m["iss"].(string); !ok || iss != p.issuer {
			return nil, errIssuer
		}
	}
	if len(p.audiences) > 0 && !p.audienceOK(m["aud"]) {
		return nil, errAudience
	}
	for _, f := range p.forward {
		v, ok := id.claims.Claim(f.claim)
		if !ok {
			continue
		}
		if !httpguts.ValidHeaderFieldValue(v) {
			return nil, errClaimHeader
		}
		id.headers = append(id.headers, header{name: f.header, value: v})
	}
	if p.consumer != "" {
		id.consumer, id.hasConsumer = id.claims.Claim(p.consumer)
	}
	return id, nil
}

// audienceOK reports whether aud (a string or an array of strings, RFC
// 7519 §4.1.3) names one of the provider's audiences.
func (p *Provider) audienceOK(aud any) bool {
	switch aud := aud.(type) {
	case string:
		return slices.Contains(p.audiences, aud)
	case []any:
		for _, a := range aud {
			if s, ok := a.(string); ok && slices.Contains(p.audiences, s) {
				return true
			}
		}
	}
	return false
}

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

// authError is a rejected request: status, RFC 6750 error code and a
// description that never contains the token or a secret, and the reason
// metrics count it under.
type authError struct {
	status int
	code   string
	desc   string
	reason metrics.JWTReason
}

func (e *authError) Error() string { return e.desc }

func invalidToken(reason metrics.JWTReason, desc string) *authError {
	return &authError{status: http.StatusUnauthorized, code: "invalid_token", desc: desc, reason: reason}
}

var (
	errNoToken        = &authError{status: http.StatusUnauthorized, desc: "no token", reason: metrics.JWTMissing}
	errMultipleTokens = &authError{status: http.StatusBadRequest, code: "invalid_request", desc: "token given more than once", reason: metrics.JWTMultiple}
	errTooLarge       = invalidToken(metrics.JWTTooLarge, fmt.Sprintf("token longer than %d bytes", MaxTokenSize))
	errMalformed      = invalidToken(metrics.JWTMalformed, "malformed token")
	errAlgorithm      = invalidToken(metrics.JWTBadAlgorithm, "signing algorithm not allowed")
	errCrit           = invalidToken(metrics.JWTMalformed, "unsupported critical header")
	errUnknownKid     = invalidToken(metrics.JWTUnknownKey, "unknown key id")
	errKidMismatch    = invalidToken(metrics.JWTUnknownKey, "key id names a key of another algorithm")
	errNoKey          = invalidToken(metrics.JWTUnknownKey, "no key for the signing algorithm")
	errSignature      = invalidToken(metrics.JWTBadSignature, "invalid signature")
	errNoExp          = invalidToken(metrics.JWTInvalidClaim, "token has no exp claim")
	errBadTime        = invalidToken(metrics.JWTInvalidClaim, "exp, nbf or iat is not a valid date")
	errExpired        = invalidToken(metrics.JWTExpired, "token expired")
	errNotYet         = invalidToken(metrics.JWTNotYetValid, "token not valid yet (nbf)")
	errIssuedFuture   = invalidToken(metrics.JWTNotYetValid, "token issued in the future (iat)")
	errIssuer         = invalidToken(metrics.JWTWrongIssuer, "wrong issuer")
	errAudience       = invalidToken(metrics.JWTWrongAudience, "wrong audience")
	errClaimHeader    = invalidToken(metrics.JWTInvalidClaim, "a forwarded claim is not a valid header value")
)

// descriptionSafe keeps the characters RFC 6750 §3 allows in
// error_description (no quote, no backslash, printable ASCII).
func descriptionSafe(s string) string {
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r > 0x7e || r == '"' || r == '\\' {
			return '?'
		}
		return r
	}, s)
}
