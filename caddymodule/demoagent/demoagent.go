// Package demoagent is a small ASAP agent, served by Caddy as the
// `asap_demo_agent` handler, so that the sidecar can be run and tested end
// to end without a Python agent. Skills: echo, sleep (input.ms), fail. It
// negotiates ASAP-Version and answers the identity endpoints the
// reference's compliance harness probes as the reference agent does
// (identity.go).
package demoagent

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/coder/websocket"
	"github.com/oklog/ulid/v2"

	"github.com/asap-sidecar/asap-sidecar/caddymodule/protocol"
)

func init() {
	caddy.RegisterModule(new(Agent))
	httpcaddyfile.RegisterHandlerDirective("asap_demo_agent", parseCaddyfile)
	httpcaddyfile.RegisterDirectiveOrder("asap_demo_agent", httpcaddyfile.After, "reverse_proxy")
}

// Agent is the demo agent handler. It answers every request itself.
type Agent struct {
	// ID is the agent's URN. Default urn:asap:agent:demo.
	ID string `json:"agent,omitempty"`
	// SLA is the manifest's sla block.
	SLA *ManifestSLA `json:"sla,omitempty"`
	// TTLSeconds is the manifest's ttl_seconds. Default 300.
	TTLSeconds int `json:"ttl_seconds,omitempty"`

	started time.Time
	// unhealthy is set through POST /demo/health to exercise health checks.
	unhealthy atomic.Bool
}

// ManifestSLA is the manifest's sla block, in the reference's shape.
type ManifestSLA struct {
	Availability    string `json:"availability,omitempty"`
	MaxLatencyP95MS int    `json:"max_latency_p95_ms,omitempty"`
	MaxErrorRate    string `json:"max_error_rate,omitempty"`
	SupportHours    string `json:"support_hours,omitempty"`
}

func defaultSLA() *ManifestSLA {
	return &ManifestSLA{Availability: "99.5%", MaxLatencyP95MS: 500, MaxErrorRate: "1%", SupportHours: "24/7"}
}

// CaddyModule returns the Caddy module information.
func (*Agent) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.asap_demo_agent",
		New: func() caddy.Module { return new(Agent) },
	}
}

// Provision applies defaults.
func (a *Agent) Provision(caddy.Context) error {
	if a.ID == "" {
		a.ID = "urn:asap:agent:demo"
	}
	if a.SLA == nil {
		a.SLA = defaultSLA()
	}
	if a.TTLSeconds == 0 {
		a.TTLSeconds = 300
	}
	a.started = time.Now()
	return nil
}

// Validate checks the configuration.
func (a *Agent) Validate() error {
	if !protocol.ValidURN(a.ID) {
		return fmt.Errorf("asap_demo_agent: option agent: %q is not an agent URN", a.ID)
	}
	if a.TTLSeconds < 1 {
		return fmt.Errorf("asap_demo_agent: option ttl_seconds: must be at least 1")
	}
	return nil
}

// ServeHTTP implements caddyhttp.MiddlewareHandler.
func (a *Agent) ServeHTTP(w http.ResponseWriter, r *http.Request, _ caddyhttp.Handler) error {
	if !negotiateVersion(w, r) {
		return nil
	}
	switch {
	case r.URL.Path == "/asap" && r.Method == http.MethodPost:
		a.serveRPC(w, r)
	case r.URL.Path == "/asap/stream" && r.Method == http.MethodPost:
		a.serveStream(w, r)
	case r.URL.Path == "/asap/ws":
		a.serveWS(w, r)
	case r.URL.Path == "/.well-known/asap/manifest.json":
		a.serveManifest(w, r)
	case r.URL.Path == "/.well-known/asap/health":
		a.serveHealth(w)
	case r.URL.Path == "/asap/agent/register":
		serveRegister(w, r)
	case r.URL.Path == "/asap/capability/list":
		serveCapabilityList(w, r)
	case r.URL.Path == "/demo/health" && r.Method == http.MethodPost:
		var body struct{ Healthy bool }
		if err := json.NewDecoder(r.Body).Decode(&body); err != nil {
			http.Error(w, `send {"healthy": true|false}`, http.StatusBadRequest)
			return nil
		}
		a.unhealthy.Store(!body.Healthy)
		w.WriteHeader(http.StatusNoContent)
	default:
		writeJSON(w, http.StatusNotFound, map[string]string{"detail": "Not Found"})
	}
	return nil
}

const maxBody = 10 << 20

func (a *Agent) serveRPC(w http.ResponseWriter, r *http.Request) {
	body, err := readBody(w, r)
	if err != nil {
		writeJSON(w, http.StatusRequestEntityTooLarge, map[string]string{"detail": err.Error()})
		return
	}
	writeRaw(w, http.StatusOK, a.answer(r.Context(), body))
}

// answer handles a JSON-RPC body (single or batch) and returns the reply.
func (a *Agent) answer(ctx context.Context, body []byte) []byte {
	req, perr := protocol.ParseRequest(body, protocol.Limits{})
	if perr != nil {
		return perr.JSON()
	}
	replies := make([]any, len(req.Calls))
	for i, c := range req.Calls {
		if c.Err != nil {
			replies[i] = c.Err.Object()
			continue
		}
		replies[i] = a.handle(ctx, &c)
	}
	var out any = replies
	if !req.Batch {
		out = replies[0]
	}
	b, _ := json.Marshal(out)
	return b
}

type rpcResult struct {
	JSONRPC string          `json:"jsonrpc"`
	Result  map[string]any  `json:"result"`
	ID      json.RawMessage `json:"id"`
}

func (a *Agent) handle(ctx context.Context, c *protocol.Call) any {
	env := &c.Envelope
	switch env.Type() {
	case protocol.TypeTaskRequest:
		payload := a.runTask(ctx, env)
		return rpcResult{JSONRPC: "2.0", ID: c.ID, Result: map[string]any{"envelope": a.reply(env, "task.response", payload)}}
	case protocol.TypeTaskCancel:
		var p struct {
			TaskID string `json:"task_id"`
		}
		_ = json.Unmarshal(env.Payload, &p)
		payload := map[string]any{"task_id": p.TaskID, "status": protocol.StatusCancelled, "result": nil, "final_state": nil, "metrics": nil}
		return rpcResult{JSONRPC: "2.0", ID: c.ID, Result: map[string]any{"envelope": a.reply(env, "task.response", payload)}}
	}
	e := protocol.NewError(-32012, "handler_not_found", "the demo agent has no handler for payload type "+env.PayloadType)
	e.Extra = map[string]any{"payload_type": env.PayloadType}
	return e.WithID(c.ID).Object()
}

type taskInput struct {
	ConversationID string          `json:"conversation_id"`
	SkillID        string          `json:"skill_id"`
	Input          json.RawMessage `json:"input"`
}

// runTask runs a skill and returns the task.response payload.
func (a *Agent) runTask(ctx context.Context, env *protocol.Envelope) map[string]any {
	start := time.Now()
	var in taskInput
	_ = json.Unmarshal(env.Payload, &in)
	var input map[string]any
	_ = json.Unmarshal(in.Input, &input)

	status := protocol.StatusCompleted
	var result any
	switch in.SkillID {
	case "echo":
		result = map[string]any{"echo": input}
	case "sleep":
		ms := number(input["ms"], 0)
		ms = math.Max(0, math.Min(ms, 60_000))
		t := time.NewTimer(time.Duration(ms * float64(time.Millisecond)))
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
		}
		result = map[string]any{"slept_ms": ms}
	case "fail":
		status = protocol.StatusFailed
		result = map[string]any{"error": "the fail skill always fails"}
	default:
		status = protocol.StatusFailed
		result = map[string]any{"error": fmt.Sprintf("unknown skill %q; use echo, sleep or fail", in.SkillID)}
	}
	out, _ := json.Marshal(result)
	metrics := map[string]any{
		// Inputs may dictate the figures so tests know what to expect.
		"tokens_in":   number(input["tokens_in"], float64((len(in.Input)+3)/4)),
		"tokens_out":  number(input["tokens_out"], float64((len(out)+3)/4)),
		"api_calls":   number(input["api_calls"], 1),
		"duration_ms": time.Since(start).Milliseconds(),
	}
	return map[string]any{
		"task_id":     "task_" + ulid.Make().String(),
		"status":      status,
		"result":      result,
		"final_state": nil,
		"metrics":     metrics,
	}
}

func number(v any, def float64) float64 {
	switch n := v.(type) {
	case float64:
		return n
	case string:
		if f, err := strconv.ParseFloat(n, 64); err == nil && !math.IsNaN(f) && !math.IsInf(f, 0) {
			return f
		}
	}
	return def
}

// reply builds an answering envelope.
func (a *Agent) reply(req *protocol.Envelope, payloadType string, payload any) map[string]any {
	var trace any
	if req.TraceID != "" {
		trace = req.TraceID
	}
	return map[string]any{
		"id":             ulid.Make().String(),
		"asap_version":   req.ASAPVersion,
		"timestamp":      time.Now().UTC().Format(time.RFC3339Nano),
		"sender":         a.ID,
		"recipient":      req.Sender,
		"payload_type":   payloadType,
		"payload":        payload,
		"correlation_id": req.ID,
		"trace_id":       trace,
		"requires_ack":   false,
		"extensions":     nil,
	}
}

// serveStream answers POST /asap/stream with Server-Sent Events: input.chunks
// task.stream envelopes (default 3), input.interval_ms apart (default 50),
// each flushed at once; the last one is final.
func (a *Agent) serveStream(w http.ResponseWriter, r *http.Request) {
	body, err := readBody(w, r)
	if err != nil {
		writeJSON(w, http.StatusRequestEntityTooLarge, map[string]string{"detail": err.Error()})
		return
	}
	req, perr := protocol.ParseRequest(body, protocol.Limits{})
	if perr != nil {
		writeRaw(w, http.StatusOK, perr.JSON())
		return
	}
	if req.Batch || req.Calls[0].Err != nil {
		writeRaw(w, http.StatusOK, protocol.NewError(protocol.CodeInvalidRequest, "stream_needs_one_call", "stream one valid call at a time").WithID(req.Calls[0].ID).JSON())
		return
	}
	env := &req.Calls[0].Envelope
	var in taskInput
	_ = json.Unmarshal(env.Payload, &in)
	var input map[string]any
	_ = json.Unmarshal(in.Input, &input)
	chunks := int(math.Max(1, math.Min(number(input["chunks"], 3), 100)))
	interval := time.Duration(math.Max(0, math.Min(number(input["interval_ms"], 50), 10_000))) * time.Millisecond

	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	taskID := "task_" + ulid.Make().String()
	for i := 1; i <= chunks; i++ {
		final := i == chunks
		payload := map[string]any{"chunk": fmt.Sprintf("chunk %d of %d", i, chunks), "progress": float64(i) / float64(chunks), "final": final, "status": nil, "task_id": taskID}
		if final {
			payload["status"] = protocol.StatusCompleted
		}
		b, _ := json.Marshal(a.reply(env, "task.stream", payload))
		if _, err := fmt.Fprintf(w, "data: %s\n\n", b); err != nil {
			return
		}
		if err := rc.Flush(); err != nil {
			return
		}
		if !final {
			select {
			case <-time.After(interval):
			case <-r.Context().Done():
				return
			}
		}
	}
}

// serveWS speaks JSON-RPC over WebSocket: one request per text frame, one
// answer per frame. Frames that are not JSON are ignored, as the
// reference does.
func (a *Agent) serveWS(w http.ResponseWriter, r *http.Request) {
	conn, err := websocket.Accept(w, r, nil)
	if err != nil {
		return
	}
	defer conn.CloseNow()
	conn.SetReadLimit(maxBody)
	ctx := r.Context()
	for {
		typ, msg, err := conn.Read(ctx)
		if err != nil {
			return
		}
		if typ != websocket.MessageText || !json.Valid(msg) {
			continue
		}
		if err := conn.Write(ctx, websocket.MessageText, a.answer(ctx, msg)); err != nil {
			return
		}
	}
}

func (a *Agent) serveManifest(w http.ResponseWriter, r *http.Request) {
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	manifestSkills := make([]any, len(skills))
	for i, s := range skills {
		manifestSkills[i] = map[string]any{"id": s.id, "description": s.description, "input_schema": nil, "output_schema": nil}
	}
	writeJSON(w, http.StatusOK, map[string]any{
		"id":          a.ID,
		"name":        "ASAP demo agent",
		"version":     "1.0.0",
		"description": "Echoes, sleeps and fails on request; ships with asap-sidecar for demos and tests.",
		"capabilities": map[string]any{
			"asap_version":      "0.1",
			"skills":            manifestSkills,
			"state_persistence": false,
			"streaming":         true,
			"mcp_tools":         []string{},
		},
		"endpoints":          map[string]any{"asap": scheme + "://" + r.Host + "/asap", "events": nil},
		"supported_versions": protocol.SupportedVersions(),
		"auth":               nil,
		"signature":          nil,
		"sla":                a.SLA,
		"verification":       nil,
		"ttl_seconds":        a.TTLSeconds,
	})
}

// skills are the demo agent's skills, listed in the manifest and as
// capabilities.
var skills = []struct{ id, description string }{
	{"echo", "Returns its input"},
	{"sleep", "Sleeps input.ms milliseconds"},
	{"fail", "Always fails"},
}

// negotiateVersion does what the reference's version middleware does: on
// POST /asap and /asap/stream the ASAP-Version list is negotiated (a list
// naming no supported version is answered -32000 here, and false
// returned); every answer carries the version, the default on other
// paths. WebSocket handshakes are left alone, as the middleware serves
// plain HTTP only.
func negotiateVersion(w http.ResponseWriter, r *http.Request) bool {
	if strings.EqualFold(r.Header.Get("Upgrade"), "websocket") {
		return true
	}
	versions := protocol.DefaultVersions()
	version := versions.Default
	if r.Method == http.MethodPost && (r.URL.Path == "/asap" || r.URL.Path == "/asap/stream") {
		values := r.Header.Values(protocol.VersionHeader)
		v, ok := versions.Negotiate(values)
		if !ok {
			w.Header().Set(protocol.VersionHeader, versions.Default)
			writeRaw(w, http.StatusOK, versions.Incompatible(values).JSON())
			return false
		}
		version = v
	}
	w.Header().Set(protocol.VersionHeader, version)
	return true
}

func (a *Agent) serveHealth(w http.ResponseWriter) {
	status, code := "healthy", http.StatusOK
	if a.unhealthy.Load() {
		status, code = "unhealthy", http.StatusServiceUnavailable
	}
	writeJSON(w, code, map[string]any{
		"status":         status,
		"agent_id":       a.ID,
		"version":        "1.0.0",
		"asap_version":   "0.1",
		"uptime_seconds": math.Round(time.Since(a.started).Seconds()*100) / 100,
		"load":           nil,
	})
}

func readBody(w http.ResponseWriter, r *http.Request) ([]byte, error) {
	return io.ReadAll(http.MaxBytesReader(w, r.Body, maxBody))
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, _ := json.Marshal(v)
	writeRaw(w, status, b)
}

func writeRaw(w http.ResponseWriter, status int, b []byte) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(status)
	_, _ = w.Write(b)
}

func parseCaddyfile(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	a := new(Agent)
	err := a.UnmarshalCaddyfile(h.Dispenser)
	return a, err
}

// UnmarshalCaddyfile reads:
//
//	asap_demo_agent {
//		agent           <urn>
//		ttl_seconds     <n>
//		availability    <percent>
//		max_latency_p95 <duration>
//		max_error_rate  <percent>
//	}
func (a *Agent) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next()
	// Without this, an argument hides the block from NextBlock and both
	// would be dropped without a word.
	if d.NextArg() {
		return d.Errf("asap_demo_agent takes no arguments on its first line, got %q; put options in a block", d.Val())
	}
	for d.NextBlock(0) {
		opt := d.Val()
		if !d.NextArg() {
			return d.ArgErr()
		}
		val := d.Val()
		if a.SLA == nil && opt != "agent" && opt != "ttl_seconds" {
			a.SLA = defaultSLA()
		}
		switch opt {
		case "agent":
			a.ID = val
		case "ttl_seconds":
			n, err := strconv.Atoi(val)
			if err != nil {
				return d.Errf("ttl_seconds: %q is not a whole number", val)
			}
			a.TTLSeconds = n
		case "availability":
			a.SLA.Availability = val
		case "max_latency_p95":
			dur, err := caddy.ParseDuration(val)
			if err != nil {
				return d.Errf("max_latency_p95: %v", err)
			}
			a.SLA.MaxLatencyP95MS = int(dur.Milliseconds())
		case "max_error_rate":
			a.SLA.MaxErrorRate = val
		default:
			return d.Errf("unknown asap_demo_agent option %q", opt)
		}
	}
	return nil
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Agent)(nil)
	_ caddy.Validator             = (*Agent)(nil)
	_ caddyhttp.MiddlewareHandler = (*Agent)(nil)
	_ caddyfile.Unmarshaler       = (*Agent)(nil)
)
