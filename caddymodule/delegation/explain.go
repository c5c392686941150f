package delegation

import (
	"crypto/ed25519"
	"fmt"
	"strings"
	"time"
)

// Where a link's verifying key came from (LinkReport.KeyFrom).
const (
	KeyTrusted = "trusted" // configured for its issuer (Verifier.Trusted)
	KeyCnfJWK  = "cnf.jwk" // bound by its parent's cnf.jwk
	KeyCnfJKT  = "cnf.jkt" // the header jwk, bound by its parent's cnf.jkt
)

// LinkReport is what Explain found about one link of a chain.
type LinkReport struct {
	// Raw is the link as given; Link is its parse, nil when it cannot be
	// read.
	Raw  string
	Link *Link
	// KeyFrom says where the key that verified the link's signature came
	// from (KeyTrusted, KeyCnfJWK, KeyCnfJKT); empty when no key was
	// found or the signature does not verify with it.
	KeyFrom string
	// Problems are the rules this link breaks, in the order Verify checks
	// them: reading, key, signature, times, and the rules tying it to its
	// parent. Empty when the link passes all of them.
	Problems []*Rejection
}

// Explanation is Explain's answer.
type Explanation struct {
	// Links are the reports, leaf first.
	Links []LinkReport
	// Chain and Rejection are Verify's answer for the whole value: what
	// a sidecar with this Verifier decides (revocation and limits aside).
	Chain     *Chain
	Rejection *Rejection
}

// Explain verifies value as Verify does and, for a person reading a chain,
// also checks every link on its own: where Verify stops at the first
// broken rule, Explain reports each link's problems (a forged leaf under
// an expired root shows both). It runs the checks Verify runs, and bypasses
// the link cache, so it is for tools, not the request path.
func (v *Verifier) Explain(value string) *Explanation {
	e := &Explanation{}
	e.Chain, e.Rejection = v.Verify(value)
	value = strings.TrimSpace(value)
	if value == "" {
		return e
	}
	parts := strings.Split(value, ",")
	e.Links = make([]LinkReport, len(parts))
	seen := make(map[string]bool, len(parts))
	for i, raw := range parts {
		r := &e.Links[i]
		r.Raw = strings.TrimSpace(raw)
		l, rej := ParseLink(r.Raw)
		if rej != nil {
			r.Problems = append(r.Problems, rej)
			continue
		}
		r.Link = l
		if seen[l.Claims.ID] {
			r.Problems = append(r.Problems, reject(ClassMalformed, "chain_loop", "the same token id appears twice in the chain").at(l))
		}
		seen[l.Claims.ID] = true
	}
	now := v.now().Unix()
	skew := int64(v.Skew / time.Second)
	last := len(parts) - 1
	for i := range e.Links {
		r := &e.Links[i]
		l := r.Link
		if l == nil {
			continue
		}
		var parent *Link
		if i < last {
			parent = e.Links[i+1].Link
		}
		add := func(rej *Rejection) {
			if rej != nil {
				r.Problems = append(r.Problems, rej.at(l))
			}
		}
		if i < last && parent == nil {
			add(reject(ClassMalformed, "parent_unreadable", fmt.Sprintf("its parent (link %d) cannot be read, so neither its key nor how it narrows its parent can be checked", i+1)))
		} else {
			var keys []ed25519.PublicKey
			var rej *Rejection
			if i == last {
				keys, rej = v.rootKey(l)
			} else {
				keys, rej = v.childKey(l, parent)
			}
			if rej == nil {
				_, rej = checkSignature(l, keys)
			}
			if rej == nil {
				r.KeyFrom = v.keyFrom(l, parent)
			}
			add(rej)
		}
		add(checkTimes(l, now, skew))
		if parent != nil {
			add(checkChild(l, parent))
		}
	}
	return e
}

// keyFrom names where rootKey or childKey found child's key (parent is
// nil for the root).
func (v *Verifier) keyFrom(child, parent *Link) string {
	if len(v.keysOf(child.Claims.Issuer)) > 0 || parent == nil {
		return KeyTrusted
	}
	if cnf := parent.Claims.Confirmation; cnf != nil && len(cnf.JWK) > 0 {
		return KeyCnfJWK
	}
	return KeyCnfJKT
}
