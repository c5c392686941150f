package caddymodule

import (
	"context"
	"errors"
	"strings"
	"testing"
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
