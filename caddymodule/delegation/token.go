// Package delegation verifies and mints ASAP delegation tokens: compact JWS
// JWTs signed with Ed25519, alone or as chains in which each child names its
// parent by hash and may only narrow what its parent granted. It also keeps
// the state that must be exact across requests: revocations and per-token
// task counts.
package delegation

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
)

// Bounds on claims, so that nothing a forger writes is echoed at length.
const (
	maxClaimLen = 256
	maxScopes   = 32
)

// Header is the name of the HTTP header carrying a chain.
const Header = "X-ASAP-Delegation-Token"

// The two names of the one algorithm accepted: RFC 9864's, which the
// reference writes, and the older generic one.
const (
	AlgEd25519 = "Ed25519"
	AlgEdDSA   = "EdDSA"
)

// Scopes.
const (
	ScopeAll         = "*"
	ScopeTaskExecute = "task.execute"
	ScopeTaskCancel  = "task.cancel"
	ScopeDataRead    = "data.read"
	ScopeDataWrite   = "data.write"
)

// Claims are a token's claims.
type Claims struct {
	Issuer       string        `json:"iss"`
	Audience     Audience      `json:"aud"`
	ID           string        `json:"jti"`
	IssuedAt     *NumericDate  `json:"iat,omitempty"`
	Expiry       *NumericDate  `json:"exp"`
	NotBefore    *NumericDate  `json:"nbf,omitempty"`
	Scopes       []string      `json:"scp"`
	Constraints  *Constraints  `json:"x-asap-constraints,omitempty"`
	Proof        []string      `json:"prf,omitempty"`
	Confirmation *Confirmation `json:"cnf,omitempty"`
}

// Constraints limit what a token may be used for.
type Constraints struct {
	MaxTasks   *int64   `json:"max_tasks,omitempty"`
	MaxCostUSD *float64 `json:"max_cost_usd,omitempty"`
}

// Confirmation binds the delegate's key (RFC 7800): the whole public JWK,
// or its RFC 7638 thumbprint.
type Confirmation struct {
	JWK json.RawMessage `json:"jwk,omitempty"`
	JKT string          `json:"jkt,omitempty"`
}

// Audience is the aud claim: a string, or a one-element array.
type Audience string

// UnmarshalJSON accepts "urn" and ["urn"].
func (a *Audience) UnmarshalJSON(b []byte) error {
	b = bytes.TrimSpace(b)
	if len(b) > 0 && b[0] == '[' {
		var list []string
		if err := json.Unmarshal(b, &list); err != nil {
			return err
		}
		if len(list) != 1 {
			return fmt.Errorf("aud array must hold exactly one delegate, not %d", len(list))
		}
		*a = Audience(list[0])
		return nil
	}
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("aud must be a string")
	}
	*a = Audience(s)
	return nil
}

// NumericDate is seconds since the epoch (RFC 7519 allows fractions; they
// are dropped).
type NumericDate int64

// UnmarshalJSON reads a JSON number.
func (d *NumericDate) UnmarshalJSON(b []byte) error {
	var f float64
	if err := json.Unmarshal(b, &f); err != nil {
		return fmt.Errorf("dates must be numbers of seconds")
	}
	if f < 0 || f > 1<<40 {
		return fmt.Errorf("date %v out of range", f)
	}
	*d = NumericDate(f)
	return nil
}

func (d *NumericDate) or(def int64) int64 {
	if d == nil {
		return def
	}
	return int64(*d)
}

// Link is one parsed token of a chain. It is immutable once parsed, so the
// verification cache can share it between requests.
type Link struct {
	// Raw is the compact form as received.
	Raw string
	// Hash is the base64url (no padding) SHA-256 of Raw: what a child's
	// prf names.
	Hash string
	Alg  string
	// HeaderJWK is the header's jwk member, if any.
	HeaderJWK json.RawMessage
	Claims    Claims

	signingInput []byte
	signature    []byte
	keysOnce     sync.Once
	parsedKeys   linkKeys
}

type header struct {
	Alg  string          `json:"alg"`
	Typ  string          `json:"typ"`
	JWK  json.RawMessage `json:"jwk"`
	Crit json.RawMessage `json:"crit"`
}

var b64 = base64.RawURLEncoding

// HashOf is the prf reference of a compact token.
func HashOf(compact string) string {
	sum := sha256.Sum256([]byte(compact))
	return b64.EncodeToString(sum[:])
}

// ParseLink reads a compact token's structure, header and claims. It checks
// form only: no signature, time or policy.
func ParseLink(compact string) (*Link, *Rejection) {
	parts := strings.Split(compact, ".")
	// An empty signature is left to the algorithm check: "alg":"none"
	// tokens carry none, and must be refused as such.
	if len(parts) != 3 || parts[0] == "" || parts[1] == "" {
		return nil, reject(ClassMalformed, "not_compact_jws", "a token must be three base64url parts joined by dots")
	}
	hb, err1 := b64.DecodeString(parts[0])
	pb, err2 := b64.DecodeString(parts[1])
	sig, err3 := b64.DecodeString(parts[2])
	if err1 != nil || err2 != nil || err3 != nil {
		return nil, reject(ClassMalformed, "bad_base64", "a token part is not unpadded base64url")
	}
	var h header
	if err := strictUnmarshal(hb, &h); err != nil {
		return nil, reject(ClassMalformed, "bad_header", "the token header is not a JSON object: "+err.Error())
	}
	l := &Link{Raw: compact, Hash: HashOf(compact), Alg: h.Alg, HeaderJWK: h.JWK, signature: sig,
		signingInput: []byte(compact[:len(parts[0])+1+len(parts[1])])}
	if len(h.Crit) > 0 {
		return nil, reject(ClassMalformed, "crit_header", "the token header lists critical extensions this verifier does not understand")
	}
	if err := strictUnmarshal(pb, &l.Claims); err != nil {
		return nil, reject(ClassMalformed, "bad_claims", "the token claims are not valid: "+err.Error())
	}
	c := &l.Claims
	switch {
	case c.Issuer == "":
		return nil, reject(ClassMalformed, "missing_iss", "the token has no iss")
	case c.Audience == "":
		return nil, reject(ClassMalformed, "missing_aud", "the token has no aud")
	case c.ID == "":
		return nil, reject(ClassMalformed, "missing_jti", "the token has no jti")
	case c.Expiry == nil:
		return nil, reject(ClassMalformed, "missing_exp", "the token has no exp; every delegation must expire")
	case len(c.Scopes) == 0:
		return nil, reject(ClassMalformed, "missing_scp", "the token grants no scope (scp)")
	case len(c.Proof) > 1:
		return nil, reject(ClassMalformed, "bad_prf", "prf must hold exactly one parent hash")
	case len(c.ID) > maxClaimLen || len(c.Issuer) > maxClaimLen || len(c.Audience) > maxClaimLen:
		return nil, reject(ClassMalformed, "claim_too_long", fmt.Sprintf("jti, iss and aud are at most %d bytes", maxClaimLen))
	case len(c.Scopes) > maxScopes:
		return nil, reject(ClassMalformed, "too_many_scopes", fmt.Sprintf("a token grants at most %d scopes", maxScopes))
	}
	if c.Constraints != nil && c.Constraints.MaxTasks != nil && *c.Constraints.MaxTasks < 0 {
		return nil, reject(ClassMalformed, "bad_max_tasks", "max_tasks must be ≥ 0")
	}
	if h.Alg != AlgEd25519 && h.Alg != AlgEdDSA {
		// none, HMAC and everything else: refused before any key is used.
		return nil, reject(ClassSignature, "alg_not_allowed", fmt.Sprintf("algorithm %q is not accepted; sign with Ed25519", truncate(h.Alg, 32)))
	}
	return l, nil
}

// strictUnmarshal decodes one JSON object and nothing after it.
func strictUnmarshal(b []byte, v any) error {
	b = bytes.TrimSpace(b)
	if len(b) == 0 || b[0] != '{' {
		return fmt.Errorf("not a JSON object")
	}
	return json.Unmarshal(b, v)
}

// MaxTasks is the link's max_tasks, or -1 when it has none.
func (l *Link) MaxTasks() int64 {
	if l.Claims.Constraints == nil || l.Claims.Constraints.MaxTasks == nil {
		return -1
	}
	return *l.Claims.Constraints.MaxTasks
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
