package delegation

import (
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwk"
	"github.com/lestrrat-go/jwx/v2/jws"
	"github.com/oklog/ulid/v2"
)

// Limits of what Mint issues.
const (
	DefaultTTL = 24 * time.Hour
	MaxTTL     = 365 * 24 * time.Hour
)

// Grant describes a token to mint.
type Grant struct {
	// Issuer is the delegator: the URN whose key signs.
	Issuer string
	// Delegate is who may use the token (aud).
	Delegate string
	Scopes   []string
	// TTL is how long the token lives (DefaultTTL when 0). Under a
	// parent it is cut to the parent's expiry.
	TTL time.Duration
	// MaxTasks limits the tasks run with the token and its descendants
	// (nil: no limit of its own; under a limited parent, the parent's).
	MaxTasks *int64
	// Parent is the verified chain this token attenuates, if any.
	Parent *Chain
	// CnfJWK binds the delegate's public key, so it can re-delegate
	// without configuration on the verifying side.
	CnfJWK json.RawMessage
	Now    time.Time
}

// Minted is a new token.
type Minted struct {
	// Token is the compact token alone.
	Token string
	// Chain is the header value to send: the token followed by its
	// parent chain, if any.
	Chain  string
	Claims Claims
	// ParentID and ParentIssuer are the parent token's id and issuer, if
	// any.
	ParentID, ParentIssuer string
}

// ErrInvalidGrant wraps every reason Mint refuses a grant.
var ErrInvalidGrant = errors.New("invalid delegation")

func invalid(format string, a ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalidGrant, fmt.Sprintf(format, a...))
}

// Mint signs a token for g with key, checking that it only narrows its
// parent. The header is {"alg":"Ed25519","typ":"JWT"} as the reference
// writes it, plus the signer's jwk when the parent binds it by thumbprint.
func Mint(g Grant, key ed25519.PrivateKey) (*Minted, error) {
	if len(key) != ed25519.PrivateKeySize {
		return nil, errors.New("no Ed25519 signing key")
	}
	if g.Delegate == "" {
		return nil, invalid("delegate is required")
	}
	if len(g.Scopes) == 0 {
		return nil, invalid("scopes must name at least one scope")
	}
	for _, s := range g.Scopes {
		if strings.TrimSpace(s) == "" || strings.ContainsAny(s, ",\x00") {
			return nil, invalid("scope %q is not a scope", s)
		}
	}
	ttl := g.TTL
	if ttl == 0 {
		ttl = DefaultTTL
	}
	if ttl < time.Second || ttl > MaxTTL {
		return nil, invalid("expires_in_seconds must be within 1..%d", int64(MaxTTL/time.Second))
	}
	if g.MaxTasks != nil && *g.MaxTasks < 0 {
		return nil, invalid("max_tasks must be ≥ 0")
	}
	now := g.Now
	if now.IsZero() {
		now = time.Now()
	}
	iat, exp := NumericDate(now.Unix()), NumericDate(now.Add(ttl).Unix())
	c := Claims{
		Issuer:   g.Issuer,
		Audience: Audience(g.Delegate),
		ID:       "del_" + ulid.Make().String(),
		IssuedAt: &iat,
		Scopes:   g.Scopes,
	}
	maxTasks := g.MaxTasks
	hdr := jws.NewHeaders()
	if err := hdr.Set(jws.TypeKey, "JWT"); err != nil {
		return nil, err
	}
	chain := ""
	if g.Parent != nil {
		p := g.Parent.Leaf()
		if string(p.Claims.Audience) != g.Issuer {
			return nil, invalid("the parent delegates to %s, not to %s, so %s cannot attenuate it", p.Claims.Audience, g.Issuer, g.Issuer)
		}
		for _, s := range g.Scopes {
			if !grants(p.Claims.Scopes, s) {
				return nil, invalid("scope %q is not granted by the parent", s)
			}
		}
		if pm := p.MaxTasks(); pm >= 0 {
			if maxTasks == nil {
				maxTasks = &pm
			} else if *maxTasks > pm {
				return nil, invalid("max_tasks %d exceeds the parent's %d", *maxTasks, pm)
			}
		}
		if exp > *p.Claims.Expiry {
			exp = *p.Claims.Expiry
		}
		if p.Claims.NotBefore != nil && int64(*p.Claims.NotBefore) > int64(iat) {
			nbf := *p.Claims.NotBefore
			c.NotBefore = &nbf
		}
		c.Proof = []string{p.Hash}
		pub := key.Public().(ed25519.PublicKey)
		if cnf := p.Claims.Confirmation; cnf != nil && len(cnf.JWK) > 0 {
			if bound, err := p.cnfKey(); err != nil || !sameKey(bound, pub) {
				return nil, invalid("the parent binds another key (cnf.jwk) than the one signing")
			}
		}
		if cnf := p.Claims.Confirmation; cnf != nil && cnf.JKT != "" {
			if Thumbprint(pub) != cnf.JKT {
				return nil, invalid("the parent binds another key (cnf.jkt) than the one signing")
			}
			k, err := jwk.FromRaw(pub)
			if err != nil {
				return nil, err
			}
			if err := hdr.Set(jws.JWKKey, k); err != nil {
				return nil, err
			}
		}
		chain = "," + chainValue(g.Parent)
	}
	c.Expiry = &exp
	if maxTasks != nil {
		c.Constraints = &Constraints{MaxTasks: maxTasks}
	}
	if len(g.CnfJWK) > 0 {
		pub, err := ParsePublicJWK(g.CnfJWK)
		if err != nil {
			return nil, invalid("cnf_jwk: %v", err)
		}
		c.Confirmation = &Confirmation{JWK: PublicJWK(pub)}
	}
	payload, err := json.Marshal(&c)
	if err != nil {
		return nil, err
	}
	tok, err := jws.Sign(payload, jws.WithKey(algEd25519, key, jws.WithProtectedHeaders(hdr)))
	if err != nil {
		return nil, err
	}
	m := &Minted{Token: string(tok), Chain: string(tok) + chain, Claims: c}
	if g.Parent != nil {
		m.ParentID = g.Parent.Leaf().Claims.ID
		m.ParentIssuer = g.Parent.Leaf().Claims.Issuer
	}
	return m, nil
}

func chainValue(c *Chain) string {
	parts := make([]string, len(c.Links))
	for i, l := range c.Links {
		parts[i] = l.Raw
	}
	return strings.Join(parts, ",")
}
