// Package tasklog keeps one record per task the sidecar forwarded, and the
// per-agent counters derived from them, in the storage key spaces for
// tasks and counters. Records are written inside the same group-commit
// transaction as everything else that describes the task.
package tasklog

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/asap-sidecar/asap-sidecar/storage"
)

// Outcomes of a forwarded task.
const (
	// OutcomeCompleted: the agent answered and the task did not fail.
	OutcomeCompleted = "completed"
	// OutcomeFailed: unreachable agent, 5xx, a JSON-RPC error from the
	// agent, a garbage answer, or a task.response with status failed.
	OutcomeFailed = "failed"
)

// Record describes one forwarded call.
type Record struct {
	EnvelopeID  string    `json:"envelope_id"`
	TaskID      string    `json:"task_id,omitempty"`
	AgentID     string    `json:"agent_id"`
	ConsumerID  string    `json:"consumer_id"`
	PayloadType string    `json:"payload_type"`
	Outcome     string    `json:"outcome"`
	Status      string    `json:"status,omitempty"`
	HTTPStatus  int       `json:"http_status"`
	ErrorCode   int       `json:"error_code,omitempty"`
	DurationMS  float64   `json:"duration_ms"`
	StartedAt   time.Time `json:"started_at"`
}

// Counts are an agent's task totals.
type Counts struct {
	Forwarded uint64 `json:"tasks_forwarded"`
	Completed uint64 `json:"tasks_completed"`
	Failed    uint64 `json:"tasks_failed"`
}

func key(agent, envelopeID string) []byte {
	return storage.SpaceTask.KeyString(agent, envelopeID)
}

func counterKey(agent, name string) []byte {
	return storage.SpaceCounter.KeyString(agent, name)
}

// Put stages the record and bumps the agent's counters. Records expire
// after ttl (0: never); counters do not.
func Put(tx *storage.Tx, r *Record, ttl time.Duration) error {
	if r.AgentID == "" || r.EnvelopeID == "" {
		return errors.New("tasklog: record needs agent_id and envelope_id")
	}
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	tx.SetWithTTL(key(r.AgentID, r.EnvelopeID), b, ttl)
	if _, err := tx.AddUint64(counterKey(r.AgentID, "forwarded"), 1); err != nil {
		return err
	}
	name := "completed"
	if r.Outcome == OutcomeFailed {
		name = "failed"
	}
	_, err = tx.AddUint64(counterKey(r.AgentID, name), 1)
	return err
}

// Get reads one record.
func Get(db *storage.DB, agent, envelopeID string) (*Record, error) {
	var r Record
	err := db.View(func(rd *storage.Reader) error {
		b, err := rd.Get(key(agent, envelopeID))
		if err != nil {
			return err
		}
		return json.Unmarshal(b, &r)
	})
	if err != nil {
		return nil, fmt.Errorf("tasklog: record %s of %s: %w", envelopeID, agent, err)
	}
	return &r, nil
}

// List returns the agent's records in envelope id order, at most limit.
func List(db *storage.DB, agent string, limit int) ([]Record, error) {
	var out []Record
	if limit <= 0 {
		return out, nil
	}
	err := db.View(func(rd *storage.Reader) error {
		return rd.Scan(storage.SpaceTask.Prefix([]byte(agent)), false, func(_, v []byte) (bool, error) {
			var r Record
			if err := json.Unmarshal(v, &r); err != nil {
				return false, err
			}
			out = append(out, r)
			return len(out) < limit, nil
		})
	})
	return out, err
}

// CountsOf reads an agent's counters.
func CountsOf(db *storage.DB, agent string) (Counts, error) {
	var c Counts
	err := db.View(func(rd *storage.Reader) error {
		for _, f := range []struct {
			name string
			dst  *uint64
		}{{"forwarded", &c.Forwarded}, {"completed", &c.Completed}, {"failed", &c.Failed}} {
			b, err := rd.Get(counterKey(agent, f.name))
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
