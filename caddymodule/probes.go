package caddymodule

import (
	"sync"
	"time"

	"go.uber.org/zap"
)

// Kinds of probe the sidecar sends the agent.
const (
	probeHealth   = "health"
	probeManifest = "manifest"
)

// probeWarnEvery is how often a failing probe of one kind is logged per
// agent; failures in between are counted and reported with the next.
const probeWarnEvery = time.Minute

// ProbeResult is the outcome of the last health check or manifest fetch,
// as /asap/status shows it.
type ProbeResult struct {
	At time.Time `json:"at"`
	OK bool      `json:"ok"`
	// Status is the agent's HTTP status (0 when it did not answer).
	Status int    `json:"status,omitempty"`
	Error  string `json:"error,omitempty"`
	// Failures is how many probes in a row have failed, this one
	// included.
	Failures int `json:"consecutive_failures"`
}

// probes remembers the last result of each kind and warns when one
// fails: an agent that does not serve what the sidecar asks for would
// otherwise only show as an availability of 0.
type probes struct {
	mu         sync.Mutex
	now        func() time.Time
	last       map[string]*ProbeResult
	warnedAt   map[string]time.Time
	suppressed map[string]int
	// observed, when set (tests), is called after each result is
	// recorded and logged.
	observed func(kind string, r ProbeResult)
}

func newProbes() *probes {
	return &probes{now: time.Now, last: map[string]*ProbeResult{}, warnedAt: map[string]time.Time{}, suppressed: map[string]int{}}
}

// hints say what the agent must serve, in the failure's warning.
var probeHints = map[string]string{
	probeHealth: "the agent must answer GET /.well-known/asap/health with 200 when healthy; " +
		"until it does, availability counts it as down (docs/wire.md: What an agent must serve)",
	probeManifest: "the agent should serve GET /.well-known/asap/manifest.json with 200 and an sla block; " +
		"until it does, only the Caddyfile's sla options apply (docs/wire.md: What an agent must serve)",
}

// record notes a probe's outcome and logs a failure, at most once per
// probeWarnEvery per kind, with the number of failures not logged since.
func (p *probes) record(logger *zap.Logger, kind string, status int, err error, ok bool) {
	p.mu.Lock()
	at := p.now()
	r := ProbeResult{At: at.UTC(), OK: ok, Status: status}
	if err != nil {
		r.Error = err.Error()
	}
	if prev := p.last[kind]; !ok && prev != nil && !prev.OK {
		r.Failures = prev.Failures + 1
	} else if !ok {
		r.Failures = 1
	}
	p.last[kind] = &r
	warn, suppressed := false, 0
	if !ok {
		if last, seen := p.warnedAt[kind]; !seen || at.Sub(last) >= probeWarnEvery {
			warn, suppressed = true, p.suppressed[kind]
			p.warnedAt[kind], p.suppressed[kind] = at, 0
		} else {
			p.suppressed[kind]++
		}
	}
	observed := p.observed
	p.mu.Unlock()

	if warn {
		fields := []zap.Field{zap.String("probe", kind), zap.Int("status", status), zap.Int("consecutive_failures", r.Failures),
			zap.Int("failures_not_logged", suppressed), zap.String("hint", probeHints[kind])}
		if err != nil {
			fields = append(fields, zap.Error(err))
		}
		logger.Warn("agent "+kind+" probe failed", fields...)
	}
	if observed != nil {
		observed(kind, r)
	}
}

// lastOf is the last result of kind, nil before the first.
func (p *probes) lastOf(kind string) *ProbeResult {
	p.mu.Lock()
	defer p.mu.Unlock()
	if r := p.last[kind]; r != nil {
		c := *r
		return &c
	}
	return nil
}
