package caddymodule

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"
)

// Tests that kill mutants of the request path which survived the suite
// (found by gremlins). Each goes through a real sidecar where it
// can; pure functions are tested directly.

// rpcIDOf is the JSON-RPC id of a call as the agent reads it.
func rpcIDOf(body []byte) string {
	var c struct {
		ID string `json:"id"`
	}
	_ = json.Unmarshal(body, &c)
	return c.ID
}

// A deflate body that is nothing but a zlib header is refused, and the
// detail says what is wrong with that header: here a window zlib does not
// allow (CINFO 8).
func TestDeflateBodyThatIsOnlyAZlibHeader(t *testing.T) {
	up := &countingUpstream{answer: fixedAnswer(200, "application/json", agentAnswer)}
	srv := httptest.NewServer(up)
	defer srv.Close()
	s := startSidecar(t, upstreamAddr(srv), "agent urn:asap:agent:demo")
	resp, b := postEncoded(t, s.url+"/asap", "deflate", []byte{0x88, 0x1c})
	a := decodeAnswer(t, b)
	if resp.StatusCode != http.StatusBadRequest || a.Error == nil || a.Error.Data["reason"] != "bad_encoding" {
		t.Fatalf("%d %s, want 400 bad_encoding", resp.StatusCode, b)
	}
	if !strings.Contains(string(b), "zlib: invalid header") {
		t.Fatalf("detail does not name the zlib header: %s", b)
	}
	if up.count() != 0 {
		t.Fatal("an undecodable body reached the agent")
	}
}

// A body of exactly max_body is accepted and forwarded as sent; one byte
// more is 413 and never reaches the agent.
func TestBodyOfExactlyMaxBodyIsAccepted(t *testing.T) {
	up := &countingUpstream{answer: fixedAnswer(200, "application/json", agentAnswer)}
	srv := httptest.NewServer(up)
	defer srv.Close()
	s := startSidecar(t, upstreamAddr(srv), "agent urn:asap:agent:demo\nmax_body 1KiB")
	call := rpc("r1", envelope("01JEXACTMAXBODY00000000001", "echo", `{}`))
	exact := call + strings.Repeat(" ", 1024-len(call))
	resp, b := post(t, s.url+"/asap", exact)
	if resp.StatusCode != http.StatusOK || string(b) != agentAnswer {
		t.Fatalf("body of exactly max_body: %d %s", resp.StatusCode, b)
	}
	if string(up.last()) != exact || up.count() != 1 {
		t.Fatalf("the agent got %d calls, last %d bytes; want the 1024 bytes as sent", up.count(), len(up.last()))
	}
	resp, b = post(t, s.url+"/asap", exact+" ")
	if resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Fatalf("one byte over max_body: %d %s", resp.StatusCode, b)
	}
	if up.count() != 1 {
		t.Fatal("a body over max_body reached the agent")
	}
}

// max_body bounds the decoded body too, inclusively: a gzip body that
// decodes to exactly max_body bytes is checked and forwarded as sent; one
// byte more decoded is refused.
func TestCompressedBodyDecodingToExactlyMaxBody(t *testing.T) {
	up := &countingUpstream{answer: fixedAnswer(200, "application/json", agentAnswer)}
	srv := httptest.NewServer(up)
	defer srv.Close()
	s := startSidecar(t, upstreamAddr(srv), "agent urn:asap:agent:demo\nmax_body 1KiB")
	call := rpc("r1", envelope("01JEXACTGZIPBODY0000000001", "echo", `{}`))
	exact := compress(t, "gzip", []byte(call+strings.Repeat(" ", 1024-len(call))))
	resp, b := postEncoded(t, s.url+"/asap", "gzip", exact)
	if resp.StatusCode != http.StatusOK || string(b) != agentAnswer {
		t.Fatalf("gzip body decoding to exactly max_body: %d %s", resp.StatusCode, b)
	}
	if string(up.last()) != string(exact) || up.count() != 1 {
		t.Fatalf("the agent got %d calls, last %d bytes; want the %d gzip bytes as sent", up.count(), len(up.last()), len(exact))
	}
	over := compress(t, "gzip", []byte(call+strings.Repeat(" ", 1025-len(call))))
	if resp, b := postEncoded(t, s.url+"/asap", "gzip", over); resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Fatalf("gzip body decoding to one byte over max_body: %d %s", resp.StatusCode, b)
	}
	if up.count() != 1 {
		t.Fatal("a body decoding past max_body reached the agent")
	}
}

// With metering, audit and delegation off there is nothing to store: the
// answer does not wait on the storage pipeline (strict durability waits
// only for records).
func TestNothingToRecordDoesNotWaitForStorage(t *testing.T) {
	up := &countingUpstream{answer: fixedAnswer(200, "application/json", agentAnswer)}
	srv := httptest.NewServer(up)
	defer srv.Close()
	s := startSidecar(t, upstreamAddr(srv), "agent urn:asap:agent:demo\nmetering off\naudit off\ndurability strict")
	db := runningDB(t)

	held, release := holdPipeline(t, db)
	answered := postAsync(s.url+"/asap", rpc("r1", envelope("01JNOTHINGTORECORD00000001", "echo", `{}`)))
	select {
	case b := <-answered:
		if string(b) != agentAnswer {
			t.Fatalf("answer %s", b)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("with nothing to record, the answer waited on the storage pipeline")
	}
	release()
	if err := held.Wait(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// An HTTP/2 WebSocket opens with an extended CONNECT (RFC 8441); HTTP/1.1
// upgrade headers on an HTTP/2 GET open nothing (the GET is refused 405
// like any GET on an ASAP path).
func TestHTTP2WebSocketHandshake(t *testing.T) {
	h2 := func(method string, h http.Header) *http.Request {
		return &http.Request{Method: method, URL: &url.URL{Path: "/asap/ws"}, Proto: "HTTP/2.0", ProtoMajor: 2, Header: h}
	}
	connect := http.Header{}
	connect.Set(":protocol", "websocket")
	if got := classify(h2(http.MethodConnect, connect)); got != webSocket {
		t.Errorf("HTTP/2 CONNECT :protocol websocket classified %d, want webSocket (%d)", got, webSocket)
	}
	get := http.Header{"Connection": {"Upgrade"}, "Upgrade": {"websocket"}}
	if got := classify(h2(http.MethodGet, get)); got != wrongMethod {
		t.Errorf("HTTP/2 GET with HTTP/1.1 upgrade headers classified %d, want wrongMethod (%d)", got, wrongMethod)
	}
}

// Error messages quote client input (a method, an encoding) only as
// printable ASCII without spaces, and at most n bytes of it.
func TestTruncateASCII(t *testing.T) {
	for _, tc := range []struct {
		in   string
		n    int
		want string
	}{
		{"PATCH", 16, "PATCH"},
		{"", 16, ""},
		{strings.Repeat("A", 40), 16, strings.Repeat("A", 16)},
		{"a b\tc\x7fd\x00e~!", 16, "abcde~!"},
		{"gz\xc3\xa9ip\r\n", 32, "gzip"},
		{"  x y z  ", 2, "xy"},
	} {
		if got := truncateASCII(tc.in, tc.n); got != tc.want {
			t.Errorf("truncateASCII(%q, %d) = %q, want %q", tc.in, tc.n, got, tc.want)
		}
	}
}

// What the client gets when the agent's answer is not JSON-RPC depends on
// its status: a 2xx or 5xx is replaced by a JSON-RPC error (502), a 3xx
// or 4xx is the agent's own answer about the HTTP request and passes
// through. A 5xx fails its task even when its body is a result.
func TestUnparseableAnswerByStatus(t *testing.T) {
	const garbage = "<html>oops</html>"
	result := func(id string) string {
		return fmt.Sprintf(`{"jsonrpc":"2.0","result":{"envelope":{"payload_type":"task.response","payload":{"task_id":"t-%s","status":"completed"}}},"id":%q}`, id, id)
	}
	up := &countingUpstream{answer: func(w http.ResponseWriter, _ *http.Request, body []byte) {
		id := rpcIDOf(body) // "g<status>": garbage; "j<status>": a JSON-RPC result
		var status int
		fmt.Sscan(id[1:], &status)
		if id[0] == 'j' {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(status)
			_, _ = io.WriteString(w, result(id))
			return
		}
		w.Header().Set("Content-Type", "text/html")
		w.WriteHeader(status)
		_, _ = io.WriteString(w, garbage)
	}}
	srv := httptest.NewServer(up)
	defer srv.Close()
	s := startSidecar(t, upstreamAddr(srv), "agent urn:asap:agent:demo")
	for i, status := range []int{200, 299, 300, 404, 499, 500, 503} {
		id := fmt.Sprintf("g%d", status)
		resp, b := post(t, s.url+"/asap", rpc(id, envelope(fmt.Sprintf("01JBYSTATUS000000000000%03d", i), "echo", `{}`)))
		replaced := status < 300 || status >= 500
		if replaced {
			a := decodeAnswer(t, b)
			if resp.StatusCode != http.StatusBadGateway || a.Error == nil || a.Error.Data["reason"] != "invalid_agent_answer" || string(a.ID) != `"`+id+`"` {
				t.Errorf("agent's %d with garbage: client got %d %s, want 502 invalid_agent_answer", status, resp.StatusCode, b)
			}
		} else if resp.StatusCode != status || string(b) != garbage {
			t.Errorf("agent's %d with garbage: client got %d %s, want the agent's answer as is", status, resp.StatusCode, b)
		}
	}

	resp, b := post(t, s.url+"/asap", rpc("j500", envelope("01JBYSTATUSRESULT000000500", "echo", `{}`)))
	if resp.StatusCode != http.StatusInternalServerError || string(b) != result("j500") {
		t.Fatalf("agent's 500 with a result: client got %d %s, want it as is", resp.StatusCode, b)
	}
	if ev, ok := usageEvents(t, runningDB(t))["01JBYSTATUSRESULT000000500"]; !ok || ev.Status != "failed" || ev.TaskID != "t-j500" {
		t.Fatalf("agent's 500 with a completed result recorded %+v, want failed", ev)
	}
}
