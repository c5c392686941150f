package caddymodule

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

// probeClock is a clock the test moves.
type probeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *probeClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *probeClock) add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// watchProbes makes the running agent's probes use clock and report each
// result on the returned channels, health and manifest.
func watchProbes(t *testing.T, clock *probeClock) (health, manifest <-chan ProbeResult) {
	t.Helper()
	chs := map[string]chan ProbeResult{probeHealth: make(chan ProbeResult, 100), probeManifest: make(chan ProbeResult, 100)}
	p := runningAgent(t).probes
	p.mu.Lock()
	p.now = clock.now
	p.observed = func(kind string, r ProbeResult) {
		select {
		case chs[kind] <- r:
		default:
		}
	}
	p.mu.Unlock()
	return chs[probeHealth], chs[probeManifest]
}

// nextProbe waits for the next result on ch.
func nextProbe(t *testing.T, ch <-chan ProbeResult) ProbeResult {
	t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(10 * time.Second):
		t.Fatal("no probe result within 10s")
	}
	return ProbeResult{}
}

// probeWarnings are the log's warnings about failed probes of kind.
func probeWarnings(t *testing.T, logFile, kind string) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, l := range logLines(t, logFile) {
		if l["msg"] == "agent "+kind+" probe failed" {
			out = append(out, l)
		}
	}
	return out
}

// An agent that answers 501 on its health endpoint and has no manifest:
// the operator is told once a minute, not at every check, and
// /asap/status shows the last result of each probe.
func TestFailingAgentProbesAreLoggedOnceAMinuteAndShown(t *testing.T) {
	agent := &countingUpstream{answer: func(w http.ResponseWriter, r *http.Request, body []byte) {
		switch r.URL.Path {
		case "/.well-known/asap/health":
			w.WriteHeader(http.StatusNotImplemented)
		case "/.well-known/asap/manifest.json":
			http.NotFound(w, r)
		default:
			fixedAnswer(http.StatusOK, "application/json", agentAnswer)(w, r, body)
		}
	}}
	srv := httptest.NewServer(agent)
	defer srv.Close()
	s := newSidecar(t, upstreamAddr(srv), "agent urn:asap:agent:demo\nsla {\n\thealth_interval 100ms\n}", "")
	s.logFile = t.TempDir() + "/caddy.log"
	s.start()
	clock := &probeClock{t: time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)}
	health, manifest := watchProbes(t, clock)

	// The first request shows the sidecar the route to the agent.
	post(t, s.url+"/asap", rpc("r", envelope("01JPROBE000000000000000001", "echo", `{}`)))
	var r ProbeResult
	for r.Failures < 3 {
		r = nextProbe(t, health)
	}
	if r.OK || r.Status != http.StatusNotImplemented || !strings.Contains(r.Error, "answered 501") {
		t.Fatalf("health result %+v", r)
	}
	warns := probeWarnings(t, s.logFile, probeHealth)
	if len(warns) != 1 {
		t.Fatalf("%d health warnings after %d failures in the same minute, want 1: %v", len(warns), r.Failures, warns)
	}
	w := warns[0]
	if w["status"] != float64(501) || !strings.Contains(w["hint"].(string), "GET /.well-known/asap/health with 200") || w["failures_not_logged"] != float64(0) {
		t.Fatalf("warning %v", w)
	}

	// The manifest is first asked for a little after the route is known.
	nextProbe(t, manifest)

	// /asap/status shows the last health check and manifest fetch.
	var st Status
	if code := getJSON(t, "http://"+s.adminAddr+"/asap/status", &st); code != http.StatusOK || len(st.Agents) != 1 {
		t.Fatalf("status: %d %+v", code, st)
	}
	a := st.Agents[0]
	if h := a.LastHealth; h == nil || h.OK || h.Status != 501 || h.Failures < 3 || !h.At.Equal(clock.now()) {
		t.Fatalf("status last_health %+v", h)
	}
	if m := a.LastManifest; m == nil || m.OK || m.Status != 404 {
		t.Fatalf("status last_manifest %+v", m)
	}
	if len(probeWarnings(t, s.logFile, probeManifest)) != 1 {
		t.Fatal("no manifest warning")
	}

	// A minute on, the next failure is logged with the count of those
	// that were not.
	clock.add(probeWarnEvery)
	for r = nextProbe(t, health); !r.At.Equal(clock.now()); r = nextProbe(t, health) {
	}
	warns = probeWarnings(t, s.logFile, probeHealth)
	if len(warns) != 2 || warns[1]["failures_not_logged"] != float64(r.Failures-2) {
		t.Fatalf("after a minute: %d warnings, last %v (failures %d)", len(warns), warns[len(warns)-1], r.Failures)
	}
}

// An agent that serves what it must (the demo agent): the probes succeed,
// the status says so and nothing is logged.
func TestHealthyAgentProbesShowOK(t *testing.T) {
	s := newSidecar(t, "", "agent urn:asap:agent:demo\nsla {\n\thealth_interval 100ms\n}", "")
	s.logFile = t.TempDir() + "/caddy.log"
	s.start()
	clock := &probeClock{t: time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)}
	health, manifest := watchProbes(t, clock)
	post(t, s.url+"/asap", rpc("r", envelope("01JPROBE000000000000000002", "echo", `{}`)))
	if r := nextProbe(t, health); !r.OK || r.Status != 200 || r.Failures != 0 {
		t.Fatalf("health %+v", r)
	}
	if r := nextProbe(t, manifest); !r.OK || r.Status != 200 {
		t.Fatalf("manifest %+v", r)
	}
	var st Status
	getJSON(t, "http://"+s.adminAddr+"/asap/status", &st)
	if a := st.Agents[0]; a.LastHealth == nil || !a.LastHealth.OK || a.LastManifest == nil || !a.LastManifest.OK {
		t.Fatalf("status %+v %+v", a.LastHealth, a.LastManifest)
	}
	if w := append(probeWarnings(t, s.logFile, probeHealth), probeWarnings(t, s.logFile, probeManifest)...); len(w) != 0 {
		t.Fatalf("warnings for a healthy agent: %v", w)
	}
}
