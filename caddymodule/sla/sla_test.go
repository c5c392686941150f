package sla

import (
	"math"
	"math/rand"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/asap-sidecar/asap-sidecar/storage"
)

func fptr(v float64) *float64 { return &v }

func TestP95WithinOnePercentOfExact(t *testing.T) {
	rng := rand.New(rand.NewSource(42))
	for _, dist := range []struct {
		name string
		draw func() float64
	}{
		{"uniform 1..1000ms", func() float64 { return 1 + 999*rng.Float64() }},
		{"lognormal", func() float64 { return math.Exp(3 + 1.2*rng.NormFloat64()) }},
		{"bimodal", func() float64 {
			if rng.Intn(10) == 0 {
				return 2000 + 500*rng.Float64()
			}
			return 20 + 10*rng.Float64()
		}},
	} {
		t.Run(dist.name, func(t *testing.T) {
			b := NewBucket()
			xs := make([]float64, 100000)
			for i := range xs {
				xs[i] = dist.draw()
				b.Latency.Add(xs[i])
			}
			sort.Float64s(xs)
			// The exact p95 by the lower-rank definition DDSketch uses.
			exact := xs[int(math.Ceil(0.95*float64(len(xs)-1)))]
			got := b.P95()
			if rel := math.Abs(got-exact) / exact; rel > 0.01 {
				t.Fatalf("p95 %.3f vs exact %.3f: relative error %.4f > 1%%", got, exact, rel)
			}
			// And it survives storage and merging.
			c, err := DecodeBucket(b.Encode())
			if err != nil {
				t.Fatal(err)
			}
			if c.P95() != got {
				t.Fatalf("decoded p95 %v != %v", c.P95(), got)
			}
		})
	}
}

func TestSeverityBoundaries(t *testing.T) {
	def := Definition{Availability: fptr(99.5), MaxLatencyP95: 500 * time.Millisecond, MaxErrorRate: fptr(1)}
	cases := []struct {
		name                 string
		uptime, errRate, p95 float64
		want                 map[string]string // type → severity
	}{
		{"all fine", 99.5, 1, 500, map[string]string{}},
		{"uptime just below target", 99.49, 0, 100, map[string]string{TypeAvailability: SeverityWarning}},
		{"uptime 95 is warning", 95, 0, 100, map[string]string{TypeAvailability: SeverityWarning}},
		{"uptime under 95 is critical", 94.99, 0, 100, map[string]string{TypeAvailability: SeverityCritical}},
		{"p95 just above max", 100, 0, 501, map[string]string{TypeLatency: SeverityWarning}},
		{"p95 below 2x", 100, 0, 999, map[string]string{TypeLatency: SeverityWarning}},
		{"p95 at 2x is critical", 100, 0, 1000, map[string]string{TypeLatency: SeverityCritical}},
		{"error rate above max", 100, 1.5, 100, map[string]string{TypeErrorRate: SeverityWarning}},
		{"error rate at 2x is critical", 100, 2, 100, map[string]string{TypeErrorRate: SeverityCritical}},
		{"everything broken", 50, 10, 5000, map[string]string{TypeAvailability: SeverityCritical, TypeLatency: SeverityCritical, TypeErrorRate: SeverityCritical}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			m := Metrics{UptimePercent: tc.uptime, ErrorRatePercent: tc.errRate, TasksCompleted: 100, HealthChecks: 100}
			got := map[string]string{}
			for _, c := range Conditions(def, m, tc.p95, 20) {
				got[c.typ] = c.severity
			}
			if len(got) != len(tc.want) {
				t.Fatalf("conditions %v, want %v", got, tc.want)
			}
			for k, v := range tc.want {
				if got[k] != v {
					t.Fatalf("conditions %v, want %v", got, tc.want)
				}
			}
		})
	}
	// The 5 % floor for error rates: with max 3 %, 5 % is critical though
	// below 2×.
	d := Definition{MaxErrorRate: fptr(3)}
	c := Conditions(d, Metrics{ErrorRatePercent: 5, TasksCompleted: 100}, 0, 20)
	if len(c) != 1 || c[0].severity != SeverityCritical || c[0].threshold != "3.0%" || c[0].actual != "5.0%" {
		t.Fatalf("5%% floor: %+v", c)
	}
	// Too few samples: no breach at all.
	if c := Conditions(def, Metrics{UptimePercent: 10, ErrorRatePercent: 90, TasksCompleted: 5, HealthChecks: 5}, 9999, 20); len(c) != 0 {
		t.Fatalf("breached under min_samples: %+v", c)
	}
}

// clock is a test clock.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time      { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) { c.mu.Lock(); c.t = c.t.Add(d); c.mu.Unlock() }
func newClock() *clock               { return &clock{t: time.Date(2026, 11, 26, 10, 0, 30, 0, time.UTC)} }
func openDB(t testing.TB, dir string) *storage.DB {
	db, err := storage.Open(storage.Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	return db
}

func TestLatencyBreachOpensOnceAndResolves(t *testing.T) {
	dir := t.TempDir()
	db := openDB(t, dir)
	clk := newClock()
	tm := newTimers()
	var evs events
	cfg := Config{Agent: "urn:asap:agent:demo", Definition: Definition{MaxLatencyP95: 100 * time.Millisecond}, MinSamples: 20}
	tr, err := Open(db, cfg, tm.on(Hooks{Now: clk.now, Notify: evs.add}))
	if err != nil {
		t.Fatal(err)
	}
	// 19 slow samples: under min_samples, nothing.
	for i := 0; i < 19; i++ {
		tr.Observe(300*time.Millisecond, false)
	}
	tm.evaluate(t, tr)
	if len(tr.OpenBreaches()) != 0 || evs.count() != 0 {
		t.Fatalf("breach before min_samples: %s", describe(evs.all()))
	}
	// The 20th opens the breach. (How soon after the crossing sample
	// people hear of it is measured by BenchmarkBreachNotification.)
	tr.Observe(300*time.Millisecond, false)
	tm.evaluate(t, tr)
	got := evs.all()
	if len(got) != 1 || got[0].Method != "sla.breach" || got[0].Breach.BreachType != TypeLatency || got[0].Breach.Severity != SeverityCritical ||
		got[0].Breach.Threshold != "100ms" || !strings.HasPrefix(got[0].Breach.ID, "breach_") {
		t.Fatalf("breach events %s", describe(got))
	}
	// More slow samples: still one open breach, no new event.
	for i := 0; i < 50; i++ {
		tr.Observe(300*time.Millisecond, false)
	}
	tm.evaluate(t, tr)
	if n := len(tr.OpenBreaches()); n != 1 || evs.count() != 1 {
		t.Fatalf("open %d, events %s", n, describe(evs.all()))
	}
	// Recovery: enough fast samples that the window's p95 is under 100ms.
	for i := 0; i < 2000; i++ {
		tr.Observe(10*time.Millisecond, false)
	}
	tm.evaluate(t, tr)
	got = evs.all()
	if len(got) != 2 || got[1].Method != "sla.resolved" || got[1].Breach.ID != got[0].Breach.ID || got[1].Breach.ResolvedAt == nil {
		t.Fatalf("resolution: events %s", describe(got))
	}
	if len(tr.OpenBreaches()) != 0 {
		t.Fatal("breach still open")
	}
	stored, _ := Breaches(db, BreachFilter{AgentID: "urn:asap:agent:demo"})
	if len(stored) != 1 || stored[0].ResolvedAt == nil {
		t.Fatalf("stored breaches %+v", stored)
	}
	tr.Close()
	db.Close()
}

func TestErrorRateAndAvailabilityBreaches(t *testing.T) {
	db := openDB(t, t.TempDir())
	defer db.Close()
	clk := newClock()
	tm := newTimers()
	var evs events
	tr, err := Open(db, Config{Agent: "urn:asap:agent:demo", Definition: Definition{Availability: fptr(99), MaxErrorRate: fptr(1)}, MinSamples: 10},
		tm.on(Hooks{Now: clk.now, Notify: evs.add}))
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	for i := 0; i < 30; i++ {
		tr.Observe(time.Millisecond, i%10 == 0) // 10% failed
	}
	for i := 0; i < 20; i++ {
		tr.Health(i%4 != 0) // 75% up
	}
	// One evaluation, after every sample.
	tm.evaluate(t, tr)
	got := evs.all()
	keys := byKey(t, got)
	// 10 % failed burns the 1 % budget 10x: the pairs whose factor is at
	// most 10 fire as well.
	if len(got) != 5 || len(keys) != 5 {
		t.Fatalf("events %s, want error_rate, availability and three burn alerts", describe(got))
	}
	for _, k := range []string{"error_budget:6h/30m", "error_budget:1d/2h", "error_budget:3d/6h"} {
		if b := keys[k].Breach; keys[k].Method != "sla.breach" || b.Actual != "10.0x" {
			t.Fatalf("%s: %s", k, describe(got))
		}
	}
	types := map[string]Breach{}
	for _, e := range got {
		if e.Method != "sla.breach" {
			t.Fatalf("events %s", describe(got))
		}
		types[e.Breach.BreachType] = e.Breach
	}
	if types[TypeErrorRate].Severity != SeverityCritical || types[TypeErrorRate].Actual != "10.0%" || types[TypeErrorRate].Threshold != "1.0%" {
		t.Fatalf("error rate breach %+v", types[TypeErrorRate])
	}
	if types[TypeAvailability].Severity != SeverityCritical || types[TypeAvailability].Actual != "75.0%" {
		t.Fatalf("availability breach %+v", types[TypeAvailability])
	}
	m, _ := tr.Window(time.Hour)
	if m.TasksFailed != 3 || m.TasksCompleted != 27 || m.UptimePercent != 75 || m.ErrorRatePercent != 10 {
		t.Fatalf("metrics %+v", m)
	}
	if c := tr.Compliance(time.Hour); c != 50 {
		t.Fatalf("compliance %v, want 50 (two critical conditions)", c)
	}
	if b := tr.BudgetRemaining(time.Hour); b == nil || *b != 0 {
		t.Fatalf("budget %v, want 0 (spent)", b)
	}
}

func TestBurnRateNeedsBothWindows(t *testing.T) {
	db := openDB(t, t.TempDir())
	defer db.Close()
	clk := newClock()
	tm := newTimers()
	tr, err := Open(db, Config{Agent: "urn:asap:agent:demo", Definition: Definition{MaxErrorRate: fptr(1)}, MinSamples: 10, Window: time.Minute},
		tm.on(Hooks{Now: clk.now}))
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	// An hour ago, a burst of failures: the 1h window burns, the 5m does not.
	clk.add(-50 * time.Minute)
	for i := 0; i < 100; i++ {
		tr.Observe(time.Millisecond, i < 30)
	}
	clk.add(50 * time.Minute)
	for i := 0; i < 100; i++ {
		tr.Observe(time.Millisecond, false)
	}
	tm.evaluate(t, tr)
	for _, b := range tr.OpenBreaches() {
		if b.BreachType == TypeErrorBudget && strings.Contains(b.Threshold, "over 1h/5m") {
			t.Fatalf("1h/5m burn alert without the 5m window burning: %+v", b)
		}
	}
	// Now the last 5 minutes burn too.
	for i := 0; i < 100; i++ {
		tr.Observe(time.Millisecond, true)
	}
	tm.evaluate(t, tr)
	found := false
	for _, b := range tr.OpenBreaches() {
		if b.BreachType == TypeErrorBudget && strings.Contains(b.Threshold, "over 1h/5m") && b.Severity == SeverityCritical {
			found = true
		}
	}
	if !found {
		t.Fatalf("no 1h/5m burn alert: %+v", tr.OpenBreaches())
	}
}

func TestRestartKeepsHistoryAndOpenBreaches(t *testing.T) {
	dir := t.TempDir()
	db := openDB(t, dir)
	clk := newClock()
	tm := newTimers()
	var evs events
	cfg := Config{Agent: "urn:asap:agent:demo", Definition: Definition{MaxErrorRate: fptr(1)}, MinSamples: 5}
	tr, err := Open(db, cfg, tm.on(Hooks{Now: clk.now, Notify: evs.add}))
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 10; i++ {
		tr.Observe(time.Duration(i+1)*time.Millisecond, i < 5)
	}
	tm.evaluate(t, tr)
	if _, ok := byKey(t, evs.all())[TypeErrorRate]; !ok {
		t.Fatalf("no error-rate breach before the restart: %s", describe(evs.all()))
	}
	tr.Snapshot()
	before, _ := tr.Window(24 * time.Hour)
	openBefore := len(tr.OpenBreaches())
	if err := tr.Close(); err != nil {
		t.Fatal(err)
	}
	db.Close()

	db = openDB(t, dir)
	defer db.Close()
	tr, err = Open(db, cfg, newTimers().on(Hooks{Now: clk.now}))
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	after, _ := tr.Window(24 * time.Hour)
	if after.TasksCompleted != before.TasksCompleted || after.TasksFailed != before.TasksFailed || after.LatencyP95MS != before.LatencyP95MS {
		t.Fatalf("after restart %+v, before %+v", after, before)
	}
	open := tr.OpenBreaches()
	hasErrorRate := false
	for _, b := range open {
		hasErrorRate = hasErrorRate || b.BreachType == TypeErrorRate
	}
	if len(open) != openBefore || !hasErrorRate {
		t.Fatalf("open breaches after restart %+v, %d before", open, openBefore)
	}
	hist, total, err := History(db, "urn:asap:agent:demo", time.Time{}, time.Time{}, 10, 0)
	if err != nil || total != 1 || hist[0].TasksFailed != 5 {
		t.Fatalf("history %+v %d %v", hist, total, err)
	}
}

func TestFromManifest(t *testing.T) {
	d, ttl, err := FromManifest([]byte(`{"id":"urn:asap:agent:x","sla":{"availability":"99.5%","max_latency_p95_ms":500,"max_error_rate":"1%","support_hours":"24/7"},"ttl_seconds":60}`))
	if err != nil || *d.Availability != 99.5 || d.MaxLatencyP95 != 500*time.Millisecond || *d.MaxErrorRate != 1 || d.SupportHours != "24/7" || ttl != time.Minute {
		t.Fatalf("%+v %v %v", d, ttl, err)
	}
	d, ttl, err = FromManifest([]byte(`{"id":"x"}`))
	if err != nil || !d.Empty() || ttl != 300*time.Second {
		t.Fatalf("no sla: %+v %v %v", d, ttl, err)
	}
	for _, bad := range []string{`nope`, `{"sla":{"availability":"lots"}}`, `{"sla":{"availability":"120%"}}`, `{"sla":{"max_error_rate":"-1%"}}`, `{"sla":{"max_latency_p95_ms":-5}}`} {
		if _, _, err := FromManifest([]byte(bad)); err == nil {
			t.Fatalf("%s accepted", bad)
		}
	}
	o := d.Override(Definition{MaxLatencyP95: time.Second, SupportHours: "9-5"})
	if o.MaxLatencyP95 != time.Second || o.SupportHours != "9-5" {
		t.Fatalf("override %+v", o)
	}
	if Percent(1) != "1.0%" || Percent(99.5) != "99.5%" || Millis(500*time.Millisecond) != "500ms" {
		t.Fatal("formats")
	}
}
