package caddymodule

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/asap-sidecar/asap-sidecar/caddymodule/delegation"
)

// The checks of the reference's compliance harness v2 (asap-protocol,
// src/asap/testing/compliance.py), restated in Go from what each one sends
// and what it accepts. Each is a subtest named after the reference's
// check, so a failure reads like the harness's report. The harness scores
// 11 checks when GET /audit answers 404 and adds audit_response_format
// when it answers 200.

// complianceClient talks to one base URL, with headers sent on every
// request (the harness's default_headers).
type complianceClient struct {
	base    string
	headers http.Header
}

type complianceAnswer struct {
	status int
	header http.Header
	body   []byte
}

func (c *complianceClient) do(method, path string, body []byte, header http.Header) (complianceAnswer, error) {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequest(method, c.base+path, rd)
	if err != nil {
		return complianceAnswer{}, err
	}
	for k, vs := range c.headers {
		req.Header[k] = vs
	}
	for k, vs := range header {
		req.Header[k] = vs
	}
	resp, err := client.Do(req)
	if err != nil {
		return complianceAnswer{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return complianceAnswer{}, err
	}
	return complianceAnswer{status: resp.StatusCode, header: resp.Header, body: b}, nil
}

// postJSON sends v as JSON, as the harness's json= argument does.
func (c *complianceClient) postJSON(path string, v any, header http.Header) (complianceAnswer, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return complianceAnswer{}, err
	}
	h := http.Header{"Content-Type": {"application/json"}}
	for k, vs := range header {
		h[k] = vs
	}
	return c.do(http.MethodPost, path, b, h)
}

// object decodes an answer that must be a JSON object.
func (a complianceAnswer) object() (map[string]any, error) {
	var m map[string]any
	if err := json.Unmarshal(a.body, &m); err != nil {
		return nil, fmt.Errorf("answer (HTTP %d) is not a JSON object: %v: %.200s", a.status, err, a.body)
	}
	return m, nil
}

// errorCode is error.code of a JSON-RPC answer, or an error saying why
// there is none.
func (a complianceAnswer) errorCode() (float64, error) {
	m, err := a.object()
	if err != nil {
		return 0, err
	}
	e, _ := m["error"].(map[string]any)
	code, ok := e["code"].(float64)
	if !ok {
		return 0, fmt.Errorf("answer has no error.code: %.200s", a.body)
	}
	return code, nil
}

// The harness's dummy envelope and call.
func complianceCall(id string) map[string]any {
	return map[string]any{
		"jsonrpc": "2.0",
		"method":  "asap.send",
		"params": map[string]any{"envelope": map[string]any{
			"sender":       "urn:asap:agent:compliance-test",
			"recipient":    "urn:asap:agent:server",
			"payload_type": "task.request",
			"payload":      map[string]any{},
		}},
		"id": id,
	}
}

type complianceCheck struct {
	name string
	run  func(c *complianceClient) error
}

func statusIn(a complianceAnswer, want ...int) error {
	for _, s := range want {
		if a.status == s {
			return nil
		}
	}
	return fmt.Errorf("HTTP %d, want one of %v: %.200s", a.status, want, a.body)
}

func wantCode(a complianceAnswer, want float64) error {
	code, err := a.errorCode()
	if err != nil {
		return err
	}
	if code != want {
		return fmt.Errorf("error code %v, want %v: %.200s", code, want, a.body)
	}
	return nil
}

// hasErrorMember: the answer is an object with an error member.
func hasErrorMember(a complianceAnswer) error {
	m, err := a.object()
	if err != nil {
		return err
	}
	if _, ok := m["error"]; !ok {
		return fmt.Errorf("answer has no error member: %.200s", a.body)
	}
	return nil
}

var complianceChecks = []complianceCheck{
	// identity: the endpoints exist (answer 200, 401 or 403).
	{"identity_register_endpoint", func(c *complianceClient) error {
		a, err := c.do(http.MethodPost, "/asap/agent/register", nil, nil)
		if err != nil {
			return err
		}
		return statusIn(a, 200, 401, 403)
	}},
	{"identity_capability_list", func(c *complianceClient) error {
		a, err := c.do(http.MethodGet, "/asap/capability/list", nil, nil)
		if err != nil {
			return err
		}
		return statusIn(a, 200, 401, 403)
	}},
	// streaming: POST /asap/stream answers an event stream or HTTP 200.
	{"streaming_sse_endpoint", func(c *complianceClient) error {
		a, err := c.postJSON("/asap/stream", complianceCall("compliance-1"), nil)
		if err != nil {
			return err
		}
		if strings.Contains(a.header.Get("Content-Type"), "text/event-stream") || a.status == 200 {
			return nil
		}
		return fmt.Errorf("HTTP %d, content type %q", a.status, a.header.Get("Content-Type"))
	}},
	// errors: an unknown method is -32601, a body that is not JSON -32700,
	// a bad envelope an answer with an error member.
	{"error_method_not_found", func(c *complianceClient) error {
		a, err := c.postJSON("/asap", map[string]any{"jsonrpc": "2.0", "method": "nonexistent.method", "params": map[string]any{}, "id": "e1"}, nil)
		if err != nil {
			return err
		}
		return wantCode(a, -32601)
	}},
	{"error_parse_error", func(c *complianceClient) error {
		a, err := c.do(http.MethodPost, "/asap", []byte("not json"), http.Header{"Content-Type": {"application/json"}})
		if err != nil {
			return err
		}
		return wantCode(a, -32700)
	}},
	{"error_data_structured", func(c *complianceClient) error {
		a, err := c.postJSON("/asap", map[string]any{
			"jsonrpc": "2.0", "method": "asap.send", "id": "e3",
			"params": map[string]any{"envelope": map[string]any{"sender": "x", "recipient": "y", "payload_type": "bad"}},
		}, nil)
		if err != nil {
			return err
		}
		return hasErrorMember(a)
	}},
	// versioning: an answer to ASAP-Version 2.2 carries ASAP-Version; 99.0
	// is refused with -32000.
	{"versioning_header_present", func(c *complianceClient) error {
		a, err := c.postJSON("/asap", complianceCall("compliance-1"), http.Header{"Asap-Version": {"2.2"}})
		if err != nil {
			return err
		}
		if a.header.Get("ASAP-Version") == "" {
			return fmt.Errorf("the answer (HTTP %d) has no ASAP-Version header", a.status)
		}
		return nil
	}},
	{"versioning_incompatible_rejected", func(c *complianceClient) error {
		a, err := c.postJSON("/asap", map[string]any{"jsonrpc": "2.0", "method": "asap.send", "params": map[string]any{"envelope": map[string]any{}}, "id": "v2"},
			http.Header{"Asap-Version": {"99.0"}})
		if err != nil {
			return err
		}
		return wantCode(a, -32000)
	}},
	// batch: two calls get an array of two answers; an empty batch an
	// error object.
	{"batch_array_response", func(c *complianceClient) error {
		a, err := c.postJSON("/asap", []any{complianceCall("b1"), complianceCall("b2")}, nil)
		if err != nil {
			return err
		}
		var arr []json.RawMessage
		if err := json.Unmarshal(a.body, &arr); err != nil || len(arr) != 2 {
			return fmt.Errorf("want an array of 2 answers, got HTTP %d: %.300s", a.status, a.body)
		}
		return nil
	}},
	{"batch_empty_rejected", func(c *complianceClient) error {
		a, err := c.postJSON("/asap", []any{}, nil)
		if err != nil {
			return err
		}
		return hasErrorMember(a)
	}},
	// audit: GET /audit answers 200 or 404 (with 200, the harness also
	// checks for an entries member: audit_response_format).
	{"audit_endpoint_exists", func(c *complianceClient) error {
		a, err := c.do(http.MethodGet, "/audit", nil, nil)
		if err != nil {
			return err
		}
		if err := statusIn(a, 200, 404); err != nil {
			return err
		}
		if a.status == 200 {
			m, err := a.object()
			if err != nil {
				return fmt.Errorf("audit_response_format: %v", err)
			}
			if _, ok := m["entries"]; !ok {
				return fmt.Errorf("audit_response_format: no entries member: %.200s", a.body)
			}
		}
		return nil
	}},
}

// runCompliance runs every check against c as subtests and logs the
// harness's summary line.
func runCompliance(t *testing.T, c *complianceClient) {
	t.Helper()
	// The harness's preflight: the host must be reachable.
	if _, err := c.do(http.MethodGet, "/", nil, nil); err != nil {
		t.Fatalf("preflight GET /: %v", err)
	}
	passed := 0
	for _, ch := range complianceChecks {
		if t.Run(ch.name, func(t *testing.T) {
			if err := ch.run(c); err != nil {
				t.Error(err)
			}
		}) {
			passed++
		}
	}
	t.Logf("%d/%d checks passed", passed, len(complianceChecks))
}

func TestComplianceHarness(t *testing.T) {
	if len(complianceChecks) != 11 {
		t.Fatalf("%d checks, the harness has 11", len(complianceChecks))
	}
	// Every feature on: delegation required (the client presents a
	// token), metering, audit and SLA tracking, strict durability.
	s := startSidecar(t, "", `agent urn:asap:agent:demo
delegation require
durability strict
metering on
audit on
sla {
	min_samples 1000
}`)
	token := mintViaAdmin(t, s, `{"delegate":"urn:asap:agent:compliance-test","scopes":["*"],"max_tasks":100}`)

	t.Run("demo_agent", func(t *testing.T) {
		runCompliance(t, &complianceClient{base: s.agentURL})
	})
	t.Run("through_sidecar", func(t *testing.T) {
		runCompliance(t, &complianceClient{base: s.url, headers: http.Header{delegation.Header: {token}}})
	})
}
