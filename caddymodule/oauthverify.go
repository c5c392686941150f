package caddymodule

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/lestrrat-go/jwx/v2/jwa"
	"github.com/lestrrat-go/jwx/v2/jwk"
	"github.com/lestrrat-go/jwx/v2/jws"
	"github.com/lestrrat-go/jwx/v2/jwt"
	"go.uber.org/zap"
)

const (
	// maxAccessToken bounds the token size we parse at all.
	maxAccessToken = 16 << 10
	// maxJWKSBody bounds a JWK Set answer; real ones are a few KiB.
	maxJWKSBody = 1 << 20
	jwksTimeout = 10 * time.Second
	// maxRefetchGap is the longest a token signed by a key the cache has
	// not seen yet waits for a refetch; shorter when refresh is shorter.
	maxRefetchGap = 10 * time.Second
	// minRSABits refuses keys too weak to trust with the operator API.
	minRSABits = 2048
)

// oauthVerifier checks OAuth2 access tokens: compact JWS, an asymmetric
// algorithm, a key from the configured files or the JWKS URL, exp (with
// skew), aud, iss, sub.
type oauthVerifier struct {
	audience, issuer, scope string
	skew                    time.Duration

	static jwk.Set // key files; may be empty

	// The JWKS, cached and refreshed in the background by jwx from
	// provision to cleanup.
	jwksURL string
	cache   *jwk.Cache
	ctx     context.Context
	cancel  context.CancelFunc

	// Refetches on demand, for a key the cache has not seen, are at most
	// one per refetchGap so a stream of bad tokens cannot flood the
	// authorization server.
	mu          sync.Mutex
	refetchGap  time.Duration
	lastRefresh time.Time

	log *zap.Logger
}

// testHookOAuth, set only by tests, receives each verifier when it is
// provisioned so a test can drive its JWKS refresh.
var testHookOAuth func(*oauthVerifier)

func newOAuthVerifier(ctx caddy.Context, o *OAuth2) (*oauthVerifier, error) {
	o.expand(caddy.NewReplacer())
	if err := o.check(); err != nil {
		return nil, err
	}
	v := &oauthVerifier{
		audience: o.Audience, issuer: o.Issuer, scope: o.Scope, skew: defaultOAuthSkew,
		static: jwk.NewSet(), jwksURL: o.JWKSURL, log: ctx.Logger(),
	}
	if o.ClockSkew != nil {
		v.skew = time.Duration(*o.ClockSkew)
	}
	for _, path := range o.Keys {
		if err := addKeyFile(v.static, path); err != nil {
			return nil, fmt.Errorf("asap_api oauth2 option key %s: %w", path, err)
		}
	}
	if v.jwksURL == "" {
		return v, nil
	}
	refresh := time.Duration(o.Refresh)
	v.refetchGap = min(refresh, maxRefetchGap)
	v.lastRefresh = time.Now()
	v.ctx, v.cancel = context.WithCancel(ctx)
	// The window is how often jwx looks for due refreshes; a minute at
	// most so a refresh is not late by a whole interval.
	v.cache = jwk.NewCache(v.ctx, jwk.WithRefreshWindow(min(refresh, time.Minute)),
		jwk.WithErrSink(jwkErrSink{v}))
	err := v.cache.Register(v.jwksURL, jwk.WithRefreshInterval(refresh),
		jwk.WithHTTPClient(jwksClient{&http.Client{Timeout: jwksTimeout, CheckRedirect: jwksRedirect}}))
	if err != nil {
		v.cancel()
		return nil, fmt.Errorf("asap_api oauth2 option jwks_url: %w", err)
	}
	if testHookOAuth != nil {
		testHookOAuth(v)
	}
	return v, nil
}

func (v *oauthVerifier) close() {
	if v.cancel != nil {
		v.cancel()
	}
}

func (v *oauthVerifier) logger() *zap.Logger {
	if v.log == nil {
		return zap.NewNop()
	}
	return v.log
}

type jwkErrSink struct{ v *oauthVerifier }

func (s jwkErrSink) Error(err error) {
	s.v.logger().Warn("refreshing the OAuth2 JWK Set failed; the keys fetched before stay in use",
		zap.String("jwks_url", s.v.jwksURL), zap.Error(err))
}

// jwksClient fetches the JWK Set with a timeout and a size limit (jwx's
// cache takes any client with Get).
type jwksClient struct{ c *http.Client }

func (j jwksClient) Get(u string) (*http.Response, error) {
	res, err := j.c.Get(u)
	if err != nil {
		return nil, err
	}
	res.Body = &limitedBody{ReadCloser: res.Body, left: maxJWKSBody}
	return res, nil
}

// jwksRedirect follows redirects only to where jwks_url could point.
func jwksRedirect(req *http.Request, via []*http.Request) error {
	if len(via) >= 5 {
		return errors.New("more than 5 redirects")
	}
	return checkJWKSURL(req.URL.String())
}

type limitedBody struct {
	io.ReadCloser
	left int64
}

func (b *limitedBody) Read(p []byte) (int, error) {
	if b.left <= 0 {
		return 0, fmt.Errorf("JWK Set larger than %d bytes", maxJWKSBody)
	}
	if int64(len(p)) > b.left {
		p = p[:b.left+1] // one more, to notice a longer body
	}
	n, err := b.ReadCloser.Read(p)
	b.left -= int64(n)
	if b.left < 0 {
		return 0, fmt.Errorf("JWK Set larger than %d bytes", maxJWKSBody)
	}
	return n, err
}

// refreshNow fetches the JWK Set now, whatever the last fetch.
func (v *oauthVerifier) refreshNow() error {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.refresh()
}

// refresh fetches the JWK Set now; v.mu is held.
func (v *oauthVerifier) refresh() error {
	_, err := v.cache.Refresh(v.ctx, v.jwksURL)
	v.lastRefresh = time.Now()
	if err != nil {
		v.logger().Warn("fetching the OAuth2 JWK Set failed", zap.String("jwks_url", v.jwksURL), zap.Error(err))
	}
	return err
}

// refetch is called when a token's key was not found (or no set could be
// had) in a check that began at started. It says whether to check again:
// the set was fetched since, by this call or a concurrent one.
func (v *oauthVerifier) refetch(started time.Time) bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.lastRefresh.After(started) {
		return true
	}
	if time.Since(v.lastRefresh) < v.refetchGap {
		return false
	}
	return v.refresh() == nil
}

// verify checks token and returns its principal.
func (v *oauthVerifier) verify(token string) (principal, *authError) {
	if !compactJWS(token) {
		return principal{}, invalidToken("The access token is not a compact JWT")
	}
	started := time.Now()
	tok, kp, err := v.parse(token)
	if err != nil && v.cache != nil && (kp.unknownKey || kp.noSet) && v.refetch(started) {
		tok, kp, err = v.parse(token)
	}
	if err != nil {
		return principal{}, v.failure(kp, err)
	}
	scopes := tokenScopes(tok)
	p := principal{subject: tok.Subject(), scopes: scopes}
	p.admin = p.hasScope(v.scope)
	return p, nil
}

// compactJWS says whether token has the form of a compact JWS: three
// base64url parts. JSON serializations (several signatures, unprotected
// headers) are not access tokens.
func compactJWS(token string) bool {
	if len(token) > maxAccessToken || strings.Count(token, ".") != 2 {
		return false
	}
	for i := 0; i < len(token); i++ {
		c := token[i]
		if !(c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return false
		}
	}
	return true
}

func (v *oauthVerifier) parse(token string) (jwt.Token, *keyPicker, error) {
	kp := &keyPicker{v: v}
	opts := []jwt.ParseOption{
		jwt.WithKeyProvider(kp),
		jwt.WithValidate(true),
		jwt.WithAcceptableSkew(v.skew),
		jwt.WithAudience(v.audience),
		jwt.WithRequiredClaim(jwt.ExpirationKey),
		jwt.WithRequiredClaim(jwt.SubjectKey),
	}
	if v.issuer != "" {
		opts = append(opts, jwt.WithIssuer(v.issuer))
	}
	tok, err := jwt.ParseString(token, opts...)
	return tok, kp, err
}

// failure turns a failed check into its RFC 6750 answer. Descriptions are
// fixed texts: nothing from the token is echoed into the header.
func (v *oauthVerifier) failure(kp *keyPicker, err error) *authError {
	switch {
	case kp.badAlg:
		return invalidToken("The signing algorithm is not accepted; use RS256, PS256, ES256 or EdDSA")
	case kp.noSet:
		return &authError{status: http.StatusServiceUnavailable}
	case kp.unknownKey:
		return invalidToken("The access token is signed by a key that is not trusted")
	case errors.Is(err, jwt.ErrTokenExpired()):
		return invalidToken("The access token expired")
	case errors.Is(err, jwt.ErrTokenNotYetValid()), errors.Is(err, jwt.ErrInvalidIssuedAt()):
		return invalidToken("The access token is not valid yet")
	case errors.Is(err, jwt.ErrInvalidAudience()):
		return invalidToken("The access token is not meant for this audience")
	case errors.Is(err, jwt.ErrInvalidIssuer()):
		return invalidToken("The access token is not from the accepted issuer")
	case errors.Is(err, jwt.ErrRequiredClaim()):
		return invalidToken("The access token lacks a required claim (exp, sub)")
	case jws.IsVerificationError(err):
		return invalidToken("The access token signature does not verify")
	default:
		return invalidToken("The access token could not be read")
	}
}

// tokenScopes reads scope (RFC 8693, space-separated, as the reference
// writes it) and scp (as some servers write it), each a string or an
// array.
func tokenScopes(tok jwt.Token) []string {
	var out []string
	for _, name := range []string{"scope", "scp"} {
		v, ok := tok.Get(name)
		if !ok {
			continue
		}
		switch v := v.(type) {
		case string:
			out = append(out, strings.Fields(v)...)
		case []any:
			for _, s := range v {
				if s, ok := s.(string); ok {
					out = append(out, strings.Fields(s)...)
				}
			}
		}
	}
	return out
}

// keyPicker hands jwx the keys that may have signed a token and notes why
// none did.
type keyPicker struct {
	v          *oauthVerifier
	badAlg     bool // algorithm not on the allow-list
	unknownKey bool // no trusted key fits
	noSet      bool // no key in the files fits and the JWKS could not be had
}

var errPick = errors.New("no acceptable key")

// maxCandidates bounds the signature checks one token can cost.
const maxCandidates = 8

func (kp *keyPicker) FetchKeys(_ context.Context, sink jws.KeySink, sig *jws.Signature, _ *jws.Message) error {
	h := sig.ProtectedHeaders()
	alg := h.Algorithm()
	if !allowedAlg(alg) {
		kp.badAlg = true
		return errPick
	}
	kid := h.KeyID()
	n := kp.offer(sink, kp.v.static, alg, kid, 0)
	if kp.v.cache != nil {
		// The cache's own context, not the request's: a client that goes
		// away must not leave the cache with a failed first fetch.
		set, err := kp.v.cache.Get(kp.v.ctx, kp.v.jwksURL)
		switch {
		case err == nil:
			n = kp.offer(sink, set, alg, kid, n)
		case n == 0:
			kp.noSet = true
			return errPick
		}
	}
	if n == 0 {
		kp.unknownKey = true
		return errPick
	}
	return nil
}

// offer sends sink the keys of set that fit alg and kid: with a kid, the
// key of that id (or keys that have none); without, every fitting key.
func (kp *keyPicker) offer(sink jws.KeySink, set jwk.Set, alg jwa.SignatureAlgorithm, kid string, n int) int {
	for i := 0; i < set.Len() && n < maxCandidates; i++ {
		k, _ := set.Key(i)
		if kid != "" && k.KeyID() != "" && k.KeyID() != kid {
			continue
		}
		if u := k.KeyUsage(); u != "" && u != string(jwk.ForSignature) {
			continue
		}
		if a := k.Algorithm().String(); a != "" && !sameAlg(a, alg.String()) {
			continue
		}
		var raw any
		if err := k.Raw(&raw); err != nil || !keyFits(alg, raw) {
			continue
		}
		sink.Key(alg, raw)
		n++
	}
	return n
}

// allowedAlg is the asymmetric allow-list: never none, never HMAC, so a
// public key can never be used as a shared secret.
func allowedAlg(alg jwa.SignatureAlgorithm) bool {
	switch alg {
	case jwa.RS256, jwa.RS384, jwa.RS512, jwa.PS256, jwa.PS384, jwa.PS512,
		jwa.ES256, jwa.ES384, jwa.ES512, jwa.EdDSA, jwa.SignatureAlgorithm("Ed25519"):
		return true
	}
	return false
}

// sameAlg compares algorithm names, taking RFC 9864's Ed25519 for the
// EdDSA a key published before it may still declare.
func sameAlg(a, b string) bool {
	ed := func(s string) bool { return s == "EdDSA" || s == "Ed25519" }
	return a == b || (ed(a) && ed(b))
}

// keyFits says whether a public key is of the type and size alg needs.
func keyFits(alg jwa.SignatureAlgorithm, raw any) bool {
	switch k := raw.(type) {
	case *rsa.PublicKey:
		a := alg.String()
		return (strings.HasPrefix(a, "RS") || strings.HasPrefix(a, "PS")) && k.N.BitLen() >= minRSABits
	case *ecdsa.PublicKey:
		switch alg {
		case jwa.ES256:
			return k.Curve == elliptic.P256()
		case jwa.ES384:
			return k.Curve == elliptic.P384()
		case jwa.ES512:
			return k.Curve == elliptic.P521()
		}
	case ed25519.PublicKey:
		return alg == jwa.EdDSA || alg.String() == "Ed25519"
	}
	return false
}

// addKeyFile adds the public keys of a file (PEM, a JWK or a JWK Set) to
// set, refusing symmetric keys and weak RSA.
func addKeyFile(set jwk.Set, path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	var keys jwk.Set
	if strings.HasPrefix(strings.TrimSpace(string(b)), "-----BEGIN") {
		keys, err = jwk.Parse(b, jwk.WithPEM(true))
	} else {
		keys, err = jwk.Parse(b)
	}
	if err != nil {
		return fmt.Errorf("not a public key in PEM (PKIX) or JWK form: %w", err)
	}
	if keys.Len() == 0 {
		return errors.New("holds no key")
	}
	for i := 0; i < keys.Len(); i++ {
		k, _ := keys.Key(i)
		if k.KeyType() == jwa.OctetSeq {
			return errors.New("holds a symmetric (oct) key; access tokens are checked with public keys only")
		}
		pub, err := jwk.PublicKeyOf(k)
		if err != nil {
			return err
		}
		var raw any
		if err := pub.Raw(&raw); err != nil {
			return err
		}
		switch r := raw.(type) {
		case *rsa.PublicKey:
			if r.N.BitLen() < minRSABits {
				return fmt.Errorf("RSA key of %d bits; use %d or more", r.N.BitLen(), minRSABits)
			}
		case *ecdsa.PublicKey, ed25519.PublicKey:
		default:
			return fmt.Errorf("key type %s is not supported; use RSA, EC (P-256, P-384, P-521) or Ed25519", k.KeyType())
		}
		if err := set.AddKey(pub); err != nil {
			return err
		}
	}
	return nil
}
