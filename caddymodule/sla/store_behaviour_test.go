package sla

import (
	"context"
	"encoding/json"
	"fmt"
	"reflect"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/asap-sidecar/asap-sidecar/storage"
)

// storedTails lists the minutes (kind "m"), hours ("h") or snapshot times
// ("s") stored for agent.
func storedTails(t *testing.T, db *storage.DB, kind, agent string) []int64 {
	t.Helper()
	var out []int64
	err := db.View(func(r *storage.Reader) error {
		return r.Scan(prefix(kind, agent), false, func(k, _ []byte) (bool, error) {
			out = append(out, tail64(k))
			return true, nil
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func put(t *testing.T, db *storage.DB, kvs ...[]byte) {
	t.Helper()
	err := db.Commit(context.Background(), storage.Strict, func(tx *storage.Tx) error {
		for i := 0; i+1 < len(kvs); i += 2 {
			tx.Set(kvs[i], kvs[i+1])
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func jsonOf(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// memory is the tracker's in-memory minutes and hours, sorted.
func memory(tr *Tracker) (minutes, hours []int64) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	for m := range tr.minutes {
		minutes = append(minutes, m)
	}
	for h := range tr.hours {
		hours = append(hours, h)
	}
	sort.Slice(minutes, func(i, j int) bool { return minutes[i] < minutes[j] })
	sort.Slice(hours, func(i, j int) bool { return hours[i] < hours[j] })
	return
}

func TestLoadSkipsBucketsPastTheirWindows(t *testing.T) {
	db := newDB(t)
	clk := newClock()
	t0 := clk.now()
	m0, h0 := minuteOf(t0), hourOf(t0)
	tr, err := Open(db, Config{Agent: agentA}, newTimers().on(Hooks{Now: clk.now}))
	if err != nil {
		t.Fatal(err)
	}
	tr.Observe(7*time.Millisecond, false)
	if err := tr.Close(); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		later          time.Duration
		minutes, hours []int64
	}{
		{0, []int64{m0}, []int64{h0}},
		{6*time.Hour - time.Minute, []int64{m0}, []int64{h0}}, // the oldest minute a 6h window reads
		{6 * time.Hour, nil, []int64{h0}},
		{(keepHours - 1) * time.Hour, nil, []int64{h0}},
		{keepHours * time.Hour, nil, nil},
	} {
		clk.set(t0.Add(tc.later))
		tr, err := Open(db, Config{Agent: agentA}, newTimers().on(Hooks{Now: clk.now}))
		if err != nil {
			t.Fatal(err)
		}
		minutes, hours := memory(tr)
		if !reflect.DeepEqual(minutes, tc.minutes) || !reflect.DeepEqual(hours, tc.hours) {
			t.Errorf("+%v: loaded minutes %v hours %v, want %v %v", tc.later, minutes, hours, tc.minutes, tc.hours)
		}
		if err := tr.Close(); err != nil {
			t.Fatal(err)
		}
	}
	// Another agent's buckets are not loaded.
	clk.set(t0)
	other := openTracker(t, db, Config{Agent: agentA + "-2"}, newTimers().on(Hooks{Now: clk.now}))
	if minutes, hours := memory(other); len(minutes)+len(hours) != 0 {
		t.Fatalf("loaded another agent's buckets: %v %v", minutes, hours)
	}
}

func TestLoadKeepsOnlyOpenBreaches(t *testing.T) {
	db := newDB(t)
	clk := newClock()
	t0 := clk.now()
	resolved := t0.Add(time.Minute)
	put(t, db,
		breachKey(agentA, "breach_01"), jsonOf(t, Breach{ID: "breach_01", AgentID: agentA, BreachType: TypeLatency, Threshold: "100ms", Actual: "300ms", Severity: SeverityCritical, DetectedAt: t0}),
		breachKey(agentA, "breach_02"), jsonOf(t, Breach{ID: "breach_02", AgentID: agentA, BreachType: TypeAvailability, Threshold: "99.0%", Actual: "0.0%", Severity: SeverityCritical, DetectedAt: t0, ResolvedAt: &resolved}),
		breachKey(agentA, "breach_03"), jsonOf(t, Breach{ID: "breach_03", AgentID: agentA, BreachType: TypeErrorBudget, Threshold: "6.0x burn over 6h/30m", Actual: "7.0x", Severity: SeverityCritical, DetectedAt: t0}),
	)
	tr := openTracker(t, db, Config{Agent: agentA}, newTimers().on(Hooks{Now: clk.now}))
	open := openByType(tr)
	if len(open) != 2 || open[TypeLatency].ID != "breach_01" || open["error_budget:6h/30m"].ID != "breach_03" {
		t.Fatalf("open breaches after load: %+v", open)
	}
}

func TestLoadRejectsCorruptRecords(t *testing.T) {
	clk := newClock()
	for _, tc := range []struct {
		name string
		k, v []byte
		want string
	}{
		{"minute bucket", minuteKey(agentA, minuteOf(clk.now())), []byte("short"), "shorter than its counters"},
		{"hour bucket", hourKey(agentA, hourOf(clk.now())), append(make([]byte, 32), 0xff, 0xff), "bucket sketch"},
		{"breach", breachKey(agentA, "breach_x"), []byte("{not json"), "invalid character"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			db := newDB(t)
			put(t, db, tc.k, tc.v)
			tr, err := Open(db, Config{Agent: agentA}, newTimers().on(Hooks{Now: clk.now}))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				if tr != nil {
					tr.Close()
				}
				t.Fatalf("Open over a corrupt %s: %v, want an error with %q", tc.name, err, tc.want)
			}
		})
	}
	// Past its window, a corrupt bucket is not even read.
	db := newDB(t)
	put(t, db, minuteKey(agentA, minuteOf(clk.now())-keepMinutes), []byte("short"))
	openTracker(t, db, Config{Agent: agentA}, newTimers().on(Hooks{Now: clk.now}))
}

func TestFlushDropsOldBucketsAndPersistsDirtyOnes(t *testing.T) {
	db := newDB(t)
	clk := newClock()
	t0 := clk.now()
	m0, h0 := minuteOf(t0), hourOf(t0)
	tr := openTracker(t, db, Config{Agent: agentA}, newTimers().on(Hooks{Now: clk.now}))
	ctx := context.Background()

	tr.Observe(time.Millisecond, false)
	clk.set(t0.Add(7 * time.Hour))
	m1, h1 := minuteOf(clk.now()), hourOf(clk.now())
	tr.Observe(time.Millisecond, false)
	if err := tr.flush(ctx); err != nil {
		t.Fatal(err)
	}
	if minutes, hours := memory(tr); !reflect.DeepEqual(minutes, []int64{m1}) || !reflect.DeepEqual(hours, []int64{h0, h1}) {
		t.Fatalf("in memory after flush: minutes %v hours %v", minutes, hours)
	}
	// Both minutes were dirty: both are stored, the old one too.
	if got := storedTails(t, db, "m", agentA); !reflect.DeepEqual(got, []int64{m0, m1}) {
		t.Fatalf("stored minutes %v, want %v", got, []int64{m0, m1})
	}
	if got := storedTails(t, db, "h", agentA); !reflect.DeepEqual(got, []int64{h0, h1}) {
		t.Fatalf("stored hours %v, want %v", got, []int64{h0, h1})
	}
	// The stored bucket is the one in memory.
	err := db.View(func(r *storage.Reader) error {
		v, err := r.Get(hourKey(agentA, h1))
		if err != nil {
			return err
		}
		b, err := DecodeBucket(v)
		if err != nil {
			return err
		}
		if b.Completed != 1 || b.Latency.GetCount() != 1 {
			return fmt.Errorf("stored hour bucket %+v", b)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}

	// A flush with nothing dirty writes nothing: erase the stored
	// buckets and flush again.
	erase := func() {
		t.Helper()
		err := db.Commit(ctx, storage.Strict, func(tx *storage.Tx) error {
			for _, k := range [][]byte{minuteKey(agentA, m0), minuteKey(agentA, m1), hourKey(agentA, h0), hourKey(agentA, h1)} {
				tx.Delete(k)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	erase()
	if err := tr.flush(ctx); err != nil {
		t.Fatal(err)
	}
	if got := append(storedTails(t, db, "m", agentA), storedTails(t, db, "h", agentA)...); len(got) != 0 {
		t.Fatalf("clean flush wrote %v", got)
	}
	// Only what changed is written again.
	tr.Health(true)
	if err := tr.flush(ctx); err != nil {
		t.Fatal(err)
	}
	if m, h := storedTails(t, db, "m", agentA), storedTails(t, db, "h", agentA); !reflect.DeepEqual(m, []int64{m1}) || !reflect.DeepEqual(h, []int64{h1}) {
		t.Fatalf("after one change: minutes %v hours %v", m, h)
	}

	// Hours go when they are past the 31-day window.
	clk.set(t0.Add(keepHours * time.Hour))
	if err := tr.flush(ctx); err != nil {
		t.Fatal(err)
	}
	if minutes, hours := memory(tr); len(minutes) != 0 || !reflect.DeepEqual(hours, []int64{h1}) {
		t.Fatalf("a month later: minutes %v hours %v", minutes, hours)
	}
}

func TestPeriodicFlushAndSnapshot(t *testing.T) {
	db := newDB(t)
	clk := newClock()
	tm := newTimers()
	tr := openTracker(t, db, Config{Agent: agentA}, tm.on(newTimers().on(Hooks{Now: clk.now})))
	for i := 0; i < 4; i++ {
		tr.Observe(time.Millisecond, i == 0)
	}
	// A tick before the snapshot is due stores the buckets only.
	clk.add(5*time.Minute - time.Second)
	tm.flush(t, tr)
	if m := storedTails(t, db, "m", agentA); len(m) != 1 {
		t.Fatalf("buckets not flushed while running: %v", m)
	}
	if _, total, err := History(db, agentA, time.Time{}, time.Time{}, 10, 0); err != nil || total != 0 {
		t.Fatalf("snapshot before it was due: %d %v", total, err)
	}
	// The first tick once it is due keeps it, without Close.
	clk.add(time.Second)
	tm.flush(t, tr)
	hist, total, err := History(db, agentA, time.Time{}, time.Time{}, 10, 0)
	if err != nil || total != 1 {
		t.Fatalf("no snapshot without Close after the snapshot period: %+v %d %v", hist, total, err)
	}
	if hist[0].TasksCompleted != 3 || hist[0].TasksFailed != 1 || hist[0].ErrorRatePercent != 25 {
		t.Fatalf("snapshot %+v", hist[0])
	}
}

func TestSnapshotIfDue(t *testing.T) {
	db := newDB(t)
	clk := newClock()
	t0 := clk.now()
	tr := openTracker(t, db, Config{Agent: agentA, SnapshotEvery: 5 * time.Minute}, newTimers().on(Hooks{Now: clk.now}))
	history := func() []Metrics {
		t.Helper()
		h, total, err := History(db, agentA, time.Time{}, time.Time{}, 100, 0)
		if err != nil || total != len(h) {
			t.Fatalf("history %v %d %v", h, total, err)
		}
		return h
	}
	for i := 0; i < 3; i++ {
		tr.Observe(20*time.Millisecond, false)
	}
	clk.set(t0.Add(4*time.Minute + 59*time.Second))
	tr.snapshotIfDue()
	if h := history(); len(h) != 0 {
		t.Fatalf("snapshot before it was due: %+v", h)
	}
	clk.set(t0.Add(5 * time.Minute))
	tr.snapshotIfDue()
	h := history()
	if len(h) != 1 || !h[0].PeriodStart.Equal(t0) || !h[0].PeriodEnd.Equal(t0.Add(5*time.Minute)) ||
		h[0].TasksCompleted != 3 || h[0].LatencyP95MS != 20 || h[0].UptimePercent != 100 || h[0].AgentID != agentA {
		t.Fatalf("due snapshot %+v", h)
	}
	if got := storedTails(t, db, "s", agentA); !reflect.DeepEqual(got, []int64{t0.Add(5 * time.Minute).Unix()}) {
		t.Fatalf("snapshot keyed at %v", got)
	}
	// Due, but no sample since: nothing is kept.
	clk.set(t0.Add(12 * time.Minute))
	tr.snapshotIfDue()
	if h := history(); len(h) != 1 {
		t.Fatalf("empty period kept: %+v", h)
	}
	// Snapshot forces one now.
	clk.set(t0.Add(13 * time.Minute))
	tr.Health(true)
	tr.Health(false)
	tr.Snapshot()
	h = history()
	if len(h) != 2 || !h[1].PeriodEnd.Equal(t0.Add(13*time.Minute)) || h[1].HealthChecks != 2 || h[1].UptimePercent != 50 || h[1].TasksCompleted != 0 {
		t.Fatalf("forced snapshot %+v", h)
	}
}

func TestSnapshotsDoNotCountASampleTwice(t *testing.T) {
	db := newDB(t)
	clk := newClock() // 10:00:30
	t0 := clk.now()
	tr := openTracker(t, db, Config{Agent: agentA}, newTimers().on(Hooks{Now: clk.now}))
	clk.set(t0.Add(4*time.Minute + 40*time.Second)) // 10:05:10
	for i := 0; i < 3; i++ {
		tr.Observe(time.Millisecond, false)
	}
	clk.set(t0.Add(5 * time.Minute)) // 10:05:30
	tr.snapshotIfDue()
	clk.set(t0.Add(10 * time.Minute)) // 10:10:30
	tr.Observe(time.Millisecond, false)
	tr.snapshotIfDue()
	h, _, _ := History(db, agentA, time.Time{}, time.Time{}, 10, 0)
	var sum uint64
	for _, m := range h {
		sum += m.TasksCompleted
	}
	if sum != 4 {
		t.Fatalf("4 tasks observed, history counts %d: %+v", sum, h)
	}
}

func TestForcedSnapshotStartsWhereTheLastOneEnded(t *testing.T) {
	db := newDB(t)
	clk := newClock()
	t0 := clk.now()
	tr := openTracker(t, db, Config{Agent: agentA}, newTimers().on(Hooks{Now: clk.now}))
	tr.Observe(time.Millisecond, false)
	clk.set(t0.Add(5 * time.Minute))
	tr.snapshotIfDue()
	clk.set(t0.Add(7 * time.Minute))
	tr.Observe(time.Millisecond, false)
	tr.Snapshot()
	h, _, _ := History(db, agentA, time.Time{}, time.Time{}, 10, 0)
	if len(h) != 2 || !h[1].PeriodStart.Equal(h[0].PeriodEnd) || h[1].TasksCompleted != 1 {
		t.Fatalf("forced snapshot after a due one: %+v", h)
	}
}

func TestBreachesFiltersAndOrder(t *testing.T) {
	db := newDB(t)
	t0 := newClock().now()
	agentB := agentA + "-2" // shares agentA as a string prefix
	resolved := t0.Add(3 * time.Hour)
	all := []Breach{
		{ID: "breach_A1", AgentID: agentA, BreachType: TypeLatency, Threshold: "100ms", Actual: "150ms", Severity: SeverityWarning, DetectedAt: t0.Add(2 * time.Hour)},
		{ID: "breach_A2", AgentID: agentA, BreachType: TypeAvailability, Threshold: "99.0%", Actual: "50.0%", Severity: SeverityCritical, DetectedAt: t0},
		{ID: "breach_B1", AgentID: agentB, BreachType: TypeErrorRate, Threshold: "1.0%", Actual: "9.0%", Severity: SeverityCritical, DetectedAt: t0.Add(time.Hour), ResolvedAt: &resolved},
	}
	for _, b := range all {
		put(t, db, breachKey(b.AgentID, b.ID), jsonOf(t, b))
	}
	ids := func(f BreachFilter) string {
		t.Helper()
		got, err := Breaches(db, f)
		if err != nil || got == nil {
			t.Fatalf("Breaches(%+v): %v %v", f, got, err)
		}
		var out []string
		for _, b := range got {
			out = append(out, b.ID)
		}
		return strings.Join(out, ",")
	}
	for _, tc := range []struct {
		f    BreachFilter
		want string
	}{
		{BreachFilter{}, "breach_A2,breach_B1,breach_A1"},
		{BreachFilter{AgentID: agentA}, "breach_A2,breach_A1"},
		{BreachFilter{AgentID: agentB}, "breach_B1"},
		{BreachFilter{AgentID: "urn:asap:agent:nobody"}, ""},
		{BreachFilter{Severity: SeverityCritical}, "breach_A2,breach_B1"},
		{BreachFilter{Severity: SeverityWarning}, "breach_A1"},
		{BreachFilter{AgentID: agentA, Severity: SeverityCritical}, "breach_A2"},
		{BreachFilter{Start: t0.Add(time.Hour)}, "breach_B1,breach_A1"}, // start is inclusive
		{BreachFilter{Start: t0.Add(time.Hour + time.Nanosecond)}, "breach_A1"},
		{BreachFilter{End: t0.Add(time.Hour)}, "breach_A2,breach_B1"}, // end is inclusive
		{BreachFilter{End: t0.Add(-time.Nanosecond)}, ""},
		{BreachFilter{Start: t0.Add(30 * time.Minute), End: t0.Add(90 * time.Minute)}, "breach_B1"},
	} {
		if got := ids(tc.f); got != tc.want {
			t.Errorf("Breaches(%+v) = %q, want %q", tc.f, got, tc.want)
		}
	}
	got, _ := Breaches(db, BreachFilter{AgentID: agentB})
	if len(got) != 1 || !reflect.DeepEqual(got[0].ResolvedAt.UTC(), resolved) || got[0].Actual != "9.0%" {
		t.Fatalf("stored breach read back as %+v", got)
	}
}

func TestHistoryOverlapAndPaging(t *testing.T) {
	db := newDB(t)
	t0 := newClock().now()
	agentB := agentA + "-2"
	snap := func(agent string, from, to time.Duration, tasks uint64) Metrics {
		return Metrics{AgentID: agent, PeriodStart: t0.Add(from), PeriodEnd: t0.Add(to), UptimePercent: 100, TasksCompleted: tasks}
	}
	s1 := snap(agentA, 0, 5*time.Minute, 1)
	s2 := snap(agentA, 5*time.Minute, 10*time.Minute, 2)
	s3 := snap(agentA, 10*time.Minute, 15*time.Minute, 3)
	s4 := snap(agentB, 2*time.Minute, 7*time.Minute, 4)
	for _, m := range []Metrics{s3, s1, s4, s2} {
		put(t, db, snapshotKey(m.AgentID, m.PeriodEnd.Unix()), jsonOf(t, m))
	}
	tasks := func(ms []Metrics) string {
		var out []string
		for _, m := range ms {
			out = append(out, fmt.Sprint(m.TasksCompleted))
		}
		return strings.Join(out, ",")
	}
	for _, tc := range []struct {
		name          string
		agent         string
		start, end    time.Duration // 0: unbounded
		limit, offset int
		want          string
		total         int
	}{
		{"all, by period start", "", 0, 0, 100, 0, "1,4,2,3", 4},
		{"one agent", agentA, 0, 0, 100, 0, "1,2,3", 3},
		{"other agent", agentB, 0, 0, 100, 0, "4", 1},
		{"start touches an end", "", 10 * time.Minute, 0, 100, 0, "2,3", 2},
		{"end touches a start", "", 0, 5 * time.Minute, 100, 0, "1,4,2", 3},
		{"overlap inside", "", 6 * time.Minute, 9 * time.Minute, 100, 0, "4,2", 2},
		{"limit and offset", "", 0, 0, 2, 1, "4,2", 4},
		{"last page short", "", 0, 0, 3, 3, "3", 4},
		{"offset at total", "", 0, 0, 10, 4, "", 4},
		{"offset beyond total", "", 0, 0, 10, 99, "", 4},
		{"limit 0 counts only", agentA, 0, 0, 0, 0, "", 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var start, end time.Time
			if tc.start != 0 {
				start = t0.Add(tc.start)
			}
			if tc.end != 0 {
				end = t0.Add(tc.end)
			}
			got, total, err := History(db, tc.agent, start, end, tc.limit, tc.offset)
			if err != nil || got == nil || tasks(got) != tc.want || total != tc.total {
				t.Fatalf("History = %q (nil %v), total %d, %v; want %q, %d", tasks(got), got == nil, total, err, tc.want, tc.total)
			}
		})
	}
}

func TestQueriesFailOnCorruptRecords(t *testing.T) {
	db := newDB(t)
	put(t, db, breachKey(agentA, "breach_bad"), []byte("nope"), snapshotKey(agentA, 1), []byte("nope"))
	if _, err := Breaches(db, BreachFilter{}); err == nil {
		t.Fatal("Breaches over a corrupt record: no error")
	}
	if _, _, err := History(db, "", time.Time{}, time.Time{}, 10, 0); err == nil {
		t.Fatal("History over a corrupt record: no error")
	}
}

func TestConditionKey(t *testing.T) {
	for _, tc := range []struct {
		b    Breach
		want string
	}{
		{Breach{BreachType: TypeLatency, Threshold: "100ms"}, "latency"},
		{Breach{BreachType: TypeAvailability, Threshold: "99.5%"}, "availability"},
		{Breach{BreachType: TypeErrorRate, Threshold: "1.0%"}, "error_rate"},
		{Breach{BreachType: TypeErrorBudget, Threshold: "14.4x burn over 1h/5m"}, "error_budget:1h/5m"},
		{Breach{BreachType: TypeErrorBudget, Threshold: "1.0x burn over 3d/6h"}, "error_budget:3d/6h"},
		{Breach{BreachType: TypeErrorBudget, Threshold: "garbled"}, "error_budget:"},
	} {
		if got := conditionKey(&tc.b); got != tc.want {
			t.Errorf("conditionKey(%+v) = %q, want %q", tc.b, got, tc.want)
		}
	}
}

func TestRestartKeepsBurnAlertsUnderTheirConditionKeys(t *testing.T) {
	db := newDB(t)
	clk := newClock()
	cfg := Config{Agent: agentA, Definition: Definition{MaxErrorRate: fptr(1)}, MinSamples: 20}
	var evs events
	tm := newTimers()
	tr, err := Open(db, cfg, tm.on(Hooks{Now: clk.now, Notify: evs.add}))
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 20; i++ {
		tr.Observe(time.Millisecond, true)
	}
	tm.evaluate(t, tr)
	if n := evs.count(); n != 5 {
		t.Fatalf("events %s, want 5", describe(evs.all()))
	}
	if err := tr.Close(); err != nil {
		t.Fatal(err)
	}
	var again events
	tm = newTimers()
	tr = openTracker(t, db, cfg, tm.on(Hooks{Now: clk.now, Notify: again.add}))
	if open := openByType(tr); len(open) != 5 {
		t.Fatalf("open after restart %v", open)
	}
	// Still burning: re-evaluating opens nothing new.
	tr.Configure(cfg)
	tm.evaluate(t, tr)
	if n := again.count(); n != 0 {
		t.Fatalf("%d new events after restart", n)
	}
	stored, _ := Breaches(db, BreachFilter{AgentID: agentA})
	if len(stored) != 5 {
		t.Fatalf("stored %d breaches", len(stored))
	}
}
