package fleet

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// A Slot is one task counted against a token's max_tasks in the fleet's
// bucket: Take increments the token's count if it is below max, with
// compare-and-set on the key's revision, so replicas racing for the last
// slot never both get it.
type Slot struct {
	c       *Client
	key     string
	expires time.Time
	done    bool
}

// ErrSpent is Take's answer when the token's max_tasks are all used,
// counting every replica.
var ErrSpent = errors.New("fleet: max_tasks used up across the fleet")

// lastSeen caches each key's last known count and revision, so a take
// usually costs one round trip (an update at the cached revision) rather
// than two (get, then update).
type lastSeen struct {
	mu sync.Mutex
	m  map[string]kvState
}

type kvState struct {
	n   int64
	rev uint64 // 0: unknown
}

func (s *lastSeen) get(key string) kvState {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.m[key]
}

func (s *lastSeen) put(key string, st kvState) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.m == nil {
		s.m = map[string]kvState{}
	}
	if len(s.m) > 100_000 { // bounded: a miss only costs a round trip
		clear(s.m)
	}
	s.m[key] = st
}

// limitKey is the bucket key of a token: its hash (base64url, which KV
// keys allow).
func limitKey(hash string) string { return "t." + hash }

// Take counts one task against the token whose HashOf is hash, if fewer
// than max are counted. It returns ErrSpent when all are used, or an
// error wrapping ErrUnavailable when NATS cannot be reached. The count
// lives until the token expires (plus KeepAfterExpiry), so the bucket does
// not grow with every token ever used.
func (c *Client) Take(ctx context.Context, hash string, max int64, expires time.Time) (*Slot, error) {
	key := limitKey(hash)
	err := c.update(ctx, key, expires, func(n int64) (int64, error) {
		if n >= max {
			return 0, ErrSpent
		}
		return n + 1, nil
	})
	if err != nil {
		return nil, err
	}
	return &Slot{c: c, key: key, expires: expires}, nil
}

// errNoChange tells update that there is nothing to write.
var errNoChange = errors.New("fleet: count unchanged")

// KeepAfterExpiry is how long a token's count outlives its exp: longer
// than any clock skew a verifier tolerates, so no slot frees up while the
// token can still be accepted somewhere.
const KeepAfterExpiry = time.Hour

// Release gives the slot back (the agent never answered). It is a no-op
// the second time.
func (s *Slot) Release(ctx context.Context) error {
	if s == nil || s.done {
		return nil
	}
	s.done = true
	err := s.c.update(ctx, s.key, s.expires, func(n int64) (int64, error) {
		if n <= 0 {
			return 0, errNoChange // expired, or never counted: nothing to give back
		}
		return n - 1, nil
	})
	if errors.Is(err, errNoChange) {
		return nil
	}
	return err
}

// Count is the fleet-wide count of the token whose HashOf is hash.
func (c *Client) Count(ctx context.Context, hash string) (int64, error) {
	if err := c.setup(ctx); err != nil {
		return 0, err
	}
	ctx, cancel := c.opContext(ctx)
	defer cancel()
	e, err := c.limits.Get(ctx, limitKey(hash))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("%w: reading the count: %v", ErrUnavailable, c.lost(err))
	}
	return strconv.ParseInt(string(e.Value()), 10, 64)
}

// update applies next to the key's count with compare-and-set, retrying
// on conflict; the written count expires KeepAfterExpiry after expires.
func (c *Client) update(ctx context.Context, key string, expires time.Time, next func(int64) (int64, error)) error {
	if err := c.setup(ctx); err != nil {
		return err
	}
	ctx, cancel := c.opContext(ctx)
	defer cancel()
	st, cached := c.seen.get(key), true
	for {
		if !cached || st.rev == 0 {
			e, err := c.limits.Get(ctx, key)
			switch {
			case errors.Is(err, jetstream.ErrKeyNotFound):
				st = kvState{}
			case err != nil:
				return fmt.Errorf("%w: reading a task count: %v", ErrUnavailable, c.lost(err))
			default:
				n, perr := strconv.ParseInt(string(e.Value()), 10, 64)
				if perr != nil {
					return fmt.Errorf("fleet: task count %s is %q, not a number", key, e.Value())
				}
				st = kvState{n: n, rev: e.Revision()}
			}
			cached = false
		}
		n, err := next(st.n)
		if err != nil {
			if cached { // another replica may have released since: ask the bucket
				cached = false
				continue
			}
			return err
		}
		val := []byte(strconv.FormatInt(n, 10))
		rev, err := c.write(ctx, key, val, st.rev, c.ttl(expires))

		if err == nil {
			c.seen.put(key, kvState{n: n, rev: rev})
			return nil
		}
		if !isConflict(err) {
			return fmt.Errorf("%w: writing a task count: %v", ErrUnavailable, c.lost(err))
		}
		if ctx.Err() != nil {
			return fmt.Errorf("%w: %v", ErrUnavailable, ctx.Err())
		}
		cached = false
	}
}

// ttl is how long a count written now lives: until the token's expiry
// plus KeepAfterExpiry, at least a second (NATS's resolution).
func (c *Client) ttl(expires time.Time) time.Duration {
	d := time.Until(expires) + c.keepAfterExpiry
	if d < time.Second {
		d = time.Second
	}
	return d.Round(time.Second)
}

// write stores a count at revision rev (0: the key must not exist) with a
// per-message TTL. KeyValue.Update would drop the TTL the key was created
// with, so updates are published as KeyValue.Update publishes them, with
// the TTL header added.
func (c *Client) write(ctx context.Context, key string, val []byte, rev uint64, ttl time.Duration) (uint64, error) {
	if rev == 0 {
		return c.limits.Create(ctx, key, val, jetstream.KeyTTL(ttl))
	}
	pa, err := c.js.PublishMsg(ctx, &nats.Msg{Subject: "$KV." + LimitsBucket + "." + key, Data: val},
		jetstream.WithExpectLastSequencePerSubject(rev), jetstream.WithMsgTTL(ttl))
	if err != nil {
		return 0, err
	}
	return pa.Sequence, nil
}

// isConflict says whether a KV write lost a compare-and-set race (or
// created a key another replica created first).
func isConflict(err error) bool {
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) {
		return apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence || apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant
	}
	return errors.Is(err, jetstream.ErrKeyExists)
}
