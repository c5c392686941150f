package protocol

import (
	"bytes"
	"encoding/json"
	"errors"
)

// Reply is what the agent answered to one call, as far as the sidecar
// needs it: whether it was an error, and the task outcome of a
// task.response or task.stream envelope.
type Reply struct {
	ID json.RawMessage
	// Key is IDKey(ID), "" when the reply has no usable id.
	Key string
	// ErrorCode is the JSON-RPC error code when the agent answered an
	// error, else 0.
	ErrorCode int
	// PayloadType of the answered envelope, canonical.
	PayloadType PayloadType
	TaskID      string
	// BadTaskID is set when the payload's task_id held a control
	// character; TaskID is then "" and the reply should count as failed.
	BadTaskID bool
	Status    string
	// Metrics is the payload's metrics object as sent (may be nil).
	Metrics json.RawMessage
	// Final is set on a task.stream chunk that closes its task.
	Final bool
}

// Failed reports whether the reply counts as a failed task: a JSON-RPC
// error from the agent, a task that ended with status failed, or a task_id
// that could not be accepted (BadTaskID).
func (r *Reply) Failed() bool { return r.ErrorCode != 0 || r.Status == StatusFailed || r.BadTaskID }

type wireResponse struct {
	ID     json.RawMessage `json:"id"`
	Result *struct {
		Envelope json.RawMessage `json:"envelope"`
	} `json:"result"`
	Error *struct {
		Code json.RawMessage `json:"code"`
	} `json:"error"`
	// scanned: the answer was validated by scanResponse, so its envelope
	// need not be checked again before scanning.
	scanned bool
}

type wireReplyEnvelope struct {
	PayloadType json.RawMessage `json:"payload_type"`
	Payload     struct {
		TaskID  json.RawMessage `json:"task_id"`
		Status  json.RawMessage `json:"status"`
		Metrics json.RawMessage `json:"metrics"`
		Final   json.RawMessage `json:"final"`
	} `json:"payload"`
}

// ErrNotJSONRPC is returned when an agent's answer is not a JSON-RPC
// response.
var ErrNotJSONRPC = errors.New("agent answer is not a JSON-RPC response")

// ParseResponse reads a JSON-RPC answer (single or batch). The agent is
// trusted no more than the client: any shape is tolerated, and fields of
// the wrong type are treated as absent.
func ParseResponse(body []byte) ([]Reply, error) {
	body = bytes.TrimSpace(body)
	if replies, err, ok := scanResponse(body); ok {
		return replies, err
	}
	return decodeResponse(body)
}

// decodeResponse is ParseResponse with encoding/json: the answers the
// scanner leaves (invalid UTF-8, deep nesting) and the reference it is
// fuzzed against.
func decodeResponse(body []byte) ([]Reply, error) {
	switch kind(body) {
	case '{':
		var w wireResponse
		if err := json.Unmarshal(body, &w); err != nil {
			return nil, ErrNotJSONRPC
		}
		r, ok := w.reply()
		if !ok {
			return nil, ErrNotJSONRPC
		}
		return []Reply{r}, nil
	case '[':
		var ws []wireResponse
		if err := json.Unmarshal(body, &ws); err != nil {
			return nil, ErrNotJSONRPC
		}
		out := make([]Reply, 0, len(ws))
		for _, w := range ws {
			if r, ok := w.reply(); ok {
				out = append(out, r)
			}
		}
		return out, nil
	}
	return nil, ErrNotJSONRPC
}

func (w *wireResponse) reply() (Reply, bool) {
	r := Reply{ID: w.ID}
	r.Key, _ = IDKey(w.ID)
	switch {
	case w.Error != nil:
		var code int
		if json.Unmarshal(w.Error.Code, &code) != nil || code == 0 {
			code = CodeRemoteError
		}
		r.ErrorCode = code
		return r, true
	case w.Result != nil:
		readEnvelope(w.Result.Envelope, &r, w.scanned)
		return r, true
	}
	return r, false
}

func readEnvelope(raw json.RawMessage, r *Reply, validated bool) {
	var env wireReplyEnvelope
	if kind(raw) != '{' {
		return
	}
	if scanned, ok := scanEnvelope(raw, validated); ok {
		env = scanned
	} else if json.Unmarshal(raw, &env) != nil {
		return
	}
	r.PayloadType = NormalizeType(str(env.PayloadType))
	r.TaskID = str(env.Payload.TaskID)
	if !ValidID(r.TaskID) {
		r.TaskID, r.BadTaskID = "", true
	}
	r.Status = str(env.Payload.Status)
	if kind(env.Payload.Metrics) == '{' {
		r.Metrics = env.Payload.Metrics
	}
	r.Final = bytes.Equal(bytes.TrimSpace(env.Payload.Final), []byte("true"))
}

// ParseSSE reads the envelopes of an /asap/stream answer: each event's
// data is a bare envelope. Events that do not parse are skipped.
func ParseSSE(body []byte) []Reply {
	var out []Reply
	for _, event := range bytes.Split(bytes.ReplaceAll(body, []byte("\r\n"), []byte("\n")), []byte("\n\n")) {
		var data []byte
		for _, line := range bytes.Split(event, []byte("\n")) {
			if v, ok := bytes.CutPrefix(line, []byte("data:")); ok {
				if len(data) > 0 {
					data = append(data, '\n')
				}
				data = append(data, bytes.TrimPrefix(v, []byte(" "))...)
			}
		}
		if len(data) == 0 {
			continue
		}
		var r Reply
		readEnvelope(data, &r, false)
		if r.PayloadType != "" {
			out = append(out, r)
		}
	}
	return out
}

func str(raw json.RawMessage) string {
	s, _ := decodeString(bytes.TrimLeft(raw, " \t\r\n"))
	return s
}
