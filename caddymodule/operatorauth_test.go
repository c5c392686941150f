package caddymodule

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/lestrrat-go/jwx/v2/jwa"
	"github.com/lestrrat-go/jwx/v2/jwk"
	"github.com/lestrrat-go/jwx/v2/jwt"

	"github.com/asap-sidecar/asap-sidecar/config"
)

func TestPrincipalRules(t *testing.T) {
	me := "urn:asap:agent:me"
	for _, c := range []struct {
		name     string
		p        principal
		admin    bool
		mintSelf bool
		mintElse bool
	}{
		{"static bearer", principal{admin: true}, true, true, true},
		{"admin token", principal{subject: me, scopes: []string{"asap:admin"}, admin: true}, true, true, true},
		{"execute token", principal{subject: me, scopes: []string{"asap:read", "asap:execute"}}, false, true, false},
		{"read token", principal{subject: me, scopes: []string{"asap:read"}}, false, false, false},
		{"execute without sub", principal{scopes: []string{"asap:execute"}}, false, false, false},
		{"no scopes", principal{subject: me}, false, false, false},
	} {
		if got := c.p.isAdmin(); got != c.admin {
			t.Errorf("%s: isAdmin %v", c.name, got)
		}
		if got := c.p.mayMint(me); got != c.mintSelf {
			t.Errorf("%s: mayMint(own sub) %v", c.name, got)
		}
		if got := c.p.mayMint("urn:asap:agent:other"); got != c.mintElse {
			t.Errorf("%s: mayMint(other) %v", c.name, got)
		}
	}
	// The empty delegate is no one's own subject.
	if (principal{scopes: []string{"asap:execute"}}).mayMint("") {
		t.Error("a token without sub may mint for the empty delegate")
	}
}

func TestPrincipalTravelsInContext(t *testing.T) {
	if _, ok := principalFrom(context.Background()); ok {
		t.Fatal("principal in an empty context")
	}
	want := principal{subject: "urn:asap:agent:x", scopes: []string{"asap:execute"}}
	got, ok := principalFrom(withPrincipal(context.Background(), want))
	if !ok || !reflect.DeepEqual(got, want) {
		t.Fatalf("principalFrom = %+v %v", got, ok)
	}
}

func TestBearerToken(t *testing.T) {
	for h, want := range map[string]string{
		"Bearer abc":    "abc",
		"bearer abc":    "abc",
		"BEARER  abc  ": "abc",
		"Bearer ":       "",
		"Bearer":        "",
		"Basic abc":     "",
		"Bearerabc":     "",
		"":              "",
	} {
		got, ok := bearerToken(h)
		if got != want || ok != (want != "") {
			t.Errorf("bearerToken(%q) = %q %v, want %q", h, got, ok, want)
		}
	}
}

func TestAuthErrorAnswers(t *testing.T) {
	for _, c := range []struct {
		e         *authError
		status    int
		challenge string
		detail    string
	}{
		{&authError{status: 401}, 401, `Bearer realm="asap"`, "Authentication required"},
		{invalidToken("The access token expired"), 401,
			`Bearer realm="asap", error="invalid_token", error_description="The access token expired"`, "Invalid authentication token"},
		{&authError{status: 403, code: "insufficient_scope", desc: "This call needs scope asap:admin", scope: "asap:admin"}, 403,
			`Bearer realm="asap", error="insufficient_scope", error_description="This call needs scope asap:admin", scope="asap:admin"`, "Insufficient scope"},
		{&authError{status: 503}, 503, "", "Authentication service unavailable"},
	} {
		w := httptest.NewRecorder()
		c.e.write(w)
		var body struct{ Detail string }
		if err := json.Unmarshal(w.Body.Bytes(), &body); err != nil || w.Code != c.status ||
			w.Header().Get("WWW-Authenticate") != c.challenge || body.Detail != c.detail {
			t.Errorf("%+v: %d %q %s", c.e, w.Code, w.Header().Get("WWW-Authenticate"), w.Body)
		}
	}
}

func TestTokenScopes(t *testing.T) {
	for _, c := range []struct {
		claims map[string]any
		want   []string
	}{
		{map[string]any{"scope": "asap:read  asap:admin"}, []string{"asap:read", "asap:admin"}},
		{map[string]any{"scope": []any{"asap:admin", 7}}, []string{"asap:admin"}},
		{map[string]any{"scp": "asap:execute"}, []string{"asap:execute"}},
		{map[string]any{"scope": "a", "scp": []any{"b", "c"}}, []string{"a", "b", "c"}},
		{map[string]any{"scope": 42}, nil},
		{map[string]any{}, nil},
	} {
		tok := jwt.New()
		for k, v := range c.claims {
			_ = tok.Set(k, v)
		}
		if got := tokenScopes(tok); !reflect.DeepEqual(got, c.want) {
			t.Errorf("%v: scopes %q, want %q", c.claims, got, c.want)
		}
	}
}

func TestAllowedAlgorithms(t *testing.T) {
	for _, alg := range []jwa.SignatureAlgorithm{jwa.RS256, jwa.PS256, jwa.ES256, jwa.ES384, jwa.ES512, jwa.EdDSA, "Ed25519"} {
		if !allowedAlg(alg) {
			t.Errorf("%s refused", alg)
		}
	}
	for _, alg := range []jwa.SignatureAlgorithm{jwa.NoSignature, jwa.HS256, jwa.HS384, jwa.HS512, "", "none", "NONE", "ES256K"} {
		if allowedAlg(alg) {
			t.Errorf("%s accepted", alg)
		}
	}
}

func TestOAuth2ConfigChecks(t *testing.T) {
	good := func() *OAuth2 { return &OAuth2{JWKSURL: "https://idp.example/jwks.json", Audience: "asap-sidecar"} }
	o := good()
	if err := o.check(); err != nil {
		t.Fatal(err)
	}
	if o.Scope != "asap:admin" || time.Duration(o.Refresh) != 15*time.Minute {
		t.Fatalf("defaults: %+v", o)
	}
	for _, url := range []string{"http://127.0.0.1:8080/jwks", "http://localhost/jwks", "http://[::1]:9/jwks"} {
		o := good()
		o.JWKSURL = url
		if err := o.check(); err != nil {
			t.Errorf("%s: %v", url, err)
		}
	}
	skew := config.Duration(6 * time.Minute)
	negative := config.Duration(-time.Second)
	for _, c := range []struct {
		edit func(*OAuth2)
		want string
	}{
		{func(o *OAuth2) { o.JWKSURL = "" }, "set jwks_url"},
		{func(o *OAuth2) { o.Audience = " " }, "option audience: required"},
		{func(o *OAuth2) { o.JWKSURL = "http://idp.example/jwks" }, "use https"},
		{func(o *OAuth2) { o.JWKSURL = "ftp://idp.example/jwks" }, "use an https URL"},
		{func(o *OAuth2) { o.JWKSURL = "idp.example/jwks" }, "not an absolute URL"},
		{func(o *OAuth2) { o.Scope = "asap:admin asap:execute" }, "not one scope token"},
		{func(o *OAuth2) { o.Scope = `asap"x` }, "not one scope token"},
		{func(o *OAuth2) { o.Refresh = config.Duration(time.Millisecond) }, "option refresh"},
		{func(o *OAuth2) { o.ClockSkew = &skew }, "option clock_skew"},
		{func(o *OAuth2) { o.ClockSkew = &negative }, "option clock_skew"},
	} {
		o := good()
		c.edit(o)
		if err := o.check(); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: error %v, want %q", o, err, c.want)
		}
	}
}

func TestOAuth2KeyFileErrors(t *testing.T) {
	dir := t.TempDir()
	weak, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	der, _ := x509.MarshalPKIXPublicKey(&weak.PublicKey)
	files := map[string][]byte{
		"weak.pem":  pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}),
		"oct.jwk":   []byte(`{"kty":"oct","k":"c2VjcmV0LXNlY3JldC1zZWNyZXQ"}`),
		"junk.pem":  []byte("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"),
		"junk.json": []byte(`{"keys":`),
		"none.json": []byte(`{"keys":[]}`),
	}
	for name, b := range files {
		writeFile(t, filepath.Join(dir, name), b)
	}
	for name, want := range map[string]string{
		"weak.pem":  "RSA key of 1024 bits",
		"oct.jwk":   "symmetric",
		"junk.pem":  "not a public key",
		"junk.json": "not a public key",
		"none.json": "holds no key",
		"missing":   "no such file",
	} {
		err := addKeyFile(jwk.NewSet(), filepath.Join(dir, name))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want %q", name, err, want)
		}
	}
	// A private key file gives its public half.
	ed := newIDPKey(t, jwa.EdDSA, "priv")
	priv, _ := jwk.FromRaw(ed.priv)
	b, _ := json.Marshal(priv)
	writeFile(t, filepath.Join(dir, "priv.jwk"), b)
	set := jwk.NewSet()
	if err := addKeyFile(set, filepath.Join(dir, "priv.jwk")); err != nil {
		t.Fatal(err)
	}
	k, _ := set.Key(0)
	if _, isPrivate := k.(jwk.OKPPrivateKey); isPrivate || set.Len() != 1 {
		t.Fatalf("key from a private file: %T", k)
	}
}

func TestJWKSClientLimitsBody(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte(`{"keys":[` + strings.Repeat(" ", maxJWKSBody) + `]}`))
	}))
	defer srv.Close()
	cache := jwk.NewCache(context.Background())
	if err := cache.Register(srv.URL, jwk.WithHTTPClient(jwksClient{srv.Client()})); err != nil {
		t.Fatal(err)
	}
	if _, err := cache.Refresh(context.Background(), srv.URL); err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Fatalf("oversized JWK Set: %v", err)
	}
}

func parsePublicAPICaddyfile(input string) (*PublicAPI, error) {
	p := new(PublicAPI)
	return p, p.UnmarshalCaddyfile(caddyfile.NewTestDispenser(input))
}

func TestPublicAPICaddyfileOAuth2(t *testing.T) {
	p, err := parsePublicAPICaddyfile(`asap_api {
		bearer {env.ASAP_API_TOKEN}
		oauth2 {
			jwks_url https://idp.example/.well-known/jwks.json
			key /etc/asap/idp-a.pem /etc/asap/idp-b.jwk
			key /etc/asap/idp-c.pem
			issuer https://idp.example/
			audience asap-sidecar
			scope ops:admin
			refresh 5m
			clock_skew 0s
		}
	}`)
	if err != nil {
		t.Fatal(err)
	}
	zero := config.Duration(0)
	want := &OAuth2{
		JWKSURL: "https://idp.example/.well-known/jwks.json",
		Keys:    []string{"/etc/asap/idp-a.pem", "/etc/asap/idp-b.jwk", "/etc/asap/idp-c.pem"},
		Issuer:  "https://idp.example/", Audience: "asap-sidecar", Scope: "ops:admin",
		Refresh: config.Duration(5 * time.Minute), ClockSkew: &zero,
	}
	if p.Bearer != "{env.ASAP_API_TOKEN}" || !reflect.DeepEqual(p.OAuth2, want) {
		t.Fatalf("parsed %+v, oauth2 %+v", p, p.OAuth2)
	}
	b, _ := json.Marshal(p)
	const wantJSON = `{"bearer":"{env.ASAP_API_TOKEN}","oauth2":{"jwks_url":"https://idp.example/.well-known/jwks.json","keys":["/etc/asap/idp-a.pem","/etc/asap/idp-b.jwk","/etc/asap/idp-c.pem"],"issuer":"https://idp.example/","audience":"asap-sidecar","scope":"ops:admin","refresh":"5m0s","clock_skew":"0s"}}`
	if string(b) != wantJSON {
		t.Fatalf("JSON\n%s\nwant\n%s", b, wantJSON)
	}

	for input, want := range map[string]string{
		"asap_api {\n oauth2 x {\n }\n}":                      "takes a block",
		"asap_api {\n oauth2 {\n jwks https://x\n }\n}":       `unknown asap_api oauth2 option "jwks"`,
		"asap_api {\n oauth2 {\n key\n }\n}":                  "oauth2 key: missing value",
		"asap_api {\n oauth2 {\n audience a b\n }\n}":         "oauth2 audience: takes one value",
		"asap_api {\n oauth2 {\n refresh 0s\n }\n}":           "oauth2 refresh: must be greater than 0",
		"asap_api {\n oauth2 {\n refresh soon\n }\n}":         "oauth2 refresh: invalid duration",
		"asap_api {\n oauth2 {\n clock_skew often\n }\n}":     "oauth2 clock_skew: invalid duration",
		"asap_api {\n oauth2 {\n jwks_url\n }\n}":             "oauth2 jwks_url: missing value",
		"asap_api {\n oauth2 {\n issuer a b\n }\n}":           "oauth2 issuer: takes one value",
		"asap_api {\n oauth2 {\n scope\n }\n}":                "oauth2 scope: missing value",
		"asap_api {\n bearer x\n oauth2 {\n }\n oauth3\n}":    `unknown asap_api option "oauth3"`,
		"asap_api {\n oauth2 {\n audience a\n }\n storage\n}": "storage: missing value",
	} {
		if _, err := parsePublicAPICaddyfile(input); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v, want %q", input, err, want)
		}
	}
}

// validateSite runs caddy validate (which provisions) on a site with
// asap_api configured by mount.
func validateSite(t *testing.T, mount string) error {
	t.Helper()
	adapted, _, err := caddyconfigAdapt(":8080 {\n\tasap {\n\t\tdelegation off\n\t\tstorage " + t.TempDir() + "\n\t}\n\t" + mount + "\n\treverse_proxy 127.0.0.1:9000\n}\n")
	if err != nil {
		return err
	}
	return caddy.Validate(mustUnmarshalConfig(t, adapted))
}

func TestPublicAPIValidatesOAuth2(t *testing.T) {
	caddyMu.Lock()
	defer caddyMu.Unlock()
	t.Setenv("ASAP_TEST_JWKS", "https://idp.example/jwks.json")
	if err := validateSite(t, oauthMount("", "jwks_url {env.ASAP_TEST_JWKS}\naudience asap-sidecar")); err != nil {
		t.Fatalf("oauth2 alone with an {env.*} URL: %v", err)
	}
	if err := validateSite(t, oauthMount(testBearer, "jwks_url https://idp.example/jwks.json\naudience asap-sidecar")); err != nil {
		t.Fatalf("bearer and oauth2: %v", err)
	}
	for mount, want := range map[string]string{
		oauthMount("", "audience asap-sidecar"):                                   "set jwks_url",
		oauthMount("", "jwks_url https://idp.example/jwks.json"):                  "option audience: required",
		oauthMount("", "jwks_url http://idp.example/jwks\naudience a"):            "use https",
		oauthMount("", "key /nonexistent/idp.pem\naudience a"):                    "option key /nonexistent/idp.pem",
		oauthMount("short", "jwks_url https://idp.example/jwks.json\naudience a"): "at least 16 characters",
		"asap_api": "option bearer or oauth2",
	} {
		if err := validateSite(t, mount); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want %q", mount, err, want)
		}
	}
}

func TestCompactJWSForm(t *testing.T) {
	for token, want := range map[string]bool{
		"eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln": true,
		"a.b.":                              true,
		"a.b":                               false,
		"a.b.c.d":                           false,
		`{"payload":"a.b","signatures":[]}`: false,
		"a.b.c d":                           false,
		"a.b+c.d":                           false,
		"a.b.c=":                            false,
		strings.Repeat("a", maxAccessToken) + ".b.c":   false,
		strings.Repeat("a", maxAccessToken-4) + ".b.c": true,
	} {
		if got := compactJWS(token); got != want {
			t.Errorf("compactJWS(%.40q) = %v", token, got)
		}
	}
}

func TestJWKSRedirectStaysOnHTTPS(t *testing.T) {
	req := func(u string) *http.Request { r, _ := http.NewRequest("GET", u, nil); return r }
	if err := jwksRedirect(req("https://idp2.example/jwks"), nil); err != nil {
		t.Fatal(err)
	}
	if err := jwksRedirect(req("http://idp2.example/jwks"), nil); err == nil {
		t.Fatal("redirect to plain http followed")
	}
	if err := jwksRedirect(req("https://idp2.example/jwks"), make([]*http.Request, 5)); err == nil {
		t.Fatal("sixth redirect followed")
	}
}
