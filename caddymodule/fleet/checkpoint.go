package fleet

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"time"
)

// The checkpoint stream: the latest signed audit checkpoint of every
// sidecar (one message kept per subject), for the collector. Subjects are
// asap.checkpoints.<origin>.
const (
	CheckpointStream        = "ASAP_CHECKPOINTS"
	CheckpointSubjectPrefix = "asap.checkpoints."
)

// Checkpoint is a sidecar's signed audit checkpoint (SPEC §6) as it
// reports it to the collector: anyone holding it can later check that
// the sidecar's log was neither truncated nor rewritten.
type Checkpoint struct {
	// Origin is the reporting sidecar's fleet id; Name its name.
	Origin string `json:"origin"`
	Name   string `json:"name,omitempty"`
	// Agent is the URN whose key signed the checkpoint.
	Agent string `json:"agent"`
	// Size is the number of log entries the checkpoint covers.
	Size uint64 `json:"size"`
	// Checkpoint is the signed note, as GET /audit/checkpoint serves it.
	Checkpoint string    `json:"checkpoint"`
	SignedAt   time.Time `json:"signed_at"`
	// PublicKey is the note verifier key (name+hash+key) the checkpoint
	// verifies with.
	PublicKey string `json:"public_key"`
}

// Message is the outbox message that publishes c. Its id depends on the
// origin, the agent and the note, so the same checkpoint published twice
// is dropped by JetStream.
func (c Checkpoint) Message() (Message, error) {
	b, err := json.Marshal(&c)
	if err != nil {
		return Message{}, err
	}
	h := sha256.Sum256([]byte(c.Origin + "\x00" + c.Agent + "\x00" + c.Checkpoint))
	return Message{Subject: CheckpointSubjectPrefix + c.Origin, ID: "cp-" + hex.EncodeToString(h[:16]), Data: b}, nil
}

// newer reports whether c should replace old as the latest checkpoint
// kept: a larger log, or the same size signed later (a new key).
func (c *Checkpoint) newer(old *Checkpoint) bool {
	if c.Size != old.Size {
		return c.Size > old.Size
	}
	return c.SignedAt.After(old.SignedAt)
}
