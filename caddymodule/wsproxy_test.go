package caddymodule

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// Tests that kill mutants of wsproxy.go which survived the suite before.

// wsAgentD is a WebSocket agent stand-in: it accepts the subprotocols
// given, answers with pythonAnswers, or (closeOnFrame) closes its socket on
// the first frame without answering. It reports how its socket ended.
type wsAgentD struct {
	subprotocols []string
	closeOnFrame bool
	ended        chan error
}

func newWSAgentD() *wsAgentD { return &wsAgentD{ended: make(chan error, 16)} }

func (a *wsAgentD) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	conn, err := websocket.Accept(w, r, &websocket.AcceptOptions{Subprotocols: a.subprotocols})
	if err != nil {
		return
	}
	defer conn.CloseNow()
	ctx := r.Context()
	for {
		_, msg, err := conn.Read(ctx)
		if err != nil {
			a.ended <- err
			return
		}
		if a.closeOnFrame {
			conn.Close(websocket.StatusNormalClosure, "bye")
			a.ended <- nil
			return
		}
		if out, n := pythonAnswers(msg); n > 0 && conn.Write(ctx, websocket.MessageText, []byte(out)) != nil {
			return
		}
	}
}

// wsproxy.go:106. The subprotocol the agent chose is the client's.
func TestWebSocketSubprotocolReachesTheClient(t *testing.T) {
	agent := newWSAgentD()
	agent.subprotocols = []string{"asap.v1"}
	srv := httptest.NewServer(agent)
	t.Cleanup(srv.Close)
	s := startSidecar(t, upstreamAddr(srv), "agent urn:asap:agent:demo")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, _, err := websocket.Dial(ctx, strings.Replace(s.url, "http", "ws", 1)+"/asap/ws",
		&websocket.DialOptions{Subprotocols: []string{"asap.v1"}})
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer conn.CloseNow()
	if p := conn.Subprotocol(); p != "asap.v1" {
		t.Fatalf("subprotocol %q, want the agent's asap.v1", p)
	}
	if msg := roundTripFrame(t, conn, rpc("r1", envelope(envID("SUBPROTO", 1), "echo", `{}`))); !strings.Contains(string(msg), `"result"`) {
		t.Fatalf("answer %s", msg)
	}
}

// wsproxy.go:157. A client that leaves with nothing pending has the
// agent's socket closed at once, not after the drain timeout.
func TestWebSocketClientLeavingClosesTheAgent(t *testing.T) {
	saved := wsDrainTimeout.Load()
	t.Cleanup(func() { wsDrainTimeout.Store(saved) }) // after Caddy stops
	// Only bounds how long a broken drain holds the session at cleanup;
	// the test waits 10s at most.
	wsDrainTimeout.Store(int64(30 * time.Second))
	agent := newWSAgentD()
	srv := httptest.NewServer(agent)
	t.Cleanup(srv.Close)
	s := startSidecar(t, upstreamAddr(srv), "agent urn:asap:agent:demo")
	conn := dialWS(t, s, "")
	if msg := roundTripFrame(t, conn, rpc("r1", envelope(envID("DRAIN", 1), "echo", `{}`))); !strings.Contains(string(msg), `"result"`) {
		t.Fatalf("answer %s", msg)
	}
	if err := conn.Close(websocket.StatusNormalClosure, ""); err != nil {
		t.Fatalf("closing the client: %v", err)
	}
	select {
	case err := <-agent.ended:
		var ce websocket.CloseError
		if !errors.As(err, &ce) || ce.Code != websocket.StatusNormalClosure || ce.Reason != "client left" {
			t.Fatalf("the agent's socket ended with %v, want a normal close \"client left\"", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the agent's socket still open 10s after the client left with nothing pending")
	}
}

// wsproxy.go:473. Calls the agent never answered are recorded as failed
// when the session ends, and a record that was stored logs no error.
func TestWebSocketUnansweredCallsRecordedQuietly(t *testing.T) {
	agent := newWSAgentD()
	agent.closeOnFrame = true
	srv := httptest.NewServer(agent)
	t.Cleanup(srv.Close)
	accessPath := filepath.Join(t.TempDir(), "access.log")
	s, logPath := startSidecarLogs(t, upstreamAddr(srv), "agent urn:asap:agent:demo",
		fmt.Sprintf("log {\n\t\toutput file %s\n\t\tformat json\n\t}", accessPath))
	conn := dialWS(t, s, "")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := conn.Write(ctx, websocket.MessageText, []byte(rpc("r1", envelope(envID("UNANSWERED", 1), "echo", `{}`)))); err != nil {
		t.Fatal(err)
	}
	// The agent closes without answering; the sidecar closes the client.
	if _, msg, err := conn.Read(ctx); err == nil {
		t.Fatalf("an answer from an agent that answers nothing: %s", msg)
	}
	// Caddy writes the access log entry once the handler returned, after
	// the pending call was recorded.
	waitFor(t, func() bool { return len(linesWith(t, accessPath, "handled request")) > 0 })
	if c := countsOf(t, "urn:asap:agent:demo"); c.Forwarded != 1 || c.Failed != 1 {
		t.Fatalf("counts = %+v, want the unanswered call recorded as failed", c)
	}
	if l := linesWith(t, logPath, "records of unanswered WebSocket calls not stored"); len(l) != 0 {
		t.Fatalf("an error logged for records that were stored: %v", l)
	}
}

// wsproxy.go:500 (and record.go:240 on a socket). With strict durability
// an answer reaches the client only once its records are stored: when
// they cannot be (the audit log is broken), the client gets no answer but
// a closed socket, and nothing is recorded without its audit entries.
func TestWebSocketAnswerWaitsForItsRecord(t *testing.T) {
	agent := &wsAgent{}
	srv := httptest.NewServer(agent)
	t.Cleanup(srv.Close)
	s := startSidecar(t, upstreamAddr(srv), "agent urn:asap:agent:demo\ndurability strict")
	conn := dialWS(t, s, "")
	if msg := roundTripFrame(t, conn, rpc("r1", envelope(envID("WSSTRICT", 1), "echo", `{}`))); !strings.Contains(string(msg), `"result"`) {
		t.Fatalf("answer before the corruption: %s", msg)
	}
	corruptAuditHead(t)
	id := envID("WSSTRICT", 2)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := conn.Write(ctx, websocket.MessageText, []byte(rpc("r2", envelope(id, "echo", `{}`)))); err != nil {
		t.Fatal(err)
	}
	_, msg, err := conn.Read(ctx)
	if err == nil {
		t.Fatalf("the client got an answer whose record could not be stored: %s", msg)
	}
	if code := websocket.CloseStatus(err); code != websocket.StatusInternalError {
		t.Fatalf("socket ended with %v, want a 1011 close", err)
	}
	if n := agent.count(); n != 2 {
		t.Fatalf("the agent got %d frames, want 2", n)
	}
	if e, ok := usageEvents(t, runningDB(t))[id]; ok {
		t.Fatalf("usage stored without its audit entries: %+v", e)
	}
}

// An agent that refuses the WebSocket handshake (here 403 with a body) is
// reported to the client with the agent's status and a JSON-RPC error,
// and nothing is recorded; one that answers 200 without switching gets
// 502 from the sidecar, as an agent that did not accept.
func TestWebSocketHandshakeRefusedByTheAgent(t *testing.T) {
	status := http.StatusForbidden
	var mu sync.Mutex
	agent := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		w.Header().Set("Content-Type", "text/plain")
		w.WriteHeader(status)
		fmt.Fprint(w, strings.Repeat("no sockets here ", 5000)) // more than the sidecar keeps
	}))
	defer agent.Close()
	s := startSidecar(t, upstreamAddr(agent), "agent urn:asap:agent:demo")
	url := strings.Replace(s.url, "http", "ws", 1) + "/asap/ws"
	for _, tc := range []struct{ agentStatus, want int }{{http.StatusForbidden, http.StatusForbidden}, {http.StatusOK, http.StatusBadGateway}} {
		mu.Lock()
		status = tc.agentStatus
		mu.Unlock()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_, resp, err := websocket.Dial(ctx, url, nil)
		cancel()
		if err == nil || resp == nil || resp.StatusCode != tc.want {
			t.Fatalf("agent answering %d: dial err %v, response %+v; want HTTP %d", tc.agentStatus, err, resp, tc.want)
		}
		b, _ := io.ReadAll(resp.Body)
		if a := decodeAnswer(t, b); a.Error == nil || a.Error.Data["reason"] != "agent_unreachable" {
			t.Fatalf("agent answering %d: sidecar said %s", tc.agentStatus, b)
		}
	}
	if c := countsOf(t, "urn:asap:agent:demo"); c.Forwarded != 0 {
		t.Fatalf("a refused handshake was counted: %+v", c)
	}
}
