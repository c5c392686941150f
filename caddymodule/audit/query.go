package audit

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"time"

	"github.com/asap-sidecar/asap-sidecar/storage"
)

// Filter narrows a query; zero fields do not filter. Start and End are
// inclusive.
type Filter struct {
	AgentURN, TaskID, Operation string
	Start, End                  time.Time
}

// Query returns matching entries in log order, skipping offset, at most
// limit. A task or agent filter is a range scan of its index, which names
// the blocks holding such entries (an operation filter alone scans the
// log: it narrows little and an index would cost every append a key);
// a time window alone starts at the first entry inside it (timestamps
// never decrease along the log, so it is found by bisection).
func (l *Log) Query(f Filter, limit, offset int) ([]Entry, error) {
	out := []Entry{}
	if limit <= 0 {
		return out, nil
	}
	skipped := 0
	// take offers e and reports whether to go on.
	take := func(e *Entry) bool {
		if f.after(e) {
			return false
		}
		if !f.match(e) {
			return true
		}
		if skipped < offset {
			skipped++
			return true
		}
		out = append(out, *e)
		return len(out) < limit
	}
	// takeBlock offers the block's entries from seq from on.
	takeBlock := func(er *entryReader, b *block, from uint64) (bool, error) {
		es, err := er.entries(b)
		if err != nil {
			return false, err
		}
		for i := range es {
			if es[i].Seq < from {
				continue
			}
			if !take(&es[i]) {
				return false, nil
			}
		}
		return true, nil
	}
	err := l.db.View(func(r *storage.Reader) error {
		er := &entryReader{r: r}
		if prefix := f.index(); prefix != nil {
			return r.Scan(prefix, false, func(k, _ []byte) (bool, error) {
				if len(k) != len(prefix)+8 {
					return true, nil // a longer value that starts with this one and a NUL
				}
				key := blockKey(binary.BigEndian.Uint64(k[len(prefix):]))
				v, err := r.Get(key)
				if err != nil {
					return false, err
				}
				b, err := decodeBlock(key, v)
				if err != nil {
					return false, err
				}
				return takeBlock(er, b, 0)
			})
		}
		var from uint64
		if !f.Start.IsZero() {
			var err error
			if from, err = firstAtOrAfter(r, f.Start); err != nil {
				return err
			}
		}
		return scanBlocks(r, from, func(b *block) (bool, error) { return takeBlock(er, b, from) })
	})
	return out, err
}

func (f *Filter) index() []byte {
	switch {
	case f.TaskID != "":
		return indexPrefix(byTask, f.TaskID)
	case f.AgentURN != "":
		return indexPrefix(byAgent, f.AgentURN)
	}
	return nil
}

func (f *Filter) match(e *Entry) bool {
	if (f.AgentURN != "" && e.AgentURN != f.AgentURN) || (f.Operation != "" && e.Operation != f.Operation) {
		return false
	}
	if f.TaskID != "" {
		var d struct {
			TaskID string `json:"task_id"`
		}
		if json.Unmarshal(e.Details, &d) != nil || d.TaskID != f.TaskID {
			return false
		}
	}
	if !f.Start.IsZero() {
		if t, err := e.Time(); err != nil || t.Before(f.Start) {
			return false
		}
	}
	return true
}

// after reports whether e lies past the window (the log is in time order).
func (f *Filter) after(e *Entry) bool {
	if f.End.IsZero() {
		return false
	}
	t, err := e.Time()
	return err == nil && t.After(f.End)
}

// firstAtOrAfter bisects the log for the first entry at or after t.
func firstAtOrAfter(r *storage.Reader, t time.Time) (uint64, error) {
	h, err := readHead(r.Get)
	if err != nil {
		return 0, err
	}
	lo, hi := uint64(0), h.Size
	for lo < hi {
		mid := lo + (hi-lo)/2
		b, err := blockAt(r, mid)
		if errors.Is(err, storage.ErrNotFound) {
			// A missing entry (tampering) cannot steer the search: fall
			// back to scanning from the start.
			return 0, nil
		}
		if err != nil {
			return 0, err
		}
		et, err := time.Parse(TimeFormat, b.ts)
		if err != nil {
			return 0, nil
		}
		if et.Before(t) {
			lo = mid + 1
		} else {
			hi = mid
		}
	}
	return lo, nil
}

// Each calls fn for every entry in log order until fn returns false.
func (l *Log) Each(fn func(*Entry) bool) error {
	return l.db.View(func(r *storage.Reader) error {
		er := &entryReader{r: r}
		return scanBlocks(r, 0, func(b *block) (bool, error) {
			es, err := er.entries(b)
			if err != nil {
				return false, err
			}
			for i := range es {
				if !fn(&es[i]) {
					return false, nil
				}
			}
			return true, nil
		})
	})
}
