package caddymodule

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/asap-sidecar/asap-sidecar/caddymodule/protocol"
	"github.com/asap-sidecar/asap-sidecar/internal/freeport"
	"github.com/asap-sidecar/asap-sidecar/storage"
)

func upstreamAddr(srv *httptest.Server) string {
	return strings.TrimPrefix(srv.URL, "http://")
}

const agentAnswer = `{"jsonrpc":"2.0","result":{"envelope":{"id":"01JANSWER00000000000000001","asap_version":"0.1","timestamp":"2026-11-26T01:00:01Z","sender":"urn:asap:agent:demo","recipient":"urn:asap:agent:client","payload_type":"task.response","payload":{"task_id":"task_1","status":"completed","result":{"x":"ünïcode"},"final_state":null,"metrics":{"tokens_in":11,"tokens_out":22,"api_calls":3}},"correlation_id":"01JREQ0000000000000000001","trace_id":null,"requires_ack":false,"extensions":null}},"id":"r1"}`

func TestTaskPassesThroughByteIdentical(t *testing.T) {
	up := &countingUpstream{answer: fixedAnswer(200, "application/json", agentAnswer)}
	srv := httptest.NewServer(up)
	defer srv.Close()
	s := startSidecar(t, upstreamAddr(srv), "agent urn:asap:agent:demo")

	// Odd but valid spacing must reach the agent exactly as sent.
	body := "  " + strings.Replace(rpc("r1", envelope("01JREQ0000000000000000001", "echo", `{"text":"hi"}`)), `"method":`, `"method" :  `, 1) + "\n"
	resp, got := post(t, s.url+"/asap", body)
	if resp.StatusCode != 200 {
		t.Fatalf("status %d: %s", resp.StatusCode, got)
	}
	if string(got) != agentAnswer {
		t.Fatalf("client got a different answer:\n got %s\nwant %s", got, agentAnswer)
	}
	if string(up.last()) != body {
		t.Fatalf("agent got a different request:\n got %q\nwant %q", up.last(), body)
	}
	// The usage event is there once the answer is (that the answer waits
	// for the write is TestStrictAnswerWaitsForItsRecords).
	ev, ok := usageEvents(t, runningDB(t))["01JREQ0000000000000000001"]
	if !ok {
		t.Fatal("usage event missing right after the answer")
	}
	if ev.TaskID != "task_1" || ev.Status != "completed" || ev.ConsumerID != "urn:asap:agent:client" || ev.AgentID != "urn:asap:agent:demo" ||
		ev.PayloadType != "task.request" || ev.TokensIn != 11 || ev.TokensOut != 22 || ev.APICalls != 3 ||
		time.Since(ev.Timestamp) > time.Minute {
		t.Fatalf("event = %+v", ev)
	}
}

// Strict durability: no answer leaves before its records are stored. The
// commit pipeline is held by a write that blocks; the agent's answer must
// wait behind it, and come with its usage event once it is let go.
func TestStrictAnswerWaitsForItsRecords(t *testing.T) {
	up := &countingUpstream{answer: fixedAnswer(200, "application/json", agentAnswer)}
	srv := httptest.NewServer(up)
	defer srv.Close()
	s := startSidecar(t, upstreamAddr(srv), "agent urn:asap:agent:demo")
	db := runningDB(t)

	held, release := holdPipeline(t, db)
	answered := postAsync(s.url+"/asap", rpc("r1", envelope("01JREQHELD000000000000001", "echo", `{}`)))
	waitFor(t, func() bool { return up.count() == 1 })
	// The agent has answered; the client must not see it while the
	// pipeline is held. A window is the only way to show an absence; a
	// sidecar that answers first fails here at once.
	select {
	case b := <-answered:
		t.Fatalf("answered before its records could be stored: %s", b)
	case <-time.After(300 * time.Millisecond):
	}
	release()
	if err := held.Wait(context.Background()); err != nil {
		t.Fatal(err)
	}
	select {
	case b := <-answered:
		if decodeAnswer(t, b).Error != nil {
			t.Fatalf("answer %s", b)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no answer after the pipeline was let go")
	}
	if _, ok := usageEvents(t, db)["01JREQHELD000000000000001"]; !ok {
		t.Fatal("answered, but its usage event is not stored")
	}
}

// holdPipeline blocks db's commit pipeline with one strict write until
// release (which the test's cleanup calls too), and returns once the
// write is in the pipeline.
func holdPipeline(t *testing.T, db *storage.DB) (held *storage.Pending, release func()) {
	t.Helper()
	inPipeline, let := make(chan struct{}), make(chan struct{})
	var once sync.Once
	held = db.Submit(storage.Strict, func(tx *storage.Tx) error {
		once.Do(func() { close(inPipeline) })
		<-let
		return nil
	})
	release = sync.OnceFunc(func() { close(let) })
	t.Cleanup(release)
	select {
	case <-inPipeline:
	case <-time.After(10 * time.Second):
		t.Fatal("the blocking write never reached the pipeline")
	}
	return held, release
}

// postAsync POSTs body to url on its own goroutine and delivers the answer
// body (or the error's text).
func postAsync(url, body string) <-chan []byte {
	answered := make(chan []byte, 1)
	go func() {
		resp, err := client.Post(url, "application/json", strings.NewReader(body))
		if err != nil {
			answered <- []byte(err.Error())
			return
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		answered <- b
	}()
	return answered
}

func TestDemoAgentThroughSidecar(t *testing.T) {
	s := startSidecar(t, "", "agent urn:asap:agent:demo")
	_, b := post(t, s.url+"/asap", rpc("r1", envelope("01JREQ0000000000000000002", "echo", `{"text":"hi","tokens_in":5,"tokens_out":6}`)))
	a := decodeAnswer(t, b)
	if a.Error != nil || a.Result == nil {
		t.Fatalf("answer = %s", b)
	}
	env := a.Result.Envelope
	if env.PayloadType != "task.response" || env.CorrelationID != "01JREQ0000000000000000002" || env.Payload.Status != "completed" ||
		env.Payload.Metrics["tokens_in"] != 5.0 || env.Payload.Metrics["tokens_out"] != 6.0 {
		t.Fatalf("envelope = %+v", env)
	}
	_, b = post(t, s.url+"/asap", rpc("r2", envelope("01JREQ0000000000000000003", "fail", `{}`)))
	if a := decodeAnswer(t, b); a.Result.Envelope.Payload.Status != "failed" {
		t.Fatalf("fail skill: %s", b)
	}
	var st Status
	if code := getJSON(t, "http://"+s.adminAddr+"/asap/status", &st); code != 200 {
		t.Fatalf("status %d", code)
	}
	if len(st.Agents) != 1 {
		t.Fatalf("status = %+v", st)
	}
	ag := st.Agents[0]
	if ag.Agent != "urn:asap:agent:demo" || ag.Storage != s.dir || ag.Forwarded != 2 || ag.Completed != 1 || ag.Failed != 1 ||
		st.Version != Version || st.UptimeSeconds <= 0 || ag.Durability != "strict" || ag.Delegation != "off" {
		t.Fatalf("status = %+v", st)
	}
	// Discovery passes through untouched.
	var manifest map[string]any
	if code := getJSON(t, s.url+"/.well-known/asap/manifest.json", &manifest); code != 200 || manifest["id"] != "urn:asap:agent:demo" || manifest["sla"] == nil {
		t.Fatalf("manifest %d %v", code, manifest)
	}
}

func TestBadInputIsAnsweredAndNeverForwarded(t *testing.T) {
	up := &countingUpstream{answer: fixedAnswer(200, "application/json", agentAnswer)}
	srv := httptest.NewServer(up)
	defer srv.Close()
	s := startSidecar(t, upstreamAddr(srv), "")

	good := envelope("01JREQ0000000000000000001", "echo", `{}`)
	cases := []struct {
		name, body string
		code       int
		reason     string
	}{
		{"malformed json", `{"jsonrpc":"2.0",`, protocol.CodeParseError, "invalid_json"},
		{"wrong jsonrpc", strings.Replace(rpc("r", good), `"2.0"`, `"1.0"`, 1), protocol.CodeInvalidRequest, "wrong_jsonrpc_version"},
		{"missing envelope", `{"jsonrpc":"2.0","method":"asap.send","params":{},"id":"r"}`, protocol.CodeInvalidParams, "missing_envelope"},
		{"bad sender urn", rpc("r", strings.Replace(good, "urn:asap:agent:client", "urn:asap:agent:EVIL!", 1)), protocol.CodeInvalidParams, "invalid_sender_urn"},
		{"bad recipient urn", rpc("r", strings.Replace(good, "urn:asap:agent:demo", "demo", 1)), protocol.CodeInvalidParams, "invalid_recipient_urn"},
		{"invalid utf8", "{\"jsonrpc\":\"2.0\",\"method\":\"asap.send\",\"id\":\"\xff\"}", protocol.CodeParseError, "invalid_utf8"},
		{"nesting 10000 deep", strings.Repeat("[", 10000) + strings.Repeat("]", 10000), protocol.CodeParseError, "too_deep"},
		{"unknown method", strings.Replace(rpc("r", good), "asap.send", "admin.shutdown", 1), protocol.CodeMethodNotFound, "unknown_method"},
		{"empty batch", `[]`, protocol.CodeInvalidRequest, "empty_batch"},
		{"notification", strings.Replace(rpc("r", good), `,"id":"r"`, "", 1), protocol.CodeInvalidRequest, "missing_id"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			resp, b := post(t, s.url+"/asap", tc.body)
			if resp.StatusCode != 200 {
				t.Fatalf("HTTP %d, want 200 (JSON-RPC errors travel with 200)", resp.StatusCode)
			}
			a := decodeAnswer(t, b)
			if a.Error == nil || a.Error.Code != tc.code || a.Error.Data["reason"] != tc.reason {
				t.Fatalf("answer = %s", b)
			}
		})
	}
	// A batch of only bad calls is answered element by element.
	_, b := post(t, s.url+"/asap", `[1,{"jsonrpc":"2.0","method":"nope","params":{},"id":7}]`)
	var batch []rpcAnswer
	if err := json.Unmarshal(b, &batch); err != nil || len(batch) != 2 || batch[0].Error.Code != protocol.CodeInvalidRequest ||
		batch[1].Error.Code != protocol.CodeMethodNotFound || string(batch[1].ID) != "7" {
		t.Fatalf("bad batch answer = %s", b)
	}
	if n := up.count(); n != 0 {
		t.Fatalf("%d bad requests reached the agent", n)
	}
	// The process is unharmed: a good call still goes through.
	if _, b := post(t, s.url+"/asap", rpc("r1", good)); string(b) != agentAnswer || up.count() != 1 {
		t.Fatalf("good call after bad input: %s", b)
	}
	if got := runningAgent(t).rejected.Load(); got != uint64(len(cases)+1) {
		t.Fatalf("rejected counter = %d, want %d", got, len(cases)+1)
	}
}

func TestOversizedBodyIs413WithoutReadingIt(t *testing.T) {
	up := &countingUpstream{answer: fixedAnswer(200, "application/json", agentAnswer)}
	srv := httptest.NewServer(up)
	defer srv.Close()
	s := startSidecar(t, upstreamAddr(srv), "max_body 4KiB")

	// A client that announces 100 MiB and waits for 100-continue gets
	// its 413 without sending a byte of body.
	conn, err := net.Dial("tcp", strings.TrimPrefix(s.url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "POST /asap HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nExpect: 100-continue\r\nContent-Length: %d\r\n\r\n", 100<<20)
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("no answer before the body was sent: %v", err)
	}
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Fatalf("status %d: %s", resp.StatusCode, b)
	}
	if a := decodeAnswer(t, b); a.Error == nil || a.Error.Data["reason"] != "body_too_large" || a.Error.Data["limit"] != 4096.0 {
		t.Fatalf("answer = %s", b)
	}

	// A client that just sends its 100 MiB gets the 413 long before it
	// is done, and the connection is closed on it.
	conn2, err := net.Dial("tcp", strings.TrimPrefix(s.url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn2.Close()
	var sent atomic.Int64
	go func() {
		fmt.Fprintf(conn2, "POST /asap HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n", 100<<20)
		chunk := bytes.Repeat([]byte(" "), 64<<10)
		for sent.Load() < 100<<20 {
			n, err := conn2.Write(chunk)
			sent.Add(int64(n))
			if err != nil {
				return
			}
		}
	}()
	conn2.SetReadDeadline(time.Now().Add(10 * time.Second))
	resp, err = http.ReadResponse(bufio.NewReader(conn2), nil)
	if err != nil {
		t.Fatalf("no answer: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Fatalf("status %d", resp.StatusCode)
	}
	if n := sent.Load(); n > 50<<20 {
		t.Fatalf("the client could send %d bytes before the answer: the body was read", n)
	}

	// Chunked bodies (no length announced) are cut off at the limit too.
	// A raw connection: the sidecar answers and closes while the client
	// is still writing, which a Go client may report as a reset instead
	// of reading the answer already sent.
	conn3, err := net.Dial("tcp", strings.TrimPrefix(s.url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn3.Close()
	go func() {
		fmt.Fprintf(conn3, "POST /asap HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
		chunk := fmt.Sprintf("400\r\n%s\r\n", bytes.Repeat([]byte(" "), 1024))
		for i := 0; i < 1024; i++ { // up to 1 MiB, far past the limit
			if _, err := io.WriteString(conn3, chunk); err != nil {
				return
			}
		}
		io.WriteString(conn3, "0\r\n\r\n")
	}()
	conn3.SetReadDeadline(time.Now().Add(10 * time.Second))
	r3, err := http.ReadResponse(bufio.NewReader(conn3), nil)
	if err != nil {
		t.Fatalf("chunked: no answer: %v", err)
	}
	b, _ = io.ReadAll(r3.Body)
	r3.Body.Close()
	if r3.StatusCode != http.StatusRequestEntityTooLarge {
		t.Fatalf("chunked: status %d: %s", r3.StatusCode, b)
	}
	if up.count() != 0 {
		t.Fatal("oversized body reached the agent")
	}
}

func TestSSEChunksArriveAsFlushed(t *testing.T) {
	release := make(chan struct{})
	up := &countingUpstream{answer: func(w http.ResponseWriter, r *http.Request, _ []byte) {
		w.Header().Set("Content-Type", "text/event-stream")
		w.WriteHeader(200)
		fmt.Fprint(w, "data: {\"payload_type\":\"task.stream\",\"payload\":{\"chunk\":\"one\",\"task_id\":\"task_s\"}}\n\n")
		w.(http.Flusher).Flush()
		select {
		case <-release: // the test saw chunk one
		case <-time.After(10 * time.Second):
		}
		fmt.Fprint(w, "data: {\"payload_type\":\"task.stream\",\"payload\":{\"chunk\":\"two\",\"final\":true,\"status\":\"completed\",\"task_id\":\"task_s\"}}\n\n")
	}}
	srv := httptest.NewServer(up)
	defer srv.Close()
	s := startSidecar(t, upstreamAddr(srv), "agent urn:asap:agent:demo")

	resp, err := client.Post(s.url+"/asap/stream", "application/json", strings.NewReader(rpc("s1", envelope("01JSTREAM0000000000000001", "echo", `{}`))))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Fatalf("content type %q", ct)
	}
	rd := bufio.NewReader(resp.Body)
	first, err := rd.ReadString('\n')
	if err != nil || !strings.Contains(first, `"one"`) {
		t.Fatalf("first chunk = %q, %v", first, err)
	}
	close(release) // only now may the agent finish
	rest, _ := io.ReadAll(rd)
	if !strings.Contains(string(rest), `"two"`) {
		t.Fatalf("rest = %q", rest)
	}
	// The stream's final chunk closes the task in its usage event.
	deadline := time.Now().Add(5 * time.Second)
	for {
		ev, ok := usageEvents(t, runningDB(t))["01JSTREAM0000000000000001"]
		if ok {
			if ev.TaskID != "task_s" || ev.Status != "completed" {
				t.Fatalf("stream event = %+v", ev)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("stream usage event missing")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestWebSocketEchoThroughSidecar(t *testing.T) {
	s := startSidecar(t, "", "agent urn:asap:agent:demo")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, _, err := websocket.Dial(ctx, strings.Replace(s.url, "http", "ws", 1)+"/asap/ws", nil)
	if err != nil {
		t.Fatalf("dial through sidecar: %v", err)
	}
	defer conn.CloseNow()
	for i := 0; i < 3; i++ {
		req := rpc(fmt.Sprintf("w%d", i), envelope(fmt.Sprintf("01JWS000000000000000000%03d", i), "echo", fmt.Sprintf(`{"n":%d}`, i)))
		if err := conn.Write(ctx, websocket.MessageText, []byte(req)); err != nil {
			t.Fatal(err)
		}
		_, msg, err := conn.Read(ctx)
		if err != nil {
			t.Fatal(err)
		}
		a := decodeAnswer(t, msg)
		if a.Result == nil || string(a.ID) != fmt.Sprintf(`"w%d"`, i) || a.Result.Envelope.Payload.Status != "completed" {
			t.Fatalf("ws answer %d = %s", i, msg)
		}
	}
	conn.Close(websocket.StatusNormalClosure, "")
}

func TestUpstreamFaultsAnsweredWithJSONRPCErrors(t *testing.T) {
	good := rpc("r1", envelope("01JREQ0000000000000000001", "echo", `{}`))
	t.Run("unreachable", func(t *testing.T) {
		dead := fmt.Sprintf("127.0.0.1:%d", freeport.Port(t))
		s := startSidecar(t, dead, "agent urn:asap:agent:demo")
		resp, b := post(t, s.url+"/asap", good)
		a := decodeAnswer(t, b)
		if resp.StatusCode != http.StatusBadGateway || a.Error == nil || a.Error.Code != protocol.CodeConnectionError || string(a.ID) != `"r1"` {
			t.Fatalf("%d %s", resp.StatusCode, b)
		}
		// No answer is no usage, but the failure is counted.
		if evs := usageEvents(t, runningDB(t)); len(evs) != 0 {
			t.Fatalf("usage recorded for an unreachable agent: %+v", evs)
		}
		if c := countsOf(t, "urn:asap:agent:demo"); c.Forwarded != 1 || c.Failed != 1 {
			t.Fatalf("counts = %+v", c)
		}
	})
	t.Run("garbage answer", func(t *testing.T) {
		srv := httptest.NewServer(&countingUpstream{answer: fixedAnswer(200, "text/html", "<html>oops</html>")})
		defer srv.Close()
		s := startSidecar(t, upstreamAddr(srv), "agent urn:asap:agent:demo")
		resp, b := post(t, s.url+"/asap", good)
		a := decodeAnswer(t, b)
		if resp.StatusCode != http.StatusBadGateway || a.Error == nil || a.Error.Code != protocol.CodeRemoteError {
			t.Fatalf("%d %s", resp.StatusCode, b)
		}
	})
	t.Run("reset mid-body", func(t *testing.T) {
		srv := httptest.NewServer(&countingUpstream{answer: func(w http.ResponseWriter, r *http.Request, _ []byte) {
			w.Header().Set("Content-Type", "application/json")
			w.Header().Set("Content-Length", "5000")
			w.WriteHeader(200)
			w.Write([]byte(`{"jsonrpc":"2.0","result":{"env`))
			w.(http.Flusher).Flush()
			conn, _, _ := http.NewResponseController(w).Hijack()
			conn.Close()
		}})
		defer srv.Close()
		s := startSidecar(t, upstreamAddr(srv), "agent urn:asap:agent:demo")
		resp, b := post(t, s.url+"/asap", good)
		a := decodeAnswer(t, b)
		if resp.StatusCode != http.StatusBadGateway || a.Error == nil || a.Error.Code != protocol.CodeConnectionError {
			t.Fatalf("%d %s", resp.StatusCode, b)
		}
	})
	t.Run("5xx with JSON-RPC body passes through, counted failed", func(t *testing.T) {
		body := `{"jsonrpc":"2.0","error":{"code":-32603,"message":"Internal error","data":null},"id":"r1"}`
		srv := httptest.NewServer(&countingUpstream{answer: fixedAnswer(500, "application/json", body)})
		defer srv.Close()
		s := startSidecar(t, upstreamAddr(srv), "agent urn:asap:agent:demo")
		resp, b := post(t, s.url+"/asap", good)
		if resp.StatusCode != 500 || string(b) != body {
			t.Fatalf("%d %s", resp.StatusCode, b)
		}
		if ev, ok := usageEvents(t, runningDB(t))["01JREQ0000000000000000001"]; !ok || ev.Status != "failed" {
			t.Fatalf("event = %+v", ev)
		}
		if c := countsOf(t, "urn:asap:agent:demo"); c.Failed != 1 {
			t.Fatalf("counts = %+v", c)
		}
	})
}

func TestMixedBatchForwardsOnlyGoodCalls(t *testing.T) {
	up := &countingUpstream{}
	up.answer = func(w http.ResponseWriter, r *http.Request, body []byte) {
		var calls []struct {
			ID json.RawMessage `json:"id"`
		}
		json.Unmarshal(body, &calls)
		var out []string
		for _, c := range calls {
			out = append(out, fmt.Sprintf(`{"jsonrpc":"2.0","result":{"envelope":{"payload_type":"task.response","payload":{"task_id":"t-%s","status":"completed"}}},"id":%s}`, strings.Trim(string(c.ID), `"`), c.ID))
		}
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprint(w, "["+strings.Join(out, ",")+"]")
	}
	srv := httptest.NewServer(up)
	defer srv.Close()
	s := startSidecar(t, upstreamAddr(srv), "agent urn:asap:agent:demo")

	goodA := rpc("a", envelope("01JBATCH00000000000000000A", "echo", `{}`))
	goodB := rpc("b", envelope("01JBATCH00000000000000000B", "echo", `{}`))
	bad := strings.Replace(rpc("x", envelope("01JBATCH00000000000000000X", "echo", `{}`)), `"0.1"`, `""`, 1)
	_, b := post(t, s.url+"/asap", "["+goodA+","+bad+","+goodB+"]")
	var answers []rpcAnswer
	if err := json.Unmarshal(b, &answers); err != nil || len(answers) != 3 {
		t.Fatalf("answer = %s", b)
	}
	byID := map[string]rpcAnswer{}
	for _, a := range answers {
		byID[string(a.ID)] = a
	}
	if byID[`"a"`].Result == nil || byID[`"b"`].Result == nil || byID[`"x"`].Error == nil || byID[`"x"`].Error.Data["reason"] != "missing_asap_version" {
		t.Fatalf("answer = %s", b)
	}
	if want := "[" + goodA + "," + goodB + "]"; string(up.last()) != want {
		t.Fatalf("agent got %s\nwant %s", up.last(), want)
	}
	if c := countsOf(t, "urn:asap:agent:demo"); c.Forwarded != 2 || c.Completed != 2 {
		t.Fatalf("counts = %+v", c)
	}
	evs := usageEvents(t, runningDB(t))
	if len(evs) != 2 || evs["01JBATCH00000000000000000B"].TaskID != "t-b" || evs["01JBATCH00000000000000000A"].TaskID != "t-a" {
		t.Fatalf("batch events = %+v", evs)
	}
}

func TestGzipAnswerReachesClientCompressedAndIsInspected(t *testing.T) {
	var zipped bytes.Buffer
	zw := gzip.NewWriter(&zipped)
	zw.Write([]byte(agentAnswer))
	zw.Close()
	srv := httptest.NewServer(&countingUpstream{answer: func(w http.ResponseWriter, r *http.Request, _ []byte) {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Content-Encoding", "gzip")
		w.Write(zipped.Bytes())
	}})
	defer srv.Close()
	s := startSidecar(t, upstreamAddr(srv), "agent urn:asap:agent:demo")
	req, _ := http.NewRequest(http.MethodPost, s.url+"/asap", strings.NewReader(rpc("r1", envelope("01JGZIP000000000000000001", "echo", `{}`))))
	req.Header.Set("Accept-Encoding", "gzip")
	resp, err := (&http.Transport{DisableCompression: true}).RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.Header.Get("Content-Encoding") != "gzip" || !bytes.Equal(b, zipped.Bytes()) {
		t.Fatalf("client did not get the agent's gzip bytes: %q %d bytes", resp.Header.Get("Content-Encoding"), len(b))
	}
	if ev := usageEvents(t, runningDB(t))["01JGZIP000000000000000001"]; ev.TaskID != "task_1" || ev.TokensOut != 22 {
		t.Fatalf("gzip answer not inspected: %+v", ev)
	}
}

func TestLargeAnswerIsStreamedPastInspectLimit(t *testing.T) {
	big := `{"jsonrpc":"2.0","result":{"envelope":{"payload_type":"task.response","payload":{"task_id":"t","status":"completed","result":"` + strings.Repeat("x", 64<<10) + `"}}},"id":"r1"}`
	srv := httptest.NewServer(&countingUpstream{answer: fixedAnswer(200, "application/json", big)})
	defer srv.Close()
	s := startSidecar(t, upstreamAddr(srv), "agent urn:asap:agent:demo\ninspect_limit 8KiB")
	_, b := post(t, s.url+"/asap", rpc("r1", envelope("01JBIG0000000000000000001", "echo", `{}`)))
	if string(b) != big {
		t.Fatalf("large answer changed: %d bytes, want %d", len(b), len(big))
	}
	if ev, ok := usageEvents(t, runningDB(t))["01JBIG0000000000000000001"]; !ok || ev.Status != "completed" {
		t.Fatalf("event = %+v", ev)
	}
}

func TestNonASAPTrafficPassesThrough(t *testing.T) {
	up := &countingUpstream{answer: fixedAnswer(200, "text/plain", "plain")}
	srv := httptest.NewServer(up)
	defer srv.Close()
	s := startSidecar(t, upstreamAddr(srv), "")
	for _, p := range []string{"/other", "/asapx", "/.well-known/asap/health"} {
		resp, b := post(t, s.url+p, "not json at all")
		if resp.StatusCode != 200 || string(b) != "plain" {
			t.Fatalf("%s: %d %s", p, resp.StatusCode, b)
		}
	}
	// Path variants of /asap are still inspected.
	for _, p := range []string{"/asap/", "//asap", "/x/../asap"} {
		_, b := post(t, s.url+p, "not json")
		if a := decodeAnswer(t, b); a.Error == nil || a.Error.Code != protocol.CodeParseError {
			t.Fatalf("%s not inspected: %s", p, b)
		}
	}
	if up.count() != 3 {
		t.Fatalf("upstream hits %d, want 3", up.count())
	}
}

func TestConcurrentTasksAllRecorded(t *testing.T) {
	s := startSidecar(t, "", "agent urn:asap:agent:demo")
	const n, workers = 400, 32
	var wg sync.WaitGroup
	jobs := make(chan int)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range jobs {
				_, b := post(t, s.url+"/asap", rpc("c", envelope(fmt.Sprintf("01JCONC%019d", i), "echo", `{}`)))
				if a := decodeAnswer(t, b); a.Result == nil {
					t.Errorf("task %d: %s", i, b)
				}
			}
		}()
	}
	for i := 0; i < n; i++ {
		jobs <- i
	}
	close(jobs)
	wg.Wait()
	c := countsOf(t, "urn:asap:agent:demo")
	if evs := usageEvents(t, runningDB(t)); c.Forwarded != n || c.Completed != n || len(evs) != n {
		t.Fatalf("counts %+v, %d events; want %d", c, len(evs), n)
	}
}
