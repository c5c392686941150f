package fleet

import (
	"strings"
	"testing"
	"time"

	"github.com/asap-sidecar/asap-sidecar/caddymodule/metering"
)

// A record whose time JSON cannot carry (RFC 3339 has four-digit years)
// is refused when its message is made, before anything is staged, rather
// than staged as bytes no collector or follower could read.
func TestMessagesRefuseAYearJSONCannotCarry(t *testing.T) {
	far := time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC)
	for name, mk := range map[string]func() (Message, error){
		"usage":      Usage{Origin: "a", Dedup: "env-1", Event: metering.Event{TaskID: "t", Timestamp: far}}.Message,
		"checkpoint": Checkpoint{Origin: "a", Agent: "urn:asap:agent:a", Checkpoint: "note", SignedAt: far}.Message,
		"revocation": Revocation{JTI: "del_1", RevokedAt: far, Origin: "a"}.Message,
	} {
		m, err := mk()
		if err == nil || !strings.Contains(err.Error(), "year") {
			t.Errorf("%s in year 10000: message %+v, error %v; want an error about the year", name, m, err)
		}
		if m.Subject != "" || m.Data != nil {
			t.Errorf("%s in year 10000: a refused message still has subject %q and %d bytes", name, m.Subject, len(m.Data))
		}
	}
}

// A checkpoint's message id depends on the origin, the agent and the note
// only: the same checkpoint republished is dropped by JetStream, a new
// note is a new message, and the subject carries the origin.
func TestCheckpointMessageIdentity(t *testing.T) {
	cp := Checkpoint{Origin: "a", Agent: "urn:asap:agent:a", Size: 3, Checkpoint: "note-3", SignedAt: base}
	m1, err := cp.Message()
	if err != nil {
		t.Fatal(err)
	}
	later := cp
	later.SignedAt = base.Add(time.Hour) // same note, signed-at differs: same message
	m2, _ := later.Message()
	next := cp
	next.Checkpoint = "note-4"
	m3, _ := next.Message()
	if m1.Subject != CheckpointSubjectPrefix+"a" || !strings.HasPrefix(m1.ID, "cp-") {
		t.Fatalf("message %s on %s", m1.ID, m1.Subject)
	}
	if m1.ID != m2.ID || m1.ID == m3.ID {
		t.Fatalf("ids %s, %s, %s: want the first two equal and the third apart", m1.ID, m2.ID, m3.ID)
	}
}
