package caddymodule

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
)

// A step that fails prints ✗ with its error, stops the showcase (later
// steps build on it) and makes the run fail; passed steps print ✓.
func TestDemoStepsStopAtTheFirstFailure(t *testing.T) {
	var out strings.Builder
	ran := 0
	steps := []demoStep{
		{"first", func(context.Context) (string, error) { ran++; return "it worked", nil }},
		{"second", func(context.Context) (string, error) {
			ran++
			return "", errors.New("expected a refusal -32059 max_tasks_reached, got task.response completed: it was let through")
		}},
		{"third", func(context.Context) (string, error) { ran++; return "never", nil }},
	}
	err := runDemoSteps(context.Background(), &out, steps)
	if err == nil || !strings.Contains(err.Error(), "step 2/3 (second)") {
		t.Fatalf("error %v, want one naming step 2/3", err)
	}
	if ran != 2 {
		t.Fatalf("%d steps ran, want 2", ran)
	}
	for _, want := range []string{"── 1/3 first\n✓ 1/3 it worked\n", "── 2/3 second\n✗ 2/3 expected a refusal", "Showcase FAILED at step 2 of 3: second."} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
	if strings.Contains(out.String(), "third") || strings.Contains(out.String(), "All 3 steps passed") {
		t.Errorf("output goes on after the failure:\n%s", out.String())
	}
}

// A step that returns after the showcase's deadline does not pass.
func TestDemoStepsFailPastTheDeadline(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	var out strings.Builder
	err := runDemoSteps(ctx, &out, []demoStep{{"slow", func(context.Context) (string, error) { cancel(); return "done", nil }}})
	if err == nil || !strings.Contains(out.String(), "✗ 1/1 the showcase ran out of time (--timeout)") {
		t.Fatalf("err %v, output:\n%s", err, out.String())
	}
}

// The showcase's checks can fail: with the guard bypassed (the steps
// talking to the agent directly, as a client that found the agent's port
// would), the sixth task and the revoked token are let through, and the
// steps that check them say so instead of passing.
func TestShowcaseStepsCatchABypassedGuard(t *testing.T) {
	caddyMu.Lock()
	defer caddyMu.Unlock()
	sc, err := startDemoSidecar(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer caddy.Stop()
	var out strings.Builder
	s := newShowcase(&out, sc)
	defer s.close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, step := range []func(context.Context) (string, error){s.stepRoot, s.stepAttenuate, s.stepTasks} {
		if _, err := step(ctx); err != nil {
			t.Fatalf("a step through the guard failed: %v\n%s", err, out.String())
		}
	}
	guarded := sc.sidecarURL
	sc.sidecarURL = sc.agentURL // around the guard
	if _, err := s.stepRoot(ctx); err == nil {
		t.Fatal("the root step passed with the guard bypassed (a forged token reached the agent)")
	}
	if _, err := s.stepLimit(ctx); err == nil || !strings.Contains(err.Error(), "let through") {
		t.Fatalf("the limit step with the guard bypassed: %v", err)
	}
	if _, err := s.stepRevoke(ctx); err == nil {
		t.Fatal("the revocation step passed with the guard bypassed")
	}
	sc.sidecarURL = guarded
	// The answer checks themselves.
	var a demoAnswer
	if err := a.completed(); err == nil || a.String() != "neither result nor error" {
		t.Fatalf("an empty answer counted as completed: %v", err)
	}
	if err := s.admin(ctx, "GET", "/asap/status", 201, nil); err == nil || !strings.Contains(err.Error(), "answered HTTP 200, expected 201") {
		t.Fatalf("admin with the wrong status expected: %v", err)
	}
	var notJSON []int
	if err := s.admin(ctx, "GET", "/asap/status", 200, &notJSON); err == nil || !strings.Contains(err.Error(), "not the JSON expected") {
		t.Fatalf("admin decoding the wrong shape: %v", err)
	}
	if _, err := s.adminRaw(ctx, "/asap/nosuch"); err == nil {
		t.Fatal("adminRaw of a missing route succeeded")
	}
}
