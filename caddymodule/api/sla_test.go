package api

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"reflect"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/asap-sidecar/asap-sidecar/caddymodule/sla"
	"github.com/asap-sidecar/asap-sidecar/storage"
)

// ------------------------------------------------------------ the service

// slaSub is one subscription the handler took: the test feeds it and
// sees when the handler cancels it.
type slaSub struct {
	ch   chan Notice
	done chan struct{}
	once sync.Once
}

func (s *slaSub) feed(t *testing.T, n Notice) {
	t.Helper()
	select {
	case s.ch <- n:
	case <-s.done:
		t.Fatalf("feeding %s: subscription cancelled", n.Method)
	case <-time.After(3 * time.Second):
		t.Fatalf("feeding %s: nobody reads the subscription", n.Method)
	}
}

func (s *slaSub) waitCancelled(t *testing.T) {
	t.Helper()
	select {
	case <-s.done:
	case <-time.After(3 * time.Second):
		t.Fatal("the handler did not cancel its subscription")
	}
}

// slaSvc is a real SLAService: trackers over a real database, breaches and
// history read from it, and subscriptions the test feeds.
type slaSvc struct {
	db       *storage.DB
	trackers map[string]*sla.Tracker
	subs     chan *slaSub // each Subscribe, as it happens
}

func newSLASvc(t *testing.T) *slaSvc {
	return &slaSvc{db: openDB(t), trackers: map[string]*sla.Tracker{}, subs: make(chan *slaSub, 16)}
}

func (s *slaSvc) Trackers() map[string]*sla.Tracker { return s.trackers }
func (s *slaSvc) Breaches(f sla.BreachFilter) ([]sla.Breach, error) {
	return sla.Breaches(s.db, f)
}
func (s *slaSvc) History(agent string, start, end time.Time, limit, offset int) ([]sla.Metrics, int, error) {
	return sla.History(s.db, agent, start, end, limit, offset)
}
func (s *slaSvc) Subscribe() (<-chan Notice, func()) {
	sub := &slaSub{ch: make(chan Notice), done: make(chan struct{})}
	s.subs <- sub
	return sub.ch, func() { sub.once.Do(func() { close(sub.done) }) }
}

func (s *slaSvc) nextSub(t *testing.T) *slaSub {
	t.Helper()
	select {
	case sub := <-s.subs:
		return sub
	case <-time.After(3 * time.Second):
		t.Fatal("the handler did not subscribe")
		return nil
	}
}

func (s *slaSvc) open(t *testing.T, cfg sla.Config, now func() time.Time, notify func(sla.Event)) *sla.Tracker {
	t.Helper()
	tr, err := sla.Open(s.db, cfg, sla.Hooks{Now: now, Notify: notify})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tr.Close() })
	s.trackers[cfg.Agent] = tr
	return tr
}

// slaClock is the trackers' fake clock.
type slaClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *slaClock) now() time.Time  { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *slaClock) set(t time.Time) { c.mu.Lock(); c.t = t; c.mu.Unlock() }

func ptrF(v float64) *float64 { return &v }

func slaNotice(method, notification string) Notice {
	return Notice{Method: method, JSON: []byte(notification)}
}

// slaEventLog collects a tracker's breach events (its Notify hook).
type slaEventLog struct {
	mu  sync.Mutex
	got []sla.Event
}

func (e *slaEventLog) add(ev sla.Event) { e.mu.Lock(); e.got = append(e.got, ev); e.mu.Unlock() }
func (e *slaEventLog) count() int       { e.mu.Lock(); defer e.mu.Unlock(); return len(e.got) }

func (e *slaEventLog) all() []sla.Event {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]sla.Event(nil), e.got...)
}

func (e *slaEventLog) last() sla.Event { all := e.all(); return all[len(all)-1] }

func (e *slaEventLog) wait(t *testing.T, n int) {
	t.Helper()
	for deadline := time.Now().Add(3 * time.Second); e.count() < n; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("waited for %d SLA events, got %d", n, e.count())
		}
	}
}

// ------------------------------------------------------------ the data set

const (
	slaDemo  = "urn:asap:agent:demo"  // promises everything; breached on latency now
	slaBeta  = "urn:asap:agent:beta"  // promises availability; breached 30 minutes ago, resolved now
	slaPlain = "urn:asap:agent:plain" // promises nothing
)

var slaNow = time.Date(2026, 3, 10, 12, 0, 30, 0, time.UTC)

type slaFixture struct {
	svc        *slaSvc
	demoBreach sla.Breach // open, critical latency, detected at slaNow
	betaBreach sla.Breach // warning availability, detected 30 minutes before, resolved at slaNow
}

// newSLAFixture builds the data set through real trackers with a fake
// clock, then closes the trackers so nothing changes under the test:
//
//	demo  T-10d 10 tasks; T-3d 10 tasks; T-3h 100 tasks + 1 failed (100ms);
//	      one 100ms task and a history snapshot every 10 minutes from
//	      T-2h50m to T-1h (12 snapshots); at T 20 tasks of 1s, 20 checks up
//	beta  T-30m 19 checks up, 1 down (95 %: warning); at T 200 checks up
//	plain at T 5 tasks of 50ms
func newSLAFixture(t *testing.T) *slaFixture {
	t.Helper()
	svc := newSLASvc(t)
	clk := &slaClock{t: slaNow.Add(-10 * 24 * time.Hour)}
	var demoEvents, betaEvents slaEventLog
	demo := svc.open(t, sla.Config{Agent: slaDemo, MinSamples: 10, Definition: sla.Definition{
		Availability: ptrF(99.5), MaxLatencyP95: 500 * time.Millisecond, MaxErrorRate: ptrF(1), SupportHours: "24/7"}},
		clk.now, demoEvents.add)
	beta := svc.open(t, sla.Config{Agent: slaBeta, MinSamples: 10, Definition: sla.Definition{Availability: ptrF(99.5)}},
		clk.now, betaEvents.add)
	plain := svc.open(t, sla.Config{Agent: slaPlain}, clk.now, nil)

	observe := func(tr *sla.Tracker, n int, d time.Duration, failed bool) {
		for i := 0; i < n; i++ {
			tr.Observe(d, failed)
		}
	}
	observe(demo, 10, 100*time.Millisecond, false)
	clk.set(slaNow.Add(-3 * 24 * time.Hour))
	observe(demo, 10, 100*time.Millisecond, false)
	clk.set(slaNow.Add(-3 * time.Hour))
	observe(demo, 100, 100*time.Millisecond, false)
	observe(demo, 1, 100*time.Millisecond, true)
	for i := 1; i <= 12; i++ {
		clk.set(slaNow.Add(-3*time.Hour + time.Duration(i)*10*time.Minute))
		observe(demo, 1, 100*time.Millisecond, false)
		demo.Snapshot()
	}
	clk.set(slaNow.Add(-30 * time.Minute))
	for i := 0; i < 20; i++ {
		beta.Health(i != 0)
	}
	betaEvents.wait(t, 1)
	clk.set(slaNow)
	for i := 0; i < 200; i++ {
		beta.Health(true)
	}
	observe(demo, 20, time.Second, false)
	for i := 0; i < 20; i++ {
		demo.Health(true)
	}
	observe(plain, 5, 50*time.Millisecond, false)
	demoEvents.wait(t, 1)
	betaEvents.wait(t, 2)
	// Close drops an evaluation still scheduled: the counts below are
	// final.
	for _, tr := range svc.trackers {
		if err := tr.Close(); err != nil {
			t.Fatal(err)
		}
	}
	if demoEvents.count() != 1 || betaEvents.count() != 2 {
		t.Fatalf("set-up events: demo %+v, beta %+v", demoEvents.all(), betaEvents.all())
	}
	f := &slaFixture{svc: svc, demoBreach: demoEvents.last().Breach, betaBreach: betaEvents.last().Breach}
	if f.demoBreach.BreachType != sla.TypeLatency || f.demoBreach.Severity != sla.SeverityCritical || f.demoBreach.ResolvedAt != nil ||
		f.betaBreach.BreachType != sla.TypeAvailability || f.betaBreach.Severity != sla.SeverityWarning || f.betaBreach.ResolvedAt == nil {
		t.Fatalf("set-up breaches: demo %+v, beta %+v", f.demoBreach, f.betaBreach)
	}
	return f
}

// slaCall serves one request through SLA as the public mount does.
func slaCall(t *testing.T, svc SLAService, method, target string) *httptest.ResponseRecorder {
	t.Helper()
	r := httptest.NewRequest(method, target, nil)
	w := httptest.NewRecorder()
	serve(&Services{SLA: svc}, w, r)
	return w
}

func slaGet(t *testing.T, svc SLAService, target string) *httptest.ResponseRecorder {
	t.Helper()
	return slaCall(t, svc, http.MethodGet, target)
}

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// decodeAs decodes a JSON answer into v, requiring status.
func decodeAs(t *testing.T, w *httptest.ResponseRecorder, status int, v any) {
	t.Helper()
	expectJSON(t, w, status)
	if err := json.Unmarshal(w.Body.Bytes(), v); err != nil {
		t.Fatal(err)
	}
}

// --------------------------------------------------------------- /sla

type slaStatusAnswer struct {
	Data        []map[string]json.RawMessage `json:"data"`
	Window      string                       `json:"window"`
	PeriodStart string                       `json:"period_start"`
	PeriodEnd   string                       `json:"period_end"`
}

var pyISORe = regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?\+00:00$`)

func TestSLAStatus(t *testing.T) {
	f := newSLAFixture(t)
	demo := f.svc.trackers[slaDemo]
	for _, tc := range []struct {
		query  string
		window string
		// demo's figures over the window
		completed, failed uint64
		budget            string
	}{
		{"", "24h", 132, 1, "24.81"}, // 20 + 100 + 12 completed, 1 failed: 1 of 1.33 allowed
		{"?window=1h", "1h", 20, 0, "100"},
		{"?window=24h", "24h", 132, 1, "24.81"},
		{"?window=7d", "7d", 142, 1, "30.07"},
		{"?window=30d", "30d", 152, 1, "34.64"},
	} {
		t.Run(tc.window+tc.query, func(t *testing.T) {
			before := time.Now().UTC().Truncate(time.Microsecond)
			var a slaStatusAnswer
			decodeAs(t, slaGet(t, f.svc, "/sla"+tc.query), http.StatusOK, &a)
			after := time.Now()
			window := Windows[tc.window]
			if a.Window != tc.window || !pyISORe.MatchString(a.PeriodStart) || !pyISORe.MatchString(a.PeriodEnd) {
				t.Fatalf("window %q, period %q .. %q", a.Window, a.PeriodStart, a.PeriodEnd)
			}
			start, err1 := time.Parse(time.RFC3339Nano, a.PeriodStart)
			end, err2 := time.Parse(time.RFC3339Nano, a.PeriodEnd)
			if err1 != nil || err2 != nil || end.Sub(start) != window || end.Before(before) || end.After(after) {
				t.Fatalf("period %v .. %v (%v %v), request at %v..%v", start, end, err1, err2, before, after)
			}
			if len(a.Data) != 3 {
				t.Fatalf("%d rows", len(a.Data))
			}
			for i, id := range []string{slaBeta, slaDemo, slaPlain} {
				row := a.Data[i]
				tr := f.svc.trackers[id]
				m, _ := tr.Window(window)
				if string(row["agent_id"]) != mustJSON(t, id) || string(row["metrics"]) != mustJSON(t, m) || len(row) != 4 {
					t.Fatalf("row %d: %v, want %s with %s", i, row, id, mustJSON(t, m))
				}
			}
			// Compliance: null without a promise, else the tracker's.
			if c := string(a.Data[0]["compliance_percent"]); c != "100" {
				t.Errorf("beta compliance %s, want 100 (uptime 99.55 %% is within 99.5 %%)", c)
			}
			if c := string(a.Data[1]["compliance_percent"]); c != "75" || demo.Compliance(window) != 75 {
				t.Errorf("demo compliance %s, want 75 (critical latency)", c)
			}
			if c := string(a.Data[2]["compliance_percent"]); c != "null" {
				t.Errorf("plain compliance %s, want null", c)
			}
			// The error budget: only demo promises an error rate.
			if b := string(a.Data[1]["error_budget_remaining_percent"]); b != tc.budget {
				t.Errorf("demo budget %s, want %s", b, tc.budget)
			}
			for _, i := range []int{0, 2} {
				if b := string(a.Data[i]["error_budget_remaining_percent"]); b != "null" {
					t.Errorf("row %d budget %s, want null", i, b)
				}
			}
			var dm sla.Metrics
			_ = json.Unmarshal(a.Data[1]["metrics"], &dm)
			if dm.TasksCompleted != tc.completed || dm.TasksFailed != tc.failed || dm.AgentID != slaDemo ||
				!dm.PeriodEnd.Equal(slaNow) || !dm.PeriodStart.Equal(slaNow.Add(-window)) || dm.LatencyP95MS < 990 || dm.LatencyP95MS > 1010 {
				t.Errorf("demo metrics %+v", dm)
			}
		})
	}

	t.Run("agent filter", func(t *testing.T) {
		var a slaStatusAnswer
		decodeAs(t, slaGet(t, f.svc, "/sla?"+q("agent_id", slaPlain, "window", "1h")), http.StatusOK, &a)
		if len(a.Data) != 1 || string(a.Data[0]["agent_id"]) != mustJSON(t, slaPlain) || a.Window != "1h" {
			t.Fatalf("filtered %+v", a)
		}
		var m sla.Metrics
		_ = json.Unmarshal(a.Data[0]["metrics"], &m)
		if m.TasksCompleted != 5 || m.UptimePercent != 100 || m.HealthChecks != 0 || m.LatencyP95MS != 50 {
			t.Fatalf("plain metrics %+v", m)
		}
		w := slaGet(t, f.svc, "/sla?"+q("agent_id", "urn:asap:agent:nobody"))
		if m := expectJSON(t, w, http.StatusOK); !strings.HasPrefix(w.Body.String(), `{"data":[],`) || m["window"] != "24h" {
			t.Fatalf("unknown agent: %s", w.Body.String())
		}
	})

	t.Run("bad window", func(t *testing.T) {
		for _, win := range []string{"2h", "1d", "24H", " "} {
			expect(t, slaGet(t, f.svc, "/sla?"+q("window", win)), http.StatusBadRequest, `{"detail":"window must be one of: 1h, 24h, 7d, 30d"}`)
		}
	})

	t.Run("no tracker", func(t *testing.T) {
		w := slaGet(t, newSLASvc(t), "/sla/")
		if m := expectJSON(t, w, http.StatusOK); !strings.HasPrefix(w.Body.String(), `{"data":[],`) || m["window"] != "24h" {
			t.Fatalf("no tracker: %s", w.Body.String())
		}
	})
}

func TestPyISO(t *testing.T) {
	for in, want := range map[time.Time]string{
		time.Date(2026, 3, 10, 12, 0, 30, 0, time.UTC):                            "2026-03-10T12:00:30+00:00",
		time.Date(2026, 3, 10, 12, 0, 30, 123456789, time.UTC):                    "2026-03-10T12:00:30.123456+00:00",
		time.Date(2026, 3, 10, 12, 0, 30, 1000, time.UTC):                         "2026-03-10T12:00:30.000001+00:00",
		time.Date(2026, 3, 10, 12, 0, 30, 999, time.UTC):                          "2026-03-10T12:00:30+00:00",
		time.Date(2026, 3, 10, 13, 0, 30, 500000000, time.FixedZone("CET", 3600)): "2026-03-10T12:00:30.500000+00:00",
	} {
		if got := pyISO(in); got != want {
			t.Errorf("pyISO(%v) = %q, want %q", in, got, want)
		}
	}
}

// ------------------------------------------------------- /sla/history

type slaHistoryAnswer struct {
	Data   json.RawMessage `json:"data"`
	Count  int             `json:"count"`
	Total  int             `json:"total"`
	Offset int             `json:"offset"`
	Limit  int             `json:"limit"`
}

func TestSLAHistory(t *testing.T) {
	f := newSLAFixture(t)
	all, total, err := sla.History(f.svc.db, "", time.Time{}, time.Time{}, 1000, 0)
	// 12 snapshots of demo, and each tracker's last one, taken at Close.
	if err != nil || total != 15 || len(all) != 15 {
		t.Fatalf("stored history: %d of %d, %v", len(all), total, err)
	}
	iso := func(tm time.Time) string { return tm.Format(time.RFC3339Nano) }
	for _, tc := range []struct {
		name                 string
		query                string
		agent                string
		start, end           time.Time
		limit, offset, count int
	}{
		{"defaults", "", "", time.Time{}, time.Time{}, 100, 0, 15},
		{"one agent", q("agent_id", slaDemo), slaDemo, time.Time{}, time.Time{}, 100, 0, 13},
		{"agent with only its shutdown snapshot", q("agent_id", slaPlain), slaPlain, time.Time{}, time.Time{}, 100, 0, 1},
		{"limit", q("limit", "5"), "", time.Time{}, time.Time{}, 5, 0, 5},
		{"limit and offset", q("limit", "5", "offset", "12"), "", time.Time{}, time.Time{}, 5, 12, 3},
		{"offset past the end", q("offset", "50"), "", time.Time{}, time.Time{}, 100, 50, 0},
		{"largest limit", q("limit", "1000"), "", time.Time{}, time.Time{}, 1000, 0, 15},
		{"time range", q("start", iso(all[9].PeriodEnd), "end", iso(all[10].PeriodStart)), "", all[9].PeriodEnd, all[10].PeriodStart, 100, 0, -1},
		{"start only, naive", q("start", all[11].PeriodStart.Format("2006-01-02T15:04:05")), "", all[11].PeriodStart, time.Time{}, 100, 0, -1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			target := "/sla/history"
			if tc.query != "" {
				target += "?" + tc.query
			}
			var a slaHistoryAnswer
			decodeAs(t, slaGet(t, f.svc, target), http.StatusOK, &a)
			want, wantTotal, err := sla.History(f.svc.db, tc.agent, tc.start, tc.end, tc.limit, tc.offset)
			if err != nil {
				t.Fatal(err)
			}
			if string(a.Data) != mustJSON(t, want) || a.Count != len(want) || a.Total != wantTotal || a.Limit != tc.limit || a.Offset != tc.offset {
				t.Fatalf("got %s count %d total %d limit %d offset %d\nwant %s count %d total %d", a.Data, a.Count, a.Total, a.Limit, a.Offset,
					mustJSON(t, want), len(want), wantTotal)
			}
			if tc.count >= 0 && a.Count != tc.count {
				t.Fatalf("count %d, want %d", a.Count, tc.count)
			}
			if tc.count < 0 && (a.Count == 0 || a.Count == 12) {
				t.Fatalf("the time range selected %d of 12", a.Count)
			}
		})
	}
	t.Run("bad parameters", func(t *testing.T) {
		for query, want := range map[string]string{
			q("limit", "0"):                          "limit must be a whole number in 1..1000",
			q("limit", "1001"):                       "limit must be a whole number in 1..1000",
			q("limit", "ten"):                        "limit must be a whole number in 1..1000",
			q("offset", "-1"):                        "offset must be a whole number in 0..1073741824",
			q("start", "yesterday"):                  `start: invalid date "yesterday"; use ISO 8601 (e.g. 2026-01-01T00:00:00Z)`,
			q("end", "2026-13-01"):                   `end: invalid date "2026-13-01"; use ISO 8601 (e.g. 2026-01-01T00:00:00Z)`,
			q("start", "2026-01-01", "limit", "0"):   "limit must be a whole number in 1..1000",
			q("start", "nope", "end", "nope either"): `start: invalid date "nope"; use ISO 8601 (e.g. 2026-01-01T00:00:00Z)`,
		} {
			if got := detail(t, slaGet(t, f.svc, "/sla/history?"+query), http.StatusBadRequest); got != want {
				t.Errorf("%s: %q, want %q", query, got, want)
			}
		}
	})
}

// ------------------------------------------------------ /sla/breaches

type slaBreachesAnswer struct {
	Data  []map[string]any `json:"data"`
	Count int              `json:"count"`
}

func TestSLABreaches(t *testing.T) {
	f := newSLAFixture(t)
	ids := func(target string) string {
		t.Helper()
		var a slaBreachesAnswer
		decodeAs(t, slaGet(t, f.svc, target), http.StatusOK, &a)
		if a.Data == nil || a.Count != len(a.Data) {
			t.Fatalf("%s: %+v", target, a)
		}
		var out []string
		for _, b := range a.Data {
			out = append(out, b["id"].(string))
		}
		return strings.Join(out, ",")
	}
	beta, demo := f.betaBreach.ID, f.demoBreach.ID
	between := slaNow.Add(-10 * time.Minute).Format(time.RFC3339)
	for _, tc := range []struct{ query, want string }{
		{"", beta + "," + demo}, // by detection time
		{q("agent_id", slaDemo), demo},
		{q("agent_id", slaBeta), beta},
		{q("agent_id", slaPlain), ""},
		{q("severity", "critical"), demo},
		{q("severity", "warning"), beta},
		{q("severity", "warning", "agent_id", slaDemo), ""},
		{q("start", between), demo},
		{q("end", between), beta},
		{q("start", slaNow.Format(time.RFC3339), "end", slaNow.Format(time.RFC3339)), demo}, // both bounds inclusive
		{q("start", "2026-03-10"), beta + "," + demo},
		{q("end", "2026-03-10"), ""},
	} {
		if got := ids("/sla/breaches?" + tc.query); got != tc.want {
			t.Errorf("?%s: %q, want %q", tc.query, got, tc.want)
		}
	}

	// The reference's breach shape.
	var a slaBreachesAnswer
	decodeAs(t, slaGet(t, f.svc, "/sla/breaches"), http.StatusOK, &a)
	want := []map[string]any{
		{"id": beta, "agent_id": slaBeta, "breach_type": "availability", "threshold": "99.5%", "actual": "95.0%", "severity": "warning",
			"detected_at": "2026-03-10T11:30:30Z", "resolved_at": "2026-03-10T12:00:30Z"},
		{"id": demo, "agent_id": slaDemo, "breach_type": "latency", "threshold": "500ms", "actual": f.demoBreach.Actual, "severity": "critical",
			"detected_at": "2026-03-10T12:00:30Z", "resolved_at": nil},
	}
	if !reflect.DeepEqual(a.Data, want) || a.Count != 2 || !strings.HasPrefix(beta, "breach_") || len(beta) != len("breach_")+26 {
		t.Fatalf("breaches %+v\nwant %+v", a, want)
	}

	for query, want := range map[string]string{
		q("severity", "fatal"):                  "severity must be one of: warning, critical",
		q("severity", "Critical"):               "severity must be one of: warning, critical",
		q("start", "soon"):                      `start: invalid date "soon"; use ISO 8601 (e.g. 2026-01-01T00:00:00Z)`,
		q("end", "10/03/2026"):                  `end: invalid date "10/03/2026"; use ISO 8601 (e.g. 2026-01-01T00:00:00Z)`,
		q("severity", "fatal", "start", "soon"): `start: invalid date "soon"; use ISO 8601 (e.g. 2026-01-01T00:00:00Z)`,
	} {
		if got := detail(t, slaGet(t, f.svc, "/sla/breaches?"+query), http.StatusBadRequest); got != want {
			t.Errorf("%s: %q, want %q", query, got, want)
		}
	}
	expect(t, slaGet(t, newSLASvc(t), "/sla/breaches"), http.StatusOK, `{"count":0,"data":[]}`)
}

// ---------------------------------------------------- /agents/{id}/sla

type agentSLAAnswer struct {
	AgentID      string                                `json:"agent_id"`
	Definition   map[string]any                        `json:"definition"`
	Windows      map[string]map[string]json.RawMessage `json:"windows"`
	OpenBreaches json.RawMessage                       `json:"open_breaches"`
	History      json.RawMessage                       `json:"history"`
}

func TestAgentSLA(t *testing.T) {
	f := newSLAFixture(t)
	get := func(id string) agentSLAAnswer {
		t.Helper()
		var a agentSLAAnswer
		w := slaGet(t, f.svc, "/agents/"+id+"/sla")
		decodeAs(t, w, http.StatusOK, &a)
		var keys map[string]any
		_ = json.Unmarshal(w.Body.Bytes(), &keys)
		if len(keys) != 5 || a.AgentID != id || len(a.Windows) != 4 {
			t.Fatalf("%s: %s", id, w.Body.String())
		}
		// Each window is the /sla row of the agent for that window.
		for name, window := range Windows {
			var s slaStatusAnswer
			decodeAs(t, slaGet(t, f.svc, "/sla?"+q("agent_id", id, "window", name)), http.StatusOK, &s)
			if mustJSON(t, a.Windows[name]) != mustJSON(t, s.Data[0]) {
				t.Fatalf("%s window %s: %s, /sla says %s", id, name, mustJSON(t, a.Windows[name]), mustJSON(t, s.Data[0]))
			}
			m, _ := f.svc.trackers[id].Window(window)
			if string(a.Windows[name]["metrics"]) != mustJSON(t, m) {
				t.Fatalf("%s window %s metrics %s", id, name, a.Windows[name]["metrics"])
			}
		}
		return a
	}

	demo := get(slaDemo)
	wantDef := map[string]any{"availability": "99.5%", "max_latency_p95_ms": float64(500), "max_error_rate": "1.0%", "support_hours": "24/7"}
	if !reflect.DeepEqual(demo.Definition, wantDef) {
		t.Errorf("demo definition %v, want %v", demo.Definition, wantDef)
	}
	if string(demo.OpenBreaches) != mustJSON(t, []sla.Breach{f.demoBreach}) {
		t.Errorf("demo open breaches %s", demo.OpenBreaches)
	}
	// The last 10 of 13 history records, oldest first.
	last10, _, _ := sla.History(f.svc.db, slaDemo, time.Time{}, time.Time{}, 10, 3)
	all, _, _ := sla.History(f.svc.db, slaDemo, time.Time{}, time.Time{}, 100, 0)
	if string(demo.History) != mustJSON(t, last10) || len(last10) != 10 || !reflect.DeepEqual(last10[9], all[12]) {
		t.Errorf("demo history %s", demo.History)
	}
	for name, c := range map[string]string{"1h": "75", "24h": "75", "7d": "75", "30d": "75"} {
		if got := string(demo.Windows[name]["compliance_percent"]); got != c {
			t.Errorf("demo %s compliance %s, want %s", name, got, c)
		}
	}

	beta := get(slaBeta)
	if want := map[string]any{"availability": "99.5%", "max_latency_p95_ms": nil, "max_error_rate": nil, "support_hours": nil}; !reflect.DeepEqual(beta.Definition, want) {
		t.Errorf("beta definition %v", beta.Definition)
	}
	var betaHistory []sla.Metrics
	json.Unmarshal(beta.History, &betaHistory)
	if string(beta.OpenBreaches) != "[]" || len(betaHistory) != 1 || betaHistory[0].HealthChecks != 220 {
		t.Errorf("beta: open breaches %s, history %s (resolved breaches are not open)", beta.OpenBreaches, beta.History)
	}

	plain := get(slaPlain)
	if want := map[string]any{"availability": nil, "max_latency_p95_ms": nil, "max_error_rate": nil, "support_hours": nil}; !reflect.DeepEqual(plain.Definition, want) {
		t.Errorf("plain definition %v", plain.Definition)
	}
	if c := string(plain.Windows["1h"]["compliance_percent"]); c != "null" {
		t.Errorf("plain compliance %s", c)
	}

	// A trailing slash is the same resource.
	if w := slaGet(t, f.svc, "/agents/"+slaPlain+"/sla/"); w.Code != http.StatusOK {
		t.Errorf("trailing slash: %d", w.Code)
	}
	expect(t, slaGet(t, f.svc, "/agents/urn:asap:agent:nobody/sla"), http.StatusNotFound, `{"detail":"no SLA is tracked for agent urn:asap:agent:nobody"}`)
	long := "urn:asap:agent:" + strings.Repeat("x", 100)
	expect(t, slaGet(t, f.svc, "/agents/"+long+"/sla"), http.StatusNotFound,
		`{"detail":"no SLA is tracked for agent `+long[:64]+`…"}`)
}

func TestAgentSLAOrdersOpenBreaches(t *testing.T) {
	svc := newSLASvc(t)
	clk := &slaClock{t: slaNow}
	var evs slaEventLog
	tr := svc.open(t, sla.Config{Agent: slaDemo, MinSamples: 10,
		Definition: sla.Definition{Availability: ptrF(99), MaxLatencyP95: 100 * time.Millisecond}}, clk.now, evs.add)
	for i := 0; i < 10; i++ {
		tr.Health(false)
	}
	evs.wait(t, 1)
	clk.set(slaNow.Add(time.Minute))
	for i := 0; i < 10; i++ {
		tr.Observe(time.Second, false)
	}
	evs.wait(t, 2)
	var a struct {
		OpenBreaches []sla.Breach `json:"open_breaches"`
	}
	decodeAs(t, slaGet(t, svc, "/agents/"+slaDemo+"/sla"), http.StatusOK, &a)
	if len(a.OpenBreaches) != 2 || a.OpenBreaches[0].BreachType != sla.TypeAvailability || a.OpenBreaches[1].BreachType != sla.TypeLatency ||
		!a.OpenBreaches[0].DetectedAt.Before(a.OpenBreaches[1].DetectedAt) {
		t.Fatalf("open breaches %+v", a.OpenBreaches)
	}
}

func TestSLAStorageFailures(t *testing.T) {
	svc := newSLASvc(t)
	svc.open(t, sla.Config{Agent: slaDemo}, func() time.Time { return slaNow }, nil)
	// A corrupt breach and a corrupt history record, as a failing disk
	// might leave them.
	err := svc.db.Commit(context.Background(), storage.Strict, func(tx *storage.Tx) error {
		tx.Set(storage.SpaceSLA.Key([]byte("b"), []byte(slaDemo), []byte("breach_bad")), []byte("{"))
		tx.Set(storage.SpaceSLA.Key([]byte("s"), []byte(slaDemo), []byte("bad")), []byte("{"))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for target, prefix := range map[string]string{
		"/sla/history":                "reading SLA history: ",
		"/sla/breaches":               "reading breaches: ",
		"/agents/" + slaDemo + "/sla": "reading SLA history: ",
	} {
		if d := detail(t, slaGet(t, svc, target), http.StatusInternalServerError); !strings.HasPrefix(d, prefix) {
			t.Errorf("%s: %q, want %q...", target, d, prefix)
		}
	}
	// What does not read them still answers.
	if w := slaGet(t, svc, "/sla"); w.Code != http.StatusOK {
		t.Errorf("/sla: %d", w.Code)
	}
}

func TestSLAMethodsAndPaths(t *testing.T) {
	svc := newSLASvc(t)
	svc.open(t, sla.Config{Agent: slaDemo}, func() time.Time { return slaNow }, nil)
	for _, method := range []string{http.MethodPost, http.MethodPut, http.MethodDelete, http.MethodPatch} {
		for _, target := range []string{"/sla", "/sla/history", "/sla/breaches", "/sla/events", "/sla/subscribe", "/agents/" + slaDemo + "/sla"} {
			w := slaCall(t, svc, method, target)
			expect(t, w, http.StatusMethodNotAllowed, `{"detail":"method not allowed; use GET"}`)
			if a := w.Header().Get("Allow"); a != "GET" {
				t.Errorf("%s %s: Allow %q", method, target, a)
			}
		}
		// A path no route has is not found, whatever the method.
		expect(t, slaCall(t, svc, method, "/sla/nope"), http.StatusNotFound, `{"detail":"Not Found"}`)
	}
	for _, target := range []string{"/sla/nope", "/sla/history/1", "/slas", "/agents", "/agents/" + slaDemo, "/agents/" + slaDemo + "/usage", "/"} {
		expect(t, slaGet(t, svc, target), http.StatusNotFound, `{"detail":"Not Found"}`)
	}
	if len(svc.subs) != 0 {
		t.Fatal("a refused request subscribed")
	}
}

// ------------------------------------------------------------ live: SSE

func slaServer(t *testing.T, svc SLAService) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(handlerOf(&Services{SLA: svc}))
	t.Cleanup(srv.Close)
	return srv
}

// sseLines reads the event stream line by line.
func sseLines(t *testing.T, body io.Reader) func() string {
	lines := make(chan string, 64)
	go func() {
		defer close(lines)
		s := bufio.NewScanner(body)
		for s.Scan() {
			lines <- s.Text()
		}
	}()
	return func() string {
		t.Helper()
		select {
		case l, ok := <-lines:
			if !ok {
				return "<EOF>"
			}
			return l
		case <-time.After(3 * time.Second):
			t.Fatal("no line from the event stream")
			return ""
		}
	}
}

func TestSLAEvents(t *testing.T) {
	svc := newSLASvc(t)
	srv := slaServer(t, svc)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL+"/sla/events", nil)
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "text/event-stream" || resp.Header.Get("Cache-Control") != "no-cache" {
		t.Fatalf("%d %v", resp.StatusCode, resp.Header)
	}
	next := sseLines(t, resp.Body)
	if l := next(); l != ": subscribed to sla.breach and sla.resolved" {
		t.Fatalf("first line %q", l)
	}
	if l := next(); l != "" {
		t.Fatalf("comment not ended: %q", l)
	}
	sub := svc.nextSub(t)
	breach := `{"jsonrpc":"2.0","method":"sla.breach","params":{"breach":{"id":"breach_01","agent_id":"urn:asap:agent:demo","breach_type":"latency","threshold":"500ms","actual":"1000ms","severity":"critical","detected_at":"2026-03-10T12:00:30Z","resolved_at":null}}}`
	resolved := `{"jsonrpc":"2.0","method":"sla.resolved","params":{"breach":{"id":"breach_01","resolved_at":"2026-03-10T12:05:30Z"}}}`
	sub.feed(t, slaNotice("sla.breach", breach))
	sub.feed(t, slaNotice("sla.resolved", resolved))
	for _, want := range []string{"event: sla.breach", "data: " + breach, "", "event: sla.resolved", "data: " + resolved, ""} {
		if l := next(); l != want {
			t.Fatalf("line %q, want %q", l, want)
		}
	}
	// The client goes away: the handler ends and unsubscribes.
	cancel()
	sub.waitCancelled(t)
}

func TestSLAEventsEndWhenTheServiceCloses(t *testing.T) {
	svc := newSLASvc(t)
	srv := slaServer(t, svc)
	resp, err := srv.Client().Get(srv.URL + "/sla/events/")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	next := sseLines(t, resp.Body)
	next()
	next()
	sub := svc.nextSub(t)
	close(sub.ch) // the sidecar is shutting down
	if l := next(); l != "<EOF>" {
		t.Fatalf("after the service closed: %q", l)
	}
	sub.waitCancelled(t)
}

// ------------------------------------------------------ live: WebSocket

func dialSLA(t *testing.T, srv *httptest.Server) (*websocket.Conn, context.Context) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	conn, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(srv.URL, "http")+"/sla/subscribe", nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.CloseNow() })
	return conn, ctx
}

func wsSend(t *testing.T, ctx context.Context, conn *websocket.Conn, msg string) {
	t.Helper()
	if err := conn.Write(ctx, websocket.MessageText, []byte(msg)); err != nil {
		t.Fatal(err)
	}
}

// wsUntil reads messages until one that is not in skippable, which it
// returns; it fails on any message in forbidden.
func wsUntil(t *testing.T, ctx context.Context, conn *websocket.Conn, skippable, forbidden []string) string {
	t.Helper()
	for {
		typ, b, err := conn.Read(ctx)
		if err != nil {
			t.Fatalf("read: %v", err)
		}
		if typ != websocket.MessageText {
			t.Fatalf("message type %v", typ)
		}
		s := string(b)
		for _, f := range forbidden {
			if s == f {
				t.Fatalf("received %s", s)
			}
		}
		skip := false
		for _, k := range skippable {
			skip = skip || s == k
		}
		if !skip {
			return s
		}
	}
}

func sameJSON(t *testing.T, got, want string) {
	t.Helper()
	var g, w any
	if err := json.Unmarshal([]byte(got), &g); err != nil {
		t.Fatalf("%q: %v", got, err)
	}
	if err := json.Unmarshal([]byte(want), &w); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(g, w) {
		t.Fatalf("got  %s\nwant %s", got, want)
	}
}

func TestSLASubscribeWebSocket(t *testing.T) {
	svc := newSLASvc(t)
	srv := slaServer(t, svc)
	conn, ctx := dialSLA(t, srv)
	sub := svc.nextSub(t)
	n := func(i int) string {
		return fmt.Sprintf(`{"jsonrpc":"2.0","method":"sla.breach","params":{"breach":{"id":"breach_%02d"}}}`, i)
	}
	feed := func(i int) { sub.feed(t, slaNotice("sla.breach", n(i))) }

	// Before sla.subscribe nothing is forwarded. Feeding notice 1 proves
	// notice 0 was handled (and dropped); notice 1 itself may race with
	// the subscription below, so it is allowed but not required.
	feed(0)
	feed(1)
	wsSend(t, ctx, conn, "this is not JSON")     // ignored: no answer
	wsSend(t, ctx, conn, `["a","JSON","array"]`) // not a request either
	wsSend(t, ctx, conn, `{"jsonrpc":"2.0","method":"sla.subscribe","id":1}`)
	sameJSON(t, wsUntil(t, ctx, conn, []string{n(1)}, []string{n(0)}), `{"jsonrpc":"2.0","result":{"subscribed":true},"id":1}`)
	feed(2)
	if got := wsUntil(t, ctx, conn, []string{n(1)}, []string{n(0)}); got != n(2) {
		t.Fatalf("forwarded %s, want %s", got, n(2))
	}

	// Unknown methods are JSON-RPC errors naming the method (truncated).
	wsSend(t, ctx, conn, `{"jsonrpc":"2.0","method":"sla.bogus","id":"x"}`)
	sameJSON(t, wsUntil(t, ctx, conn, nil, nil), `{"jsonrpc":"2.0","id":"x","error":{"code":-32601,"message":"Method not found","data":{"method":"sla.bogus"}}}`)
	long := strings.Repeat("m", 80)
	wsSend(t, ctx, conn, `{"jsonrpc":"2.0","method":"`+long+`"}`)
	sameJSON(t, wsUntil(t, ctx, conn, nil, nil), `{"jsonrpc":"2.0","id":null,"error":{"code":-32601,"message":"Method not found","data":{"method":"`+long[:64]+`…"}}}`)

	// After sla.unsubscribe, notices are dropped again.
	wsSend(t, ctx, conn, `{"jsonrpc":"2.0","method":"sla.unsubscribe","id":2}`)
	sameJSON(t, wsUntil(t, ctx, conn, nil, nil), `{"jsonrpc":"2.0","result":{"unsubscribed":true},"id":2}`)
	feed(3)
	feed(4) // proves 3 was dropped; may race with the next subscribe
	wsSend(t, ctx, conn, `{"jsonrpc":"2.0","method":"sla.subscribe","id":3}`)
	sameJSON(t, wsUntil(t, ctx, conn, []string{n(4)}, []string{n(3)}), `{"jsonrpc":"2.0","result":{"subscribed":true},"id":3}`)
	sub.feed(t, slaNotice("sla.resolved", `{"jsonrpc":"2.0","method":"sla.resolved","params":{"breach":{"id":"breach_02"}}}`))
	if got := wsUntil(t, ctx, conn, []string{n(4)}, []string{n(3)}); got != `{"jsonrpc":"2.0","method":"sla.resolved","params":{"breach":{"id":"breach_02"}}}` {
		t.Fatalf("forwarded %s", got)
	}

	// The client leaves: the handler ends and unsubscribes.
	conn.Close(websocket.StatusNormalClosure, "bye")
	sub.waitCancelled(t)
}

func TestSLASubscribeEndsWhenTheServiceCloses(t *testing.T) {
	svc := newSLASvc(t)
	srv := slaServer(t, svc)
	conn, ctx := dialSLA(t, srv)
	sub := svc.nextSub(t)
	wsSend(t, ctx, conn, `{"jsonrpc":"2.0","method":"sla.subscribe","id":1}`)
	wsUntil(t, ctx, conn, nil, nil)
	close(sub.ch)
	if _, _, err := conn.Read(ctx); err == nil || ctx.Err() != nil {
		t.Fatalf("connection still open after the service closed (%v)", err)
	}
	sub.waitCancelled(t)
}

func TestSLASubscribeNeedsAWebSocket(t *testing.T) {
	svc := newSLASvc(t)
	w := slaGet(t, svc, "/sla/subscribe")
	if w.Code != http.StatusUpgradeRequired || w.Header().Get("Upgrade") != "websocket" {
		t.Fatalf("plain GET: %d %v %s", w.Code, w.Header(), w.Body.String())
	}
	if len(svc.subs) != 0 {
		t.Fatal("subscribed without a WebSocket")
	}
}
