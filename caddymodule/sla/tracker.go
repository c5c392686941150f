package sla

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"time"

	"github.com/oklog/ulid/v2"

	"github.com/asap-sidecar/asap-sidecar/caddymodule/wire"
	"github.com/asap-sidecar/asap-sidecar/storage"
)

// Breach types.
const (
	TypeAvailability = "availability"
	TypeLatency      = "latency"
	TypeErrorRate    = "error_rate"
	// TypeErrorBudget is a burn-rate alert (beyond the reference).
	TypeErrorBudget = "error_budget"
)

// Severities.
const (
	SeverityWarning  = "warning"
	SeverityCritical = "critical"
)

// Breach is an SLA breach in the reference's shape.
type Breach struct {
	ID         string     `json:"id"`
	AgentID    string     `json:"agent_id"`
	BreachType string     `json:"breach_type"`
	Threshold  string     `json:"threshold"`
	Actual     string     `json:"actual"`
	Severity   string     `json:"severity"`
	DetectedAt time.Time  `json:"detected_at"`
	ResolvedAt *time.Time `json:"resolved_at"`
}

// Event is a breach opening (sla.breach) or closing (sla.resolved).
type Event struct {
	Method string // "sla.breach" or "sla.resolved"
	Breach Breach
}

// Config is how a tracker judges its agent.
type Config struct {
	Agent      string
	Definition Definition
	// MinSamples is how many samples a window needs before it can breach.
	MinSamples int
	// Window is the evaluation window for breaches (default 1h).
	Window time.Duration
	// SnapshotEvery is how often a metrics snapshot is kept for history
	// (default 5m).
	SnapshotEvery time.Duration
}

func (c *Config) defaults() {
	if c.MinSamples < 1 {
		c.MinSamples = 20
	}
	if c.Window <= 0 {
		c.Window = time.Hour
	}
	if c.SnapshotEvery <= 0 {
		c.SnapshotEvery = 5 * time.Minute
	}
}

// Hooks connect a tracker to the outside.
type Hooks struct {
	// Notify is called (from the tracker's goroutine) after a breach
	// opens or resolves and is stored.
	Notify func(Event)
	// Record runs inside the transaction storing a breach change (the
	// audit entry).
	Record func(tx *storage.Tx, e Event) error
	// Now is the clock (time.Now when nil). It also paces evaluations.
	Now func() time.Time
	// After is the evaluation timer: a channel that receives once d has
	// passed (time.After when nil). The tracker's goroutine asks for one
	// when samples arrive, and evaluates breaches when it fires.
	After func(d time.Duration) <-chan time.Time
	// Tick is the flush ticker: a channel that receives every d, and a
	// function that stops it (a time.Ticker when nil). On each tick the
	// tracker stores its changed buckets and keeps a snapshot if due.
	Tick func(d time.Duration) (<-chan time.Time, func())
}

func (h *Hooks) defaults() {
	if h.Now == nil {
		h.Now = time.Now
	}
	if h.After == nil {
		h.After = time.After
	}
	if h.Tick == nil {
		h.Tick = func(d time.Duration) (<-chan time.Time, func()) {
			tk := time.NewTicker(d)
			return tk.C, tk.Stop
		}
	}
}

// Bucket retention: minute buckets cover the short windows (up to 6h),
// hour buckets the long ones (up to 30d).
const (
	keepMinutes = 6 * 60
	keepHours   = 31 * 24
)

// Tracker holds one agent's SLIs and open breaches. Observe and Health are
// cheap and never block on storage; evaluation, persistence and alerts run
// on the tracker's own goroutine.
type Tracker struct {
	db    *storage.DB
	hooks Hooks
	agent string

	mu        sync.Mutex
	cfg       Config
	minutes   map[int64]*Bucket
	hours     map[int64]*Bucket
	dirty     map[int64]bool // minutes to persist (their hours too)
	open      map[string]*Breach
	lastSnap  time.Time
	period    *Bucket // samples since lastSnap, for the next snapshot
	evaluated time.Time

	wake chan struct{}
	stop chan struct{}
	done chan struct{}
}

// Open loads an agent's buckets and open breaches from db and starts the
// tracker's goroutine.
func Open(db *storage.DB, cfg Config, hooks Hooks) (*Tracker, error) {
	cfg.defaults()
	hooks.defaults()
	t := &Tracker{
		db: db, hooks: hooks, cfg: cfg, agent: cfg.Agent,
		minutes: map[int64]*Bucket{}, hours: map[int64]*Bucket{}, dirty: map[int64]bool{},
		open: map[string]*Breach{}, period: NewBucket(),
		wake: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{}),
	}
	if err := t.load(); err != nil {
		return nil, err
	}
	t.lastSnap = hooks.Now()
	go t.loop()
	return t, nil
}

// Configure replaces the tracker's config (a reload). The agent stays.
func (t *Tracker) Configure(cfg Config) {
	cfg.defaults()
	cfg.Agent = t.agent
	t.mu.Lock()
	t.cfg = cfg
	t.mu.Unlock()
	t.poke()
}

// Config is the tracker's current config.
func (t *Tracker) Config() Config {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.cfg
}

func minuteOf(ts time.Time) int64 { return ts.Unix() / 60 }
func hourOf(ts time.Time) int64   { return ts.Unix() / 3600 }

// buckets returns the current minute and hour buckets (t.mu held).
func (t *Tracker) buckets(now time.Time) (*Bucket, *Bucket) {
	m, h := minuteOf(now), hourOf(now)
	mb := t.minutes[m]
	if mb == nil {
		mb = NewBucket()
		t.minutes[m] = mb
	}
	hb := t.hours[h]
	if hb == nil {
		hb = NewBucket()
		t.hours[h] = hb
	}
	t.dirty[m] = true
	return mb, hb
}

// Observe records one task: its sidecar-measured duration and whether it
// failed (unreachable agent, 5xx, JSON-RPC error, status failed).
func (t *Tracker) Observe(d time.Duration, failed bool) {
	ms := float64(d) / float64(time.Millisecond)
	t.mu.Lock()
	mb, hb := t.buckets(t.hooks.Now())
	for _, b := range []*Bucket{mb, hb, t.period} {
		_ = b.Latency.Add(ms)
		if failed {
			b.Failed++
		} else {
			b.Completed++
		}
	}
	t.mu.Unlock()
	t.poke()
}

// Health records one availability sample: an active health check, or a
// passive connection failure (up false).
func (t *Tracker) Health(up bool) {
	t.mu.Lock()
	mb, hb := t.buckets(t.hooks.Now())
	for _, b := range []*Bucket{mb, hb, t.period} {
		b.HealthTotal++
		if up {
			b.HealthUp++
		}
	}
	t.mu.Unlock()
	t.poke()
}

func (t *Tracker) poke() {
	select {
	case t.wake <- struct{}{}:
	default:
	}
}

// Close stops the tracker and stores what it holds.
func (t *Tracker) Close() error {
	select {
	case <-t.stop:
		return nil
	default:
	}
	close(t.stop)
	<-t.done
	t.Snapshot()
	return t.flush(context.Background())
}

// evalSpacing bounds how often breaches are evaluated: a burst of samples
// is judged once, still well within a second of the crossing sample.
const evalSpacing = 50 * time.Millisecond

// flushEvery is how often changed buckets are stored (and a snapshot kept
// if one is due).
const flushEvery = 5 * time.Second

// evalWait is how long to wait, at now, before the next evaluation when
// the last one ran at last: what is left of evalSpacing, never less than
// zero nor more than evalSpacing (a clock set back does not stall it).
func evalWait(now, last time.Time) time.Duration {
	wait := evalSpacing - now.Sub(last)
	if wait < 0 {
		return 0
	}
	if wait > evalSpacing {
		return evalSpacing
	}
	return wait
}

func (t *Tracker) loop() {
	defer close(t.done)
	flush, stopFlush := t.hooks.Tick(flushEvery)
	defer stopFlush()
	var pending <-chan time.Time
	for {
		select {
		case <-t.stop:
			return
		case <-t.wake:
			if pending == nil {
				pending = t.hooks.After(evalWait(t.hooks.Now(), t.evaluated))
			}
		case <-pending:
			pending = nil
			t.evaluated = t.hooks.Now()
			t.evaluate()
		case <-flush:
			_ = t.flush(context.Background())
			t.snapshotIfDue()
		}
	}
}

// Window returns the metrics of the window ending now: minute buckets for
// windows up to 6h, hour buckets beyond.
func (t *Tracker) Window(window time.Duration) (Metrics, *Bucket) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.windowLocked(t.hooks.Now(), window)
}

func (t *Tracker) windowLocked(now time.Time, window time.Duration) (Metrics, *Bucket) {
	sum := NewBucket()
	t.eachBucket(now, window, func(b *Bucket) { _ = sum.Merge(b) })
	return metricsOf(t.agent, now.Add(-window), now, sum), sum
}

// eachBucket visits the buckets of the window ending now: minutes for
// windows up to 6h, hours beyond (t.mu held).
func (t *Tracker) eachBucket(now time.Time, window time.Duration, fn func(*Bucket)) {
	if window <= keepMinutes*time.Minute {
		last := minuteOf(now)
		for m := last - int64(window/time.Minute) + 1; m <= last; m++ {
			if b := t.minutes[m]; b != nil {
				fn(b)
			}
		}
		return
	}
	last := hourOf(now)
	for h := last - int64(window/time.Hour) + 1; h <= last; h++ {
		if b := t.hours[h]; b != nil {
			fn(b)
		}
	}
}

// Metrics are an agent's SLIs over a period, in the reference's
// SLAMetrics shape plus the sidecar's extras.
type Metrics struct {
	AgentID          string    `json:"agent_id"`
	PeriodStart      time.Time `json:"period_start"`
	PeriodEnd        time.Time `json:"period_end"`
	UptimePercent    float64   `json:"uptime_percent"`
	LatencyP95MS     int64     `json:"latency_p95_ms"`
	ErrorRatePercent float64   `json:"error_rate_percent"`
	TasksCompleted   uint64    `json:"tasks_completed"`
	TasksFailed      uint64    `json:"tasks_failed"`
	HealthChecks     uint64    `json:"health_checks"`
}

func metricsOf(agent string, start, end time.Time, b *Bucket) Metrics {
	m := Metrics{AgentID: agent, PeriodStart: wire.Time(start), PeriodEnd: wire.Time(end), UptimePercent: 100,
		TasksCompleted: b.Completed, TasksFailed: b.Failed, HealthChecks: b.HealthTotal}
	if b.HealthTotal > 0 {
		m.UptimePercent = round2(100 * float64(b.HealthUp) / float64(b.HealthTotal))
	}
	if total := b.Completed + b.Failed; total > 0 {
		m.ErrorRatePercent = round2(100 * float64(b.Failed) / float64(total))
	}
	m.LatencyP95MS = int64(b.P95() + 0.5)
	return m
}

// condition is one breach condition found in a window.
type condition struct {
	key, typ, threshold, actual, severity string
}

// Conditions judges metrics against the definition with the reference's
// severity rules: critical when uptime < 95 %, p95 ≥ 2× max, or error
// rate ≥ 5 % or ≥ 2× max; otherwise warning. A window with fewer than
// minSamples samples of a kind cannot breach on it.
func Conditions(d Definition, m Metrics, p95 float64, minSamples int) []condition {
	var out []condition
	if d.Availability != nil && m.HealthChecks >= uint64(minSamples) && m.UptimePercent < *d.Availability {
		sev := SeverityWarning
		if m.UptimePercent < 95 {
			sev = SeverityCritical
		}
		out = append(out, condition{TypeAvailability, TypeAvailability, Percent(*d.Availability), Percent(m.UptimePercent), sev})
	}
	samples := m.TasksCompleted + m.TasksFailed
	if max := d.MaxLatencyP95; max > 0 && samples >= uint64(minSamples) && p95 > float64(max)/float64(time.Millisecond) {
		sev := SeverityWarning
		if p95 >= 2*float64(max)/float64(time.Millisecond) {
			sev = SeverityCritical
		}
		out = append(out, condition{TypeLatency, TypeLatency, Millis(max), fmt.Sprintf("%dms", int64(p95+0.5)), sev})
	}
	if d.MaxErrorRate != nil && samples >= uint64(minSamples) && m.ErrorRatePercent > *d.MaxErrorRate {
		sev := SeverityWarning
		if m.ErrorRatePercent >= 5 || m.ErrorRatePercent >= 2**d.MaxErrorRate {
			sev = SeverityCritical
		}
		out = append(out, condition{TypeErrorRate, TypeErrorRate, Percent(*d.MaxErrorRate), Percent(m.ErrorRatePercent), sev})
	}
	return out
}

// BurnWindows are the SRE workbook's multi-window, multi-burn-rate pairs:
// an alert fires when both the long and the short window burn the error
// budget at least Factor times as fast as it allows.
var BurnWindows = []struct {
	Long, Short time.Duration
	Factor      float64
	Severity    string
}{
	{time.Hour, 5 * time.Minute, 14.4, SeverityCritical},
	{6 * time.Hour, 30 * time.Minute, 6, SeverityCritical},
	{24 * time.Hour, 2 * time.Hour, 3, SeverityWarning},
	{72 * time.Hour, 6 * time.Hour, 1, SeverityWarning},
}

func (t *Tracker) burnConditions(now time.Time) []condition {
	d := t.cfg.Definition
	if d.MaxErrorRate == nil || *d.MaxErrorRate <= 0 {
		return nil
	}
	budget := *d.MaxErrorRate / 100
	// Counts only: merging sketches here would hold the lock that
	// Observe (the request path) needs.
	rate := func(w time.Duration) (float64, uint64) {
		var failed, total uint64
		t.eachBucket(now, w, func(b *Bucket) { failed += b.Failed; total += b.Failed + b.Completed })
		if total == 0 {
			return 0, 0
		}
		return float64(failed) / float64(total), total
	}
	var out []condition
	for _, bw := range BurnWindows {
		long, n := rate(bw.Long)
		short, _ := rate(bw.Short)
		if n < uint64(t.cfg.MinSamples) { // the minimum-traffic gate
			continue
		}
		if long/budget >= bw.Factor && short/budget >= bw.Factor {
			name := fmt.Sprintf("%s/%s", durName(bw.Long), durName(bw.Short))
			out = append(out, condition{
				key: TypeErrorBudget + ":" + name, typ: TypeErrorBudget,
				threshold: fmt.Sprintf("%sx burn over %s", pyFloat(bw.Factor), name),
				actual:    fmt.Sprintf("%sx", pyFloat(round2(long/budget))), severity: bw.Severity,
			})
		}
	}
	return out
}

func durName(d time.Duration) string {
	switch {
	case d%(24*time.Hour) == 0:
		return fmt.Sprintf("%dd", d/(24*time.Hour))
	case d%time.Hour == 0:
		return fmt.Sprintf("%dh", d/time.Hour)
	}
	return fmt.Sprintf("%dm", d/time.Minute)
}

// evaluate opens breaches for new conditions and resolves those that
// cleared. One open breach per condition key at a time.
func (t *Tracker) evaluate() {
	now := t.hooks.Now()
	t.mu.Lock()
	m, sum := t.windowLocked(now, t.cfg.Window)
	conds := Conditions(t.cfg.Definition, m, sum.P95(), t.cfg.MinSamples)
	conds = append(conds, t.burnConditions(now)...)
	active := map[string]condition{}
	for _, c := range conds {
		active[c.key] = c
	}
	var opened, resolved []Breach
	for key, c := range active {
		if _, ok := t.open[key]; ok {
			continue
		}
		b := Breach{ID: "breach_" + ulid.Make().String(), AgentID: t.agent, BreachType: c.typ,
			Threshold: c.threshold, Actual: c.actual, Severity: c.severity, DetectedAt: wire.Time(now)}
		t.open[key] = &b
		opened = append(opened, b)
	}
	for key, b := range t.open {
		if _, still := active[key]; still {
			continue
		}
		// A condition that can no longer be judged (too few samples)
		// stays open: only evidence of recovery closes it.
		if !t.canJudge(key, m) {
			continue
		}
		at := wire.Time(now)
		b.ResolvedAt = &at
		resolved = append(resolved, *b)
		delete(t.open, key)
	}
	t.mu.Unlock()
	for _, b := range opened {
		t.store(Event{Method: "sla.breach", Breach: b})
	}
	for _, b := range resolved {
		t.store(Event{Method: "sla.resolved", Breach: b})
	}
}

// canJudge reports whether the window holds enough samples (min_samples)
// to say an SLI recovered. Burn-rate alerts close as soon as their windows
// stop burning, traffic or not.
func (t *Tracker) canJudge(key string, m Metrics) bool {
	min := uint64(t.cfg.MinSamples)
	switch key {
	case TypeAvailability:
		return m.HealthChecks >= min
	case TypeLatency, TypeErrorRate:
		return m.TasksCompleted+m.TasksFailed >= min
	}
	return true
}

// OpenBreaches are the breaches open now.
func (t *Tracker) OpenBreaches() []Breach {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]Breach, 0, len(t.open))
	for _, b := range t.open {
		out = append(out, *b)
	}
	return out
}

// Compliance is the reference's compliance percentage for a window:
// 100 − 25 per critical − 5 per warning condition, floor 0.
func (t *Tracker) Compliance(window time.Duration) float64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	m, sum := t.windowLocked(t.hooks.Now(), window)
	c := 100.0
	for _, cond := range Conditions(t.cfg.Definition, m, sum.P95(), t.cfg.MinSamples) {
		if cond.severity == SeverityCritical {
			c -= 25
		} else {
			c -= 5
		}
	}
	if c < 0 {
		c = 0
	}
	return c
}

// BudgetRemaining is the share of the window's error budget left, in
// percent (nil without an error-rate promise or without tasks).
func (t *Tracker) BudgetRemaining(window time.Duration) *float64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	d := t.cfg.Definition
	_, b := t.windowLocked(t.hooks.Now(), window)
	total := b.Completed + b.Failed
	if d.MaxErrorRate == nil || total == 0 {
		return nil
	}
	allowed := *d.MaxErrorRate / 100 * float64(total)
	left := 100.0
	if allowed > 0 {
		left = round2(100 * (1 - float64(b.Failed)/allowed))
	} else if b.Failed > 0 {
		left = 0
	}
	if left < 0 {
		left = 0
	}
	return &left
}

// store persists a breach change (with its audit record) and notifies.
func (t *Tracker) store(e Event) {
	err := t.db.Commit(context.Background(), storage.Strict, func(tx *storage.Tx) error {
		b, err := json.Marshal(e.Breach)
		if err != nil {
			return err
		}
		if e.Breach.ResolvedAt == nil {
			tx.Set(breachKey(t.agent, e.Breach.ID), b) // open: never expires
		} else {
			tx.SetWithTTL(breachKey(t.agent, e.Breach.ID), b, keepBreaches)
		}
		if t.hooks.Record != nil {
			return t.hooks.Record(tx, e)
		}
		return nil
	})
	// People hear about it even if the disk is failing.
	_ = err
	if t.hooks.Notify != nil {
		t.hooks.Notify(e)
	}
}
