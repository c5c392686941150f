package delegation

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/asap-sidecar/asap-sidecar/storage"
)

// Ledger keeps the delegation state that must be exact across requests,
// restarts and reloads, for one database:
//
//	r <jti>   revocation (revoked_at)
//	n <jti>   tasks run under the token (and its descendants)
//	d <jti>   tokens minted here
//
// Revocations and counts are also held in memory, so the per-request
// checks cost no I/O; every change is written to Badger first.
type Ledger struct {
	db *storage.DB

	mu      sync.Mutex
	revoked map[string]time.Time
	used    map[string]*usage
	ops     int
}

type usage struct {
	count    int64 // persisted + in flight
	inflight int64
	exp      int64
}

// OpenLedger loads the revocations of db.
func OpenLedger(db *storage.DB) (*Ledger, error) {
	l := &Ledger{db: db, revoked: map[string]time.Time{}, used: map[string]*usage{}}
	err := db.View(func(r *storage.Reader) error {
		return r.Scan(storage.SpaceDelRevoke.Prefix(), false, func(k, v []byte) (bool, error) {
			var at time.Time
			if err := at.UnmarshalBinary(v); err != nil {
				return false, fmt.Errorf("revocation of %s: %w", k[1:], err)
			}
			l.revoked[string(k[1:])] = at
			return true, nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("delegation: loading revocations: %w", err)
	}
	return l, nil
}

func revokeKey(jti string) []byte { return storage.SpaceDelRevoke.KeyString(jti) }
func countKey(jti string) []byte  { return storage.SpaceDelCount.KeyString(jti) }
func issuedKey(jti string) []byte { return storage.SpaceDelIssued.KeyString(jti) }

// CheckRevoked rejects a chain any of whose links is revoked: revoking a
// token revokes every descendant, whoever minted it.
func (l *Ledger) CheckRevoked(c *Chain) *Rejection {
	l.mu.Lock()
	defer l.mu.Unlock()
	for i, link := range c.Links {
		if at, ok := l.revoked[link.Claims.ID]; ok {
			which := "the token"
			if i > 0 {
				which = "an ancestor of the token"
			}
			return reject(ClassRevoked, "revoked", fmt.Sprintf("%s (%s) was revoked at %s", which, link.Claims.ID, at.UTC().Format(time.RFC3339))).at(link)
		}
	}
	return nil
}

// IsRevoked reports whether jti is revoked, and when.
func (l *Ledger) IsRevoked(jti string) (time.Time, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	at, ok := l.revoked[jti]
	return at, ok
}

// Revoke revokes jti (any id, minted here or not) and, among the tokens
// minted here, every descendant. It returns the ids it revoked. The
// revocation is durable before it returns and applies to the next request.
// also runs inside the same transaction (the caller's audit entry).
func (l *Ledger) Revoke(ctx context.Context, jti string, now time.Time, also ...func(tx *storage.Tx, ids []string) error) ([]string, error) {
	if jti == "" || len(jti) > 256 {
		return nil, errors.New("a token id is 1..256 characters")
	}
	issued, err := l.Issued(false)
	if err != nil {
		return nil, err
	}
	children := map[string][]string{}
	for _, r := range issued {
		if r.ParentID != "" {
			children[r.ParentID] = append(children[r.ParentID], r.ID)
		}
	}
	ids := []string{jti}
	for i := 0; i < len(ids); i++ {
		ids = append(ids, children[ids[i]]...)
	}
	now = now.UTC()
	stamp, _ := now.MarshalBinary()
	byID := map[string]*Record{}
	for i := range issued {
		byID[issued[i].ID] = &issued[i]
	}
	err = l.db.Commit(ctx, storage.Strict, func(tx *storage.Tx) error {
		for _, id := range ids {
			if _, err := tx.Get(revokeKey(id)); err == nil {
				continue // keep the first revocation time
			}
			// Kept for good: tokens from other issuers may live
			// longer than any TTL chosen here, and revocations are few.
			tx.Set(revokeKey(id), stamp)
			if r := byID[id]; r != nil && r.RevokedAt == nil {
				r.RevokedAt = &now
				b, err := json.Marshal(r)
				if err != nil {
					return err
				}
				tx.SetWithTTL(issuedKey(id), b, recordTTL(r, now))
			}
		}
		for _, fn := range also {
			if err := fn(tx, ids); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	l.mu.Lock()
	for _, id := range ids {
		if _, ok := l.revoked[id]; !ok {
			l.revoked[id] = now
		}
	}
	l.mu.Unlock()
	return ids, nil
}

// Reservation holds one task slot on every link of a chain.
type Reservation struct {
	l    *Ledger
	jtis []string
	exps []int64
	done bool
}

// Reserve takes a task slot on every link, all or none: a link whose
// max_tasks is spent (counting tasks in flight) rejects the call. Exact
// under concurrency: with max_tasks 5, exactly 5 of 50 parallel calls pass.
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
	res := &Reservation{l: l, jtis: make([]string, len(c.Links)), exps: make([]int64, len(c.Links))}
	for i, e := range entries {
		e.count++
		e.inflight++
		res.jtis[i] = c.Links[i].Claims.ID
		res.exps[i] = int64(*c.Links[i].Claims.Expiry)
	}
	l.prune(now.Unix())
	return res, nil
}

// entry returns the in-memory count of a link, loading it on first use.
func (l *Ledger) entry(link *Link) (*usage, error) {
	jti := link.Claims.ID
	if e, ok := l.used[jti]; ok {
		return e, nil
	}
	n, err := l.storedCount(jti)
	if err != nil {
		return nil, err
	}
	e := &usage{count: n, exp: int64(*link.Claims.Expiry)}
	l.used[jti] = e
	return e, nil
}

// prune drops, now and then, the counts of expired tokens with nothing in
// flight; they are on disk should the token ever come back.
func (l *Ledger) prune(now int64) {
	l.ops++
	if l.ops%1024 != 0 {
		return
	}
	for jti, e := range l.used {
		if e.inflight == 0 && e.exp < now-int64(time.Hour/time.Second) {
			delete(l.used, jti)
		}
	}
}

// Release gives the slots back: the agent never answered.
func (r *Reservation) Release() { r.end(true) }

// Stage writes the task into every link's persisted count, inside the
// task's own transaction. It may run more than once (the pipeline can
// retry a group); it only writes.
func (r *Reservation) Stage(tx *storage.Tx, now time.Time) error {
	for i, jti := range r.jtis {
		n, err := tx.GetUint64(countKey(jti))
		if err != nil {
			return err
		}
		ttl := time.Until(time.Unix(r.exps[i], 0)) + 24*time.Hour
		if ttl < time.Hour {
			ttl = time.Hour
		}
		tx.SetWithTTL(countKey(jti), storage.EncodeUint64(n+1), ttl)
	}
	return nil
}

// Finish marks the task as no longer in flight once its write is done.
func (r *Reservation) Finish() { r.end(false) }

// end takes the task out of flight, once; giveBack also returns its slot.
func (r *Reservation) end(giveBack bool) {
	if r == nil || r.done {
		return
	}
	r.done = true
	r.l.mu.Lock()
	defer r.l.mu.Unlock()
	for _, jti := range r.jtis {
		if e, ok := r.l.used[jti]; ok {
			if giveBack {
				e.count--
			}
			e.inflight--
		}
	}
}

// Used is the number of tasks run (or in flight) under jti.
func (l *Ledger) Used(jti string) (int64, error) {
	l.mu.Lock()
	if e, ok := l.used[jti]; ok {
		l.mu.Unlock()
		return e.count, nil
	}
	l.mu.Unlock()
	return l.storedCount(jti)
}

// storedCount is the persisted task count of jti (0 when none).
func (l *Ledger) storedCount(jti string) (int64, error) {
	var n uint64
	err := l.db.View(func(r *storage.Reader) error {
		b, err := r.Get(countKey(jti))
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
	r.ParentID = m.ParentID
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
