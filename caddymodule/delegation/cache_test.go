package delegation

import (
	"crypto/ed25519"
	"fmt"
	"sync"
	"testing"
	"time"
)

// A repeated verify takes the links from the cache.
func TestCacheRepeatedVerifyUsesCache(t *testing.T) {
	f := newFixture(t)
	r := f.root()
	c := f.child(r)
	value := join(c, r)
	v := f.verifier()
	v.UseCache(NewLinkCache(100))
	if v.cache.len() != 0 {
		t.Fatal("a new cache is not empty")
	}
	first := mustVerify(t, v, value)
	if n := v.cache.len(); n != 2 {
		t.Fatalf("cache holds %d links after the first verify, want 2", n)
	}
	for i, raw := range []string{c, r} {
		e := v.cache.get(HashOf(raw))
		if e == nil {
			t.Fatalf("link %d is not cached", i)
		}
		if e.link != first.Links[i] {
			t.Errorf("cached link %d is not the verified one", i)
		}
	}
	if !v.cache.get(HashOf(r)).key.Equal(f.self.pub) || !v.cache.get(HashOf(c)).key.Equal(f.alice.pub) {
		t.Error("cached keys are not the keys the links verified with")
	}
	second := mustVerify(t, v, value)
	for i := range second.Links {
		if second.Links[i] != first.Links[i] {
			t.Errorf("link %d parsed again instead of taken from the cache", i)
		}
	}
	// A new leaf under a known parent reuses the cached parent.
	c2 := f.sign(with(f.childClaims(r, f.alice, f.carol, "del_child2")), f.alice)
	third := mustVerify(t, v, join(c2, r))
	if third.Links[1] != first.Links[1] {
		t.Error("cached parent not reused under a new leaf")
	}
	if v.cache.len() != 3 {
		t.Errorf("cache holds %d links, want 3", v.cache.len())
	}
}

// A cached verification is tied to the key it verified with: when the
// configured key changes, the link is verified again, and fails.
func TestCacheKeyChangeReverifies(t *testing.T) {
	f := newFixture(t)
	r := f.root()
	c := f.child(r)
	value := join(c, r)
	v := f.verifier()
	v.UseCache(NewLinkCache(100))
	mustVerify(t, v, value)
	mustVerify(t, v, r)

	rotated := newAgent(t, f.self.urn)
	v.Trusted = map[string]ed25519.PublicKey{f.self.urn: rotated.pub, f.partner.urn: f.partner.pub}
	for _, val := range []string{r, value} {
		_, rej := v.Verify(val)
		wantRejection(t, rej, ClassSignature, "bad_signature")
		if rej.JTI != "del_root" {
			t.Errorf("rejection names %q", rej.JTI)
		}
	}
	// The issuer dropped from the trust list: no cached link helps.
	v.Trusted = map[string]ed25519.PublicKey{f.partner.urn: f.partner.pub}
	_, rej := v.Verify(value)
	wantRejection(t, rej, ClassSignature, "untrusted_issuer")

	// Back to the original key: accepted again.
	v.Trusted = map[string]ed25519.PublicKey{f.self.urn: f.self.pub}
	mustVerify(t, v, value)

	// A token signed by the rotated key verifies under the rotated key
	// even though a same-issuer link is cached.
	v.Trusted = map[string]ed25519.PublicKey{f.self.urn: rotated.pub}
	mustVerify(t, v, f.sign(with(f.rootClaims(), "jti", "del_rotated"), rotated))
}

// A child's cached verification is tied to the key its parent bound.
func TestCacheBoundKeyChangeReverifies(t *testing.T) {
	f := newFixture(t)
	cache := NewLinkCache(100)
	v := f.verifier()
	v.UseCache(cache)
	// A child issued by partner (trusted) verifies with partner's key and
	// is cached with it.
	r := f.sign(with(f.rootClaims(), "aud", f.partner.urn, "cnf", nil), f.self)
	c := f.sign(f.childClaims(r, f.partner, f.bob, "del_child"), f.partner)
	mustVerify(t, v, join(c, r))
	// Another verifier sharing the cache configures another key for
	// partner: the cached child must not be accepted.
	v2 := f.verifier()
	v2.UseCache(cache)
	v2.Trusted = map[string]ed25519.PublicKey{f.self.urn: f.self.pub, f.partner.urn: f.evil.pub}
	_, rej := v2.Verify(join(c, r))
	wantRejection(t, rej, ClassSignature, "bad_signature")
	if rej.JTI != "del_child" {
		t.Errorf("rejection names %q", rej.JTI)
	}
	// The first verifier is unaffected.
	mustVerify(t, v, join(c, r))
}

// Time is never cached: a cached token still expires.
func TestCacheDoesNotCacheTime(t *testing.T) {
	f := newFixture(t)
	r := f.root()
	v := f.verifier()
	mustVerify(t, v, r)
	v.Now = func() time.Time { return f.t0.Add(2 * time.Hour) }
	_, rej := v.Verify(r)
	wantRejection(t, rej, ClassTime, "expired")
}

// The cache stays bounded.
func TestCacheBounded(t *testing.T) {
	f := newFixture(t)
	const size = 10
	v := f.verifier()
	v.UseCache(NewLinkCache(size))
	var first string
	for i := 0; i < 5*size; i++ {
		tok := f.sign(with(f.rootClaims(), "jti", fmt.Sprintf("del_%03d", i)), f.self)
		if i == 0 {
			first = tok
		}
		mustVerify(t, v, tok)
		if n := v.cache.len(); n > size {
			t.Fatalf("cache holds %d links after %d inserts, more than %d", n, i+1, size)
		}
	}
	if v.cache.len() == 0 {
		t.Fatal("cache empty")
	}
	// The first token fell out but still verifies (uncached).
	if v.cache.get(HashOf(first)) != nil {
		t.Error("the oldest link is still cached")
	}
	mustVerify(t, v, first)

	// Direct inserts, far beyond the size.
	c := newLinkCache(size)
	for i := 0; i < 1000; i++ {
		c.put(&Link{Hash: fmt.Sprint(i)}, nil)
		if c.len() > size {
			t.Fatalf("len %d > %d", c.len(), size)
		}
	}
	// A link in the old generation that is used again is kept young.
	c = newLinkCache(4) // generations of 2
	c.put(&Link{Hash: "a"}, nil)
	c.put(&Link{Hash: "b"}, nil) // rotates: old = {a, b}
	if c.get("a") == nil {       // a back into cur
		t.Fatal("a lost")
	}
	c.put(&Link{Hash: "c"}, nil) // cur = {a, c} → rotates: old = {a, c}
	if c.get("a") == nil || c.get("c") == nil {
		t.Error("recently used links dropped")
	}
	if c.get("b") != nil {
		t.Error("an unused link survived two rotations")
	}
	if c.get("zzz") != nil {
		t.Error("get of an unknown hash")
	}
	// Tiny sizes still work.
	for _, n := range []int{-1, 0, 1, 2} {
		c := newLinkCache(n)
		for i := 0; i < 10; i++ {
			c.put(&Link{Hash: fmt.Sprint(i)}, nil)
		}
		if c.len() > 2 {
			t.Errorf("size %d holds %d", n, c.len())
		}
	}
}

// A Verifier without UseCache makes its own default cache.
func TestCacheDefault(t *testing.T) {
	f := newFixture(t)
	v := f.verifier()
	mustVerify(t, v, f.root())
	if v.cache == nil || v.cache.half != DefaultCacheSize/2 || v.cache.len() != 1 {
		t.Fatalf("default cache %+v", v.cache)
	}
}

// Verifiers sharing one cache are safe for concurrent use (run with -race).
func TestCacheConcurrentVerify(t *testing.T) {
	f := newFixture(t)
	r := f.root()
	c := f.child(r)
	forged := f.sign(with(f.rootClaims(), "jti", "del_forged"), f.evil)
	cache := NewLinkCache(8)
	var wg sync.WaitGroup
	errs := make(chan string, 64)
	for g := 0; g < 8; g++ {
		v := f.verifier()
		v.UseCache(cache)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 50; i++ {
				if _, rej := v.Verify(join(c, r)); rej != nil {
					errs <- rej.Error()
					return
				}
				if _, rej := v.Verify(forged); rej == nil || rej.Reason != "bad_signature" {
					errs <- "forged token not refused"
					return
				}
				tok := f.sign(with(f.rootClaims(), "jti", fmt.Sprintf("del_%d", i)), f.self)
				if _, rej := v.Verify(tok); rej != nil {
					errs <- rej.Error()
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
}

// The documented use — "configure the exported fields, then share it
// between goroutines" — must not race on the lazily created cache.
func TestVerifierSharedBeforeFirstUse(t *testing.T) {
	f := newFixture(t)
	r := f.root()
	v := f.verifier() // no UseCache
	var wg sync.WaitGroup
	for i := 0; i < 4; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, rej := v.Verify(r); rej != nil {
				t.Error(rej)
			}
		}()
	}
	wg.Wait()
}
