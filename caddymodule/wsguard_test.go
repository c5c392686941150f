package caddymodule

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/asap-sidecar/asap-sidecar/caddymodule/delegation"
	"github.com/asap-sidecar/asap-sidecar/caddymodule/protocol"
	"github.com/asap-sidecar/asap-sidecar/caddymodule/sla"
)

// pythonAnswers answers a JSON-RPC body (one call or a batch) as a Python
// agent would: ids decoded and encoded again, 7 tokens in per task, calls
// whose skill is "skip" left unanswered. It returns the answer ("" when
// no call is answered) and how many calls it answered.
func pythonAnswers(body []byte) (string, int) {
	batch := strings.HasPrefix(strings.TrimSpace(string(body)), "[")
	var calls []json.RawMessage
	if batch {
		json.Unmarshal(body, &calls)
	} else {
		calls = []json.RawMessage{body}
	}
	var answers []string
	for _, raw := range calls {
		var c struct {
			ID     any `json:"id"`
			Params struct {
				Envelope struct {
					ID      string `json:"id"`
					Payload struct {
						Skill string `json:"skill_id"`
					} `json:"payload"`
				} `json:"envelope"`
			} `json:"params"`
		}
		json.Unmarshal(raw, &c)
		if c.Params.Envelope.Payload.Skill == "skip" {
			continue
		}
		id, _ := json.Marshal(c.ID)
		answers = append(answers, fmt.Sprintf(`{"jsonrpc":"2.0","result":{"envelope":{"payload_type":"task.response","payload":{"task_id":"t-%s","status":"completed","metrics":{"tokens_in":7}}}},"id":%s}`,
			c.Params.Envelope.ID, id))
	}
	switch {
	case len(answers) == 0:
		return "", 0
	case batch:
		return "[" + strings.Join(answers, ",") + "]", len(answers)
	default:
		return answers[0], 1
	}
}

// wsAgent is a WebSocket agent stand-in: it records every frame it gets,
// with how many of its calls it answered, and answers with pythonAnswers.
// readLimit 0 keeps coder/websocket's default (32 KiB).
type wsAgent struct {
	readLimit int64

	mu       sync.Mutex
	frames   [][]byte
	answered []int
}

func (a *wsAgent) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	conn, err := websocket.Accept(w, r, nil)
	if err != nil {
		return
	}
	defer conn.CloseNow()
	if a.readLimit > 0 {
		conn.SetReadLimit(a.readLimit)
	}
	ctx := r.Context()
	for {
		_, msg, err := conn.Read(ctx)
		if err != nil {
			return
		}
		out, n := pythonAnswers(msg)
		a.mu.Lock()
		a.frames = append(a.frames, msg)
		a.answered = append(a.answered, n)
		a.mu.Unlock()
		if n > 0 && conn.Write(ctx, websocket.MessageText, []byte(out)) != nil {
			return
		}
	}
}

func (a *wsAgent) count() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.frames)
}

func (a *wsAgent) last() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.frames) == 0 {
		return ""
	}
	return string(a.frames[len(a.frames)-1])
}

func dialWS(t *testing.T, s *sidecar, token string) *websocket.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	opts := &websocket.DialOptions{}
	if token != "" {
		opts.HTTPHeader = http.Header{delegation.Header: {token}}
	}
	conn, _, err := websocket.Dial(ctx, strings.Replace(s.url, "http", "ws", 1)+"/asap/ws", opts)
	if err != nil {
		t.Fatalf("dial through the sidecar: %v", err)
	}
	t.Cleanup(func() { conn.CloseNow() })
	return conn
}

// roundTripFrame sends one frame and reads one answer frame.
func roundTripFrame(t *testing.T, conn *websocket.Conn, frame string) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := conn.Write(ctx, websocket.MessageText, []byte(frame)); err != nil {
		t.Fatalf("write: %v", err)
	}
	_, msg, err := conn.Read(ctx)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	return msg
}

// Every frame on a WebSocket goes through the checks a POST body does,
// and what the agent answers is metered.
func TestWebSocketFramesAreCheckedAndMetered(t *testing.T) {
	agent := &wsAgent{}
	srv := httptest.NewServer(agent)
	defer srv.Close()
	s := startSidecar(t, upstreamAddr(srv), "agent urn:asap:agent:demo")
	conn := dialWS(t, s, "")

	benign := envelope("01JWSGUARD0000000000000001", "echo", `{}`)
	for name, c := range map[string]struct{ frame, reason string }{
		"not JSON":            {"not json", "invalid_json"},
		"smuggled envelope":   {`{"jsonrpc":"2.0","method":"asap.send","params":{"envelope":` + benign + `,"Envelope":{}},"id":"r1"}`, "duplicate_member"},
		"control char in id":  {rpc("r1", withEnvelopeID(`01JWS\u0000`)), "control_character_in_id"},
		"bad sender":          {rpc("r1", strings.Replace(benign, "urn:asap:agent:client", "mallory", 1)), "invalid_sender_urn"},
		"duplicate batch ids": {"[" + rpc("a", benign) + "," + rpc("a", envelope("01JWSGUARD0000000000000002", "echo", `{}`)) + "]", "duplicate_id"},
		"unknown method":      {`{"jsonrpc":"2.0","method":"tasks.run","params":{},"id":"r1"}`, "unknown_method"},
	} {
		msg := roundTripFrame(t, conn, c.frame)
		if a := decodeAnswer(t, msg); a.Error == nil || a.Error.Data["reason"] != c.reason {
			t.Errorf("%s: answer %s, want reason %s", name, msg, c.reason)
		}
	}
	if n := agent.count(); n != 0 {
		t.Fatalf("the agent got %d frames that should have been refused", n)
	}

	// Valid calls: forwarded as sent, answers matched by decoded id.
	frame := `{"jsonrpc":"2.0","method":"asap.send","params":{"envelope":` + benign + `},"id":"\u0061"}`
	msg := roundTripFrame(t, conn, frame)
	if a := decodeAnswer(t, msg); a.Result == nil || string(a.ID) != `"a"` {
		t.Fatalf("answer %s", msg)
	}
	if agent.last() != frame {
		t.Fatalf("the agent got %q, want the frame as sent", agent.last())
	}
	// A partly refused batch: the refusals come back at once, the good
	// call goes on alone.
	good := rpc("g", envelope("01JWSGUARD0000000000000003", "echo", `{}`))
	first := roundTripFrame(t, conn, "["+good+`,{"jsonrpc":"2.0","method":"nope","id":"x"}]`)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, second, err := conn.Read(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(first)+string(second), `"reason":"unknown_method"`) || !strings.Contains(string(first)+string(second), `"t-01JWSGUARD0000000000000003"`) {
		t.Fatalf("batch answers %s and %s", first, second)
	}
	if agent.last() != "["+good+"]" {
		t.Fatalf("the agent got %q", agent.last())
	}
	evs := usageEvents(t, runningDB(t))
	for _, id := range []string{"01JWSGUARD0000000000000001", "01JWSGUARD0000000000000003"} {
		if ev := evs[id]; ev.TokensIn != 7 || ev.Status != "completed" || ev.TaskID != "t-"+id {
			t.Errorf("%s: event %+v", id, ev)
		}
	}
	if len(evs) != 2 {
		t.Fatalf("%d usage events, want 2", len(evs))
	}
}

// A client's socket carries the handshake's chain: every frame is held
// to its sender, recipient, scope, max_tasks and revocation.
func TestWebSocketFramesAreAuthorizedOneByOne(t *testing.T) {
	agent := &wsAgent{}
	srv := httptest.NewServer(agent)
	defer srv.Close()
	s := startSidecar(t, upstreamAddr(srv), requireOpts)
	token := mintViaAdmin(t, s, `{"delegate":"urn:asap:agent:client","scopes":["task.execute"],"max_tasks":2}`)
	conn := dialWS(t, s, token)

	wrongSender := strings.Replace(envelope("01JWSAUTH00000000000000001", "echo", `{}`), "urn:asap:agent:client", "urn:asap:agent:mallory", 1)
	if a := decodeAnswer(t, roundTripFrame(t, conn, rpc("w", wrongSender))); a.Error == nil || a.Error.Code != protocol.CodeTokenAudience {
		t.Fatalf("wrong sender over the socket: %+v", a.Error)
	}
	restore := strings.Replace(envelope("01JWSAUTH00000000000000002", "echo", `{}`), "task.request", "state.restore", 1)
	if a := decodeAnswer(t, roundTripFrame(t, conn, rpc("w", restore))); a.Error == nil || a.Error.Code != protocol.CodeTokenScope {
		t.Fatalf("unscoped payload over the socket: %+v", a.Error)
	}
	for i := 0; i < 3; i++ {
		a := decodeAnswer(t, roundTripFrame(t, conn, rpc(fmt.Sprint("m", i), envelope(fmt.Sprintf("01JWSAUTH0000000000000001%d", i), "echo", `{}`))))
		if i < 2 && a.Result == nil || i == 2 && (a.Error == nil || a.Error.Code != protocol.CodeTokenLimitSpent) {
			t.Fatalf("call %d with max_tasks 2: %+v", i, a.Error)
		}
	}
	if n := agent.count(); n != 2 {
		t.Fatalf("the agent got %d frames, want the 2 the token allows", n)
	}

	// A revocation takes effect on the next frame of an open socket.
	token2 := mintViaAdmin(t, s, `{"delegate":"urn:asap:agent:client","scopes":["task.execute"]}`)
	conn2 := dialWS(t, s, token2)
	if a := decodeAnswer(t, roundTripFrame(t, conn2, rpc("r", envelope("01JWSAUTH00000000000000021", "echo", `{}`)))); a.Result == nil {
		t.Fatalf("before revocation: %+v", a.Error)
	}
	leaf, _ := delegation.ParseLink(token2)
	req, _ := http.NewRequest(http.MethodDelete, "http://"+s.adminAddr+"/asap/delegations/"+leaf.Claims.ID, nil)
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if a := decodeAnswer(t, roundTripFrame(t, conn2, rpc("r", envelope("01JWSAUTH00000000000000022", "echo", `{}`)))); a.Error == nil || a.Error.Code != protocol.CodeTokenRevoked {
		t.Fatalf("after revocation: %+v", a.Error)
	}
	if n := agent.count(); n != 3 {
		t.Fatalf("the agent got %d frames, want 3", n)
	}
}

// Oversized and binary frames end the socket; nothing of them is passed on.
func TestWebSocketOversizedAndBinaryFrames(t *testing.T) {
	agent := &wsAgent{}
	srv := httptest.NewServer(agent)
	defer srv.Close()
	s := startSidecar(t, upstreamAddr(srv), "agent urn:asap:agent:demo\nmax_body 4KiB")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	conn := dialWS(t, s, "")
	big := rpc("r", envelope("01JWSBIG000000000000000001", "echo", `{"text":"`+strings.Repeat("x", 8<<10)+`"}`))
	if err := conn.Write(ctx, websocket.MessageText, []byte(big)); err != nil {
		t.Fatal(err)
	}
	if _, _, err := conn.Read(ctx); websocket.CloseStatus(err) != websocket.StatusMessageTooBig {
		t.Fatalf("frame over max_body: %v, want close 1009", err)
	}

	conn = dialWS(t, s, "")
	if err := conn.Write(ctx, websocket.MessageBinary, []byte(rpc("r", envelope("01JWSBIN000000000000000001", "echo", `{}`)))); err != nil {
		t.Fatal(err)
	}
	if _, _, err := conn.Read(ctx); websocket.CloseStatus(err) != websocket.StatusUnsupportedData {
		t.Fatalf("binary frame: %v, want close 1003", err)
	}
	if n := agent.count(); n != 0 {
		t.Fatalf("the agent got %d frames", n)
	}
}

// Calls the agent never answers, after the client left and the drain
// gave up, are failed tasks and give back their delegation slots; an id
// pending on the socket cannot be sent again.
func TestWebSocketPendingCallsAtClose(t *testing.T) {
	defer wsDrainTimeout.Store(wsDrainTimeout.Load())
	wsDrainTimeout.Store(int64(200 * time.Millisecond))
	agent := &wsAgent{}
	srv := httptest.NewServer(agent)
	defer srv.Close()
	s := startSidecar(t, upstreamAddr(srv), requireOpts)
	token := mintViaAdmin(t, s, `{"delegate":"urn:asap:agent:client","scopes":["task.execute"],"max_tasks":1}`)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	conn := dialWS(t, s, token)
	if err := conn.Write(ctx, websocket.MessageText, []byte(rpc("p", envelope("01JWSPEND00000000000000001", "skip", `{}`)))); err != nil {
		t.Fatal(err)
	}
	// The same id again while the first is pending.
	msg := roundTripFrame(t, conn, rpc("p", envelope("01JWSPEND00000000000000002", "echo", `{}`)))
	if a := decodeAnswer(t, msg); a.Error == nil || a.Error.Data["reason"] != "duplicate_id" {
		t.Fatalf("pending id reused: %s", msg)
	}
	conn.Close(websocket.StatusNormalClosure, "")
	// The slot comes back: the token's one task can run on a new socket.
	waitFor(t, func() bool { return countsOf(t, "urn:asap:agent:demo").Failed == 1 })
	conn = dialWS(t, s, token)
	if a := decodeAnswer(t, roundTripFrame(t, conn, rpc("q", envelope("01JWSPEND00000000000000003", "echo", `{}`)))); a.Result == nil {
		t.Fatalf("slot not given back: %+v", a.Error)
	}
	if c := countsOf(t, "urn:asap:agent:demo"); c.Forwarded != 2 || c.Failed != 1 || c.Completed != 1 {
		t.Fatalf("counts = %+v", c)
	}
}

// sla.subscribe and sla.unsubscribe are answered by the sidecar itself.
func TestWebSocketSLASubscription(t *testing.T) {
	agent := &wsAgent{}
	srv := httptest.NewServer(agent)
	defer srv.Close()
	s := startSidecar(t, upstreamAddr(srv), "agent urn:asap:agent:demo")
	conn := dialWS(t, s, "")
	if msg := roundTripFrame(t, conn, `{"jsonrpc":"2.0","method":"sla.subscribe","params":{},"id":1}`); string(msg) != `{"jsonrpc":"2.0","result":{"subscribed":true},"id":1}` {
		t.Fatalf("subscribe: %s", msg)
	}
	// A breach reaches the subscribed socket.
	hub.publish(Notification{JSONRPC: "2.0", Method: "sla.breach", Params: NotificationParams{Breach: sla.Breach{ID: "brk_ws", AgentID: "urn:asap:agent:demo"}}})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, msg, err := conn.Read(ctx)
	if err != nil || !strings.Contains(string(msg), `"method":"sla.breach"`) || !strings.Contains(string(msg), `"brk_ws"`) {
		t.Fatalf("breach notification: %s %v", msg, err)
	}
	if msg := roundTripFrame(t, conn, `{"jsonrpc":"2.0","method":"sla.unsubscribe","id":"u"}`); string(msg) != `{"jsonrpc":"2.0","result":{"unsubscribed":true},"id":"u"}` {
		t.Fatalf("unsubscribe: %s", msg)
	}
	if n := agent.count(); n != 0 {
		t.Fatalf("the agent got %d SLA frames", n)
	}
}

// waitFor polls cond until it holds, failing after a deadline.
func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not reached within 10s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// The handshake timeout bounds the handshake only: a socket lives on
// after it. Before, the route's request carried the dial's context, and
// reverse_proxy closed the agent's side once that context expired, so
// every socket older than the timeout broke ("the agent's connection
// broke"). The wait below is the point of the test: with the bug the
// socket is gone long before it ends.
func TestWebSocketOutlivesTheHandshakeTimeout(t *testing.T) {
	saved := wsHandshakeTimeout
	wsHandshakeTimeout = 100 * time.Millisecond
	defer func() { wsHandshakeTimeout = saved }()
	agent := &wsAgent{}
	srv := httptest.NewServer(agent)
	defer srv.Close()
	s := startSidecar(t, upstreamAddr(srv), "agent urn:asap:agent:demo")
	conn := dialWS(t, s, "")
	for i, id := range []string{"01JWSLIVES0000000000000001", "01JWSLIVES0000000000000002"} {
		if i > 0 {
			time.Sleep(10 * wsHandshakeTimeout)
		}
		msg := roundTripFrame(t, conn, rpc("r", envelope(id, "echo", `{}`)))
		if a := decodeAnswer(t, msg); a.Result == nil {
			t.Fatalf("call %d: answer %s", i+1, msg)
		}
	}
}
