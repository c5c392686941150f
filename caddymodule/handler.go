package caddymodule

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"path"
	"path/filepath"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/asap-sidecar/asap-sidecar/caddymodule/protocol"
	"github.com/asap-sidecar/asap-sidecar/config"
	"github.com/asap-sidecar/asap-sidecar/storage"
)

func init() {
	caddy.RegisterModule(new(Handler))
}

// Handler is the `asap` HTTP handler. It sits in front of reverse_proxy,
// checks every ASAP call, forwards the good ones untouched and records what
// the agent answered.
type Handler struct {
	config.Options

	logger     *zap.Logger
	rt         *agentRuntime
	durability storage.Durability
	metering   bool
	audit      bool
	limits     protocol.Limits
	actions    map[protocol.PayloadType]string
	versions   protocol.Versions
}

// CaddyModule returns the Caddy module information.
func (*Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.asap",
		New: func() caddy.Module { return new(Handler) },
	}
}

// Provision applies defaults and attaches the handler to the asap app.
// It stays cheap: no file or network I/O beyond what the options name.
func (h *Handler) Provision(ctx caddy.Context) error {
	h.logger = ctx.Logger()
	h.Options.ApplyDefaults()
	if h.Storage == "" {
		h.Storage = filepath.Join(caddy.AppDataDir(), "asap")
	}
	h.durability, _ = storage.ParseDurability(h.Durability)
	h.metering = h.Metering != config.MeteringOff
	h.audit = h.Audit != config.MeteringOff
	h.limits = protocol.Limits{MaxBatch: h.MaxBatch}
	h.actions = actionsOf(h.Actions)
	h.versions = h.Options.Versions()
	if err := registerMetrics(ctx.GetMetricsRegistry()); err != nil {
		return fmt.Errorf("asap: registering metrics: %w", err)
	}
	appIface, err := ctx.App("asap")
	if err != nil {
		return fmt.Errorf("asap: loading the asap app: %w", err)
	}
	h.rt, err = appIface.(*App).agent(h.Options, h.logger)
	return err
}

// Validate checks the options.
func (h *Handler) Validate() error { return h.Options.Validate() }

// storeWait bounds how long a request waits for the database to open at
// startup before it is answered 503.
const storeWait = 10 * time.Second

// ServeHTTP implements caddyhttp.MiddlewareHandler. A checked request
// goes negotiate the ASAP-Version → parse → authorize → forward → record
// → respond; WebSocket frames take the same steps in wsproxy.go (the
// handshake is not version-negotiated: the reference's version middleware
// serves HTTP requests only).
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	h.rt.capture(next, r)
	switch classify(r) {
	case passThrough:
		return next.ServeHTTP(w, r)
	case webSocket:
		db, err := h.rt.store.Wait(r.Context(), storeWait)
		if err != nil {
			return h.storageUnavailable(w, err, nil)
		}
		if db.fleet != nil && db.fleet.outbox.Full() {
			return h.backlogFull(w, db, nil)
		}
		if h.Delegation != config.DelegationOff {
			if rej := h.authorizeUpgrade(r, db); rej != nil {
				return h.reject(w, http.StatusForbidden, delegationError(rej))
			}
		}
		return h.serveWebSocket(w, r, next, db)
	case wrongMethod:
		// Not negotiated (the reference negotiates POSTs only), but
		// labelled with the default version as the reference does.
		w = withVersion(w, h.versions.Default)
		w.Header().Set("Allow", http.MethodPost)
		return h.reject(w, http.StatusMethodNotAllowed, protocol.NewError(protocol.CodeInvalidRequest, "method_not_allowed",
			fmt.Sprintf("%s is not served on %s; send JSON-RPC with POST (or open a WebSocket with GET /asap/ws)", truncateASCII(r.Method, 16), r.URL.Path)))
	}

	w, refused, err := h.negotiateVersion(w, r)
	if refused {
		return err
	}
	sent, req, rejection := h.parse(w, r)
	if rejection != nil {
		return rejection()
	}
	db, err := h.rt.store.Wait(r.Context(), storeWait)
	if err != nil {
		return h.storageUnavailable(w, err, singleID(req))
	}
	if db.fleet != nil && db.fleet.outbox.Full() {
		return h.backlogFull(w, db, singleID(req))
	}

	x := &exchange{req: req, db: db}
	x.grants, x.ids = h.admit(r, db, req)
	defer x.release()
	h.rt.rejections.countCalls(req)
	if !req.Forwardable() {
		return h.answerLocally(w, http.StatusOK, localAnswer(req))
	}

	// A task the agent runs is usage whether or not its client waits for
	// the answer: a client hanging up must not turn an executed task into
	// an unmetered failure, so the call to the agent outlives the client
	// (for at most detachedLimit), and so does its record.
	ctx, cancel := detach(r.Context(), detachedLimit)
	defer cancel()
	cw, upstreamErr := h.forward(w, r.WithContext(ctx), next, x, sent)

	x.settle(h.outcome(req, cw, upstreamErr))
	storeErr := h.record(ctx, x)

	return h.respond(cw, x, storeErr, upstreamErr)
}

// parse reads the body (decoded as the agent will decode it, within
// max_body) and parses it. A request that cannot go on gets rejection,
// which answers it.
func (h *Handler) parse(w http.ResponseWriter, r *http.Request) (sent []byte, req *protocol.Request, rejection func() error) {
	// A checked POST must not turn into a tunnel: an agent answering 101
	// would have reverse_proxy pass raw, unchecked bytes to it.
	r.Header.Del("Upgrade")
	if r.ContentLength > int64(h.MaxBody) {
		// Refuse before reading a byte of it.
		return nil, nil, func() error { return h.rejectTooLarge(w) }
	}
	sent, body, err := readBody(r, w, int64(h.MaxBody))
	if err != nil {
		var be *bodyError
		if errors.As(err, &be) {
			code := protocol.CodeParseError
			if be.status == http.StatusUnsupportedMediaType {
				code = protocol.CodeInvalidRequest
			}
			return nil, nil, func() error { return h.reject(w, be.status, protocol.NewError(code, be.reason, be.detail)) }
		}
		return nil, nil, func() error { return h.rejectTooLarge(w) }
	}
	req, perr := protocol.ParseRequest(body, h.limits)
	if perr != nil {
		return nil, nil, func() error { return h.reject(w, http.StatusOK, perr) }
	}
	return sent, req, nil
}

// forward hands the accepted calls to the rest of the route
// (reverse_proxy) and holds the agent's answer for inspection. The agent
// gets exactly the bytes that were checked: the body as sent, or a batch
// of just the accepted calls.
func (h *Handler) forward(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler, x *exchange, sent []byte) (*capture, error) {
	forward, filtered := forwardBody(x.req, sent)
	if filtered {
		// A filtered batch is new JSON: it goes out uncompressed.
		r.Header.Del("Content-Encoding")
	}
	r.Body = io.NopCloser(bytes.NewReader(forward))
	r.ContentLength = int64(len(forward))
	r.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(forward)), nil }

	cw := newCapture(w, true, int(h.InspectLimit))
	x.started = time.Now()
	err := serveNext(next, cw, r)
	x.elapsed = time.Since(x.started)
	return cw, err
}

// respond gives the client the agent's answer (with the sidecar's errors
// for refused batch calls merged in), or the sidecar's own answer when
// the agent's cannot stand: it failed, or its records could not be
// stored.
func (h *Handler) respond(cw *capture, x *exchange, storeErr, upstreamErr error) error {
	out := x.out
	if storeErr != nil {
		h.logger.Error("task records not stored; answering 503 so the client does not take an unrecorded answer",
			zap.Int("calls", len(x.req.Calls)), zap.Error(storeErr))
		if !cw.passing {
			return writeJSON(cw.ResponseWriter, http.StatusServiceUnavailable, protocol.NewError(protocol.CodeInternalError, "record_not_durable",
				"the task ran but its record could not be stored; check the sidecar's storage").WithID(singleID(x.req)).JSON())
		}
	}
	if out.replace == nil {
		return cw.release(out.body)
	}
	if cw.passing {
		// Bytes already reached the client: nothing sane can be added.
		return upstreamErr
	}
	cw.status, cw.wroteHeader = out.status, true
	cw.Header().Set("Content-Type", "application/json")
	return cw.release(out.replace)
}

// admit runs the checks every call passes before it may reach the agent,
// whatever carries it (POST body, batch, WebSocket frame): the delegation
// policy with the request's chain, then envelope-id reuse. Refused calls
// get their error; accepted ones hold delegation slots (grants) and a
// claim on their id (ids), which the caller records or releases.
func (h *Handler) admit(r *http.Request, db *database, req *protocol.Request) ([]grant, []callIdentity) {
	grants := h.authorize(r, db, req)
	return grants, h.refuseReusedIDs(db, req, grants)
}

// storageUnavailable answers 503 when the database did not open.
func (h *Handler) storageUnavailable(w http.ResponseWriter, err error, id json.RawMessage) error {
	h.logger.Error("storage unavailable", zap.String("dir", h.rt.store.Dir()), zap.Error(err))
	return writeJSON(w, http.StatusServiceUnavailable, protocol.NewError(protocol.CodeInternalError, "storage_unavailable",
		"the sidecar's storage is not available; retry later").WithID(id).JSON())
}

// backlogFull refuses a call while the fleet outbox is at its bound: the
// agent is not called, so nothing runs that could not be recorded.
func (h *Handler) backlogFull(w http.ResponseWriter, d *database, id json.RawMessage) error {
	w.Header().Set("Retry-After", "5")
	return writeJSON(w, http.StatusServiceUnavailable, h.backlogError(d).WithID(id).JSON())
}

// backlogError is the answer of a call refused while the fleet outbox is
// full, on any transport.
func (h *Handler) backlogError(d *database) *protocol.Error {
	h.logger.Warn("call refused: fleet outbox full", zap.String("dir", h.rt.store.Dir()),
		zap.Int64("backlog", d.fleet.outbox.Backlog()), zap.Bool("nats_connected", d.fleet.client.Connected()), zap.Error(errBacklogFull))
	return protocol.NewError(protocol.CodeInternalError, "fleet_backlog_full",
		"the sidecar cannot reach the fleet's NATS and its outbox is full; retry later")
}

// detachedLimit bounds how long a call goes on after its client left.
const detachedLimit = 5 * time.Minute

// detach returns a context that is not cancelled with parent, but limit
// after it: work the client started finishes and is recorded, and cannot
// pile up without bound.
func detach(parent context.Context, limit time.Duration) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(context.WithoutCancel(parent))
	stop := context.AfterFunc(parent, func() { time.AfterFunc(limit, cancel) })
	return ctx, func() { stop(); cancel() }
}

// serveNext calls the next handler. reverse_proxy aborts with
// http.ErrAbortHandler when the agent's answer breaks off mid-body; while
// the answer is still held nothing reached the client, so that becomes an
// ordinary upstream error the client gets a JSON-RPC answer for. Once bytes
// were passed through, the abort goes on so the client sees the cut.
func serveNext(next caddyhttp.Handler, cw *capture, r *http.Request) (err error) {
	defer func() {
		if v := recover(); v != nil {
			if v != http.ErrAbortHandler || cw.passing {
				panic(v)
			}
			err = caddyhttp.Error(http.StatusBadGateway, errors.New("the agent's answer broke off mid-body"))
		}
	}()
	return next.ServeHTTP(cw, r)
}

// What the handler does with a request.
const (
	passThrough = iota // not an ASAP path: discovery, health, other routes
	inspect            // a POST on an ASAP path: the full pipeline
	webSocket          // a real WebSocket handshake on an ASAP path
	wrongMethod        // anything else on an ASAP path: 405
)

// classify decides by path first, then by what the request really is:
// headers alone never take a request out of the pipeline (SPEC §2a).
func classify(r *http.Request) int {
	switch strings.TrimSuffix(path.Clean("/"+r.URL.Path), "/") {
	case "/asap", "/asap/stream", "/asap/ws":
	default:
		return passThrough
	}
	switch {
	case isWebSocketHandshake(r):
		return webSocket
	case r.Method == http.MethodPost:
		return inspect
	default:
		return wrongMethod
	}
}

// isWebSocketHandshake reports whether r opens a WebSocket: an HTTP/1.1
// GET whose Connection tokens include "upgrade" and whose Upgrade is
// "websocket", or an HTTP/2+ extended CONNECT with :protocol websocket.
func isWebSocketHandshake(r *http.Request) bool {
	if r.ProtoMajor >= 2 {
		return r.Method == http.MethodConnect && strings.EqualFold(r.Header.Get(":protocol"), "websocket")
	}
	return r.Method == http.MethodGet &&
		headerHasToken(r.Header, "Connection", "upgrade") &&
		strings.EqualFold(strings.TrimSpace(r.Header.Get("Upgrade")), "websocket")
}

// headerHasToken reports whether any of the comma-separated tokens of the
// header's values equals token, case-insensitively.
func headerHasToken(h http.Header, name, token string) bool {
	for _, v := range h.Values(name) {
		for _, t := range strings.Split(v, ",") {
			if strings.EqualFold(strings.TrimSpace(t), token) {
				return true
			}
		}
	}
	return false
}

// truncateASCII shortens s for an error message, keeping it printable.
func truncateASCII(s string, n int) string {
	b := make([]byte, 0, n)
	for i := 0; i < len(s) && len(b) < n; i++ {
		if c := s[i]; c > ' ' && c < 0x7f {
			b = append(b, c)
		}
	}
	return string(b)
}

// rejectTooLarge answers 413 and closes the connection, so that the server
// does not first drain the unread body to keep the connection alive.
func (h *Handler) rejectTooLarge(w http.ResponseWriter) error {
	w.Header().Set("Connection", "close")
	return h.reject(w, http.StatusRequestEntityTooLarge, h.tooLarge())
}

func (h *Handler) tooLarge() *protocol.Error {
	e := protocol.NewError(protocol.CodeInvalidRequest, "body_too_large",
		fmt.Sprintf("the request body is larger than max_body (%d bytes); send less or raise max_body", h.MaxBody))
	e.Extra = map[string]any{"limit": int64(h.MaxBody)}
	return e
}

// reject refuses the whole request with e, without forwarding.
func (h *Handler) reject(w http.ResponseWriter, status int, e *protocol.Error) error {
	h.rt.rejections.count(e.Code, e.Reason)
	return h.answerLocally(w, status, e.JSON())
}

// answerLocally answers without forwarding. Refused calls are counted
// by reason where they are refused.
func (h *Handler) answerLocally(w http.ResponseWriter, status int, body []byte) error {
	h.rt.rejected.Add(1)
	return writeJSON(w, status, body)
}

func writeJSON(w http.ResponseWriter, status int, body []byte) error {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", fmt.Sprint(len(body)))
	w.WriteHeader(status)
	_, err := w.Write(body)
	return err
}

// localAnswer is the answer to a request none of whose calls is forwarded.
func localAnswer(req *protocol.Request) []byte {
	if !req.Batch {
		return req.Calls[0].Err.JSON()
	}
	objs := make([]any, len(req.Calls))
	for i, c := range req.Calls {
		objs[i] = c.Err.Object()
	}
	b, _ := json.Marshal(objs)
	return b
}

// forwardBody is the body the agent gets: the bytes as sent when every
// call is forwarded, else a batch of just the good calls, each byte for
// byte as received.
func forwardBody(req *protocol.Request, sent []byte) (body []byte, filtered bool) {
	if !req.Batch {
		return sent, false
	}
	good := make([][]byte, 0, len(req.Calls))
	for _, c := range req.Calls {
		if c.Err == nil {
			good = append(good, c.Raw)
		}
	}
	if len(good) == len(req.Calls) {
		return sent, false
	}
	b := append([]byte{'['}, bytes.Join(good, []byte{','})...)
	return append(b, ']'), true
}

func singleID(req *protocol.Request) json.RawMessage {
	if req.Batch {
		return nil
	}
	return req.Calls[0].ID
}

// outcome is what the agent's answer means for the records and the client.
type outcome struct {
	replies  []protocol.Reply // what the agent answered, in order
	failAll  bool             // every forwarded call failed
	noAnswer bool             // the agent never answered (no usage)
	status   int              // HTTP status the client gets with replace
	body     []byte           // held answer with sidecar errors merged in
	replace  []byte           // answer replacing the agent's
	httpCode int              // status the agent answered
	// truncated: the answer was too large to inspect whole, so a call
	// without a readable reply may still have been answered.
	truncated bool
}

func (h *Handler) outcome(req *protocol.Request, cw *capture, upstreamErr error) outcome {
	out := outcome{status: cw.status, httpCode: cw.status}
	if upstreamErr != nil && !cw.passing {
		// Unreachable, timed out, or reset before the answer was complete.
		code, status, reason := protocol.CodeConnectionError, http.StatusBadGateway, "agent_unreachable"
		var he caddyhttp.HandlerError
		if errors.As(upstreamErr, &he) && he.StatusCode == http.StatusGatewayTimeout {
			code, status, reason = protocol.CodeTimeout, http.StatusGatewayTimeout, "agent_timeout"
		}
		h.logger.Warn("agent did not answer", zap.String("reason", reason), zap.Error(upstreamErr))
		out.failAll, out.noAnswer, out.status = true, true, status
		out.replace = upstreamFailure(req, code, reason, "the agent could not be reached or did not finish its answer; retry later")
		return out
	}
	body := cw.inspected()
	var replies []protocol.Reply
	var perr error
	if strings.HasPrefix(cw.Header().Get("Content-Type"), "text/event-stream") {
		replies = protocol.ParseSSE(body)
	} else {
		replies, perr = protocol.ParseResponse(body)
	}
	if perr != nil && cw.held() && (cw.status < 300 || cw.status >= 500) {
		h.logger.Warn("agent answered something that is not JSON-RPC", zap.Int("status", cw.status), zap.Int("bytes", len(body)))
		out.failAll, out.status = true, http.StatusBadGateway
		out.replace = upstreamFailure(req, protocol.CodeRemoteError, "invalid_agent_answer", "the agent's answer is not a JSON-RPC response")
		return out
	}
	out.replies, out.truncated = replies, cw.truncated
	if cw.status >= 500 {
		out.failAll = true
	}
	if req.Batch && cw.held() {
		out.body = mergeBatch(req, body)
	}
	return out
}

// mergeBatch appends the sidecar's answers for rejected calls to the
// agent's batch answer.
func mergeBatch(req *protocol.Request, agentBody []byte) []byte {
	var errs []json.RawMessage
	for _, c := range req.Calls {
		if c.Err != nil {
			errs = append(errs, c.Err.JSON())
		}
	}
	if len(errs) == 0 {
		return nil
	}
	var elems []json.RawMessage
	if err := json.Unmarshal(agentBody, &elems); err != nil {
		elems = []json.RawMessage{json.RawMessage(bytes.TrimSpace(agentBody))}
	}
	b, _ := json.Marshal(append(elems, errs...))
	return b
}

// upstreamFailure answers every call of req with the same error; rejected
// calls keep their own error.
func upstreamFailure(req *protocol.Request, code int, reason, detail string) []byte {
	e := protocol.NewError(code, reason, detail)
	if !req.Batch {
		return e.WithID(req.Calls[0].ID).JSON()
	}
	objs := make([]any, len(req.Calls))
	for i, c := range req.Calls {
		if c.Err != nil {
			objs[i] = c.Err.Object()
		} else {
			objs[i] = e.WithID(c.ID).Object()
		}
	}
	b, _ := json.Marshal(objs)
	return b
}

// replyFor finds the agent's reply to call c. A single call's answer is
// the last reply: the one JSON-RPC response, or the final chunk of a
// stream (SSE envelopes carry no JSON-RPC id). In a batch, answers match by
// the decoded id ("\u0061" is "a", 1e0 is 1), as the agent reads them.
func replyFor(req *protocol.Request, c *protocol.Call, replies []protocol.Reply) (protocol.Reply, bool) {
	if len(replies) == 0 {
		return protocol.Reply{}, false
	}
	if !req.Batch {
		return replies[len(replies)-1], true
	}
	for _, r := range replies {
		if r.Key != "" && r.Key == c.Key {
			return r, true
		}
	}
	return protocol.Reply{}, false
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddy.Validator             = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
)
