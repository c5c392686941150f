package protocol

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"
)

// MethodSend is the one JSON-RPC method ASAP defines.
const MethodSend = "asap.send"

// Defaults for Limits. MaxBatch matches the reference's batch limit.
const (
	DefaultMaxDepth = 128
	DefaultMaxBatch = 50
	MaxURNLength    = 256
)

// Limits bounds what ParseRequest accepts.
type Limits struct {
	// MaxDepth is the deepest JSON nesting accepted anywhere in the body.
	MaxDepth int
	// MaxBatch is the largest batch accepted.
	MaxBatch int
}

func (l Limits) withDefaults() Limits {
	if l.MaxDepth <= 0 {
		l.MaxDepth = DefaultMaxDepth
	}
	if l.MaxBatch <= 0 {
		l.MaxBatch = DefaultMaxBatch
	}
	return l
}

// Request is a parsed POST body: one call, or a batch of calls.
type Request struct {
	Batch bool
	Calls []Call
}

// Call is one JSON-RPC request. When Err is set the call is rejected and
// must be answered with Err instead of being forwarded.
type Call struct {
	// Raw is the element exactly as received.
	Raw json.RawMessage
	// ID is the JSON-RPC id (raw JSON), nil if it could not be read.
	ID json.RawMessage
	// Key is IDKey(ID): equal for ids that decode to the same value. It
	// is "" when ID is nil.
	Key string
	// Method is the decoded method whenever it is a JSON string, also
	// when the call is refused (unknown_method, or any later rule). It is
	// "" when the request repeats a member.
	Method   string
	Envelope Envelope
	Err      *Error
}

// Envelope is the ASAP envelope of an asap.send call.
type Envelope struct {
	ID            string          `json:"id"`
	ASAPVersion   string          `json:"asap_version"`
	Timestamp     string          `json:"timestamp"`
	Sender        string          `json:"sender"`
	Recipient     string          `json:"recipient"`
	PayloadType   string          `json:"payload_type"`
	Payload       json.RawMessage `json:"payload"`
	CorrelationID string          `json:"correlation_id"`
	TraceID       string          `json:"trace_id"`
	RequiresAck   bool            `json:"requires_ack"`
	Extensions    json.RawMessage `json:"extensions"`
	// Raw is the envelope object exactly as received: a retry under the
	// same id is recognised by its digest.
	Raw json.RawMessage `json:"-"`
}

// Type is the envelope's payload type in canonical form.
func (e *Envelope) Type() PayloadType { return NormalizeType(e.PayloadType) }

// Forwardable reports whether any call of the request is to be forwarded.
func (r *Request) Forwardable() bool {
	for i := range r.Calls {
		if r.Calls[i].Err == nil {
			return true
		}
	}
	return false
}

// ValidURN reports whether s is an ASAP agent URN: at most MaxURNLength
// bytes matching ^urn:asap:agent:[a-z0-9-]+(:[a-z0-9-]+)?$.
func ValidURN(s string) bool {
	const prefix = "urn:asap:agent:"
	if len(s) > MaxURNLength || !strings.HasPrefix(s, prefix) {
		return false
	}
	name, sub, hasSub := strings.Cut(s[len(prefix):], ":")
	return urnSegment(name) && (!hasSub || urnSegment(sub))
}

func urnSegment(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return s != ""
}

// ParseRequest parses a POST /asap body. A whole-body problem (not JSON,
// too deep, empty or oversized batch, two calls with the same id) comes
// back as the error; problems of one call are put on that call, so the rest
// of a batch can still go on.
//
// Members are read by their exact names only, and an object (the request,
// its params, the envelope) that names a member twice, even in another
// letter case, is refused: what is forwarded can then be read only one way.
// Raw, ID and the envelope's Payload and Extensions are slices of body.
func ParseRequest(body []byte, lim Limits) (*Request, *Error) {
	lim = lim.withDefaults()
	if !utf8.Valid(body) {
		return nil, NewError(CodeParseError, "invalid_utf8", "the body is not valid UTF-8; send JSON encoded as UTF-8")
	}
	if d := nestingDepth(body, lim.MaxDepth); d > lim.MaxDepth {
		return nil, NewError(CodeParseError, "too_deep",
			fmt.Sprintf("JSON nesting is deeper than %d levels; flatten the payload", lim.MaxDepth))
	}
	trimmed := bytes.TrimLeft(body, " \t\r\n")
	if len(trimmed) == 0 {
		return nil, NewError(CodeParseError, "empty_body", "the body is empty; send a JSON-RPC 2.0 request")
	}
	if !validJSON(trimmed) {
		return nil, NewError(CodeParseError, "invalid_json", "the body is not valid JSON")
	}
	switch trimmed[0] {
	case '[':
		n := 0
		for it := newElements(trimmed); ; n++ {
			if _, _, ok := it.next(false); !ok {
				break
			}
		}
		if n == 0 {
			return nil, NewError(CodeInvalidRequest, "empty_batch", "the batch is empty; send at least one request")
		}
		if n > lim.MaxBatch {
			return nil, NewError(CodeInvalidRequest, "batch_too_large",
				fmt.Sprintf("the batch has %d requests, more than the limit of %d; split it", n, lim.MaxBatch))
		}
		req := &Request{Batch: true, Calls: make([]Call, n)}
		it := newElements(trimmed)
		for i := range req.Calls {
			_, el, _ := it.next(false)
			req.Calls[i] = parseCall(el)
		}
		if d := duplicateKey(req.Calls); d >= 0 {
			id := truncate(string(req.Calls[d].ID), 64)
			e := NewError(CodeInvalidRequest, "duplicate_id",
				fmt.Sprintf("the batch has more than one request with id %s; give every request its own id", id))
			e.Extra = map[string]any{"id": id}
			return nil, e
		}
		return req, nil
	case '{':
		// The request and its one call in one allocation.
		one := &struct {
			req   Request
			calls [1]Call
		}{}
		one.calls[0] = parseCall(trimmed)
		one.req.Calls = one.calls[:]
		return &one.req, nil
	default:
		return nil, NewError(CodeInvalidRequest, "not_an_object", "a JSON-RPC request must be an object or a batch array")
	}
}

// duplicateKey returns the index of a call whose id Key an earlier call of
// calls has too, or -1. Calls refused before their id was read have no Key
// and take no part.
func duplicateKey(calls []Call) int {
	if len(calls) <= 16 {
		for i := 1; i < len(calls); i++ {
			if calls[i].Key == "" {
				continue
			}
			for j := range i {
				if calls[j].Key == calls[i].Key {
					return i
				}
			}
		}
		return -1
	}
	seen := make(map[string]struct{}, len(calls))
	for i := range calls {
		k := calls[i].Key
		if k == "" {
			continue
		}
		if _, dup := seen[k]; dup {
			return i
		}
		seen[k] = struct{}{}
	}
	return -1
}

func duplicateMember(where string, name []byte) *Error {
	n := truncate(string(name), 64)
	e := NewError(CodeInvalidRequest, "duplicate_member",
		fmt.Sprintf("%s has more than one member named %q (names are compared ignoring letter case); send each member once", where, n))
	e.Extra = map[string]any{"member": n}
	return e
}

// parseCall reads one call; raw is valid JSON.
func parseCall(raw []byte) Call {
	c := Call{Raw: raw}
	fail := func(e *Error) Call {
		c.Err = e.WithID(c.ID)
		return c
	}
	if kind(raw) != '{' {
		return fail(NewError(CodeInvalidRequest, "not_an_object", "each JSON-RPC request must be an object"))
	}
	var jsonrpc, method, params, id []byte
	var buf [8][]byte
	names := buf[:0]
	for it := newElements(raw); ; {
		rawName, val, ok := it.next(true)
		if !ok {
			break
		}
		name := memberName(rawName)
		names = append(names, name)
		switch string(name) {
		case "jsonrpc":
			jsonrpc = val
		case "method":
			method = val
		case "params":
			params = val
		case "id":
			id = val
		}
	}
	if name, dup := foldDuplicate(names); dup {
		return fail(duplicateMember("the request", name))
	}
	if kind(method) == '"' {
		if bytes.Equal(method, []byte(`"`+MethodSend+`"`)) {
			c.Method = MethodSend
		} else {
			c.Method, _ = decodeString(method)
		}
	}
	switch kind(id) {
	case '"', '0':
	case 0, 'n':
		return fail(NewError(CodeInvalidRequest, "missing_id", "the request has no id; asap.send is not a notification, give it a string or number id"))
	default:
		return fail(NewError(CodeInvalidRequest, "invalid_id", "the request id must be a string or a number"))
	}
	key, ok := IDKey(id)
	if !ok {
		return fail(NewError(CodeInvalidRequest, "invalid_id", "the request id number is out of range; use a smaller number or a string"))
	}
	if key[0] == 's' && !ValidID(key[1:]) {
		return fail(controlCharacter("the request id"))
	}
	c.ID, c.Key = id, key
	// A missing jsonrpc member is accepted, as the reference does.
	if len(jsonrpc) > 0 && !bytes.Equal(jsonrpc, []byte(`"2.0"`)) {
		return fail(NewError(CodeInvalidRequest, "wrong_jsonrpc_version", `jsonrpc must be "2.0"`))
	}
	if kind(method) != '"' {
		return fail(NewError(CodeInvalidRequest, "missing_method", "the request needs a string method"))
	}
	if c.Method != MethodSend {
		m := truncate(c.Method, 64)
		e := NewError(CodeMethodNotFound, "unknown_method", fmt.Sprintf("method %q is not served; use %q", m, MethodSend))
		e.Extra = map[string]any{"method": m}
		return fail(e)
	}
	if kind(params) != '{' {
		return fail(NewError(CodeInvalidParams, "params_not_object", "params must be an object holding the envelope"))
	}
	var env []byte
	names = buf[:0]
	for it := newElements(params); ; {
		rawName, val, ok := it.next(true)
		if !ok {
			break
		}
		name := memberName(rawName)
		names = append(names, name)
		if string(name) == "envelope" {
			env = val
		}
	}
	if name, dup := foldDuplicate(names); dup {
		return fail(duplicateMember("params", name))
	}
	switch kind(env) {
	case '{':
	case 0, 'n':
		return fail(NewError(CodeInvalidParams, "missing_envelope", "params.envelope is missing; put the ASAP envelope there"))
	default:
		return fail(NewError(CodeInvalidParams, "envelope_not_object", "params.envelope must be a JSON object"))
	}
	if e := decodeEnvelope(env, &c.Envelope); e != nil {
		return fail(e)
	}
	if e := validateEnvelope(&c.Envelope); e != nil {
		return fail(e)
	}
	return c
}

func controlCharacter(field string) *Error {
	e := NewError(CodeInvalidParams, "control_character_in_id", field+" contains a control character (U+0000-U+001F or U+007F); use printable characters only")
	e.Extra = map[string]any{"field": field}
	return e
}

// The envelope members, by index into envelopeFields.
const (
	envID = iota
	envASAPVersion
	envTimestamp
	envSender
	envRecipient
	envPayloadType
	envPayload
	envCorrelationID
	envTraceID
	envRequiresAck
	envExtensions
	envFields
)

func envelopeField(name []byte) int {
	switch string(name) {
	case "id":
		return envID
	case "asap_version":
		return envASAPVersion
	case "timestamp":
		return envTimestamp
	case "sender":
		return envSender
	case "recipient":
		return envRecipient
	case "payload_type":
		return envPayloadType
	case "payload":
		return envPayload
	case "correlation_id":
		return envCorrelationID
	case "trace_id":
		return envTraceID
	case "requires_ack":
		return envRequiresAck
	case "extensions":
		return envExtensions
	}
	return -1
}

// decodeEnvelope fills e from raw, a JSON object, reading each member by
// its exact name. The string members share one allocation.
func decodeEnvelope(raw []byte, e *Envelope) *Error {
	e.Raw = raw
	var vals [envFields][]byte
	var buf [16][]byte
	names := buf[:0]
	var badName, badVal []byte
	size := 0
	for it := newElements(raw); ; {
		rawName, val, ok := it.next(true)
		if !ok {
			break
		}
		name := memberName(rawName)
		names = append(names, name)
		f := envelopeField(name)
		if f < 0 {
			continue
		}
		vals[f] = val
		var typeOK bool
		switch k := kind(val); f {
		case envPayload, envExtensions:
			typeOK = true
		case envRequiresAck:
			typeOK = k == 't' || k == 'f' || k == 'n'
		default:
			typeOK = k == '"' || k == 'n'
			if k == '"' {
				size += len(val) - 2 // decoding never makes a string longer
			}
		}
		if !typeOK && badName == nil {
			badName, badVal = name, val
		}
	}
	if name, dup := foldDuplicate(names); dup {
		return duplicateMember("params.envelope", name)
	}
	if badName != nil {
		return NewError(CodeInvalidParams, "invalid_envelope",
			fmt.Sprintf("envelope field %q has the wrong type (%s)", truncate(string(badName), 64), typeName(badVal)))
	}
	e.Payload = vals[envPayload]
	e.Extensions = vals[envExtensions]
	e.RequiresAck = bytes.Equal(vals[envRequiresAck], []byte("true"))
	// Copy every string member into one buffer and slice it.
	var sb strings.Builder
	sb.Grow(size)
	var spans [envFields][2]int
	for f, v := range vals {
		if f == envPayload || f == envExtensions || f == envRequiresAck || kind(v) != '"' {
			continue
		}
		start := sb.Len()
		if inner := v[1 : len(v)-1]; bytes.IndexByte(inner, '\\') < 0 {
			sb.Write(inner)
		} else {
			s, _ := decodeString(v)
			sb.WriteString(s)
		}
		spans[f] = [2]int{start, sb.Len()}
	}
	s := sb.String()
	str := func(f int) string { return s[spans[f][0]:spans[f][1]] }
	e.ID = str(envID)
	e.ASAPVersion = str(envASAPVersion)
	e.Timestamp = str(envTimestamp)
	e.Sender = str(envSender)
	e.Recipient = str(envRecipient)
	e.PayloadType = str(envPayloadType)
	e.CorrelationID = str(envCorrelationID)
	e.TraceID = str(envTraceID)
	return nil
}

// typeName names the JSON type of raw as the error details do.
func typeName(raw []byte) string {
	switch kind(raw) {
	case '"':
		return "string"
	case '0':
		return "number"
	case 't', 'f':
		return "bool"
	case '{':
		return "object"
	case '[':
		return "array"
	}
	return "null"
}

func validateEnvelope(e *Envelope) *Error {
	missing := func(f string) *Error {
		return NewError(CodeInvalidParams, "missing_"+f, fmt.Sprintf("envelope.%s is required", f))
	}
	switch {
	case e.ASAPVersion == "":
		return missing("asap_version")
	case e.Sender == "":
		return missing("sender")
	case e.Recipient == "":
		return missing("recipient")
	case e.PayloadType == "":
		return missing("payload_type")
	case len(e.Payload) == 0 || kind(e.Payload) == 'n':
		return missing("payload")
	}
	if kind(e.Payload) != '{' {
		return NewError(CodeInvalidParams, "payload_not_object", "envelope.payload must be a JSON object")
	}
	if !ValidURN(e.Sender) {
		return NewError(CodeInvalidParams, "invalid_sender_urn",
			fmt.Sprintf("envelope.sender %q is not an agent URN (urn:asap:agent:name[:sub], lower case, at most %d characters)", truncate(e.Sender, 64), MaxURNLength))
	}
	if !ValidURN(e.Recipient) {
		return NewError(CodeInvalidParams, "invalid_recipient_urn",
			fmt.Sprintf("envelope.recipient %q is not an agent URN (urn:asap:agent:name[:sub], lower case, at most %d characters)", truncate(e.Recipient, 64), MaxURNLength))
	}
	if e.Timestamp != "" {
		if _, err := time.Parse(time.RFC3339Nano, e.Timestamp); err != nil {
			return NewError(CodeInvalidParams, "invalid_timestamp", "envelope.timestamp must be an RFC 3339 date-time")
		}
	}
	if !ValidID(e.ID) {
		return controlCharacter("envelope.id")
	}
	if !ValidID(e.CorrelationID) {
		return controlCharacter("envelope.correlation_id")
	}
	if len(e.ID) > 256 {
		return NewError(CodeInvalidParams, "invalid_envelope_id", "envelope.id is longer than 256 characters")
	}
	if len(e.Extensions) > 0 && kind(e.Extensions) != '{' && kind(e.Extensions) != 'n' {
		return NewError(CodeInvalidParams, "invalid_extensions", "envelope.extensions must be an object")
	}
	if e.Type().NeedsCorrelation() && e.CorrelationID == "" {
		return NewError(CodeInvalidParams, "missing_correlation_id", "envelope.correlation_id is required for "+e.PayloadType)
	}
	return nil
}

// kind classifies raw JSON by its first byte: '{', '[', '"', 'n' (null),
// 't'/'f' (booleans), '0' (numbers), 0 (absent).
func kind(raw json.RawMessage) byte {
	raw = bytes.TrimLeft(raw, " \t\r\n")
	if len(raw) == 0 {
		return 0
	}
	switch c := raw[0]; {
	case c == '-' || (c >= '0' && c <= '9'):
		return '0'
	default:
		return c
	}
}

// nestingDepth returns the deepest nesting in b, stopping early once it
// passes max. It only counts brackets outside strings; validity is checked
// separately. It runs before any decoding so that deep input never reaches a
// recursive decoder.
func nestingDepth(b []byte, max int) int {
	depth, deepest := 0, 0
	inString, escaped := false, false
	for _, c := range b {
		if inString {
			switch {
			case escaped:
				escaped = false
			case c == '\\':
				escaped = true
			case c == '"':
				inString = false
			}
			continue
		}
		switch c {
		case '"':
			inString = true
		case '{', '[':
			depth++
			if depth > deepest {
				deepest = depth
				if deepest > max {
					return deepest
				}
			}
		case '}', ']':
			depth--
		}
	}
	return deepest
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	// Cut on a rune boundary so the echo stays valid UTF-8.
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "…"
}
