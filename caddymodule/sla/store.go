package sla

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"sort"
	"strings"
	"time"

	"github.com/asap-sidecar/asap-sidecar/storage"
)

// Stored records of an agent in the SLA key space:
//
//	s m\0<agent>\0<minute>    minute bucket (kept 7h)
//	s h\0<agent>\0<hour>      hour bucket (kept 32d)
//	s b\0<agent>\0<id>        breach (open: kept; resolved: 90d)
//	s s\0<agent>\0<unix>      metrics snapshot (kept 32d)
const (
	keepMinuteBuckets = 7 * time.Hour
	keepHourBuckets   = 32 * 24 * time.Hour
	keepBreaches      = 90 * 24 * time.Hour
	keepSnapshots     = 32 * 24 * time.Hour
)

func be64(v int64) []byte {
	b := make([]byte, 8)
	binary.BigEndian.PutUint64(b, uint64(v))
	return b
}

func minuteKey(agent string, m int64) []byte {
	return storage.SpaceSLA.Key([]byte("m"), []byte(agent), be64(m))
}
func hourKey(agent string, h int64) []byte {
	return storage.SpaceSLA.Key([]byte("h"), []byte(agent), be64(h))
}
func breachKey(agent, id string) []byte {
	return storage.SpaceSLA.Key([]byte("b"), []byte(agent), []byte(id))
}
func snapshotKey(agent string, at int64) []byte {
	return storage.SpaceSLA.Key([]byte("s"), []byte(agent), be64(at))
}
func prefix(kind, agent string) []byte {
	return storage.SpaceSLA.Prefix([]byte(kind), []byte(agent))
}

func tail64(k []byte) int64 { return int64(binary.BigEndian.Uint64(k[len(k)-8:])) }

// load reads the buckets still in their windows and the open breaches.
func (t *Tracker) load() error {
	now := t.hooks.Now()
	return t.db.View(func(r *storage.Reader) error {
		for _, kind := range []struct {
			name   string
			into   map[int64]*Bucket
			oldest int64
		}{{"m", t.minutes, minuteOf(now) - keepMinutes}, {"h", t.hours, hourOf(now) - keepHours}} {
			err := r.Scan(prefix(kind.name, t.agent), false, func(k, v []byte) (bool, error) {
				if at := tail64(k); at > kind.oldest {
					b, err := DecodeBucket(v)
					if err != nil {
						return false, err
					}
					kind.into[at] = b
				}
				return true, nil
			})
			if err != nil {
				return err
			}
		}
		return r.Scan(prefix("b", t.agent), false, func(_, v []byte) (bool, error) {
			var b Breach
			if err := json.Unmarshal(v, &b); err != nil {
				return false, err
			}
			if b.ResolvedAt == nil {
				t.open[conditionKey(&b)] = &b
			}
			return true, nil
		})
	})
}

// conditionKey is the key a breach is tracked under: its type, and for
// burn-rate alerts the window pair its threshold names ("… over 1h/5m").
func conditionKey(b *Breach) string {
	if b.BreachType != TypeErrorBudget {
		return b.BreachType
	}
	_, pair, _ := strings.Cut(b.Threshold, " over ")
	return TypeErrorBudget + ":" + pair
}

// flush stores the buckets that changed and drops those past their
// windows from memory.
func (t *Tracker) flush(ctx context.Context) error {
	now := t.hooks.Now()
	t.mu.Lock()
	type kv struct {
		k, v []byte
		ttl  time.Duration
	}
	var writes []kv
	for m := range t.dirty {
		if b := t.minutes[m]; b != nil {
			writes = append(writes, kv{minuteKey(t.agent, m), b.Encode(), keepMinuteBuckets})
		}
		h := m / 60
		if b := t.hours[h]; b != nil {
			writes = append(writes, kv{hourKey(t.agent, h), b.Encode(), keepHourBuckets})
		}
	}
	t.dirty = map[int64]bool{}
	for m := range t.minutes {
		if m <= minuteOf(now)-keepMinutes {
			delete(t.minutes, m)
		}
	}
	for h := range t.hours {
		if h <= hourOf(now)-keepHours {
			delete(t.hours, h)
		}
	}
	t.mu.Unlock()
	if len(writes) == 0 {
		return nil
	}
	return t.db.Commit(ctx, storage.Relaxed, func(tx *storage.Tx) error {
		for _, w := range writes {
			tx.SetWithTTL(w.k, w.v, w.ttl)
		}
		return nil
	})
}

// snapshotIfDue keeps the metrics of the period since the last snapshot,
// for /sla/history, once SnapshotEvery has passed.
func (t *Tracker) snapshotIfDue() { t.snapshot(false) }

// snapshot stores the samples gathered since the last snapshot (kept apart
// as they arrive, so every sample is in exactly one period) and starts the
// next period where this one ends.
func (t *Tracker) snapshot(force bool) {
	now := t.hooks.Now()
	t.mu.Lock()
	since := t.lastSnap
	if !force && now.Sub(since) < t.cfg.SnapshotEvery {
		t.mu.Unlock()
		return
	}
	sum := t.period
	t.period, t.lastSnap = NewBucket(), now
	t.mu.Unlock()
	if sum.Completed+sum.Failed+sum.HealthTotal == 0 {
		return
	}
	snap := metricsOf(t.agent, since, now, sum)
	b, _ := json.Marshal(snap)
	_ = t.db.Commit(context.Background(), storage.Relaxed, func(tx *storage.Tx) error {
		tx.SetWithTTL(snapshotKey(t.agent, now.Unix()), b, keepSnapshots)
		return nil
	})
}

// Snapshot stores the current period now (at shutdown, and in tests).
func (t *Tracker) Snapshot() { t.snapshot(true) }

// BreachFilter narrows a breach query.
type BreachFilter struct {
	AgentID, Severity string
	Start, End        time.Time
}

// Breaches lists stored breaches, oldest detection first.
func Breaches(db *storage.DB, f BreachFilter) ([]Breach, error) {
	pre := storage.SpaceSLA.Prefix([]byte("b"))
	if f.AgentID != "" {
		pre = prefix("b", f.AgentID)
	}
	out := []Breach{}
	err := db.View(func(r *storage.Reader) error {
		return r.Scan(pre, false, func(_, v []byte) (bool, error) {
			var b Breach
			if err := json.Unmarshal(v, &b); err != nil {
				return false, err
			}
			if (f.Severity == "" || b.Severity == f.Severity) &&
				(f.Start.IsZero() || !b.DetectedAt.Before(f.Start)) &&
				(f.End.IsZero() || !b.DetectedAt.After(f.End)) {
				out = append(out, b)
			}
			return true, nil
		})
	})
	sort.SliceStable(out, func(i, j int) bool { return out[i].DetectedAt.Before(out[j].DetectedAt) })
	return out, err
}

// History lists stored snapshots whose period overlaps [start, end],
// oldest first, with the total count before paging.
func History(db *storage.DB, agent string, start, end time.Time, limit, offset int) ([]Metrics, int, error) {
	pre := storage.SpaceSLA.Prefix([]byte("s"))
	if agent != "" {
		pre = prefix("s", agent)
	}
	var all []Metrics
	err := db.View(func(r *storage.Reader) error {
		return r.Scan(pre, false, func(_, v []byte) (bool, error) {
			var m Metrics
			if err := json.Unmarshal(v, &m); err != nil {
				return false, err
			}
			if (start.IsZero() || !m.PeriodEnd.Before(start)) && (end.IsZero() || !m.PeriodStart.After(end)) {
				all = append(all, m)
			}
			return true, nil
		})
	})
	sort.SliceStable(all, func(i, j int) bool { return all[i].PeriodStart.Before(all[j].PeriodStart) })
	total := len(all)
	if offset > len(all) {
		offset = len(all)
	}
	all = all[offset:]
	if limit < len(all) {
		all = all[:limit]
	}
	if all == nil {
		all = []Metrics{}
	}
	return all, total, err
}
