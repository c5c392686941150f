package delegation

import (
	"crypto/ed25519"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"
)

type verifyCase struct {
	name  string
	value func(f *fixture) string
	// tweak adjusts the verifier for this case.
	tweak func(v *Verifier)
	// reason "" means the chain must verify.
	class  Class
	reason string
	// jti, when set, is the id the rejection must name.
	jti string
	// links, for accepted chains, is the expected number of links.
	links int
}

// verifyCases covers every rule of SPEC §3 and every bad token input of
// SPEC §10 that Verify itself decides.
func verifyCases() []verifyCase {
	// Common builders.
	grandchild := func(f *fixture, child string) string {
		c := f.childClaims(child, f.bob, f.carol, "del_gc")
		c["exp"] = f.at(20 * time.Minute)
		c["x-asap-constraints"] = map[string]any{"max_tasks": 3}
		return f.sign(c, f.bob)
	}
	// childOf signs a child of parent (alice → bob by default) with the
	// claims changed by kv.
	childOf := func(f *fixture, parent string, signer *agent, kv ...any) string {
		return f.sign(with(f.childClaims(parent, f.alice, f.bob, "del_child"), kv...), signer)
	}
	// rootWith is the root with claims changed by kv.
	rootWith := func(f *fixture, kv ...any) string {
		return f.sign(with(f.rootClaims(), kv...), f.self)
	}
	// rootHdr is the root signed by key under header hdr.
	rootHdr := func(f *fixture, hdr map[string]any, key *agent) string {
		return signEd(f.tb, hdr, f.rootClaims(), key.priv)
	}
	// raw builds a token from literal header and claims JSON, signed by
	// self (the signature is irrelevant where parsing fails first).
	raw := func(f *fixture, hdr, claims string) string {
		in := enc(f.tb, hdr) + "." + enc(f.tb, claims)
		return in + "." + b64.EncodeToString(ed25519.Sign(f.self.priv, []byte(in)))
	}
	// claimsJSON is the root's claims as JSON with one member replaced by
	// a literal JSON fragment (or removed when frag is "").
	claimsJSON := func(f *fixture, name, frag string) string {
		m := f.rootClaims()
		delete(m, name)
		b, _ := json.Marshal(m)
		if frag == "" {
			return string(b)
		}
		return `{"` + name + `":` + frag + `,` + string(b[1:])
	}
	rawClaim := func(name, frag string) func(f *fixture) string {
		return func(f *fixture) string { return raw(f, `{"alg":"Ed25519","typ":"JWT"}`, claimsJSON(f, name, frag)) }
	}
	jktRoot := func(f *fixture, pub ed25519.PublicKey) string {
		return rootWith(f, "cnf", map[string]any{"jkt": Thumbprint(pub)})
	}

	return []verifyCase{
		// --- valid chains -------------------------------------------------
		{name: "root alone", value: func(f *fixture) string { return f.root() }, links: 1},
		{name: "root and child", value: func(f *fixture) string { r := f.root(); return join(f.child(r), r) }, links: 2},
		{name: "three links", value: func(f *fixture) string {
			r := f.root()
			c := f.child(r)
			return join(grandchild(f, c), c, r)
		}, links: 3},
		{name: "alg EdDSA", value: func(f *fixture) string {
			return rootHdr(f, map[string]any{"alg": "EdDSA", "typ": "JWT"}, f.self)
		}, links: 1},
		{name: "no typ", value: func(f *fixture) string { return rootHdr(f, map[string]any{"alg": "Ed25519"}, f.self) }, links: 1},
		{name: "aud one-element array", value: func(f *fixture) string { return rootWith(f, "aud", []string{f.alice.urn}) }, links: 1},
		{name: "expired but within skew", value: func(f *fixture) string { return rootWith(f, "exp", f.at(-30*time.Second)) }, links: 1},
		{name: "nbf within skew", value: func(f *fixture) string { return rootWith(f, "nbf", f.at(30*time.Second)) }, links: 1},
		{name: "iat within skew", value: func(f *fixture) string { return rootWith(f, "iat", f.at(30*time.Second)) }, links: 1},
		{name: "fractional dates", value: func(f *fixture) string {
			return rootWith(f, "exp", float64(f.at(time.Hour))+0.5, "iat", float64(f.at(-time.Minute))+0.25)
		}, links: 1},
		{name: "root header jwk equal to the trusted key", value: func(f *fixture) string {
			return rootHdr(f, map[string]any{"alg": "Ed25519", "typ": "JWT", "jwk": jwkMap(f.self.pub)}, f.self)
		}, links: 1},
		{name: "child header jwk equal to cnf.jwk", value: func(f *fixture) string {
			r := f.root()
			c := signEd(f.tb, map[string]any{"alg": "Ed25519", "jwk": jwkMap(f.alice.pub)}, f.childClaims(r, f.alice, f.bob, "del_child"), f.alice.priv)
			return join(c, r)
		}, links: 2},
		{name: "child issued by a trusted issuer with its configured key", value: func(f *fixture) string {
			r := rootWith(f, "aud", f.partner.urn, "cnf", nil)
			return join(f.sign(f.childClaims(r, f.partner, f.bob, "del_child"), f.partner), r)
		}, links: 2},
		{name: "cnf.jkt with matching header jwk", value: func(f *fixture) string {
			r := jktRoot(f, f.alice.pub)
			c := signEd(f.tb, map[string]any{"alg": "Ed25519", "typ": "JWT", "jwk": jwkMap(f.alice.pub)}, f.childClaims(r, f.alice, f.bob, "del_child"), f.alice.priv)
			return join(c, r)
		}, links: 2},
		{name: "* under *", value: func(f *fixture) string {
			r := rootWith(f, "scp", []string{ScopeAll})
			return join(childOf(f, r, f.alice, "scp", []string{ScopeAll}), r)
		}, links: 2},
		{name: "specific scopes under *", value: func(f *fixture) string {
			r := rootWith(f, "scp", []string{ScopeAll})
			return join(childOf(f, r, f.alice, "scp", []string{ScopeDataWrite, ScopeTaskCancel}), r)
		}, links: 2},
		{name: "child with the parent's exact window and max_tasks", value: func(f *fixture) string {
			r := rootWith(f, "nbf", f.at(-time.Minute))
			return join(childOf(f, r, f.alice, "iat", f.at(-time.Minute), "nbf", f.at(-time.Minute), "exp", f.at(time.Hour),
				"x-asap-constraints", map[string]any{"max_tasks": 10}), r)
		}, links: 2},
		{name: "limited child under an unlimited parent", value: func(f *fixture) string {
			r := rootWith(f, "x-asap-constraints", nil)
			return join(f.child(r), r)
		}, links: 2},
		{name: "unlimited child under an unlimited parent", value: func(f *fixture) string {
			r := rootWith(f, "x-asap-constraints", nil)
			return join(childOf(f, r, f.alice, "x-asap-constraints", nil), r)
		}, links: 2},
		{name: "max_tasks 0 under 0", value: func(f *fixture) string {
			r := rootWith(f, "x-asap-constraints", map[string]any{"max_tasks": 0})
			return join(childOf(f, r, f.alice, "x-asap-constraints", map[string]any{"max_tasks": 0}), r)
		}, links: 2},
		{name: "whitespace around the value and links", value: func(f *fixture) string {
			r := f.root()
			return " \t" + f.child(r) + " , " + r + "\n"
		}, links: 2},

		// --- size, depth, structure ---------------------------------------
		{name: "empty", value: func(*fixture) string { return "" }, class: ClassMalformed, reason: "missing_token"},
		{name: "blank", value: func(*fixture) string { return " \t " }, class: ClassMalformed, reason: "missing_token"},
		{name: "over MaxSize", value: func(f *fixture) string { return f.root() }, tweak: func(v *Verifier) { v.MaxSize = 100 },
			class: ClassMalformed, reason: "token_too_large"},
		{name: "huge header over the 16 KiB default", value: func(*fixture) string { return strings.Repeat("A", 17<<10) },
			class: ClassMalformed, reason: "token_too_large"},
		{name: "huge chain of commas", value: func(*fixture) string { return strings.Repeat(",", 16<<10) },
			tweak: func(v *Verifier) { v.MaxSize = 0 }, class: ClassMalformed, reason: "chain_too_deep"},
		{name: "deeper than MaxDepth", value: func(f *fixture) string { r := f.root(); return join(f.child(r), r) },
			tweak: func(v *Verifier) { v.MaxDepth = 1 }, class: ClassMalformed, reason: "chain_too_deep"},
		{name: "one part", value: func(*fixture) string { return "abc" }, class: ClassMalformed, reason: "not_compact_jws"},
		{name: "two parts", value: func(*fixture) string { return "eyJhbGciOiJFZDI1NTE5In0.e30" }, class: ClassMalformed, reason: "not_compact_jws"},
		{name: "four parts", value: func(f *fixture) string { return f.root() + ".AAAA" }, class: ClassMalformed, reason: "not_compact_jws"},
		{name: "five parts (JWE)", value: func(*fixture) string { return "a.b.c.d.e" }, class: ClassMalformed, reason: "not_compact_jws"},
		{name: "empty payload", value: func(*fixture) string { return "eyJhbGciOiJFZDI1NTE5In0..AAAA" }, class: ClassMalformed, reason: "not_compact_jws"},
		{name: "empty header", value: func(*fixture) string { return ".e30.AAAA" }, class: ClassMalformed, reason: "not_compact_jws"},
		{name: "only dots", value: func(*fixture) string { return ".." }, class: ClassMalformed, reason: "not_compact_jws"},
		{name: "empty link in a chain", value: func(f *fixture) string { return f.root() + ",," }, class: ClassMalformed, reason: "not_compact_jws"},
		{name: "garbage base64", value: func(*fixture) string { return "!!!.e30.AAAA" }, class: ClassMalformed, reason: "bad_base64"},
		{name: "padded base64", value: func(f *fixture) string {
			p := strings.SplitN(f.root(), ".", 3)
			return p[0] + "." + p[1] + "." + b64.EncodeToString([]byte("x")) + "=="
		}, class: ClassMalformed, reason: "bad_base64"},
		{name: "standard base64 alphabet", value: func(*fixture) string { return "eyJ+/.e30.AAAA" }, class: ClassMalformed, reason: "bad_base64"},
		{name: "garbage base64 in the signature", value: func(f *fixture) string { return f.root() + "*" }, class: ClassMalformed, reason: "bad_base64"},
		{name: "header is an array", value: func(f *fixture) string { return raw(f, `["Ed25519"]`, claimsJSON(f, "", "")) }, class: ClassMalformed, reason: "bad_header"},
		{name: "header is a string", value: func(f *fixture) string { return raw(f, `"Ed25519"`, claimsJSON(f, "", "")) }, class: ClassMalformed, reason: "bad_header"},
		{name: "header is null", value: func(f *fixture) string { return raw(f, `null`, claimsJSON(f, "", "")) }, class: ClassMalformed, reason: "bad_header"},
		{name: "header is not JSON", value: func(f *fixture) string { return raw(f, `alg=Ed25519`, claimsJSON(f, "", "")) }, class: ClassMalformed, reason: "bad_header"},
		{name: "header truncated", value: func(f *fixture) string { return raw(f, `{"alg":"Ed25519"`, claimsJSON(f, "", "")) }, class: ClassMalformed, reason: "bad_header"},
		{name: "header with trailing data", value: func(f *fixture) string { return raw(f, `{"alg":"Ed25519"}{}`, claimsJSON(f, "", "")) }, class: ClassMalformed, reason: "bad_header"},
		{name: "header alg not a string", value: func(f *fixture) string { return raw(f, `{"alg":25519}`, claimsJSON(f, "", "")) }, class: ClassMalformed, reason: "bad_header"},
		{name: "crit header", value: func(f *fixture) string {
			return rootHdr(f, map[string]any{"alg": "Ed25519", "typ": "JWT", "crit": []string{"exp"}}, f.self)
		}, class: ClassMalformed, reason: "crit_header"},
		{name: "claims are an array", value: func(f *fixture) string { return raw(f, `{"alg":"Ed25519"}`, `[1,2]`) }, class: ClassMalformed, reason: "bad_claims"},
		{name: "claims are a string", value: func(f *fixture) string { return raw(f, `{"alg":"Ed25519"}`, `"claims"`) }, class: ClassMalformed, reason: "bad_claims"},
		{name: "claims are not JSON", value: func(f *fixture) string { return raw(f, `{"alg":"Ed25519"}`, `iss=x`) }, class: ClassMalformed, reason: "bad_claims"},
		{name: "claims truncated", value: func(f *fixture) string { return raw(f, `{"alg":"Ed25519"}`, `{"iss":"x"`) }, class: ClassMalformed, reason: "bad_claims"},
		{name: "claims with invalid UTF-8 and control bytes", value: func(f *fixture) string {
			return raw(f, `{"alg":"Ed25519"}`, "{\"iss\":\"\x00\xff\x01")
		}, class: ClassMalformed, reason: "bad_claims"},
		{name: "deeply nested claims", value: func(f *fixture) string {
			return raw(f, `{"alg":"Ed25519"}`, `{"x":`+strings.Repeat("[", 5000)+strings.Repeat("]", 5000)+`}`)
		}, tweak: func(v *Verifier) { v.MaxSize = 0 }, class: ClassMalformed, reason: "missing_iss"},
		{name: "aud two-element array", value: func(f *fixture) string { return rootWith(f, "aud", []string{f.alice.urn, f.bob.urn}) },
			class: ClassMalformed, reason: "bad_claims"},
		{name: "aud empty array", value: func(f *fixture) string { return rootWith(f, "aud", []string{}) }, class: ClassMalformed, reason: "bad_claims"},
		{name: "aud a number", value: rawClaim("aud", `42`), class: ClassMalformed, reason: "bad_claims"},
		{name: "aud array of numbers", value: rawClaim("aud", `[42]`), class: ClassMalformed, reason: "bad_claims"},
		{name: "exp a string", value: rawClaim("exp", `"tomorrow"`), class: ClassMalformed, reason: "bad_claims"},
		{name: "exp negative", value: rawClaim("exp", `-1`), class: ClassMalformed, reason: "bad_claims"},
		{name: "exp beyond range", value: rawClaim("exp", `1e300`), class: ClassMalformed, reason: "bad_claims"},
		{name: "iat a string", value: rawClaim("iat", `"now"`), class: ClassMalformed, reason: "bad_claims"},
		{name: "nbf a bool", value: rawClaim("nbf", `true`), class: ClassMalformed, reason: "bad_claims"},
		{name: "scp a string", value: rawClaim("scp", `"task.execute"`), class: ClassMalformed, reason: "bad_claims"},
		{name: "iss a number", value: rawClaim("iss", `7`), class: ClassMalformed, reason: "bad_claims"},
		{name: "max_tasks fractional", value: rawClaim("x-asap-constraints", `{"max_tasks":1.5}`), class: ClassMalformed, reason: "bad_claims"},
		{name: "max_tasks a string", value: rawClaim("x-asap-constraints", `{"max_tasks":"5"}`), class: ClassMalformed, reason: "bad_claims"},
		{name: "prf a string", value: rawClaim("prf", `"abc"`), class: ClassMalformed, reason: "bad_claims"},
		{name: "cnf a string", value: rawClaim("cnf", `"jwk"`), class: ClassMalformed, reason: "bad_claims"},
		{name: "missing iss", value: func(f *fixture) string { return rootWith(f, "iss", nil) }, class: ClassMalformed, reason: "missing_iss"},
		{name: "empty iss", value: func(f *fixture) string { return rootWith(f, "iss", "") }, class: ClassMalformed, reason: "missing_iss"},
		{name: "missing aud", value: func(f *fixture) string { return rootWith(f, "aud", nil) }, class: ClassMalformed, reason: "missing_aud"},
		{name: "aud null", value: rawClaim("aud", `null`), class: ClassMalformed, reason: "missing_aud"},
		{name: "aud [\"\"]", value: func(f *fixture) string { return rootWith(f, "aud", []string{""}) }, class: ClassMalformed, reason: "missing_aud"},
		{name: "missing jti", value: func(f *fixture) string { return rootWith(f, "jti", nil) }, class: ClassMalformed, reason: "missing_jti"},
		{name: "missing exp", value: func(f *fixture) string { return rootWith(f, "exp", nil) }, class: ClassMalformed, reason: "missing_exp"},
		{name: "exp null", value: rawClaim("exp", `null`), class: ClassMalformed, reason: "missing_exp"},
		{name: "missing scp", value: func(f *fixture) string { return rootWith(f, "scp", nil) }, class: ClassMalformed, reason: "missing_scp"},
		{name: "empty scp", value: func(f *fixture) string { return rootWith(f, "scp", []string{}) }, class: ClassMalformed, reason: "missing_scp"},
		{name: "empty claims object", value: func(f *fixture) string { return raw(f, `{"alg":"Ed25519"}`, `{}`) }, class: ClassMalformed, reason: "missing_iss"},
		{name: "prf with two hashes", value: func(f *fixture) string { return rootWith(f, "prf", []string{"a", "b"}) }, class: ClassMalformed, reason: "bad_prf"},
		{name: "negative max_tasks", value: func(f *fixture) string {
			return rootWith(f, "x-asap-constraints", map[string]any{"max_tasks": -1})
		}, class: ClassMalformed, reason: "bad_max_tasks"},
		{name: "negative max_tasks on a child", value: func(f *fixture) string {
			r := f.root()
			return join(childOf(f, r, f.alice, "x-asap-constraints", map[string]any{"max_tasks": -3}), r)
		}, class: ClassMalformed, reason: "bad_max_tasks"},

		// --- algorithms ---------------------------------------------------
		{name: "alg none with a signature", value: func(f *fixture) string {
			return enc(f.tb, map[string]any{"alg": "none", "typ": "JWT"}) + "." + enc(f.tb, f.rootClaims()) + "." + enc(f.tb, "sig")
		}, class: ClassSignature, reason: "alg_not_allowed"},
		{name: "alg None", value: func(f *fixture) string { return rootHdr(f, map[string]any{"alg": "None"}, f.self) }, class: ClassSignature, reason: "alg_not_allowed"},
		{name: "alg HS256 keyed with the Ed25519 public key (key confusion)", value: func(f *fixture) string {
			return signHMAC(f.tb, map[string]any{"alg": "HS256", "typ": "JWT"}, f.rootClaims(), f.self.pub)
		}, class: ClassSignature, reason: "alg_not_allowed"},
		{name: "alg HS256 keyed with the public JWK text (key confusion)", value: func(f *fixture) string {
			return signHMAC(f.tb, map[string]any{"alg": "HS256", "typ": "JWT"}, f.rootClaims(), []byte(PublicJWK(f.self.pub)))
		}, class: ClassSignature, reason: "alg_not_allowed"},
		{name: "alg HS512", value: func(f *fixture) string {
			return signHMAC(f.tb, map[string]any{"alg": "HS512"}, f.rootClaims(), f.self.pub)
		}, class: ClassSignature, reason: "alg_not_allowed"},
		{name: "alg RS256", value: func(f *fixture) string { return rootHdr(f, map[string]any{"alg": "RS256"}, f.self) }, class: ClassSignature, reason: "alg_not_allowed"},
		{name: "alg ES256", value: func(f *fixture) string { return rootHdr(f, map[string]any{"alg": "ES256"}, f.self) }, class: ClassSignature, reason: "alg_not_allowed"},
		{name: "alg missing", value: func(f *fixture) string { return rootHdr(f, map[string]any{"typ": "JWT"}, f.self) }, class: ClassSignature, reason: "alg_not_allowed"},
		{name: "alg lower-case ed25519", value: func(f *fixture) string { return rootHdr(f, map[string]any{"alg": "ed25519"}, f.self) }, class: ClassSignature, reason: "alg_not_allowed"},
		{name: "alg with trailing space", value: func(f *fixture) string { return rootHdr(f, map[string]any{"alg": "EdDSA "}, f.self) }, class: ClassSignature, reason: "alg_not_allowed"},
		{name: "alg very long", value: func(f *fixture) string {
			return rootHdr(f, map[string]any{"alg": strings.Repeat("X", 4096)}, f.self)
		}, class: ClassSignature, reason: "alg_not_allowed"},
		{name: "alg none on a child", value: func(f *fixture) string {
			r := f.root()
			return join(enc(f.tb, map[string]any{"alg": "none"})+"."+enc(f.tb, f.childClaims(r, f.alice, f.bob, "del_child"))+".AAAA", r)
		}, class: ClassSignature, reason: "alg_not_allowed"},

		// --- chain structure ----------------------------------------------
		{name: "same token twice (loop)", value: func(f *fixture) string { r := f.root(); return join(r, r) },
			class: ClassMalformed, reason: "chain_loop", jti: "del_root"},
		{name: "different tokens with the same jti (loop)", value: func(f *fixture) string {
			r := f.root()
			return join(f.sign(with(f.childClaims(r, f.alice, f.bob, "del_root")), f.alice), r)
		}, class: ClassMalformed, reason: "chain_loop", jti: "del_root"},
		{name: "root names a parent (chain incomplete)", value: func(f *fixture) string { return rootWith(f, "prf", []string{HashOf("x.y.z")}) },
			class: ClassMalformed, reason: "chain_incomplete", jti: "del_root"},
		{name: "chain sent without its root", value: func(f *fixture) string {
			r := f.root()
			c := f.child(r)
			return join(grandchild(f, c), c)
		}, class: ClassMalformed, reason: "chain_incomplete", jti: "del_child"},
		{name: "prf names another token", value: func(f *fixture) string {
			r := f.root()
			return join(childOf(f, r, f.alice, "prf", []string{HashOf(r + "x")}), r)
		}, class: ClassMalformed, reason: "broken_prf", jti: "del_child"},
		{name: "child without prf", value: func(f *fixture) string {
			r := f.root()
			return join(childOf(f, r, f.alice, "prf", nil), r)
		}, class: ClassMalformed, reason: "broken_prf", jti: "del_child"},
		{name: "leaf and parent swapped", value: func(f *fixture) string {
			r := f.root()
			return join(r, f.child(r))
		}, class: ClassMalformed, reason: "chain_incomplete", jti: "del_child"},
		{name: "parse error deep in a chain names the link", value: func(f *fixture) string {
			r := f.root()
			return join(f.child(r), "!!!.e30.AAAA")
		}, class: ClassMalformed, reason: "bad_base64"},

		// --- keys ---------------------------------------------------------
		{name: "untrusted root issuer", value: func(f *fixture) string {
			return f.sign(with(f.rootClaims(), "iss", f.evil.urn), f.evil)
		}, class: ClassSignature, reason: "untrusted_issuer", jti: "del_root"},
		{name: "untrusted root issuer with its own header jwk", value: func(f *fixture) string {
			return signEd(f.tb, map[string]any{"alg": "Ed25519", "jwk": jwkMap(f.evil.pub)}, with(f.rootClaims(), "iss", f.evil.urn), f.evil.priv)
		}, class: ClassSignature, reason: "untrusted_issuer"},
		{name: "root header jwk not bound (attacker signs with its own key)", value: func(f *fixture) string {
			return rootHdr(f, map[string]any{"alg": "Ed25519", "typ": "JWT", "jwk": jwkMap(f.evil.pub)}, f.evil)
		}, class: ClassSignature, reason: "header_jwk_not_bound", jti: "del_root"},
		{name: "root header jwk malformed", value: func(f *fixture) string {
			return rootHdr(f, map[string]any{"alg": "Ed25519", "jwk": map[string]any{"kty": "oct", "k": "c2VjcmV0"}}, f.self)
		}, class: ClassSignature, reason: "header_jwk_not_bound"},
		{name: "child header jwk not bound by cnf.jwk", value: func(f *fixture) string {
			r := f.root()
			c := signEd(f.tb, map[string]any{"alg": "Ed25519", "jwk": jwkMap(f.evil.pub)}, f.childClaims(r, f.alice, f.bob, "del_child"), f.evil.priv)
			return join(c, r)
		}, class: ClassSignature, reason: "header_jwk_not_bound", jti: "del_child"},
		{name: "trusted child issuer with a foreign header jwk", value: func(f *fixture) string {
			r := rootWith(f, "aud", f.partner.urn, "cnf", nil)
			c := signEd(f.tb, map[string]any{"alg": "Ed25519", "jwk": jwkMap(f.evil.pub)}, f.childClaims(r, f.partner, f.bob, "del_child"), f.evil.priv)
			return join(c, r)
		}, class: ClassSignature, reason: "header_jwk_not_bound"},
		{name: "child header jwk when the parent binds no key", value: func(f *fixture) string {
			r := rootWith(f, "cnf", nil)
			c := signEd(f.tb, map[string]any{"alg": "Ed25519", "jwk": jwkMap(f.alice.pub)}, f.childClaims(r, f.alice, f.bob, "del_child"), f.alice.priv)
			return join(c, r)
		}, class: ClassSignature, reason: "no_key_for_issuer", jti: "del_child"},
		{name: "child with no configured key and no cnf", value: func(f *fixture) string {
			r := rootWith(f, "cnf", nil)
			return join(f.child(r), r)
		}, class: ClassSignature, reason: "no_key_for_issuer"},
		{name: "child with no configured key and an empty cnf", value: func(f *fixture) string {
			r := rootWith(f, "cnf", map[string]any{})
			return join(f.child(r), r)
		}, class: ClassSignature, reason: "no_key_for_issuer"},
		{name: "parent cnf.jwk not an Ed25519 JWK", value: func(f *fixture) string {
			r := rootWith(f, "cnf", map[string]any{"jwk": map[string]any{"kty": "RSA", "n": "AQAB", "e": "AQAB"}})
			return join(f.child(r), r)
		}, class: ClassMalformed, reason: "bad_cnf", jti: "del_child"},
		{name: "cnf.jkt and no header jwk", value: func(f *fixture) string {
			r := jktRoot(f, f.alice.pub)
			return join(f.child(r), r)
		}, class: ClassSignature, reason: "missing_header_jwk", jti: "del_child"},
		{name: "cnf.jkt and a header jwk of another key", value: func(f *fixture) string {
			r := jktRoot(f, f.alice.pub)
			c := signEd(f.tb, map[string]any{"alg": "Ed25519", "jwk": jwkMap(f.evil.pub)}, f.childClaims(r, f.alice, f.bob, "del_child"), f.evil.priv)
			return join(c, r)
		}, class: ClassSignature, reason: "jwk_thumbprint_mismatch", jti: "del_child"},
		{name: "cnf.jkt and a header jwk that is not Ed25519", value: func(f *fixture) string {
			r := jktRoot(f, f.alice.pub)
			c := signEd(f.tb, map[string]any{"alg": "Ed25519", "jwk": map[string]any{"kty": "OKP", "crv": "X25519", "x": b64.EncodeToString(f.alice.pub)}},
				f.childClaims(r, f.alice, f.bob, "del_child"), f.alice.priv)
			return join(c, r)
		}, class: ClassMalformed, reason: "bad_header_jwk"},
		{name: "cnf.jkt with matching header jwk but signed by another key", value: func(f *fixture) string {
			r := jktRoot(f, f.alice.pub)
			c := signEd(f.tb, map[string]any{"alg": "Ed25519", "jwk": jwkMap(f.alice.pub)}, f.childClaims(r, f.alice, f.bob, "del_child"), f.evil.priv)
			return join(c, r)
		}, class: ClassSignature, reason: "bad_signature", jti: "del_child"},

		// --- signatures ---------------------------------------------------
		{name: "cnf.jwk binds alice, child signed by another key", value: func(f *fixture) string {
			r := f.root()
			return join(childOf(f, r, f.evil), r)
		}, class: ClassSignature, reason: "bad_signature", jti: "del_child"},
		{name: "tampered payload", value: func(f *fixture) string {
			p := strings.Split(f.root(), ".")
			p[1] = enc(f.tb, with(f.rootClaims(), "scp", []string{ScopeAll}))
			return strings.Join(p, ".")
		}, class: ClassSignature, reason: "bad_signature", jti: "del_root"},
		{name: "tampered header", value: func(f *fixture) string {
			p := strings.Split(f.root(), ".")
			p[0] = enc(f.tb, map[string]any{"alg": "EdDSA", "typ": "JWT"})
			return strings.Join(p, ".")
		}, class: ClassSignature, reason: "bad_signature"},
		{name: "signature valid under another trusted key", value: func(f *fixture) string { return f.sign(f.rootClaims(), f.partner) },
			class: ClassSignature, reason: "bad_signature", jti: "del_root"},
		{name: "trusted child issuer signed with another trusted key", value: func(f *fixture) string {
			r := rootWith(f, "aud", f.partner.urn, "cnf", nil)
			return join(f.sign(f.childClaims(r, f.partner, f.bob, "del_child"), f.self), r)
		}, class: ClassSignature, reason: "bad_signature", jti: "del_child"},
		{name: "signature of another token", value: func(f *fixture) string {
			p := strings.Split(f.root(), ".")
			q := strings.Split(rootWith(f, "jti", "del_other"), ".")
			return p[0] + "." + p[1] + "." + q[2]
		}, class: ClassSignature, reason: "bad_signature"},
		{name: "signature truncated", value: func(f *fixture) string {
			p := strings.Split(f.root(), ".")
			return p[0] + "." + p[1] + "." + p[2][:20]
		}, class: ClassSignature, reason: "bad_signature"},
		{name: "signature bit flipped", value: func(f *fixture) string {
			p := strings.Split(f.root(), ".")
			sig, _ := b64.DecodeString(p[2])
			sig[5] ^= 1
			return p[0] + "." + p[1] + "." + b64.EncodeToString(sig)
		}, class: ClassSignature, reason: "bad_signature"},
		{name: "EdDSA signed by an attacker", value: func(f *fixture) string {
			return rootHdr(f, map[string]any{"alg": "EdDSA"}, f.evil)
		}, class: ClassSignature, reason: "bad_signature"},
		{name: "forged root under a genuine child", value: func(f *fixture) string {
			forged := f.sign(with(f.rootClaims(), "scp", []string{ScopeAll}), f.evil)
			return join(f.child(forged), forged)
		}, class: ClassSignature, reason: "bad_signature", jti: "del_root"},

		// --- time ---------------------------------------------------------
		{name: "expired beyond skew", value: func(f *fixture) string { return rootWith(f, "exp", f.at(-31*time.Second)) },
			class: ClassTime, reason: "expired", jti: "del_root"},
		{name: "expired without skew", value: func(f *fixture) string { return rootWith(f, "exp", f.at(-time.Second)) },
			tweak: func(v *Verifier) { v.Skew = 0 }, class: ClassTime, reason: "expired"},
		{name: "expired long ago", value: func(f *fixture) string { return rootWith(f, "exp", 1) }, class: ClassTime, reason: "expired"},
		{name: "expired ancestor", value: func(f *fixture) string {
			r := rootWith(f, "exp", f.at(-time.Hour))
			return join(f.child(r), r) // the leaf itself is still valid
		}, class: ClassTime, reason: "expired", jti: "del_root"},
		{name: "expired leaf", value: func(f *fixture) string {
			r := f.root()
			return join(childOf(f, r, f.alice, "exp", f.at(-time.Hour)), r)
		}, class: ClassTime, reason: "expired", jti: "del_child"},
		{name: "not yet valid (nbf)", value: func(f *fixture) string { return rootWith(f, "nbf", f.at(31*time.Second)) },
			class: ClassTime, reason: "not_yet_valid", jti: "del_root"},
		{name: "not yet valid child", value: func(f *fixture) string {
			r := f.root()
			return join(childOf(f, r, f.alice, "nbf", f.at(10*time.Minute)), r)
		}, class: ClassTime, reason: "not_yet_valid", jti: "del_child"},
		{name: "issued in the future (iat)", value: func(f *fixture) string { return rootWith(f, "iat", f.at(31*time.Second)) },
			class: ClassTime, reason: "issued_in_future", jti: "del_root"},
		{name: "issued in the future without skew", value: func(f *fixture) string { return rootWith(f, "iat", f.at(time.Second)) },
			tweak: func(v *Verifier) { v.Skew = 0 }, class: ClassTime, reason: "issued_in_future"},

		// --- alignment and attenuation ------------------------------------
		{name: "child iss is not the parent's aud", value: func(f *fixture) string {
			r := f.root() // delegates to alice
			return join(f.sign(f.childClaims(r, f.partner, f.bob, "del_child"), f.partner), r)
		}, class: ClassAudience, reason: "issuer_not_parent_audience", jti: "del_child"},
		{name: "scope escalation", value: func(f *fixture) string {
			r := f.root()
			return join(childOf(f, r, f.alice, "scp", []string{ScopeDataWrite}), r)
		}, class: ClassScope, reason: "scope_escalation", jti: "del_child"},
		{name: "scope escalation beside a granted scope", value: func(f *fixture) string {
			r := f.root()
			return join(childOf(f, r, f.alice, "scp", []string{ScopeTaskExecute, ScopeTaskCancel}), r)
		}, class: ClassScope, reason: "scope_escalation"},
		{name: "* under specific scopes", value: func(f *fixture) string {
			r := f.root()
			return join(childOf(f, r, f.alice, "scp", []string{ScopeAll}), r)
		}, class: ClassScope, reason: "scope_escalation"},
		{name: "scope escalation two levels down", value: func(f *fixture) string {
			r := f.root()
			c := f.child(r) // task.execute only
			g := f.sign(with(f.childClaims(c, f.bob, f.carol, "del_gc"), "scp", []string{ScopeDataRead}, "exp", f.at(20*time.Minute)), f.bob)
			return join(g, c, r)
		}, class: ClassScope, reason: "scope_escalation", jti: "del_gc"},
		{name: "child exp after the parent's", value: func(f *fixture) string {
			r := f.root()
			return join(childOf(f, r, f.alice, "exp", f.at(time.Hour)+1), r)
		}, class: ClassScope, reason: "time_window_escape", jti: "del_child"},
		{name: "child nbf before the parent's", value: func(f *fixture) string {
			r := rootWith(f, "nbf", f.at(-time.Minute))
			return join(childOf(f, r, f.alice, "nbf", f.at(-2*time.Minute), "iat", f.at(-2*time.Minute)), r)
		}, class: ClassScope, reason: "time_window_escape", jti: "del_child"},
		{name: "child with no start under a parent with nbf", value: func(f *fixture) string {
			r := rootWith(f, "nbf", f.at(-time.Minute))
			return join(childOf(f, r, f.alice, "iat", nil), r)
		}, class: ClassScope, reason: "time_window_escape"},
		{name: "max_tasks escalation", value: func(f *fixture) string {
			r := f.root()
			return join(childOf(f, r, f.alice, "x-asap-constraints", map[string]any{"max_tasks": 11}), r)
		}, class: ClassScope, reason: "max_tasks_escalation", jti: "del_child"},
		{name: "max_tasks missing under a limited parent", value: func(f *fixture) string {
			r := f.root()
			return join(childOf(f, r, f.alice, "x-asap-constraints", nil), r)
		}, class: ClassScope, reason: "max_tasks_escalation", jti: "del_child"},
		{name: "constraints without max_tasks under a limited parent", value: func(f *fixture) string {
			r := f.root()
			return join(childOf(f, r, f.alice, "x-asap-constraints", map[string]any{"max_cost_usd": 1.5}), r)
		}, class: ClassScope, reason: "max_tasks_escalation"},
		{name: "max_tasks 1 under 0", value: func(f *fixture) string {
			r := rootWith(f, "x-asap-constraints", map[string]any{"max_tasks": 0})
			return join(childOf(f, r, f.alice, "x-asap-constraints", map[string]any{"max_tasks": 1}), r)
		}, class: ClassScope, reason: "max_tasks_escalation"},
		{name: "max_tasks escalation two levels down", value: func(f *fixture) string {
			r := f.root()
			c := f.child(r) // 5
			g := f.sign(with(f.childClaims(c, f.bob, f.carol, "del_gc"), "x-asap-constraints", map[string]any{"max_tasks": 6}, "exp", f.at(20*time.Minute)), f.bob)
			return join(g, c, r)
		}, class: ClassScope, reason: "max_tasks_escalation", jti: "del_gc"},
	}
}

func TestVerifyRules(t *testing.T) {
	f := newFixture(t)
	for _, tc := range verifyCases() {
		t.Run(tc.name, func(t *testing.T) {
			f.tb = t
			v := f.verifier()
			if tc.tweak != nil {
				tc.tweak(v)
			}
			value := tc.value(f)
			c, rej := v.Verify(value)
			if tc.reason == "" {
				if rej != nil {
					t.Fatalf("rejected: %v (class %d, jti %q)", rej, rej.Class, rej.JTI)
				}
				if len(c.Links) != tc.links {
					t.Fatalf("%d links, want %d", len(c.Links), tc.links)
				}
				if c.Root().Claims.Issuer != f.self.urn && c.Root().Claims.Issuer != f.partner.urn {
					t.Fatalf("root issuer %s is not trusted", c.Root().Claims.Issuer)
				}
				return
			}
			if c != nil {
				t.Fatalf("a chain was returned beside a rejection")
			}
			wantRejection(t, rej, tc.class, tc.reason)
			if tc.jti != "" && rej.JTI != tc.jti {
				t.Errorf("rejection names %q, want %q", rej.JTI, tc.jti)
			}
			// A rejection never holds key material.
			for _, a := range []*agent{f.self, f.partner, f.alice, f.bob, f.evil} {
				for _, s := range []string{b64.EncodeToString(a.pub), b64.EncodeToString(a.priv.Seed())} {
					if strings.Contains(rej.Detail, s) || strings.Contains(rej.Reason, s) {
						t.Errorf("rejection leaks key material of %s", a.urn)
					}
				}
			}
			if len(rej.Detail) > 600 {
				t.Errorf("detail of %d bytes is not bounded: %.80s…", len(rej.Detail), rej.Detail)
			}
		})
	}
}

// Valid chains minted by Mint with cnf key binding (chainOf) pass at 1, 3
// and 8 links; 9 links exceed the default depth.
func TestVerifyMintedChains(t *testing.T) {
	for _, n := range []int{1, 3, 8} {
		t.Run(fmt.Sprintf("%d-links", n), func(t *testing.T) {
			value, trusted := chainOf(t, n)
			v := &Verifier{Self: "urn:asap:agent:root", Trusted: trusted, MaxDepth: 8, MaxSize: 16 << 10, Skew: 30 * time.Second}
			c := mustVerify(t, v, value)
			if len(c.Links) != n {
				t.Fatalf("%d links, want %d", len(c.Links), n)
			}
			if c.Root().Claims.Issuer != "urn:asap:agent:root" {
				t.Errorf("root issuer %s", c.Root().Claims.Issuer)
			}
			leafAud := fmt.Sprintf("urn:asap:agent:d%d", n)
			if string(c.Leaf().Claims.Audience) != leafAud {
				t.Errorf("leaf aud %s, want %s", c.Leaf().Claims.Audience, leafAud)
			}
			ids := c.JTIs()
			if len(ids) != n {
				t.Fatalf("JTIs %v", ids)
			}
			for i, id := range ids {
				if id != c.Links[i].Claims.ID || !strings.HasPrefix(id, "del_") {
					t.Errorf("JTIs[%d] = %q", i, id)
				}
			}
			if rej := v.CheckCall(c, leafAud, "urn:asap:agent:root", ScopeTaskExecute); rej != nil {
				t.Errorf("CheckCall: %v", rej)
			}
			// The same chain over a depth limit of n-1.
			if n > 1 {
				v2 := &Verifier{Trusted: trusted, MaxDepth: n - 1}
				_, rej := v2.Verify(value)
				wantRejection(t, rej, ClassMalformed, "chain_too_deep")
			}
		})
	}
	t.Run("9-links-over-default-depth", func(t *testing.T) {
		value, trusted := chainOf(t, 9)
		v := &Verifier{Trusted: trusted, MaxDepth: 8, MaxSize: 16 << 10}
		_, rej := v.Verify(value)
		wantRejection(t, rej, ClassMalformed, "chain_too_deep")
		// Without limits the same chain verifies.
		mustVerify(t, &Verifier{Trusted: trusted}, value)
	})
}

// A multi-link chain names the failing link in the detail.
func TestVerifyDetailNamesLink(t *testing.T) {
	f := newFixture(t)
	r := f.root()
	_, rej := f.verifier().Verify(join(f.child(r), "!!!.e30.AAAA"))
	wantRejection(t, rej, ClassMalformed, "bad_base64")
	if !strings.HasPrefix(rej.Detail, "link 1: ") {
		t.Errorf("detail %q does not name link 1", rej.Detail)
	}
	_, rej = f.verifier().Verify("!!!.e30.AAAA")
	if strings.HasPrefix(rej.Detail, "link ") {
		t.Errorf("a single token's detail names a link: %q", rej.Detail)
	}
	// An over-long alg name is cut in the detail.
	_, rej = f.verifier().Verify(signEd(t, map[string]any{"alg": strings.Repeat("X", 4096)}, f.rootClaims(), f.self.priv))
	wantRejection(t, rej, ClassSignature, "alg_not_allowed")
	if strings.Contains(rej.Detail, strings.Repeat("X", 33)) {
		t.Errorf("alg not truncated in detail: %q", rej.Detail)
	}
}

// The verified links expose what the token says.
func TestVerifyLinkContents(t *testing.T) {
	f := newFixture(t)
	r := f.root()
	c := f.child(r)
	ch := mustVerify(t, f.verifier(), join(c, r))
	leaf, root := ch.Leaf(), ch.Root()
	if leaf.Raw != c || root.Raw != r {
		t.Fatal("Raw is not the compact form")
	}
	if leaf.Hash != HashOf(c) || leaf.Claims.Proof[0] != root.Hash {
		t.Error("hash / prf mismatch")
	}
	if leaf.Alg != AlgEd25519 || leaf.MaxTasks() != 5 || root.MaxTasks() != 10 {
		t.Errorf("alg %s max_tasks %d/%d", leaf.Alg, leaf.MaxTasks(), root.MaxTasks())
	}
	if got := ch.JTIs(); len(got) != 2 || got[0] != "del_child" || got[1] != "del_root" {
		t.Errorf("JTIs %v", got)
	}
	if int64(*root.Claims.Expiry) != f.at(time.Hour) || int64(*root.Claims.IssuedAt) != f.at(-time.Minute) || root.Claims.NotBefore != nil {
		t.Error("dates not read")
	}
	pub, err := ParsePublicJWK(root.Claims.Confirmation.JWK)
	if err != nil || !pub.Equal(f.alice.pub) {
		t.Errorf("cnf.jwk: %v", err)
	}
	unlimited := mustVerify(t, f.verifier(), f.sign(with(f.rootClaims(), "x-asap-constraints", nil), f.self))
	if unlimited.Leaf().MaxTasks() != -1 {
		t.Errorf("MaxTasks without constraints = %d, want -1", unlimited.Leaf().MaxTasks())
	}
}

// HashOf is base64url (no padding) SHA-256 of the compact form.
func TestHashOf(t *testing.T) {
	// SHA-256("abc") = ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad
	if got := HashOf("abc"); got != "ungWv48Bz-pBQUDeXa4iI7ADYaOWF3qctBD_YfIAFa0" {
		t.Errorf("HashOf(abc) = %s", got)
	}
}

// Without a clock the verifier uses the real time; with no limits it
// accepts any depth and size.
func TestVerifyDefaults(t *testing.T) {
	a := newAgent(t, "urn:asap:agent:a")
	now := time.Now()
	tok := signEd(t, edHeader(), map[string]any{"iss": a.urn, "aud": "urn:asap:agent:b", "jti": "x",
		"iat": now.Unix(), "exp": now.Add(time.Minute).Unix(), "scp": []string{ScopeDataRead}}, a.priv)
	v := &Verifier{Trusted: map[string]ed25519.PublicKey{a.urn: a.pub}}
	mustVerify(t, v, tok)
	old := signEd(t, edHeader(), map[string]any{"iss": a.urn, "aud": "urn:asap:agent:b", "jti": "y",
		"exp": now.Add(-time.Minute).Unix(), "scp": []string{ScopeDataRead}}, a.priv)
	_, rej := v.Verify(old)
	wantRejection(t, rej, ClassTime, "expired")
	// No trusted issuers at all.
	_, rej = (&Verifier{}).Verify(tok)
	wantRejection(t, rej, ClassSignature, "untrusted_issuer")
}

func TestCheckCall(t *testing.T) {
	f := newFixture(t)
	r := f.root()
	chain := mustVerify(t, f.verifier(), join(f.child(r), r)) // leaf: alice → bob, task.execute
	star := mustVerify(t, f.verifier(), f.sign(with(f.rootClaims(), "scp", []string{ScopeAll}), f.self))
	cases := []struct {
		name                      string
		chain                     *Chain
		self                      string
		sender, recipient, action string
		class                     Class
		reason                    string
	}{
		{"granted", chain, f.self.urn, f.bob.urn, f.self.urn, ScopeTaskExecute, 0, ""},
		{"recipient is another agent", chain, f.self.urn, f.bob.urn, f.partner.urn, ScopeTaskExecute, ClassAudience, "recipient_mismatch"},
		{"empty recipient", chain, f.self.urn, f.bob.urn, "", ScopeTaskExecute, ClassAudience, "recipient_mismatch"},
		{"no Self: recipient not checked", chain, "", f.bob.urn, f.partner.urn, ScopeTaskExecute, 0, ""},
		{"sender is not the leaf audience", chain, f.self.urn, f.carol.urn, f.self.urn, ScopeTaskExecute, ClassAudience, "sender_not_audience"},
		{"sender is an ancestor's audience (wrong audience)", chain, f.self.urn, f.alice.urn, f.self.urn, ScopeTaskExecute, ClassAudience, "sender_not_audience"},
		{"action not granted", chain, f.self.urn, f.bob.urn, f.self.urn, ScopeTaskCancel, ClassScope, "action_not_granted"},
		{"action granted only by an ancestor", chain, f.self.urn, f.bob.urn, f.self.urn, ScopeDataRead, ClassScope, "action_not_granted"},
		{"action * not granted by specific scopes", chain, f.self.urn, f.bob.urn, f.self.urn, ScopeAll, ClassScope, "action_not_granted"},
		{"empty action", chain, f.self.urn, f.bob.urn, f.self.urn, "", ClassScope, "action_not_granted"},
		{"* grants data.write", star, f.self.urn, f.alice.urn, f.self.urn, ScopeDataWrite, 0, ""},
		{"* grants an unknown action", star, f.self.urn, f.alice.urn, f.self.urn, "custom.thing", 0, ""},
		{"* grants *", star, f.self.urn, f.alice.urn, f.self.urn, ScopeAll, 0, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			v := f.verifier()
			v.Self = tc.self
			rej := v.CheckCall(tc.chain, tc.sender, tc.recipient, tc.action)
			if tc.reason == "" {
				if rej != nil {
					t.Fatalf("refused: %v", rej)
				}
				return
			}
			wantRejection(t, rej, tc.class, tc.reason)
			if tc.reason != "recipient_mismatch" && rej.JTI != tc.chain.Leaf().Claims.ID {
				t.Errorf("rejection names %q, want the leaf", rej.JTI)
			}
		})
	}
}

func TestChainGrants(t *testing.T) {
	mk := func(scopes ...string) *Chain {
		return &Chain{Links: []*Link{{Claims: Claims{Scopes: scopes}}}}
	}
	cases := []struct {
		scopes []string
		action string
		want   bool
	}{
		{[]string{ScopeTaskExecute}, ScopeTaskExecute, true},
		{[]string{ScopeTaskExecute}, ScopeTaskCancel, false},
		{[]string{ScopeTaskExecute}, ScopeAll, false},
		{[]string{ScopeAll}, ScopeAll, true},
		{[]string{ScopeAll}, ScopeDataWrite, true},
		{[]string{ScopeDataRead, ScopeDataWrite}, ScopeDataWrite, true},
	}
	for _, tc := range cases {
		if got := mk(tc.scopes...).Grants(tc.action); got != tc.want {
			t.Errorf("%v grants %q = %v, want %v", tc.scopes, tc.action, got, tc.want)
		}
	}
}

// ParseLink on its own: structure and claims, no key.
func TestParseLink(t *testing.T) {
	f := newFixture(t)
	l, rej := ParseLink(f.root())
	if rej != nil {
		t.Fatal(rej)
	}
	if l.Claims.Issuer != f.self.urn || string(l.Claims.Audience) != f.alice.urn || l.Claims.ID != "del_root" {
		t.Errorf("claims %+v", l.Claims)
	}
	if len(l.HeaderJWK) != 0 {
		t.Error("header jwk where there is none")
	}
	// A forged signature still parses: ParseLink checks form only.
	if _, rej := ParseLink(f.sign(f.rootClaims(), f.evil)); rej != nil {
		t.Errorf("ParseLink checked the signature: %v", rej)
	}
	_, rej = ParseLink("a.b")
	wantRejection(t, rej, ClassMalformed, "not_compact_jws")
}

// SPEC §3: cheap checks first. A token that is wrong in several ways gets
// the answer of the earliest check.
func TestVerifyOrder(t *testing.T) {
	f := newFixture(t)
	v := f.verifier()
	// Expired, untrusted, escalating: key resolution comes before time.
	bad := f.sign(with(f.rootClaims(), "iss", f.evil.urn, "exp", f.at(-time.Hour)), f.evil)
	_, rej := v.Verify(bad)
	wantRejection(t, rej, ClassSignature, "untrusted_issuer")
	// Expired and forged: signature before time.
	_, rej = v.Verify(f.sign(with(f.rootClaims(), "exp", f.at(-time.Hour)), f.evil))
	wantRejection(t, rej, ClassSignature, "bad_signature")
	// Expired and escalating: time before attenuation.
	r := f.root()
	_, rej = v.Verify(join(f.sign(with(f.childClaims(r, f.alice, f.bob, "del_child"), "scp", []string{ScopeAll}, "exp", f.at(-time.Hour)), f.alice), r))
	wantRejection(t, rej, ClassTime, "expired")
	// HMAC and oversized: size first.
	v.MaxSize = 50
	_, rej = v.Verify(signHMAC(t, map[string]any{"alg": "HS256"}, f.rootClaims(), f.self.pub))
	wantRejection(t, rej, ClassMalformed, "token_too_large")
}

// An unsecured JWS (RFC 7515 §A.5: alg "none", empty third part) is
// refused by the alg allow-list.
func TestVerifyAlgNoneUnsecured(t *testing.T) {
	f := newFixture(t)
	unsecured := enc(t, map[string]any{"alg": "none", "typ": "JWT"}) + "." + enc(t, f.rootClaims()) + "."
	_, rej := f.verifier().Verify(unsecured)
	if rej == nil {
		t.Fatal("an unsecured token was accepted")
	}
	if rej.Class != ClassSignature || rej.Reason != "alg_not_allowed" {
		t.Fatal("token.go:151-152 refuses the canonical alg none token (empty signature part) as " + rej.Reason +
			" (-32053) before the alg allow-list; SPEC §3/§10 want it refused as alg_not_allowed (-32054)")
	}
}

// The spec bounds a child by its parent's [nbf, exp] only: a child whose
// issuer's clock runs behind the parent issuer's is accepted.
func TestVerifyChildIssuedJustBeforeParentIat(t *testing.T) {
	f := newFixture(t)
	r := f.sign(with(f.rootClaims(), "iat", f.at(2*time.Second)), f.self) // parent issuer's clock 2 s ahead
	c := f.sign(with(f.childClaims(r, f.alice, f.bob, "del_child"), "iat", f.at(0)), f.alice)
	_, rej := f.verifier().Verify(join(c, r))
	if rej != nil {
		t.Fatal("verify.go:238/250 (start falls back to iat) refuses a child issued 2 s before its parent's iat (parent has no nbf; both within Skew) as " +
			rej.Reason + "; expected accepted — SPEC §3 bounds the child by the parent's [nbf, exp]")
	}
}

// A forger needs no key to choose a token's jti: over-long claims are
// refused before anything quotes them, so answers stay small.
func TestVerifyDetailBounded(t *testing.T) {
	f := newFixture(t)
	huge := "del_" + strings.Repeat("J", 10000) // the token stays under 16 KiB
	forged := f.sign(with(f.rootClaims(), "jti", huge), f.evil)
	_, rej := f.verifier().Verify(forged)
	wantRejection(t, rej, ClassMalformed, "claim_too_long")
	if len(rej.Detail) > 512 || len(rej.JTI) > 256 {
		t.Fatalf("verify.go:133 (and the other reject(...) calls quoting c.ID: expired, not_yet_valid, issued_in_future, broken_prf, scope_escalation, time_window_escape, max_tasks_escalation, revoked, max_tasks_reached) puts the %d-byte jti of a forged token into a %d-byte Detail, untruncated", len(huge), len(rej.Detail))
	}
}
