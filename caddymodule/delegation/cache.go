package delegation

import (
	"crypto/ed25519"
	"sync"
)

// DefaultCacheSize bounds the verified-link cache.
const DefaultCacheSize = 10000

// cachedLink is a link whose signature verified with key.
type cachedLink struct {
	link *Link
	key  ed25519.PublicKey
}

// linkCache remembers verified links by the hash of their compact form, so
// a repeated token (or a new leaf under known parents) skips parsing and
// signature checks. It holds two generations of at most size/2 entries:
// when the current one fills up it becomes the old one and the older is
// dropped, which bounds memory without per-entry bookkeeping. Revocation,
// time and limits are never cached.
type linkCache struct {
	mu       sync.Mutex
	cur, old map[string]*cachedLink
	half     int
}

func newLinkCache(size int) *linkCache {
	if size < 2 {
		size = 2
	}
	return &linkCache{cur: map[string]*cachedLink{}, half: size / 2}
}

// UseCache gives the verifier a shared cache (verifiers made for each
// config reload can share one). Call it before the first Verify.
func (v *Verifier) UseCache(c *LinkCache) { v.cache = (*linkCache)(c) }

// LinkCache is a verified-link cache that can outlive one Verifier.
type LinkCache linkCache

// NewLinkCache makes a cache of at most size links.
func NewLinkCache(size int) *LinkCache { return (*LinkCache)(newLinkCache(size)) }

func (c *linkCache) get(hash string) *cachedLink {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.cur[hash]; ok {
		return e
	}
	if e, ok := c.old[hash]; ok {
		c.cur[hash] = e // still in use: keep it young
		c.rotate()
		return e
	}
	return nil
}

func (c *linkCache) put(l *Link, key ed25519.PublicKey) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.cur[l.Hash] = &cachedLink{link: l, key: key}
	c.rotate()
}

func (c *linkCache) rotate() {
	if len(c.cur) >= c.half {
		c.old, c.cur = c.cur, make(map[string]*cachedLink, c.half)
	}
}

func (c *linkCache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.cur) + len(c.old)
}
