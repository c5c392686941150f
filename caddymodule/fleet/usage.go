package fleet

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"

	"github.com/asap-sidecar/asap-sidecar/caddymodule/metering"
)

// The usage stream: every metered task of every sidecar, for the
// collector. Subjects are asap.usage.<origin>.
const (
	UsageStream        = "ASAP_USAGE"
	UsageSubjectPrefix = "asap.usage."
)

// Usage is one metered task as a sidecar reports it to the collector.
type Usage struct {
	// Origin is the reporting sidecar's fleet id; Name its name.
	Origin string         `json:"origin"`
	Name   string         `json:"name,omitempty"`
	Event  metering.Event `json:"event"`
	// Dedup is the key the sidecar deduplicated the task under (its
	// envelope id); the collector deduplicates on (origin, dedup) too.
	Dedup string `json:"dedup"`
}

// Message is the outbox message that publishes u. Its id depends only on
// the origin and the dedup key, so a republish is dropped by JetStream
// within its duplicate window and by the collector after it.
func (u Usage) Message() (Message, error) {
	b, err := json.Marshal(&u)
	if err != nil {
		return Message{}, err
	}
	return Message{Subject: UsageSubjectPrefix + u.Origin, ID: UsageID(u.Origin, u.Event.AgentID, u.Event.ConsumerID, u.Dedup), Data: b}, nil
}

// UsageID is the message id of a task's usage: one per (origin, agent,
// consumer, envelope id), as the sidecar meters it once.
func UsageID(origin, agent, consumer, dedup string) string {
	h := sha256.Sum256([]byte(origin + "\x00" + agent + "\x00" + consumer + "\x00" + dedup))
	return "use-" + hex.EncodeToString(h[:16])
}
