package protocol

import (
	"encoding/json"
	"strings"
	"testing"
)

const goodEnv = `{"id":"01J0000000000000000000000A","asap_version":"0.1","timestamp":"2026-11-26T01:00:00Z","sender":"urn:asap:agent:client","recipient":"urn:asap:agent:research","payload_type":"task.request","payload":{"conversation_id":"c1","skill_id":"echo","input":{"text":"hi"}}}`

func call(env string) string {
	return `{"jsonrpc":"2.0","method":"asap.send","params":{"envelope":` + env + `},"id":"req-1"}`
}

func withEnv(field, value string) string {
	var m map[string]json.RawMessage
	if err := json.Unmarshal([]byte(goodEnv), &m); err != nil {
		panic(err)
	}
	if value == "" {
		delete(m, field)
	} else {
		m[field] = json.RawMessage(value)
	}
	b, _ := json.Marshal(m)
	return string(b)
}

func TestParseGoodRequest(t *testing.T) {
	req, err := ParseRequest([]byte(call(goodEnv)), Limits{})
	if err != nil {
		t.Fatal(err)
	}
	if req.Batch || len(req.Calls) != 1 || req.Calls[0].Err != nil {
		t.Fatalf("req = %+v", req)
	}
	c := req.Calls[0]
	if string(c.ID) != `"req-1"` || c.Envelope.Sender != "urn:asap:agent:client" || c.Envelope.Type() != TypeTaskRequest {
		t.Fatalf("call = %+v", c)
	}
	if !req.Forwardable() {
		t.Fatal("good request not forwardable")
	}
	// jsonrpc may be left out, as the reference allows.
	body := strings.Replace(call(goodEnv), `"jsonrpc":"2.0",`, "", 1)
	req, err = ParseRequest([]byte(body), Limits{})
	if err != nil || req.Calls[0].Err != nil {
		t.Fatalf("missing jsonrpc: %v %v", err, req.Calls[0].Err)
	}
	// Numeric ids are fine.
	body = strings.Replace(call(goodEnv), `"id":"req-1"`, `"id":7`, 1)
	req, _ = ParseRequest([]byte(body), Limits{})
	if req.Calls[0].Err != nil || string(req.Calls[0].ID) != "7" {
		t.Fatalf("numeric id: %+v", req.Calls[0])
	}
}

func TestWholeBodyErrors(t *testing.T) {
	deep := strings.Repeat("[", 10000) + strings.Repeat("]", 10000)
	deepInString := `{"a":"` + strings.Repeat("[", 500) + `"}`
	cases := []struct {
		name, body string
		code       int
		reason     string
	}{
		{"malformed", `{"jsonrpc":`, CodeParseError, "invalid_json"},
		{"trailing garbage", call(goodEnv) + "}", CodeParseError, "invalid_json"},
		{"empty", "  ", CodeParseError, "empty_body"},
		{"invalid utf8", "{\"a\":\"\xff\xfe\"}", CodeParseError, "invalid_utf8"},
		{"nesting 10000", deep, CodeParseError, "too_deep"},
		{"nesting inside envelope", call(withEnv("payload", `{"x":`+strings.Repeat(`{"y":`, 200)+`1`+strings.Repeat("}", 200)+`}`)), CodeParseError, "too_deep"},
		{"scalar", `42`, CodeInvalidRequest, "not_an_object"},
		{"string", `"asap"`, CodeInvalidRequest, "not_an_object"},
		{"empty batch", `[]`, CodeInvalidRequest, "empty_batch"},
		{"batch too big", "[" + strings.TrimSuffix(strings.Repeat(call(goodEnv)+",", 51), ",") + "]", CodeInvalidRequest, "batch_too_large"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseRequest([]byte(tc.body), Limits{})
			if err == nil {
				t.Fatal("accepted")
			}
			if err.Code != tc.code || err.Reason != tc.reason {
				t.Fatalf("got %d %s (%s), want %d %s", err.Code, err.Reason, err.Detail, tc.code, tc.reason)
			}
		})
	}
	// Brackets inside strings do not count as nesting.
	if _, err := ParseRequest([]byte(deepInString), Limits{}); err != nil && err.Reason == "too_deep" {
		t.Fatal("brackets in a string counted as nesting")
	}
}

func TestCallErrors(t *testing.T) {
	cases := []struct {
		name, body string
		code       int
		reason     string
		id         string
	}{
		{"wrong jsonrpc", strings.Replace(call(goodEnv), `"2.0"`, `"1.0"`, 1), CodeInvalidRequest, "wrong_jsonrpc_version", `"req-1"`},
		{"numeric jsonrpc", strings.Replace(call(goodEnv), `"2.0"`, `2`, 1), CodeInvalidRequest, "wrong_jsonrpc_version", `"req-1"`},
		{"missing id", strings.Replace(call(goodEnv), `,"id":"req-1"`, ``, 1), CodeInvalidRequest, "missing_id", "null"},
		{"null id", strings.Replace(call(goodEnv), `"id":"req-1"`, `"id":null`, 1), CodeInvalidRequest, "missing_id", "null"},
		{"object id", strings.Replace(call(goodEnv), `"id":"req-1"`, `"id":{}`, 1), CodeInvalidRequest, "invalid_id", "null"},
		{"no method", strings.Replace(call(goodEnv), `"method":"asap.send",`, ``, 1), CodeInvalidRequest, "missing_method", `"req-1"`},
		{"unknown method", strings.Replace(call(goodEnv), `asap.send`, `asap.steal`, 1), CodeMethodNotFound, "unknown_method", `"req-1"`},
		{"params array", `{"jsonrpc":"2.0","method":"asap.send","params":[1],"id":1}`, CodeInvalidParams, "params_not_object", "1"},
		{"missing envelope", `{"jsonrpc":"2.0","method":"asap.send","params":{},"id":1}`, CodeInvalidParams, "missing_envelope", "1"},
		{"envelope string", `{"jsonrpc":"2.0","method":"asap.send","params":{"envelope":"x"},"id":1}`, CodeInvalidParams, "envelope_not_object", "1"},
		{"sender wrong type", call(withEnv("sender", `5`)), CodeInvalidParams, "invalid_envelope", `"req-1"`},
		{"missing sender", call(withEnv("sender", "")), CodeInvalidParams, "missing_sender", `"req-1"`},
		{"missing recipient", call(withEnv("recipient", "")), CodeInvalidParams, "missing_recipient", `"req-1"`},
		{"missing version", call(withEnv("asap_version", "")), CodeInvalidParams, "missing_asap_version", `"req-1"`},
		{"missing payload type", call(withEnv("payload_type", "")), CodeInvalidParams, "missing_payload_type", `"req-1"`},
		{"missing payload", call(withEnv("payload", "")), CodeInvalidParams, "missing_payload", `"req-1"`},
		{"payload array", call(withEnv("payload", `[1]`)), CodeInvalidParams, "payload_not_object", `"req-1"`},
		{"upper-case urn", call(withEnv("sender", `"urn:asap:agent:Client"`)), CodeInvalidParams, "invalid_sender_urn", `"req-1"`},
		{"not a urn", call(withEnv("recipient", `"https://evil"`)), CodeInvalidParams, "invalid_recipient_urn", `"req-1"`},
		{"three segments", call(withEnv("sender", `"urn:asap:agent:a:b:c"`)), CodeInvalidParams, "invalid_sender_urn", `"req-1"`},
		{"urn too long", call(withEnv("sender", `"urn:asap:agent:`+strings.Repeat("a", 250)+`"`)), CodeInvalidParams, "invalid_sender_urn", `"req-1"`},
		{"urn with newline", call(withEnv("sender", `"urn:asap:agent:a\n"`)), CodeInvalidParams, "invalid_sender_urn", `"req-1"`},
		{"bad timestamp", call(withEnv("timestamp", `"yesterday"`)), CodeInvalidParams, "invalid_timestamp", `"req-1"`},
		{"long id", call(withEnv("id", `"`+strings.Repeat("x", 300)+`"`)), CodeInvalidParams, "invalid_envelope_id", `"req-1"`},
		{"extensions array", call(withEnv("extensions", `[1]`)), CodeInvalidParams, "invalid_extensions", `"req-1"`},
		{"response without correlation", call(withEnv("payload_type", `"task.response"`)), CodeInvalidParams, "missing_correlation_id", `"req-1"`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			req, err := ParseRequest([]byte(tc.body), Limits{})
			if err != nil {
				t.Fatalf("whole-body error %v", err)
			}
			c := req.Calls[0]
			if c.Err == nil {
				t.Fatal("accepted")
			}
			if c.Err.Code != tc.code || c.Err.Reason != tc.reason {
				t.Fatalf("got %d %s (%s), want %d %s", c.Err.Code, c.Err.Reason, c.Err.Detail, tc.code, tc.reason)
			}
			var w struct {
				JSONRPC string          `json:"jsonrpc"`
				ID      json.RawMessage `json:"id"`
				Error   struct {
					Code    int
					Message string
					Data    map[string]any
				}
			}
			if err := json.Unmarshal(c.Err.JSON(), &w); err != nil {
				t.Fatal(err)
			}
			if w.JSONRPC != "2.0" || string(w.ID) != tc.id || w.Error.Code != tc.code || w.Error.Message == "" ||
				w.Error.Data["reason"] != tc.reason || w.Error.Data["error"] == "" {
				t.Fatalf("wire error = %s", c.Err.JSON())
			}
			if req.Forwardable() {
				t.Fatal("rejected request is forwardable")
			}
		})
	}
}

func TestBatchMixesGoodAndBad(t *testing.T) {
	body := "[" + call(goodEnv) + `,7,` + strings.Replace(call(goodEnv), `"req-1"`, `"req-2"`, 1) + "]"
	req, err := ParseRequest([]byte(body), Limits{})
	if err != nil {
		t.Fatal(err)
	}
	if !req.Batch || len(req.Calls) != 3 {
		t.Fatalf("req = %+v", req)
	}
	if req.Calls[0].Err != nil || req.Calls[2].Err != nil || req.Calls[1].Err == nil {
		t.Fatalf("errs = %v %v %v", req.Calls[0].Err, req.Calls[1].Err, req.Calls[2].Err)
	}
	if string(req.Calls[2].ID) != `"req-2"` || string(req.Calls[0].Raw) != call(goodEnv) {
		t.Fatalf("call 2 = %s / raw 0 = %s", req.Calls[2].ID, req.Calls[0].Raw)
	}
	if !req.Forwardable() {
		t.Fatal("batch with good calls not forwardable")
	}
	if _, err := ParseRequest([]byte("["+call(goodEnv)+","+call(goodEnv)+"]"), Limits{MaxBatch: 1}); err == nil || err.Reason != "batch_too_large" {
		t.Fatalf("custom batch limit: %v", err)
	}
}

func TestPayloadTypeNormalisation(t *testing.T) {
	for _, s := range []string{"task.request", "TaskRequest", "taskrequest", "task_request", "TASK-REQUEST"} {
		if NormalizeType(s) != TypeTaskRequest {
			t.Fatalf("%q → %q", s, NormalizeType(s))
		}
	}
	if TypeTaskRequest.String() != "task.request" || TypeMCPToolCall.String() != "mcp.tool_call" {
		t.Fatal("dotted names")
	}
	u := NormalizeType("weird.thing")
	if u.Known() || u.String() != "unknown" {
		t.Fatalf("unknown type: %v %q", u.Known(), u.String())
	}
	for _, k := range []string{"task.request", "task.response", "task.update", "task.cancel", "task.stream", "message.send", "state.query", "state.restore", "artifact.notify", "mcp.tool_call", "mcp.tool_result", "mcp.resource_fetch", "mcp.resource_data", "message.ack"} {
		if !NormalizeType(k).Known() {
			t.Fatalf("%s not known", k)
		}
	}
	// Unknown payload types are not an error: they are forwarded.
	req, _ := ParseRequest([]byte(call(withEnv("payload_type", `"custom.thing"`))), Limits{})
	if req.Calls[0].Err != nil {
		t.Fatalf("unknown payload type rejected: %v", req.Calls[0].Err)
	}
}

func TestErrorAnswerShape(t *testing.T) {
	e := NewError(CodeTokenRevoked, "revoked", "token del_x is revoked")
	e.Extra = map[string]any{"jti": "del_x"}
	var w map[string]any
	if err := json.Unmarshal(e.WithID(json.RawMessage(`"r"`)).JSON(), &w); err != nil {
		t.Fatal(err)
	}
	errObj := w["error"].(map[string]any)
	data := errObj["data"].(map[string]any)
	if w["id"] != "r" || errObj["code"].(float64) != CodeTokenRevoked || errObj["message"] != "Delegation token revoked" ||
		data["jti"] != "del_x" || data["reason"] != "revoked" {
		t.Fatalf("answer = %v", w)
	}
	if e.ID != nil {
		t.Fatal("WithID changed the original")
	}
	if !strings.Contains(e.Error(), "revoked") {
		t.Fatal(e.Error())
	}
	// Unknown codes still get a message; unmarshalable extras are dropped.
	odd := NewError(-32099, "x", "y")
	odd.Extra = map[string]any{"bad": make(chan int)}
	if !strings.Contains(string(odd.JSON()), `"Server error"`) || !strings.Contains(string(odd.JSON()), `"id":null`) {
		t.Fatalf("odd = %s", odd.JSON())
	}
}

func TestParseResponse(t *testing.T) {
	ok := `{"jsonrpc":"2.0","result":{"envelope":{"payload_type":"task.response","payload":{"task_id":"task_1","status":"completed","metrics":{"tokens_in":3}}}},"id":"req-1"}`
	rs, err := ParseResponse([]byte(ok))
	if err != nil || len(rs) != 1 {
		t.Fatal(rs, err)
	}
	r := rs[0]
	if r.TaskID != "task_1" || r.Status != "completed" || r.PayloadType != TypeTaskResponse || string(r.Metrics) != `{"tokens_in":3}` || r.Failed() || string(r.ID) != `"req-1"` {
		t.Fatalf("reply = %+v", r)
	}
	failed := strings.Replace(ok, "completed", "failed", 1)
	if rs, _ := ParseResponse([]byte(failed)); !rs[0].Failed() {
		t.Fatal("status failed not a failure")
	}
	rpcErr := `{"jsonrpc":"2.0","error":{"code":-32012,"message":"no handler"},"id":"req-1"}`
	if rs, _ := ParseResponse([]byte(rpcErr)); rs[0].ErrorCode != -32012 || !rs[0].Failed() {
		t.Fatalf("rpc error = %+v", rs[0])
	}
	weirdErr := `{"error":{"code":"boom"},"id":1}`
	if rs, _ := ParseResponse([]byte(weirdErr)); rs[0].ErrorCode != CodeRemoteError {
		t.Fatalf("weird error = %+v", rs[0])
	}
	batch := "[" + ok + "," + rpcErr + `,{"id":3}]`
	rs, err = ParseResponse([]byte(batch))
	if err != nil || len(rs) != 2 {
		t.Fatalf("batch = %+v %v", rs, err)
	}
	// Garbage and wrong types are tolerated, never a panic.
	for _, g := range []string{``, `garbage`, `"str"`, `{"id":1}`, `[1,2`, `{"result":{"envelope":{"payload":{"task_id":5,"status":[],"metrics":"x"}}}}`} {
		rs, err := ParseResponse([]byte(g))
		if err == nil && len(rs) == 1 && (rs[0].TaskID != "" || rs[0].Status != "" || rs[0].Metrics != nil) {
			t.Fatalf("%q → %+v", g, rs)
		}
	}
	if _, err := ParseResponse([]byte("not json")); err != ErrNotJSONRPC {
		t.Fatalf("garbage err = %v", err)
	}
}

func TestParseSSE(t *testing.T) {
	body := "data: {\"payload_type\":\"TaskStream\",\"payload\":{\"chunk\":\"a\"}}\n\n" +
		": comment\n\n" +
		"data: not json\n\n" +
		"data: {\"payload_type\":\"TaskStream\",\"payload\":{\"chunk\":\"b\",\"final\":true,\"status\":\"completed\"}}\r\n\r\n"
	rs := ParseSSE([]byte(body))
	if len(rs) != 2 {
		t.Fatalf("events = %+v", rs)
	}
	if rs[0].Final || !rs[1].Final || rs[1].Status != "completed" || rs[1].PayloadType != TypeTaskStream {
		t.Fatalf("events = %+v", rs)
	}
	// Multi-line data is joined with newlines.
	multi := "data: {\"payload_type\":\ndata: \"task.response\",\"payload\":{\"task_id\":\"t\"}}\n\n"
	if rs := ParseSSE([]byte(multi)); len(rs) != 1 || rs[0].TaskID != "t" {
		t.Fatalf("multi-line = %+v", rs)
	}
}

func TestTruncateKeepsUTF8(t *testing.T) {
	s := strings.Repeat("é", 40)
	got := truncate(s, 5)
	if !strings.HasSuffix(got, "…") || strings.ContainsRune(got, '\uFFFD') || len(got) > 5+len("…") {
		t.Fatalf("truncate = %q", got)
	}
	if truncate("abc", 5) != "abc" {
		t.Fatal("short string changed")
	}
}

func FuzzParseResponse(f *testing.F) {
	f.Add([]byte(`{"jsonrpc":"2.0","result":{"envelope":{"payload_type":"task.response","payload":{"task_id":"t"}}},"id":1}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		_, _ = ParseResponse(b)
		_ = ParseSSE(b)
	})
}
