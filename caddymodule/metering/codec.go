package metering

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/oklog/ulid/v2"
)

// An event is stored in a compact binary form, not as JSON: field names,
// quotes and a decimal timestamp were most of a JSON event's bytes. JSON
// is the API's shape only (Event's tags). Version 1:
//
//	byte     version (1)
//	uvarint  nanoseconds past the millisecond of the event's ULID (the
//	         key holds the millisecond; this keeps a posted timestamp to
//	         the nanosecond)
//	strings  task id, agent id, consumer id, envelope id, delegation id,
//	         root issuer: each a uvarint length, then the bytes
//	words    status, payload type: a code below len(words), or
//	         len(words)+length and then the bytes
//	uvarints tokens in, tokens out, duration ms, api calls, as uint64 (a
//	         negative figure costs ten bytes but still comes back)
const eventV1 = 1

// words are the status and payload type values the sidecar writes, kept
// as one-byte codes. Their order is part of the format: append only.
var words = [...]string{
	"",
	"completed", "failed", "submitted", "working", "cancelled", "input_required",
	"task.request", "task.response", "task.update", "task.cancel", "task.stream",
	"message.send", "message.ack", "state.query", "state.restore", "artifact.notify",
	"mcp.tool_call", "mcp.tool_result", "mcp.resource_fetch", "mcp.resource_data",
	"unknown",
}

// errCorrupt is what decodeEvent returns for a value it cannot read.
var errCorrupt = errors.New("metering: corrupt usage event")

// appendEvent appends e's stored form to b. e's timestamp must be the
// one its ULID was made from.
func appendEvent(b []byte, e *Event) []byte {
	b = append(b, eventV1)
	b = binary.AppendUvarint(b, uint64(e.Timestamp.Nanosecond()%int(time.Millisecond)))
	for _, s := range [...]string{e.TaskID, e.AgentID, e.ConsumerID, e.EnvelopeID, e.DelegationID, e.RootIssuer} {
		b = binary.AppendUvarint(b, uint64(len(s)))
		b = append(b, s...)
	}
	b = appendWord(b, e.Status)
	b = appendWord(b, e.PayloadType)
	for _, n := range [...]int64{e.TokensIn, e.TokensOut, e.DurationMS, e.APICalls} {
		b = binary.AppendUvarint(b, uint64(n))
	}
	return b
}

func appendWord(b []byte, s string) []byte {
	for i, w := range words {
		if s == w {
			return binary.AppendUvarint(b, uint64(i))
		}
	}
	b = binary.AppendUvarint(b, uint64(len(words)+len(s)))
	return append(b, s...)
}

// decodeEvent reads the event stored under id. It fails on a value
// appendEvent did not write (truncated, padded, or another version), and
// never panics.
func decodeEvent(id ulid.ULID, v []byte) (Event, error) {
	if len(v) == 0 || v[0] != eventV1 {
		return Event{}, fmt.Errorf("%w under %s: not version %d", errCorrupt, id, eventV1)
	}
	r := reader{b: v[1:]}
	var e Event
	sub := r.uvarint()
	if r.err == nil && sub >= uint64(time.Millisecond) {
		r.err = fmt.Errorf("%d ns past the millisecond", sub)
	}
	e.Timestamp = time.UnixMilli(int64(id.Time())).Add(time.Duration(sub)).UTC()
	for _, s := range [...]*string{&e.TaskID, &e.AgentID, &e.ConsumerID, &e.EnvelopeID, &e.DelegationID, &e.RootIssuer} {
		*s = r.str(r.uvarint())
	}
	e.Status = r.word()
	e.PayloadType = r.word()
	for _, n := range [...]*int64{&e.TokensIn, &e.TokensOut, &e.DurationMS, &e.APICalls} {
		*n = int64(r.uvarint())
	}
	if r.err == nil && len(r.b) > 0 {
		r.err = fmt.Errorf("%d bytes after the event", len(r.b))
	}
	if r.err != nil {
		return Event{}, fmt.Errorf("%w under %s: %v", errCorrupt, id, r.err)
	}
	return e, nil
}

// reader reads a stored event; after its first error every read returns
// zero values, and err says what went wrong.
type reader struct {
	b   []byte
	err error
}

func (r *reader) uvarint() uint64 {
	if r.err != nil {
		return 0
	}
	v, n := binary.Uvarint(r.b)
	if n <= 0 {
		r.err = errors.New("truncated or overlong number")
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *reader) str(n uint64) string {
	if r.err != nil {
		return ""
	}
	if n > uint64(len(r.b)) {
		r.err = fmt.Errorf("string of %d bytes with %d left", n, len(r.b))
		return ""
	}
	s := string(r.b[:n])
	r.b = r.b[n:]
	return s
}

func (r *reader) word() string {
	x := r.uvarint()
	if x < uint64(len(words)) {
		return words[x]
	}
	return r.str(x - uint64(len(words)))
}
