package delegation

import (
	"crypto/ed25519"
	"fmt"
	"strings"
	"sync"
	"time"
)

// Verifier checks chains. Configure the exported fields, then share it
// between goroutines.
type Verifier struct {
	// Self is the protected agent: calls must be addressed to it.
	Self string
	// Trusted maps issuer URNs to their keys. A chain's root must be
	// issued by one of them; a child issued by one of them must be signed
	// with that key.
	Trusted map[string]ed25519.PublicKey
	// AlsoTrusted are further keys accepted for an issuer, after its
	// Trusted key: the previous keys of a rotation (tokens they signed
	// stay valid until they expire) and a trust key configured for the
	// agent's own URN beside its own key. An issuer listed only here is
	// trusted too.
	AlsoTrusted map[string][]ed25519.PublicKey
	// MaxDepth bounds the links of a chain; MaxSize the header's bytes.
	MaxDepth int
	MaxSize  int
	// Skew is the tolerance for exp, nbf and iat.
	Skew time.Duration
	// Now is the clock (time.Now when nil).
	Now func() time.Time

	cacheOnce sync.Once
	cache     *linkCache
}

// Chain is a verified chain, leaf first.
type Chain struct {
	Links []*Link
}

// Leaf is the token presented by the caller.
func (c *Chain) Leaf() *Link { return c.Links[0] }

// Root is the token issued by a trusted issuer.
func (c *Chain) Root() *Link { return c.Links[len(c.Links)-1] }

// JTIs are the ids of every link, leaf first.
func (c *Chain) JTIs() []string {
	ids := make([]string, len(c.Links))
	for i, l := range c.Links {
		ids[i] = l.Claims.ID
	}
	return ids
}

// Grants reports whether the chain grants action: the leaf's scopes do
// (and attenuation guarantees every ancestor's do too).
func (c *Chain) Grants(action string) bool {
	for _, s := range c.Leaf().Claims.Scopes {
		if s == ScopeAll || (s == action && action != ScopeAll) {
			return true
		}
	}
	return false
}

func (v *Verifier) now() time.Time {
	if v.Now != nil {
		return v.Now()
	}
	return time.Now()
}

// Verify checks a header value: size, structure, algorithms, keys,
// signatures, times, and the chain rules (prf hashes, principal alignment,
// attenuation of scopes, time windows and max_tasks). Revocation, the
// call's audience and limits are checked separately, on every request.
func (v *Verifier) Verify(value string) (*Chain, *Rejection) {
	value = strings.TrimSpace(value)
	if value == "" {
		return nil, reject(ClassMalformed, "missing_token", "no delegation token; send one in "+Header)
	}
	if v.MaxSize > 0 && len(value) > v.MaxSize {
		return nil, reject(ClassMalformed, "token_too_large", fmt.Sprintf("the %s header has %d bytes, more than the limit of %d", Header, len(value), v.MaxSize))
	}
	n := strings.Count(value, ",") + 1
	if v.MaxDepth > 0 && n > v.MaxDepth {
		return nil, reject(ClassMalformed, "chain_too_deep", fmt.Sprintf("the chain has %d links, more than the limit of %d", n, v.MaxDepth))
	}
	v.cacheOnce.Do(func() {
		if v.cache == nil {
			v.cache = newLinkCache(DefaultCacheSize)
		}
	})

	// Structure: parse every link (or take it from the cache).
	links := make([]*Link, n)
	cached := make([]*cachedLink, n)
	seen := make(map[string]bool, n)
	for i, raw := range strings.Split(value, ",") {
		raw = strings.TrimSpace(raw)
		h := HashOf(raw)
		if c := v.cache.get(h); c != nil {
			links[i], cached[i] = c.link, c
		} else {
			l, rej := ParseLink(raw)
			if rej != nil {
				if n > 1 {
					rej.Detail = fmt.Sprintf("link %d: %s", i, rej.Detail)
				}
				return nil, rej
			}
			links[i] = l
		}
		if seen[links[i].Claims.ID] {
			return nil, reject(ClassMalformed, "chain_loop", "the same token id appears twice in the chain").at(links[i])
		}
		seen[links[i].Claims.ID] = true
	}

	// Keys, root first: a child's key may be bound by its parent. An
	// issuer may have several (a rotation's previous keys).
	keys := make([][]ed25519.PublicKey, n)
	for i := n - 1; i >= 0; i-- {
		var rej *Rejection
		if i == n-1 {
			keys[i], rej = v.rootKey(links[i])
		} else {
			keys[i], rej = v.childKey(links[i], links[i+1])
		}
		if rej != nil {
			return nil, rej.at(links[i])
		}
	}

	// Signatures.
	for i, l := range links {
		if cached[i] != nil && hasKey(keys[i], cached[i].key) {
			continue
		}
		key, rej := checkSignature(l, keys[i])
		if rej != nil {
			return nil, rej
		}
		v.cache.put(l, key)
	}

	// Times.
	now := v.now().Unix()
	skew := int64(v.Skew / time.Second)
	for _, l := range links {
		if rej := checkTimes(l, now, skew); rej != nil {
			return nil, rej
		}
	}

	// Chain rules, each child against its parent.
	for i := 0; i < n-1; i++ {
		if rej := checkChild(links[i], links[i+1]); rej != nil {
			return nil, rej.at(links[i])
		}
	}
	return &Chain{Links: links}, nil
}

// checkSignature checks l's signature with each of keys in turn and
// returns the one it verifies with.
func checkSignature(l *Link, keys []ed25519.PublicKey) (ed25519.PublicKey, *Rejection) {
	for _, key := range keys {
		if verifySignature(l, key) == nil {
			return key, nil
		}
	}
	which := "the key"
	if len(keys) > 1 {
		which = fmt.Sprintf("any of the %d keys", len(keys))
	}
	return nil, reject(ClassSignature, "bad_signature", fmt.Sprintf("the signature of %s does not verify with %s of %s (a key rotated out of key and previous_keys no longer verifies)", l.Claims.ID, which, l.Claims.Issuer)).at(l)
}

// keysOf is every key trusted for issuer: its Trusted key first.
func (v *Verifier) keysOf(issuer string) []ed25519.PublicKey {
	also := v.AlsoTrusted[issuer]
	key, ok := v.Trusted[issuer]
	if !ok {
		return also
	}
	if len(also) == 0 {
		return []ed25519.PublicKey{key}
	}
	return append([]ed25519.PublicKey{key}, also...)
}

func hasKey(keys []ed25519.PublicKey, k ed25519.PublicKey) bool {
	for _, key := range keys {
		if sameKey(key, k) {
			return true
		}
	}
	return false
}

// checkTimes checks a link's exp, nbf and iat against now (seconds),
// with skew seconds of tolerance.
func checkTimes(l *Link, now, skew int64) *Rejection {
	c := &l.Claims
	switch {
	case now > int64(*c.Expiry)+skew:
		return reject(ClassTime, "expired", fmt.Sprintf("token %s expired at %s", c.ID, time.Unix(int64(*c.Expiry), 0).UTC().Format(time.RFC3339))).at(l)
	case c.NotBefore != nil && int64(*c.NotBefore) > now+skew:
		return reject(ClassTime, "not_yet_valid", fmt.Sprintf("token %s is not valid before %s", c.ID, time.Unix(int64(*c.NotBefore), 0).UTC().Format(time.RFC3339))).at(l)
	case c.IssuedAt != nil && int64(*c.IssuedAt) > now+skew:
		return reject(ClassTime, "issued_in_future", fmt.Sprintf("token %s claims to be issued in the future", c.ID)).at(l)
	}
	return nil
}

func (v *Verifier) rootKey(root *Link) ([]ed25519.PublicKey, *Rejection) {
	if len(root.Claims.Proof) != 0 {
		return nil, reject(ClassMalformed, "chain_incomplete", "the last token names a parent (prf) that is not in the chain; send the whole chain, leaf first")
	}
	keys := v.keysOf(root.Claims.Issuer)
	if len(keys) == 0 {
		return nil, reject(ClassSignature, "untrusted_issuer", fmt.Sprintf("issuer %s is not trusted here; configure it with 'trust' or delegate from a trusted issuer", truncate(root.Claims.Issuer, 64)))
	}
	return headerKeyAmong(root, keys)
}

// childKey resolves the keys a child may be signed with: the keys
// configured for its issuer, or the key its parent bound through cnf.
func (v *Verifier) childKey(child, parent *Link) ([]ed25519.PublicKey, *Rejection) {
	if keys := v.keysOf(child.Claims.Issuer); len(keys) > 0 {
		return headerKeyAmong(child, keys)
	}
	cnf := parent.Claims.Confirmation
	if cnf == nil || (len(cnf.JWK) == 0 && cnf.JKT == "") {
		return nil, reject(ClassSignature, "no_key_for_issuer", fmt.Sprintf("no key is configured for %s and its parent token binds none (cnf)", truncate(child.Claims.Issuer, 64)))
	}
	if len(cnf.JWK) > 0 {
		bound, err := parent.cnfKey()
		if err != nil {
			return nil, reject(ClassMalformed, "bad_cnf", "the parent's cnf.jwk is not an Ed25519 JWK: "+err.Error())
		}
		return headerKeyAmong(child, []ed25519.PublicKey{bound})
	}
	if len(child.HeaderJWK) == 0 {
		return nil, reject(ClassSignature, "missing_header_jwk", "the parent binds the key by thumbprint (cnf.jkt), so the token header must carry that jwk")
	}
	hk, err := child.headerKey()
	if err != nil {
		return nil, reject(ClassMalformed, "bad_header_jwk", "the header jwk is not an Ed25519 JWK: "+err.Error())
	}
	if Thumbprint(hk) != cnf.JKT {
		return nil, reject(ClassSignature, "jwk_thumbprint_mismatch", "the header jwk is not the key the parent bound (cnf.jkt)")
	}
	return []ed25519.PublicKey{hk}, nil
}

// headerKeyAmong narrows keys to the header jwk, and refuses a header jwk
// that is none of them: a token never chooses its own key.
func headerKeyAmong(l *Link, keys []ed25519.PublicKey) ([]ed25519.PublicKey, *Rejection) {
	if len(l.HeaderJWK) == 0 {
		return keys, nil
	}
	hk, err := l.headerKey()
	if err != nil || !hasKey(keys, hk) {
		return nil, reject(ClassSignature, "header_jwk_not_bound", "the token header carries a jwk that no configured key or parent cnf binds")
	}
	return []ed25519.PublicKey{hk}, nil
}

func checkChild(child, parent *Link) *Rejection {
	c, p := &child.Claims, &parent.Claims
	if len(c.Proof) != 1 || c.Proof[0] != parent.Hash {
		return reject(ClassMalformed, "broken_prf", fmt.Sprintf("token %s does not name the next token of the chain as its parent (prf)", c.ID))
	}
	if c.Issuer != string(p.Audience) {
		return reject(ClassAudience, "issuer_not_parent_audience", fmt.Sprintf("token %s is issued by %s, but its parent delegates to %s", c.ID, truncate(c.Issuer, 64), truncate(string(p.Audience), 64)))
	}
	for _, s := range c.Scopes {
		if !grants(p.Scopes, s) {
			return reject(ClassScope, "scope_escalation", fmt.Sprintf("token %s grants %q, which its parent does not", c.ID, truncate(s, 32)))
		}
	}
	if windowEscapes(c, p) {
		return reject(ClassScope, "time_window_escape", fmt.Sprintf("token %s is valid outside its parent's window", c.ID))
	}
	if pm := parent.MaxTasks(); pm >= 0 {
		if cm := child.MaxTasks(); cm < 0 || cm > pm {
			return reject(ClassScope, "max_tasks_escalation", fmt.Sprintf("token %s allows more tasks than its parent's max_tasks %d", c.ID, pm))
		}
	}
	return nil
}

// start is when a token's window opens: nbf, else iat, else the epoch.
func start(c *Claims) int64 {
	if c.NotBefore != nil {
		return int64(*c.NotBefore)
	}
	return c.IssuedAt.or(0)
}

// windowEscapes reports whether the child's [start, exp] leaves its
// parent's [nbf, exp]. A parent without nbf opens at once: its iat only
// says when it was signed (by a clock that may run ahead), not a bound.
func windowEscapes(c, p *Claims) bool {
	if int64(*c.Expiry) > int64(*p.Expiry) {
		return true
	}
	return p.NotBefore != nil && start(c) < int64(*p.NotBefore)
}

// grants reports whether scopes allow scope s: "*" allows everything, and
// only "*" allows "*".
func grants(scopes []string, s string) bool {
	for _, g := range scopes {
		if g == ScopeAll || g == s {
			return true
		}
	}
	return false
}

// CheckCall checks a verified chain against one call: it must be addressed
// to the protected agent, come from the leaf's audience, and be an action
// the chain grants.
func (v *Verifier) CheckCall(c *Chain, sender, recipient, action string) *Rejection {
	if v.Self != "" && recipient != v.Self {
		return reject(ClassAudience, "recipient_mismatch", fmt.Sprintf("the envelope is addressed to %s, but this sidecar guards %s", truncate(recipient, 64), v.Self))
	}
	if string(c.Leaf().Claims.Audience) != sender {
		return reject(ClassAudience, "sender_not_audience", fmt.Sprintf("the token delegates to %s, but the envelope is sent by %s", truncate(string(c.Leaf().Claims.Audience), 64), truncate(sender, 64))).at(c.Leaf())
	}
	if !c.Grants(action) {
		return reject(ClassScope, "action_not_granted", fmt.Sprintf("the chain does not grant %q", action)).at(c.Leaf())
	}
	return nil
}

// The parsed keys of a link's cnf.jwk and header jwk, computed once per
// link (links are shared through the cache).
type linkKeys struct {
	cnf, header       ed25519.PublicKey
	cnfErr, headerErr error
}

func (l *Link) keys() *linkKeys {
	l.keysOnce.Do(func() {
		if c := l.Claims.Confirmation; c != nil && len(c.JWK) > 0 {
			l.parsedKeys.cnf, l.parsedKeys.cnfErr = ParsePublicJWK(c.JWK)
		}
		if len(l.HeaderJWK) > 0 {
			l.parsedKeys.header, l.parsedKeys.headerErr = ParsePublicJWK(l.HeaderJWK)
		}
	})
	return &l.parsedKeys
}

func (l *Link) cnfKey() (ed25519.PublicKey, error)    { k := l.keys(); return k.cnf, k.cnfErr }
func (l *Link) headerKey() (ed25519.PublicKey, error) { k := l.keys(); return k.header, k.headerErr }
