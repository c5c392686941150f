package metering

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/oklog/ulid/v2"

	"github.com/asap-sidecar/asap-sidecar/caddymodule/protocol"
	"github.com/asap-sidecar/asap-sidecar/caddymodule/wire"
)

// encoded is e as Put stores it, with the ULID Put would key it under.
func encoded(t testing.TB, e Event) (ulid.ULID, []byte) {
	t.Helper()
	id, err := ulid.New(ulid.Timestamp(e.Timestamp), nil)
	if err != nil {
		t.Fatal(err)
	}
	return id, appendEvent(nil, &e)
}

// Events that exercise every field: set, empty, unicode, long, extreme.
func codecCases() map[string]Event {
	long := strings.Repeat("é", 300) // 600 bytes: a two-byte length
	return map[string]Event{
		"every field": {TaskID: "task-1", AgentID: agentA, ConsumerID: consC1, TokensIn: 10, TokensOut: 20,
			DurationMS: 300, APICalls: 2, Timestamp: mustTime("2026-02-06T09:00:00.123456789Z"),
			Status: "completed", PayloadType: "task.request", EnvelopeID: "env-1", DelegationID: "jti-1", RootIssuer: "urn:asap:agent:root"},
		"only the required fields, zero figures, a whole second": {TaskID: "t", AgentID: "a", ConsumerID: "c",
			Timestamp: mustTime("2026-02-06T09:00:00Z")},
		"the epoch": {TaskID: "t", AgentID: "a", ConsumerID: "c", Timestamp: time.Unix(0, 0).UTC()},
		"unicode": {TaskID: "tâche-✓-日本", AgentID: "urn:asap:agent:ü", ConsumerID: "клиент 🚀", EnvelopeID: "💡",
			DelegationID: "jti-ß", RootIssuer: "ルート", Status: "terminé", PayloadType: "tâche.demande",
			Timestamp: mustTime("2026-12-31T23:59:59.999999999Z")},
		"long strings and the largest figures": {TaskID: long, AgentID: long, ConsumerID: long, EnvelopeID: long,
			DelegationID: long, RootIssuer: long, Status: long, PayloadType: long,
			TokensIn: MaxMetric, TokensOut: MaxMetric, DurationMS: MaxMetric, APICalls: MaxMetric,
			Timestamp: mustTime("9999-12-31T23:59:59.999999999Z")},
		"negative figures still come back": {TaskID: "t", AgentID: "a", ConsumerID: "c",
			TokensIn: -1, TokensOut: -1 << 63, DurationMS: -5, APICalls: 1<<63 - 1, Timestamp: mustTime("2026-02-06T09:00:00.0005Z")},
		"envelope id is the task id, root issuer the agent": {TaskID: "01JENV", AgentID: agentA, ConsumerID: consC1,
			EnvelopeID: "01JENV", DelegationID: "jti-2", RootIssuer: agentA, Timestamp: mustTime("2026-02-06T09:00:00.000001Z")},
		"no task id, agent or envelope id": {ConsumerID: "c", DelegationID: "jti-3", RootIssuer: "urn:asap:agent:root",
			Timestamp: mustTime("2026-02-06T09:00:00Z")},
		"a status and payload type that are not words": {TaskID: "t", AgentID: "a", ConsumerID: "c",
			Status: "completed2", PayloadType: "Task.Request", Timestamp: mustTime("2026-02-06T09:00:00.001Z")},
	}
}

func TestEventRoundTrip(t *testing.T) {
	for name, e := range codecCases() {
		t.Run(name, func(t *testing.T) {
			id, b := encoded(t, e)
			got, err := decodeEvent(id, b)
			if err != nil {
				t.Fatal(err)
			}
			want := e
			want.Timestamp = want.Timestamp.UTC()
			eq(t, "decoded", got, want)
			if jsonOf(t, got) != jsonOf(t, e) {
				t.Errorf("JSON\n got  %s\n want %s", jsonOf(t, got), jsonOf(t, e))
			}
		})
	}
}

// Through the store too: every field, from every index and the primary.
func TestStoreRoundTripsEveryField(t *testing.T) {
	s := New(openDB(t), 0)
	for name, e := range codecCases() {
		e.EnvelopeID = name
		if !put(t, s, e, "") {
			t.Fatalf("%s: not recorded", name)
		}
		for _, f := range []Filter{{AgentID: e.AgentID}, {ConsumerID: e.ConsumerID}, {TaskID: e.TaskID}, {Start: wire.Time(e.Timestamp), End: wire.Time(e.Timestamp)}} {
			var got []Event
			if err := s.Each(f, func(x *Event) bool {
				if x.EnvelopeID == name {
					got = append(got, *x)
				}
				return true
			}); err != nil {
				t.Fatal(err)
			}
			want := e
			// Stored in whole microseconds, as every API gives times.
			want.Timestamp = wire.Time(want.Timestamp)
			eq(t, name, got, []Event{want})
		}
	}
}

// The values the sidecar writes for status and payload type are one-byte
// codes; anything else is kept as written.
func TestWordsAreOneByte(t *testing.T) {
	known := []string{"", protocol.StatusSubmitted, protocol.StatusWorking, protocol.StatusCompleted,
		protocol.StatusFailed, protocol.StatusCancelled, protocol.StatusInputRequired, protocol.PayloadType("nope").String()}
	for _, pt := range []protocol.PayloadType{protocol.TypeTaskRequest, protocol.TypeTaskResponse, protocol.TypeTaskUpdate,
		protocol.TypeTaskCancel, protocol.TypeTaskStream, protocol.TypeMessageSend, protocol.TypeStateQuery,
		protocol.TypeStateRestore, protocol.TypeArtifactNotify, protocol.TypeMCPToolCall, protocol.TypeMCPToolResult,
		protocol.TypeMCPResourceFetch, protocol.TypeMCPResourceData, protocol.TypeMessageAck} {
		known = append(known, pt.String())
	}
	for _, w := range known {
		if b := appendWord(nil, w); len(b) != 1 {
			t.Errorf("%q takes %d bytes, want a one-byte code", w, len(b))
		}
	}
	for _, w := range []string{"x", "Completed", strings.Repeat("z", 200)} {
		b := appendWord(nil, w)
		r := reader{b: b}
		if got := r.word(); got != w || r.err != nil || len(r.b) != 0 {
			t.Errorf("%q came back as %q, %v", w, got, r.err)
		}
	}
	// A literal that is the length of a word still reads as a literal.
	r := reader{b: appendWord(nil, "ab")}
	if got := r.word(); got != "ab" {
		t.Errorf("got %q", got)
	}
}

// An envelope id that is the task id, and a root issuer that is the
// agent, cost a byte each: no more than leaving them out.
func TestSharedFieldsCostOneByte(t *testing.T) {
	e := codecCases()["envelope id is the task id, root issuer the agent"]
	_, shared := encoded(t, e)
	e.EnvelopeID, e.RootIssuer = "", ""
	if _, none := encoded(t, e); len(shared) != len(none) {
		t.Errorf("%d bytes with the shared fields, %d without", len(shared), len(none))
	}
}

// A stored event is much smaller than its JSON.
func TestEventIsCompact(t *testing.T) {
	e := codecCases()["every field"]
	_, b := encoded(t, e)
	if js := jsonOf(t, e); len(b) > len(js)/3 {
		t.Errorf("%d bytes stored for %d bytes of JSON", len(b), len(js))
	}
}

// Values appendEvent did not write are errors, never panics or half events.
func TestDecodeEventRejectsCorruptValues(t *testing.T) {
	e := codecCases()["every field"]
	id, good := encoded(t, e)
	bad := map[string][]byte{
		"empty":          {},
		"version 0":      append([]byte{0}, good[1:]...),
		"version 2":      append([]byte{2}, good[1:]...),
		"JSON":           []byte(`{"task_id":"t1"}`),
		"a byte after":   append(append([]byte{}, good...), 0),
		"overlong int":   append([]byte{eventV1}, bytes.Repeat([]byte{0xff}, 11)...),
		"a whole ms":     withSub(good, uint64(time.Millisecond)),
		"two ms":         withSub(good, 2*uint64(time.Millisecond)),
		"string too big": binary.AppendUvarint([]byte{eventV1, 0}, 1<<62),
		"max uvarint":    binary.AppendUvarint([]byte{eventV1, 0}, 1<<64-1),
		"word too big":   binary.AppendUvarint(append([]byte{eventV1, 0}, 0, 0, 0, 0, 0, 0), 1<<64-1),
	}
	for name, e := range codecCases() {
		_, v := encoded(t, e)
		for i := 0; i < len(v); i++ {
			bad[fmt.Sprintf("%s, cut at %d", name, i)] = v[:i]
		}
	}
	for name, v := range bad {
		got, err := decodeEvent(id, v)
		if !errors.Is(err, errCorrupt) {
			t.Errorf("%s: %v, %+v; want errCorrupt", name, err, got)
		}
		if got != (Event{}) {
			t.Errorf("%s: half an event %+v", name, got)
		}
	}
	if _, err := decodeEvent(id, good); err != nil {
		t.Fatalf("the good value: %v", err)
	}
}

// withSub is v with the nanoseconds past the millisecond replaced.
func withSub(v []byte, sub uint64) []byte {
	_, n := binary.Uvarint(v[1:])
	return append(binary.AppendUvarint([]byte{eventV1}, sub), v[1+n:]...)
}

// A word past the table is a string of its own, however short: one of
// length 0 reads as "" (appendEvent writes "" as word 0, but a reader
// takes both).
func TestWordJustPastTheTable(t *testing.T) {
	v := []byte{eventV1, 0, 1, 't', 1, 'a', 1, 'c', 0, 0, 0}
	v = binary.AppendUvarint(v, uint64(len(words))) // status: the empty string, spelt out
	v = append(v, 7, 0, 0, 0, 0)                    // payload type task.request, four zero counts
	id, _ := encoded(t, codecCases()["every field"])
	e, err := decodeEvent(id, v)
	if err != nil || e.Status != "" || e.TaskID != "t" || e.PayloadType != "task.request" {
		t.Fatalf("decoded %+v, %v", e, err)
	}
	if _, err := decodeEvent(id, withSub(v, uint64(time.Millisecond)-1)); err != nil {
		t.Fatalf("the last nanosecond of the millisecond: %v", err)
	}
}

// No input makes decodeEvent panic; what it accepts survives another
// round trip and stays inside the ULID's millisecond.
func FuzzDecodeEvent(f *testing.F) {
	for _, e := range codecCases() {
		_, b := encoded(f, e)
		f.Add(b)
	}
	f.Add([]byte{eventV1})
	f.Fuzz(func(t *testing.T, v []byte) {
		id := ulid.MustNew(ulid.Timestamp(mustTime("2026-02-06T09:00:00Z")), nil)
		e, err := decodeEvent(id, v)
		if err != nil {
			return
		}
		if ulid.Timestamp(e.Timestamp) != id.Time() {
			t.Fatalf("timestamp %v outside the ULID's millisecond", e.Timestamp)
		}
		again, err := decodeEvent(id, appendEvent(nil, &e))
		if err != nil || again != e {
			t.Fatalf("%+v came back as %+v, %v", e, again, err)
		}
	})
}
