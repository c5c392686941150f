package delegation

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// RFC 8037 Appendix A.1: an Ed25519 key pair.
const (
	rfc8037D = "nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A"
	rfc8037X = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"
)

func rfc8037Key(t *testing.T) ed25519.PrivateKey {
	t.Helper()
	seed, err := b64.DecodeString(rfc8037D)
	if err != nil {
		t.Fatal(err)
	}
	return ed25519.NewKeyFromSeed(seed)
}

func writeFile(t *testing.T, dir, name string, b []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func pemOf(t *testing.T, typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}

func TestGenerateKey(t *testing.T) {
	a, err := GenerateKey()
	if err != nil || len(a) != ed25519.PrivateKeySize {
		t.Fatalf("GenerateKey: %v, %d bytes", err, len(a))
	}
	b, _ := GenerateKey()
	if a.Equal(b) {
		t.Error("two generated keys are equal")
	}
}

func TestLoadKeysPEM(t *testing.T) {
	dir := t.TempDir()
	priv, _ := GenerateKey()
	pub := priv.Public().(ed25519.PublicKey)
	privPEM, err := PrivatePEM(priv)
	if err != nil {
		t.Fatal(err)
	}
	pubPEM, err := PublicPEM(pub)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(string(privPEM), "-----BEGIN PRIVATE KEY-----") || !strings.HasPrefix(string(pubPEM), "-----BEGIN PUBLIC KEY-----") {
		t.Errorf("PEM types: %q / %q", privPEM[:28], pubPEM[:27])
	}
	// The DER is standard PKCS#8 / PKIX.
	blk, _ := pem.Decode(privPEM)
	if k, err := x509.ParsePKCS8PrivateKey(blk.Bytes); err != nil || !k.(ed25519.PrivateKey).Equal(priv) {
		t.Errorf("PrivatePEM is not PKCS#8: %v", err)
	}
	blk, _ = pem.Decode(pubPEM)
	if k, err := x509.ParsePKIXPublicKey(blk.Bytes); err != nil || !k.(ed25519.PublicKey).Equal(pub) {
		t.Errorf("PublicPEM is not PKIX: %v", err)
	}
	privPath := writeFile(t, dir, "k.pem", privPEM)
	pubPath := writeFile(t, dir, "k.pub.pem", pubPEM)

	got, err := LoadPrivateKey(privPath)
	if err != nil || !got.Equal(priv) {
		t.Fatalf("LoadPrivateKey(PEM): %v", err)
	}
	gotPub, err := LoadPublicKey(pubPath)
	if err != nil || !gotPub.Equal(pub) {
		t.Fatalf("LoadPublicKey(PEM): %v", err)
	}
	// A private PEM gives its public half.
	gotPub, err = LoadPublicKey(privPath)
	if err != nil || !gotPub.Equal(pub) {
		t.Fatalf("LoadPublicKey(private PEM): %v", err)
	}
	// A public PEM is no private key.
	if _, err := LoadPrivateKey(pubPath); err == nil || !strings.Contains(err.Error(), "is a public key") {
		t.Errorf("LoadPrivateKey of a public key: %v, want an error saying it is one", err)
	}
}

func TestLoadKeysJWK(t *testing.T) {
	dir := t.TempDir()
	priv, _ := GenerateKey()
	pub := priv.Public().(ed25519.PublicKey)
	privPath := writeFile(t, dir, "k.jwk", append(PrivateJWK(priv), '\n'))
	pubPath := writeFile(t, dir, "k.pub.jwk", append(PublicJWK(pub), '\n'))

	got, err := LoadPrivateKey(privPath)
	if err != nil || !got.Equal(priv) {
		t.Fatalf("LoadPrivateKey(JWK): %v", err)
	}
	gotPub, err := LoadPublicKey(pubPath)
	if err != nil || !gotPub.Equal(pub) {
		t.Fatalf("LoadPublicKey(JWK): %v", err)
	}
	gotPub, err = LoadPublicKey(privPath)
	if err != nil || !gotPub.Equal(pub) {
		t.Fatalf("LoadPublicKey(private JWK): %v", err)
	}
	// A public JWK is no private key.
	if _, err := LoadPrivateKey(pubPath); err == nil {
		t.Error("LoadPrivateKey accepted a public JWK")
	}
	// The JWK members are the standard ones.
	var m map[string]string
	if err := json.Unmarshal(PrivateJWK(priv), &m); err != nil {
		t.Fatal(err)
	}
	if m["kty"] != "OKP" || m["crv"] != "Ed25519" || m["x"] != b64.EncodeToString(pub) || m["d"] != b64.EncodeToString(priv.Seed()) || len(m) != 4 {
		t.Errorf("PrivateJWK %v", m)
	}
	if string(PublicJWK(pub)) != `{"crv":"Ed25519","kty":"OKP","x":"`+b64.EncodeToString(pub)+`"}` {
		t.Errorf("PublicJWK %s", PublicJWK(pub))
	}
	// RFC 8037 A.1: the known key pair.
	k := rfc8037Key(t)
	if got := b64.EncodeToString(k.Public().(ed25519.PublicKey)); got != rfc8037X {
		t.Errorf("RFC 8037 x = %s", got)
	}
	p := writeFile(t, dir, "rfc.jwk", []byte(`{"kty":"OKP","crv":"Ed25519","d":"`+rfc8037D+`","x":"`+rfc8037X+`"}`))
	if got, err := LoadPrivateKey(p); err != nil || !got.Equal(k) {
		t.Errorf("LoadPrivateKey(RFC 8037 JWK): %v", err)
	}
}

func TestLoadKeysErrors(t *testing.T) {
	dir := t.TempDir()
	rsaKey, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	ecKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	rsaPKCS8, _ := x509.MarshalPKCS8PrivateKey(rsaKey)
	rsaPKIX, _ := x509.MarshalPKIXPublicKey(&rsaKey.PublicKey)
	ecPKCS8, _ := x509.MarshalPKCS8PrivateKey(ecKey)
	ecPKIX, _ := x509.MarshalPKIXPublicKey(&ecKey.PublicKey)
	files := map[string][]byte{
		"rsa.pem":      pemOf(t, "PRIVATE KEY", rsaPKCS8),
		"rsa.pub.pem":  pemOf(t, "PUBLIC KEY", rsaPKIX),
		"rsa1.pem":     pemOf(t, "RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(rsaKey)),
		"ec.pem":       pemOf(t, "PRIVATE KEY", ecPKCS8),
		"ec.pub.pem":   pemOf(t, "PUBLIC KEY", ecPKIX),
		"garbage.pem":  pemOf(t, "PRIVATE KEY", []byte("not DER at all")),
		"garbage":      []byte("this is not a key\x00\xff"),
		"empty":        {},
		"rsa.jwk":      []byte(`{"kty":"RSA","n":"` + b64.EncodeToString(rsaKey.N.Bytes()) + `","e":"AQAB"}`),
		"x25519.jwk":   []byte(`{"kty":"OKP","crv":"X25519","x":"` + rfc8037X + `"}`),
		"short.jwk":    []byte(`{"kty":"OKP","crv":"Ed25519","x":"AAAA"}`),
		"array.jwk":    []byte(`[{"kty":"OKP"}]`),
		"truncated.jw": []byte(`{"kty":"OKP","crv":"Ed25519"`),
	}
	paths := map[string]string{}
	for name, b := range files {
		paths[name] = writeFile(t, dir, name, b)
	}
	paths["missing"] = filepath.Join(dir, "does-not-exist.pem")

	privBad := []string{"rsa.pem", "rsa.pub.pem", "rsa1.pem", "ec.pem", "ec.pub.pem", "garbage.pem", "garbage", "empty", "rsa.jwk", "x25519.jwk", "short.jwk", "array.jwk", "truncated.jw", "missing"}
	for _, name := range privBad {
		if k, err := LoadPrivateKey(paths[name]); err == nil {
			t.Errorf("LoadPrivateKey(%s) = %x, want an error", name, k)
		}
	}
	pubBad := []string{"rsa.pem", "rsa.pub.pem", "rsa1.pem", "ec.pem", "ec.pub.pem", "garbage.pem", "garbage", "empty", "rsa.jwk", "x25519.jwk", "short.jwk", "array.jwk", "truncated.jw", "missing"}
	for _, name := range pubBad {
		if k, err := LoadPublicKey(paths[name]); err == nil {
			t.Errorf("LoadPublicKey(%s) = %x, want an error", name, k)
		}
	}
	// The errors say what is wrong and where, without key material.
	_, err = LoadPrivateKey(paths["rsa.pem"])
	if !strings.Contains(err.Error(), "not an Ed25519 key") || !strings.Contains(err.Error(), paths["rsa.pem"]) {
		t.Errorf("RSA private error: %v", err)
	}
	_, err = LoadPublicKey(paths["ec.pub.pem"])
	if !strings.Contains(err.Error(), "not an Ed25519 key") {
		t.Errorf("EC public error: %v", err)
	}
	_, err = LoadPrivateKey(paths["missing"])
	if !os.IsNotExist(err) {
		t.Errorf("missing file error: %v", err)
	}
	_, err = LoadPublicKey(paths["missing"])
	if !os.IsNotExist(err) {
		t.Errorf("missing file error: %v", err)
	}
	_, err = LoadPublicKey(paths["rsa.pem"])
	if !strings.Contains(err.Error(), "neither") {
		t.Errorf("RSA PKCS#8 as public key: %v", err)
	}
}

func TestParsePublicJWK(t *testing.T) {
	priv, _ := GenerateKey()
	pub := priv.Public().(ed25519.PublicKey)
	x := b64.EncodeToString(pub)
	good := []string{
		string(PublicJWK(pub)),
		`{"kty":"OKP","crv":"Ed25519","x":"` + x + `"}`,
		` {"x":"` + x + `","crv":"Ed25519","kty":"OKP","kid":"k1","use":"sig"}`,
		string(PrivateJWK(priv)), // d is ignored
	}
	for _, s := range good {
		k, err := ParsePublicJWK([]byte(s))
		if err != nil || !k.Equal(pub) {
			t.Errorf("ParsePublicJWK(%s): %v", s, err)
		}
	}
	bad := map[string]string{
		"kty RSA":          `{"kty":"RSA","n":"` + x + `","e":"AQAB"}`,
		"kty EC":           `{"kty":"EC","crv":"P-256","x":"` + x + `","y":"` + x + `"}`,
		"crv X25519":       `{"kty":"OKP","crv":"X25519","x":"` + x + `"}`,
		"crv Ed448":        `{"kty":"OKP","crv":"Ed448","x":"` + x + `"}`,
		"kty oct":          `{"kty":"oct","k":"c2VjcmV0"}`,
		"short x":          `{"kty":"OKP","crv":"Ed25519","x":"` + x[:20] + `"}`,
		"long x":           `{"kty":"OKP","crv":"Ed25519","x":"` + b64.EncodeToString(append(pub, 0)) + `"}`,
		"padded x":         `{"kty":"OKP","crv":"Ed25519","x":"` + x + `="}`,
		"x not base64":     `{"kty":"OKP","crv":"Ed25519","x":"!!!!"}`,
		"missing x":        `{"kty":"OKP","crv":"Ed25519"}`,
		"missing kty":      `{"crv":"Ed25519","x":"` + x + `"}`,
		"x a number":       `{"kty":"OKP","crv":"Ed25519","x":5}`,
		"not an object":    `["OKP"]`,
		"a string":         `"OKP"`,
		"empty":            ``,
		"null":             `null`,
		"truncated":        `{"kty":"OKP"`,
		"huge kty":         `{"kty":"` + strings.Repeat("K", 1000) + `","crv":"Ed25519","x":"` + x + `"}`,
		"lower-case okp":   `{"kty":"okp","crv":"Ed25519","x":"` + x + `"}`,
		"lower-case crv":   `{"kty":"OKP","crv":"ed25519","x":"` + x + `"}`,
		"trailing garbage": `{"kty":"OKP","crv":"Ed25519","x":"` + x + `"} {}`,
	}
	for name, s := range bad {
		if k, err := ParsePublicJWK([]byte(s)); err == nil {
			t.Errorf("%s: ParsePublicJWK accepted %x", name, k)
		} else if len(err.Error()) > 200 {
			t.Errorf("%s: unbounded error of %d bytes", name, len(err.Error()))
		}
	}
}

// RFC 7638 thumbprint of an OKP key: SHA-256 of the required members in
// lexicographic order, no whitespace (RFC 8037 §2).
func TestThumbprintRFC7638(t *testing.T) {
	k := rfc8037Key(t)
	pub := k.Public().(ed25519.PublicKey)
	sum := sha256.Sum256([]byte(`{"crv":"Ed25519","kty":"OKP","x":"` + rfc8037X + `"}`))
	want := b64.EncodeToString(sum[:])
	if got := Thumbprint(pub); got != want {
		t.Fatalf("Thumbprint = %s, want %s", got, want)
	}
	// RFC 8037 A.3 gives the thumbprint of this very key.
	if want != "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k" {
		t.Errorf("independent thumbprint %s differs from RFC 8037 A.3", want)
	}
	// And for random keys, the same construction.
	for i := 0; i < 5; i++ {
		priv, _ := GenerateKey()
		pub := priv.Public().(ed25519.PublicKey)
		sum := sha256.Sum256(PublicJWK(pub))
		if got := Thumbprint(pub); got != b64.EncodeToString(sum[:]) {
			t.Errorf("Thumbprint(%x) = %s", pub, got)
		}
	}
}

// RFC 8037 A.4/A.5: the EdDSA signature of the RFC verifies through the
// verifier of either algorithm name, and not with another key or payload.
func TestVerifySignatureRFC8037(t *testing.T) {
	const (
		in  = "eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc"
		sig = "hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg"
	)
	k := rfc8037Key(t)
	pub := k.Public().(ed25519.PublicKey)
	s, _ := b64.DecodeString(sig)
	if got := b64.EncodeToString(ed25519.Sign(k, []byte(in))); got != sig {
		t.Fatalf("RFC 8037 signature mismatch: %s", got)
	}
	for _, alg := range []string{AlgEdDSA, AlgEd25519} {
		l := &Link{Alg: alg, signingInput: []byte(in), signature: s}
		if err := verifySignature(l, pub); err != nil {
			t.Errorf("%s: %v", alg, err)
		}
		other, _ := GenerateKey()
		if err := verifySignature(l, other.Public().(ed25519.PublicKey)); err == nil {
			t.Errorf("%s: verified with another key", alg)
		}
		l2 := &Link{Alg: alg, signingInput: []byte(in + "x"), signature: s}
		if err := verifySignature(l2, pub); err == nil {
			t.Errorf("%s: verified another payload", alg)
		}
	}
	// An algorithm jwx does not know.
	if err := verifySignature(&Link{Alg: "XX999", signingInput: []byte(in), signature: s}, pub); err == nil {
		t.Error("unknown algorithm verified")
	}
}

// The jwx adapters refuse keys of the wrong type.
func TestEd25519Adapters(t *testing.T) {
	k := rfc8037Key(t)
	pub := k.Public().(ed25519.PublicKey)
	if (ed25519Signer{}).Algorithm() != algEd25519 {
		t.Error("signer algorithm")
	}
	sig, err := (ed25519Signer{}).Sign([]byte("m"), k)
	if err != nil || !ed25519.Verify(pub, []byte("m"), sig) {
		t.Errorf("Sign: %v", err)
	}
	if _, err := (ed25519Signer{}).Sign([]byte("m"), pub); err == nil {
		t.Error("signed with a public key")
	}
	if _, err := (ed25519Signer{}).Sign([]byte("m"), []byte("secret")); err == nil {
		t.Error("signed with an HMAC secret")
	}
	if err := (ed25519Verifier{}).Verify([]byte("m"), sig, pub); err != nil {
		t.Errorf("Verify: %v", err)
	}
	for _, key := range []any{[]byte(pub), k, ed25519.PublicKey(pub[:16]), "key", nil} {
		if err := (ed25519Verifier{}).Verify([]byte("m"), sig, key); err == nil {
			t.Errorf("verified with a %T", key)
		}
	}
	if err := (ed25519Verifier{}).Verify([]byte("n"), sig, pub); err == nil {
		t.Error("verified another message")
	}
	if !sameKey(pub, ed25519.PublicKey(append([]byte{}, pub...))) || sameKey(pub, nil) {
		t.Error("sameKey")
	}
}
