package delegation

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/asap-sidecar/asap-sidecar/caddymodule/wire"
	"github.com/asap-sidecar/asap-sidecar/storage"
)

// Ledger keeps the delegation state that must be exact across requests,
// restarts and reloads, for one database. Issuers and token ids are chosen
// by whoever signs a token, so no state is keyed by a bare jti: a delegate
// could otherwise pick another consumer's id and spend or revoke its state
// (SPEC §2a).
//
//	n <sha256>                  tasks run under the token of that hash (and its descendants)
//	r "a" <jti>                 revocation of a token id for every issuer (revoked_at)
//	r "i" <issuer> <jti>        revocation of one issuer's token id
//	e <jti> <issuer> <sha256>   a token seen in traffic (Seen, JSON)
//	d <jti>                     tokens minted here (ids of our own choosing)
//
// The parts of r and e keys are length-prefixed (storage.Space.Sized), so
// no choice of issuer and id lands on another's key. Revocations and counts
// are also held in memory, so the per-request checks cost no I/O; every
// change is written to Badger first.
type Ledger struct {
	db *storage.DB

	mu         sync.Mutex
	revokedAll map[string]time.Time  // by jti: every issuer
	revokedBy  map[tokenID]time.Time // one issuer's jti
	used       map[string]*usage     // by token hash
	ops        int
}

// tokenID is a token id as its issuer names it.
type tokenID struct{ iss, jti string }

type usage struct {
	count    int64 // persisted + in flight
	inflight int64
	exp      int64
	seen     seenState
}

// seenState says whether a token's Seen record is on disk.
type seenState uint8

const (
	seenNo      seenState = iota // not recorded (or not known to be)
	seenStaging                  // a reservation in flight writes it
	seenYes                      // recorded: never written again
)

// OpenLedger loads the revocations of db.
func OpenLedger(db *storage.DB) (*Ledger, error) {
	l := &Ledger{db: db, revokedAll: map[string]time.Time{}, revokedBy: map[tokenID]time.Time{}, used: map[string]*usage{}}
	err := db.View(func(r *storage.Reader) error {
		return r.Scan(storage.SpaceDelRevoke.Prefix(), false, func(k, v []byte) (bool, error) {
			var at time.Time
			if err := at.UnmarshalBinary(v); err != nil {
				return false, fmt.Errorf("revocation %q: %w", k, err)
			}
			parts, err := storage.SplitSized(k)
			switch {
			case err == nil && len(parts) == 2 && string(parts[0]) == "a":
				l.revokedAll[string(parts[1])] = at
			case err == nil && len(parts) == 3 && string(parts[0]) == "i":
				l.revokedBy[tokenID{string(parts[1]), string(parts[2])}] = at
			default:
				return false, fmt.Errorf("revocation key %q is malformed", k)
			}
			return true, nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("delegation: loading revocations: %w", err)
	}
	return l, nil
}

func revokeAllKey(jti string) []byte          { return storage.SpaceDelRevoke.SizedString("a", jti) }
func revokeKey(iss, jti string) []byte        { return storage.SpaceDelRevoke.SizedString("i", iss, jti) }
func issuedKey(jti string) []byte             { return storage.SpaceDelIssued.KeyString(jti) }
func seenPrefix(jti string) []byte            { return storage.SpaceDelSeen.SizedString(jti) }
func seenIssuerPrefix(iss, jti string) []byte { return storage.SpaceDelSeen.SizedString(jti, iss) }

// countKey is the key of a token's task count; hash is its HashOf. It is
// nil for anything else.
func countKey(hash string) []byte {
	raw, err := b64.DecodeString(hash)
	if err != nil || len(raw) != sha256.Size {
		return nil
	}
	return storage.SpaceDelCount.Key(raw)
}

func seenKey(iss, jti, hash string) []byte {
	raw, _ := b64.DecodeString(hash)
	return storage.SpaceDelSeen.Sized([]byte(jti), []byte(iss), raw)
}

// revokedAt is when the token id jti of issuer iss was revoked, for every
// issuer or for iss alone, whichever came first.
func (l *Ledger) revokedAt(iss, jti string) (time.Time, bool) {
	at, ok := l.revokedAll[jti]
	if iss == "" {
		return at, ok
	}
	if by, ok2 := l.revokedBy[tokenID{iss, jti}]; ok2 && (!ok || by.Before(at)) {
		return by, true
	}
	return at, ok
}

// CheckRevoked rejects a chain any of whose links is revoked, by its
// (issuer, jti) or by its jti for every issuer: revoking a token revokes
// every descendant, whoever minted it.
func (l *Ledger) CheckRevoked(c *Chain) *Rejection {
	l.mu.Lock()
	defer l.mu.Unlock()
	for i, link := range c.Links {
		if at, ok := l.revokedAt(link.Claims.Issuer, link.Claims.ID); ok {
			which := "the token"
			if i > 0 {
				which = "an ancestor of the token"
			}
			return reject(ClassRevoked, "revoked", fmt.Sprintf("%s (%s from %s) was revoked at %s", which, link.Claims.ID,
				truncate(link.Claims.Issuer, 64), at.UTC().Format(time.RFC3339))).at(link)
		}
	}
	return nil
}

// IsRevoked reports whether a token of issuer with id jti is refused, and
// since when. With issuer "" it reports whether jti is revoked for every
// issuer.
func (l *Ledger) IsRevoked(issuer, jti string) (time.Time, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.revokedAt(issuer, jti)
}

// TokenRef names one token: its issuer, id and hash (HashOf its compact
// form; empty when unknown).
type TokenRef struct {
	Issuer string `json:"issuer"`
	JTI    string `json:"jti"`
	Hash   string `json:"hash,omitempty"`
}

// Revocation is what one revocation did.
type Revocation struct {
	// Issuer is the issuer whose id was revoked; "" for every issuer.
	Issuer string
	JTI    string
	At     time.Time
	// IDs are the id revoked, then the descendants minted here that the
	// revocation cascaded to.
	IDs []string
	// Tokens are the tokens known to be affected: minted here (the token
	// and its descendants) or seen in traffic with a revoked id.
	Tokens []TokenRef
}

// ErrBadRevocation wraps the reasons a revocation can never be made: an
// id or issuer of the wrong length. Retrying does not help.
var ErrBadRevocation = errors.New("invalid revocation")

// Revoke revokes the token id jti (any id, minted here or not) for every
// issuer, including tokens first presented later, and among the tokens
// minted here every descendant. The revocation is durable before it
// returns and applies to the next request. also runs inside the same
// transaction (the caller's audit entry).
func (l *Ledger) Revoke(ctx context.Context, jti string, now time.Time, also ...func(tx *storage.Tx, r *Revocation) error) (*Revocation, error) {
	return l.revoke(ctx, "", jti, now, also)
}

// RevokeFrom revokes the token id jti of issuer only: a token with the
// same id from any other issuer stays valid. Descendants minted here are
// revoked as with Revoke.
func (l *Ledger) RevokeFrom(ctx context.Context, issuer, jti string, now time.Time, also ...func(tx *storage.Tx, r *Revocation) error) (*Revocation, error) {
	if issuer == "" || len(issuer) > maxClaimLen {
		return nil, fmt.Errorf("%w: an issuer is 1..%d characters", ErrBadRevocation, maxClaimLen)
	}
	return l.revoke(ctx, issuer, jti, now, also)
}

func (l *Ledger) revoke(ctx context.Context, iss, jti string, now time.Time, also []func(tx *storage.Tx, r *Revocation) error) (*Revocation, error) {
	// Kept as the APIs give it, so every answer shows the same time.
	now = wire.Time(now)
	if jti == "" || len(jti) > maxClaimLen {
		return nil, fmt.Errorf("%w: a token id is 1..%d characters", ErrBadRevocation, maxClaimLen)
	}
	issued, err := l.Issued(false)
	if err != nil {
		return nil, err
	}
	// Minted records by the token they attenuate, and those matching the
	// revoked id itself.
	children := map[tokenID][]*Record{}
	var self []*Record
	for i := range issued {
		r := &issued[i]
		if r.ParentID != "" {
			children[tokenID{r.ParentIssuer, r.ParentID}] = append(children[tokenID{r.ParentIssuer, r.ParentID}], r)
		}
		if r.ID == jti && (iss == "" || r.Delegator == iss) {
			self = append(self, r)
		}
	}
	var desc []*Record
	visited := map[tokenID]bool{}
	visit := func(rs []*Record) {
		for _, r := range rs {
			if k := (tokenID{r.Delegator, r.ID}); !visited[k] {
				visited[k] = true
				desc = append(desc, r)
			}
		}
	}
	if iss == "" {
		for k, rs := range children {
			if k.jti == jti {
				visit(rs)
			}
		}
		sort.Slice(desc, func(i, j int) bool { return desc[i].ID < desc[j].ID })
	} else {
		visit(children[tokenID{iss, jti}])
	}
	for i := 0; i < len(desc); i++ {
		visit(children[tokenID{desc[i].Delegator, desc[i].ID}])
	}

	now = now.UTC()
	rev := &Revocation{Issuer: iss, JTI: jti, At: now, IDs: []string{jti}}
	known := map[TokenRef]bool{}
	addToken := func(t TokenRef) {
		if !known[t] {
			known[t] = true
			rev.Tokens = append(rev.Tokens, t)
		}
	}
	for _, r := range self {
		addToken(TokenRef{Issuer: r.Delegator, JTI: r.ID, Hash: r.TokenHash})
	}
	seen, err := l.seen(iss, jti)
	if err != nil {
		return nil, err
	}
	for _, s := range seen {
		addToken(s.Ref())
	}
	for _, r := range desc {
		if r.ID != jti {
			rev.IDs = append(rev.IDs, r.ID)
		}
		addToken(TokenRef{Issuer: r.Delegator, JTI: r.ID, Hash: r.TokenHash})
		seen, err := l.seen(r.Delegator, r.ID)
		if err != nil {
			return nil, err
		}
		for _, s := range seen {
			addToken(s.Ref())
		}
	}

	stamp, _ := now.MarshalBinary()
	err = l.db.Commit(ctx, storage.Strict, func(tx *storage.Tx) error {
		// Kept for good: tokens from other issuers may live longer than
		// any TTL chosen here, and revocations are few.
		setOnce := func(key []byte) {
			if _, err := tx.Get(key); err != nil {
				tx.Set(key, stamp) // else keep the first revocation time
			}
		}
		if iss == "" {
			setOnce(revokeAllKey(jti))
		} else {
			setOnce(revokeKey(iss, jti))
		}
		for _, r := range desc {
			setOnce(revokeKey(r.Delegator, r.ID))
		}
		for _, r := range append(self, desc...) {
			if r.RevokedAt != nil {
				continue
			}
			c := *r
			c.RevokedAt = &now
			b, err := json.Marshal(&c)
			if err != nil {
				return err
			}
			tx.SetWithTTL(issuedKey(c.ID), b, recordTTL(&c, now))
		}
		for _, fn := range also {
			if err := fn(tx, rev); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	l.mu.Lock()
	if iss == "" {
		if _, ok := l.revokedAll[jti]; !ok {
			l.revokedAll[jti] = now
		}
	} else if _, ok := l.revokedBy[tokenID{iss, jti}]; !ok {
		l.revokedBy[tokenID{iss, jti}] = now
	}
	for _, r := range desc {
		if _, ok := l.revokedBy[tokenID{r.Delegator, r.ID}]; !ok {
			l.revokedBy[tokenID{r.Delegator, r.ID}] = now
		}
	}
	l.mu.Unlock()
	return rev, nil
}

// Seen is a token presented in traffic and authorized, as recorded the
// first time.
type Seen struct {
	Issuer    string    `json:"issuer"`
	JTI       string    `json:"jti"`
	Hash      string    `json:"hash"`
	Delegate  string    `json:"delegate"`
	ExpiresAt time.Time `json:"expires_at"`
	SeenAt    time.Time `json:"seen_at"`
}

// Ref names the token.
func (s *Seen) Ref() TokenRef { return TokenRef{Issuer: s.Issuer, JTI: s.JTI, Hash: s.Hash} }

// SeenTokens lists the tokens with id jti seen in traffic, from every
// issuer (issuer "") or from one.
func (l *Ledger) SeenTokens(issuer, jti string) ([]Seen, error) { return l.seen(issuer, jti) }

func (l *Ledger) seen(iss, jti string) ([]Seen, error) {
	prefix := seenPrefix(jti)
	if iss != "" {
		prefix = seenIssuerPrefix(iss, jti)
	}
	var out []Seen
	err := l.db.View(func(r *storage.Reader) error {
		return r.Scan(prefix, false, func(_, v []byte) (bool, error) {
			var s Seen
			if err := json.Unmarshal(v, &s); err != nil {
				return false, fmt.Errorf("seen token record: %w", err)
			}
			out = append(out, s)
			return true, nil
		})
	})
	return out, err
}

// Known reports whether jti was minted here or seen in traffic (from any
// issuer).
func (l *Ledger) Known(jti string) (bool, error) {
	if r, err := l.Get(jti); err != nil || r != nil {
		return r != nil, err
	}
	s, err := l.seen("", jti)
	return len(s) > 0, err
}

// Reservation holds one task slot on every link of a chain.
type Reservation struct {
	l      *Ledger
	links  []reserved
	staged atomic.Bool
	done   bool
}

// reserved is one link's slot.
type reserved struct {
	hash string
	exp  int64
	// seen is the token's record when this reservation is the one to
	// write it (the first authorized use of the token).
	seen *Seen
}

// Reserve takes a task slot on every link, all or none: a link whose
// max_tasks is spent (counting tasks in flight) rejects the call. Exact
// under concurrency: with max_tasks 5, exactly 5 of 50 parallel calls pass.
// Counts are per token (by hash), so two tokens sharing a jti never share
// a count. A token used for the first time is also recorded as seen when
// the reservation is staged.
func (l *Ledger) Reserve(c *Chain, now time.Time) (*Reservation, *Rejection) {
	l.mu.Lock()
	defer l.mu.Unlock()
	entries := make([]*usage, len(c.Links))
	for i, link := range c.Links {
		e, err := l.entry(link)
		if err != nil {
			return nil, reject(ClassLimit, "limit_unreadable", "the task count of "+link.Claims.ID+" could not be read; retry later").at(link)
		}
		if max := link.MaxTasks(); max >= 0 && e.count >= max {
			return nil, reject(ClassLimit, "max_tasks_reached", fmt.Sprintf("token %s allows %d tasks and all are used", link.Claims.ID, max)).at(link)
		}
		entries[i] = e
	}
	res := &Reservation{l: l, links: make([]reserved, len(c.Links))}
	for i, e := range entries {
		link := c.Links[i]
		e.count++
		e.inflight++
		res.links[i] = reserved{hash: link.Hash, exp: int64(*link.Claims.Expiry)}
		if e.seen == seenNo {
			e.seen = seenStaging
			res.links[i].seen = &Seen{Issuer: link.Claims.Issuer, JTI: link.Claims.ID, Hash: link.Hash,
				Delegate: string(link.Claims.Audience), ExpiresAt: time.Unix(int64(*link.Claims.Expiry), 0).UTC(), SeenAt: wire.Time(now)}
		}
	}
	l.prune(now.Unix())
	return res, nil
}

// entry returns the in-memory count of a link, loading it (and whether
// the token was seen before) on first use.
func (l *Ledger) entry(link *Link) (*usage, error) {
	if e, ok := l.used[link.Hash]; ok {
		return e, nil
	}
	key := countKey(link.Hash)
	if key == nil {
		return nil, fmt.Errorf("token %s has no hash", link.Claims.ID)
	}
	var n uint64
	seen := seenNo
	err := l.db.View(func(r *storage.Reader) error {
		b, err := r.Get(key)
		switch {
		case errors.Is(err, storage.ErrNotFound):
		case err != nil:
			return err
		default:
			if n, err = storage.DecodeUint64(b); err != nil {
				return err
			}
		}
		_, err = r.Get(seenKey(link.Claims.Issuer, link.Claims.ID, link.Hash))
		switch {
		case err == nil:
			seen = seenYes
		case !errors.Is(err, storage.ErrNotFound):
			return err
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	e := &usage{count: int64(n), exp: int64(*link.Claims.Expiry), seen: seen}
	l.used[link.Hash] = e
	return e, nil
}

// prune drops, now and then, the counts of expired tokens with nothing in
// flight; they are on disk should the token ever come back.
func (l *Ledger) prune(now int64) {
	l.ops++
	if l.ops%1024 != 0 {
		return
	}
	for h, e := range l.used {
		if e.inflight == 0 && e.exp < now-int64(time.Hour/time.Second) {
			delete(l.used, h)
		}
	}
}

// Release gives the slots back: the agent never answered.
func (r *Reservation) Release() { r.end(true) }

// Stage writes the task into every link's persisted count, and the Seen
// record of tokens used for the first time, inside the task's own
// transaction. It may run more than once (the pipeline can retry a
// group); it only writes.
func (r *Reservation) Stage(tx *storage.Tx, now time.Time) error {
	for _, k := range r.links {
		key := countKey(k.hash)
		n, err := tx.GetUint64(key)
		if err != nil {
			return err
		}
		ttl := time.Until(time.Unix(k.exp, 0)) + 24*time.Hour
		if ttl < time.Hour {
			ttl = time.Hour
		}
		tx.SetWithTTL(key, storage.EncodeUint64(n+1), ttl)
		if s := k.seen; s != nil {
			b, err := json.Marshal(s)
			if err != nil {
				return err
			}
			ttl := time.Until(s.ExpiresAt) + 7*24*time.Hour
			if ttl < time.Hour {
				ttl = time.Hour
			}
			tx.SetWithTTL(seenKey(s.Issuer, s.JTI, s.Hash), b, ttl)
		}
	}
	r.staged.Store(true)
	return nil
}

// Finish marks the task as no longer in flight once its write is done.
func (r *Reservation) Finish() { r.end(false) }

// end takes the task out of flight, once; giveBack also returns its slot.
// A Seen record this reservation was to write counts as written once it
// was staged and finished; otherwise the next use of the token writes it.
func (r *Reservation) end(giveBack bool) {
	if r == nil || r.done {
		return
	}
	r.done = true
	r.l.mu.Lock()
	defer r.l.mu.Unlock()
	for _, k := range r.links {
		e, ok := r.l.used[k.hash]
		if !ok {
			continue
		}
		if giveBack {
			e.count--
		}
		e.inflight--
		if k.seen != nil && e.seen == seenStaging {
			if !giveBack && r.staged.Load() {
				e.seen = seenYes
			} else {
				e.seen = seenNo
			}
		}
	}
}

// UsedByHash is the number of tasks run (or in flight) under the token
// whose HashOf is hash.
func (l *Ledger) UsedByHash(hash string) (int64, error) {
	key := countKey(hash)
	if key == nil {
		return 0, fmt.Errorf("%q is not a token hash", truncate(hash, 64))
	}
	l.mu.Lock()
	if e, ok := l.used[hash]; ok {
		l.mu.Unlock()
		return e.count, nil
	}
	l.mu.Unlock()
	var n uint64
	err := l.db.View(func(r *storage.Reader) error {
		b, err := r.Get(key)
		if errors.Is(err, storage.ErrNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		n, err = storage.DecodeUint64(b)
		return err
	})
	return int64(n), err
}

// Used is the task count of a minted token (0 for a record without its
// token hash).
func (l *Ledger) Used(r *Record) (int64, error) {
	if r == nil || r.TokenHash == "" {
		return 0, nil
	}
	return l.UsedByHash(r.TokenHash)
}

// Record is a token minted here, as the Delegation API shows it.
type Record struct {
	ID        string     `json:"id"`
	Delegator string     `json:"delegator"`
	Delegate  string     `json:"delegate"`
	CreatedAt time.Time  `json:"created_at"`
	ExpiresAt time.Time  `json:"expires_at"`
	Scopes    []string   `json:"scopes"`
	MaxTasks  *int64     `json:"max_tasks"`
	ParentID  string     `json:"parent_id,omitempty"`
	RevokedAt *time.Time `json:"revoked_at"`
	// TokenHash is HashOf the token: its task count's key.
	TokenHash string `json:"token_hash,omitempty"`
	// ParentIssuer is the parent's issuer: with ParentID it names the
	// parent as revocations do.
	ParentIssuer string `json:"parent_issuer,omitempty"`
}

// Active reports whether the token is neither revoked nor expired.
func (r *Record) Active(now time.Time) bool { return r.RevokedAt == nil && now.Before(r.ExpiresAt) }

func recordTTL(r *Record, now time.Time) time.Duration {
	ttl := r.ExpiresAt.Sub(now) + 7*24*time.Hour
	if ttl < time.Hour {
		ttl = time.Hour
	}
	return ttl
}

// RecordIssued stores a minted token's record (kept until a week after it
// expires); also runs inside the same transaction.
func (l *Ledger) RecordIssued(ctx context.Context, m *Minted, also ...func(tx *storage.Tx, r *Record) error) (*Record, error) {
	c := &m.Claims
	r := &Record{
		ID: c.ID, Delegator: c.Issuer, Delegate: string(c.Audience),
		CreatedAt: time.Unix(c.IssuedAt.or(0), 0).UTC(), ExpiresAt: time.Unix(int64(*c.Expiry), 0).UTC(),
		Scopes: c.Scopes,
	}
	if c.Constraints != nil {
		r.MaxTasks = c.Constraints.MaxTasks
	}
	r.ParentID, r.ParentIssuer = m.ParentID, m.ParentIssuer
	r.TokenHash = HashOf(m.Token)
	b, err := json.Marshal(r)
	if err != nil {
		return nil, err
	}
	err = l.db.Commit(ctx, storage.Strict, func(tx *storage.Tx) error {
		tx.SetWithTTL(issuedKey(r.ID), b, recordTTL(r, time.Now()))
		for _, fn := range also {
			if err := fn(tx, r); err != nil {
				return err
			}
		}
		return nil
	})
	return r, err
}

// Issued lists the tokens minted here, newest first; activeOnly drops the
// revoked and expired ones.
func (l *Ledger) Issued(activeOnly bool) ([]Record, error) {
	var out []Record
	now := time.Now()
	err := l.db.View(func(rd *storage.Reader) error {
		return rd.Scan(storage.SpaceDelIssued.Prefix(), false, func(_, v []byte) (bool, error) {
			var r Record
			if err := json.Unmarshal(v, &r); err != nil {
				return false, err
			}
			if !activeOnly || r.Active(now) {
				out = append(out, r)
			}
			return true, nil
		})
	})
	sort.Slice(out, func(i, j int) bool { return out[i].ID > out[j].ID })
	return out, err
}

// Get reads one minted token's record (nil if not minted here).
func (l *Ledger) Get(jti string) (*Record, error) {
	var r *Record
	err := l.db.View(func(rd *storage.Reader) error {
		b, err := rd.Get(issuedKey(jti))
		if errors.Is(err, storage.ErrNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		r = new(Record)
		return json.Unmarshal(b, r)
	})
	return r, err
}
