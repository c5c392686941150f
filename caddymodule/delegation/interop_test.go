package delegation

import (
	"crypto/ed25519"
	"encoding/json"
	"reflect"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/oklog/ulid/v2"
)

// referenceToken signs a token the way the reference implementation writes
// it: header {"alg":...,"typ":"JWT"} exactly, claims iss, aud, jti
// "del_"+ULID, iat, exp, scp and x-asap-constraints, signed with
// crypto/ed25519 directly (no jwx anywhere).
func referenceToken(t *testing.T, alg, iss, aud string, scp []string, maxTasks int, iat, exp int64, key ed25519.PrivateKey) (token, jti string) {
	t.Helper()
	jti = "del_" + ulid.Make().String()
	header := `{"alg":"` + alg + `","typ":"JWT"}`
	scpJSON, _ := json.Marshal(scp)
	claims := `{"iss":"` + iss + `","aud":"` + aud + `","jti":"` + jti + `","iat":` + itoa(iat) + `,"exp":` + itoa(exp) +
		`,"scp":` + string(scpJSON) + `,"x-asap-constraints":{"max_tasks":` + itoa(int64(maxTasks)) + `}}`
	in := b64.EncodeToString([]byte(header)) + "." + b64.EncodeToString([]byte(claims))
	return in + "." + b64.EncodeToString(ed25519.Sign(key, []byte(in))), jti
}

func itoa(n int64) string { b, _ := json.Marshal(n); return string(b) }

// SPEC §3 (a): a reference-form token verifies, with both algorithm names.
func TestInteropReferenceTokenVerifies(t *testing.T) {
	issuer := newAgent(t, "urn:asap:agent:reference-issuer")
	self := "urn:asap:agent:protected"
	now := time.Now()
	for _, alg := range []string{"Ed25519", "EdDSA"} {
		t.Run(alg, func(t *testing.T) {
			tok, jti := referenceToken(t, alg, issuer.urn, "urn:asap:agent:client", []string{ScopeTaskExecute, ScopeDataRead}, 7,
				now.Unix(), now.Add(time.Hour).Unix(), issuer.priv)
			// The header is exactly what the reference writes.
			hb, _ := b64.DecodeString(strings.SplitN(tok, ".", 2)[0])
			if string(hb) != `{"alg":"`+alg+`","typ":"JWT"}` {
				t.Fatalf("header %s", hb)
			}
			v := &Verifier{Self: self, Trusted: map[string]ed25519.PublicKey{issuer.urn: issuer.pub}, MaxDepth: 8, MaxSize: 16 << 10, Skew: 30 * time.Second}
			c := mustVerify(t, v, tok)
			if len(c.Links) != 1 {
				t.Fatalf("%d links", len(c.Links))
			}
			l := c.Leaf()
			if l.Alg != alg || l.Claims.ID != jti || l.MaxTasks() != 7 || string(l.Claims.Audience) != "urn:asap:agent:client" {
				t.Errorf("link %+v", l.Claims)
			}
			if rej := v.CheckCall(c, "urn:asap:agent:client", self, ScopeDataRead); rej != nil {
				t.Errorf("CheckCall: %v", rej)
			}
			// And a signature by another key under the same issuer is refused.
			other := newAgent(t, "x")
			forged, _ := referenceToken(t, alg, issuer.urn, "urn:asap:agent:client", []string{ScopeAll}, 7,
				now.Unix(), now.Add(time.Hour).Unix(), other.priv)
			_, rej := v.Verify(forged)
			wantRejection(t, rej, ClassSignature, "bad_signature")
		})
	}
}

// The reference's JSON may carry whitespace, member orders of its own and
// max_cost_usd; none of that matters.
func TestInteropReferenceVariants(t *testing.T) {
	issuer := newAgent(t, "urn:asap:agent:ref")
	now := time.Now().Unix()
	header := `{"typ": "JWT", "alg": "Ed25519"}`
	claims := `{ "scp": ["*"], "exp": ` + itoa(now+60) + `, "iat": ` + itoa(now) + `, "jti": "del_` + ulid.Make().String() +
		`", "aud": ["urn:asap:agent:c"], "iss": "urn:asap:agent:ref", "x-asap-constraints": {"max_tasks": 0, "max_cost_usd": 12.5} }`
	in := b64.EncodeToString([]byte(header)) + "." + b64.EncodeToString([]byte(claims))
	tok := in + "." + b64.EncodeToString(ed25519.Sign(issuer.priv, []byte(in)))
	v := &Verifier{Trusted: map[string]ed25519.PublicKey{issuer.urn: issuer.pub}}
	c := mustVerify(t, v, tok)
	l := c.Leaf()
	if l.MaxTasks() != 0 || *l.Claims.Constraints.MaxCostUSD != 12.5 || string(l.Claims.Audience) != "urn:asap:agent:c" {
		t.Errorf("claims %+v", l.Claims)
	}
}

// independentVerify checks a compact token against pub with nothing but
// crypto/ed25519 and base64url, returning the decoded header and claims.
func independentVerify(t *testing.T, token string, pub ed25519.PublicKey) (header, claims []byte) {
	t.Helper()
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		t.Fatalf("%d parts", len(parts))
	}
	var err error
	if header, err = b64.DecodeString(parts[0]); err != nil {
		t.Fatal(err)
	}
	if claims, err = b64.DecodeString(parts[1]); err != nil {
		t.Fatal(err)
	}
	sig, err := b64.DecodeString(parts[2])
	if err != nil {
		t.Fatal(err)
	}
	if !ed25519.Verify(pub, []byte(parts[0]+"."+parts[1]), sig) {
		t.Fatal("the signature does not verify with crypto/ed25519")
	}
	return header, claims
}

// SPEC §3 (b): what Mint produces is a plain Ed25519 JWS in the reference's
// shape.
func TestInteropMintVerifiesIndependently(t *testing.T) {
	issuer := newAgent(t, "urn:asap:agent:self")
	now := time.Now()
	m, err := Mint(Grant{Issuer: issuer.urn, Delegate: "urn:asap:agent:client", Scopes: []string{ScopeTaskExecute},
		TTL: time.Hour, MaxTasks: i64(3), Now: now}, issuer.priv)
	if err != nil {
		t.Fatal(err)
	}
	hb, cb := independentVerify(t, m.Token, issuer.pub)
	var hdr map[string]any
	if err := json.Unmarshal(hb, &hdr); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(hdr, map[string]any{"alg": "Ed25519", "typ": "JWT"}) {
		t.Errorf("header %s, want exactly {\"alg\":\"Ed25519\",\"typ\":\"JWT\"}", hb)
	}
	var claims map[string]json.RawMessage
	if err := json.Unmarshal(cb, &claims); err != nil {
		t.Fatal(err)
	}
	var names []string
	for k := range claims {
		names = append(names, k)
	}
	sort.Strings(names)
	want := []string{"aud", "exp", "iat", "iss", "jti", "scp", "x-asap-constraints"}
	if !reflect.DeepEqual(names, want) {
		t.Errorf("claim names %v, want %v", names, want)
	}
	var c struct {
		Iss, Aud, Jti string
		Iat, Exp      int64
		Scp           []string
		X             map[string]int64 `json:"x-asap-constraints"`
	}
	if err := json.Unmarshal(cb, &c); err != nil {
		t.Fatalf("claims not in the reference's types: %v (%s)", err, cb)
	}
	if c.Iss != issuer.urn || c.Aud != "urn:asap:agent:client" || c.Iat != now.Unix() || c.Exp != now.Add(time.Hour).Unix() ||
		!reflect.DeepEqual(c.Scp, []string{ScopeTaskExecute}) || !reflect.DeepEqual(c.X, map[string]int64{"max_tasks": 3}) {
		t.Errorf("claims %s", cb)
	}
	if !strings.HasPrefix(c.Jti, "del_") {
		t.Fatalf("jti %q", c.Jti)
	}
	if _, err := ulid.ParseStrict(strings.TrimPrefix(c.Jti, "del_")); err != nil {
		t.Errorf("jti %q is not del_ + ULID: %v", c.Jti, err)
	}
	if m.Chain != m.Token || m.ParentID != "" || m.Claims.ID != c.Jti {
		t.Errorf("Minted %+v", m)
	}
	// And the package's own verifier agrees.
	v := &Verifier{Trusted: map[string]ed25519.PublicKey{issuer.urn: issuer.pub}}
	mustVerify(t, v, m.Chain)
}

// Every link of a minted chain is an independently verifiable Ed25519 JWS,
// each child naming its parent by hash.
func TestInteropMintedChainIndependently(t *testing.T) {
	f := newFixture(t)
	root, err := Mint(Grant{Issuer: f.self.urn, Delegate: f.alice.urn, Scopes: []string{ScopeTaskExecute},
		CnfJWK: PublicJWK(f.alice.pub)}, f.self.priv)
	if err != nil {
		t.Fatal(err)
	}
	v := &Verifier{Trusted: map[string]ed25519.PublicKey{f.self.urn: f.self.pub}}
	parent := mustVerify(t, v, root.Chain)
	child, err := Mint(Grant{Issuer: f.alice.urn, Delegate: f.bob.urn, Scopes: []string{ScopeTaskExecute}, Parent: parent}, f.alice.priv)
	if err != nil {
		t.Fatal(err)
	}
	parts := strings.Split(child.Chain, ",")
	if len(parts) != 2 || parts[0] != child.Token || parts[1] != root.Token {
		t.Fatalf("chain %q", child.Chain)
	}
	_, cb := independentVerify(t, parts[0], f.alice.pub)
	_, rb := independentVerify(t, parts[1], f.self.pub)
	var cc struct {
		Prf []string `json:"prf"`
	}
	_ = json.Unmarshal(cb, &cc)
	if len(cc.Prf) != 1 || cc.Prf[0] != HashOf(parts[1]) {
		t.Errorf("prf %v, want [%s]", cc.Prf, HashOf(parts[1]))
	}
	var rc struct {
		Cnf struct {
			JWK map[string]string `json:"jwk"`
		} `json:"cnf"`
	}
	_ = json.Unmarshal(rb, &rc)
	if !reflect.DeepEqual(rc.Cnf.JWK, map[string]string{"kty": "OKP", "crv": "Ed25519", "x": b64.EncodeToString(f.alice.pub)}) {
		t.Errorf("cnf.jwk %v", rc.Cnf.JWK)
	}
	mustVerify(t, v, child.Chain)
}
