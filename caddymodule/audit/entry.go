// Package audit keeps the sidecar's append-only, tamper-evident log: a hash
// chain of entries (SPEC §6), an RFC 6962 Merkle tree over them built
// incrementally with compact ranges, signed checkpoints in the signed-note
// format, and inclusion and consistency proofs. Entries are appended inside
// the same storage transaction as the records they describe.
package audit

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"time"
)

// Operations.
const (
	OpTaskStarted        = "task.started"
	OpTaskCompleted      = "task.completed"
	OpTaskFailed         = "task.failed"
	OpUsageRecorded      = "usage.recorded"
	OpDelegationCreated  = "delegation.created"
	OpDelegationRevoked  = "delegation.revoked"
	OpDelegationRejected = "delegation.rejected"
	OpSLABreach          = "sla.breach"
	OpSLAResolved        = "sla.resolved"
)

// TimeFormat is how an entry's timestamp is written, in the entry and in
// the hashed string alike: RFC 3339, UTC, always six fractional digits —
// the most every Python client parses (datetime.fromisoformat before 3.11
// and older pydantic refuse nine).
const TimeFormat = "2006-01-02T15:04:05.000000Z"

// Entry is one audit log entry.
type Entry struct {
	ID        string          `json:"id"`
	Seq       uint64          `json:"seq"`
	Timestamp string          `json:"timestamp"`
	Operation string          `json:"operation"`
	AgentURN  string          `json:"agent_urn"`
	Details   json.RawMessage `json:"details"`
	PrevHash  string          `json:"prev_hash"`
	Hash      string          `json:"hash"`
}

// Record is what a caller asks to append: the log fills in id, seq,
// timestamp and hashes. Details must never hold secrets.
type Record struct {
	Operation string
	AgentURN  string
	Details   map[string]any

	canonical []byte // Details in RFC 8785 form, once prepared
	task      string // the task_id of records built from Fields
}

// taskID is the task the record is indexed under ("" for none).
func (r *Record) taskID() string {
	if r.task != "" {
		return r.task
	}
	t, _ := r.Details["task_id"].(string)
	return t
}

// Prepare computes the record's canonical details ahead of Append, so the
// work happens on the caller's goroutine rather than inside the shared
// commit. Append prepares records that were not.
func (r *Record) Prepare() error {
	if r.canonical != nil {
		return nil
	}
	if r.Details == nil {
		r.Details = map[string]any{}
	}
	canon, err := canonicalDetails(r.Details)
	if err != nil {
		return fmt.Errorf("audit: details of %s: %w", r.Operation, err)
	}
	r.canonical = canon
	return nil
}

// ChainHash is the entry hash of SPEC §6: hex SHA-256 of
// prev_hash|timestamp|operation|JCS(details).
func ChainHash(prevHash, timestamp, operation string, canonicalDetails []byte) string {
	sum := chainSum(prevHash, timestamp, operation, canonicalDetails)
	return hex.EncodeToString(sum[:])
}

// chainSum is ChainHash before hex encoding.
func chainSum(prevHash, timestamp, operation string, canonicalDetails []byte) [sha256.Size]byte {
	return chainSumBytes(nil, []byte(prevHash), timestamp, operation, canonicalDetails)
}

// chainSumBytes is chainSum with the previous hash as hex bytes, hashing
// one message assembled in buf (grown as needed): no hasher or string
// copies per entry on the append path.
func chainSumBytes(buf, prevHex []byte, timestamp, operation string, canonicalDetails []byte) [sha256.Size]byte {
	buf = append(buf[:0], prevHex...)
	buf = append(buf, '|')
	buf = append(buf, timestamp...)
	buf = append(buf, '|')
	buf = append(buf, operation...)
	buf = append(buf, '|')
	buf = append(buf, canonicalDetails...)
	return sha256.Sum256(buf)
}

// Recompute returns the hash e should have given its own fields.
func (e *Entry) Recompute() (string, error) {
	canon, err := Canonical(e.Details)
	if err != nil {
		return "", fmt.Errorf("details are not JSON: %w", err)
	}
	return ChainHash(e.PrevHash, e.Timestamp, e.Operation, canon), nil
}

// LeafData is the Merkle leaf of the entry: the 32 raw bytes of its hash.
func (e *Entry) LeafData() ([]byte, error) {
	b, err := hex.DecodeString(e.Hash)
	if err != nil || len(b) != sha256.Size {
		return nil, fmt.Errorf("entry %d: hash is not 32 hex bytes", e.Seq)
	}
	return b, nil
}

// Time parses the entry's timestamp.
func (e *Entry) Time() (time.Time, error) { return time.Parse(TimeFormat, e.Timestamp) }
