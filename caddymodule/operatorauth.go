package caddymodule

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/asap-sidecar/asap-sidecar/caddymodule/api"
	"github.com/asap-sidecar/asap-sidecar/config"
)

// The reference operator API's scopes: asap:admin (the default required
// scope) runs every operator route; asap:execute alone may only create
// delegations for the token's own subject.
const (
	scopeAdmin   = "asap:admin"
	scopeExecute = "asap:execute"
)

// OAuth2 lets asap_api accept JWT access tokens issued by an OAuth2
// authorization server, besides or instead of the static bearer.
type OAuth2 struct {
	// JWKSURL is the authorization server's JWK Set; it is fetched on
	// first use and refreshed in the background. https, or http to a
	// loopback address.
	JWKSURL string `json:"jwks_url,omitempty"`
	// Keys are public key files (PEM PKIX, a JWK or a JWK Set) trusted
	// besides or instead of the JWKS URL.
	Keys []string `json:"keys,omitempty"`
	// Issuer, when set, must equal the token's iss.
	Issuer string `json:"issuer,omitempty"`
	// Audience must be among the token's aud. Required.
	Audience string `json:"audience,omitempty"`
	// Scope is the scope that grants the whole API (default asap:admin).
	Scope string `json:"scope,omitempty"`
	// Refresh is how often the JWKS is fetched again (default 15m).
	Refresh config.Duration `json:"refresh,omitempty"`
	// ClockSkew is the tolerance for exp, nbf and iat (default 30s).
	ClockSkew *config.Duration `json:"clock_skew,omitempty"`
}

const (
	defaultJWKSRefresh = 15 * time.Minute
	defaultOAuthSkew   = 30 * time.Second
	maxOAuthSkew       = 5 * time.Minute
)

// principal is who an operator call is made by, as authentication found
// it. The route layer asks it what it may do.
type principal struct {
	// subject is the access token's sub; empty for the static bearer.
	subject string
	scopes  []string
	// admin: the static bearer, or a token with the required scope.
	admin bool
}

func (p principal) isAdmin() bool { return p.admin }

func (p principal) hasScope(s string) bool {
	for _, have := range p.scopes {
		if have == s {
			return true
		}
	}
	return false
}

// mayMint says whether p may create a delegation for delegate: an admin
// for anyone, a token with asap:execute for its own subject only.
func (p principal) mayMint(delegate string) bool {
	if p.admin {
		return true
	}
	return p.subject != "" && delegate == p.subject && p.hasScope(scopeExecute)
}

type principalKey struct{}

func withPrincipal(ctx context.Context, p principal) context.Context {
	return context.WithValue(ctx, principalKey{}, p)
}

// principalFrom is the principal authentication put in ctx, if any.
func principalFrom(ctx context.Context) (principal, bool) {
	p, ok := ctx.Value(principalKey{}).(principal)
	return p, ok
}

// authError is an RFC 6750 answer: 401 without credentials or with a bad
// one, 403 when the credential lacks the scope, 503 when the keys to check
// it cannot be had.
type authError struct {
	status int
	code   string // "", invalid_token or insufficient_scope
	desc   string // error_description: fixed text, never caller input
	scope  string // the scope that would be enough, with insufficient_scope
	detail string // the body's detail, when not the reference's for status
}

func (e *authError) write(w http.ResponseWriter) {
	if e.detail != "" {
		api.Error(w, e.status, "%s", e.detail)
		return
	}
	challenge := `Bearer realm="asap"`
	if e.code != "" {
		challenge += `, error="` + e.code + `"`
	}
	if e.desc != "" {
		challenge += `, error_description="` + e.desc + `"`
	}
	if e.scope != "" {
		challenge += `, scope="` + e.scope + `"`
	}
	// The reference's bodies, so its clients read them the same way.
	detail := "Invalid authentication token"
	switch {
	case e.status == http.StatusServiceUnavailable:
		detail = "Authentication service unavailable"
		challenge = ""
	case e.status == http.StatusForbidden:
		detail = "Insufficient scope"
	case e.code == "":
		detail = "Authentication required"
	}
	if challenge != "" {
		w.Header().Set("WWW-Authenticate", challenge)
	}
	api.Error(w, e.status, "%s", detail)
}

func invalidToken(desc string) *authError {
	return &authError{status: http.StatusUnauthorized, code: "invalid_token", desc: desc}
}

// operatorAuth authenticates calls on the public mount: the static bearer
// when one is configured, then an OAuth2 access token when that is.
type operatorAuth struct {
	bearer     bool
	hash       [32]byte
	oauth      *oauthVerifier
	adminScope string
}

// provision sets a up; bearer has its placeholders expanded already.
func (a *operatorAuth) provision(ctx caddy.Context, bearer string, o *OAuth2) error {
	a.adminScope = scopeAdmin
	if bearer != "" {
		a.bearer = true
		// Compare digests, so the comparison takes the same time whatever
		// the lengths.
		a.hash = sha256.Sum256([]byte(bearer))
	}
	if o == nil {
		return nil
	}
	v, err := newOAuthVerifier(ctx, o)
	if err != nil {
		return err
	}
	a.oauth = v
	a.adminScope = v.scope
	return nil
}

func (a *operatorAuth) cleanup() {
	if a.oauth != nil {
		a.oauth.close()
	}
}

// bearerToken is the credential of an "Authorization: Bearer <token>"
// header; the scheme is case-insensitive (RFC 7235).
func bearerToken(h string) (string, bool) {
	scheme, token, ok := strings.Cut(h, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", false
	}
	token = strings.TrimSpace(token)
	return token, token != ""
}

// authenticate finds who is calling, or the answer to give.
func (a *operatorAuth) authenticate(r *http.Request) (principal, *authError) {
	token, ok := bearerToken(r.Header.Get("Authorization"))
	if !ok {
		return principal{}, &authError{status: http.StatusUnauthorized}
	}
	if a.bearer {
		got := sha256.Sum256([]byte(token))
		if subtle.ConstantTimeCompare(got[:], a.hash[:]) == 1 {
			return principal{admin: true}, nil
		}
	}
	if a.oauth == nil {
		return principal{}, invalidToken("The credential is not accepted")
	}
	return a.oauth.verify(token)
}

// maxMintBody bounds the delegation request read to check its delegate;
// the route's own limit is the same.
const maxMintBody = 4 << 20

// authorize says whether p may make the call r on the mount. An admin may
// make any; a token with asap:execute may only POST /asap/delegations
// with itself as the delegate. r's body is read and put back for that.
func (a *operatorAuth) authorize(r *http.Request, p principal) *authError {
	if p.isAdmin() {
		return nil
	}
	deny := &authError{status: http.StatusForbidden, code: "insufficient_scope", scope: a.adminScope,
		desc: "This call needs scope " + a.adminScope}
	path := strings.TrimSuffix(r.URL.Path, "/")
	if r.Method != http.MethodPost || path != "/asap/delegations" || !p.hasScope(scopeExecute) {
		return deny
	}
	b, err := io.ReadAll(io.LimitReader(r.Body, maxMintBody+1))
	switch {
	case err != nil:
		return &authError{status: http.StatusBadRequest, detail: "reading the delegation request: " + err.Error()}
	case len(b) > maxMintBody:
		return &authError{status: http.StatusRequestEntityTooLarge, detail: fmt.Sprintf("request body larger than %d bytes", maxMintBody)}
	}
	r.Body = io.NopCloser(bytes.NewReader(b))
	// Decoded exactly as the route decodes it, so the delegate checked
	// here is the delegate it mints for; a body it cannot decode is
	// refused here as well.
	var req api.MintRequest
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil || !p.mayMint(req.Delegate) {
		deny.desc = "Scope " + scopeExecute + " may only create delegations whose delegate is the token's subject"
		return deny
	}
	return nil
}

// check validates o after placeholder expansion, filling defaults.
func (o *OAuth2) check() error {
	if o.JWKSURL == "" && len(o.Keys) == 0 {
		return errors.New("asap_api oauth2: set jwks_url (the authorization server's JWK Set URL) or key <public key file>; neither is set")
	}
	if o.JWKSURL != "" {
		if err := checkJWKSURL(o.JWKSURL); err != nil {
			return fmt.Errorf("asap_api oauth2 option jwks_url: %w", err)
		}
	}
	if strings.TrimSpace(o.Audience) == "" {
		return errors.New("asap_api oauth2 option audience: required; name this API as the authorization server writes it in the token's aud (for example asap-sidecar)")
	}
	if o.Scope == "" {
		o.Scope = scopeAdmin
	}
	if strings.ContainsAny(o.Scope, " \t\"\\") {
		return fmt.Errorf("asap_api oauth2 option scope: %q is not one scope token (no spaces, quotes or backslashes)", o.Scope)
	}
	if o.Refresh == 0 {
		o.Refresh = config.Duration(defaultJWKSRefresh)
	}
	if time.Duration(o.Refresh) < time.Second {
		return fmt.Errorf("asap_api oauth2 option refresh: %s is too short; use 1s or more (default 15m)", time.Duration(o.Refresh))
	}
	if o.ClockSkew != nil && (*o.ClockSkew < 0 || time.Duration(*o.ClockSkew) > maxOAuthSkew) {
		return fmt.Errorf("asap_api oauth2 option clock_skew: %s is out of range; use 0s..5m (default 30s)", time.Duration(*o.ClockSkew))
	}
	return nil
}

// checkJWKSURL wants https, so that no one on the path can swap the keys;
// plain http only to this host.
func checkJWKSURL(s string) error {
	u, err := url.Parse(s)
	if err != nil || u.Host == "" {
		return fmt.Errorf("%q is not an absolute URL (for example https://idp.example/.well-known/jwks.json)", s)
	}
	switch u.Scheme {
	case "https":
		return nil
	case "http":
		host := u.Hostname()
		if ip := net.ParseIP(host); host == "localhost" || (ip != nil && ip.IsLoopback()) {
			return nil
		}
		return fmt.Errorf("%q: use https; plain http is accepted only to localhost", s)
	default:
		return fmt.Errorf("%q: use an https URL", s)
	}
}

// expand replaces {env.*} and other known placeholders in o's strings.
func (o *OAuth2) expand(repl *caddy.Replacer) {
	o.JWKSURL = strings.TrimSpace(repl.ReplaceKnown(o.JWKSURL, ""))
	o.Issuer = repl.ReplaceKnown(o.Issuer, "")
	o.Audience = repl.ReplaceKnown(o.Audience, "")
	o.Scope = repl.ReplaceKnown(o.Scope, "")
	for i, k := range o.Keys {
		o.Keys[i] = repl.ReplaceKnown(k, "")
	}
}

// parseOAuth2 reads the oauth2 block of asap_api.
func parseOAuth2(d *caddyfile.Dispenser, o *OAuth2) error {
	for d.NextBlock(1) {
		opt := d.Val()
		var err error
		switch opt {
		case "jwks_url":
			err = oneArg(d, &o.JWKSURL)
		case "key":
			files := d.RemainingArgs()
			if len(files) == 0 {
				err = argError("missing value: name a public key file (PEM or JWK)")
			}
			o.Keys = append(o.Keys, files...)
		case "issuer":
			err = oneArg(d, &o.Issuer)
		case "audience":
			err = oneArg(d, &o.Audience)
		case "scope":
			err = oneArg(d, &o.Scope)
		case "refresh":
			err = durArg(d, &o.Refresh)
		case "clock_skew":
			var skew config.Duration
			if err = durArgZeroOK(d, &skew); err == nil {
				o.ClockSkew = &skew
			}
		default:
			return d.Errf("unknown asap_api oauth2 option %q", opt)
		}
		if err != nil {
			return d.Errf("asap_api option oauth2 %s: %v", opt, err)
		}
	}
	return nil
}
