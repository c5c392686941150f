package protocol

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
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
	ID       json.RawMessage
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

var urnPattern = regexp.MustCompile(`^urn:asap:agent:[a-z0-9-]+(:[a-z0-9-]+)?$`)

// ValidURN reports whether s is an ASAP agent URN.
func ValidURN(s string) bool {
	return len(s) <= MaxURNLength && urnPattern.MatchString(s)
}

// ParseRequest parses a POST /asap body. A whole-body problem (not JSON,
// too deep, empty or oversized batch) comes back as the error; problems of
// one call are put on that call, so the rest of a batch can still go on.
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
	switch trimmed[0] {
	case '[':
		var elems []json.RawMessage
		if err := json.Unmarshal(trimmed, &elems); err != nil {
			return nil, NewError(CodeParseError, "invalid_json", "the body is not valid JSON")
		}
		if len(elems) == 0 {
			return nil, NewError(CodeInvalidRequest, "empty_batch", "the batch is empty; send at least one request")
		}
		if len(elems) > lim.MaxBatch {
			return nil, NewError(CodeInvalidRequest, "batch_too_large",
				fmt.Sprintf("the batch has %d requests, more than the limit of %d; split it", len(elems), lim.MaxBatch))
		}
		req := &Request{Batch: true, Calls: make([]Call, len(elems))}
		for i, el := range elems {
			req.Calls[i] = parseCall(el)
		}
		return req, nil
	case '{':
		c := parseCall(trimmed)
		if c.Err != nil && c.Err.Code == CodeParseError {
			return nil, c.Err // not JSON at all: no id to answer
		}
		return &Request{Calls: []Call{c}}, nil
	default:
		if !json.Valid(trimmed) {
			return nil, NewError(CodeParseError, "invalid_json", "the body is not valid JSON")
		}
		return nil, NewError(CodeInvalidRequest, "not_an_object", "a JSON-RPC request must be an object or a batch array")
	}
}

// wireRequest decodes a call in one pass: params and the envelope are
// typed here, and a member of the wrong type surfaces as the decoder's
// UnmarshalTypeError, whose Field says where.
type wireRequest struct {
	JSONRPC json.RawMessage `json:"jsonrpc"`
	Method  json.RawMessage `json:"method"`
	Params  *wireParams     `json:"params"`
	ID      json.RawMessage `json:"id"`
}

type wireParams struct {
	Envelope *Envelope `json:"envelope"`
}

func parseCall(raw json.RawMessage) Call {
	c := Call{Raw: raw}
	fail := func(e *Error) Call {
		c.Err = e.WithID(c.ID)
		return c
	}
	if kind(raw) != '{' {
		return fail(NewError(CodeInvalidRequest, "not_an_object", "each JSON-RPC request must be an object"))
	}
	var w wireRequest
	err := json.Unmarshal(raw, &w)
	var typeErr *json.UnmarshalTypeError
	if err != nil && !errors.As(err, &typeErr) {
		return fail(NewError(CodeParseError, "invalid_json", "the request is not valid JSON"))
	}
	switch kind(w.ID) {
	case '"', '0':
		c.ID = w.ID
	case 0, 'n':
		return fail(NewError(CodeInvalidRequest, "missing_id", "the request has no id; asap.send is not a notification, give it a string or number id"))
	default:
		return fail(NewError(CodeInvalidRequest, "invalid_id", "the request id must be a string or a number"))
	}
	// A missing jsonrpc member is accepted, as the reference does.
	if len(w.JSONRPC) > 0 && !bytes.Equal(w.JSONRPC, []byte(`"2.0"`)) {
		return fail(NewError(CodeInvalidRequest, "wrong_jsonrpc_version", `jsonrpc must be "2.0"`))
	}
	var method string
	if kind(w.Method) != '"' || json.Unmarshal(w.Method, &method) != nil {
		return fail(NewError(CodeInvalidRequest, "missing_method", "the request needs a string method"))
	}
	if method != MethodSend {
		e := NewError(CodeMethodNotFound, "unknown_method", fmt.Sprintf("method %q is not served; use %q", truncate(method, 64), MethodSend))
		e.Extra = map[string]any{"method": truncate(method, 64)}
		return fail(e)
	}
	if typeErr != nil {
		switch field := typeErr.Field; {
		case field == "params":
			return fail(NewError(CodeInvalidParams, "params_not_object", "params must be an object holding the envelope"))
		case field == "params.envelope":
			return fail(NewError(CodeInvalidParams, "envelope_not_object", "params.envelope must be a JSON object"))
		default:
			name := strings.TrimPrefix(field, "params.envelope.")
			return fail(NewError(CodeInvalidParams, "invalid_envelope", fmt.Sprintf("envelope field %q has the wrong type (%s)", truncate(name, 64), typeErr.Value)))
		}
	}
	if w.Params == nil {
		return fail(NewError(CodeInvalidParams, "params_not_object", "params must be an object holding the envelope"))
	}
	if w.Params.Envelope == nil {
		return fail(NewError(CodeInvalidParams, "missing_envelope", "params.envelope is missing; put the ASAP envelope there"))
	}
	c.Envelope = *w.Params.Envelope
	if e := validateEnvelope(&c.Envelope); e != nil {
		return fail(e)
	}
	return c
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
