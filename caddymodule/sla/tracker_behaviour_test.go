package sla

import (
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/asap-sidecar/asap-sidecar/storage"
)

const agentA = "urn:asap:agent:alpha"

func (c *clock) set(t time.Time) { c.mu.Lock(); c.t = t; c.mu.Unlock() }

// newDB opens a real database in a temporary directory, closed when the
// test ends (after the trackers opened on it).
func newDB(t *testing.T) *storage.DB {
	t.Helper()
	db := openDB(t, t.TempDir())
	t.Cleanup(func() { _ = db.Close() })
	return db
}

// openTracker opens a tracker that is closed when the test ends.
func openTracker(t *testing.T, db *storage.DB, cfg Config, hooks Hooks) *Tracker {
	t.Helper()
	tr, err := Open(db, cfg, hooks)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { _ = tr.Close() })
	return tr
}

// msNear reports whether a latency figure like "302ms" is want ms within
// the sketches' 1 % relative accuracy.
func msNear(s string, want float64) bool {
	var v float64
	if _, err := fmt.Sscanf(s, "%fms", &v); err != nil || !strings.HasSuffix(s, "ms") {
		return false
	}
	return v >= want*(1-RelativeAccuracy)-0.5 && v <= want*(1+RelativeAccuracy)+0.5
}

func openByType(tr *Tracker) map[string]Breach {
	out := map[string]Breach{}
	for _, b := range tr.OpenBreaches() {
		out[conditionKey(&b)] = b
	}
	return out
}

func TestOpenDefaultsAndRealClock(t *testing.T) {
	db := newDB(t)
	tr := openTracker(t, db, Config{Agent: agentA}, Hooks{})
	got := tr.Config()
	if got.Agent != agentA || got.MinSamples != 20 || got.Window != time.Hour || got.SnapshotEvery != 5*time.Minute || !got.Definition.Empty() {
		t.Fatalf("defaults: %+v", got)
	}
	if tr.hooks.After == nil || tr.hooks.Tick == nil {
		t.Fatal("without Hooks.After and Hooks.Tick the tracker should use real timers")
	}
	before := time.Now()
	m, _ := tr.Window(time.Hour)
	if m.PeriodEnd.Before(before.Add(-time.Second)) || m.PeriodEnd.After(time.Now().Add(time.Second)) {
		t.Fatalf("without Hooks.Now the tracker should use the wall clock; period end %v", m.PeriodEnd)
	}
	if m.PeriodEnd.Location() != time.UTC || m.PeriodEnd.Sub(m.PeriodStart) != time.Hour {
		t.Fatalf("period %v .. %v", m.PeriodStart, m.PeriodEnd)
	}
}

func TestConfigureKeepsAgentAndAppliesDefaults(t *testing.T) {
	db := newDB(t)
	clk := newClock()
	tm := newTimers()
	var evs events
	tr := openTracker(t, db, Config{Agent: agentA, MinSamples: 3, Window: 10 * time.Minute, SnapshotEvery: time.Minute},
		tm.on(Hooks{Now: clk.now, Notify: evs.add}))
	if c := tr.Config(); c.MinSamples != 3 || c.Window != 10*time.Minute || c.SnapshotEvery != time.Minute {
		t.Fatalf("config kept as given: %+v", c)
	}
	for i := 0; i < 5; i++ {
		tr.Observe(300*time.Millisecond, false)
	}
	tm.evaluate(t, tr)
	if n := evs.count(); n != 0 {
		t.Fatalf("%d events without any promise", n)
	}

	// A reload cannot move the tracker to another agent; zero fields
	// take the defaults.
	tr.Configure(Config{Agent: "urn:asap:agent:other", Definition: Definition{MaxLatencyP95: 100 * time.Millisecond}})
	c := tr.Config()
	if c.Agent != agentA || c.MinSamples != 20 || c.Window != time.Hour || c.SnapshotEvery != 5*time.Minute || c.Definition.MaxLatencyP95 != 100*time.Millisecond {
		t.Fatalf("after Configure: %+v", c)
	}
	tm.evaluate(t, tr)
	if n := evs.count(); n != 0 {
		t.Fatalf("5 samples breached under the default min_samples 20 (%d events)", n)
	}

	// The next evaluation judges under the new config. (That Configure
	// alone schedules one: TestConfigureAloneTriggersAnEvaluation.)
	tr.Configure(Config{Definition: Definition{MaxLatencyP95: 100 * time.Millisecond}, MinSamples: 5})
	tm.evaluate(t, tr)
	got := evs.all()
	if len(got) != 1 {
		t.Fatalf("events %s", describe(got))
	}
	b := got[0].Breach
	if got[0].Method != "sla.breach" || b.AgentID != agentA || b.BreachType != TypeLatency || b.Severity != SeverityCritical ||
		b.Threshold != "100ms" || !msNear(b.Actual, 300) || !b.DetectedAt.Equal(clk.now()) || b.ResolvedAt != nil {
		t.Fatalf("breach after reconfiguring: %+v", got[0])
	}
}

func TestConfigureAloneTriggersAnEvaluation(t *testing.T) {
	db := newDB(t)
	clk := newClock()
	cfg := Config{Agent: agentA, MinSamples: 5}
	// Five slow tasks, stored by a first tracker without any promise.
	first, err := Open(db, cfg, newTimers().on(Hooks{Now: clk.now}))
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 5; i++ {
		first.Observe(300*time.Millisecond, false)
	}
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}
	// A second tracker loads them; nothing has woken it when the promise
	// arrives.
	tm := newTimers()
	var evs events
	tr := openTracker(t, db, cfg, tm.on(Hooks{Now: clk.now, Notify: evs.add}))
	cfg.Definition = Definition{MaxLatencyP95: 100 * time.Millisecond}
	tr.Configure(cfg)
	tm.evaluate(t, tr) // fails unless Configure set an evaluation timer
	got := evs.all()
	if len(got) != 1 || got[0].Method != "sla.breach" || got[0].Breach.BreachType != TypeLatency || !msNear(got[0].Breach.Actual, 300) {
		t.Fatalf("events %s", describe(got))
	}
}

// The evaluation spacing reads Hooks.Now: what is left of evalSpacing since
// the last evaluation, never negative, never more than evalSpacing.
func TestEvaluationSpacing(t *testing.T) {
	t0 := newClock().now()
	for _, tc := range []struct {
		name      string
		now, last time.Time
		want      time.Duration
	}{
		{"never evaluated", t0, time.Time{}, 0},
		{"just evaluated", t0, t0, evalSpacing},
		{"20ms ago", t0.Add(20 * time.Millisecond), t0, evalSpacing - 20*time.Millisecond},
		{"exactly evalSpacing ago", t0.Add(evalSpacing), t0, 0},
		{"long ago", t0.Add(time.Hour), t0, 0},
		{"clock set back", t0.Add(-time.Hour), t0, evalSpacing},
	} {
		if got := evalWait(tc.now, tc.last); got != tc.want {
			t.Errorf("%s: evalWait = %v, want %v", tc.name, got, tc.want)
		}
	}

	// The tracker asks its timers for exactly that, and its flush ticker
	// for flushEvery.
	db := newDB(t)
	clk := newClock()
	tm := newTimers()
	tr := openTracker(t, db, Config{Agent: agentA}, tm.on(Hooks{Now: clk.now}))
	tr.Observe(time.Millisecond, false)
	tm.evaluate(t, tr) // the barrier sets the second timer, the clock still
	if got := tm.asked(); len(got) != 2 || got[0] != 0 || got[1] != evalSpacing {
		t.Fatalf("evaluation timers set for %v, want [0 %v]", got, evalSpacing)
	}
	tm.mu.Lock()
	period := tm.period
	tm.mu.Unlock()
	if period != flushEvery || flushEvery != 5*time.Second {
		t.Fatalf("flush ticker every %v", period)
	}
}

// The default timers are real ones: a breach is still noticed, however
// loaded the machine (no latency is judged here; see
// BenchmarkBreachNotification).
func TestDefaultTimersEvaluate(t *testing.T) {
	db := newDB(t)
	clk := newClock()
	var evs events
	tr := openTracker(t, db, Config{Agent: agentA, Definition: Definition{MaxLatencyP95: 100 * time.Millisecond}, MinSamples: 20},
		Hooks{Now: clk.now, Notify: evs.add})
	for i := 0; i < 20; i++ {
		tr.Observe(300*time.Millisecond, false)
	}
	got := evs.waitFor(t, "latency breach", func(evs []Event) bool { return len(evs) > 0 })
	if got[0].Method != "sla.breach" || got[0].Breach.BreachType != TypeLatency || !msNear(got[0].Breach.Actual, 300) {
		t.Fatalf("events %s", describe(got))
	}
}

func TestWindowUsesMinuteBucketsUpTo6hAndHourBucketsBeyond(t *testing.T) {
	db := newDB(t)
	clk := newClock()
	now := clk.now() // 10:00:30
	tr := openTracker(t, db, Config{Agent: agentA, MinSamples: 1000}, newTimers().on(Hooks{Now: clk.now}))
	for _, s := range []struct {
		ago time.Duration
		n   int
	}{
		{0, 1},
		{3 * time.Hour, 2},
		{6*time.Hour - time.Minute, 4}, // the oldest minute of the 6h window
		{6 * time.Hour, 8},             // one minute too old for 6h; in the hour bucket of 7h
		{25 * time.Hour, 16},           // past 24h, inside 7d
		{8 * 24 * time.Hour, 32},       // past 7d, inside 30d
		{31 * 24 * time.Hour, 64},      // past 30d
	} {
		clk.set(now.Add(-s.ago))
		for i := 0; i < s.n; i++ {
			tr.Observe(10*time.Millisecond, false)
		}
	}
	clk.set(now)
	for _, w := range []struct {
		window time.Duration
		want   uint64
	}{
		{time.Minute, 1}, {time.Hour, 1}, {6 * time.Hour, 1 + 2 + 4}, {7 * time.Hour, 1 + 2 + 4 + 8},
		{24 * time.Hour, 15}, {7 * 24 * time.Hour, 31}, {30 * 24 * time.Hour, 63},
	} {
		m, sum := tr.Window(w.window)
		if m.TasksCompleted != w.want || sum.Completed != w.want {
			t.Errorf("Window(%v): %d tasks (bucket %d), want %d", w.window, m.TasksCompleted, sum.Completed, w.want)
		}
		if !m.PeriodEnd.Equal(now) || !m.PeriodStart.Equal(now.Add(-w.window)) || m.AgentID != agentA {
			t.Errorf("Window(%v): %s %v .. %v", w.window, m.AgentID, m.PeriodStart, m.PeriodEnd)
		}
		if m.UptimePercent != 100 || m.HealthChecks != 0 || m.ErrorRatePercent != 0 || m.LatencyP95MS != 10 {
			t.Errorf("Window(%v): %+v", w.window, m)
		}
	}
}

func TestMetricsOf(t *testing.T) {
	paris := time.FixedZone("CET", 3600)
	start := time.Date(2026, 1, 1, 11, 0, 0, 0, paris)
	end := start.Add(time.Hour)
	m := metricsOf(agentA, start, end, NewBucket())
	want := Metrics{AgentID: agentA, PeriodStart: start.UTC(), PeriodEnd: end.UTC(), UptimePercent: 100}
	if m != want || m.PeriodStart.Location() != time.UTC {
		t.Fatalf("empty bucket: %+v, want %+v", m, want)
	}
	b := NewBucket()
	b.Completed, b.Failed, b.HealthUp, b.HealthTotal = 2, 1, 2, 3
	for _, v := range []float64{100, 200, 300} {
		_ = b.Latency.Add(v)
	}
	m = metricsOf(agentA, start, end, b)
	if m.UptimePercent != 66.67 || m.ErrorRatePercent != 33.33 || m.TasksCompleted != 2 || m.TasksFailed != 1 || m.HealthChecks != 3 {
		t.Fatalf("mixed bucket: %+v", m)
	}
	// DDSketch's lower-rank p95 of three samples is the second one.
	if m.LatencyP95MS < 198 || m.LatencyP95MS > 202 {
		t.Fatalf("p95 %d, want 200 within 1%%", m.LatencyP95MS)
	}
}

func TestConditionsEdgeCases(t *testing.T) {
	full := Definition{Availability: fptr(99.5), MaxLatencyP95: 100 * time.Millisecond, MaxErrorRate: fptr(1)}
	kinds := func(cs []condition) string {
		var out []string
		for _, c := range cs {
			out = append(out, fmt.Sprintf("%s=%s/%s/%s/%s", c.key, c.severity, c.threshold, c.actual, c.typ))
		}
		sort.Strings(out)
		return strings.Join(out, " ")
	}
	for _, tc := range []struct {
		name string
		d    Definition
		m    Metrics
		p95  float64
		want string
	}{
		{"empty definition promises nothing", Definition{}, Metrics{UptimePercent: 0, ErrorRatePercent: 100, TasksFailed: 100, HealthChecks: 100}, 1e6, ""},
		{"health checks exactly min_samples", full, Metrics{UptimePercent: 99.49, HealthChecks: 20}, 0,
			"availability=warning/99.5%/99.49%/availability"},
		{"health checks one short", full, Metrics{UptimePercent: 10, HealthChecks: 19}, 0, ""},
		{"uptime at target", full, Metrics{UptimePercent: 99.5, HealthChecks: 1000}, 0, ""},
		{"p95 at max", full, Metrics{UptimePercent: 100, TasksCompleted: 100}, 100, ""},
		{"failed tasks count as latency samples", full, Metrics{UptimePercent: 100, TasksFailed: 20, ErrorRatePercent: 0}, 150.4,
			"latency=warning/100ms/150ms/latency"},
		{"p95 shown rounded, judged exact", full, Metrics{UptimePercent: 100, TasksCompleted: 20}, 199.5,
			"latency=warning/100ms/200ms/latency"},
		{"latency one sample short", full, Metrics{UptimePercent: 100, TasksCompleted: 19}, 1e6, ""},
		{"error rate at max", full, Metrics{UptimePercent: 100, TasksCompleted: 99, TasksFailed: 1, ErrorRatePercent: 1}, 0, ""},
		{"error rate 1.5 of max 1 is warning", full, Metrics{UptimePercent: 100, TasksCompleted: 197, TasksFailed: 3, ErrorRatePercent: 1.5}, 0,
			"error_rate=warning/1.0%/1.5%/error_rate"},
		{"zero tolerance: any failure is critical", Definition{MaxErrorRate: fptr(0)}, Metrics{TasksCompleted: 999, TasksFailed: 1, ErrorRatePercent: 0.1}, 0,
			"error_rate=critical/0.0%/0.1%/error_rate"},
		{"no promise on latency", Definition{Availability: fptr(99)}, Metrics{UptimePercent: 100, TasksCompleted: 100}, 1e6, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := kinds(Conditions(tc.d, tc.m, tc.p95, 20)); got != tc.want {
				t.Fatalf("got %q\nwant %q", got, tc.want)
			}
		})
	}
}

func TestDurName(t *testing.T) {
	for d, want := range map[time.Duration]string{
		5 * time.Minute: "5m", 30 * time.Minute: "30m", 90 * time.Minute: "90m", time.Hour: "1h", 2 * time.Hour: "2h",
		6 * time.Hour: "6h", 24 * time.Hour: "1d", 48 * time.Hour: "2d", 72 * time.Hour: "3d", 36 * time.Hour: "36h",
	} {
		if got := durName(d); got != want {
			t.Errorf("durName(%v) = %q, want %q", d, got, want)
		}
	}
}

// burn returns the burn-rate conditions of tr now, by key.
func burn(tr *Tracker, now time.Time) map[string]condition {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	out := map[string]condition{}
	for _, c := range tr.burnConditions(now) {
		out[c.key] = c
	}
	return out
}

func TestBurnWindows(t *testing.T) {
	type want struct{ threshold, actual, severity string }
	all := map[string]want{
		"error_budget:1h/5m":  {"14.4x burn over 1h/5m", "", SeverityCritical},
		"error_budget:6h/30m": {"6.0x burn over 6h/30m", "", SeverityCritical},
		"error_budget:1d/2h":  {"3.0x burn over 1d/2h", "", SeverityWarning},
		"error_budget:3d/6h":  {"1.0x burn over 3d/6h", "", SeverityWarning},
	}
	// An even failure rate over every window: the burn factor decides
	// which pairs fire.
	for _, tc := range []struct {
		name          string
		max           float64
		failed, total int
		actual        string
		fire          []string
	}{
		{"100x burns every pair", 1, 20, 20, "100.0x", []string{"error_budget:1h/5m", "error_budget:6h/30m", "error_budget:1d/2h", "error_budget:3d/6h"}},
		{"7x: not the fastest pair", 10, 14, 20, "7.0x", []string{"error_budget:6h/30m", "error_budget:1d/2h", "error_budget:3d/6h"}},
		{"3.5x: only the warnings", 10, 7, 20, "3.5x", []string{"error_budget:1d/2h", "error_budget:3d/6h"}},
		{"exactly 1x", 10, 2, 20, "1.0x", []string{"error_budget:3d/6h"}},
		{"under budget", 10, 1, 20, "", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			db := newDB(t)
			clk := newClock()
			tr := openTracker(t, db, Config{Agent: agentA, Definition: Definition{MaxErrorRate: fptr(tc.max)}, MinSamples: 20}, newTimers().on(Hooks{Now: clk.now}))
			for i := 0; i < tc.total; i++ {
				tr.Observe(time.Millisecond, i < tc.failed)
			}
			got := burn(tr, clk.now())
			if len(got) != len(tc.fire) {
				t.Fatalf("fired %v, want %v", got, tc.fire)
			}
			for _, k := range tc.fire {
				c, ok := got[k]
				if !ok || c.typ != TypeErrorBudget || c.threshold != all[k].threshold || c.severity != all[k].severity || c.actual != tc.actual {
					t.Fatalf("%s: %+v (fired %v)", k, c, got)
				}
			}
		})
	}
}

func TestBurnWindowsMinimumTrafficGate(t *testing.T) {
	db := newDB(t)
	clk := newClock()
	now := clk.now()
	tr := openTracker(t, db, Config{Agent: agentA, Definition: Definition{MaxErrorRate: fptr(1)}, MinSamples: 20}, newTimers().on(Hooks{Now: clk.now}))
	for i := 0; i < 19; i++ {
		tr.Observe(time.Millisecond, true)
	}
	if got := burn(tr, now); len(got) != 0 {
		t.Fatalf("19 samples passed the 20-sample gate: %v", got)
	}
	// Failures two days ago fill the 3d window only: its pair fires, the
	// shorter pairs, whose long windows hold 19 samples, stay gated
	// although every one of their samples failed.
	clk.set(now.Add(-48 * time.Hour))
	for i := 0; i < 30; i++ {
		tr.Observe(time.Millisecond, true)
	}
	clk.set(now)
	got := burn(tr, now)
	if len(got) != 1 || got["error_budget:3d/6h"].actual != "100.0x" {
		t.Fatalf("gate by the long window's traffic: %v", got)
	}
	// One more sample opens the gate of every pair.
	tr.Observe(time.Millisecond, true)
	if got := burn(tr, now); len(got) != 4 {
		t.Fatalf("20 samples: %v", got)
	}
	// No error-rate promise, or a zero one, has no budget to burn.
	for _, d := range []Definition{{}, {MaxErrorRate: fptr(0)}} {
		tr.Configure(Config{Definition: d, MinSamples: 20})
		if got := burn(tr, now); len(got) != 0 {
			t.Fatalf("burn alerts for %+v: %v", d, got)
		}
	}
}

func TestBurnAlertsOpenAsBreaches(t *testing.T) {
	db := newDB(t)
	clk := newClock()
	tm := newTimers()
	var evs events
	tr := openTracker(t, db, Config{Agent: agentA, Definition: Definition{MaxErrorRate: fptr(1)}, MinSamples: 20},
		tm.on(Hooks{Now: clk.now, Notify: evs.add}))
	for i := 0; i < 20; i++ {
		tr.Observe(time.Millisecond, true)
	}
	tm.evaluate(t, tr)
	got := evs.all() // error_rate and the four burn pairs
	if n := len(got); n != 5 {
		t.Fatalf("events %s, want 5", describe(got))
	}
	thresholds := map[string]string{}
	for _, e := range got {
		if e.Method != "sla.breach" || e.Breach.AgentID != agentA {
			t.Fatalf("event %+v", e)
		}
		thresholds[e.Breach.Threshold] = e.Breach.Severity + " " + e.Breach.Actual + " " + e.Breach.BreachType
	}
	want := map[string]string{
		"1.0%":                  "critical 100.0% error_rate",
		"14.4x burn over 1h/5m": "critical 100.0x error_budget",
		"6.0x burn over 6h/30m": "critical 100.0x error_budget",
		"3.0x burn over 1d/2h":  "warning 100.0x error_budget",
		"1.0x burn over 3d/6h":  "warning 100.0x error_budget",
	}
	if fmt.Sprint(thresholds) != fmt.Sprint(want) {
		t.Fatalf("breaches %v\nwant %v", thresholds, want)
	}
	if open := openByType(tr); len(open) != 5 || open["error_budget:6h/30m"].Severity != SeverityCritical {
		t.Fatalf("open breaches %v", open)
	}

	// Ten minutes later the last 5 minutes are clean: only the 1h/5m
	// pair stops burning (its short window no longer burns) and resolves.
	clk.add(10 * time.Minute)
	for i := 0; i < 20; i++ {
		tr.Observe(time.Millisecond, false)
	}
	tm.evaluate(t, tr)
	got = evs.all()
	if n := len(got); n != 6 || got[5].Method != "sla.resolved" || got[5].Breach.Threshold != "14.4x burn over 1h/5m" ||
		!got[5].Breach.ResolvedAt.Equal(clk.now()) {
		t.Fatalf("%d events, last %+v", n, got[5])
	}
	if open := openByType(tr); len(open) != 4 {
		t.Fatalf("open breaches %v", open)
	}
}

func TestBurnNeedsTheShortWindowToBurnToo(t *testing.T) {
	db := newDB(t)
	clk := newClock()
	now := clk.now()
	tr := openTracker(t, db, Config{Agent: agentA, Definition: Definition{MaxErrorRate: fptr(1)}, MinSamples: 20}, newTimers().on(Hooks{Now: clk.now}))
	// Two days ago every task failed; nothing since.
	clk.set(now.Add(-48 * time.Hour))
	for i := 0; i < 30; i++ {
		tr.Observe(time.Millisecond, true)
	}
	clk.set(now)
	if got := burn(tr, now); len(got) != 0 {
		t.Fatalf("burn alert with a quiet short window: %v", got)
	}
	// One failure within the last 6 hours makes the 3d/6h pair burn.
	clk.set(now.Add(-5 * time.Hour))
	tr.Observe(time.Millisecond, true)
	clk.set(now)
	if got := burn(tr, now); len(got) != 1 || got["error_budget:3d/6h"].severity != SeverityWarning {
		t.Fatalf("burn alerts %v", got)
	}
}

// breachAll opens a critical availability and a critical latency breach
// and returns them by type.
func breachAll(t *testing.T, tr *Tracker, tm *timers, evs *events) map[string]Breach {
	t.Helper()
	for i := 0; i < 20; i++ {
		tr.Observe(time.Second, false)
		tr.Health(false)
	}
	tm.evaluate(t, tr)
	got := evs.all()
	out := map[string]Breach{}
	for _, e := range got {
		out[e.Breach.BreachType] = e.Breach
	}
	if len(got) != 2 || len(out) != 2 || out[TypeAvailability].Actual != "0.0%" || out[TypeAvailability].Severity != SeverityCritical ||
		!msNear(out[TypeLatency].Actual, 1000) || out[TypeLatency].Severity != SeverityCritical {
		t.Fatalf("breaches %+v", got)
	}
	return out
}

func TestUnjudgeableConditionStaysOpenAndRecoveryResolves(t *testing.T) {
	db := newDB(t)
	clk := newClock()
	var evs events
	def := Definition{Availability: fptr(99), MaxLatencyP95: 100 * time.Millisecond}
	tm := newTimers()
	tr := openTracker(t, db, Config{Agent: agentA, Definition: def, MinSamples: 20}, tm.on(Hooks{Now: clk.now, Notify: evs.add}))
	opened := breachAll(t, tr, tm, &evs)

	// Two hours later the 1h window holds no sample at all: nothing can
	// be judged, so nothing resolves.
	clk.add(2 * time.Hour)
	tr.evaluate()
	if open := openByType(tr); len(open) != 2 {
		t.Fatalf("open after an empty window: %v", open)
	}
	if n := evs.count(); n != 2 {
		t.Fatalf("%d events after an empty window", n)
	}

	// Health recovers: availability resolves; the latency breach (no
	// task in the window yet) stays open.
	for i := 0; i < 20; i++ {
		tr.Health(true)
	}
	tm.evaluate(t, tr)
	got := evs.all()
	if len(got) != 3 {
		t.Fatalf("events %s", describe(got))
	}
	res := got[2]
	if res.Method != "sla.resolved" || res.Breach.ID != opened[TypeAvailability].ID || res.Breach.ResolvedAt == nil ||
		!res.Breach.ResolvedAt.Equal(clk.now()) || !res.Breach.DetectedAt.Equal(opened[TypeAvailability].DetectedAt) {
		t.Fatalf("availability resolution %+v", res)
	}
	open := openByType(tr)
	if len(open) != 1 || open[TypeLatency].ID != opened[TypeLatency].ID {
		t.Fatalf("open after health recovered: %v", open)
	}
	stored, err := Breaches(db, BreachFilter{AgentID: agentA})
	if err != nil || len(stored) != 2 {
		t.Fatalf("stored %+v %v", stored, err)
	}
	for _, b := range stored {
		if (b.BreachType == TypeAvailability) != (b.ResolvedAt != nil) {
			t.Fatalf("stored %+v", b)
		}
	}

	// Fast tasks resolve the latency breach.
	for i := 0; i < 20; i++ {
		tr.Observe(time.Millisecond, false)
	}
	tm.evaluate(t, tr)
	got = evs.all()
	if len(got) != 4 || got[3].Method != "sla.resolved" || got[3].Breach.ID != opened[TypeLatency].ID {
		t.Fatalf("latency resolution: events %s", describe(got))
	}
	if open := tr.OpenBreaches(); len(open) != 0 || evs.count() != 4 {
		t.Fatalf("still open: %+v (%d events)", open, evs.count())
	}
}

func TestTooFewSamplesKeepBreachOpen(t *testing.T) {
	db := newDB(t)
	clk := newClock()
	tm := newTimers()
	var evs events
	tr := openTracker(t, db, Config{Agent: agentA, Definition: Definition{MaxLatencyP95: 100 * time.Millisecond}, MinSamples: 20},
		tm.on(Hooks{Now: clk.now, Notify: evs.add}))
	for i := 0; i < 20; i++ {
		tr.Observe(300*time.Millisecond, false)
	}
	tm.evaluate(t, tr)
	if n := evs.count(); n != 1 {
		t.Fatalf("events %s", describe(evs.all()))
	}
	// An hour later, 5 tasks, every one three times too slow.
	clk.add(61 * time.Minute)
	for i := 0; i < 5; i++ {
		tr.Observe(300*time.Millisecond, false)
	}
	tm.evaluate(t, tr)
	if open := tr.OpenBreaches(); len(open) != 1 || evs.count() != 1 {
		t.Fatalf("5 slow tasks (min_samples 20) resolved the latency breach: open %+v, %d events", open, evs.count())
	}
}

func TestComplianceDeductions(t *testing.T) {
	db := newDB(t)
	clk := newClock()
	for _, tc := range []struct {
		name string
		def  Definition
		want float64
	}{
		{"no promise", Definition{}, 100},
		{"kept promises", Definition{Availability: fptr(10), MaxLatencyP95: time.Hour, MaxErrorRate: fptr(90)}, 100},
		{"one warning", Definition{MaxErrorRate: fptr(1.5)}, 95}, // 2 % failed: warning (< 5 %, < 2×1.5)
		{"one critical", Definition{Availability: fptr(99)}, 75}, // uptime 80 %
		{"critical and two warnings", Definition{Availability: fptr(99), MaxLatencyP95: 150 * time.Millisecond, MaxErrorRate: fptr(1.5)}, 65},
		// At most one condition per kind: three criticals are the most
		// a window can cost (the floor at 0 cannot be reached).
		{"three criticals", Definition{Availability: fptr(99), MaxLatencyP95: 50 * time.Millisecond, MaxErrorRate: fptr(0.5)}, 25},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tr := openTracker(t, db, Config{Agent: "urn:asap:agent:" + strings.ReplaceAll(tc.name, " ", "-"), Definition: tc.def, MinSamples: 20},
				newTimers().on(Hooks{Now: clk.now}))
			for i := 0; i < 100; i++ {
				tr.Observe(200*time.Millisecond, i < 2) // 2 % failed, p95 200ms
			}
			for i := 0; i < 20; i++ {
				tr.Health(i%5 != 0) // 80 % up
			}
			if got := tr.Compliance(time.Hour); got != tc.want {
				t.Fatalf("compliance %v, want %v", got, tc.want)
			}
			// An empty window cannot breach.
			clk.add(2 * time.Hour)
			defer clk.add(-2 * time.Hour)
			if got := tr.Compliance(time.Hour); got != 100 {
				t.Fatalf("compliance of an empty window %v", got)
			}
		})
	}
}

func TestBudgetRemaining(t *testing.T) {
	db := newDB(t)
	clk := newClock()
	f := func(p *float64) string {
		if p == nil {
			return "nil"
		}
		return fmt.Sprint(*p)
	}
	for _, tc := range []struct {
		name            string
		max             *float64
		completed, fail int
		want            string
	}{
		{"no promise", nil, 90, 10, "nil"},
		{"no tasks", fptr(1), 0, 0, "nil"},
		{"untouched", fptr(10), 100, 0, "100"},
		{"partly spent", fptr(10), 96, 4, "60"},
		{"a ninth spent", fptr(3), 299, 1, "88.89"},
		{"spent", fptr(10), 80, 20, "0"},
		{"zero tolerance, no failure", fptr(0), 10, 0, "100"},
		{"zero tolerance, one failure", fptr(0), 999, 1, "0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tr := openTracker(t, db, Config{Agent: "urn:asap:agent:" + strings.ReplaceAll(tc.name, " ", "-"), Definition: Definition{MaxErrorRate: tc.max}},
				newTimers().on(Hooks{Now: clk.now}))
			for i := 0; i < tc.completed+tc.fail; i++ {
				tr.Observe(time.Millisecond, i < tc.fail)
			}
			if got := f(tr.BudgetRemaining(time.Hour)); got != tc.want {
				t.Fatalf("budget remaining %s, want %s", got, tc.want)
			}
		})
	}
}

func TestRecordHookRunsInTheBreachTransaction(t *testing.T) {
	db := newDB(t)
	clk := newClock()
	tm := newTimers()
	var evs events
	var recorded []Event
	auditKey := func(e Event) []byte { return storage.SpaceAudit.KeyString("sla-test", e.Method, e.Breach.ID) }
	tr := openTracker(t, db, Config{Agent: agentA, Definition: Definition{MaxLatencyP95: 100 * time.Millisecond}, MinSamples: 20},
		tm.on(Hooks{Now: clk.now, Notify: evs.add, Record: func(tx *storage.Tx, e Event) error {
			// The breach is staged in the same transaction.
			if v, err := tx.Get(breachKey(agentA, e.Breach.ID)); err != nil || !strings.Contains(string(v), e.Breach.ID) {
				return fmt.Errorf("breach not staged: %q %v", v, err)
			}
			recorded = append(recorded, e)
			tx.Set(auditKey(e), []byte(e.Method))
			return nil
		}}))
	for i := 0; i < 20; i++ {
		tr.Observe(time.Second, false)
	}
	tm.evaluate(t, tr)
	if n := evs.count(); n != 1 {
		t.Fatalf("events %s", describe(evs.all()))
	}
	clk.add(2 * time.Hour)
	for i := 0; i < 20; i++ {
		tr.Observe(time.Millisecond, false)
	}
	tm.evaluate(t, tr)
	got := evs.all()
	if len(got) != 2 || len(recorded) != 2 || recorded[0].Method != "sla.breach" || recorded[1].Method != "sla.resolved" ||
		recorded[0].Breach.ID != got[0].Breach.ID || recorded[1].Breach.ID != got[0].Breach.ID {
		t.Fatalf("recorded %+v, notified %+v", recorded, got)
	}
	err := db.View(func(r *storage.Reader) error {
		for _, e := range got {
			v, err := r.Get(auditKey(e))
			if err != nil || string(v) != e.Method {
				return fmt.Errorf("record of %s: %q %v", e.Method, v, err)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	stored, _ := Breaches(db, BreachFilter{})
	if len(stored) != 1 || stored[0].ResolvedAt == nil {
		t.Fatalf("stored %+v", stored)
	}
}

func TestRecordHookErrorDropsTheWriteButStillNotifies(t *testing.T) {
	db := newDB(t)
	clk := newClock()
	tm := newTimers()
	var evs events
	tr := openTracker(t, db, Config{Agent: agentA, Definition: Definition{MaxLatencyP95: 100 * time.Millisecond}, MinSamples: 20},
		tm.on(Hooks{Now: clk.now, Notify: evs.add, Record: func(tx *storage.Tx, e Event) error {
			tx.Set(storage.SpaceAudit.KeyString("sla-test", e.Breach.ID), []byte("x"))
			return fmt.Errorf("audit log full")
		}}))
	for i := 0; i < 20; i++ {
		tr.Observe(time.Second, false)
	}
	tm.evaluate(t, tr)
	got := evs.all()
	if len(got) != 1 || got[0].Method != "sla.breach" || got[0].Breach.BreachType != TypeLatency {
		t.Fatalf("notified %+v", got)
	}
	stored, err := Breaches(db, BreachFilter{})
	if err != nil || len(stored) != 0 {
		t.Fatalf("a breach whose record failed was stored: %+v %v", stored, err)
	}
	err = db.View(func(r *storage.Reader) error {
		_, err := r.Get(storage.SpaceAudit.KeyString("sla-test", got[0].Breach.ID))
		return err
	})
	if err != storage.ErrNotFound {
		t.Fatalf("the record's own write survived: %v", err)
	}
	if open := tr.OpenBreaches(); len(open) != 1 || open[0].ID != got[0].Breach.ID {
		t.Fatalf("open in memory %+v", open)
	}
}

func TestCloseTwice(t *testing.T) {
	db := newDB(t)
	tr, err := Open(db, Config{Agent: agentA}, newTimers().on(Hooks{Now: newClock().now}))
	if err != nil {
		t.Fatal(err)
	}
	tr.Observe(time.Millisecond, false)
	if err := tr.Close(); err != nil {
		t.Fatalf("first Close: %v", err)
	}
	if err := tr.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if keys := storedTails(t, db, "m", agentA); len(keys) != 1 {
		t.Fatalf("minute buckets stored by Close: %v", keys)
	}
}
