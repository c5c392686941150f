package caddymodule

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/coder/websocket"
	"go.uber.org/zap"

	"github.com/asap-sidecar/asap-sidecar/caddymodule/api"
	"github.com/asap-sidecar/asap-sidecar/caddymodule/protocol"
)

// WebSocket limits. A socket holds at most wsMaxPending calls the agent
// has not answered; past that the sidecar stops reading the client, so a
// client that sends without reading cannot grow memory.
var (
	// wsDrainTimeout is how long calls pending when the client leaves may
	// still be answered (and metered) before they count as failed and
	// give back their slots. Nanoseconds; tests shorten it.
	wsDrainTimeout atomic.Int64

	wsHandshakeTimeout = 10 * time.Second
	wsIdleTimeout      = 5 * time.Minute
	wsMaxPending       = 64
	// wsMaxAgentMessage bounds one message from the agent.
	wsMaxAgentMessage int64 = 16 << 20
)

func init() { wsDrainTimeout.Store(int64(detachedLimit)) }

// wsCall is a call forwarded on a socket and not yet answered.
type wsCall struct {
	call    protocol.Call
	grant   grant
	id      callIdentity
	started time.Time
}

// wsSession is one client socket proxied frame by frame to the agent.
// Every client text frame takes the same path as a POST body: parse,
// authorize with the handshake's chain (re-verified per frame), refuse
// reused ids, forward; answers are matched by id and recorded like HTTP
// answers.
type wsSession struct {
	h      *Handler
	r      *http.Request // the handshake: its token authorizes each frame
	db     *database
	client *websocket.Conn
	agent  *websocket.Conn

	mu      sync.Mutex
	pending map[string]*wsCall
	slots   chan struct{} // one per pending call
	last    atomic.Int64  // unix nanos of the last frame either way

	subscribed atomic.Bool
	notifyOnce sync.Once

	// clientGone is set once the client left: answers still coming are
	// recorded but have nowhere to go.
	clientGone atomic.Bool
	// answeredSome wakes drain when pending calls were answered.
	answeredSome chan struct{}
}

// serveWebSocket dials the agent through the route, accepts the client
// and proxies frames until either side closes.
func (h *Handler) serveWebSocket(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler, db *database) error {
	// The tunnel to the agent lives until this session ends, past a
	// client that left (drain); the timeout bounds the handshake only.
	tunnel, endTunnel := context.WithCancel(context.WithoutCancel(r.Context()))
	defer endTunnel()
	dialCtx, cancel := context.WithTimeout(r.Context(), wsHandshakeTimeout)
	defer cancel()
	agent, resp, err := websocket.Dial(dialCtx, "ws://"+r.Host+r.URL.RequestURI(), &websocket.DialOptions{
		HTTPClient:      &http.Client{Transport: routeTransport{next: next, base: r, tunnel: tunnel}},
		HTTPHeader:      forwardedHandshakeHeaders(r.Header),
		Subprotocols:    headerTokens(r.Header, "Sec-WebSocket-Protocol"),
		CompressionMode: websocket.CompressionDisabled,
	})
	if err != nil {
		status := http.StatusBadGateway
		if resp != nil && resp.StatusCode >= 400 {
			status = resp.StatusCode // the agent refused the handshake
		}
		h.logger.Warn("agent refused or did not answer the WebSocket handshake", zap.Int("status", status), zap.Error(err))
		return writeJSON(w, status, protocol.NewError(protocol.CodeConnectionError, "agent_unreachable",
			"the agent did not accept the WebSocket connection; retry later").JSON())
	}
	defer agent.CloseNow()
	var subprotocols []string
	if p := agent.Subprotocol(); p != "" {
		subprotocols = []string{p}
	}
	client, err := websocket.Accept(w, r, &websocket.AcceptOptions{
		Subprotocols: subprotocols,
		// The agent saw the Origin and accepted: its policy applies.
		InsecureSkipVerify: true,
		CompressionMode:    websocket.CompressionDisabled,
	})
	if err != nil {
		agent.Close(websocket.StatusGoingAway, "client handshake failed")
		return nil // Accept answered the client
	}
	defer client.CloseNow()
	client.SetReadLimit(int64(h.MaxBody))
	agent.SetReadLimit(wsMaxAgentMessage)

	s := &wsSession{h: h, r: r, db: db, client: client, agent: agent,
		pending: map[string]*wsCall{}, slots: make(chan struct{}, wsMaxPending), answeredSome: make(chan struct{}, 1)}
	s.touch()
	ctx, stop := context.WithCancel(context.WithoutCancel(r.Context()))
	defer stop()
	agentDone := make(chan struct{})
	go func() {
		defer close(agentDone)
		defer stop()
		s.pumpAgent(ctx)
	}()
	go s.watchIdle(ctx, stop)
	s.pumpClient(ctx)
	// The client is gone, but the agent may be running its calls: a task
	// it runs is usage whoever waits for the answer, and its slot stays
	// taken until it is answered or the drain gives up.
	s.clientGone.Store(true)
	s.drain(agentDone)
	s.agent.Close(websocket.StatusNormalClosure, "client left")
	stop()
	<-agentDone
	s.failPending()
	return nil
}

// drain waits until nothing is pending, the agent's socket ends, or
// wsDrainTimeout passes.
func (s *wsSession) drain(agentDone <-chan struct{}) {
	timeout := time.NewTimer(time.Duration(wsDrainTimeout.Load()))
	defer timeout.Stop()
	for {
		s.mu.Lock()
		n := len(s.pending)
		s.mu.Unlock()
		if n == 0 {
			return
		}
		select {
		case <-s.answeredSome:
		case <-agentDone:
			return
		case <-timeout.C:
			s.h.logger.Warn("client left with calls the agent has not answered; counting them failed", zap.Int("calls", n))
			return
		}
	}
}

// forwardedHandshakeHeaders are the client's handshake headers the agent
// gets; the WebSocket handshake's own headers are the sidecar's.
func forwardedHandshakeHeaders(in http.Header) http.Header {
	out := in.Clone()
	for _, k := range []string{"Connection", "Upgrade", "Sec-Websocket-Key", "Sec-Websocket-Version",
		"Sec-Websocket-Extensions", "Sec-Websocket-Protocol", "Sec-Websocket-Accept", "Content-Length", "Transfer-Encoding"} {
		out.Del(k)
	}
	return out
}

func headerTokens(h http.Header, name string) []string {
	var out []string
	for _, v := range h.Values(name) {
		for _, t := range strings.Split(v, ",") {
			if t = strings.TrimSpace(t); t != "" {
				out = append(out, t)
			}
		}
	}
	return out
}

func (s *wsSession) touch() { s.last.Store(time.Now().UnixNano()) }

// watchIdle closes a socket with no frames either way and nothing
// pending for wsIdleTimeout.
func (s *wsSession) watchIdle(ctx context.Context, stop context.CancelFunc) {
	t := time.NewTimer(wsIdleTimeout)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		idle := time.Since(time.Unix(0, s.last.Load()))
		s.mu.Lock()
		busy := len(s.pending) > 0
		s.mu.Unlock()
		if idle >= wsIdleTimeout && !busy {
			s.client.Close(websocket.StatusGoingAway, "idle")
			s.agent.Close(websocket.StatusGoingAway, "client idle")
			stop()
			return
		}
		t.Reset(max(wsIdleTimeout-idle, time.Millisecond))
	}
}

// pumpClient reads client frames until the client goes away.
func (s *wsSession) pumpClient(ctx context.Context) {
	for {
		typ, msg, err := s.client.Read(ctx)
		if err != nil {
			// Too large a frame: coder/websocket already closed with 1009.
			return
		}
		s.touch()
		if typ != websocket.MessageText {
			s.client.Close(websocket.StatusUnsupportedData, "binary frames are not forwarded; send JSON-RPC as text")
			return
		}
		if !s.frame(ctx, msg) {
			return
		}
	}
}

// frame checks one client frame and forwards what passes. It returns
// false when the socket is done.
func (s *wsSession) frame(ctx context.Context, msg []byte) bool {
	h := s.h
	req, perr := protocol.ParseRequest(msg, h.limits)
	if perr != nil {
		h.rt.rejected.Add(1)
		h.rt.rejections.count(perr.Code, perr.Reason)
		return s.send(ctx, perr.JSON())
	}
	if !req.Batch {
		if answer, ok := s.slaControl(ctx, &req.Calls[0]); ok {
			return s.send(ctx, answer)
		}
	}
	if f := s.db.fleet; f != nil && f.outbox.Full() {
		// As on POST: nothing runs that could not be recorded.
		e := h.backlogError(s.db)
		for i := range req.Calls {
			if req.Calls[i].Err == nil {
				req.Calls[i].Err = e.WithID(req.Calls[i].ID)
			}
		}
		return s.send(ctx, localAnswer(req))
	}
	s.refusePendingIDs(req)
	grants, ids := h.admit(s.r, s.db, req)
	h.rt.rejections.countCalls(req)
	if !req.Forwardable() {
		h.rt.rejected.Add(1)
		return s.send(ctx, localAnswer(req))
	}
	if req.Batch {
		if refused := refusedAnswers(req); refused != nil {
			if !s.send(ctx, refused) {
				releaseIdentities(s.db, ids)
				releaseUnanswered(grants)
				return false
			}
		}
	}
	// Take a slot per call first: a client that does not read its
	// answers is stopped here, not buffered.
	now := time.Now()
	var calls []*wsCall
	for i := range req.Calls {
		c := req.Calls[i]
		if c.Err != nil {
			continue
		}
		select {
		case s.slots <- struct{}{}:
		case <-ctx.Done():
			// Nothing of the frame was forwarded: give everything back.
			for range calls {
				<-s.slots
			}
			releaseUnanswered(grants)
			releaseIdentities(s.db, ids)
			return false
		}
		wc := &wsCall{call: c, grant: grants[i], started: now}
		if ids != nil {
			wc.id = ids[i]
		}
		calls = append(calls, wc)
	}
	s.mu.Lock()
	for _, wc := range calls {
		s.pending[wc.call.Key] = wc
	}
	s.mu.Unlock()
	forward, _ := forwardBody(req, msg)
	if err := s.agent.Write(ctx, websocket.MessageText, forward); err != nil {
		h.logger.Warn("writing to the agent's socket", zap.Error(err))
		return false // failPending records the calls
	}
	return true
}

// refusePendingIDs refuses calls whose id is already pending on this
// socket: their answers could not be told apart.
func (s *wsSession) refusePendingIDs(req *protocol.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := range req.Calls {
		c := &req.Calls[i]
		if c.Err != nil {
			continue
		}
		if _, busy := s.pending[c.Key]; busy {
			c.Err = protocol.NewError(protocol.CodeInvalidRequest, "duplicate_id",
				"a call with this id is still pending on this socket; wait for its answer or use another id").WithID(c.ID)
		}
	}
}

// refusedAnswers is the batch of errors for the refused calls of a batch
// that is partly forwarded, or nil when none was refused.
func refusedAnswers(req *protocol.Request) []byte {
	var objs []any
	for _, c := range req.Calls {
		if c.Err != nil {
			objs = append(objs, c.Err.Object())
		}
	}
	if objs == nil {
		return nil
	}
	b, _ := json.Marshal(objs)
	return b
}

// slaControl answers sla.subscribe and sla.unsubscribe itself, as the
// reference server does on its socket.
func (s *wsSession) slaControl(ctx context.Context, c *protocol.Call) ([]byte, bool) {
	if c.ID == nil {
		return nil, false
	}
	var result string
	switch c.Method {
	case "sla.subscribe":
		s.subscribed.Store(true)
		s.notifyOnce.Do(func() {
			// Subscribed before the answer goes out: no breach after it
			// is missed.
			notices, cancel := slaService{}.Subscribe()
			go s.pushNotifications(ctx, notices, cancel)
		})
		result = `{"subscribed":true}`
	case "sla.unsubscribe":
		s.subscribed.Store(false)
		result = `{"unsubscribed":true}`
	default:
		return nil, false
	}
	return []byte(`{"jsonrpc":"2.0","result":` + result + `,"id":` + string(c.ID) + `}`), true
}

// pushNotifications sends sla.breach and sla.resolved while subscribed.
// The feed drops notices a slow socket cannot take, so it never grows.
func (s *wsSession) pushNotifications(ctx context.Context, notices <-chan api.Notice, cancel func()) {
	defer cancel()
	for {
		select {
		case <-ctx.Done():
			return
		case n, ok := <-notices:
			if !ok {
				return
			}
			if s.subscribed.Load() && !s.send(ctx, n.JSON) {
				return
			}
		}
	}
}

func (s *wsSession) send(ctx context.Context, b []byte) bool {
	return s.client.Write(ctx, websocket.MessageText, b) == nil
}

// pumpAgent reads the agent's messages, records the calls they answer and
// passes them on unchanged.
func (s *wsSession) pumpAgent(ctx context.Context) {
	for {
		typ, msg, err := s.agent.Read(ctx)
		if err != nil {
			code := websocket.CloseStatus(err)
			switch {
			case code == websocket.StatusNormalClosure || code == websocket.StatusGoingAway:
				s.client.Close(code, "agent closed")
			case ctx.Err() == nil:
				s.h.logger.Warn("agent's socket broke", zap.Error(err))
				s.client.Close(websocket.StatusInternalError, "the agent's connection broke")
			}
			return
		}
		s.touch()
		if typ == websocket.MessageText {
			if err := s.answered(ctx, msg); err != nil {
				s.h.logger.Error("task records not stored; closing the socket so the client does not take an unrecorded answer", zap.Error(err))
				s.client.Close(websocket.StatusInternalError, "the answer could not be recorded")
				return
			}
		}
		if s.clientGone.Load() {
			continue
		}
		if err := s.client.Write(ctx, typ, msg); err != nil && !s.clientGone.Load() {
			s.clientGone.Store(true) // its reader ends the session
		}
	}
}

// answered records the calls msg answers. With strict durability it
// returns once their records are stored, before the client sees them.
func (s *wsSession) answered(ctx context.Context, msg []byte) error {
	replies, err := protocol.ParseResponse(msg)
	if err != nil {
		return nil // not an answer: a notification of the agent's own
	}
	var done []*wsCall
	s.mu.Lock()
	for _, rep := range replies {
		if wc, ok := s.pending[rep.Key]; ok && rep.Key != "" {
			delete(s.pending, rep.Key)
			done = append(done, wc)
		}
	}
	s.mu.Unlock()
	if len(done) == 0 {
		return nil
	}
	defer func() {
		for range done {
			<-s.slots
		}
		select {
		case s.answeredSome <- struct{}{}:
		default:
		}
	}()
	return s.record(ctx, done, outcome{replies: replies, status: http.StatusOK, httpCode: http.StatusOK})
}

// failPending records the calls the agent never answered as failed and
// gives back their delegation slots, as for an unreachable agent.
func (s *wsSession) failPending() {
	s.mu.Lock()
	var done []*wsCall
	for k, wc := range s.pending {
		done = append(done, wc)
		delete(s.pending, k)
	}
	s.mu.Unlock()
	if len(done) == 0 {
		return
	}
	out := outcome{failAll: true, noAnswer: true, status: http.StatusBadGateway, httpCode: http.StatusBadGateway}
	ctx, cancel := context.WithTimeout(context.Background(), storeWait)
	defer cancel()
	if err := s.record(ctx, done, out); err != nil {
		s.h.logger.Error("records of unanswered WebSocket calls not stored", zap.Int("calls", len(done)), zap.Error(err))
	}
}

// record runs the HTTP path's accounting step for calls answered (or
// not) on the socket: SLA sample, usage, counters, audit and delegation
// counts.
func (s *wsSession) record(ctx context.Context, calls []*wsCall, out outcome) error {
	x := &exchange{
		db:      s.db,
		req:     &protocol.Request{Batch: true, Calls: make([]protocol.Call, len(calls))},
		grants:  make([]grant, len(calls)),
		ids:     make([]callIdentity, len(calls)),
		started: calls[0].started,
	}
	for i, wc := range calls {
		x.req.Calls[i], x.grants[i], x.ids[i] = wc.call, wc.grant, wc.id
		if wc.started.Before(x.started) {
			x.started = wc.started
		}
	}
	x.elapsed = time.Since(x.started)
	x.settle(out)
	defer x.release()
	err := s.h.record(ctx, x)
	if errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}
