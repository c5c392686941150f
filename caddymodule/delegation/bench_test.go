package delegation

import (
	"crypto/ed25519"
	"fmt"
	"testing"
	"time"
)

// chainOf mints a chain of n links: root issued by urn:asap:agent:root to
// d1, each d_i re-delegating to d_{i+1} with its key bound by cnf.
func chainOf(tb testing.TB, n int) (value string, trusted map[string]ed25519.PublicKey) {
	tb.Helper()
	rootKey, _ := GenerateKey()
	keys := []ed25519.PrivateKey{rootKey}
	for i := 0; i < n; i++ {
		k, _ := GenerateKey()
		keys = append(keys, k)
	}
	name := func(i int) string {
		if i == 0 {
			return "urn:asap:agent:root"
		}
		return fmt.Sprintf("urn:asap:agent:d%d", i)
	}
	var parent *Chain
	var m *Minted
	for i := 0; i < n; i++ {
		var err error
		m, err = Mint(Grant{
			Issuer: name(i), Delegate: name(i + 1), Scopes: []string{ScopeTaskExecute},
			TTL: time.Hour, Parent: parent, CnfJWK: PublicJWK(keys[i+1].Public().(ed25519.PublicKey)),
		}, keys[i])
		if err != nil {
			tb.Fatal(err)
		}
		links := []*Link{}
		for _, raw := range splitChain(m.Chain) {
			l, rej := ParseLink(raw)
			if rej != nil {
				tb.Fatal(rej)
			}
			links = append(links, l)
		}
		parent = &Chain{Links: links}
	}
	return m.Chain, map[string]ed25519.PublicKey{name(0): rootKey.Public().(ed25519.PublicKey)}
}

func splitChain(v string) []string {
	var out []string
	start := 0
	for i := 0; i < len(v); i++ {
		if v[i] == ',' {
			out = append(out, v[start:i])
			start = i + 1
		}
	}
	return append(out, v[start:])
}

// BenchmarkVerify measures chain validation against the cost of the
// signatures themselves, in the same run (SPEC §11: an uncached chain ≤
// 1.2 × links × one Ed25519 verify; a repeated token ≤ 10 µs).
//
//	go test -run '^$' -bench Verify ./caddymodule/delegation
func BenchmarkVerify(b *testing.B) {
	for _, n := range []int{1, 3, 8} {
		value, trusted := chainOf(b, n)
		// The floor: one crypto/ed25519 verify per link, over the same
		// signing inputs and keys.
		v := &Verifier{Trusted: trusted, MaxDepth: 8, MaxSize: 16 << 10}
		chain, rej := v.Verify(value)
		if rej != nil {
			b.Fatal(rej)
		}
		keys := make([]ed25519.PublicKey, n)
		for i := range chain.Links {
			keys[i] = v.cache.get(chain.Links[i].Hash).key
		}
		b.Run(fmt.Sprintf("ed25519.Verify-x%d", n), func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				for j, l := range chain.Links {
					if !ed25519.Verify(keys[j], l.signingInput, l.signature) {
						b.Fatal("verify")
					}
				}
			}
		})
		b.Run(fmt.Sprintf("uncached-%d-link", n), func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				v := &Verifier{Trusted: trusted, MaxDepth: 8, MaxSize: 16 << 10}
				v.cache = newLinkCache(16)
				if _, rej := v.Verify(value); rej != nil {
					b.Fatal(rej)
				}
			}
		})
		b.Run(fmt.Sprintf("cached-%d-link", n), func(b *testing.B) {
			v := &Verifier{Trusted: trusted, MaxDepth: 8, MaxSize: 16 << 10}
			if _, rej := v.Verify(value); rej != nil {
				b.Fatal(rej)
			}
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if _, rej := v.Verify(value); rej != nil {
					b.Fatal(rej)
				}
			}
		})
	}
}
