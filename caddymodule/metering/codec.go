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
//	uvarint  nanoseconds past the millisecond of the event's ULID (the key
//	         holds the millisecond; a posted timestamp keeps its nanoseconds)
//	string   task id, agent id, consumer id
//	same     envelope id, or the task id (calls that are not tasks are
//	         recorded under their envelope id)
//	string   delegation id
//	same     root issuer, or the agent (tokens its own sidecar minted)
//	word     status, payload type
//	uvarint  tokens in, tokens out, duration ms, api calls, as uint64 (a
//	         negative figure costs ten bytes but still comes back)
//
// A string is a uvarint length, then the bytes. A same is 0 for the other
// field's value, or a string whose length is written plus 1. A word is a
// code below len(words), or a string whose length is written plus
// len(words).
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
	b = appendString(b, e.TaskID, 0)
	b = appendString(b, e.AgentID, 0)
	b = appendString(b, e.ConsumerID, 0)
	b = appendSameOr(b, e.EnvelopeID, e.TaskID)
	b = appendString(b, e.DelegationID, 0)
	b = appendSameOr(b, e.RootIssuer, e.AgentID)
	b = appendWord(b, e.Status)
	b = appendWord(b, e.PayloadType)
	for _, n := range [...]int64{e.TokensIn, e.TokensOut, e.DurationMS, e.APICalls} {
		b = binary.AppendUvarint(b, uint64(n))
	}
	return b
}

// appendString appends s's length plus skip, then s.
func appendString(b []byte, s string, skip uint64) []byte {
	b = binary.AppendUvarint(b, skip+uint64(len(s)))
	return append(b, s...)
}

// appendSameOr appends 0 when s is same, else s with its length plus 1.
func appendSameOr(b []byte, s, same string) []byte {
	if s == same {
		return append(b, 0)
	}
	return appendString(b, s, 1)
}

func appendWord(b []byte, s string) []byte {
	for i, w := range words {
		if s == w {
			return binary.AppendUvarint(b, uint64(i))
		}
	}
	return appendString(b, s, uint64(len(words)))
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
	e.TaskID = r.str(r.uvarint())
	e.AgentID = r.str(r.uvarint())
	e.ConsumerID = r.str(r.uvarint())
	e.EnvelopeID = r.sameOr(e.TaskID)
	e.DelegationID = r.str(r.uvarint())
	e.RootIssuer = r.sameOr(e.AgentID)
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

func (r *reader) sameOr(same string) string {
	switch n := r.uvarint(); {
	case r.err != nil:
		return ""
	case n == 0:
		return same
	default:
		return r.str(n - 1)
	}
}

func (r *reader) word() string {
	x := r.uvarint()
	if x < uint64(len(words)) {
		return words[x]
	}
	return r.str(x - uint64(len(words)))
}
