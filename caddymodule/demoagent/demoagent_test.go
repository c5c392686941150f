package demoagent

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	_ "github.com/caddyserver/caddy/v2/modules/standard"
	"github.com/coder/websocket"
)

const (
	clientURN = "urn:asap:agent:client"
	demoURN   = "urn:asap:agent:demo"
)

func newAgent(t *testing.T) *Agent {
	t.Helper()
	a := &Agent{}
	if err := a.Provision(caddy.Context{}); err != nil {
		t.Fatalf("Provision: %v", err)
	}
	if err := a.Validate(); err != nil {
		t.Fatalf("Validate: %v", err)
	}
	return a
}

// envJSON is an envelope from the client to the demo agent.
func envJSON(id, payloadType, payload string) string {
	return fmt.Sprintf(`{"id":%q,"asap_version":"0.1","timestamp":"2026-11-26T01:00:00Z","sender":%q,"recipient":%q,"payload_type":%q,"payload":%s}`,
		id, clientURN, demoURN, payloadType, payload)
}

func taskEnv(id, skill, input string) string {
	return envJSON(id, "task.request", fmt.Sprintf(`{"conversation_id":"c1","skill_id":%q,"input":%s}`, skill, input))
}

func rpcCall(id, env string) string {
	return fmt.Sprintf(`{"jsonrpc":"2.0","method":"asap.send","params":{"envelope":%s},"id":%s}`, env, id)
}

func serve(t *testing.T, a *Agent, method, path, body string) *httptest.ResponseRecorder {
	t.Helper()
	r := httptest.NewRequest(method, path, strings.NewReader(body))
	w := httptest.NewRecorder()
	if err := a.ServeHTTP(w, r, nil); err != nil {
		t.Fatalf("ServeHTTP returned %v", err)
	}
	return w
}

type replyEnvelope struct {
	ID            string          `json:"id"`
	ASAPVersion   string          `json:"asap_version"`
	Timestamp     string          `json:"timestamp"`
	Sender        string          `json:"sender"`
	Recipient     string          `json:"recipient"`
	PayloadType   string          `json:"payload_type"`
	Payload       map[string]any  `json:"payload"`
	CorrelationID string          `json:"correlation_id"`
	TraceID       *string         `json:"trace_id"`
	RequiresAck   bool            `json:"requires_ack"`
	Extensions    json.RawMessage `json:"extensions"`
}

type rpcAnswer struct {
	JSONRPC string          `json:"jsonrpc"`
	ID      json.RawMessage `json:"id"`
	Result  *struct {
		Envelope replyEnvelope `json:"envelope"`
	} `json:"result"`
	Error *struct {
		Code    int            `json:"code"`
		Message string         `json:"message"`
		Data    map[string]any `json:"data"`
	} `json:"error"`
}

func decode(t *testing.T, b []byte) rpcAnswer {
	t.Helper()
	var a rpcAnswer
	if err := json.Unmarshal(b, &a); err != nil {
		t.Fatalf("answer is not a JSON-RPC object: %v: %q", err, b)
	}
	if a.JSONRPC != "2.0" {
		t.Errorf("jsonrpc = %q", a.JSONRPC)
	}
	return a
}

// callOK posts one call and returns the answering envelope.
func callOK(t *testing.T, a *Agent, body string) replyEnvelope {
	t.Helper()
	w := serve(t, a, http.MethodPost, "/asap", body)
	if w.Code != http.StatusOK {
		t.Fatalf("status %d: %s", w.Code, w.Body)
	}
	ans := decode(t, w.Body.Bytes())
	if ans.Error != nil || ans.Result == nil {
		t.Fatalf("want a result, got %s", w.Body)
	}
	return ans.Result.Envelope
}

func TestProvisionDefaultsAndValidate(t *testing.T) {
	a := newAgent(t)
	if a.ID != demoURN || a.TTLSeconds != 300 {
		t.Errorf("defaults: id %q ttl %d", a.ID, a.TTLSeconds)
	}
	want := ManifestSLA{Availability: "99.5%", MaxLatencyP95MS: 500, MaxErrorRate: "1%", SupportHours: "24/7"}
	if a.SLA == nil || *a.SLA != want {
		t.Errorf("default sla = %+v, want %+v", a.SLA, want)
	}
	if a.started.IsZero() {
		t.Error("started not set")
	}

	// Set values stay.
	custom := &ManifestSLA{Availability: "90%"}
	b := &Agent{ID: "urn:asap:agent:other", TTLSeconds: 5, SLA: custom}
	if err := b.Provision(caddy.Context{}); err != nil {
		t.Fatal(err)
	}
	if b.ID != "urn:asap:agent:other" || b.TTLSeconds != 5 || b.SLA != custom || *custom != (ManifestSLA{Availability: "90%"}) {
		t.Errorf("Provision overwrote set values: %+v %+v", b, b.SLA)
	}
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name string
		a    *Agent
		want string // "" = valid
	}{
		{"valid", &Agent{ID: demoURN, TTLSeconds: 1}, ""},
		{"valid sub", &Agent{ID: "urn:asap:agent:demo:eu", TTLSeconds: 300}, ""},
		{"bad URN", &Agent{ID: "demo", TTLSeconds: 300}, `asap_demo_agent: option agent: "demo" is not an agent URN`},
		{"upper case URN", &Agent{ID: "urn:asap:agent:Demo", TTLSeconds: 300}, "option agent"},
		{"empty URN", &Agent{ID: "", TTLSeconds: 300}, "option agent"},
		{"URN too long", &Agent{ID: "urn:asap:agent:" + strings.Repeat("a", 250), TTLSeconds: 300}, "option agent"},
		{"ttl 0", &Agent{ID: demoURN, TTLSeconds: 0}, "asap_demo_agent: option ttl_seconds: must be at least 1"},
		{"ttl negative", &Agent{ID: demoURN, TTLSeconds: -5}, "option ttl_seconds"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.a.Validate()
			if tt.want == "" {
				if err != nil {
					t.Fatalf("valid agent rejected: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Validate() = %v, want an error containing %q", err, tt.want)
			}
		})
	}
	// A negative ttl survives Provision (only 0 is defaulted) and fails.
	a := &Agent{TTLSeconds: -1}
	_ = a.Provision(caddy.Context{})
	if err := a.Validate(); err == nil {
		t.Error("ttl_seconds -1 validated after Provision")
	}
}

func TestCaddyModule(t *testing.T) {
	info := (&Agent{}).CaddyModule()
	if info.ID != "http.handlers.asap_demo_agent" {
		t.Errorf("module id = %q", info.ID)
	}
	if _, ok := info.New().(*Agent); !ok {
		t.Errorf("New() = %T", info.New())
	}
}

func TestEchoSkill(t *testing.T) {
	a := newAgent(t)
	input := `{"text":"hello","n":3}`
	w := serve(t, a, http.MethodPost, "/asap", rpcCall(`"r1"`, taskEnv("env-1", "echo", input)))
	if w.Code != http.StatusOK {
		t.Fatalf("status %d", w.Code)
	}
	if ct := w.Header().Get("Content-Type"); ct != "application/json" {
		t.Errorf("content type %q", ct)
	}
	if cl := w.Header().Get("Content-Length"); cl != strconv.Itoa(w.Body.Len()) {
		t.Errorf("content length %q for %d bytes", cl, w.Body.Len())
	}
	ans := decode(t, w.Body.Bytes())
	if string(ans.ID) != `"r1"` {
		t.Errorf("id = %s", ans.ID)
	}
	if ans.Error != nil || ans.Result == nil {
		t.Fatalf("answer %s", w.Body)
	}
	env := ans.Result.Envelope
	if env.PayloadType != "task.response" {
		t.Errorf("payload_type = %q", env.PayloadType)
	}
	p := env.Payload
	if p["status"] != "completed" {
		t.Errorf("status = %v", p["status"])
	}
	wantResult := map[string]any{"echo": map[string]any{"text": "hello", "n": float64(3)}}
	if !reflect.DeepEqual(p["result"], wantResult) {
		t.Errorf("result = %v, want %v", p["result"], wantResult)
	}
	if id, _ := p["task_id"].(string); !strings.HasPrefix(id, "task_") || len(id) != len("task_")+26 {
		t.Errorf("task_id = %v", p["task_id"])
	}
	if v, ok := p["final_state"]; !ok || v != nil {
		t.Errorf("final_state = %v (present %v), want null", v, ok)
	}
	m, _ := p["metrics"].(map[string]any)
	if m == nil {
		t.Fatalf("no metrics in %v", p)
	}
	// Without overrides, tokens are estimated as bytes/4 (rounded up) of
	// the raw input and of the encoded result.
	resultJSON, _ := json.Marshal(wantResult)
	if got, want := m["tokens_in"], float64((len(input)+3)/4); got != want {
		t.Errorf("tokens_in = %v, want %v", got, want)
	}
	if got, want := m["tokens_out"], float64((len(resultJSON)+3)/4); got != want {
		t.Errorf("tokens_out = %v, want %v", got, want)
	}
	if m["api_calls"] != float64(1) {
		t.Errorf("api_calls = %v, want 1", m["api_calls"])
	}
	if d, ok := m["duration_ms"].(float64); !ok || d < 0 {
		t.Errorf("duration_ms = %v", m["duration_ms"])
	}
}

func TestEchoMetricsOverrides(t *testing.T) {
	tests := []struct {
		name                   string
		input                  string
		tokIn, tokOut, apiCall float64
	}{
		{"numbers", `{"tokens_in":100,"tokens_out":250,"api_calls":3}`, 100, 250, 3},
		{"strings", `{"tokens_in":"42","tokens_out":"7.5","api_calls":"0"}`, 42, 7.5, 0},
		{"zero", `{"tokens_in":0,"tokens_out":0,"api_calls":0}`, 0, 0, 0},
		{"partial", `{"tokens_out":9}`, -1, 9, 1},
		{"non-numeric ignored", `{"tokens_in":"many","tokens_out":true,"api_calls":null,"pad":"xxxxxxxxxxxxxxxxxxxxxxxxx"}`, -1, -1, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := newAgent(t)
			env := callOK(t, a, rpcCall("1", taskEnv("e", "echo", tt.input)))
			m := env.Payload["metrics"].(map[string]any)
			check := func(key string, want float64) {
				if want < 0 { // default estimate: positive
					if v, _ := m[key].(float64); v <= 0 {
						t.Errorf("%s = %v, want the estimate", key, m[key])
					}
					return
				}
				if m[key] != want {
					t.Errorf("%s = %v, want %v", key, m[key], want)
				}
			}
			check("tokens_in", tt.tokIn)
			check("tokens_out", tt.tokOut)
			check("api_calls", tt.apiCall)
			if _, ok := m["duration_ms"]; !ok {
				t.Error("duration_ms missing")
			}
			// The echo result still carries the input.
			res := env.Payload["result"].(map[string]any)
			var in map[string]any
			_ = json.Unmarshal([]byte(tt.input), &in)
			if !reflect.DeepEqual(res["echo"], in) {
				t.Errorf("echo = %v, want %v", res["echo"], in)
			}
		})
	}
}

func TestReplyEnvelopeAddressing(t *testing.T) {
	a := newAgent(t)
	env := callOK(t, a, rpcCall("7", taskEnv("01JREQUESTENVELOPE", "echo", `{}`)))
	if env.CorrelationID != "01JREQUESTENVELOPE" {
		t.Errorf("correlation_id = %q, want the request envelope id", env.CorrelationID)
	}
	if env.Sender != demoURN {
		t.Errorf("sender = %q, want %q", env.Sender, demoURN)
	}
	if env.Recipient != clientURN {
		t.Errorf("recipient = %q, want the request's sender %q", env.Recipient, clientURN)
	}
	if env.ASAPVersion != "0.1" {
		t.Errorf("asap_version = %q, want the request's", env.ASAPVersion)
	}
	if len(env.ID) != 26 || env.ID == "01JREQUESTENVELOPE" {
		t.Errorf("id = %q, want a fresh ULID", env.ID)
	}
	if _, err := time.Parse(time.RFC3339Nano, env.Timestamp); err != nil {
		t.Errorf("timestamp %q: %v", env.Timestamp, err)
	}
	if env.TraceID != nil {
		t.Errorf("trace_id = %q, want null", *env.TraceID)
	}
	if env.RequiresAck {
		t.Error("requires_ack = true")
	}
	if string(env.Extensions) != "null" {
		t.Errorf("extensions = %s", env.Extensions)
	}

	// A numeric JSON-RPC id comes back numeric; the trace id is carried.
	w := serve(t, a, http.MethodPost, "/asap", rpcCall("7", strings.Replace(taskEnv("e2", "echo", `{}`), `"id":"e2"`, `"id":"e2","trace_id":"trace-9"`, 1)))
	ans := decode(t, w.Body.Bytes())
	if string(ans.ID) != "7" {
		t.Errorf("id = %s, want 7", ans.ID)
	}
	if tr := ans.Result.Envelope.TraceID; tr == nil || *tr != "trace-9" {
		t.Errorf("trace_id = %v", tr)
	}

	// A custom agent id is the sender.
	b := &Agent{ID: "urn:asap:agent:other"}
	_ = b.Provision(caddy.Context{})
	if env := callOK(t, b, rpcCall("1", taskEnv("e", "echo", `{}`))); env.Sender != "urn:asap:agent:other" {
		t.Errorf("sender = %q", env.Sender)
	}
}

func TestSleepSkill(t *testing.T) {
	a := newAgent(t)
	start := time.Now()
	env := callOK(t, a, rpcCall("1", taskEnv("e", "sleep", `{"ms":150}`)))
	elapsed := time.Since(start)
	if elapsed < 150*time.Millisecond {
		t.Errorf("answered after %v, want at least 150ms", elapsed)
	}
	if env.Payload["status"] != "completed" {
		t.Errorf("status = %v", env.Payload["status"])
	}
	if res := env.Payload["result"].(map[string]any); res["slept_ms"] != float64(150) {
		t.Errorf("result = %v", res)
	}
	if d := env.Payload["metrics"].(map[string]any)["duration_ms"].(float64); d < 150 {
		t.Errorf("duration_ms = %v, want >= 150", d)
	}

	// ms as a string, negative, or missing.
	for _, tt := range []struct {
		input string
		want  float64
	}{
		{`{"ms":"20"}`, 20},
		{`{"ms":-5}`, 0},
		{`{}`, 0},
	} {
		env := callOK(t, a, rpcCall("1", taskEnv("e", "sleep", tt.input)))
		if res := env.Payload["result"].(map[string]any); res["slept_ms"] != tt.want {
			t.Errorf("input %s: slept_ms = %v, want %v", tt.input, res["slept_ms"], tt.want)
		}
	}
}

// A sleep is capped at 60s and ends early when the request is cancelled.
func TestSleepCappedAndCancelled(t *testing.T) {
	a := newAgent(t)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	done := make(chan *httptest.ResponseRecorder, 1)
	go func() {
		r := httptest.NewRequestWithContext(ctx, http.MethodPost, "/asap", strings.NewReader(rpcCall("1", taskEnv("e", "sleep", `{"ms":9999999}`))))
		w := httptest.NewRecorder()
		_ = a.ServeHTTP(w, r, nil)
		done <- w
	}()
	select {
	case w := <-done:
		env := decode(t, w.Body.Bytes()).Result.Envelope
		if res := env.Payload["result"].(map[string]any); res["slept_ms"] != float64(60000) {
			t.Errorf("slept_ms = %v, want the 60000 cap", res["slept_ms"])
		}
	case <-time.After(30 * time.Second):
		t.Fatal("sleep did not end when the request was cancelled")
	}
}

func TestFailAndUnknownSkills(t *testing.T) {
	tests := []struct {
		skill   string
		wantErr string
	}{
		{"fail", "the fail skill always fails"},
		{"dance", `unknown skill "dance"; use echo, sleep or fail`},
		{"", `unknown skill ""`},
		{"ECHO", `unknown skill "ECHO"`},
	}
	for _, tt := range tests {
		t.Run(tt.skill, func(t *testing.T) {
			a := newAgent(t)
			env := callOK(t, a, rpcCall("1", taskEnv("e", tt.skill, `{}`)))
			if env.PayloadType != "task.response" {
				t.Errorf("payload_type = %q", env.PayloadType)
			}
			if env.Payload["status"] != "failed" {
				t.Errorf("status = %v, want failed", env.Payload["status"])
			}
			res, _ := env.Payload["result"].(map[string]any)
			if msg, _ := res["error"].(string); !strings.Contains(msg, tt.wantErr) {
				t.Errorf("result.error = %q, want %q", msg, tt.wantErr)
			}
			if env.Payload["metrics"] == nil {
				t.Error("failed task has no metrics")
			}
		})
	}
}

// Payload types are matched in canonical form.
func TestPayloadTypeSpellings(t *testing.T) {
	a := newAgent(t)
	for _, pt := range []string{"task.request", "TaskRequest", "task_request", "TASK.REQUEST"} {
		env := callOK(t, a, rpcCall("1", envJSON("e", pt, `{"skill_id":"echo","input":{"x":1}}`)))
		if env.Payload["status"] != "completed" {
			t.Errorf("%s: status = %v", pt, env.Payload["status"])
		}
	}
}

func TestTaskCancel(t *testing.T) {
	a := newAgent(t)
	env := callOK(t, a, rpcCall(`"c1"`, envJSON("cancel-env", "task.cancel", `{"task_id":"task_123"}`)))
	if env.PayloadType != "task.response" {
		t.Errorf("payload_type = %q", env.PayloadType)
	}
	if env.Payload["status"] != "cancelled" {
		t.Errorf("status = %v, want cancelled", env.Payload["status"])
	}
	if env.Payload["task_id"] != "task_123" {
		t.Errorf("task_id = %v, want the cancelled task", env.Payload["task_id"])
	}
	if env.CorrelationID != "cancel-env" || env.Recipient != clientURN || env.Sender != demoURN {
		t.Errorf("addressing: %+v", env)
	}
	for _, k := range []string{"result", "final_state", "metrics"} {
		if v, ok := env.Payload[k]; !ok || v != nil {
			t.Errorf("%s = %v (present %v), want null", k, v, ok)
		}
	}
}

func TestUnknownPayloadTypeIsHandlerNotFound(t *testing.T) {
	for _, pt := range []string{"message.send", "state.query", "custom.thing"} {
		t.Run(pt, func(t *testing.T) {
			a := newAgent(t)
			w := serve(t, a, http.MethodPost, "/asap", rpcCall(`"q"`, envJSON("e", pt, `{}`)))
			if w.Code != http.StatusOK {
				t.Errorf("status %d, JSON-RPC errors travel with 200", w.Code)
			}
			ans := decode(t, w.Body.Bytes())
			if ans.Result != nil || ans.Error == nil {
				t.Fatalf("want an error, got %s", w.Body)
			}
			if ans.Error.Code != -32012 {
				t.Errorf("code = %d, want -32012", ans.Error.Code)
			}
			if string(ans.ID) != `"q"` {
				t.Errorf("id = %s", ans.ID)
			}
			d := ans.Error.Data
			if d["reason"] != "handler_not_found" || d["payload_type"] != pt {
				t.Errorf("data = %v", d)
			}
			if msg, _ := d["error"].(string); !strings.Contains(msg, pt) {
				t.Errorf("data.error = %q", msg)
			}
		})
	}
}

func TestBatch(t *testing.T) {
	a := newAgent(t)
	body := "[" + rpcCall(`"first"`, taskEnv("e1", "echo", `{"k":"one"}`)) + "," +
		rpcCall(`"second"`, taskEnv("e2", "fail", `{}`)) + "]"
	w := serve(t, a, http.MethodPost, "/asap", body)
	var answers []json.RawMessage
	if err := json.Unmarshal(w.Body.Bytes(), &answers); err != nil {
		t.Fatalf("batch answer is not an array: %v: %s", err, w.Body)
	}
	if len(answers) != 2 {
		t.Fatalf("%d answers, want 2", len(answers))
	}
	first, second := decode(t, answers[0]), decode(t, answers[1])
	if string(first.ID) != `"first"` || string(second.ID) != `"second"` {
		t.Errorf("ids out of order: %s, %s", first.ID, second.ID)
	}
	if first.Result.Envelope.CorrelationID != "e1" || first.Result.Envelope.Payload["status"] != "completed" {
		t.Errorf("first answer %s", answers[0])
	}
	if second.Result.Envelope.CorrelationID != "e2" || second.Result.Envelope.Payload["status"] != "failed" {
		t.Errorf("second answer %s", answers[1])
	}

	// A single-element batch is still answered with an array.
	w = serve(t, a, http.MethodPost, "/asap", "["+rpcCall("1", taskEnv("e", "echo", `{}`))+"]")
	if err := json.Unmarshal(w.Body.Bytes(), &answers); err != nil || len(answers) != 1 {
		t.Errorf("one-element batch answered %s", w.Body)
	}
}

func TestBatchWithInvalidCall(t *testing.T) {
	a := newAgent(t)
	bad := `{"jsonrpc":"2.0","method":"asap.send","params":{"envelope":{"asap_version":"0.1","payload_type":"task.request","payload":{}}},"id":"bad"}`
	body := "[" + rpcCall(`"ok"`, taskEnv("e1", "echo", `{}`)) + "," + bad + `,{"jsonrpc":"2.0","method":"nope","id":3}]`
	w := serve(t, a, http.MethodPost, "/asap", body)
	var answers []json.RawMessage
	if err := json.Unmarshal(w.Body.Bytes(), &answers); err != nil || len(answers) != 3 {
		t.Fatalf("answer %s", w.Body)
	}
	if ok := decode(t, answers[0]); ok.Result == nil {
		t.Errorf("good call not answered: %s", answers[0])
	}
	if e := decode(t, answers[1]); e.Error == nil || e.Error.Code != -32602 || string(e.ID) != `"bad"` {
		t.Errorf("invalid envelope answered %s, want -32602 with its id", answers[1])
	}
	if e := decode(t, answers[2]); e.Error == nil || e.Error.Code != -32601 || string(e.ID) != "3" {
		t.Errorf("unknown method answered %s, want -32601", answers[2])
	}
}

func TestMalformedRequests(t *testing.T) {
	tests := []struct {
		name string
		body string
		code int
	}{
		{"not JSON", `{"jsonrpc":`, -32700},
		{"garbage", `hello`, -32700},
		{"empty", ``, -32700},
		{"empty batch", `[]`, -32600},
		{"scalar", `42`, -32600},
		{"missing id", `{"jsonrpc":"2.0","method":"asap.send","params":{}}`, -32600},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := newAgent(t)
			w := serve(t, a, http.MethodPost, "/asap", tt.body)
			if w.Code != http.StatusOK {
				t.Errorf("status %d", w.Code)
			}
			ans := decode(t, w.Body.Bytes())
			if ans.Error == nil || ans.Error.Code != tt.code {
				t.Fatalf("answer %s, want code %d", w.Body, tt.code)
			}
			if string(ans.ID) != "null" {
				t.Errorf("id = %s, want null", ans.ID)
			}
		})
	}
}

func TestOversizedBodyIs413(t *testing.T) {
	a := newAgent(t)
	big := strings.Repeat(" ", maxBody+1)
	for _, path := range []string{"/asap", "/asap/stream"} {
		w := serve(t, a, http.MethodPost, path, big)
		if w.Code != http.StatusRequestEntityTooLarge {
			t.Errorf("%s: status %d, want 413", path, w.Code)
		}
		var m map[string]string
		if err := json.Unmarshal(w.Body.Bytes(), &m); err != nil || m["detail"] == "" {
			t.Errorf("%s: body %q", path, w.Body)
		}
	}
}

// Numbers that JSON cannot carry must not turn the answer into an empty
// body: every call deserves a JSON-RPC answer, and a stream its final event.
func TestNonFiniteInputsStillAnswered(t *testing.T) {
	const why = `number() accepts "NaN"/"Inf" strings via strconv.ParseFloat and does not reject non-finite values`
	for _, input := range []string{`{"ms":"NaN"}`, `{"tokens_in":"Inf"}`, `{"api_calls":"-Inf"}`} {
		t.Run(input, func(t *testing.T) {
			a := newAgent(t)
			skill := "echo"
			if strings.Contains(input, "ms") {
				skill = "sleep"
			}
			w := serve(t, a, http.MethodPost, "/asap", rpcCall("1", taskEnv("e", skill, input)))
			if !json.Valid(w.Body.Bytes()) {
				t.Fatalf("input %s gives HTTP %d with body %q: %s; the value lands in the payload, json.Marshal fails in answer() with its error dropped, so an empty body is written", input, w.Code, w.Body.String(), why)
			}
			if ans := decode(t, w.Body.Bytes()); ans.Result == nil && ans.Error == nil {
				t.Errorf("answer %s", w.Body)
			}
		})
	}
	t.Run("batch", func(t *testing.T) {
		a := newAgent(t)
		body := "[" + rpcCall("1", taskEnv("e1", "echo", `{}`)) + "," + rpcCall("2", taskEnv("e2", "echo", `{"tokens_in":"NaN"}`)) + "]"
		w := serve(t, a, http.MethodPost, "/asap", body)
		var answers []json.RawMessage
		if err := json.Unmarshal(w.Body.Bytes(), &answers); err != nil || len(answers) != 2 {
			t.Fatalf("one call with tokens_in \"NaN\" empties the whole batch answer (HTTP %d, body %q), so the good call goes unanswered too: %s", w.Code, w.Body.String(), why)
		}
	})
	t.Run("stream", func(t *testing.T) {
		a := newAgent(t)
		w := serve(t, a, http.MethodPost, "/asap/stream", rpcCall("1", taskEnv("e", "echo", `{"chunks":"NaN","interval_ms":0}`)))
		events := readSSE(t, w.Body)
		if len(events) == 0 {
			t.Fatalf("/asap/stream with chunks \"NaN\" sends 200 text/event-stream with no event at all (no final chunk): int(math.Max(1, math.Min(NaN, 100))) is int(NaN); %s", why)
		}
		if last := events[len(events)-1].Payload; last["final"] != true {
			t.Errorf("last event %v", last)
		}
	})
}

// readSSE reads "data: {envelope}" events until EOF.
func readSSE(t *testing.T, r io.Reader) []replyEnvelope {
	t.Helper()
	var out []replyEnvelope
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	blank := true
	for sc.Scan() {
		line := sc.Text()
		if line == "" {
			blank = true
			continue
		}
		if !blank {
			t.Errorf("two lines in one event: %q", line)
		}
		blank = false
		data, ok := strings.CutPrefix(line, "data: ")
		if !ok {
			t.Errorf("line %q is not a data line", line)
			continue
		}
		var env replyEnvelope
		if err := json.Unmarshal([]byte(data), &env); err != nil {
			t.Errorf("event data is not an envelope: %v: %s", err, data)
			continue
		}
		out = append(out, env)
	}
	if err := sc.Err(); err != nil {
		t.Errorf("reading stream: %v", err)
	}
	return out
}

func TestStreamOverHTTP(t *testing.T) {
	a := newAgent(t)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _ = a.ServeHTTP(w, r, nil) }))
	defer srv.Close()

	start := time.Now()
	resp, err := http.Post(srv.URL+"/asap/stream", "application/json",
		strings.NewReader(rpcCall(`"s1"`, taskEnv("stream-env", "echo", `{"chunks":4,"interval_ms":30}`))))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d", resp.StatusCode)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Errorf("content type %q", ct)
	}
	if cc := resp.Header.Get("Cache-Control"); cc != "no-cache" {
		t.Errorf("cache control %q", cc)
	}
	events := readSSE(t, resp.Body)
	if elapsed := time.Since(start); elapsed < 90*time.Millisecond {
		t.Errorf("4 chunks 30ms apart took only %v", elapsed)
	}
	if len(events) != 4 {
		t.Fatalf("%d events, want 4", len(events))
	}
	taskID := events[0].Payload["task_id"]
	for i, e := range events {
		n := i + 1
		final := n == 4
		if e.PayloadType != "task.stream" {
			t.Errorf("event %d payload_type %q", n, e.PayloadType)
		}
		if e.CorrelationID != "stream-env" || e.Sender != demoURN || e.Recipient != clientURN {
			t.Errorf("event %d addressing %+v", n, e)
		}
		p := e.Payload
		if p["final"] != final {
			t.Errorf("event %d final = %v", n, p["final"])
		}
		if p["chunk"] != fmt.Sprintf("chunk %d of 4", n) {
			t.Errorf("event %d chunk = %v", n, p["chunk"])
		}
		if p["progress"] != float64(n)/4 {
			t.Errorf("event %d progress = %v", n, p["progress"])
		}
		if p["task_id"] != taskID || !strings.HasPrefix(fmt.Sprint(taskID), "task_") {
			t.Errorf("event %d task_id = %v, first %v", n, p["task_id"], taskID)
		}
		if final && p["status"] != "completed" {
			t.Errorf("final event status = %v, want completed", p["status"])
		}
		if !final && p["status"] != nil {
			t.Errorf("event %d status = %v, want null", n, p["status"])
		}
	}
}

func TestStreamChunkBounds(t *testing.T) {
	tests := []struct {
		input string
		want  int
	}{
		{`{}`, 3}, // default
		{`{"chunks":0,"interval_ms":0}`, 1},
		{`{"chunks":-4,"interval_ms":0}`, 1},
		{`{"chunks":"2","interval_ms":"0"}`, 2},
		{`{"chunks":1000,"interval_ms":0}`, 100},
	}
	for _, tt := range tests {
		t.Run(tt.input, func(t *testing.T) {
			a := newAgent(t)
			w := serve(t, a, http.MethodPost, "/asap/stream", rpcCall("1", taskEnv("e", "echo", tt.input)))
			events := readSSE(t, w.Body)
			if len(events) != tt.want {
				t.Fatalf("%d events, want %d", len(events), tt.want)
			}
			last := events[len(events)-1].Payload
			if last["final"] != true || last["status"] != "completed" {
				t.Errorf("last event %v", last)
			}
		})
	}
}

func TestStreamRejectsBadRequests(t *testing.T) {
	tests := []struct {
		name   string
		body   string
		code   int
		reason string
		id     string
	}{
		{"malformed", `{`, -32700, "invalid_json", "null"},
		{"batch", "[" + rpcCall("1", taskEnv("e", "echo", `{}`)) + "]", -32600, "stream_needs_one_call", "1"},
		{"invalid call", `{"jsonrpc":"2.0","method":"other","id":"x"}`, -32600, "stream_needs_one_call", `"x"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := newAgent(t)
			w := serve(t, a, http.MethodPost, "/asap/stream", tt.body)
			if w.Code != http.StatusOK || w.Header().Get("Content-Type") != "application/json" {
				t.Errorf("status %d, type %q", w.Code, w.Header().Get("Content-Type"))
			}
			ans := decode(t, w.Body.Bytes())
			if ans.Error == nil || ans.Error.Code != tt.code || ans.Error.Data["reason"] != tt.reason {
				t.Errorf("answer %s, want code %d reason %s", w.Body, tt.code, tt.reason)
			}
			if string(ans.ID) != tt.id {
				t.Errorf("id = %s, want %s", ans.ID, tt.id)
			}
		})
	}
}

// A client that goes away ends the stream at the next wait.
func TestStreamStopsWhenClientLeaves(t *testing.T) {
	a := newAgent(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	done := make(chan *httptest.ResponseRecorder, 1)
	go func() {
		r := httptest.NewRequestWithContext(ctx, http.MethodPost, "/asap/stream", strings.NewReader(rpcCall("1", taskEnv("e", "echo", `{"chunks":5,"interval_ms":10000}`))))
		w := httptest.NewRecorder()
		_ = a.ServeHTTP(w, r, nil)
		done <- w
	}()
	select {
	case w := <-done:
		if events := readSSE(t, w.Body); len(events) != 1 {
			t.Errorf("%d events written, want the first only", len(events))
		}
	case <-time.After(30 * time.Second):
		t.Fatal("stream kept waiting after the client left")
	}
}

// plainWriter is a ResponseWriter that cannot flush and may fail writes.
type plainWriter struct {
	h      http.Header
	buf    bytes.Buffer
	fail   bool
	status int
}

func (p *plainWriter) Header() http.Header { return p.h }
func (p *plainWriter) WriteHeader(s int)   { p.status = s }
func (p *plainWriter) Write(b []byte) (int, error) {
	if p.fail {
		return 0, errors.New("connection gone")
	}
	return p.buf.Write(b)
}

func TestStreamStopsOnWriteOrFlushFailure(t *testing.T) {
	a := newAgent(t)
	body := rpcCall("1", taskEnv("e", "echo", `{"chunks":3,"interval_ms":0}`))

	// Cannot flush: a stream that would not stream is abandoned after the
	// first event.
	w := &plainWriter{h: http.Header{}}
	_ = a.ServeHTTP(w, httptest.NewRequest(http.MethodPost, "/asap/stream", strings.NewReader(body)), nil)
	if n := strings.Count(w.buf.String(), "data: "); n != 1 {
		t.Errorf("unflushable writer got %d events, want 1", n)
	}

	// Writes fail: nothing more is attempted.
	w = &plainWriter{h: http.Header{}, fail: true}
	_ = a.ServeHTTP(w, httptest.NewRequest(http.MethodPost, "/asap/stream", strings.NewReader(body)), nil)
	if w.status != http.StatusOK || w.buf.Len() != 0 {
		t.Errorf("failing writer: status %d, %d bytes", w.status, w.buf.Len())
	}
}

func TestWebSocket(t *testing.T) {
	a := newAgent(t)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _ = a.ServeHTTP(w, r, nil) }))
	defer srv.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(srv.URL, "http")+"/asap/ws", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.CloseNow()

	roundTrip := func(msg string) []byte {
		t.Helper()
		if err := conn.Write(ctx, websocket.MessageText, []byte(msg)); err != nil {
			t.Fatal(err)
		}
		typ, b, err := conn.Read(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if typ != websocket.MessageText {
			t.Errorf("answer frame type %v, want text", typ)
		}
		return b
	}

	ans := decode(t, roundTrip(rpcCall(`"w1"`, taskEnv("ws-env-1", "echo", `{"via":"ws"}`))))
	if string(ans.ID) != `"w1"` || ans.Result == nil || ans.Result.Envelope.CorrelationID != "ws-env-1" {
		t.Fatalf("answer %+v", ans)
	}
	if res := ans.Result.Envelope.Payload["result"].(map[string]any); !reflect.DeepEqual(res["echo"], map[string]any{"via": "ws"}) {
		t.Errorf("echo = %v", res)
	}

	// Frames that are not JSON, and binary frames, get no answer: the
	// next answer read is the next JSON request's.
	if err := conn.Write(ctx, websocket.MessageText, []byte("this is not json")); err != nil {
		t.Fatal(err)
	}
	if err := conn.Write(ctx, websocket.MessageBinary, []byte(rpcCall(`"binary"`, taskEnv("b", "echo", `{}`)))); err != nil {
		t.Fatal(err)
	}
	ans = decode(t, roundTrip(rpcCall(`"w2"`, taskEnv("ws-env-2", "fail", `{}`))))
	if string(ans.ID) != `"w2"` || ans.Result.Envelope.Payload["status"] != "failed" {
		t.Errorf("after ignored frames: answer id %s %+v", ans.ID, ans.Result)
	}

	// JSON that is not a request gets a JSON-RPC error frame; a batch an
	// array.
	if e := decode(t, roundTrip(`"just a string"`)); e.Error == nil || e.Error.Code != -32600 {
		t.Errorf("non-request JSON answered %+v", e)
	}
	var batch []json.RawMessage
	b := roundTrip("[" + rpcCall("1", taskEnv("x", "echo", `{}`)) + "," + rpcCall("2", envJSON("y", "task.cancel", `{"task_id":"t"}`)) + "]")
	if err := json.Unmarshal(b, &batch); err != nil || len(batch) != 2 {
		t.Fatalf("batch answer %s", b)
	}
	if c := decode(t, batch[1]); c.Result.Envelope.Payload["status"] != "cancelled" {
		t.Errorf("second batch answer %s", batch[1])
	}

	if err := conn.Close(websocket.StatusNormalClosure, "bye"); err != nil {
		t.Errorf("close: %v", err)
	}
}

func TestWebSocketWithoutUpgrade(t *testing.T) {
	a := newAgent(t)
	w := serve(t, a, http.MethodGet, "/asap/ws", "")
	if w.Code < 400 {
		t.Errorf("plain GET /asap/ws: status %d, want a 4xx refusal", w.Code)
	}
}

func TestManifest(t *testing.T) {
	a := newAgent(t)
	r := httptest.NewRequest(http.MethodGet, "/.well-known/asap/manifest.json", nil)
	r.Host = "agent.example:9000"
	w := httptest.NewRecorder()
	_ = a.ServeHTTP(w, r, nil)
	if w.Code != http.StatusOK || w.Header().Get("Content-Type") != "application/json" {
		t.Fatalf("status %d type %q", w.Code, w.Header().Get("Content-Type"))
	}
	var m struct {
		ID           string `json:"id"`
		Name         string `json:"name"`
		Version      string `json:"version"`
		Capabilities struct {
			ASAPVersion string `json:"asap_version"`
			Skills      []struct {
				ID          string `json:"id"`
				Description string `json:"description"`
			} `json:"skills"`
			Streaming bool     `json:"streaming"`
			MCPTools  []string `json:"mcp_tools"`
		} `json:"capabilities"`
		Endpoints map[string]any `json:"endpoints"`
		SLA       *struct {
			Availability    string `json:"availability"`
			MaxLatencyP95MS int    `json:"max_latency_p95_ms"`
			MaxErrorRate    string `json:"max_error_rate"`
			SupportHours    string `json:"support_hours"`
		} `json:"sla"`
		TTLSeconds        int      `json:"ttl_seconds"`
		SupportedVersions []string `json:"supported_versions"`
	}
	if err := json.Unmarshal(w.Body.Bytes(), &m); err != nil {
		t.Fatalf("manifest %s: %v", w.Body, err)
	}
	if m.ID != demoURN || m.Name == "" || m.Version != "1.0.0" {
		t.Errorf("id %q name %q version %q", m.ID, m.Name, m.Version)
	}
	var skills []string
	for _, s := range m.Capabilities.Skills {
		skills = append(skills, s.ID)
		if s.Description == "" {
			t.Errorf("skill %s has no description", s.ID)
		}
	}
	if !reflect.DeepEqual(skills, []string{"echo", "sleep", "fail"}) {
		t.Errorf("skills = %v", skills)
	}
	if !m.Capabilities.Streaming || m.Capabilities.MCPTools == nil {
		t.Errorf("capabilities %+v", m.Capabilities)
	}
	if m.SLA == nil || m.SLA.Availability != "99.5%" || m.SLA.MaxLatencyP95MS != 500 || m.SLA.MaxErrorRate != "1%" || m.SLA.SupportHours != "24/7" {
		t.Errorf("sla = %+v", m.SLA)
	}
	if m.TTLSeconds != 300 {
		t.Errorf("ttl_seconds = %d", m.TTLSeconds)
	}
	if !reflect.DeepEqual(m.SupportedVersions, []string{"2.1", "2.2"}) {
		t.Errorf("supported_versions = %v, want the versions it negotiates", m.SupportedVersions)
	}
	if m.Endpoints["asap"] != "http://agent.example:9000/asap" {
		t.Errorf("endpoints.asap = %v", m.Endpoints["asap"])
	}

	// Over TLS the endpoint is https; configured values show through.
	b := &Agent{ID: "urn:asap:agent:x", TTLSeconds: 60, SLA: &ManifestSLA{Availability: "99%"}}
	_ = b.Provision(caddy.Context{})
	r = httptest.NewRequest(http.MethodGet, "/.well-known/asap/manifest.json", nil)
	r.Host = "secure.example"
	r.TLS = &tls.ConnectionState{}
	w = httptest.NewRecorder()
	_ = b.ServeHTTP(w, r, nil)
	var raw map[string]any
	if err := json.Unmarshal(w.Body.Bytes(), &raw); err != nil {
		t.Fatal(err)
	}
	if raw["endpoints"].(map[string]any)["asap"] != "https://secure.example/asap" {
		t.Errorf("tls endpoint = %v", raw["endpoints"])
	}
	if raw["id"] != "urn:asap:agent:x" || raw["ttl_seconds"] != float64(60) {
		t.Errorf("id %v ttl %v", raw["id"], raw["ttl_seconds"])
	}
	if sla := raw["sla"].(map[string]any); sla["availability"] != "99%" || len(sla) != 1 {
		t.Errorf("sla = %v, want only the configured availability", sla)
	}
}

func TestHealthToggle(t *testing.T) {
	a := newAgent(t)
	health := func(wantCode int, wantStatus string) {
		t.Helper()
		w := serve(t, a, http.MethodGet, "/.well-known/asap/health", "")
		if w.Code != wantCode {
			t.Errorf("health status %d, want %d", w.Code, wantCode)
		}
		var h map[string]any
		if err := json.Unmarshal(w.Body.Bytes(), &h); err != nil {
			t.Fatalf("health body %s: %v", w.Body, err)
		}
		if h["status"] != wantStatus {
			t.Errorf("health status field %v, want %s", h["status"], wantStatus)
		}
		if h["agent_id"] != demoURN {
			t.Errorf("agent_id %v", h["agent_id"])
		}
		if u, ok := h["uptime_seconds"].(float64); !ok || u < 0 {
			t.Errorf("uptime_seconds %v", h["uptime_seconds"])
		}
	}
	set := func(body string, wantCode int) {
		t.Helper()
		w := serve(t, a, http.MethodPost, "/demo/health", body)
		if w.Code != wantCode {
			t.Errorf("POST /demo/health %s: status %d, want %d", body, w.Code, wantCode)
		}
	}
	health(http.StatusOK, "healthy")
	set(`{"healthy":false}`, http.StatusNoContent)
	health(http.StatusServiceUnavailable, "unhealthy")
	set(`not json`, http.StatusBadRequest) // leaves the state alone
	health(http.StatusServiceUnavailable, "unhealthy")
	set(`{"healthy":true}`, http.StatusNoContent)
	health(http.StatusOK, "healthy")

	// Only POST toggles.
	if w := serve(t, a, http.MethodGet, "/demo/health", ""); w.Code != http.StatusNotFound {
		t.Errorf("GET /demo/health: %d", w.Code)
	}
}

func TestUnknownPathsAre404(t *testing.T) {
	a := newAgent(t)
	for _, tt := range []struct{ method, path string }{
		{http.MethodGet, "/"},
		{http.MethodGet, "/nope"},
		{http.MethodGet, "/asap"},
		{http.MethodGet, "/asap/stream"},
		{http.MethodPost, "/asap/"},
	} {
		w := serve(t, a, tt.method, tt.path, "")
		if w.Code != http.StatusNotFound {
			t.Errorf("%s %s: status %d", tt.method, tt.path, w.Code)
		}
		if strings.TrimSpace(w.Body.String()) != `{"detail":"Not Found"}` {
			t.Errorf("%s %s: body %s", tt.method, tt.path, w.Body)
		}
	}
}

func TestUnmarshalCaddyfile(t *testing.T) {
	tests := []struct {
		name  string
		input string
		want  *Agent
	}{
		{"bare", "asap_demo_agent", &Agent{}},
		{"agent and ttl only", "asap_demo_agent {\n\tagent urn:asap:agent:x\n\tttl_seconds 60\n}", &Agent{ID: "urn:asap:agent:x", TTLSeconds: 60}},
		{"all", `asap_demo_agent {
			agent           urn:asap:agent:research
			ttl_seconds     120
			availability    99.9%
			max_latency_p95 750ms
			max_error_rate  2%
		}`, &Agent{ID: "urn:asap:agent:research", TTLSeconds: 120, SLA: &ManifestSLA{Availability: "99.9%", MaxLatencyP95MS: 750, MaxErrorRate: "2%", SupportHours: "24/7"}}},
		{"one sla option keeps the other defaults", "asap_demo_agent {\n\tavailability 90%\n}",
			&Agent{SLA: &ManifestSLA{Availability: "90%", MaxLatencyP95MS: 500, MaxErrorRate: "1%", SupportHours: "24/7"}}},
		{"latency in seconds", "asap_demo_agent {\n\tmax_latency_p95 2s\n}",
			&Agent{SLA: &ManifestSLA{Availability: "99.5%", MaxLatencyP95MS: 2000, MaxErrorRate: "1%", SupportHours: "24/7"}}},
		{"latency sub-millisecond", "asap_demo_agent {\n\tmax_latency_p95 1500us\n}",
			&Agent{SLA: &ManifestSLA{Availability: "99.5%", MaxLatencyP95MS: 1, MaxErrorRate: "1%", SupportHours: "24/7"}}},
		{"error rate", "asap_demo_agent {\n\tmax_error_rate 5%\n}",
			&Agent{SLA: &ManifestSLA{Availability: "99.5%", MaxLatencyP95MS: 500, MaxErrorRate: "5%", SupportHours: "24/7"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var a Agent
			if err := a.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tt.input)); err != nil {
				t.Fatalf("parse: %v", err)
			}
			if a.ID != tt.want.ID || a.TTLSeconds != tt.want.TTLSeconds || !reflect.DeepEqual(a.SLA, tt.want.SLA) {
				t.Errorf("parsed id %q ttl %d sla %+v\nwant id %q ttl %d sla %+v", a.ID, a.TTLSeconds, a.SLA, tt.want.ID, tt.want.TTLSeconds, tt.want.SLA)
			}
		})
	}
}

func TestUnmarshalCaddyfileErrors(t *testing.T) {
	tests := []struct {
		name, input, want string
	}{
		{"unknown option", "asap_demo_agent {\n\tskills echo\n}", `unknown asap_demo_agent option "skills"`},
		{"non-numeric ttl", "asap_demo_agent {\n\tttl_seconds soon\n}", `ttl_seconds: "soon" is not a whole number`},
		{"fractional ttl", "asap_demo_agent {\n\tttl_seconds 1.5\n}", `ttl_seconds: "1.5" is not a whole number`},
		{"missing agent", "asap_demo_agent {\n\tagent\n}", "wrong argument count"},
		{"missing ttl", "asap_demo_agent {\n\tttl_seconds\n}", "wrong argument count"},
		{"missing availability", "asap_demo_agent {\n\tavailability\n}", "wrong argument count"},
		{"bad latency", "asap_demo_agent {\n\tmax_latency_p95 quick\n}", "max_latency_p95:"},
		{"extra value", "asap_demo_agent {\n\tagent urn:asap:agent:a urn:asap:agent:b\n}", `urn:asap:agent:b`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var a Agent
			err := a.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tt.input))
			if err == nil {
				t.Fatalf("parsed without error: id %q ttl %d sla %+v", a.ID, a.TTLSeconds, a.SLA)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q lacks %q", err, tt.want)
			}
			if !strings.Contains(err.Error(), "Testfile:2") {
				t.Errorf("error %q does not give line 2", err)
			}
		})
	}
}

// The directive works through the Caddyfile adapter, which registers it
// after reverse_proxy.
func TestAdaptCaddyfileDirective(t *testing.T) {
	input := `{
	admin off
}
:9000 {
	asap_demo_agent {
		agent urn:asap:agent:adapted
		ttl_seconds 42
	}
	reverse_proxy /proxied/* 127.0.0.1:9
}
`
	out, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(input), nil)
	if err != nil {
		t.Fatalf("adapt: %v", err)
	}
	js := string(out)
	for _, want := range []string{`"handler":"asap_demo_agent"`, `"agent":"urn:asap:agent:adapted"`, `"ttl_seconds":42`} {
		if !strings.Contains(js, want) {
			t.Errorf("adapted JSON lacks %s:\n%s", want, js)
		}
	}
	if strings.Index(js, `"handler":"reverse_proxy"`) > strings.Index(js, `"handler":"asap_demo_agent"`) {
		t.Errorf("asap_demo_agent is not ordered after reverse_proxy:\n%s", js)
	}

	_, _, err = caddyconfig.GetAdapter("caddyfile").Adapt([]byte(":9000 {\n\tasap_demo_agent {\n\t\tagnet urn:asap:agent:x\n\t}\n}\n"), nil)
	if err == nil || !strings.Contains(err.Error(), `unknown asap_demo_agent option "agnet"`) {
		t.Errorf("misspelt option: %v", err)
	}
}
