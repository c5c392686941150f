package delegation

import (
	"bytes"
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"os"

	"github.com/lestrrat-go/jwx/v2/jwa"
	"github.com/lestrrat-go/jwx/v2/jwk"
	"github.com/lestrrat-go/jwx/v2/jws"
)

// algEd25519 is RFC 9864's name, registered with jwx beside its EdDSA.
var algEd25519 = jwa.SignatureAlgorithm(AlgEd25519)

func init() {
	jws.RegisterSigner(algEd25519, jws.SignerFactoryFn(func() (jws.Signer, error) { return ed25519Signer{}, nil }))
	jws.RegisterVerifier(algEd25519, jws.VerifierFactoryFn(func() (jws.Verifier, error) { return ed25519Verifier{}, nil }))
	for _, alg := range []string{AlgEd25519, AlgEdDSA} {
		v, err := jws.NewVerifier(jwa.SignatureAlgorithm(alg))
		if err != nil {
			panic(fmt.Sprintf("delegation: jwx has no verifier for %s: %v", alg, err))
		}
		verifiers[alg] = v
	}
}

type ed25519Signer struct{}

func (ed25519Signer) Algorithm() jwa.SignatureAlgorithm { return algEd25519 }

func (ed25519Signer) Sign(payload []byte, key any) ([]byte, error) {
	priv, ok := key.(ed25519.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("Ed25519 signing needs an ed25519.PrivateKey, not %T", key)
	}
	return ed25519.Sign(priv, payload), nil
}

type ed25519Verifier struct{}

func (ed25519Verifier) Verify(payload, sig []byte, key any) error {
	pub, ok := key.(ed25519.PublicKey)
	if !ok || len(pub) != ed25519.PublicKeySize {
		return fmt.Errorf("Ed25519 verification needs an ed25519.PublicKey, not %T", key)
	}
	if !ed25519.Verify(pub, payload, sig) {
		return errors.New("signature does not verify")
	}
	return nil
}

// verifiers are jwx's verifiers for the two accepted names, looked up once
// in init, after the registration (they keep no state).
var verifiers = map[string]jws.Verifier{}

// verifySignature checks l's signature with pub through jwx's verifier for
// the link's algorithm name.
func verifySignature(l *Link, pub ed25519.PublicKey) error {
	v, ok := verifiers[l.Alg]
	if !ok {
		return fmt.Errorf("algorithm %q is not accepted", l.Alg)
	}
	return v.Verify(l.signingInput, l.signature, pub)
}

// GenerateKey makes a new Ed25519 key pair.
func GenerateKey() (ed25519.PrivateKey, error) {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	return priv, err
}

// LoadPrivateKey reads an Ed25519 private key: PEM (PKCS#8) or a JWK with
// kty OKP, crv Ed25519 and d.
func LoadPrivateKey(path string) (ed25519.PrivateKey, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	if blk, _ := pem.Decode(b); blk != nil {
		if blk.Type == "PUBLIC KEY" {
			return nil, fmt.Errorf("%s is a public key; signing needs the private key (PKCS#8 PEM, NAME.key from 'asap keygen')", path)
		}
		k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("%s: not a PKCS#8 private key: %w", path, err)
		}
		priv, ok := k.(ed25519.PrivateKey)
		if !ok {
			return nil, fmt.Errorf("%s: a %T, not an Ed25519 key", path, k)
		}
		return priv, nil
	}
	key, err := jwk.ParseKey(b)
	if err != nil {
		return nil, fmt.Errorf("%s: neither PEM nor JWK: %w", path, err)
	}
	var priv ed25519.PrivateKey
	if err := key.Raw(&priv); err != nil {
		return nil, fmt.Errorf("%s: not an Ed25519 private JWK (kty OKP, crv Ed25519, with d)", path)
	}
	return priv, nil
}

// LoadPublicKey reads an Ed25519 public key: PEM (PKIX), or a JWK (kty
// OKP, crv Ed25519). A private key's public half is accepted too.
func LoadPublicKey(path string) (ed25519.PublicKey, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	if blk, _ := pem.Decode(b); blk != nil {
		if k, err := x509.ParsePKIXPublicKey(blk.Bytes); err == nil {
			pub, ok := k.(ed25519.PublicKey)
			if !ok {
				return nil, fmt.Errorf("%s: a %T, not an Ed25519 key", path, k)
			}
			return pub, nil
		}
		if priv, err := LoadPrivateKey(path); err == nil {
			return priv.Public().(ed25519.PublicKey), nil
		}
		return nil, fmt.Errorf("%s: PEM is neither a PKIX public nor a PKCS#8 private Ed25519 key", path)
	}
	pub, err := ParsePublicJWK(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return pub, nil
}

// ParsePublicJWK reads an Ed25519 public JWK (kty OKP, crv Ed25519). It
// is on the verification path of every chain link that binds a key, so it
// decodes the three members itself rather than build a generic jwk.Key.
func ParsePublicJWK(b []byte) (ed25519.PublicKey, error) {
	var k struct {
		Kty string `json:"kty"`
		Crv string `json:"crv"`
		X   string `json:"x"`
	}
	if err := strictUnmarshal(b, &k); err != nil {
		return nil, fmt.Errorf("not a JWK: %w", err)
	}
	if k.Kty != "OKP" || k.Crv != "Ed25519" {
		return nil, fmt.Errorf("JWK kty %q crv %q, want OKP Ed25519", truncate(k.Kty, 16), truncate(k.Crv, 16))
	}
	x, err := b64.DecodeString(k.X)
	if err != nil || len(x) != ed25519.PublicKeySize {
		return nil, errors.New("JWK x is not a base64url Ed25519 public key")
	}
	return ed25519.PublicKey(x), nil
}

// PublicJWK is the public JWK of pub, members in RFC 7638 order.
func PublicJWK(pub ed25519.PublicKey) json.RawMessage {
	return json.RawMessage(`{"crv":"Ed25519","kty":"OKP","x":"` + b64.EncodeToString(pub) + `"}`)
}

// PrivateJWK is the private JWK of priv. It is for key files only.
func PrivateJWK(priv ed25519.PrivateKey) json.RawMessage {
	pub := priv.Public().(ed25519.PublicKey)
	return json.RawMessage(`{"crv":"Ed25519","d":"` + b64.EncodeToString(priv.Seed()) + `","kty":"OKP","x":"` + b64.EncodeToString(pub) + `"}`)
}

// Thumbprint is the RFC 7638 SHA-256 thumbprint of pub, base64url.
func Thumbprint(pub ed25519.PublicKey) string {
	key, err := jwk.FromRaw(pub)
	if err != nil {
		return ""
	}
	tp, err := key.Thumbprint(crypto.SHA256)
	if err != nil {
		return ""
	}
	return b64.EncodeToString(tp)
}

// PrivatePEM encodes priv as PKCS#8 PEM.
func PrivatePEM(priv ed25519.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// PublicPEM encodes pub as PKIX PEM.
func PublicPEM(pub ed25519.PublicKey) ([]byte, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), nil
}

func sameKey(a, b ed25519.PublicKey) bool { return bytes.Equal(a, b) }
