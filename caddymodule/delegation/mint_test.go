package delegation

import (
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"
)

// mintRoot mints a root self → alice (cnf alice by default) at t0 and
// returns it with its verified chain.
func (f *fixture) mintRoot(t *testing.T, g Grant) (*Minted, *Chain) {
	t.Helper()
	if g.Issuer == "" {
		g.Issuer = f.self.urn
	}
	if g.Delegate == "" {
		g.Delegate = f.alice.urn
	}
	if g.Scopes == nil {
		g.Scopes = []string{ScopeTaskExecute, ScopeDataRead}
	}
	if g.CnfJWK == nil {
		g.CnfJWK = PublicJWK(f.alice.pub)
	}
	if g.Now.IsZero() {
		g.Now = f.t0
	}
	m, err := Mint(g, f.self.priv)
	if err != nil {
		t.Fatal(err)
	}
	return m, mustVerify(t, f.verifier(), m.Chain)
}

func TestMintDefaults(t *testing.T) {
	f := newFixture(t)
	m, err := Mint(Grant{Issuer: f.self.urn, Delegate: f.alice.urn, Scopes: []string{ScopeTaskExecute}, Now: f.t0}, f.self.priv)
	if err != nil {
		t.Fatal(err)
	}
	c := m.Claims
	if int64(*c.IssuedAt) != f.t0.Unix() || int64(*c.Expiry) != f.t0.Add(24*time.Hour).Unix() {
		t.Errorf("iat %d exp %d, want a 24h TTL from %d", *c.IssuedAt, *c.Expiry, f.t0.Unix())
	}
	if DefaultTTL != 24*time.Hour || MaxTTL != 365*24*time.Hour {
		t.Error("documented limits changed")
	}
	if c.Issuer != f.self.urn || string(c.Audience) != f.alice.urn || !reflect.DeepEqual(c.Scopes, []string{ScopeTaskExecute}) {
		t.Errorf("claims %+v", c)
	}
	if c.NotBefore != nil || c.Constraints != nil || c.Proof != nil || c.Confirmation != nil || m.ParentID != "" {
		t.Errorf("unasked members: %+v", c)
	}
	if !strings.HasPrefix(c.ID, "del_") || len(c.ID) != 4+26 {
		t.Errorf("jti %q", c.ID)
	}
	if m.Chain != m.Token {
		t.Error("a root's chain is its token")
	}
	// The parsed token says the same as Minted.Claims.
	l, rej := ParseLink(m.Token)
	if rej != nil {
		t.Fatal(rej)
	}
	if !reflect.DeepEqual(l.Claims, m.Claims) {
		t.Errorf("token claims %+v, Minted.Claims %+v", l.Claims, m.Claims)
	}
	// Without Now, the real clock.
	before := time.Now().Unix()
	m, err = Mint(Grant{Issuer: f.self.urn, Delegate: f.alice.urn, Scopes: []string{ScopeAll}}, f.self.priv)
	if err != nil {
		t.Fatal(err)
	}
	if iat := int64(*m.Claims.IssuedAt); iat < before || iat > time.Now().Unix() {
		t.Errorf("iat %d is not now", iat)
	}
	v := f.verifier()
	v.Now = nil
	mustVerify(t, v, m.Chain)
	// Ids are unique and sort in minting order.
	prev := ""
	for i := 0; i < 200; i++ {
		m, err := Mint(Grant{Issuer: f.self.urn, Delegate: f.alice.urn, Scopes: []string{ScopeAll}}, f.self.priv)
		if err != nil {
			t.Fatal(err)
		}
		if m.Claims.ID <= prev {
			t.Fatalf("jti %s after %s", m.Claims.ID, prev)
		}
		prev = m.Claims.ID
	}
}

func TestMintTTL(t *testing.T) {
	f := newFixture(t)
	cases := []struct {
		ttl time.Duration
		ok  bool
	}{
		{0, true}, {time.Second, true}, {time.Hour, true}, {MaxTTL, true},
		{time.Second - 1, false}, {time.Millisecond, false}, {-time.Hour, false}, {MaxTTL + time.Second, false}, {100 * 365 * 24 * time.Hour, false},
	}
	for _, tc := range cases {
		m, err := Mint(Grant{Issuer: f.self.urn, Delegate: f.alice.urn, Scopes: []string{ScopeAll}, TTL: tc.ttl, Now: f.t0}, f.self.priv)
		if !tc.ok {
			if !errors.Is(err, ErrInvalidGrant) {
				t.Errorf("TTL %v: err %v, want ErrInvalidGrant", tc.ttl, err)
			}
			continue
		}
		if err != nil {
			t.Errorf("TTL %v: %v", tc.ttl, err)
			continue
		}
		want := tc.ttl
		if want == 0 {
			want = DefaultTTL
		}
		if got := time.Duration(int64(*m.Claims.Expiry)-int64(*m.Claims.IssuedAt)) * time.Second; got != want {
			t.Errorf("TTL %v: token lives %v", tc.ttl, got)
		}
	}
}

func TestMintRefusesBadGrants(t *testing.T) {
	f := newFixture(t)
	base := Grant{Issuer: f.self.urn, Delegate: f.alice.urn, Scopes: []string{ScopeTaskExecute}, Now: f.t0}
	cases := map[string]func(g *Grant){
		"no delegate":         func(g *Grant) { g.Delegate = "" },
		"no scopes":           func(g *Grant) { g.Scopes = nil },
		"empty scope list":    func(g *Grant) { g.Scopes = []string{} },
		"blank scope":         func(g *Grant) { g.Scopes = []string{ScopeDataRead, "  "} },
		"empty scope":         func(g *Grant) { g.Scopes = []string{""} },
		"scope with a comma":  func(g *Grant) { g.Scopes = []string{"data.read,data.write"} },
		"scope with NUL":      func(g *Grant) { g.Scopes = []string{"data.read\x00"} },
		"negative max_tasks":  func(g *Grant) { g.MaxTasks = i64(-1) },
		"cnf_jwk RSA":         func(g *Grant) { g.CnfJWK = json.RawMessage(`{"kty":"RSA","n":"AQAB","e":"AQAB"}`) },
		"cnf_jwk short x":     func(g *Grant) { g.CnfJWK = json.RawMessage(`{"kty":"OKP","crv":"Ed25519","x":"AAAA"}`) },
		"cnf_jwk X25519":      func(g *Grant) { g.CnfJWK = json.RawMessage(`{"kty":"OKP","crv":"X25519","x":"` + rfc8037X + `"}`) },
		"cnf_jwk not a JSON":  func(g *Grant) { g.CnfJWK = json.RawMessage(`nope`) },
		"cnf_jwk an array":    func(g *Grant) { g.CnfJWK = json.RawMessage(`[1]`) },
		"TTL below a second":  func(g *Grant) { g.TTL = time.Millisecond },
		"TTL beyond the year": func(g *Grant) { g.TTL = MaxTTL + time.Hour },
	}
	for name, mod := range cases {
		g := base
		mod(&g)
		m, err := Mint(g, f.self.priv)
		if !errors.Is(err, ErrInvalidGrant) {
			t.Errorf("%s: Mint = %v, %v; want ErrInvalidGrant", name, m, err)
		}
	}
	// No usable key: an error, but not the caller's grant's fault.
	for _, key := range []ed25519.PrivateKey{nil, f.self.priv[:32]} {
		if _, err := Mint(base, key); err == nil || errors.Is(err, ErrInvalidGrant) {
			t.Errorf("key of %d bytes: %v", len(key), err)
		}
	}
	// max_tasks 0 is a limit, not an absence.
	g := base
	g.MaxTasks = i64(0)
	m, err := Mint(g, f.self.priv)
	if err != nil || m.Claims.Constraints == nil || *m.Claims.Constraints.MaxTasks != 0 {
		t.Fatalf("max_tasks 0: %v %+v", err, m)
	}
	if !strings.Contains(string(mustPayload(t, m.Token)), `"x-asap-constraints":{"max_tasks":0}`) {
		t.Errorf("max_tasks 0 not written: %s", mustPayload(t, m.Token))
	}
}

func mustPayload(t *testing.T, tok string) []byte {
	t.Helper()
	b, err := b64.DecodeString(strings.Split(tok, ".")[1])
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func mustHeader(t *testing.T, tok string) map[string]any {
	t.Helper()
	b, err := b64.DecodeString(strings.Split(tok, ".")[0])
	if err != nil {
		t.Fatal(err)
	}
	var h map[string]any
	if err := json.Unmarshal(b, &h); err != nil {
		t.Fatal(err)
	}
	return h
}

func TestMintCnfJWK(t *testing.T) {
	f := newFixture(t)
	// Extra members are dropped; the bound key is the canonical JWK.
	in := `{"kid":"alice-1","use":"sig","x":"` + b64.EncodeToString(f.alice.pub) + `","kty":"OKP","crv":"Ed25519"}`
	m, err := Mint(Grant{Issuer: f.self.urn, Delegate: f.alice.urn, Scopes: []string{ScopeAll}, CnfJWK: json.RawMessage(in), Now: f.t0}, f.self.priv)
	if err != nil {
		t.Fatal(err)
	}
	if string(m.Claims.Confirmation.JWK) != string(PublicJWK(f.alice.pub)) || m.Claims.Confirmation.JKT != "" {
		t.Errorf("cnf %s / %q", m.Claims.Confirmation.JWK, m.Claims.Confirmation.JKT)
	}
	// The delegate can now re-delegate without any configuration here.
	parent := mustVerify(t, f.verifier(), m.Chain)
	child, err := Mint(Grant{Issuer: f.alice.urn, Delegate: f.bob.urn, Scopes: []string{ScopeDataRead}, Parent: parent, Now: f.t0}, f.alice.priv)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := mustHeader(t, child.Token)["jwk"]; ok {
		t.Error("a cnf.jwk parent does not need a header jwk")
	}
	mustVerify(t, f.verifier(), child.Chain)
}

func TestMintUnderParent(t *testing.T) {
	f := newFixture(t)
	_, parent := f.mintRoot(t, Grant{TTL: time.Hour, MaxTasks: i64(10)})
	pexp := *parent.Leaf().Claims.Expiry

	t.Run("clamped to the parent's exp, max_tasks inherited", func(t *testing.T) {
		m, err := Mint(Grant{Issuer: f.alice.urn, Delegate: f.bob.urn, Scopes: []string{ScopeTaskExecute}, Parent: parent, Now: f.t0.Add(time.Minute)}, f.alice.priv)
		if err != nil {
			t.Fatal(err)
		}
		if *m.Claims.Expiry != pexp {
			t.Errorf("exp %d, want the parent's %d", *m.Claims.Expiry, pexp)
		}
		if m.Claims.Constraints == nil || *m.Claims.Constraints.MaxTasks != 10 {
			t.Errorf("max_tasks not inherited: %+v", m.Claims.Constraints)
		}
		if len(m.Claims.Proof) != 1 || m.Claims.Proof[0] != parent.Leaf().Hash {
			t.Errorf("prf %v", m.Claims.Proof)
		}
		if m.ParentID != parent.Leaf().Claims.ID {
			t.Errorf("ParentID %q", m.ParentID)
		}
		if m.Chain != m.Token+","+parent.Leaf().Raw {
			t.Errorf("Chain is not token,parent")
		}
		if m.Claims.NotBefore != nil {
			t.Error("nbf without a parent nbf")
		}
		v := f.verifier()
		v.Now = func() time.Time { return f.t0.Add(time.Minute) }
		c := mustVerify(t, v, m.Chain)
		if rej := v.CheckCall(c, f.bob.urn, f.self.urn, ScopeTaskExecute); rej != nil {
			t.Error(rej)
		}
	})
	t.Run("shorter TTL kept", func(t *testing.T) {
		m, err := Mint(Grant{Issuer: f.alice.urn, Delegate: f.bob.urn, Scopes: []string{ScopeTaskExecute}, Parent: parent, TTL: time.Minute, Now: f.t0}, f.alice.priv)
		if err != nil {
			t.Fatal(err)
		}
		if int64(*m.Claims.Expiry) != f.t0.Add(time.Minute).Unix() {
			t.Errorf("exp %d", *m.Claims.Expiry)
		}
	})
	t.Run("smaller max_tasks kept", func(t *testing.T) {
		m, err := Mint(Grant{Issuer: f.alice.urn, Delegate: f.bob.urn, Scopes: []string{ScopeTaskExecute}, Parent: parent, MaxTasks: i64(3), Now: f.t0}, f.alice.priv)
		if err != nil {
			t.Fatal(err)
		}
		if *m.Claims.Constraints.MaxTasks != 3 {
			t.Errorf("max_tasks %d", *m.Claims.Constraints.MaxTasks)
		}
		mustVerify(t, f.verifier(), m.Chain)
	})
	refused := map[string]Grant{
		"scope escalation":         {Issuer: f.alice.urn, Delegate: f.bob.urn, Scopes: []string{ScopeDataWrite}, Parent: parent},
		"* under specific scopes":  {Issuer: f.alice.urn, Delegate: f.bob.urn, Scopes: []string{ScopeAll}, Parent: parent},
		"max_tasks escalation":     {Issuer: f.alice.urn, Delegate: f.bob.urn, Scopes: []string{ScopeTaskExecute}, Parent: parent, MaxTasks: i64(11)},
		"parent delegated to bob":  {Issuer: f.bob.urn, Delegate: f.carol.urn, Scopes: []string{ScopeTaskExecute}, Parent: parent},
		"parent delegated, no iss": {Issuer: "", Delegate: f.carol.urn, Scopes: []string{ScopeTaskExecute}, Parent: parent},
	}
	for name, g := range refused {
		g.Now = f.t0
		if m, err := Mint(g, f.alice.priv); !errors.Is(err, ErrInvalidGrant) {
			t.Errorf("%s: Mint = %+v, %v; want ErrInvalidGrant", name, m, err)
		}
	}

	t.Run("parent nbf in the future is kept", func(t *testing.T) {
		nbf := f.at(10 * time.Minute)
		r := f.sign(with(f.rootClaims(), "nbf", nbf), f.self)
		v := f.verifier()
		v.Now = func() time.Time { return f.t0.Add(11 * time.Minute) }
		p := mustVerify(t, v, r)
		m, err := Mint(Grant{Issuer: f.alice.urn, Delegate: f.bob.urn, Scopes: []string{ScopeTaskExecute}, Parent: p, Now: f.t0}, f.alice.priv)
		if err != nil {
			t.Fatal(err)
		}
		if m.Claims.NotBefore == nil || int64(*m.Claims.NotBefore) != nbf {
			t.Errorf("nbf %v, want %d", m.Claims.NotBefore, nbf)
		}
		mustVerify(t, v, m.Chain)
	})

	t.Run("unlimited parent, unlimited child", func(t *testing.T) {
		_, p := f.mintRoot(t, Grant{TTL: time.Hour, Scopes: []string{ScopeAll}})
		m, err := Mint(Grant{Issuer: f.alice.urn, Delegate: f.bob.urn, Scopes: []string{ScopeAll}, Parent: p, Now: f.t0}, f.alice.priv)
		if err != nil {
			t.Fatal(err)
		}
		if m.Claims.Constraints != nil {
			t.Errorf("constraints %+v", m.Claims.Constraints)
		}
		mustVerify(t, f.verifier(), m.Chain)
	})
}

// Three levels: Chain is the token followed by the whole parent chain.
func TestMintChainValue(t *testing.T) {
	f := newFixture(t)
	root, p1 := f.mintRoot(t, Grant{TTL: time.Hour, MaxTasks: i64(5)})
	c1, err := Mint(Grant{Issuer: f.alice.urn, Delegate: f.bob.urn, Scopes: []string{ScopeTaskExecute}, Parent: p1, CnfJWK: PublicJWK(f.bob.pub), Now: f.t0}, f.alice.priv)
	if err != nil {
		t.Fatal(err)
	}
	p2 := mustVerify(t, f.verifier(), c1.Chain)
	c2, err := Mint(Grant{Issuer: f.bob.urn, Delegate: f.carol.urn, Scopes: []string{ScopeTaskExecute}, Parent: p2, MaxTasks: i64(2), Now: f.t0}, f.bob.priv)
	if err != nil {
		t.Fatal(err)
	}
	if c2.Chain != c2.Token+","+c1.Token+","+root.Token {
		t.Errorf("chain is not leaf,parent,root")
	}
	if c2.ParentID != c1.Claims.ID || c1.ParentID != root.Claims.ID {
		t.Error("ParentID")
	}
	ch := mustVerify(t, f.verifier(), c2.Chain)
	if got := ch.JTIs(); !reflect.DeepEqual(got, []string{c2.Claims.ID, c1.Claims.ID, root.Claims.ID}) {
		t.Errorf("JTIs %v", got)
	}
	if rej := f.verifier().CheckCall(ch, f.carol.urn, f.self.urn, ScopeTaskExecute); rej != nil {
		t.Error(rej)
	}
}

// A parent binding the delegate's key by thumbprint: the child's header
// carries the signer's jwk.
func TestMintUnderJKTParent(t *testing.T) {
	f := newFixture(t)
	r := f.sign(with(f.rootClaims(), "cnf", map[string]any{"jkt": Thumbprint(f.alice.pub)}), f.self)
	parent := mustVerify(t, f.verifier(), r)
	m, err := Mint(Grant{Issuer: f.alice.urn, Delegate: f.bob.urn, Scopes: []string{ScopeTaskExecute}, Parent: parent, Now: f.t0}, f.alice.priv)
	if err != nil {
		t.Fatal(err)
	}
	h := mustHeader(t, m.Token)
	if h["alg"] != "Ed25519" || h["typ"] != "JWT" || len(h) != 3 {
		t.Errorf("header %v", h)
	}
	jwkJSON, _ := json.Marshal(h["jwk"])
	pub, err := ParsePublicJWK(jwkJSON)
	if err != nil || !pub.Equal(f.alice.pub) {
		t.Fatalf("header jwk %s: %v", jwkJSON, err)
	}
	if Thumbprint(pub) != parent.Leaf().Claims.Confirmation.JKT {
		t.Error("thumbprint")
	}
	c := mustVerify(t, f.verifier(), m.Chain)
	if len(c.Leaf().HeaderJWK) == 0 {
		t.Error("HeaderJWK not read")
	}
	// Another key cannot sign under that parent.
	if _, err := Mint(Grant{Issuer: f.alice.urn, Delegate: f.bob.urn, Scopes: []string{ScopeTaskExecute}, Parent: parent, Now: f.t0}, f.evil.priv); !errors.Is(err, ErrInvalidGrant) {
		t.Errorf("a foreign key minted under a jkt parent: %v", err)
	}
}

// Under a parent binding the delegate's key with cnf.jwk, Mint refuses to
// sign with another key (the token could never verify).
func TestMintUnderJWKParentWithWrongKey(t *testing.T) {
	f := newFixture(t)
	_, parent := f.mintRoot(t, Grant{TTL: time.Hour}) // cnf.jwk = alice
	m, err := Mint(Grant{Issuer: f.alice.urn, Delegate: f.bob.urn, Scopes: []string{ScopeTaskExecute}, Parent: parent, Now: f.t0}, f.evil.priv)
	if err == nil {
		_, rej := f.verifier().Verify(m.Chain)
		t.Fatalf("mint.go:133-145 checks the signer against the parent's cnf.jkt but not cnf.jwk: Mint with a key other than the bound one returns a token that Verify refuses (%v); expected ErrInvalidGrant", rej)
	}
	if !errors.Is(err, ErrInvalidGrant) {
		t.Errorf("err %v, want ErrInvalidGrant", err)
	}
}

// A parent minted by an issuer whose clock is 2 s ahead verifies (within
// Skew), and a child Mint produces under it right away verifies too: the
// parent's iat is not a bound on its children.
func TestMintUnderParentFromFastClock(t *testing.T) {
	f := newFixture(t)
	_, parent := f.mintRoot(t, Grant{TTL: time.Hour, Now: f.t0.Add(2 * time.Second)})
	m, err := Mint(Grant{Issuer: f.alice.urn, Delegate: f.bob.urn, Scopes: []string{ScopeTaskExecute}, Parent: parent, Now: f.t0}, f.alice.priv)
	if err != nil {
		t.Fatal(err)
	}
	if _, rej := f.verifier().Verify(m.Chain); rej != nil {
		t.Fatalf("mint.go:128 / verify.go:238,250: a child minted under a parent whose iat is 2 s ahead is refused as %s", rej.Reason)
	}
}
