package caddymodule

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/asap-sidecar/asap-sidecar/caddymodule/audit"
	"github.com/asap-sidecar/asap-sidecar/caddymodule/sla"
	"github.com/asap-sidecar/asap-sidecar/config"
	"github.com/asap-sidecar/asap-sidecar/storage"
)

// trackers are the SLA trackers of one database, one per agent. They live
// with the database, so reloads keep their buckets and open breaches; a
// reload only reconfigures them and re-points their alerts.
type trackers struct {
	mu   sync.Mutex
	byID map[string]*trackerEntry
}

type trackerEntry struct {
	tr   *sla.Tracker
	sink atomic.Pointer[alertSink]
}

// alertSink is where a tracker's breaches go: the log, webhooks, the live
// subscribers, and the audit log.
type alertSink struct {
	logger   *zap.Logger
	webhooks []webhookTarget
	audit    *audit.Log // nil: no audit entries
}

func (s *trackers) closeAll() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	var errs []error
	for _, e := range s.byID {
		liveTrackers.Delete(e.tr)
		errs = append(errs, e.tr.Close())
	}
	s.byID = nil
	return errors.Join(errs...)
}

// tracker returns the agent's tracker, creating it on first use and
// applying cfg and sink either way.
func (sh *database) tracker(cfg sla.Config, sink *alertSink) (*sla.Tracker, error) {
	sh.slas.mu.Lock()
	defer sh.slas.mu.Unlock()
	if sh.slas.byID == nil {
		sh.slas.byID = map[string]*trackerEntry{}
	}
	if e, ok := sh.slas.byID[cfg.Agent]; ok {
		e.sink.Store(sink)
		e.tr.Configure(cfg)
		return e.tr, nil
	}
	e := &trackerEntry{}
	e.sink.Store(sink)
	tr, err := sla.Open(sh.db, cfg, sla.Hooks{
		Notify: func(ev sla.Event) { e.sink.Load().notify(ev) },
		Record: func(tx *storage.Tx, ev sla.Event) error { return e.sink.Load().record(tx, ev) },
	})
	if err != nil {
		return nil, err
	}
	e.tr = tr
	sh.slas.byID[cfg.Agent] = e
	liveTrackers.Store(tr, sh.db.Dir())
	return tr, nil
}

func (s *alertSink) notify(ev sla.Event) {
	b := ev.Breach
	fields := []zap.Field{zap.String("breach_id", b.ID), zap.String("agent", b.AgentID), zap.String("type", b.BreachType),
		zap.String("threshold", b.Threshold), zap.String("actual", b.Actual), zap.String("severity", b.Severity)}
	if ev.Method == "sla.breach" {
		s.logger.Warn("SLA breach", fields...)
	} else {
		s.logger.Info("SLA breach resolved", fields...)
	}
	n := notificationOf(ev)
	hub.publish(n)
	webhooks.enqueue(s.logger, s.webhooks, n)
}

func (s *alertSink) record(tx *storage.Tx, ev sla.Event) error {
	if s.audit == nil {
		return nil
	}
	op := audit.OpSLABreach
	if ev.Method == "sla.resolved" {
		op = audit.OpSLAResolved
	}
	b := ev.Breach
	d := map[string]any{"breach_id": b.ID, "breach_type": b.BreachType, "threshold": b.Threshold, "actual": b.Actual,
		"severity": b.Severity, "detected_at": b.DetectedAt.UTC().Format(audit.TimeFormat)}
	if b.ResolvedAt != nil {
		d["resolved_at"] = b.ResolvedAt.UTC().Format(audit.TimeFormat)
	}
	err := s.audit.Stage(tx, time.Now(), audit.Record{Operation: op, AgentURN: b.AgentID, Details: d})
	return err
}

// slaConfig is the tracker config: the manifest's SLA overridden by the
// Caddyfile's sla block.
func (rt *agentRuntime) slaConfig() sla.Config {
	def := sla.Definition{}
	if m := rt.manifestSLA.Load(); m != nil {
		def = *m
	}
	cfg := sla.Config{Agent: rt.Agent, MinSamples: config.DefaultMinSamples}
	if s := rt.SLA; s != nil {
		o := sla.Definition{MaxLatencyP95: s.MaxLatencyP95.Std(), SupportHours: s.SupportHours}
		if s.Availability != nil {
			v := float64(*s.Availability)
			o.Availability = &v
		}
		if s.MaxErrorRate != nil {
			v := float64(*s.MaxErrorRate)
			o.MaxErrorRate = &v
		}
		def = def.Override(o)
		cfg.MinSamples = s.MinSamples
		cfg.Window = s.Window.Std()
	}
	cfg.Definition = def
	return cfg
}

func (rt *agentRuntime) healthInterval() time.Duration {
	if rt.SLA != nil && rt.SLA.HealthInterval > 0 {
		return rt.SLA.HealthInterval.Std()
	}
	return config.DefaultHealthEvery
}

func (rt *agentRuntime) alertSink(d *database) *alertSink {
	s := &alertSink{logger: rt.logger.Named("sla")}
	for _, a := range rt.Alerts {
		s.webhooks = append(s.webhooks, webhookTarget{url: a.Webhook, secret: expandSecret(rt.logger, a)})
	}
	if rt.audit {
		s.audit = d.audit
	}
	return s
}

// slaTracker is the handler's tracker, kept in d (nil without an agent
// name or a database).
func (rt *agentRuntime) slaTracker(d *database) *sla.Tracker {
	if t := rt.trackerRef.Load(); t != nil {
		return t
	}
	if rt.Agent == "" || d == nil {
		return nil
	}
	rt.trackerMu.Lock()
	defer rt.trackerMu.Unlock()
	if t := rt.trackerRef.Load(); t != nil {
		return t
	}
	t, err := d.tracker(rt.slaConfig(), rt.alertSink(d))
	if err != nil {
		rt.logger.Error("opening the SLA tracker", zap.Error(err))
		return nil
	}
	rt.trackerRef.Store(t)
	return t
}

// observe feeds the SLA tracker one request's outcome: a sample per
// forwarded call, and a failed availability sample when the agent could
// not be reached (a passive health check).
func (h *Handler) observe(x *exchange) {
	t := h.rt.slaTracker(x.db)
	if t == nil {
		return
	}
	for i, c := range x.req.Calls {
		if c.Err != nil {
			continue
		}
		t.Observe(x.elapsed, x.results[i].failed)
	}
	if x.out.noAnswer {
		t.Health(false)
	}
}

// upstream is how the handler reaches the agent outside of a request: the
// rest of its route (reverse_proxy), captured from the first request.
type upstream struct {
	next   caddyhttp.Handler
	server *caddyhttp.Server
	host   string
}

func (rt *agentRuntime) capture(next caddyhttp.Handler, r *http.Request) {
	if rt.upstream.Load() != nil {
		return
	}
	srv, _ := r.Context().Value(caddyhttp.ServerCtxKey).(*caddyhttp.Server)
	rt.upstream.Store(&upstream{next: next, server: srv, host: r.Host})
}

var errNoUpstreamYet = errors.New("the agent is reached through the route, known from the first request")

// fetch GETs path from the agent: through health_url when that is the
// path asked for and it is set, else through the captured route.
func (rt *agentRuntime) fetch(ctx context.Context, path string) (int, []byte, error) {
	u := rt.upstream.Load()
	if u == nil {
		return 0, nil, errNoUpstreamYet
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+u.host+path, nil)
	if err != nil {
		return 0, nil, err
	}
	req.Host = u.host
	rec := &memoryResponse{header: http.Header{}, limit: 1 << 20}
	req = caddyhttp.PrepareRequest(req, caddy.NewReplacer(), rec, u.server)
	err = u.next.ServeHTTP(rec, req)
	if rec.status == 0 {
		rec.status = http.StatusOK
	}
	return rec.status, rec.body, err
}

// memoryResponse keeps a bounded answer in memory.
type memoryResponse struct {
	header http.Header
	status int
	body   []byte
	limit  int
}

func (m *memoryResponse) Header() http.Header { return m.header }
func (m *memoryResponse) WriteHeader(code int) {
	if m.status == 0 {
		m.status = code
	}
}
func (m *memoryResponse) Write(p []byte) (int, error) {
	if m.status == 0 {
		m.status = http.StatusOK
	}
	if room := m.limit - len(m.body); room > 0 {
		m.body = append(m.body, p[:min(room, len(p))]...)
	}
	return len(p), nil
}

var healthClient = &http.Client{Timeout: 5 * time.Second}

// checkHealth runs one active health check; known is false when the agent
// cannot be asked yet. The outcome is kept for /asap/status, and a
// failure is logged (rate-limited).
func (rt *agentRuntime) checkHealth(ctx context.Context) (up, known bool) {
	ctx, cancel := context.WithTimeout(ctx, min(rt.healthInterval(), 5*time.Second))
	defer cancel()
	var status int
	var err error
	if rt.SLA != nil && rt.SLA.HealthURL != "" {
		status, err = getHealthURL(ctx, rt.SLA.HealthURL)
	} else {
		status, _, err = rt.fetch(ctx, "/.well-known/asap/health")
		if errors.Is(err, errNoUpstreamYet) {
			return false, false
		}
	}
	up = err == nil && status == http.StatusOK
	if err == nil && !up {
		err = fmt.Errorf("answered %d, not 200", status)
	}
	rt.probes.record(rt.logger, probeHealth, status, err, up)
	return up, true
}

// getHealthURL asks the health_url option's URL.
func getHealthURL(ctx context.Context, url string) (int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, err
	}
	resp, err := healthClient.Do(req)
	if err != nil {
		return 0, err
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<16))
	resp.Body.Close()
	return resp.StatusCode, nil
}

// refreshManifest reads the agent's manifest through the route and applies
// its sla block; it returns when to read it again (its ttl_seconds).
func (rt *agentRuntime) refreshManifest(ctx context.Context, d *database) time.Duration {
	status, body, err := rt.fetch(ctx, "/.well-known/asap/manifest.json")
	if errors.Is(err, errNoUpstreamYet) {
		return 2 * time.Second
	}
	if err == nil && status != http.StatusOK {
		err = fmt.Errorf("answered %d, not 200", status)
	}
	if err != nil {
		rt.probes.record(rt.logger, probeManifest, status, err, false)
		return 30 * time.Second
	}
	def, ttl, err := sla.FromManifest(body)
	if err != nil {
		rt.probes.record(rt.logger, probeManifest, status, fmt.Errorf("unusable sla block, using the Caddyfile's: %w", err), false)
		return ttl
	}
	rt.probes.record(rt.logger, probeManifest, status, nil, true)
	rt.manifestSLA.Store(&def)
	if t := rt.slaTracker(d); t != nil {
		t.Configure(rt.slaConfig())
	}
	return ttl
}

// slaLoop runs the handler's health checks and manifest refreshes until
// stop is closed.
func (rt *agentRuntime) slaLoop(stop <-chan struct{}) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { <-stop; cancel() }()
	d, err := rt.store.Wait(ctx, time.Minute)
	if err != nil {
		return
	}
	if t := rt.slaTracker(d); t != nil {
		t.Configure(rt.slaConfig()) // a reload's new options
	}
	health := time.NewTicker(rt.healthInterval())
	defer health.Stop()
	manifest := time.NewTimer(0)
	defer manifest.Stop()
	for {
		select {
		case <-stop:
			return
		case <-health.C:
			if up, known := rt.checkHealth(ctx); known {
				if t := rt.slaTracker(d); t != nil {
					t.Health(up)
				}
			}
		case <-manifest.C:
			manifest.Reset(rt.refreshManifest(ctx, d))
		}
	}
}

// liveTrackers are every open tracker of the process (key) with its
// storage directory (value), for the metrics collector.
var liveTrackers sync.Map
