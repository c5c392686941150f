package delegation

import (
	"crypto/ed25519"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/asap-sidecar/asap-sidecar/storage"
)

// The helpers in this file build tokens by hand, independently of Mint:
// base64url(header) + "." + base64url(claims) + "." + base64url(signature).

// agent is a principal with its own Ed25519 key.
type agent struct {
	urn  string
	priv ed25519.PrivateKey
	pub  ed25519.PublicKey
}

func newAgent(t testing.TB, urn string) *agent {
	t.Helper()
	priv, err := GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	return &agent{urn: urn, priv: priv, pub: priv.Public().(ed25519.PublicKey)}
}

// jwkMap is the public JWK of pub as a generic JSON value, for claims maps.
func jwkMap(pub ed25519.PublicKey) map[string]any {
	return map[string]any{"kty": "OKP", "crv": "Ed25519", "x": b64.EncodeToString(pub)}
}

// enc is the base64url (no padding) of v: raw bytes for []byte and
// string, JSON for anything else.
func enc(t testing.TB, v any) string {
	t.Helper()
	switch x := v.(type) {
	case []byte:
		return b64.EncodeToString(x)
	case string:
		return b64.EncodeToString([]byte(x))
	}
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b64.EncodeToString(b)
}

// signEd builds a compact JWS signed with crypto/ed25519 directly.
func signEd(t testing.TB, hdr, claims any, key ed25519.PrivateKey) string {
	t.Helper()
	in := enc(t, hdr) + "." + enc(t, claims)
	return in + "." + b64.EncodeToString(ed25519.Sign(key, []byte(in)))
}

// signHMAC builds a compact JWS whose signature is HMAC-SHA256 with secret.
func signHMAC(t testing.TB, hdr, claims any, secret []byte) string {
	t.Helper()
	in := enc(t, hdr) + "." + enc(t, claims)
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(in))
	return in + "." + b64.EncodeToString(m.Sum(nil))
}

func edHeader() map[string]any { return map[string]any{"alg": "Ed25519", "typ": "JWT"} }

// fixture is a small world of principals and a fixed clock.
//
//	self     the protected agent, trusted root issuer
//	partner  another trusted issuer
//	alice    delegate of self, key bound by the root's cnf.jwk
//	bob      delegate of alice, key bound by alice's cnf.jwk
//	carol    delegate of bob
//	evil     an attacker, known to nobody
type fixture struct {
	tb                                     testing.TB
	t0                                     time.Time
	self, partner, alice, bob, carol, evil *agent
}

func newFixture(t testing.TB) *fixture {
	return &fixture{
		tb:      t,
		t0:      time.Unix(1_700_000_000, 0),
		self:    newAgent(t, "urn:asap:agent:self"),
		partner: newAgent(t, "urn:asap:agent:partner"),
		alice:   newAgent(t, "urn:asap:agent:alice"),
		bob:     newAgent(t, "urn:asap:agent:bob"),
		carol:   newAgent(t, "urn:asap:agent:carol"),
		evil:    newAgent(t, "urn:asap:agent:evil"),
	}
}

func (f *fixture) verifier() *Verifier {
	return &Verifier{
		Self: f.self.urn,
		Trusted: map[string]ed25519.PublicKey{
			f.self.urn:    f.self.pub,
			f.partner.urn: f.partner.pub,
		},
		MaxDepth: 8,
		MaxSize:  16 << 10,
		Skew:     30 * time.Second,
		Now:      func() time.Time { return f.t0 },
	}
}

func (f *fixture) at(d time.Duration) int64 { return f.t0.Add(d).Unix() }

// rootClaims: self delegates task.execute and data.read to alice for an
// hour, max 10 tasks, binding alice's key.
func (f *fixture) rootClaims() map[string]any {
	return map[string]any{
		"iss":                f.self.urn,
		"aud":                f.alice.urn,
		"jti":                "del_root",
		"iat":                f.at(-time.Minute),
		"exp":                f.at(time.Hour),
		"scp":                []string{ScopeTaskExecute, ScopeDataRead},
		"x-asap-constraints": map[string]any{"max_tasks": 10},
		"cnf":                map[string]any{"jwk": jwkMap(f.alice.pub)},
	}
}

// childClaims: iss re-delegates a narrower slice of parent to aud.
func (f *fixture) childClaims(parent string, iss, aud *agent, jti string) map[string]any {
	return map[string]any{
		"iss":                iss.urn,
		"aud":                aud.urn,
		"jti":                jti,
		"iat":                f.at(-30 * time.Second),
		"exp":                f.at(30 * time.Minute),
		"scp":                []string{ScopeTaskExecute},
		"x-asap-constraints": map[string]any{"max_tasks": 5},
		"prf":                []string{HashOf(parent)},
		"cnf":                map[string]any{"jwk": jwkMap(aud.pub)},
	}
}

// sign signs claims with key under the plain reference header.
func (f *fixture) sign(claims map[string]any, key *agent) string {
	return signEd(f.tb, edHeader(), claims, key.priv)
}

// root is the default root token; child the default alice → bob token
// under parent.
func (f *fixture) root() string { return f.sign(f.rootClaims(), f.self) }

func (f *fixture) child(parent string) string {
	return f.sign(f.childClaims(parent, f.alice, f.bob, "del_child"), f.alice)
}

// with returns a copy of m with the given members set (nil deletes).
func with(m map[string]any, kv ...any) map[string]any {
	out := make(map[string]any, len(m))
	for k, v := range m {
		out[k] = v
	}
	for i := 0; i < len(kv); i += 2 {
		k := kv[i].(string)
		if kv[i+1] == nil {
			delete(out, k)
		} else {
			out[k] = kv[i+1]
		}
	}
	return out
}

func join(tokens ...string) string { return strings.Join(tokens, ",") }

// wantRejection asserts rej's class and reason.
func wantRejection(t testing.TB, rej *Rejection, class Class, reason string) {
	t.Helper()
	if rej == nil {
		t.Fatalf("accepted; want %d %s", class, reason)
	}
	if rej.Class != class || rej.Reason != reason {
		t.Fatalf("rejected with class %d reason %q (%s); want class %d reason %q", rej.Class, rej.Reason, rej.Detail, class, reason)
	}
	if rej.Detail == "" {
		t.Errorf("rejection %s has no detail", rej.Reason)
	}
	if got := rej.Error(); got != rej.Reason+": "+rej.Detail {
		t.Errorf("Error() = %q", got)
	}
}

// openDB opens a real database in dir.
func openDB(t testing.TB, dir string) *storage.DB {
	t.Helper()
	db, err := storage.Open(storage.Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	return db
}

// mustVerify verifies value or fails the test.
func mustVerify(t testing.TB, v *Verifier, value string) *Chain {
	t.Helper()
	c, rej := v.Verify(value)
	if rej != nil {
		t.Fatalf("rejected: %v (class %d, jti %s)", rej, rej.Class, rej.JTI)
	}
	return c
}

func i64(n int64) *int64 { return &n }
