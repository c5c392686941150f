package protocol

import (
	"bytes"
	"encoding/json"
	"unicode/utf8"
)

// Reading the agent's answer is on every task's path, and encoding/json
// spent most of its time there on reflection. scanResponse walks the
// answer once with the request side's scanner instead and takes only the
// fields a Reply needs, with encoding/json's meaning: member names match
// case-insensitively, a later member overwrites an earlier one, a second
// object for the same member merges into the first, null resets a
// pointer, and a member of the wrong type makes the whole answer
// unreadable (ErrNotJSONRPC). FuzzScanResponseMatchesDecoder holds it to
// decodeResponse.

// scanDepth bounds the answers scanResponse takes: deeper ones (and
// invalid UTF-8, which encoding/json replaces) go to decodeResponse.
const scanDepth = 64

// scanResponse is ParseResponse for the answers it can read; ok is false
// for the others.
func scanResponse(body []byte) (replies []Reply, err error, ok bool) {
	k := kind(body)
	if k != '{' && k != '[' {
		return nil, ErrNotJSONRPC, true
	}
	if !utf8.Valid(body) || nestingDepth(body, scanDepth) > scanDepth {
		return nil, nil, false
	}
	if !validJSON(body) {
		return nil, ErrNotJSONRPC, true
	}
	if k == '{' {
		var w scannedResponse
		if !w.read(body) {
			return nil, ErrNotJSONRPC, true
		}
		r, ok := w.reply()
		if !ok {
			return nil, ErrNotJSONRPC, true
		}
		return []Reply{r}, nil, true
	}
	var out []Reply
	it := newElements(body)
	for {
		_, v, more := it.next(false)
		if !more {
			break
		}
		var w scannedResponse
		switch v[0] {
		case 'n': // null: an empty response, skipped
		case '{':
			if !w.read(v) {
				return nil, ErrNotJSONRPC, true
			}
		default:
			return nil, ErrNotJSONRPC, true
		}
		if r, ok := w.reply(); ok {
			out = append(out, r)
		}
	}
	if out == nil {
		out = []Reply{}
	}
	return out, nil, true
}

// scannedResponse is wireResponse as the scanner fills it.
type scannedResponse struct {
	id        json.RawMessage
	hasResult bool
	envelope  json.RawMessage
	hasError  bool
	code      json.RawMessage
}

// read fills w from the object obj; false when a member has a type
// encoding/json would refuse.
func (w *scannedResponse) read(obj []byte) bool {
	it := newElements(obj)
	for {
		name, v, more := it.next(true)
		if !more {
			return true
		}
		n := memberName(name)
		switch {
		case bytes.EqualFold(n, []byte("id")):
			w.id = v
		case bytes.EqualFold(n, []byte("result")):
			if !member(v, &w.hasResult, &w.envelope, "envelope") {
				return false
			}
		case bytes.EqualFold(n, []byte("error")):
			if !member(v, &w.hasError, &w.code, "code") {
				return false
			}
		}
	}
}

// member reads v into a pointer to a struct with one field, field: null
// resets it, an object sets it (keeping what an earlier object set),
// anything else is a type error.
func member(v []byte, present *bool, dst *json.RawMessage, field string) bool {
	switch v[0] {
	case 'n':
		*present, *dst = false, nil
		return true
	case '{':
		*present = true
		it := newElements(v)
		for {
			name, fv, more := it.next(true)
			if !more {
				return true
			}
			if bytes.EqualFold(memberName(name), []byte(field)) {
				*dst = fv
			}
		}
	}
	return false
}

func (w *scannedResponse) reply() (Reply, bool) {
	wr := wireResponse{ID: w.id, scanned: true}
	if w.hasResult {
		wr.Result = &struct {
			Envelope json.RawMessage `json:"envelope"`
		}{w.envelope}
	}
	if w.hasError {
		wr.Error = &struct {
			Code json.RawMessage `json:"code"`
		}{w.code}
	}
	return wr.reply()
}

// scanEnvelope reads the reply envelope raw (an object inside an answer
// scanResponse validated) as encoding/json would into wireReplyEnvelope;
// ok is false when encoding/json would refuse it (a payload that is not
// an object) or when raw was neither validated by scanResponse
// (validated) nor can be here.
func scanEnvelope(raw []byte, validated bool) (env wireReplyEnvelope, ok bool) {
	if !validated && !scannable(raw) {
		return env, false
	}
	it := newElements(raw)
	for {
		name, v, more := it.next(true)
		if !more {
			return env, true
		}
		n := memberName(name)
		switch {
		case bytes.EqualFold(n, []byte("payload_type")):
			env.PayloadType = v
		case bytes.EqualFold(n, []byte("payload")):
			switch v[0] {
			case 'n': // null leaves a struct as it is
			case '{':
				p := newElements(v)
				for {
					pn, pv, more := p.next(true)
					if !more {
						break
					}
					switch pname := memberName(pn); {
					case bytes.EqualFold(pname, []byte("task_id")):
						env.Payload.TaskID = pv
					case bytes.EqualFold(pname, []byte("status")):
						env.Payload.Status = pv
					case bytes.EqualFold(pname, []byte("metrics")):
						env.Payload.Metrics = pv
					case bytes.EqualFold(pname, []byte("final")):
						env.Payload.Final = pv
					}
				}
			default:
				return env, false
			}
		}
	}
}

// scannable reports whether the scanner reads b as encoding/json does:
// valid JSON, valid UTF-8, not too deep.
func scannable(b []byte) bool {
	return utf8.Valid(b) && nestingDepth(b, scanDepth) <= scanDepth && validJSON(b)
}

// Members calls fn with each member of the JSON object raw, its name
// decoded, in document order, so a caller reads the fields it wants
// without decoding the object into a map (later members of the same name
// come later, as a map keeps the last). It returns false, calling fn for
// nothing, when raw is not an object or not one the scanner reads as
// encoding/json does (see scannable); the caller then decodes it.
func Members(raw []byte, fn func(name, value []byte)) bool {
	if kind(raw) != '{' || !scannable(raw) {
		return false
	}
	raw = bytes.TrimLeft(raw, " \t\r\n")
	it := newElements(raw)
	for {
		name, v, more := it.next(true)
		if !more {
			return true
		}
		fn(memberName(name), v)
	}
}
