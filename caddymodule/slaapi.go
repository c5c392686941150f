package caddymodule

import (
	"encoding/json"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/asap-sidecar/asap-sidecar/caddymodule/api"
	"github.com/asap-sidecar/asap-sidecar/caddymodule/sla"
)

// slaService backs the SLA API with the trackers of the agents that
// share the database the request is about.
type slaService struct {
	agents []*agentRuntime
	db     *database
}

// slaServiceOf is the SLA API's view of d: the agents of app using it.
func slaServiceOf(app *App, d *database) slaService {
	s := slaService{db: d}
	for _, rt := range app.agentList() {
		if rt.store.Opened() == d {
			s.agents = append(s.agents, rt)
		}
	}
	return s
}

func (s slaService) Trackers() map[string]*sla.Tracker {
	out := map[string]*sla.Tracker{}
	for _, rt := range s.agents {
		if t := rt.slaTracker(s.db); t != nil {
			out[rt.Agent] = t
		}
	}
	return out
}

func (s slaService) Breaches(f sla.BreachFilter) ([]sla.Breach, error) {
	return sla.Breaches(s.db.db, f)
}

func (s slaService) History(agent string, start, end time.Time, limit, offset int) ([]sla.Metrics, int, error) {
	return sla.History(s.db.db, agent, start, end, limit, offset)
}

func (s slaService) Subscribe() (<-chan api.Notice, func()) {
	in, cancel := hub.subscribe()
	out := make(chan api.Notice, cap(in))
	go func() {
		defer close(out)
		for n := range in {
			b, err := json.Marshal(n)
			if err != nil {
				continue
			}
			select {
			case out <- api.Notice{Method: n.Method, JSON: b}:
			default: // the reader is too slow: drop
			}
		}
	}()
	return out, cancel
}

// slaCollector exports the SLIs of every live tracker at scrape time, so
// the gauges never lag and survive reloads with the trackers. They are
// labelled with the storage directory as well as the agent: one agent may
// be served from two storages, and series must not collide.
type slaCollector struct{}

var (
	slaP95Desc    = prometheus.NewDesc("asap_sla_latency_p95_ms", "p95 of task durations over the window, in ms.", []string{"agent", "dir", "window"}, nil)
	slaErrorDesc  = prometheus.NewDesc("asap_sla_error_rate_percent", "Failed share of tasks over the window.", []string{"agent", "dir", "window"}, nil)
	slaUptimeDesc = prometheus.NewDesc("asap_sla_uptime_percent", "Share of successful health checks over the window.", []string{"agent", "dir", "window"}, nil)
	slaOpenDesc   = prometheus.NewDesc("asap_sla_open_breaches", "SLA breaches open now.", []string{"agent", "dir", "type", "severity"}, nil)
)

var (
	breachTypes      = []string{sla.TypeAvailability, sla.TypeLatency, sla.TypeErrorRate, sla.TypeErrorBudget}
	breachSeverities = []string{sla.SeverityWarning, sla.SeverityCritical}
)

func (slaCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- slaP95Desc
	ch <- slaErrorDesc
	ch <- slaUptimeDesc
	ch <- slaOpenDesc
}

func (slaCollector) Collect(ch chan<- prometheus.Metric) {
	liveTrackers.Range(func(k, v any) bool {
		t, dir := k.(*sla.Tracker), v.(string)
		agent := t.Config().Agent
		for _, name := range []string{"1h", "24h"} {
			m, _ := t.Window(api.Windows[name])
			ch <- prometheus.MustNewConstMetric(slaP95Desc, prometheus.GaugeValue, float64(m.LatencyP95MS), agent, dir, name)
			ch <- prometheus.MustNewConstMetric(slaErrorDesc, prometheus.GaugeValue, m.ErrorRatePercent, agent, dir, name)
			ch <- prometheus.MustNewConstMetric(slaUptimeDesc, prometheus.GaugeValue, m.UptimePercent, agent, dir, name)
		}
		// Every type and severity from the start, at 0 until a breach:
		// alert rules need no absent().
		counts := make(map[[2]string]int, len(breachTypes)*len(breachSeverities))
		for _, typ := range breachTypes {
			for _, sev := range breachSeverities {
				counts[[2]string{typ, sev}] = 0
			}
		}
		for _, b := range t.OpenBreaches() {
			counts[[2]string{b.BreachType, b.Severity}]++
		}
		for k, n := range counts {
			ch <- prometheus.MustNewConstMetric(slaOpenDesc, prometheus.GaugeValue, float64(n), agent, dir, k[0], k[1])
		}
		return true
	})
}
