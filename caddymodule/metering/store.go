package metering

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"time"

	"github.com/oklog/ulid/v2"

	"github.com/asap-sidecar/asap-sidecar/caddymodule/wire"
	"github.com/asap-sidecar/asap-sidecar/storage"
)

// Store keeps usage events in the storage key spaces for usage:
//
//	u <ulid>                    event (primary, time-ordered; codec.go)
//	v a <h(agent)> <ulid>       index by agent (no value)
//	v c <h(consumer)> <ulid>    index by consumer
//	v t <h(task id)> <ulid>     index by task
//	w sized(agent, consumer, envelope id)   dedup marker → call digest
//	c <agent>\0forwarded|completed|failed   outcome counters
//
// The ULID's time part is the event's timestamp, so every prefix is also in
// time order (to the millisecond; within one, in arrival order) and a time
// window is a seek plus a stop. Index entries are keys only: writes stay
// small on the hot path, and a filtered query reads the events its index
// range names. h(x) is the first 8 bytes of x's SHA-256, so an index key
// is 26 bytes however long the id: a query matches every event it reads
// against its filter, and two ids sharing h cost it reads, never answers.
//
// The agent index is not the primary under another name: the process has
// one database for every handler (one agent each), and a handler without
// an agent records each call under its recipient, so a store may hold
// several agents, and an agent's query must not read the others' events.
// Everything but the counters expires after the retention period.
type Store struct {
	db        *storage.DB
	retention time.Duration
}

// New returns a store over db. retention 0 keeps events forever.
func New(db *storage.DB, retention time.Duration) *Store {
	return &Store{db: db, retention: retention}
}

// Retention is the configured retention period (0: forever).
func (s *Store) Retention() time.Duration { return s.retention }

// DB is the underlying database.
func (s *Store) DB() *storage.DB { return s.db }

// Record stores agent-reported events in one strict write: all or none.
func (s *Store) Record(ctx context.Context, events []*Event) error {
	return s.db.Commit(ctx, storage.Strict, func(tx *storage.Tx) error {
		for _, e := range events {
			if _, err := s.Put(tx, e, e.EnvelopeID); err != nil {
				return err
			}
		}
		return nil
	})
}

const (
	idxAgent    = 'a'
	idxConsumer = 'c'
	idxTask     = 't'
)

func primaryKey(id ulid.ULID) []byte { return storage.SpaceUsage.Key(id[:]) }

// idOf is the ULID a primary or index key ends in.
func idOf(k []byte) (id ulid.ULID) {
	copy(id[:], k[max(len(k)-len(id), 0):])
	return id
}

// indexHash is how many bytes of an id's SHA-256 its index keys hold:
// enough that unrelated ids practically never share a range.
const indexHash = 8

func indexPrefix(kind byte, value string) []byte {
	h := sha256.Sum256([]byte(value))
	return storage.SpaceUsageIdx.Key(append([]byte{kind}, h[:indexHash]...))
}

func indexKey(kind byte, value string, id ulid.ULID) []byte {
	return append(indexPrefix(kind, value), id[:]...)
}

// dedupKey is per consumer: two consumers may pick the same envelope id,
// and each of their tasks is usage. The parts are kept readable rather
// than hashed: Badger shares a key's common start with its neighbours,
// which a hash would defeat (measured: 354 bytes a task against 382).
func dedupKey(agent, consumer, envelopeID string) []byte {
	return storage.SpaceUsageSeen.SizedString(agent, consumer, envelopeID)
}

// Put stages e in tx. With a non-empty dedup (the envelope id), a second
// Put of the same agent, consumer and dedup value within the retention
// period is a no-op that returns false: a client's retry is not counted
// twice. The marker and the event are written in the same transaction.
func (s *Store) Put(tx *storage.Tx, e *Event, dedup string) (bool, error) {
	return s.PutCall(tx, e, dedup, nil)
}

// PutCall is Put that also keeps digest, the call's fingerprint, in the
// marker, so that Seen can tell a retry from a different call reusing the
// envelope id.
func (s *Store) PutCall(tx *storage.Tx, e *Event, dedup string, digest []byte) (bool, error) {
	var mk []byte
	if dedup != "" {
		mk = dedupKey(e.AgentID, e.ConsumerID, dedup)
		_, err := tx.Get(mk)
		if err == nil {
			return false, nil
		}
		if !errors.Is(err, storage.ErrNotFound) {
			return false, err
		}
	}
	e.Timestamp = wire.Time(e.Timestamp)
	id, err := ulid.New(ulid.Timestamp(e.Timestamp), ulid.DefaultEntropy())
	if err != nil {
		return false, err
	}
	if y := e.Timestamp.Year(); y > 9999 {
		// The API could not write it back (RFC 3339 has four-digit years).
		return false, fmt.Errorf("metering: timestamp year %d is after 9999", y)
	}
	tx.SetWithTTL(primaryKey(id), appendEvent(nil, e), s.retention)
	tx.SetWithTTL(indexKey(idxAgent, e.AgentID, id), nil, s.retention)
	tx.SetWithTTL(indexKey(idxConsumer, e.ConsumerID, id), nil, s.retention)
	tx.SetWithTTL(indexKey(idxTask, e.TaskID, id), nil, s.retention)
	if mk != nil {
		// Purge finds the marker from the event's fields, so the marker
		// need not name its event.
		tx.SetWithTTL(mk, digest, s.retention)
	}
	return true, nil
}

// Seen returns the digest of the call metered under (agent, consumer,
// envelope id), and whether there is one.
func (s *Store) Seen(agent, consumer, envelopeID string) (digest []byte, ok bool, err error) {
	err = s.db.View(func(r *storage.Reader) error {
		v, err := r.Get(dedupKey(agent, consumer, envelopeID))
		if errors.Is(err, storage.ErrNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		ok = true
		if len(v) > 0 {
			digest = append([]byte(nil), v...)
		}
		return nil
	})
	return digest, ok, err
}

// Outcome counters of forwarded calls, kept for /asap/status and never
// expired.
type Counts struct {
	Forwarded uint64 `json:"tasks_forwarded"`
	Completed uint64 `json:"tasks_completed"`
	Failed    uint64 `json:"tasks_failed"`
}

func counterKey(agent, name string) []byte { return storage.SpaceCounter.KeyString(agent, name) }

// CountOutcome stages one forwarded call's outcome.
func CountOutcome(tx *storage.Tx, agent string, failed bool) error {
	if _, err := tx.AddUint64(counterKey(agent, "forwarded"), 1); err != nil {
		return err
	}
	name := "completed"
	if failed {
		name = "failed"
	}
	_, err := tx.AddUint64(counterKey(agent, name), 1)
	return err
}

// CountsOf reads an agent's outcome counters.
func CountsOf(db *storage.DB, agent string) (Counts, error) {
	var c Counts
	err := db.View(func(r *storage.Reader) error {
		for _, f := range []struct {
			name string
			dst  *uint64
		}{{"forwarded", &c.Forwarded}, {"completed", &c.Completed}, {"failed", &c.Failed}} {
			b, err := r.Get(counterKey(agent, f.name))
			if errors.Is(err, storage.ErrNotFound) {
				continue
			}
			if err != nil {
				return err
			}
			if *f.dst, err = storage.DecodeUint64(b); err != nil {
				return err
			}
		}
		return nil
	})
	return c, err
}

// Filter narrows a query. Zero fields do not filter; Start and End are
// inclusive.
type Filter struct {
	AgentID, ConsumerID, TaskID string
	Start, End                  time.Time
}

func (f *Filter) match(e *Event) bool {
	return (f.AgentID == "" || e.AgentID == f.AgentID) &&
		(f.ConsumerID == "" || e.ConsumerID == f.ConsumerID) &&
		(f.TaskID == "" || e.TaskID == f.TaskID) &&
		(f.Start.IsZero() || !e.Timestamp.Before(f.Start)) &&
		(f.End.IsZero() || !e.Timestamp.After(f.End))
}

// prefix picks the narrowest key range for f: task, then consumer, then
// agent index, else the time-ordered primary.
func (f *Filter) prefix() []byte {
	switch {
	case f.TaskID != "":
		return indexPrefix(idxTask, f.TaskID)
	case f.ConsumerID != "":
		return indexPrefix(idxConsumer, f.ConsumerID)
	case f.AgentID != "":
		return indexPrefix(idxAgent, f.AgentID)
	}
	return storage.SpaceUsage.Prefix()
}

// Each calls fn for every event matching f, oldest first, until fn returns
// false.
func (s *Store) Each(f Filter, fn func(*Event) bool) error {
	prefix := f.prefix()
	var seek []byte
	if !f.Start.IsZero() {
		var lower ulid.ULID
		if err := lower.SetTime(ulid.Timestamp(f.Start)); err == nil {
			seek = append(append([]byte{}, prefix...), lower[:]...)
		}
	}
	var endMS uint64
	if !f.End.IsZero() {
		endMS = ulid.Timestamp(f.End)
	}
	primary := prefix[0] == byte(storage.SpaceUsage)
	return s.db.View(func(r *storage.Reader) error {
		return r.ScanFrom(prefix, seek, false, func(k, v []byte) (bool, error) {
			if len(k) != len(prefix)+len(ulid.ULID{}) {
				return true, nil // not one of ours: no event to name
			}
			id := idOf(k)
			if endMS != 0 && id.Time() > endMS {
				return false, nil // past the window: the rest is later still
			}
			if !primary {
				var err error
				if v, err = r.Get(primaryKey(id)); errors.Is(err, storage.ErrNotFound) {
					return true, nil // expired between the index and the event
				} else if err != nil {
					return false, err
				}
			}
			e, err := decodeEvent(id, v)
			if err != nil {
				return false, err
			}
			if !f.match(&e) {
				return true, nil
			}
			return fn(&e), nil
		})
	})
}

// Query returns the matching events, oldest first, skipping offset and
// returning at most limit.
func (s *Store) Query(f Filter, limit, offset int) ([]Event, error) {
	out := []Event{}
	if limit <= 0 {
		return out, nil
	}
	skipped := 0
	err := s.Each(f, func(e *Event) bool {
		if skipped < offset {
			skipped++
			return true
		}
		out = append(out, *e)
		return len(out) < limit
	})
	return out, err
}

// Stats is the answer of GET /usage/stats.
type Stats struct {
	TotalEvents         int        `json:"total_events"`
	OldestTimestamp     *time.Time `json:"oldest_timestamp"`
	RetentionTTLSeconds *int64     `json:"retention_ttl_seconds"`
}

// Stats counts the stored events.
func (s *Store) Stats() (Stats, error) {
	var st Stats
	if s.retention > 0 {
		secs := int64(s.retention / time.Second)
		st.RetentionTTLSeconds = &secs
	}
	err := s.db.View(func(r *storage.Reader) error {
		return r.Scan(storage.SpaceUsage.Prefix(), false, func(k, v []byte) (bool, error) {
			if st.TotalEvents == 0 {
				e, err := decodeEvent(idOf(k), v)
				if err != nil {
					return false, err
				}
				st.OldestTimestamp = &e.Timestamp
			}
			st.TotalEvents++
			return true, nil
		})
	})
	return st, err
}

// Purge deletes events whose timestamp is older than now minus the
// retention period (events recorded with an old timestamp outlive it,
// since Badger's TTL counts from the write). It returns how many it
// removed; with no retention it removes nothing.
func (s *Store) Purge(now time.Time) (int, error) {
	if s.retention <= 0 {
		return 0, nil
	}
	cutoff := now.Add(-s.retention)
	var old []Event
	var ids []ulid.ULID
	err := s.db.View(func(r *storage.Reader) error {
		return r.Scan(storage.SpaceUsage.Prefix(), false, func(k, v []byte) (bool, error) {
			id := idOf(k)
			e, err := decodeEvent(id, v)
			if err != nil {
				return false, err
			}
			if !e.Timestamp.Before(cutoff) {
				return ulid.Timestamp(e.Timestamp) <= ulid.Timestamp(cutoff), nil
			}
			old, ids = append(old, e), append(ids, id)
			return true, nil
		})
	})
	if err != nil {
		return 0, err
	}
	const chunk = 500
	for i := 0; i < len(old); i += chunk {
		j := min(i+chunk, len(old))
		err := s.db.Commit(context.Background(), storage.Strict, func(tx *storage.Tx) error {
			for k := i; k < j; k++ {
				e, id := &old[k], ids[k]
				tx.Delete(primaryKey(id))
				tx.Delete(indexKey(idxAgent, e.AgentID, id))
				tx.Delete(indexKey(idxConsumer, e.ConsumerID, id))
				tx.Delete(indexKey(idxTask, e.TaskID, id))
				if e.EnvelopeID != "" {
					tx.Delete(dedupKey(e.AgentID, e.ConsumerID, e.EnvelopeID))
				}
			}
			return nil
		})
		if err != nil {
			return i, err
		}
	}
	return len(old), nil
}
