// Package metering records one usage event per forwarded task and answers
// the Usage API's questions from range scans over Badger: events by time,
// with secondary indexes by agent, consumer and task, retention by Badger
// TTL, and aggregation by agent, consumer, day and ISO week.
package metering

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/asap-sidecar/asap-sidecar/caddymodule/protocol"
	"github.com/asap-sidecar/asap-sidecar/caddymodule/wire"
)

// Event is one task's usage, in the reference's UsageMetrics shape plus the
// sidecar's fields (status, payload type, delegation, envelope id).
type Event struct {
	TaskID     string    `json:"task_id"`
	AgentID    string    `json:"agent_id"`
	ConsumerID string    `json:"consumer_id"`
	TokensIn   int64     `json:"tokens_in"`
	TokensOut  int64     `json:"tokens_out"`
	DurationMS int64     `json:"duration_ms"`
	APICalls   int64     `json:"api_calls"`
	Timestamp  time.Time `json:"timestamp"`

	Status       string `json:"status,omitempty"`
	PayloadType  string `json:"payload_type,omitempty"`
	EnvelopeID   string `json:"envelope_id,omitempty"`
	DelegationID string `json:"delegation_id,omitempty"`
	RootIssuer   string `json:"root_issuer,omitempty"`
}

// MaxMetric is the largest figure accepted from an agent; anything larger
// is treated as garbage. A trillion tokens in one task is not a real task.
const MaxMetric = 1_000_000_000_000

// Metrics are the usage figures an agent reported in task.response.
type Metrics struct {
	TokensIn, TokensOut, APICalls int64
	// Problems names every figure that was present but unusable (and
	// counted as 0), for the warning log.
	Problems []string
}

// ParseMetrics reads a task.response metrics object. tokens_used stands in
// for tokens_out when tokens_out is absent or 0, as the reference does.
// Negative, fractional, non-numeric or absurdly large values become 0 and
// are listed in Problems; nothing here fails a request.
func ParseMetrics(raw json.RawMessage) Metrics {
	var m Metrics
	if len(raw) == 0 {
		return m
	}
	var in, out, used, calls json.RawMessage
	if !protocol.Members(raw, func(name, v []byte) {
		switch string(name) {
		case "tokens_in":
			in = v
		case "tokens_out":
			out = v
		case "tokens_used":
			used = v
		case "api_calls":
			calls = v
		}
	}) {
		// Not an object the scanner reads: decode it.
		var fields map[string]json.RawMessage
		if err := json.Unmarshal(raw, &fields); err != nil {
			m.Problems = append(m.Problems, "metrics is not an object")
			return m
		}
		in, out, used, calls = fields["tokens_in"], fields["tokens_out"], fields["tokens_used"], fields["api_calls"]
	}
	read := func(name string, v json.RawMessage) int64 {
		if v == nil || bytes.Equal(v, []byte("null")) {
			return 0
		}
		n, ok := wholeNumber(v)
		if !ok {
			m.Problems = append(m.Problems, fmt.Sprintf("%s=%s", name, truncate(string(v), 32)))
			return 0
		}
		return n
	}
	m.TokensIn = read("tokens_in", in)
	m.TokensOut = read("tokens_out", out)
	if t := read("tokens_used", used); m.TokensOut == 0 {
		m.TokensOut = t
	}
	m.APICalls = read("api_calls", calls)
	return m
}

func wholeNumber(v json.RawMessage) (int64, bool) {
	// What json.Unmarshal into a float64 takes: a number literal (a
	// string, bool, object or array is a type error), parsed in range.
	if len(v) == 0 || (v[0] != '-' && (v[0] < '0' || v[0] > '9')) || !json.Valid(v) {
		return 0, false
	}
	f, err := strconv.ParseFloat(string(v), 64)
	if err != nil {
		return 0, false
	}
	if f < 0 || f > MaxMetric || f != math.Trunc(f) {
		return 0, false
	}
	return int64(f), true
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

// Validate checks an event given to POST /usage, the way the reference
// does, plus the key-safety rules of this store.
func (e *Event) Validate() error {
	for _, f := range []struct{ name, v string }{{"task_id", e.TaskID}, {"agent_id", e.AgentID}, {"consumer_id", e.ConsumerID}} {
		if f.v == "" {
			return fmt.Errorf("%s is required", f.name)
		}
		if utf8.RuneCountInString(f.v) > 256 {
			return fmt.Errorf("%s is longer than 256 characters", f.name)
		}
		if strings.IndexFunc(f.v, unicode.IsControl) >= 0 {
			return fmt.Errorf("%s contains control characters", f.name)
		}
	}
	if e.Timestamp.IsZero() {
		return errors.New("timestamp is required")
	}
	if y := e.Timestamp.UTC().Year(); y < 1970 || y > 9999 {
		return fmt.Errorf("timestamp year %d is outside 1970..9999", y)
	}
	for _, f := range []struct {
		name string
		v    int64
	}{{"tokens_in", e.TokensIn}, {"tokens_out", e.TokensOut}, {"duration_ms", e.DurationMS}, {"api_calls", e.APICalls}} {
		if f.v < 0 {
			return fmt.Errorf("%s must be ≥ 0", f.name)
		}
		if f.v > MaxMetric {
			return fmt.Errorf("%s is larger than %d", f.name, int64(MaxMetric))
		}
	}
	return nil
}

// eventFields are the JSON names an event may carry, matched exactly.
var eventFields = map[string]bool{
	"task_id": true, "agent_id": true, "consumer_id": true, "tokens_in": true, "tokens_out": true,
	"duration_ms": true, "api_calls": true, "timestamp": true, "status": true, "payload_type": true,
	"envelope_id": true, "delegation_id": true, "root_issuer": true,
}

// DecodeEvent reads one event strictly, as the reference's model does:
// one JSON object, nothing after it, and no field it does not know (names
// compared exactly; encoding/json alone would match them in any case).
func DecodeEvent(b []byte) (*Event, error) {
	var fields map[string]json.RawMessage
	dec := json.NewDecoder(bytes.NewReader(b))
	if err := dec.Decode(&fields); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) {
			return nil, errors.New("invalid usage event: must be a JSON object")
		}
		return nil, fmt.Errorf("invalid usage event: %w", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("invalid usage event: data after the JSON object")
	}
	for name := range fields {
		if !eventFields[name] {
			return nil, fmt.Errorf("invalid usage event: unknown field %q", truncate(name, 32))
		}
	}
	var e Event
	if err := json.Unmarshal(b, &e); err != nil {
		return nil, fmt.Errorf("invalid usage event: %w", err)
	}
	if err := e.Validate(); err != nil {
		return nil, fmt.Errorf("invalid usage event: %w", err)
	}
	e.Timestamp = wire.Time(e.Timestamp)
	return &e, nil
}
