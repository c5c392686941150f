package delegation

import (
	"crypto/ed25519"
	"strings"
	"testing"
)

// After a rotation the agent's URN has its new key in Trusted and the old
// one in AlsoTrusted: tokens of either verify, a third key's do not, and
// the cache never lets a link signed by a dropped key through.
func TestVerifierAcceptsEveryKeyOfAnIssuer(t *testing.T) {
	f := newFixture(t)
	old := f.self
	rotated := newAgent(t, f.self.urn)
	v := f.verifier()
	v.Trusted[f.self.urn] = rotated.pub
	v.AlsoTrusted = map[string][]ed25519.PublicKey{f.self.urn: {old.pub}}

	byOld := f.sign(f.rootClaims(), old)
	byNew := f.sign(with(f.rootClaims(), "jti", "del_new"), rotated)
	mustVerify(t, v, byOld)
	mustVerify(t, v, byNew)
	mustVerify(t, v, join(f.child(byOld), byOld)) // chains under an old root too

	forged := f.sign(with(f.rootClaims(), "jti", "del_evil"), &agent{urn: f.self.urn, priv: f.evil.priv})
	_, rej := v.Verify(forged)
	wantRejection(t, rej, ClassSignature, "bad_signature")
	if !strings.Contains(rej.Detail, "any of the 2 keys") {
		t.Errorf("detail %q does not say several keys were tried", rej.Detail)
	}

	// previous_keys removed: the old token, verified and cached above,
	// is refused now (same cache, a verifier without the old key).
	after := f.verifier()
	after.Trusted[f.self.urn] = rotated.pub
	after.UseCache((*LinkCache)(v.cache))
	_, rej = after.Verify(byOld)
	wantRejection(t, rej, ClassSignature, "bad_signature")
	mustVerify(t, after, byNew)
}

// A header jwk picks one of the issuer's keys; one that is none of them
// is refused before any signature check.
func TestVerifierHeaderJWKAmongIssuerKeys(t *testing.T) {
	f := newFixture(t)
	rotated := newAgent(t, f.self.urn)
	v := f.verifier()
	v.AlsoTrusted = map[string][]ed25519.PublicKey{f.self.urn: {rotated.pub}}

	hdr := with(edHeader(), "jwk", jwkMap(rotated.pub))
	mustVerify(t, v, signEd(t, hdr, f.rootClaims(), rotated.priv))

	hdr = with(edHeader(), "jwk", jwkMap(f.evil.pub))
	_, rej := v.Verify(signEd(t, hdr, f.rootClaims(), f.evil.priv))
	wantRejection(t, rej, ClassSignature, "header_jwk_not_bound")
}

// An issuer known only through AlsoTrusted is trusted.
func TestVerifierAlsoTrustedAlone(t *testing.T) {
	f := newFixture(t)
	v := f.verifier()
	delete(v.Trusted, f.self.urn)
	v.AlsoTrusted = map[string][]ed25519.PublicKey{f.self.urn: {f.self.pub}}
	mustVerify(t, v, f.root())
	e := v.Explain(f.root())
	if len(e.Links) != 1 || e.Links[0].KeyFrom != KeyTrusted {
		t.Errorf("explain: %+v", e.Links)
	}
}
