package caddymodule

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"math/rand"
	"net"
	"net/http"
	"net/http/httptest"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/coder/websocket"

	"github.com/asap-sidecar/asap-sidecar/caddymodule/delegation"
	"github.com/asap-sidecar/asap-sidecar/caddymodule/demoagent"
	"github.com/asap-sidecar/asap-sidecar/caddymodule/metering"
	"github.com/asap-sidecar/asap-sidecar/caddymodule/protocol"
)

// SPEC §2a's invariant, end to end: over a seeded mix of valid, retried,
// malicious and malformed traffic on HTTP (single, batch, gzip) and
// WebSocket, the tasks the agent executed are exactly the tasks metered,
// with the same token totals, and nothing refused reached the agent.

const (
	invClient = "urn:asap:agent:client"
	invBob    = "urn:asap:agent:bob"
	invSmall  = "urn:asap:agent:small"

	invGoodPrefix  = "01JGOOD"  // calls that must run
	invBadPrefix   = "01JBAD"   // calls that must never reach the agent
	invSmallPrefix = "01JSMALL" // calls under the max_tasks 3 token

	invMaxBody   = 32 << 10
	invRounds    = 8
	invRoundSize = 50
	invSmallMax  = 3
	// invHoldWork is how long a held task takes over HTTP when its caller
	// does not hang up first.
	invHoldWork = 2 * time.Second
)

// invTokens is what the agent reports for a task with input n.
func invTokens(n int) (in, out int64) { return 3, 5 + int64(n%4) }

type invKey struct{ consumer, envID string }

// invAgent is the one agent behind the sidecar: POST /asap (single and
// batch, gzip bodies decoded by itself) and WebSocket /asap/ws. It reads
// JSON leniently, as a careless agent would, and executes every call it
// gets, counting them and the tokens it reports.
type invAgent struct {
	demo http.Handler // health and manifest, for the sidecar's SLA probes

	// held gets the envelope id of each call with skill "hold" once it
	// ran; the answer waits for the hold function of the transport.
	held    chan string
	release chan struct{} // lets held WebSocket answers go
	wsDone  chan struct{} // one value when a held WebSocket call is done

	mu         sync.Mutex
	calls      int                 // calls executed, retries included
	tasks      map[invKey]*invTask // by (consumer, envelope id)
	digests    map[[32]byte]bool   // envelopes executed, as received
	violations []string
}

type invTask struct {
	runs    int
	in, out int64
}

func newInvAgent(t *testing.T) *invAgent {
	demo := &demoagent.Agent{}
	if err := demo.Provision(caddy.Context{}); err != nil {
		t.Fatal(err)
	}
	return &invAgent{
		demo:    http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _ = demo.ServeHTTP(w, r, nil) }),
		tasks:   map[invKey]*invTask{},
		digests: map[[32]byte]bool{},
		held:    make(chan string, 16),
		release: make(chan struct{}),
		wsDone:  make(chan struct{}, 256),
	}
}

func (a *invAgent) violation(format string, args ...any) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.violations = append(a.violations, fmt.Sprintf(format, args...))
}

func (a *invAgent) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch {
	case r.URL.Path == "/asap/ws":
		a.serveWS(w, r)
	case r.URL.Path == "/asap" && r.Method == http.MethodPost:
		a.servePOST(w, r)
	case strings.HasPrefix(r.URL.Path, "/.well-known/asap/"):
		a.demo.ServeHTTP(w, r)
	default:
		a.violation("unexpected %s %s", r.Method, r.URL.Path)
		http.NotFound(w, r)
	}
}

func (a *invAgent) servePOST(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get("Upgrade") != "" {
		a.violation("a POST reached the agent with Upgrade: %q", r.Header.Get("Upgrade"))
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, 16<<20))
	if err != nil {
		a.violation("reading a body: %v", err)
		return
	}
	switch enc := r.Header.Get("Content-Encoding"); enc {
	case "":
	case "gzip":
		zr, err := gzip.NewReader(bytes.NewReader(body))
		if err == nil {
			body, err = io.ReadAll(io.LimitReader(zr, 16<<20))
		}
		if err != nil {
			a.violation("a gzip body the agent cannot read: %v", err)
			http.Error(w, "bad gzip", http.StatusBadRequest)
			return
		}
	default:
		a.violation("a body in Content-Encoding %q reached the agent", enc)
		http.Error(w, "unsupported encoding", http.StatusUnsupportedMediaType)
		return
	}
	if len(body) > invMaxBody {
		a.violation("a body of %d bytes (past max_body) reached the agent", len(body))
	}
	// A held call is a slow task: the agent works until it is done or
	// its caller hangs up.
	out := a.run(body, func() {
		t := time.NewTimer(invHoldWork)
		defer t.Stop()
		select {
		case <-r.Context().Done():
		case <-t.C:
		}
	})
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(out)
}

func (a *invAgent) serveWS(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet || !headerHasToken(r.Header, "Connection", "upgrade") {
		a.violation("a %s on /asap/ws that is not a WebSocket handshake reached the agent", r.Method)
	}
	conn, err := websocket.Accept(w, r, nil)
	if err != nil {
		return
	}
	defer conn.CloseNow()
	ctx := r.Context()
	conn.SetReadLimit(16 << 20)
	// A frame with a held call is worked on aside, as an async agent
	// does, while the socket goes on being read; its answer goes out
	// once released, unless the socket was closed meanwhile.
	closed := make(chan struct{})
	var holding sync.WaitGroup
	defer func() {
		close(closed)
		holding.Wait()
	}()
	hold := func() {
		select {
		case <-a.release:
		case <-closed:
		}
	}
	for {
		typ, msg, err := conn.Read(ctx)
		if err != nil {
			return
		}
		if typ != websocket.MessageText {
			a.violation("a binary frame reached the agent: %.60q", msg)
			continue
		}
		if len(msg) > invMaxBody {
			a.violation("a frame of %d bytes (past max_body) reached the agent", len(msg))
		}
		if bytes.Contains(msg, []byte(`"skill_id":"hold"`)) {
			holding.Add(1)
			go func() {
				defer holding.Done()
				defer func() { a.wsDone <- struct{}{} }()
				_ = conn.Write(ctx, websocket.MessageText, a.run(msg, hold))
			}()
			continue
		}
		if err := conn.Write(ctx, websocket.MessageText, a.run(msg, hold)); err != nil {
			return
		}
	}
}

// run executes every call of a JSON-RPC body and returns the answer;
// calls with skill "hold" are answered once hold returns.
func (a *invAgent) run(body []byte, hold func()) []byte {
	var held []string
	trimmed := bytes.TrimSpace(body)
	batch := len(trimmed) > 0 && trimmed[0] == '['
	var msgs []json.RawMessage
	if batch {
		if err := json.Unmarshal(trimmed, &msgs); err != nil {
			a.violation("an unparsable batch reached the agent: %.80q", body)
			return []byte(`{"jsonrpc":"2.0","error":{"code":-32700,"message":"parse error"},"id":null}`)
		}
	} else {
		msgs = []json.RawMessage{trimmed}
	}
	answers := make([]json.RawMessage, 0, len(msgs))
	for _, m := range msgs {
		var c struct {
			ID     any    `json:"id"`
			Method string `json:"method"`
			Params struct {
				Envelope json.RawMessage `json:"envelope"`
			} `json:"params"`
		}
		var env struct {
			ID      string `json:"id"`
			Sender  string `json:"sender"`
			Payload struct {
				Skill string `json:"skill_id"`
				Input struct {
					N int `json:"n"`
				} `json:"input"`
			} `json:"payload"`
		}
		if err := json.Unmarshal(m, &c); err != nil {
			a.violation("an unparsable call reached the agent: %.80q", m)
			continue
		}
		if err := json.Unmarshal(c.Params.Envelope, &env); err != nil {
			a.violation("a call without a readable envelope reached the agent: %.80q", m)
			continue
		}
		if c.Method != protocol.MethodSend || env.ID == "" || strings.HasPrefix(env.ID, invBadPrefix) || !protocol.ValidID(env.ID) {
			a.violation("a call that must be refused reached the agent: method %q, envelope id %q", c.Method, env.ID)
		}
		in, out := invTokens(env.Payload.Input.N)
		a.mu.Lock()
		a.calls++
		k := invKey{env.Sender, env.ID}
		task := a.tasks[k]
		if task == nil {
			task = &invTask{in: in, out: out}
			a.tasks[k] = task
		} else if task.in != in || task.out != out {
			a.violations = append(a.violations, fmt.Sprintf("task %v ran again with other tokens (%d/%d, first %d/%d)", k, in, out, task.in, task.out))
		}
		task.runs++
		a.digests[sha256.Sum256(c.Params.Envelope)] = true
		a.mu.Unlock()
		if env.Payload.Skill == "hold" {
			held = append(held, env.ID)
		}

		answer, _ := json.Marshal(map[string]any{
			"jsonrpc": "2.0",
			"id":      c.ID,
			"result": map[string]any{"envelope": map[string]any{
				"id": "01JANSWER" + env.ID[min(len(env.ID), 9):], "asap_version": "0.1", "timestamp": "2026-11-26T01:00:01Z",
				"sender": "urn:asap:agent:demo", "recipient": env.Sender, "payload_type": "task.response", "correlation_id": env.ID,
				"payload": map[string]any{"task_id": "t-" + env.ID, "status": "completed",
					"metrics": map[string]any{"tokens_in": in, "tokens_out": out}},
			}},
		})
		answers = append(answers, answer)
	}
	if len(held) > 0 {
		for _, id := range held {
			a.held <- id
		}
		hold()
	}
	if !batch {
		if len(answers) == 0 {
			return []byte(`{"jsonrpc":"2.0","error":{"code":-32600,"message":"invalid"},"id":null}`)
		}
		return answers[0]
	}
	out, _ := json.Marshal(answers)
	return out
}

// invWant is what a call should get.
type invWant int

const (
	wantAccept invWant = iota // answered by the agent
	wantRefuse                // refused by the sidecar
	wantEither                // depends on timing (max_tasks, a contested id)
)

// invCall is one JSON-RPC call the test sends.
type invCall struct {
	raw      string // the call object as sent
	idKey    string // its id as the answer carries it ("null": none)
	consumer string
	envID    string
	env      string
	n        int
	digest   [32]byte // of env; zero when the call has no single envelope
	want     invWant
	code     int    // refusal code (0: any)
	reason   string // refusal reason ("": any)
}

func invNewCall(rpcID, consumer, envID string, n int) *invCall {
	env := envelope(envID, "echo", fmt.Sprintf(`{"n":%d}`, n))
	if consumer != invClient {
		env = strings.Replace(env, `"sender":"`+invClient+`"`, `"sender":"`+consumer+`"`, 1)
	}
	return &invCall{raw: rpc(rpcID, env), idKey: fmt.Sprintf("%q", rpcID), consumer: consumer, envID: envID, env: env, n: n,
		digest: sha256.Sum256([]byte(env))}
}

// withRPCID is c sent again under another JSON-RPC id (a retry).
func (c *invCall) withRPCID(rpcID string) *invCall {
	d := *c
	d.raw, d.idKey = rpc(rpcID, c.env), fmt.Sprintf("%q", rpcID)
	return &d
}

func (c *invCall) refusalOK(e *rpcError) bool {
	return e != nil && (c.code == 0 || e.Code == c.code) && (c.reason == "" || e.Data["reason"] == c.reason)
}

// invGen generates the traffic, deterministically from its seed.
type invGen struct {
	rng  *rand.Rand
	next int
	done []*invCall // client calls accepted in earlier rounds
	cur  []*invCall // this round's
	bomb []byte
	// bobUsed: client envelope ids another consumer used too.
	bobUsed map[string]bool
}

func (g *invGen) seq() int { g.next++; return g.next }

func (g *invGen) rpcID() string { return fmt.Sprintf("r%d", g.seq()) }

func (g *invGen) envID(prefix string) string {
	return fmt.Sprintf("%s%0*d", prefix, 26-len(prefix), g.seq())
}

// good is a fresh call that must run.
func (g *invGen) good(consumer string) *invCall {
	c := invNewCall(g.rpcID(), consumer, g.envID(invGoodPrefix), g.rng.Intn(1000))
	if consumer == invClient {
		g.cur = append(g.cur, c)
	}
	return c
}

func (g *invGen) earlier() *invCall {
	if len(g.done) == 0 {
		return nil
	}
	return g.done[g.rng.Intn(len(g.done))]
}

// retry is an earlier accepted call sent again, or a fresh one in the
// first round.
func (g *invGen) retry() *invCall {
	if c := g.earlier(); c != nil {
		return c.withRPCID(g.rpcID())
	}
	return g.good(invClient)
}

// bad is one call the sidecar must refuse, without a whole-body problem:
// in a batch, the other calls go on.
func (g *invGen) bad() *invCall {
	rid := g.rpcID()
	id := g.envID(invBadPrefix)
	benign := envelope(id, "echo", `{"n":1}`)
	evil := strings.Replace(strings.Replace(benign, invClient, "urn:asap:agent:mallory", 1), "task.request", "state.restore", 1)
	call := func(raw string, idKey string, code int, reason string) *invCall {
		return &invCall{raw: raw, idKey: idKey, consumer: invClient, envID: id, want: wantRefuse, code: code, reason: reason}
	}
	withEnv := func(env string, code int, reason string) *invCall {
		c := call(rpc(rid, env), fmt.Sprintf("%q", rid), code, reason)
		c.env, c.digest = env, sha256.Sum256([]byte(env))
		return c
	}
	q := fmt.Sprintf("%q", rid)
	switch g.rng.Intn(21) {
	case 0:
		return call(`{"jsonrpc":"2.0","method":"asap.send","params":{"envelope":`+evil+`,"Envelope":`+benign+`},"id":`+q+`}`, q, protocol.CodeInvalidRequest, "duplicate_member")
	case 1:
		return call(`{"jsonrpc":"2.0","method":"asap.send","params":{"envelope":`+evil+`,"envelope":`+benign+`},"id":`+q+`}`, q, protocol.CodeInvalidRequest, "duplicate_member")
	case 2:
		return withEnv(strings.Replace(benign, `"sender":`, `"ſender":"urn:asap:agent:mallory","sender":`, 1), protocol.CodeInvalidRequest, "duplicate_member")
	case 3:
		return withEnv(strings.Replace(benign, `"payload_type":`, `"requires_ack":true,"requires_ac\u212a":false,"payload_type":`, 1), protocol.CodeInvalidRequest, "duplicate_member")
	case 4:
		return withEnv(strings.Replace(benign, `"payload_type":`, `"payload_type":"state.restore","payload_\u0074ype":`, 1), protocol.CodeInvalidRequest, "duplicate_member")
	case 5:
		return call(`{"jsonrpc":"2.0","method":"asap.send","method":"other","params":{"envelope":`+benign+`},"id":`+q+`}`, "null", protocol.CodeInvalidRequest, "duplicate_member")
	case 6:
		return call(`{"jsonrpc":"2.0","method":"asap.send","Params":{"envelope":`+evil+`},"params":{"envelope":`+benign+`},"id":`+q+`}`, "null", protocol.CodeInvalidRequest, "duplicate_member")
	case 7:
		return withEnv(strings.Replace(benign, id, id[:10]+`\u0000`+id[11:], 1), protocol.CodeInvalidParams, "control_character_in_id")
	case 8:
		return withEnv(strings.Replace(benign, id, id[:10]+`\u007f`+id[11:], 1), protocol.CodeInvalidParams, "control_character_in_id")
	case 9:
		c := withEnv(benign, protocol.CodeInvalidParams, "control_character_in_id")
		c.raw, c.idKey = strings.Replace(c.raw, `"id":`+q, `"id":"r\n`+rid[1:]+`"`, 1), "null"
		return c
	case 10:
		return withEnv(strings.Replace(benign, `"payload_type":"task.request"`, `"payload_type":"task.response","correlation_id":"c\t1"`, 1), protocol.CodeInvalidParams, "control_character_in_id")
	case 11:
		return withEnv(strings.Replace(benign, invClient, "urn:asap:agent:mallory", 1), protocol.CodeTokenAudience, "sender_not_audience")
	case 12:
		return withEnv(strings.Replace(benign, invClient, "not-a-urn", 1), protocol.CodeInvalidParams, "invalid_sender_urn")
	case 13:
		return withEnv(strings.Replace(benign, `"recipient":"urn:asap:agent:demo"`, `"recipient":"urn:asap:agent:other"`, 1), protocol.CodeTokenAudience, "recipient_mismatch")
	case 14:
		return withEnv(strings.Replace(benign, "task.request", "state.restore", 1), protocol.CodeTokenScope, "action_not_granted")
	case 15:
		return call(`{"jsonrpc":"2.0","method":"tasks.run","params":{"envelope":`+benign+`},"id":`+q+`}`, q, protocol.CodeMethodNotFound, "unknown_method")
	case 16:
		return call(`{"jsonrpc":"2.0","method":"asap.send","params":[`+benign+`],"id":`+q+`}`, q, protocol.CodeInvalidParams, "params_not_object")
	case 17:
		return call(`{"jsonrpc":"2.0","method":"asap.send","params":{"envelope":"`+id+`"},"id":`+q+`}`, q, protocol.CodeInvalidParams, "envelope_not_object")
	case 18:
		return call(`{"jsonrpc":"2.0","method":"asap.send","params":{"Envelope":`+benign+`},"id":`+q+`}`, q, protocol.CodeInvalidParams, "missing_envelope")
	case 19:
		return call(`{"jsonrpc":"1.0","method":"asap.send","params":{"envelope":`+benign+`},"id":`+q+`}`, q, protocol.CodeInvalidRequest, "wrong_jsonrpc_version")
	default:
		return call(`{"jsonrpc":"2.0","method":"asap.send","params":{"envelope":`+benign+`},"id":{"x":`+q+`}}`, "null", protocol.CodeInvalidRequest, "invalid_id")
	}
}

// reuse is an earlier call's envelope id with another payload: refused.
func (g *invGen) reuse() *invCall {
	e := g.earlier()
	if e == nil {
		return g.bad()
	}
	c := invNewCall(g.rpcID(), invClient, e.envID, e.n+1+g.rng.Intn(50))
	c.want, c.code, c.reason = wantRefuse, protocol.CodeInvalidRequest, "envelope_id_reused"
	return c
}

// wholeBad is a body refused as a whole: no call of it is read.
type wholeBad struct {
	body   string
	code   int
	reason string
	calls  []*invCall // calls inside it, all refused
}

func (g *invGen) wholeBad(ws bool) wholeBad {
	id := g.envID(invBadPrefix)
	benign := rpc(g.rpcID(), envelope(id, "echo", `{"n":2}`))
	n := 7
	if ws {
		n = 6 // an empty frame is not sent on a socket
	}
	switch g.rng.Intn(n) {
	case 0:
		return wholeBad{body: "not json " + benign, code: protocol.CodeParseError, reason: "invalid_json"}
	case 1:
		return wholeBad{body: benign[:len(benign)/2], code: protocol.CodeParseError, reason: "invalid_json"}
	case 2:
		return wholeBad{body: "[]", code: protocol.CodeInvalidRequest, reason: "empty_batch"}
	case 3:
		return wholeBad{body: "42", code: protocol.CodeInvalidRequest, reason: "not_an_object"}
	case 4:
		return wholeBad{body: strings.Replace(benign, `"n":2`, "\"n\":\"\xff\"", 1), code: protocol.CodeParseError, reason: "invalid_utf8"}
	case 5:
		a := g.good(invClient) // a good call, refused with its batch
		g.cur = g.cur[:len(g.cur)-1]
		b := invNewCall(strings.Trim(a.idKey, `"`), invClient, g.envID(invBadPrefix), 3)
		a.want, b.want = wantRefuse, wantRefuse
		return wholeBad{body: "[" + a.raw + "," + b.raw + "]", code: protocol.CodeInvalidRequest, reason: "duplicate_id", calls: []*invCall{a, b}}
	default:
		return wholeBad{body: "", code: protocol.CodeParseError, reason: "empty_body"}
	}
}

// invLedger is what the clients saw.
type invLedger struct {
	mu           sync.Mutex
	accepted     map[invKey]int // answered calls by task
	acceptedN    int
	refusedCalls int
	refusedWhole int // requests, frames and sockets refused as a whole
	refused      map[[32]byte]string
	smallOK      int
	smallTried   int
}

func (l *invLedger) accept(c *invCall) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.accepted[invKey{c.consumer, c.envID}]++
	l.acceptedN++
	if c.consumer == invSmall {
		l.smallOK++
	}
}

func (l *invLedger) refuse(c *invCall, op string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.refusedCalls++
	if c.digest != ([32]byte{}) {
		l.refused[c.digest] = op + " " + c.envID
	}
}

func (l *invLedger) whole() {
	l.mu.Lock()
	l.refusedWhole++
	l.mu.Unlock()
}

// invRun sends the traffic and checks every answer.
type invRun struct {
	t               *testing.T
	s               *sidecar
	hc              *http.Client
	big, bob, small string // tokens
	led             invLedger
	deadline        time.Time
}

func (r *invRun) ctx() (context.Context, context.CancelFunc) {
	return context.WithDeadline(context.Background(), r.deadline)
}

// post sends one POST /asap and returns status and body.
func (r *invRun) post(body []byte, enc, token string) (int, []byte, error) {
	ctx, cancel := r.ctx()
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, r.s.url+"/asap", bytes.NewReader(body))
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	if enc != "" {
		req.Header.Set("Content-Encoding", enc)
	}
	if token != "" {
		req.Header.Set(delegation.Header, token)
	}
	resp, err := r.hc.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, b, err
}

// rawPost sends a hand-written POST, so that Connection and Upgrade reach
// the sidecar as written.
func (r *invRun) rawPost(headers, body string) (int, []byte, error) {
	conn, err := net.DialTimeout("tcp", strings.TrimPrefix(r.s.url, "http://"), 5*time.Second)
	if err != nil {
		return 0, nil, err
	}
	defer conn.Close()
	_ = conn.SetDeadline(r.deadline)
	req := fmt.Sprintf("POST /asap HTTP/1.1\r\nHost: sidecar\r\nContent-Type: application/json\r\n%s: %s\r\n%sContent-Length: %d\r\n\r\n%s",
		delegation.Header, r.big, headers, len(body), body)
	if _, err := io.WriteString(conn, req); err != nil {
		return 0, nil, err
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, b, err
}

func invAnswers(b []byte) ([]rpcAnswer, error) {
	b = bytes.TrimSpace(b)
	if len(b) > 0 && b[0] == '[' {
		var as []rpcAnswer
		err := json.Unmarshal(b, &as)
		return as, err
	}
	var a rpcAnswer
	err := json.Unmarshal(b, &a)
	return []rpcAnswer{a}, err
}

func invIDKey(raw json.RawMessage) string {
	var v any
	if len(raw) == 0 || json.Unmarshal(raw, &v) != nil {
		return "null"
	}
	b, _ := json.Marshal(v)
	return string(b)
}

// judge checks one call's answer and books it.
func (r *invRun) judge(op string, c *invCall, a *rpcAnswer) {
	accepted := a.Error == nil && a.Result != nil
	switch {
	case accepted && c.want == wantRefuse:
		r.t.Errorf("%s: call %s (envelope %q) was answered by the agent, want refusal %d %s", op, c.idKey, c.envID, c.code, c.reason)
	case !accepted && c.want == wantAccept:
		r.t.Errorf("%s: call %s (envelope %q) was refused: %+v", op, c.idKey, c.envID, a.Error)
	case !accepted && !c.refusalOK(a.Error):
		r.t.Errorf("%s: call %s (envelope %q) refused with %+v, want %d %s", op, c.idKey, c.envID, a.Error, c.code, c.reason)
	}
	if !accepted {
		r.led.refuse(c, op)
		return
	}
	if got := a.Result.Envelope.Payload.TaskID; got != "t-"+c.envID {
		r.t.Errorf("%s: call %s answered with task %q, want t-%s", op, c.idKey, got, c.envID)
	}
	r.led.accept(c)
}

// settle matches answers to calls: one answer for a single call, by id
// in a batch (calls refused before their id was read are answered with
// id null).
func (r *invRun) settle(op string, calls []*invCall, answers []rpcAnswer, batch bool) {
	if !batch {
		if len(answers) != 1 || len(calls) != 1 {
			r.t.Errorf("%s: %d answers for %d calls", op, len(answers), len(calls))
			return
		}
		r.judge(op, calls[0], &answers[0])
		return
	}
	byID := map[string]*rpcAnswer{}
	var nulls []*rpcAnswer
	for i := range answers {
		k := invIDKey(answers[i].ID)
		if k == "null" {
			nulls = append(nulls, &answers[i])
			continue
		}
		if byID[k] != nil {
			r.t.Errorf("%s: two answers for id %s", op, k)
		}
		byID[k] = &answers[i]
	}
	for _, c := range calls {
		var a *rpcAnswer
		if c.idKey == "null" {
			for i, n := range nulls {
				if c.refusalOK(n.Error) {
					a, nulls = n, append(nulls[:i:i], nulls[i+1:]...)
					break
				}
			}
		} else {
			a = byID[c.idKey]
			delete(byID, c.idKey)
		}
		if a == nil {
			r.t.Errorf("%s: no answer for call %s (envelope %q)", op, c.idKey, c.envID)
			continue
		}
		r.judge(op, c, a)
	}
	for k := range byID {
		r.t.Errorf("%s: an answer for id %s, which this request did not send", op, k)
	}
	if len(nulls) > 0 {
		r.t.Errorf("%s: %d unexpected answers with id null", op, len(nulls))
	}
}

// httpCalls posts calls (as one call or a batch), optionally gzipped.
func (r *invRun) httpCalls(op, token string, calls []*invCall, batch, gz bool) {
	body := []byte(calls[0].raw)
	if batch {
		raws := make([]string, len(calls))
		for i, c := range calls {
			raws[i] = c.raw
		}
		body = []byte("[" + strings.Join(raws, ",") + "]")
	}
	enc := ""
	if gz {
		body, enc = invGzip(body), "gzip"
	}
	status, b, err := r.post(body, enc, token)
	if err != nil {
		r.t.Errorf("%s: %v", op, err)
		return
	}
	if status != http.StatusOK {
		r.t.Errorf("%s: status %d: %.200s", op, status, b)
		return
	}
	as, err := invAnswers(b)
	if err != nil {
		r.t.Errorf("%s: answer is not JSON-RPC: %v: %.200s", op, err, b)
		return
	}
	r.settle(op, calls, as, batch)
}

// refusedWhole checks a request refused as a whole and books its calls.
func (r *invRun) refusedWhole(op string, status int, b []byte, err error, wantStatus, code int, reason string, calls []*invCall) {
	r.led.whole()
	for _, c := range calls {
		r.led.refuse(c, op)
	}
	if err != nil {
		r.t.Errorf("%s: %v", op, err)
		return
	}
	if status != wantStatus {
		r.t.Errorf("%s: status %d, want %d: %.200s", op, status, wantStatus, b)
		return
	}
	var a rpcAnswer
	if json.Unmarshal(b, &a) != nil || a.Error == nil || (code != 0 && a.Error.Code != code) || (reason != "" && a.Error.Data["reason"] != reason) {
		r.t.Errorf("%s: answer %.200s, want %d %s", op, b, code, reason)
	}
}

func invGzip(b []byte) []byte {
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	_, _ = zw.Write(b)
	_ = zw.Close()
	return buf.Bytes()
}

// dial opens a socket through the sidecar.
func (r *invRun) dial(token string) (*websocket.Conn, *http.Response, error) {
	ctx, cancel := r.ctx()
	defer cancel()
	opts := &websocket.DialOptions{HTTPClient: r.hc}
	if token != "" {
		opts.HTTPHeader = http.Header{delegation.Header: {token}}
	}
	return websocket.Dial(ctx, strings.Replace(r.s.url, "http", "ws", 1)+"/asap/ws", opts)
}

// wsCalls sends calls as one frame and reads frames until every call is
// answered (refusals of a batch and the agent's answer come separately).
func (r *invRun) wsCalls(op string, conn *websocket.Conn, calls []*invCall, batch bool) {
	frame := calls[0].raw
	if batch {
		raws := make([]string, len(calls))
		for i, c := range calls {
			raws[i] = c.raw
		}
		frame = "[" + strings.Join(raws, ",") + "]"
	}
	answers, err := r.wsExchange(conn, frame, len(calls))
	if err != nil {
		r.t.Errorf("%s: %v", op, err)
		return
	}
	r.settle(op, calls, answers, batch)
}

// wsExchange writes frame and reads frames until want answers came.
func (r *invRun) wsExchange(conn *websocket.Conn, frame string, want int) ([]rpcAnswer, error) {
	ctx, cancel := r.ctx()
	defer cancel()
	if err := conn.Write(ctx, websocket.MessageText, []byte(frame)); err != nil {
		return nil, fmt.Errorf("write: %w", err)
	}
	var answers []rpcAnswer
	for len(answers) < want {
		_, msg, err := conn.Read(ctx)
		if err != nil {
			return answers, fmt.Errorf("read after %d of %d answers: %w", len(answers), want, err)
		}
		as, err := invAnswers(msg)
		if err != nil {
			return answers, fmt.Errorf("frame is not JSON-RPC: %v: %.200s", err, msg)
		}
		answers = append(answers, as...)
	}
	return answers, nil
}

// wsWhole sends a frame refused as a whole: one error frame back.
func (r *invRun) wsWhole(op string, conn *websocket.Conn, w wholeBad) {
	as, err := r.wsExchange(conn, w.body, 1)
	var b []byte
	if err == nil {
		b, _ = json.Marshal(as[0])
	}
	r.refusedWhole(op, http.StatusOK, b, err, http.StatusOK, w.code, w.reason, w.calls)
}

// wsClosed sends frames on a fresh socket and expects the sidecar to
// close it with status.
func (r *invRun) wsClosed(op string, first *invCall, typ websocket.MessageType, frame []byte, status websocket.StatusCode, calls []*invCall) {
	conn, _, err := r.dial(r.big)
	if err != nil {
		r.t.Errorf("%s: dial: %v", op, err)
		return
	}
	defer conn.CloseNow()
	if first != nil {
		r.wsCalls(op, conn, []*invCall{first}, false)
	}
	ctx, cancel := r.ctx()
	defer cancel()
	r.led.whole()
	for _, c := range calls {
		r.led.refuse(c, op)
	}
	if err := conn.Write(ctx, typ, frame); err != nil {
		r.t.Errorf("%s: write: %v", op, err)
		return
	}
	if _, msg, err := conn.Read(ctx); websocket.CloseStatus(err) != status {
		r.t.Errorf("%s: read %q, %v; want close %d", op, msg, err, status)
	}
}

type invOp struct {
	name string
	ws   bool // runs on a WebSocket lane, with its socket
	run  func(r *invRun, conn *websocket.Conn)
}

// ops is one round: every kind once, then random ones.
func (g *invGen) round(size int) []invOp {
	kinds := g.kinds()
	ops := make([]invOp, 0, size)
	for _, k := range kinds {
		ops = append(ops, k.make())
	}
	total := 0
	for _, k := range kinds {
		total += k.weight
	}
	for len(ops) < size {
		n := g.rng.Intn(total)
		for _, k := range kinds {
			if n -= k.weight; n < 0 {
				ops = append(ops, k.make())
				break
			}
		}
	}
	g.rng.Shuffle(len(ops), func(i, j int) { ops[i], ops[j] = ops[j], ops[i] })
	g.done = append(g.done, g.cur...)
	g.cur = nil
	return ops
}

type invKind struct {
	weight int
	make   func() invOp
}

func (g *invGen) batch(minGood, maxGood, maxBad int) []*invCall {
	var calls []*invCall
	for i := minGood + g.rng.Intn(maxGood-minGood+1); i > 0; i-- {
		if g.rng.Intn(4) == 0 {
			calls = append(calls, g.retry())
		} else {
			calls = append(calls, g.good(invClient))
		}
	}
	for i := max(1, g.rng.Intn(maxBad+1)); maxBad > 0 && i > 0; i-- {
		if g.rng.Intn(4) == 0 {
			calls = append(calls, g.reuse())
		} else {
			calls = append(calls, g.bad())
		}
	}
	g.rng.Shuffle(len(calls), func(i, j int) { calls[i], calls[j] = calls[j], calls[i] })
	return calls
}

func (g *invGen) kinds() []invKind {
	return []invKind{
		{10, func() invOp {
			c := g.good(invClient)
			return invOp{name: "http single", run: func(r *invRun, _ *websocket.Conn) { r.httpCalls("http single", r.big, []*invCall{c}, false, false) }}
		}},
		{5, func() invOp {
			c := g.good(invClient)
			return invOp{name: "http gzip single", run: func(r *invRun, _ *websocket.Conn) { r.httpCalls("http gzip single", r.big, []*invCall{c}, false, true) }}
		}},
		{5, func() invOp {
			calls, gz := g.batch(2, 4, 0), g.rng.Intn(2) == 0
			return invOp{name: "http batch", run: func(r *invRun, _ *websocket.Conn) { r.httpCalls("http batch", r.big, calls, true, gz) }}
		}},
		{6, func() invOp {
			calls, gz := g.batch(1, 3, 2), g.rng.Intn(2) == 0
			return invOp{name: "http mixed batch", run: func(r *invRun, _ *websocket.Conn) { r.httpCalls("http mixed batch", r.big, calls, true, gz) }}
		}},
		{6, func() invOp {
			c := g.retry()
			return invOp{name: "http retry", run: func(r *invRun, _ *websocket.Conn) { r.httpCalls("http retry", r.big, []*invCall{c}, false, false) }}
		}},
		{3, func() invOp {
			a := g.good(invClient)
			b := a.withRPCID(g.rpcID())
			return invOp{name: "http concurrent retry", run: func(r *invRun, _ *websocket.Conn) {
				var wg sync.WaitGroup
				for _, c := range []*invCall{a, b} {
					wg.Add(1)
					go func() {
						defer wg.Done()
						r.httpCalls("http concurrent retry", r.big, []*invCall{c}, false, false)
					}()
				}
				wg.Wait()
			}}
		}},
		{4, func() invOp {
			c := g.reuse()
			return invOp{name: "http reused id", run: func(r *invRun, _ *websocket.Conn) { r.httpCalls("http reused id", r.big, []*invCall{c}, false, false) }}
		}},
		{2, func() invOp {
			id := g.envID(invGoodPrefix)
			a, b := invNewCall(g.rpcID(), invClient, id, 1), invNewCall(g.rpcID(), invClient, id, 2)
			for _, c := range []*invCall{a, b} {
				c.want, c.code, c.reason = wantEither, protocol.CodeInvalidRequest, "envelope_id_reused"
			}
			return invOp{name: "http contested id", run: func(r *invRun, _ *websocket.Conn) {
				before := r.acceptedOf(invKey{invClient, id})
				var wg sync.WaitGroup
				for _, c := range []*invCall{a, b} {
					wg.Add(1)
					go func() {
						defer wg.Done()
						r.httpCalls("http contested id", r.big, []*invCall{c}, false, false)
					}()
				}
				wg.Wait()
				if n := r.acceptedOf(invKey{invClient, id}) - before; n != 1 {
					r.t.Errorf("contested id %s: %d calls ran, want exactly 1", id, n)
				}
			}}
		}},
		{3, func() invOp {
			n := g.rng.Intn(1000)
			var c *invCall
			if e := g.earlier(); e != nil && !g.bobUsed[e.envID] {
				g.bobUsed[e.envID] = true
				c = invNewCall(g.rpcID(), invBob, e.envID, n) // another consumer, same id: its own task
			} else {
				c = g.good(invBob)
			}
			return invOp{name: "http other consumer", run: func(r *invRun, _ *websocket.Conn) {
				r.httpCalls("http other consumer", r.bob, []*invCall{c}, false, false)
			}}
		}},
		{4, func() invOp {
			hdr := []string{"Connection: upgrade\r\n", "Connection: x-noupgrade\r\n", "Connection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n",
				"Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"}[g.rng.Intn(4)]
			var w wholeBad
			status := http.StatusOK
			switch g.rng.Intn(3) {
			case 0:
				w = wholeBad{body: "not json", code: protocol.CodeParseError, reason: "invalid_json"}
			case 1:
				c := g.bad()
				w = wholeBad{body: c.raw, code: c.code, reason: c.reason, calls: []*invCall{c}}
			default:
				c := invNewCall(g.rpcID(), invClient, g.envID(invBadPrefix), 4)
				c.want = wantRefuse
				w = wholeBad{body: strings.Repeat(" ", invMaxBody) + c.raw, code: protocol.CodeInvalidRequest, reason: "body_too_large", calls: []*invCall{c}}
				status = http.StatusRequestEntityTooLarge
			}
			return invOp{name: "upgrade POST, bad body", run: func(r *invRun, _ *websocket.Conn) {
				st, b, err := r.rawPost(hdr, w.body)
				r.refusedWhole("upgrade POST, bad body", st, b, err, status, w.code, w.reason, w.calls)
			}}
		}},
		{2, func() invOp {
			c := g.good(invClient)
			return invOp{name: "upgrade POST, valid", run: func(r *invRun, _ *websocket.Conn) {
				st, b, err := r.rawPost("Connection: Upgrade\r\nUpgrade: websocket\r\n", c.raw)
				if err != nil || st != http.StatusOK {
					r.t.Errorf("upgrade POST, valid: %d %v %.200s", st, err, b)
					return
				}
				r.settle("upgrade POST, valid", []*invCall{c}, []rpcAnswer{decodeAnswerOr(r.t, b)}, false)
			}}
		}},
		{10, func() invOp {
			c, gz := g.bad(), g.rng.Intn(3) == 0
			return invOp{name: "http malicious call", run: func(r *invRun, _ *websocket.Conn) {
				r.httpCalls("http malicious call", r.big, []*invCall{c}, false, gz)
			}}
		}},
		{5, func() invOp {
			w := g.wholeBad(false)
			return invOp{name: "http malformed body", run: func(r *invRun, _ *websocket.Conn) {
				st, b, err := r.post([]byte(w.body), "", r.big)
				r.refusedWhole("http malformed body", st, b, err, http.StatusOK, w.code, w.reason, w.calls)
			}}
		}},
		{1, func() invOp {
			c := invNewCall(g.rpcID(), invClient, g.envID(invBadPrefix), 5)
			c.want = wantRefuse
			body := rpc(strings.Trim(c.idKey, `"`), strings.Replace(c.env, `{"n":5}`, `{"n":5,"pad":"`+strings.Repeat("x", invMaxBody)+`"}`, 1))
			return invOp{name: "http oversized", run: func(r *invRun, _ *websocket.Conn) {
				st, b, err := r.post([]byte(body), "", r.big)
				r.refusedWhole("http oversized", st, b, err, http.StatusRequestEntityTooLarge, protocol.CodeInvalidRequest, "body_too_large", []*invCall{c})
			}}
		}},
		{1, func() invOp {
			return invOp{name: "http gzip bomb", run: func(r *invRun, _ *websocket.Conn) {
				st, b, err := r.post(g.bomb, "gzip", r.big)
				r.refusedWhole("http gzip bomb", st, b, err, http.StatusRequestEntityTooLarge, protocol.CodeInvalidRequest, "body_too_large", nil)
			}}
		}},
		{2, func() invOp {
			c := invNewCall(g.rpcID(), invClient, g.envID(invBadPrefix), 6)
			c.want = wantRefuse
			enc := []string{"zstd", "compress", "gzip, br", "x-unknown"}[g.rng.Intn(4)]
			return invOp{name: "http unsupported encoding", run: func(r *invRun, _ *websocket.Conn) {
				st, b, err := r.post([]byte(c.raw), enc, r.big)
				r.refusedWhole("http unsupported encoding "+enc, st, b, err, http.StatusUnsupportedMediaType, protocol.CodeInvalidRequest, "unsupported_encoding", []*invCall{c})
			}}
		}},
		{1, func() invOp {
			c := invNewCall(g.rpcID(), invClient, g.envID(invBadPrefix), 7)
			c.want = wantRefuse
			z := invGzip([]byte(c.raw))
			return invOp{name: "http corrupt gzip", run: func(r *invRun, _ *websocket.Conn) {
				st, b, err := r.post(z[:len(z)/2], "gzip", r.big)
				r.refusedWhole("http corrupt gzip", st, b, err, http.StatusBadRequest, protocol.CodeParseError, "bad_encoding", []*invCall{c})
			}}
		}},
		{2, func() invOp {
			c := invNewCall(g.rpcID(), invClient, g.envID(invBadPrefix), 8)
			c.want, c.code, c.reason = wantRefuse, protocol.CodeTokenMalformed, "missing_token"
			return invOp{name: "http without token", run: func(r *invRun, _ *websocket.Conn) { r.httpCalls("http without token", "", []*invCall{c}, false, false) }}
		}},
		{1, func() invOp {
			first := g.good(invClient)
			c := invNewCall(g.rpcID(), invClient, g.envID(invBadPrefix), 9)
			c.want = wantRefuse
			return invOp{name: "ws binary frame", run: func(r *invRun, _ *websocket.Conn) {
				r.wsClosed("ws binary frame", first, websocket.MessageBinary, []byte(c.raw), websocket.StatusUnsupportedData, []*invCall{c})
			}}
		}},
		{1, func() invOp {
			c := invNewCall(g.rpcID(), invClient, g.envID(invBadPrefix), 10)
			c.want = wantRefuse
			frame := rpc(strings.Trim(c.idKey, `"`), strings.Replace(c.env, `{"n":10}`, `{"n":10,"pad":"`+strings.Repeat("x", invMaxBody)+`"}`, 1))
			return invOp{name: "ws oversized frame", run: func(r *invRun, _ *websocket.Conn) {
				r.wsClosed("ws oversized frame", nil, websocket.MessageText, []byte(frame), websocket.StatusMessageTooBig, []*invCall{c})
			}}
		}},
		{1, func() invOp {
			return invOp{name: "ws without token", run: func(r *invRun, _ *websocket.Conn) {
				r.led.whole()
				conn, resp, err := r.dial("")
				if err == nil {
					conn.CloseNow()
					r.t.Errorf("ws without token: the handshake succeeded")
				} else if resp == nil || resp.StatusCode != http.StatusForbidden {
					r.t.Errorf("ws without token: %v %v", resp, err)
				}
			}}
		}},
		// WebSocket lanes: one persistent socket each.
		{8, func() invOp {
			c := g.good(invClient)
			return invOp{name: "ws single", ws: true, run: func(r *invRun, conn *websocket.Conn) { r.wsCalls("ws single", conn, []*invCall{c}, false) }}
		}},
		{3, func() invOp {
			calls := g.batch(2, 4, 0)
			return invOp{name: "ws batch", ws: true, run: func(r *invRun, conn *websocket.Conn) { r.wsCalls("ws batch", conn, calls, true) }}
		}},
		{4, func() invOp {
			calls := g.batch(1, 3, 2)
			return invOp{name: "ws mixed batch", ws: true, run: func(r *invRun, conn *websocket.Conn) { r.wsCalls("ws mixed batch", conn, calls, true) }}
		}},
		{3, func() invOp {
			c := g.retry()
			return invOp{name: "ws retry", ws: true, run: func(r *invRun, conn *websocket.Conn) { r.wsCalls("ws retry", conn, []*invCall{c}, false) }}
		}},
		{2, func() invOp {
			c := g.reuse()
			return invOp{name: "ws reused id", ws: true, run: func(r *invRun, conn *websocket.Conn) { r.wsCalls("ws reused id", conn, []*invCall{c}, false) }}
		}},
		{6, func() invOp {
			c := g.bad()
			return invOp{name: "ws malicious call", ws: true, run: func(r *invRun, conn *websocket.Conn) { r.wsCalls("ws malicious call", conn, []*invCall{c}, false) }}
		}},
		{3, func() invOp {
			w := g.wholeBad(true)
			return invOp{name: "ws malformed frame", ws: true, run: func(r *invRun, conn *websocket.Conn) { r.wsWhole("ws malformed frame", conn, w) }}
		}},
	}
}

// smallOp is a call under the max_tasks 3 token, over HTTP or on a fresh
// socket: it runs while the token has slots.
func (g *invGen) smallOp(ws bool) invOp {
	c := invNewCall(g.rpcID(), invSmall, g.envID(invSmallPrefix), g.rng.Intn(1000))
	c.want, c.code, c.reason = wantEither, protocol.CodeTokenLimitSpent, "max_tasks_reached"
	if !ws {
		return invOp{name: "http small token", run: func(r *invRun, _ *websocket.Conn) {
			r.led.mu.Lock()
			r.led.smallTried++
			r.led.mu.Unlock()
			r.httpCalls("http small token", r.small, []*invCall{c}, false, false)
		}}
	}
	return invOp{name: "ws small token", run: func(r *invRun, _ *websocket.Conn) {
		r.led.mu.Lock()
		r.led.smallTried++
		r.led.mu.Unlock()
		conn, _, err := r.dial(r.small)
		if err != nil {
			r.t.Errorf("ws small token: dial: %v", err)
			return
		}
		defer conn.Close(websocket.StatusNormalClosure, "")
		r.wsCalls("ws small token", conn, []*invCall{c}, false)
	}}
}

func (r *invRun) acceptedOf(k invKey) int {
	r.led.mu.Lock()
	defer r.led.mu.Unlock()
	return r.led.accepted[k]
}

func decodeAnswerOr(t *testing.T, b []byte) rpcAnswer {
	var a rpcAnswer
	if err := json.Unmarshal(b, &a); err != nil {
		t.Errorf("answer is not JSON-RPC: %v: %.200s", err, b)
	}
	return a
}

func TestInvariantAgentExecutedEqualsMetered(t *testing.T) {
	agent := newInvAgent(t)
	srv := httptest.NewServer(agent)
	defer srv.Close()
	s := startSidecar(t, upstreamAddr(srv), fmt.Sprintf("%s\nmax_body %d", requireOpts, invMaxBody))

	hc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 32, DisableCompression: true}}
	defer hc.CloseIdleConnections()
	r := &invRun{t: t, s: s, hc: hc, deadline: time.Now().Add(90 * time.Second),
		led: invLedger{accepted: map[invKey]int{}, refused: map[[32]byte]string{}}}
	r.big = mintViaAdmin(t, s, `{"delegate":"urn:asap:agent:client","scopes":["task.execute"],"max_tasks":100000}`)
	r.bob = mintViaAdmin(t, s, `{"delegate":"urn:asap:agent:bob","scopes":["task.execute"],"max_tasks":100000}`)
	r.small = mintViaAdmin(t, s, fmt.Sprintf(`{"delegate":"urn:asap:agent:small","scopes":["task.execute"],"max_tasks":%d}`, invSmallMax))

	t.Run("mixed traffic", func(t *testing.T) { invMixed(t, r, agent) })
	t.Run("client leaves before the answer", func(t *testing.T) { invLeaver(t, r, agent) })
}

// invMixed runs the seeded mix and checks the invariant over it.
func invMixed(t *testing.T, r *invRun, agent *invAgent) {
	r.t = t
	s := r.s
	const seed = 20261126
	g := &invGen{rng: rand.New(rand.NewSource(seed)), bobUsed: map[string]bool{}}
	bomb := append(bytes.Repeat([]byte(" "), 4<<20), rpc("bomb", envelope(g.envID(invBadPrefix), "echo", `{}`))...)
	g.bomb = invGzip(bomb)
	var rounds [][]invOp
	for i := 0; i < invRounds; i++ {
		ops := g.round(invRoundSize)
		ops = append(ops, g.smallOp(i%2 == 1))
		rounds = append(rounds, ops)
	}

	// Two persistent sockets for the WebSocket lanes, four HTTP lanes.
	const httpLanes, wsLanes = 4, 2
	socks := make([]*websocket.Conn, wsLanes)
	for i := range socks {
		conn, _, err := r.dial(r.big)
		if err != nil {
			t.Fatalf("dial: %v", err)
		}
		defer conn.CloseNow()
		socks[i] = conn
	}
	started := time.Now()
	ops := 0
	for _, round := range rounds {
		lanes := make([][]invOp, httpLanes+wsLanes)
		h, w := 0, 0
		for _, op := range round {
			if op.ws {
				lanes[httpLanes+w%wsLanes] = append(lanes[httpLanes+w%wsLanes], op)
				w++
			} else {
				lanes[h%httpLanes] = append(lanes[h%httpLanes], op)
				h++
			}
		}
		var wg sync.WaitGroup
		for i, lane := range lanes {
			var conn *websocket.Conn
			if i >= httpLanes {
				conn = socks[i-httpLanes]
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				for _, op := range lane {
					if time.Now().After(r.deadline) {
						t.Errorf("deadline passed before %s", op.name)
						return
					}
					op.run(r, conn)
				}
			}()
		}
		wg.Wait()
		ops += len(round)
	}
	for _, conn := range socks {
		conn.Close(websocket.StatusNormalClosure, "")
	}
	t.Logf("%d operations in %v", ops, time.Since(started).Round(time.Millisecond))

	// What the agent did.
	agent.mu.Lock()
	defer agent.mu.Unlock()
	for _, v := range agent.violations {
		t.Errorf("agent: %s", v)
	}
	var agentIn, agentOut int64
	for _, task := range agent.tasks {
		agentIn += task.in
		agentOut += task.out
	}

	// What was metered.
	metered := map[invKey]metering.Event{}
	var meteredIn, meteredOut int64
	err := metering.New(runningDB(t), 0).Each(metering.Filter{}, func(e *metering.Event) bool {
		k := invKey{e.ConsumerID, e.EnvelopeID}
		if _, dup := metered[k]; dup {
			t.Errorf("two usage events for %v", k)
		}
		metered[k] = *e
		meteredIn += e.TokensIn
		meteredOut += e.TokensOut
		return true
	})
	if err != nil {
		t.Fatal(err)
	}

	// The invariant: executed tasks = metered tasks, token for token.
	for k, task := range agent.tasks {
		ev, ok := metered[k]
		switch {
		case !ok:
			t.Errorf("the agent executed %v (%d times) but it was not metered", k, task.runs)
		case ev.TokensIn != task.in || ev.TokensOut != task.out:
			t.Errorf("%v: metered %d/%d tokens, the agent reported %d/%d", k, ev.TokensIn, ev.TokensOut, task.in, task.out)
		case ev.Status != protocol.StatusCompleted || ev.TaskID != "t-"+k.envID:
			t.Errorf("%v: metered as %s task %q", k, ev.Status, ev.TaskID)
		}
	}
	for k := range metered {
		if agent.tasks[k] == nil {
			t.Errorf("%v was metered but the agent never executed it", k)
		}
	}
	if agentIn != meteredIn || agentOut != meteredOut {
		t.Errorf("tokens: the agent reported %d in / %d out, metered %d / %d", agentIn, agentOut, meteredIn, meteredOut)
	}

	// The clients saw the same: every answered call ran once per answer,
	// and nothing refused reached the agent.
	r.led.mu.Lock()
	defer r.led.mu.Unlock()
	for k, n := range r.led.accepted {
		if task := agent.tasks[k]; task == nil || task.runs != n {
			t.Errorf("%v: the client got %d answers, the agent ran it %v", k, n, task)
		}
	}
	for k := range agent.tasks {
		if r.led.accepted[k] == 0 {
			t.Errorf("the agent executed %v, but the client was told it was refused or got no answer", k)
		}
	}
	if agent.calls != r.led.acceptedN {
		t.Errorf("the agent executed %d calls, the clients got %d answers", agent.calls, r.led.acceptedN)
	}
	var leaked []string
	for d, op := range r.led.refused {
		if agent.digests[d] {
			leaked = append(leaked, op)
		}
	}
	sort.Strings(leaked)
	for _, op := range leaked {
		t.Errorf("refused, yet it reached the agent: %s", op)
	}
	if r.led.smallOK != invSmallMax {
		t.Errorf("%d of %d calls ran under a max_tasks %d token", r.led.smallOK, r.led.smallTried, invSmallMax)
	}

	// Counters and audit agree.
	c := countsOf(t, "urn:asap:agent:demo")
	if c.Forwarded != uint64(agent.calls) || c.Completed != c.Forwarded || c.Failed != 0 {
		t.Errorf("counts %+v, the agent got %d calls", c, agent.calls)
	}
	var verify struct {
		Valid  bool   `json:"valid"`
		Size   uint64 `json:"size"`
		Reason any    `json:"reason"`
	}
	if code := getJSON(t, "http://"+s.adminAddr+"/asap/audit/verify", &verify); code != 200 || !verify.Valid {
		t.Errorf("audit verify: %d %+v", code, verify)
	}
	auditCount := func(op string) (n int, in, out int64) {
		var body struct {
			Entries []struct {
				Details map[string]any `json:"details"`
			} `json:"entries"`
		}
		if code := getJSON(t, "http://"+s.adminAddr+"/asap/audit/export?format=json&operation="+op, &body); code != 200 {
			t.Errorf("audit export %s: %d", op, code)
		}
		for _, e := range body.Entries {
			i, _ := e.Details["tokens_in"].(float64)
			o, _ := e.Details["tokens_out"].(float64)
			in, out = in+int64(i), out+int64(o)
		}
		return len(body.Entries), in, out
	}
	if n, in, out := auditCount("usage.recorded"); n != len(metered) || in != meteredIn || out != meteredOut {
		t.Errorf("audit: %d usage.recorded entries (%d/%d tokens), metered %d (%d/%d)", n, in, out, len(metered), meteredIn, meteredOut)
	}
	if n, _, _ := auditCount("task.started"); n != agent.calls {
		t.Errorf("audit: %d task.started entries, the agent executed %d calls", n, agent.calls)
	}

	t.Logf("seed %d: %d calls executed (%d distinct tasks), %d metered (%d/%d tokens), %d calls refused, %d requests/frames/sockets refused whole, %d/%d small-token calls ran, audit size %d",
		seed, agent.calls, len(agent.tasks), len(metered), meteredIn, meteredOut, r.led.refusedCalls, r.led.refusedWhole, r.led.smallOK, r.led.smallTried, verify.Size)
}

// invLeaver: a client sends a call and hangs up before the agent's answer.
// The agent still executes it, so it must be metered, and it uses up the
// token's one task: SPEC §2a, "every task the agent executes must be
// limited, metered, audited and sampled once".
func invLeaver(t *testing.T, r *invRun, agent *invAgent) {
	r.t = t
	s := r.s
	release := sync.OnceFunc(func() { close(agent.release) })
	defer release()
	executed := func(k invKey) *invTask {
		agent.mu.Lock()
		defer agent.mu.Unlock()
		if task := agent.tasks[k]; task != nil {
			c := *task
			return &c
		}
		return nil
	}
	waitHeld := func(id string) {
		t.Helper()
		select {
		case got := <-agent.held:
			if got != id {
				t.Fatalf("held %s, want %s", got, id)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("the agent never got %s", id)
		}
	}
	check := func(name, consumer, token string, c *invCall, before metering.Counts, ws bool) {
		t.Helper()
		// The sidecar is done with the call once its counters moved.
		waitFor(t, func() bool { return countsOf(t, "urn:asap:agent:demo").Forwarded > before.Forwarded })
		k := invKey{consumer, c.envID}
		task := executed(k)
		if task == nil {
			t.Fatalf("%s: the agent did not execute %v", name, k)
		}
		ev, ok := usageByKey(t)[k]
		if !ok {
			t.Errorf("%s: BUG: the agent executed %v (%d/%d tokens) after the client left; it was not metered (counts %+v → %+v)",
				name, k, task.in, task.out, before, countsOf(t, "urn:asap:agent:demo"))
		} else if ev.TokensIn != task.in || ev.TokensOut != task.out {
			t.Errorf("%s: BUG: the agent executed %v and reported %d/%d tokens after the client left; metered as %s with %d/%d",
				name, k, task.in, task.out, ev.Status, ev.TokensIn, ev.TokensOut)
		}
		// The token allowed one task, and the agent ran one.
		next := invNewCall("n1", consumer, "01JLEAVENEXT"+c.envID[12:], 1)
		var a rpcAnswer
		if ws {
			conn, _, err := r.dial(token)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.CloseNow()
			as, err := r.wsExchange(conn, next.raw, 1)
			if err != nil {
				t.Fatal(err)
			}
			a = as[0]
		} else {
			st, b, err := r.post([]byte(next.raw), "", token)
			if err != nil || st != 200 {
				t.Fatalf("%s: next call: %d %v", name, st, err)
			}
			a = decodeAnswerOr(t, b)
		}
		if a.Error == nil || a.Error.Code != protocol.CodeTokenLimitSpent {
			t.Errorf("%s: BUG: a max_tasks 1 token ran a second task after the client left the first (answer %+v, agent ran it: %v)",
				name, a.Error, executed(invKey{consumer, next.envID}) != nil)
		}
	}

	// HTTP: the client closes its connection while the agent works.
	{
		const consumer = "urn:asap:agent:leaver-http"
		token := mintViaAdmin(t, s, `{"delegate":"`+consumer+`","scopes":["task.execute"],"max_tasks":1}`)
		c := invNewCall("h1", consumer, "01JLEAVEHTTP00000000000001", 7)
		c.raw = strings.Replace(c.raw, `"skill_id":"echo"`, `"skill_id":"hold"`, 1)
		before := countsOf(t, "urn:asap:agent:demo")
		conn, err := net.DialTimeout("tcp", strings.TrimPrefix(s.url, "http://"), 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(conn, "POST /asap HTTP/1.1\r\nHost: sidecar\r\nContent-Type: application/json\r\n%s: %s\r\nContent-Length: %d\r\n\r\n%s",
			delegation.Header, token, len(c.raw), c.raw)
		waitHeld(c.envID)
		conn.Close()
		check("HTTP", consumer, token, c, before, false)
	}

	// WebSocket: the client closes its socket while the agent works; the
	// agent answers once the client is gone.
	{
		const consumer = "urn:asap:agent:leaver-ws"
		token := mintViaAdmin(t, s, `{"delegate":"`+consumer+`","scopes":["task.execute"],"max_tasks":1}`)
		c := invNewCall("w1", consumer, "01JLEAVEWS0000000000000001", 9)
		c.raw = strings.Replace(c.raw, `"skill_id":"echo"`, `"skill_id":"hold"`, 1)
		before := countsOf(t, "urn:asap:agent:demo")
		conn, _, err := r.dial(token)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := r.ctx()
		defer cancel()
		if err := conn.Write(ctx, websocket.MessageText, []byte(c.raw)); err != nil {
			t.Fatal(err)
		}
		waitHeld(c.envID)
		conn.Close(websocket.StatusNormalClosure, "leaving")
		release() // the answer goes out after the client left
		select {
		case <-agent.wsDone:
		case <-time.After(10 * time.Second):
			t.Fatal("the held WebSocket call never finished")
		}
		check("WebSocket", consumer, token, c, before, true)
	}
}

// usageByKey is every usage event by (consumer, envelope id).
func usageByKey(t *testing.T) map[invKey]metering.Event {
	t.Helper()
	out := map[invKey]metering.Event{}
	err := metering.New(runningDB(t), 0).Each(metering.Filter{}, func(e *metering.Event) bool {
		out[invKey{e.ConsumerID, e.EnvelopeID}] = *e
		return true
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}
