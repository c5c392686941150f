package caddymodule

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwa"
	"github.com/lestrrat-go/jwx/v2/jwk"
	"github.com/lestrrat-go/jwx/v2/jws"
	"github.com/lestrrat-go/jwx/v2/jwt"
)

// These tests run a real authorization server's JWKS endpoint
// (httptest.Server) and real Caddy with asap_api, and sign real tokens.

const (
	testIssuer   = "https://idp.test/"
	testAudience = "asap-sidecar"
	testSubject  = "urn:asap:agent:operator"
)

// idpKey is a signing key of the test authorization server.
type idpKey struct {
	alg  jwa.SignatureAlgorithm
	kid  string
	priv crypto.Signer
}

func newIDPKey(t testing.TB, alg jwa.SignatureAlgorithm, kid string) *idpKey {
	t.Helper()
	var priv crypto.Signer
	var err error
	switch alg {
	case jwa.RS256:
		priv, err = rsa.GenerateKey(rand.Reader, 2048)
	case jwa.ES256:
		priv, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case jwa.EdDSA:
		_, priv, err = ed25519.GenerateKey(rand.Reader)
	default:
		t.Fatalf("no test key for %s", alg)
	}
	if err != nil {
		t.Fatal(err)
	}
	return &idpKey{alg: alg, kid: kid, priv: priv}
}

// public is the key as the JWKS publishes it.
func (k *idpKey) public(t testing.TB) jwk.Key {
	t.Helper()
	pub, err := jwk.FromRaw(k.priv.Public())
	if err != nil {
		t.Fatal(err)
	}
	_ = pub.Set(jwk.KeyIDKey, k.kid)
	_ = pub.Set(jwk.AlgorithmKey, k.alg)
	_ = pub.Set(jwk.KeyUsageKey, "sig")
	return pub
}

// sign makes a token with the standard good claims, changed by edit
// (a nil value removes a claim).
func (k *idpKey) sign(t testing.TB, edit map[string]any) string {
	t.Helper()
	now := time.Now()
	claims := map[string]any{
		"iss": testIssuer, "aud": testAudience, "sub": testSubject,
		"iat": now.Unix(), "exp": now.Add(5 * time.Minute).Unix(), "scope": "asap:admin",
	}
	for name, v := range edit {
		if v == nil {
			delete(claims, name)
		} else {
			claims[name] = v
		}
	}
	tok := jwt.New()
	for name, v := range claims {
		if err := tok.Set(name, v); err != nil {
			t.Fatal(err)
		}
	}
	hdr := jws.NewHeaders()
	if k.kid != "" {
		_ = hdr.Set(jws.KeyIDKey, k.kid)
	}
	b, err := jwt.Sign(tok, jwt.WithKey(k.alg, k.priv, jws.WithProtectedHeaders(hdr)))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// jwksServer is the authorization server's JWKS endpoint.
type jwksServer struct {
	srv     *httptest.Server
	mu      sync.Mutex
	keys    []jwk.Key
	failing bool
	fetches atomic.Int32
}

func newJWKSServer(t testing.TB, keys ...jwk.Key) *jwksServer {
	t.Helper()
	s := &jwksServer{keys: keys}
	s.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.fetches.Add(1)
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.failing {
			http.Error(w, "down for maintenance", http.StatusInternalServerError)
			return
		}
		set := jwk.NewSet()
		for _, k := range s.keys {
			_ = set.AddKey(k)
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(set)
	}))
	t.Cleanup(s.srv.Close)
	return s
}

func (s *jwksServer) url() string { return s.srv.URL + "/.well-known/jwks.json" }

func (s *jwksServer) serve(keys ...jwk.Key) {
	s.mu.Lock()
	s.keys = keys
	s.mu.Unlock()
}

func (s *jwksServer) setFailing(f bool) {
	s.mu.Lock()
	s.failing = f
	s.mu.Unlock()
}

// captureVerifier makes the next provisioned asap_api hand its verifier
// to the test.
func captureVerifier(t testing.TB) func() *oauthVerifier {
	t.Helper()
	var mu sync.Mutex
	var got *oauthVerifier
	testHookOAuth = func(v *oauthVerifier) {
		mu.Lock()
		got = v
		mu.Unlock()
	}
	t.Cleanup(func() { testHookOAuth = nil })
	return func() *oauthVerifier {
		mu.Lock()
		defer mu.Unlock()
		if got == nil {
			t.Fatal("no asap_api oauth2 verifier was provisioned")
		}
		return got
	}
}

// setRefetchGap changes how often an unknown key may trigger a fetch and
// forgets the last one.
func (v *oauthVerifier) setRefetchGap(gap time.Duration, last time.Time) {
	v.mu.Lock()
	v.refetchGap, v.lastRefresh = gap, last
	v.mu.Unlock()
}

func oauthMount(bearer, oauthOpts string) string {
	b := ""
	if bearer != "" {
		b = "bearer " + bearer + "\n\t\t"
	}
	return "asap_api {\n\t\t" + b + "oauth2 {\n\t\t\t" + strings.ReplaceAll(strings.TrimSpace(oauthOpts), "\n", "\n\t\t\t") + "\n\t\t}\n\t}"
}

func jwksOpts(s *jwksServer) string {
	return "jwks_url " + s.url() + "\nissuer " + testIssuer + "\naudience " + testAudience + "\nrefresh 1h"
}

type apiAnswer struct {
	status    int
	challenge string
	body      string
}

func callAPI(t testing.TB, method, url, token, body string) apiAnswer {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return apiAnswer{resp.StatusCode, resp.Header.Get("WWW-Authenticate"), string(b)}
}

func (a apiAnswer) want(t testing.TB, what string, status int, challengeHas ...string) {
	t.Helper()
	if a.status != status {
		t.Fatalf("%s: status %d, want %d (WWW-Authenticate %q, body %s)", what, a.status, status, a.challenge, a.body)
	}
	for _, s := range challengeHas {
		if !strings.Contains(a.challenge, s) {
			t.Fatalf("%s: WWW-Authenticate %q lacks %q", what, a.challenge, s)
		}
	}
	if status >= 400 && !strings.Contains(a.body, `"detail"`) {
		t.Fatalf("%s: body %s is not an API error", what, a.body)
	}
}

func wantInvalidToken(t testing.TB, what string, a apiAnswer, descHas string) {
	t.Helper()
	a.want(t, what, http.StatusUnauthorized, `Bearer realm="asap"`, `error="invalid_token"`, `error_description="`, descHas)
	if !strings.Contains(a.body, "Invalid authentication token") {
		t.Fatalf("%s: body %s", what, a.body)
	}
}

func TestOAuthAccessTokensOnPublicMount(t *testing.T) {
	rs := newIDPKey(t, jwa.RS256, "rsa-1")
	es := newIDPKey(t, jwa.ES256, "ec-1")
	ed := newIDPKey(t, jwa.EdDSA, "ed-1")
	idp := newJWKSServer(t, rs.public(t), es.public(t), ed.public(t))
	verifier := captureVerifier(t)
	s := startSidecarWith(t, externalDemoAgent(t), "agent urn:asap:agent:demo", oauthMount(testBearer, jwksOpts(idp)))
	// No refetch on an unknown key in this test: the outcomes below must
	// come from the set fetched once.
	verifier().setRefetchGap(time.Hour, time.Now())
	usage := s.url + "/usage/summary"

	for _, k := range []*idpKey{rs, es, ed} {
		callAPI(t, "GET", usage, k.sign(t, nil), "").want(t, "admin token "+k.alg.String(), http.StatusOK)
	}
	if n := idp.fetches.Load(); n != 1 {
		t.Fatalf("JWKS fetched %d times for three tokens, want once (cached)", n)
	}
	callAPI(t, "GET", usage, rs.sign(t, map[string]any{"scope": nil, "scp": []string{"asap:read", "asap:admin"}}), "").
		want(t, "scope in scp", http.StatusOK)
	callAPI(t, "GET", usage, rs.sign(t, map[string]any{"scope": []string{"asap:admin"}}), "").
		want(t, "scope as an array", http.StatusOK)
	callAPI(t, "GET", usage, rs.sign(t, map[string]any{"aud": []string{"other", testAudience}}), "").
		want(t, "audience among several", http.StatusOK)
	callAPI(t, "GET", usage, testBearer, "").want(t, "static bearer beside oauth2", http.StatusOK)

	// Valid tokens without the scope: 403 naming the scope.
	for name, edit := range map[string]map[string]any{
		"wrong scope": {"scope": "asap:read"},
		"no scope":    {"scope": nil},
		"scope tail":  {"scope": "asap:administrator"},
	} {
		a := callAPI(t, "GET", usage, rs.sign(t, edit), "")
		a.want(t, name, http.StatusForbidden, `error="insufficient_scope"`, `scope="asap:admin"`)
		if !strings.Contains(a.body, "Insufficient scope") {
			t.Fatalf("%s: body %s", name, a.body)
		}
	}

	// Invalid tokens: 401 invalid_token, with what was wrong.
	hour := time.Hour
	for _, c := range []struct {
		name, token, desc string
	}{
		{"wrong audience", rs.sign(t, map[string]any{"aud": "someone-else"}), "audience"},
		{"wrong issuer", rs.sign(t, map[string]any{"iss": "https://evil.test/"}), "issuer"},
		{"expired", rs.sign(t, map[string]any{"exp": time.Now().Add(-hour).Unix(), "iat": time.Now().Add(-2 * hour).Unix()}), "expired"},
		{"not yet valid", rs.sign(t, map[string]any{"nbf": time.Now().Add(hour).Unix()}), "not valid yet"},
		{"no exp", rs.sign(t, map[string]any{"exp": nil}), "required claim"},
		{"no sub", rs.sign(t, map[string]any{"sub": nil}), "required claim"},
		{"unknown kid", newIDPKey(t, jwa.ES256, "ec-unknown").sign(t, nil), "not trusted"},
		{"known kid, other key", (&idpKey{alg: jwa.ES256, kid: "ec-1", priv: newIDPKey(t, jwa.ES256, "").priv}).sign(t, nil), "signature"},
		{"alg of another key type", (&idpKey{alg: jwa.ES256, kid: "rsa-1", priv: es.priv}).sign(t, nil), "not trusted"},
		{"alg none", unsignedToken(t, "rsa-1"), "algorithm"},
		{"HS256 keyed with the public key", hmacWithPublicKey(t, rs), "algorithm"},
		{"tampered claims", withAdminClaims(t, rs.sign(t, map[string]any{"scope": "asap:read"})), "signature"},
		{"garbage", "not-a-token", "compact JWT"},
		{"wrong bearer", "wrong-credential-xxxxxxxx", "compact JWT"},
	} {
		wantInvalidToken(t, c.name, callAPI(t, "GET", usage, c.token, ""), c.desc)
	}

	// Missing credentials: 401 with a bare challenge (RFC 6750 §3.1).
	a := callAPI(t, "GET", usage, "", "")
	a.want(t, "no token", http.StatusUnauthorized)
	if a.challenge != `Bearer realm="asap"` || !strings.Contains(a.body, "Authentication required") {
		t.Fatalf("no token: %q %s", a.challenge, a.body)
	}

	// Paths outside the API are not asked for credentials.
	if code := getJSON(t, s.url+"/.well-known/asap/manifest.json", nil); code != 200 {
		t.Fatalf("manifest through the site: %d", code)
	}
}

// unsignedToken is an alg:none token with good claims.
func unsignedToken(t testing.TB, kid string) string {
	t.Helper()
	enc := base64.RawURLEncoding.EncodeToString
	hdr, _ := json.Marshal(map[string]any{"alg": "none", "typ": "JWT", "kid": kid})
	claims, _ := json.Marshal(map[string]any{"iss": testIssuer, "aud": testAudience, "sub": testSubject,
		"exp": time.Now().Add(time.Minute).Unix(), "scope": "asap:admin"})
	return enc(hdr) + "." + enc(claims) + "."
}

// hmacWithPublicKey is the key-confusion attack: HS256 with the server's
// public key (as PEM, as it is published) as the secret.
func hmacWithPublicKey(t testing.TB, k *idpKey) string {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(k.priv.Public())
	if err != nil {
		t.Fatal(err)
	}
	secret := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
	return (&idpKey{alg: jwa.HS256, kid: k.kid}).signWith(t, secret)
}

func (k *idpKey) signWith(t testing.TB, key any) string {
	t.Helper()
	tok := jwt.New()
	_ = tok.Set("iss", testIssuer)
	_ = tok.Set("aud", testAudience)
	_ = tok.Set("sub", testSubject)
	_ = tok.Set("exp", time.Now().Add(time.Minute).Unix())
	_ = tok.Set("scope", "asap:admin")
	hdr := jws.NewHeaders()
	_ = hdr.Set(jws.KeyIDKey, k.kid)
	b, err := jwt.Sign(tok, jwt.WithKey(k.alg, key, jws.WithProtectedHeaders(hdr)))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// withAdminClaims swaps a token's claims for admin ones, keeping its
// signature.
func withAdminClaims(t testing.TB, token string) string {
	t.Helper()
	parts := strings.Split(token, ".")
	claims, _ := json.Marshal(map[string]any{"iss": testIssuer, "aud": testAudience, "sub": testSubject,
		"exp": time.Now().Add(time.Minute).Unix(), "scope": "asap:admin"})
	return parts[0] + "." + base64.RawURLEncoding.EncodeToString(claims) + "." + parts[2]
}

func TestOAuthExecuteScopeMintsOnlyForItself(t *testing.T) {
	k := newIDPKey(t, jwa.ES256, "ec-1")
	idp := newJWKSServer(t, k.public(t))
	s := startSidecarWith(t, externalDemoAgent(t), "agent urn:asap:agent:demo", oauthMount("", jwksOpts(idp)))
	deleg := s.url + "/asap/delegations"
	exec := k.sign(t, map[string]any{"scope": "asap:read asap:execute"})

	a := callAPI(t, "POST", deleg, exec, `{"delegate":"`+testSubject+`","scopes":["task.execute"]}`)
	a.want(t, "execute token minting for its own sub", http.StatusCreated)
	var minted struct{ Token string }
	if err := json.Unmarshal([]byte(a.body), &minted); err != nil || minted.Token == "" {
		t.Fatalf("mint answer %s", a.body)
	}
	claims, err := jwt.ParseInsecure([]byte(minted.Token))
	if err != nil || claims.Audience()[0] != testSubject {
		t.Fatalf("minted token's aud: %v %v", claims, err)
	}
	callAPI(t, "POST", deleg+"/", exec, `{"delegate":"`+testSubject+`","scopes":["data.read"]}`).
		want(t, "trailing slash", http.StatusCreated)

	for name, body := range map[string]string{
		"another delegate":      `{"delegate":"urn:asap:agent:someone-else","scopes":["task.execute"]}`,
		"no delegate":           `{"scopes":["task.execute"]}`,
		"duplicate delegate":    `{"delegate":"` + testSubject + `","delegate":"urn:asap:agent:someone-else","scopes":["*"]}`,
		"case-variant delegate": `{"delegate":"` + testSubject + `","Delegate":"urn:asap:agent:someone-else","scopes":["*"]}`,
		"unknown field":         `{"delegate":"` + testSubject + `","scopes":["*"],"x":1}`,
		"not JSON":              `delegate=` + testSubject,
	} {
		callAPI(t, "POST", deleg, exec, body).want(t, "execute token, "+name, http.StatusForbidden,
			`error="insufficient_scope"`, `scope="asap:admin"`)
	}
	huge := `{"delegate":"` + testSubject + `","scopes":["` + strings.Repeat("x", maxMintBody) + `"]}`
	callAPI(t, "POST", deleg, exec, huge).want(t, "execute token, oversized body", http.StatusRequestEntityTooLarge)
	for _, c := range []struct{ method, path, body string }{
		{"GET", "/asap/delegations", ""},
		{"GET", "/asap/delegations/del_x", ""},
		{"DELETE", "/asap/delegations/del_x", ""},
		{"POST", "/asap/delegations/del_x", `{"delegate":"` + testSubject + `"}`},
		{"GET", "/usage", ""},
		{"POST", "/usage", `{}`},
		{"GET", "/audit", ""},
		{"GET", "/sla", ""},
	} {
		callAPI(t, c.method, s.url+c.path, exec, c.body).want(t, "execute token on "+c.method+" "+c.path,
			http.StatusForbidden, `error="insufficient_scope"`, `scope="asap:admin"`)
	}
	// Nothing was minted by the refused calls: two tokens in the ledger.
	admin := k.sign(t, nil)
	a = callAPI(t, "GET", deleg+"?active=false", admin, "")
	a.want(t, "admin lists", http.StatusOK)
	var list []map[string]any
	if err := json.Unmarshal([]byte(a.body), &list); err != nil || len(list) != 2 {
		t.Fatalf("delegations after the refused calls: %s", a.body)
	}
	// An admin token mints for anyone.
	callAPI(t, "POST", deleg, admin, `{"delegate":"urn:asap:agent:someone-else","scopes":["task.execute"]}`).
		want(t, "admin mints for another", http.StatusCreated)
	// The static bearer is refused when only oauth2 is configured.
	wantInvalidToken(t, "static bearer without bearer option", callAPI(t, "GET", s.url+"/usage", testBearer, ""), "compact JWT")
}

func TestOAuthKeyRotationPickedUpOnRefresh(t *testing.T) {
	oldKey := newIDPKey(t, jwa.ES256, "2026-01")
	newKey := newIDPKey(t, jwa.ES256, "2026-02")
	idp := newJWKSServer(t, oldKey.public(t))
	verifier := captureVerifier(t)
	s := startSidecarWith(t, externalDemoAgent(t), "agent urn:asap:agent:demo", oauthMount("", jwksOpts(idp)))
	v := verifier()
	v.setRefetchGap(time.Hour, time.Now())
	usage := s.url + "/usage/summary"

	callAPI(t, "GET", usage, oldKey.sign(t, nil), "").want(t, "old key before rotation", http.StatusOK)
	idp.serve(newKey.public(t))
	// The cached set still holds only the old key.
	wantInvalidToken(t, "new key before the refresh", callAPI(t, "GET", usage, newKey.sign(t, nil), ""), "not trusted")
	callAPI(t, "GET", usage, oldKey.sign(t, nil), "").want(t, "old key before the refresh", http.StatusOK)
	if n := idp.fetches.Load(); n != 1 {
		t.Fatalf("JWKS fetched %d times before the refresh, want 1", n)
	}

	// What the background refresh does when it comes due.
	if err := v.refreshNow(); err != nil {
		t.Fatal(err)
	}
	callAPI(t, "GET", usage, newKey.sign(t, nil), "").want(t, "new key after the refresh", http.StatusOK)
	wantInvalidToken(t, "old key after the refresh", callAPI(t, "GET", usage, oldKey.sign(t, nil), ""), "not trusted")
	if n := idp.fetches.Load(); n != 2 {
		t.Fatalf("JWKS fetched %d times, want 2", n)
	}

	// A failed refresh keeps the keys fetched before.
	idp.setFailing(true)
	if err := v.refreshNow(); err == nil {
		t.Fatal("refresh from a failing JWKS endpoint succeeded")
	}
	callAPI(t, "GET", usage, newKey.sign(t, nil), "").want(t, "new key after a failed refresh", http.StatusOK)

	// A reload stops the old config's background refresh; the new config
	// has its own.
	idp.setFailing(false)
	s.load(s.options)
	select {
	case <-v.ctx.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("the replaced config's JWKS cache is still running")
	}
	if verifier() == v {
		t.Fatal("the reload provisioned no new verifier")
	}
	callAPI(t, "GET", usage, newKey.sign(t, nil), "").want(t, "new key after a reload", http.StatusOK)
}

func TestOAuthUnknownKeyRefetchesOnce(t *testing.T) {
	oldKey := newIDPKey(t, jwa.EdDSA, "a")
	newKey := newIDPKey(t, jwa.EdDSA, "b")
	idp := newJWKSServer(t, oldKey.public(t))
	verifier := captureVerifier(t)
	s := startSidecarWith(t, externalDemoAgent(t), "agent urn:asap:agent:demo", oauthMount("", jwksOpts(idp)))
	v := verifier()
	v.setRefetchGap(time.Hour, time.Time{}) // one refetch allowed, then none for an hour
	usage := s.url + "/usage/summary"

	callAPI(t, "GET", usage, oldKey.sign(t, nil), "").want(t, "old key", http.StatusOK)
	idp.serve(oldKey.public(t), newKey.public(t))
	// A key the cache has not seen makes it fetch the set again.
	callAPI(t, "GET", usage, newKey.sign(t, nil), "").want(t, "new key, fetched on demand", http.StatusOK)
	if n := idp.fetches.Load(); n != 2 {
		t.Fatalf("JWKS fetched %d times, want 2", n)
	}
	// More unknown keys do not make it fetch again within the gap.
	for i := range 5 {
		wantInvalidToken(t, "unknown key", callAPI(t, "GET", usage, newIDPKey(t, jwa.EdDSA, fmt.Sprint("x", i)).sign(t, nil), ""), "not trusted")
	}
	if n := idp.fetches.Load(); n != 2 {
		t.Fatalf("unknown keys made %d fetches in all, want 2", n)
	}
}

func TestOAuthJWKSUnavailable(t *testing.T) {
	k := newIDPKey(t, jwa.ES256, "k")
	idp := newJWKSServer(t, k.public(t))
	idp.setFailing(true)
	verifier := captureVerifier(t)
	s := startSidecarWith(t, externalDemoAgent(t), "agent urn:asap:agent:demo", oauthMount(testBearer, jwksOpts(idp)))
	v := verifier()
	v.setRefetchGap(time.Hour, time.Now())
	usage := s.url + "/usage/summary"

	a := callAPI(t, "GET", usage, k.sign(t, nil), "")
	a.want(t, "JWKS down", http.StatusServiceUnavailable)
	if !strings.Contains(a.body, "Authentication service unavailable") {
		t.Fatalf("JWKS down: %s", a.body)
	}
	callAPI(t, "GET", usage, testBearer, "").want(t, "static bearer with the JWKS down", http.StatusOK)

	// Back up: the next check past the refetch gap fetches it again.
	idp.setFailing(false)
	v.setRefetchGap(time.Hour, time.Time{})
	callAPI(t, "GET", usage, k.sign(t, nil), "").want(t, "JWKS back", http.StatusOK)
}

func TestOAuthStaticKeyFiles(t *testing.T) {
	dir := t.TempDir()
	ec := newIDPKey(t, jwa.ES256, "")
	der, err := x509.MarshalPKIXPublicKey(ec.priv.Public())
	if err != nil {
		t.Fatal(err)
	}
	pemFile := filepath.Join(dir, "idp-ec.pem")
	writeFile(t, pemFile, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
	ed := newIDPKey(t, jwa.EdDSA, "ed-file")
	jwkFile := filepath.Join(dir, "idp-ed.jwk")
	b, _ := json.Marshal(ed.public(t))
	writeFile(t, jwkFile, b)

	s := startSidecarWith(t, externalDemoAgent(t), "agent urn:asap:agent:demo",
		oauthMount("", "key "+pemFile+"\nkey "+jwkFile+"\naudience "+testAudience))
	usage := s.url + "/usage/summary"
	callAPI(t, "GET", usage, ec.sign(t, nil), "").want(t, "PEM key, no kid", http.StatusOK)
	callAPI(t, "GET", usage, (&idpKey{alg: jwa.ES256, kid: "any", priv: ec.priv}).sign(t, nil), "").
		want(t, "PEM key, a kid", http.StatusOK)
	callAPI(t, "GET", usage, ed.sign(t, map[string]any{"iss": "https://any.test/"}), "").
		want(t, "JWK key (no issuer configured)", http.StatusOK)
	callAPI(t, "GET", usage, (&idpKey{alg: "Ed25519", kid: "ed-file", priv: ed.priv}).sign(t, nil), "").
		want(t, "alg Ed25519 (RFC 9864) with a key declaring EdDSA", http.StatusOK)
	callAPI(t, "GET", usage, (&idpKey{alg: jwa.EdDSA, kid: "ed-file", priv: newIDPKey(t, jwa.EdDSA, "").priv}).sign(t, nil), "").
		want(t, "other key under the file's kid", http.StatusUnauthorized, `error="invalid_token"`)
	callAPI(t, "GET", usage, newIDPKey(t, jwa.ES256, "").sign(t, nil), "").
		want(t, "other EC key", http.StatusUnauthorized, `error="invalid_token"`)
	callAPI(t, "GET", usage, newIDPKey(t, jwa.RS256, "").sign(t, nil), "").
		want(t, "RSA key not configured", http.StatusUnauthorized, `error="invalid_token"`, "not trusted")
}

func writeFile(t testing.TB, path string, b []byte) {
	t.Helper()
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}
