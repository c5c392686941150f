package sla

import (
	"fmt"
	"sync"
	"testing"
	"time"
)

// waitLimit bounds every wait in these tests. It is a deadline after which
// a test fails instead of hanging, not a latency promise: a passing test
// never comes near it.
const waitLimit = 10 * time.Second

// timers stand in for one tracker's timers (Hooks.After and Hooks.Tick):
// the tracker evaluates and flushes only when the test fires them, so what
// an evaluation sees is exactly what the test fed before firing.
type timers struct {
	armed chan chan time.Time // evaluation timers the tracker set, not yet taken
	held  chan time.Time      // a timer taken by a barrier, for the next evaluate
	tick  chan time.Time

	mu     sync.Mutex
	waits  []time.Duration // what each evaluation timer was set for
	period time.Duration   // what the ticker was asked for
}

func newTimers() *timers {
	// The tracker sets at most one evaluation timer at a time: it sets
	// another only once the last one fired, which takes the test.
	return &timers{armed: make(chan chan time.Time, 1), tick: make(chan time.Time)}
}

// on returns h with its timers replaced by m's.
func (m *timers) on(h Hooks) Hooks {
	h.After, h.Tick = m.after, m.ticker
	return h
}

func (m *timers) after(d time.Duration) <-chan time.Time {
	// Unbuffered: a fire returns once the tracker's goroutine took it.
	c := make(chan time.Time)
	m.mu.Lock()
	m.waits = append(m.waits, d)
	m.mu.Unlock()
	select {
	case m.armed <- c:
	default:
		panic("sla test timers: an evaluation timer set while another was pending")
	}
	return c
}

func (m *timers) ticker(d time.Duration) (<-chan time.Time, func()) {
	m.mu.Lock()
	m.period = d
	m.mu.Unlock()
	return m.tick, func() {}
}

// asked are the durations the tracker set its evaluation timers for.
func (m *timers) asked() []time.Duration {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]time.Duration(nil), m.waits...)
}

// take returns the tracker's pending evaluation timer: the one a barrier
// holds, or the next one the tracker sets (something must have woken it).
func (m *timers) take(t *testing.T) chan time.Time {
	t.Helper()
	if c := m.held; c != nil {
		m.held = nil
		return c
	}
	select {
	case c := <-m.armed:
		return c
	case <-time.After(waitLimit):
		t.Fatalf("the tracker set no evaluation timer within %v (nothing woke it?)", waitLimit)
		return nil
	}
}

func send(t *testing.T, c chan time.Time, what string) {
	t.Helper()
	select {
	case c <- time.Time{}:
	case <-time.After(waitLimit):
		t.Fatalf("the tracker's goroutine did not take its %s within %v", what, waitLimit)
	}
}

// barrier returns once the tracker's goroutine is done with what it was
// handed before: poked, it sets an evaluation timer only from its select,
// after whatever it was doing. Precondition: no evaluation timer pending
// (the last one fired). The new timer is held for the next evaluate.
func (m *timers) barrier(t *testing.T, tr *Tracker) {
	t.Helper()
	tr.poke()
	select {
	case c := <-m.armed:
		m.held = c
	case <-time.After(waitLimit):
		t.Fatalf("the tracker's goroutine did not come back to its loop within %v", waitLimit)
	}
}

// evaluate fires the tracker's evaluation timer and returns once the
// evaluation ran and its breach changes were stored and notified.
func (m *timers) evaluate(t *testing.T, tr *Tracker) {
	t.Helper()
	send(t, m.take(t), "evaluation timer")
	m.barrier(t, tr)
}

// flush fires the tracker's flush ticker and returns once the flush (and
// the snapshot, if one was due) is done. An evaluation follows it: its
// timer is only taken once the flush returned, which makes it the barrier.
func (m *timers) flush(t *testing.T, tr *Tracker) {
	t.Helper()
	send(t, m.tick, "flush tick")
	tr.poke()
	m.evaluate(t, tr)
}

// events collects a tracker's notifications (its Notify hook).
type events struct {
	mu  sync.Mutex
	got []Event
}

func (e *events) add(ev Event) {
	e.mu.Lock()
	e.got = append(e.got, ev)
	e.mu.Unlock()
}

func (e *events) all() []Event {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]Event(nil), e.got...)
}

func (e *events) count() int { e.mu.Lock(); defer e.mu.Unlock(); return len(e.got) }

// waitFor waits until the events received satisfy ok and returns them; it
// fails the test, showing what did arrive, if they do not within waitLimit.
// For trackers on the real timers: on test timers, evaluate returns with
// the events already in.
func (e *events) waitFor(t *testing.T, what string, ok func([]Event) bool) []Event {
	t.Helper()
	deadline := time.Now().Add(waitLimit)
	for {
		got := e.all()
		if ok(got) {
			return got
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %s within %v; events: %s", what, waitLimit, describe(got))
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// byKey indexes events by their breach's condition key, failing the test
// if two share one.
func byKey(t *testing.T, evs []Event) map[string]Event {
	t.Helper()
	out := map[string]Event{}
	for _, e := range evs {
		k := conditionKey(&e.Breach)
		if _, dup := out[k]; dup {
			t.Fatalf("two events for %s: %s", k, describe(evs))
		}
		out[k] = e
	}
	return out
}

func describe(evs []Event) string {
	s := fmt.Sprintf("%d:", len(evs))
	for _, e := range evs {
		b := e.Breach
		s += fmt.Sprintf(" [%s %s %s %s/%s %s]", e.Method, conditionKey(&b), b.Severity, b.Actual, b.Threshold, b.ID)
	}
	return s
}
