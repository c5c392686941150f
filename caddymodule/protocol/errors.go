// Package protocol parses ASAP traffic: JSON-RPC 2.0 requests and responses
// (single and batch), the ASAP envelope they carry, payload-type
// normalisation, and the JSON-RPC error answers the sidecar gives. It knows
// nothing about Caddy or storage.
package protocol

import (
	"encoding/json"
)

// JSON-RPC 2.0 codes and the ASAP codes the sidecar answers with. The ASAP
// band is -32000..-32059; -32050..-32059 are security errors.
const (
	CodeParseError     = -32700
	CodeInvalidRequest = -32600
	CodeMethodNotFound = -32601
	CodeInvalidParams  = -32602
	CodeInternalError  = -32603

	// CodeConnectionError: the agent could not be reached.
	CodeConnectionError = -32032
	// CodeTimeout: the agent did not answer in time.
	CodeTimeout = -32033
	// CodeRemoteError: the agent answered something that is not ASAP.
	CodeRemoteError = -32034

	// Delegation rejections, one code per class (SPEC §3).
	CodeTokenMalformed  = -32053
	CodeTokenSignature  = -32054
	CodeTokenTime       = -32055
	CodeTokenRevoked    = -32056
	CodeTokenScope      = -32057
	CodeTokenAudience   = -32058
	CodeTokenLimitSpent = -32059
)

var codeMessages = map[int]string{
	CodeParseError:      "Parse error",
	CodeInvalidRequest:  "Invalid request",
	CodeMethodNotFound:  "Method not found",
	CodeInvalidParams:   "Invalid params",
	CodeInternalError:   "Internal error",
	CodeConnectionError: "Agent unreachable",
	CodeTimeout:         "Agent timeout",
	CodeRemoteError:     "Invalid agent response",
	CodeTokenMalformed:  "Delegation token missing or malformed",
	CodeTokenSignature:  "Delegation token signature invalid",
	CodeTokenTime:       "Delegation token expired or not yet valid",
	CodeTokenRevoked:    "Delegation token revoked",
	CodeTokenScope:      "Delegation scope not granted",
	CodeTokenAudience:   "Delegation audience mismatch",
	CodeTokenLimitSpent: "Delegation task limit reached",
	// The reference's message for -32000.
	CodeVersionIncompatible: "ASAP protocol version incompatible",
}

// Error is a JSON-RPC error the sidecar answers with instead of forwarding.
// Reason is a stable machine-readable name of the failed rule; Detail is the
// human explanation, saying what to fix.
type Error struct {
	Code   int
	Reason string
	Detail string
	// Extra fields for data (must not contain secrets).
	Extra map[string]any
	// ID is the request id the answer echoes (raw JSON; null if unknown).
	ID json.RawMessage
}

func (e *Error) Error() string { return e.Reason + ": " + e.Detail }

// Message is the JSON-RPC message for the error's code.
func (e *Error) Message() string {
	if m, ok := codeMessages[e.Code]; ok {
		return m
	}
	return "Server error"
}

type wireError struct {
	JSONRPC string          `json:"jsonrpc"`
	Error   wireErrorBody   `json:"error"`
	ID      json.RawMessage `json:"id"`
}

type wireErrorBody struct {
	Code    int            `json:"code"`
	Message string         `json:"message"`
	Data    map[string]any `json:"data"`
}

var jsonNull = json.RawMessage("null")

// Object is the JSON-RPC error response object for e.
func (e *Error) Object() any {
	data := make(map[string]any, len(e.Extra)+2)
	for k, v := range e.Extra {
		data[k] = v
	}
	// "error" is the field the reference puts its explanation in;
	// "reason" names the rule so clients can branch on it.
	data["error"] = e.Detail
	data["reason"] = e.Reason
	id := e.ID
	if len(id) == 0 {
		id = jsonNull
	}
	return wireError{
		JSONRPC: "2.0",
		Error:   wireErrorBody{Code: e.Code, Message: e.Message(), Data: data},
		ID:      id,
	}
}

// JSON is the serialized error response.
func (e *Error) JSON() []byte {
	b, err := json.Marshal(e.Object())
	if err != nil {
		// Extra held something unmarshalable: drop it rather than fail.
		b, _ = json.Marshal((&Error{Code: e.Code, Reason: e.Reason, Detail: e.Detail, ID: e.ID}).Object())
	}
	return b
}

// WithID returns a copy of e answering request id.
func (e *Error) WithID(id json.RawMessage) *Error {
	c := *e
	c.ID = id
	return &c
}

// NewError builds an error answer.
func NewError(code int, reason, detail string) *Error {
	return &Error{Code: code, Reason: reason, Detail: detail}
}
