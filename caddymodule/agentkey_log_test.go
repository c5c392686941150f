package caddymodule

import (
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

// The generated agent key is announced only to operators who will sign
// with it: when every handler on the database has its own key, the line
// would say something false.
func TestGeneratedKeyIsAnnouncedOnlyWhenUsed(t *testing.T) {
	for _, keyless := range []bool{false, true} {
		core, logs := observer.New(zap.InfoLevel)
		d, err := openDatabase(t.TempDir(), 10*time.Millisecond, zap.New(core), keyless)
		if err != nil {
			t.Fatal(err)
		}
		if d.agentKey == nil {
			t.Error("no agent key generated")
		}
		d.db.Close()
		if n := logs.FilterMessageSnippet("generated an agent key").Len(); n != map[bool]int{false: 0, true: 1}[keyless] {
			t.Errorf("keyless %t: %d lines about the generated key", keyless, n)
		}
	}
}

// Start asks for the line only when a handler on the database has no key.
func TestAppKnowsWhichDatabasesHaveKeylessHandlers(t *testing.T) {
	priv, _ := keys(t, t.TempDir(), "demo")
	s := startSidecar(t, "", "agent urn:asap:agent:demo\nkey "+priv)
	app, err := runningApp()
	if err != nil {
		t.Fatal(err)
	}
	if app.keyless(runningAgent(t).store) {
		t.Fatal("a handler with a key counted as keyless")
	}
	s.load("agent urn:asap:agent:demo")
	if app, _ = runningApp(); !app.keyless(runningAgent(t).store) {
		t.Fatal("a handler without a key not counted")
	}
}
