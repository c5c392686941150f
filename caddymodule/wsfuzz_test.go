package caddymodule

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/asap-sidecar/asap-sidecar/caddymodule/protocol"
)

// FuzzWebSocketFrame sends arbitrary text frames on /asap/ws through one
// real sidecar (started once per run) to a wsAgent and checks, frame by
// frame, that nothing reaches the agent unchecked (SPEC §2a):
//
//  1. the sidecar neither panics nor stops serving: every input is
//     followed by a barrier call whose answer must come back, and a socket
//     the sidecar closed is dialed again;
//  2. every frame the agent gets re-parses with no whole-body error and no
//     refused call, and is the input byte for byte or, when calls were
//     refused, '[' + the good calls' raw bytes joined by ',' + ']';
//  3. an input with a whole-body error, or whose every call is refused,
//     reaches nothing; every call gets exactly one answer (a refusal from
//     the sidecar or the agent's answer);
//  4. a frame over max_body closes the socket with 1009 and reaches
//     nothing.
//
// Refusals by the sidecar beyond what ParseRequest finds are checked
// against a model: envelope_id_reused only for an (sender, envelope id)
// forwarded before with another envelope, and a call reusing the id of
// an answered call with another envelope must not reach the agent.
//
// The seed corpus is in testdata/fuzz/FuzzWebSocketFrame.
func FuzzWebSocketFrame(f *testing.F) {
	// A read limit above max_body: the sidecar rightly forwards frames
	// past coder/websocket's default 32 KiB.
	agent := &wsAgent{readLimit: wsMaxAgentMessage}
	srv := httptest.NewServer(agent)
	f.Cleanup(srv.Close)
	s := startSidecar(f, upstreamAddr(srv), "agent urn:asap:agent:demo\nmax_body 64KiB")
	h := runningAgent(f)
	if h.MaxBody != 64<<10 {
		f.Fatalf("max_body = %d, want 64KiB", h.MaxBody)
	}
	nonce := make([]byte, 6)
	rand.Read(nonce)
	fz := &wsFuzz{
		s: s, agent: agent, limits: protocol.Limits{MaxBatch: h.MaxBatch}, maxBody: int(h.MaxBody),
		nonce:     hex.EncodeToString(nonce),
		forwarded: map[string][][sha256.Size]byte{},
		committed: map[string][sha256.Size]byte{},
	}
	f.Cleanup(fz.close)
	f.Fuzz(func(t *testing.T, frame []byte) {
		fz.check(t, frame)
	})
}

// wsFuzz is the state of one fuzz run: the socket and the model of
// envelope ids the sidecar has seen.
type wsFuzz struct {
	mu      sync.Mutex
	s       *sidecar
	agent   *wsAgent
	limits  protocol.Limits
	maxBody int
	nonce   string
	n       int // barriers sent

	conn   *websocket.Conn
	frames chan wsFrame

	// forwarded: digests of the envelopes the agent got, by sender and
	// envelope id; committed: the digest of the first one answered (its
	// usage, and with it the dedup marker, is stored).
	forwarded map[string][][sha256.Size]byte
	committed map[string][sha256.Size]byte
}

// wsFrame is one frame read from the client socket, or the read error
// that ended it.
type wsFrame struct {
	msg []byte
	err error
}

func (fz *wsFuzz) close() {
	if fz.conn != nil {
		fz.conn.CloseNow()
		fz.conn = nil
	}
}

// dial opens a fresh socket through the sidecar and starts reading it.
func (fz *wsFuzz) dial(t *testing.T) {
	t.Helper()
	fz.close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, _, err := websocket.Dial(ctx, strings.Replace(fz.s.url, "http", "ws", 1)+"/asap/ws", nil)
	if err != nil {
		t.Fatalf("the sidecar no longer accepts sockets: %v", err)
	}
	conn.SetReadLimit(32 << 20)
	frames := make(chan wsFrame, 256)
	go func() {
		for {
			_, msg, err := conn.Read(context.Background())
			frames <- wsFrame{msg, err}
			if err != nil {
				close(frames)
				return
			}
		}
	}()
	fz.conn, fz.frames = conn, frames
}

// alive reports whether the socket is open, as far as its reader knows,
// and puts back nothing: a frame between inputs is an error.
func (fz *wsFuzz) alive(t *testing.T) bool {
	if fz.conn == nil {
		return false
	}
	select {
	case fr, ok := <-fz.frames:
		if !ok {
			return false
		}
		if fr.err != nil {
			// An idle socket is closed with 1001; anything else is
			// logged and the socket replaced.
			if websocket.CloseStatus(fr.err) != websocket.StatusGoingAway {
				t.Logf("socket closed between inputs: %v", fr.err)
			}
			return false
		}
		if !isNotification(fr.msg) {
			t.Fatalf("frame between inputs: %q", fr.msg)
		}
		return true
	default:
		return true
	}
}

// agentFrames is what the agent got from frame start on, with the
// number of calls it answered of each.
func (fz *wsFuzz) agentFrames(start int) ([][]byte, []int) {
	fz.agent.mu.Lock()
	defer fz.agent.mu.Unlock()
	return slices.Clone(fz.agent.frames[start:]), slices.Clone(fz.agent.answered[start:])
}

func (fz *wsFuzz) agentCount() int {
	fz.agent.mu.Lock()
	defer fz.agent.mu.Unlock()
	return len(fz.agent.frames)
}

func (fz *wsFuzz) check(t *testing.T, input []byte) {
	fz.mu.Lock()
	defer fz.mu.Unlock()
	defer func() {
		if t.Failed() {
			fz.close() // the next input starts on a clean socket
		}
	}()
	if !fz.alive(t) {
		fz.dial(t)
	}
	start := fz.agentCount()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	if len(input) > fz.maxBody {
		fz.checkOversized(t, ctx, input, start)
		return
	}

	if err := fz.conn.Write(ctx, websocket.MessageText, input); err != nil {
		t.Fatalf("writing the frame: %v", err)
	}
	// The barrier: a fresh valid call sent right behind the input. The
	// sidecar handles frames in order and the agent answers in order, so
	// once its answer is back every answer to the input is too, and
	// every frame the agent got for the input is recorded.
	fz.n++
	barrierID := fmt.Sprintf("barrier-%s-%d", fz.nonce, fz.n)
	barrier := []byte(rpc(barrierID, envelope("FUZZBARRIER-"+fz.nonce+fmt.Sprint("-", fz.n), "echo", `{}`)))
	if err := fz.conn.Write(ctx, websocket.MessageText, barrier); err != nil {
		t.Fatalf("writing the barrier: %v", err)
	}
	var answers [][]byte
	for done := false; !done; {
		select {
		case fr, ok := <-fz.frames:
			if !ok || fr.err != nil {
				fz.conn = nil
				t.Fatalf("socket closed while answering a %d-byte frame: %v (answers so far %q)", len(input), fr.err, answers)
			}
			switch {
			case isNotification(fr.msg):
			case isAnswerTo(fr.msg, barrierID):
				done = true
			default:
				answers = append(answers, fr.msg)
			}
		case <-ctx.Done():
			fz.conn.CloseNow()
			fz.conn = nil
			t.Fatalf("no answer to the barrier behind a %d-byte frame within 10s (the sidecar hangs?); answers so far %q", len(input), answers)
		}
	}
	got, answered := fz.agentFrames(start)
	if len(got) == 0 || !bytes.Equal(got[len(got)-1], barrier) {
		t.Fatalf("the agent's last frame is not the barrier: %q", got)
	}
	got, answered = got[:len(got)-1], answered[:len(answered)-1]
	if leak := fz.judge(t, input, answers, got, answered); leak {
		// Calls the agent did not answer stay pending on the socket and
		// hold its slots: start the next input on a fresh one.
		fz.close()
	}
}

// checkOversized: a frame over max_body ends the socket with 1009 and
// reaches nothing; a fresh socket then works.
func (fz *wsFuzz) checkOversized(t *testing.T, ctx context.Context, input []byte, start int) {
	// The sidecar may close before the client has written it all.
	werr := fz.conn.Write(ctx, websocket.MessageText, input)
	var status websocket.StatusCode = -1
	var answers [][]byte
	for status == -1 {
		select {
		case fr, ok := <-fz.frames:
			if !ok {
				t.Fatalf("socket ended without a close status on a %d-byte frame (write: %v)", len(input), werr)
			}
			if fr.err != nil {
				status = websocket.CloseStatus(fr.err)
				if status == -1 {
					t.Fatalf("socket broke without a close status on a %d-byte frame: %v (write: %v)", len(input), fr.err, werr)
				}
			} else if !isNotification(fr.msg) {
				answers = append(answers, fr.msg)
			}
		case <-ctx.Done():
			t.Fatalf("a %d-byte frame over max_body %d did not close the socket within 10s (write: %v)", len(input), fz.maxBody, werr)
		}
	}
	fz.close()
	if status != websocket.StatusMessageTooBig {
		t.Fatalf("a %d-byte frame over max_body %d: close %v, want 1009", len(input), fz.maxBody, status)
	}
	if len(answers) > 0 {
		t.Fatalf("a frame over max_body was answered: %q", answers)
	}
	// Barrier on a fresh socket: whatever the agent got before its
	// barrier came from the oversized frame.
	fz.dial(t)
	fz.n++
	barrierID := fmt.Sprintf("barrier-%s-%d", fz.nonce, fz.n)
	barrier := []byte(rpc(barrierID, envelope("FUZZBARRIER-"+fz.nonce+fmt.Sprint("-", fz.n), "echo", `{}`)))
	if err := fz.conn.Write(ctx, websocket.MessageText, barrier); err != nil {
		t.Fatalf("writing the barrier on a fresh socket: %v", err)
	}
	select {
	case fr := <-fz.frames:
		if fr.err != nil || !isAnswerTo(fr.msg, barrierID) {
			t.Fatalf("barrier on a fresh socket after a 1009: %q %v", fr.msg, fr.err)
		}
	case <-ctx.Done():
		t.Fatal("no answer to a barrier on a fresh socket after a 1009")
	}
	if got, _ := fz.agentFrames(start); len(got) != 1 {
		t.Fatalf("a frame over max_body reached the agent: %d frames %.200q", len(got)-1, got)
	}
}

// judge checks the answers the client got and the frames the agent got
// for one input (barrier excluded). leak reports calls left pending.
func (fz *wsFuzz) judge(t *testing.T, input []byte, answers, got [][]byte, gotAnswered []int) (leak bool) {
	t.Helper()
	for _, g := range got {
		req, perr := protocol.ParseRequest(g, fz.limits)
		if perr != nil {
			t.Fatalf("the agent got a frame with a whole-body error %s: %q", perr.Reason, g)
		}
		for _, c := range req.Calls {
			if c.Err != nil {
				t.Fatalf("the agent got a call refused as %s: %q", c.Err.Reason, c.Raw)
			}
		}
	}
	req, perr := protocol.ParseRequest(input, fz.limits)
	if perr != nil {
		if len(got) > 0 {
			t.Fatalf("input refused as a whole (%s) reached the agent: %q", perr.Reason, got)
		}
		if len(answers) != 1 || !bytes.Equal(answers[0], perr.JSON()) {
			t.Fatalf("input refused as a whole: answers %q, want %s", answers, perr.JSON())
		}
		return false
	}
	if !req.Batch {
		c := &req.Calls[0]
		if c.ID != nil && (c.Method == "sla.subscribe" || c.Method == "sla.unsubscribe") {
			if len(got) > 0 {
				t.Fatalf("%s reached the agent: %q", c.Method, got)
			}
			result := `{"subscribed":true}`
			if c.Method == "sla.unsubscribe" {
				result = `{"unsubscribed":true}`
			}
			want := `{"jsonrpc":"2.0","result":` + result + `,"id":` + string(c.ID) + `}`
			if len(answers) != 1 || string(answers[0]) != want {
				t.Fatalf("%s: answers %q, want %s", c.Method, answers, want)
			}
			return false
		}
		if c.Err != nil && (len(answers) != 1 || !bytes.Equal(answers[0], c.Err.JSON())) {
			t.Fatalf("call refused by the parser (%s): answers %q, want %s", c.Err.Reason, answers, c.Err.JSON())
		}
	}
	if len(got) > 1 {
		t.Fatalf("one input reached the agent as %d frames: %q", len(got), got)
	}

	// The sidecar's refusals come first, in one frame; the agent's
	// answers (one frame, if it answers any call) after them.
	var refusals []json.RawMessage
	rest := answers
	if len(rest) > 0 && isRefusal(rest[0], req.Batch) {
		refusals = refusalElements(rest[0], req.Batch)
		rest = rest[1:]
	}
	refusedKeys := map[string]json.RawMessage{} // by id key, "" for null ids
	nullRefusals := 0
	for _, r := range refusals {
		var e struct {
			ID    json.RawMessage `json:"id"`
			Error struct {
				Data struct {
					Reason string `json:"reason"`
				} `json:"data"`
			} `json:"error"`
		}
		json.Unmarshal(r, &e)
		key, ok := protocol.IDKey(e.ID)
		if !ok {
			nullRefusals++
			continue
		}
		if _, dup := refusedKeys[key]; dup {
			t.Fatalf("two refusals for id %s: %q", e.ID, answers)
		}
		refusedKeys[key] = r
	}

	// What ParseRequest refuses must be refused, answered with its error;
	// what the sidecar refuses on top must be a reused envelope id.
	var good []*protocol.Call
	claimed := map[string][sha256.Size]byte{}
	claimedBy := map[string]json.RawMessage{}
	parseRefused := 0
	for i := range req.Calls {
		c := &req.Calls[i]
		if c.Err != nil {
			parseRefused++
			if c.Key == "" {
				continue
			}
			if _, ok := refusedKeys[c.Key]; !ok {
				t.Fatalf("call %s refused by the parser (%s) has no refusal: answers %q", c.ID, c.Err.Reason, answers)
			}
			continue
		}
		if r, refused := refusedKeys[c.Key]; refused {
			reason := refusalReason(r)
			if reason != "envelope_id_reused" {
				t.Fatalf("call %s refused by the sidecar as %q; only envelope_id_reused is expected here: %s", c.ID, reason, r)
			}
			mk := c.Envelope.Sender + "\x00" + c.Envelope.ID
			d := sha256.Sum256(c.Envelope.Raw)
			if c.Envelope.ID == "" || !slices.ContainsFunc(fz.forwarded[mk], func(p [sha256.Size]byte) bool { return p != d }) {
				t.Fatalf("call %s refused as envelope_id_reused, but envelope id %q was never forwarded with another envelope", c.ID, c.Envelope.ID)
			}
			continue
		}
		// The call claims its envelope id: a later call of this batch
		// with another envelope under that id is refused too.
		if c.Envelope.ID != "" {
			mk := c.Envelope.Sender + "\x00" + c.Envelope.ID
			d := sha256.Sum256(c.Envelope.Raw)
			if prev, ok := claimed[mk]; ok && prev != d {
				t.Fatalf("call %s reuses envelope id %q of call %s of the same batch with another envelope, and was not refused", c.ID, c.Envelope.ID, claimedBy[mk])
			}
			claimed[mk], claimedBy[mk] = d, c.ID
			if !slices.Contains(fz.forwarded[mk], d) {
				fz.forwarded[mk] = append(fz.forwarded[mk], d)
			}
		}
		good = append(good, c)
	}
	nullParse := 0
	for _, c := range req.Calls {
		if c.Err != nil && c.Key == "" {
			nullParse++
		}
	}
	if nullRefusals != nullParse || len(refusedKeys) != len(req.Calls)-len(good)-nullParse {
		t.Fatalf("%d calls, %d forwardable: %d refusals (%d with null id, want %d): %q", len(req.Calls), len(good), len(refusals), nullRefusals, nullParse, answers)
	}

	if len(good) == 0 {
		if len(got) > 0 {
			t.Fatalf("every call refused (%d by the parser), yet the agent got %q", parseRefused, got)
		}
		if len(rest) > 0 {
			t.Fatalf("every call refused, yet more answers: %q", rest)
		}
		return false
	}
	if len(got) == 0 {
		t.Fatalf("%d good calls never reached the agent; answers %q", len(good), answers)
	}
	want := input
	if len(good) < len(req.Calls) {
		raws := make([][]byte, len(good))
		for i, c := range good {
			raws[i] = c.Raw
		}
		want = append(append([]byte{'['}, bytes.Join(raws, []byte{','})...), ']')
	}
	if !bytes.Equal(got[0], want) {
		t.Fatalf("the agent got\n%q\nwant\n%q", got[0], want)
	}

	// Reused ids: a forwarded call must not reuse the envelope id of an
	// answered call with another envelope.
	answeredKeys := map[string]bool{}
	if len(rest) == 1 {
		if replies, err := protocol.ParseResponse(rest[0]); err == nil {
			for _, r := range replies {
				answeredKeys[r.Key] = true
			}
		}
	}
	for _, c := range good {
		if c.Envelope.ID == "" {
			continue
		}
		mk := c.Envelope.Sender + "\x00" + c.Envelope.ID
		d := sha256.Sum256(c.Envelope.Raw)
		if prev, ok := fz.committed[mk]; ok && prev != d {
			t.Fatalf("call %s reuses envelope id %q of an answered call with another envelope, and reached the agent", c.ID, c.Envelope.ID)
		}
		if _, ok := fz.committed[mk]; !ok && answeredKeys[c.Key] {
			fz.committed[mk] = d
		}
	}

	// Each forwarded call gets the agent's answer, unless the agent
	// skips it: one frame when it answers any.
	answering := gotAnswered[0]
	switch {
	case answering == 0 && len(rest) != 0:
		t.Fatalf("the agent answered nothing, yet the client got %q", rest)
	case answering > 0 && len(rest) != 1:
		t.Fatalf("the agent answers %d calls; the client got after the refusals %q", answering, rest)
	}
	for _, c := range good {
		if !answeredKeys[c.Key] {
			leak = true
		}
	}
	return leak
}

// isNotification: an sla.breach / sla.resolved push, not an answer.
func isNotification(msg []byte) bool {
	var m struct {
		Method string          `json:"method"`
		ID     json.RawMessage `json:"id"`
	}
	return json.Unmarshal(msg, &m) == nil && strings.HasPrefix(m.Method, "sla.") && m.ID == nil
}

func isAnswerTo(msg []byte, id string) bool {
	var m struct {
		ID     string          `json:"id"`
		Result json.RawMessage `json:"result"`
	}
	return json.Unmarshal(msg, &m) == nil && m.ID == id
}

// isRefusal: msg is the sidecar's error answer (an error object, or for a
// batch an array of them). The agent stand-in only answers results.
func isRefusal(msg []byte, batch bool) bool {
	els := refusalElements(msg, batch)
	if len(els) == 0 {
		return false
	}
	for _, e := range els {
		var m struct {
			Error json.RawMessage `json:"error"`
		}
		if json.Unmarshal(e, &m) != nil || m.Error == nil {
			return false
		}
	}
	return true
}

func refusalElements(msg []byte, batch bool) []json.RawMessage {
	if !batch {
		if len(msg) > 0 && msg[0] == '{' {
			return []json.RawMessage{msg}
		}
		return nil
	}
	var els []json.RawMessage
	if json.Unmarshal(msg, &els) != nil {
		return nil
	}
	return els
}

func refusalReason(r json.RawMessage) string {
	var e struct {
		Error struct {
			Data struct {
				Reason string `json:"reason"`
			} `json:"data"`
		} `json:"error"`
	}
	json.Unmarshal(r, &e)
	return e.Error.Data.Reason
}
