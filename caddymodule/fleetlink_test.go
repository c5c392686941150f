package caddymodule

import (
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// The size of a checkpoint is its note's second line; a note without one
// is refused rather than published with size 0.
func TestCheckpointSize(t *testing.T) {
	if n, err := checkpointSize([]byte("asap/demo\n42\nroothash\n\n— sig\n")); err != nil || n != 42 {
		t.Fatalf("size %d, %v", n, err)
	}
	for _, bad := range []string{"asap/demo", "asap/demo\n", "asap/demo\nforty-two\nroot\n"} {
		if _, err := checkpointSize([]byte(bad)); err == nil {
			t.Errorf("checkpointSize(%q) took it", bad)
		}
	}
}

// The NATS server's log lands in Caddy's at matching levels; fatal errors
// are logged as errors (Caddy owns the process) and the first is kept for
// Start to report.
func TestNATSLoggerLevels(t *testing.T) {
	core, logs := observer.New(zap.DebugLevel)
	n := &natsLogger{l: zap.New(core)}
	n.Noticef("notice %d", 1)
	n.Warnf("warn %d", 2)
	n.Errorf("error %d", 3)
	n.Debugf("debug %d", 4)
	n.Tracef("trace %d", 5)
	n.Fatalf("fatal %d", 6)
	n.Fatalf("fatal %d", 7)
	want := []struct {
		level zapcore.Level
		msg   string
	}{{zap.InfoLevel, "notice 1"}, {zap.WarnLevel, "warn 2"}, {zap.ErrorLevel, "error 3"}, {zap.DebugLevel, "debug 4"},
		{zap.DebugLevel, "trace 5"}, {zap.ErrorLevel, "fatal 6"}, {zap.ErrorLevel, "fatal 7"}}
	got := logs.All()
	if len(got) != len(want) {
		t.Fatalf("%d entries, want %d", len(got), len(want))
	}
	for i, w := range want {
		if got[i].Level != w.level || got[i].Message != w.msg {
			t.Errorf("entry %d: %s %q, want %s %q", i, got[i].Level, got[i].Message, w.level, w.msg)
		}
	}
	if n.fatal() != "fatal 6" {
		t.Fatalf("first fatal %q", n.fatal())
	}
	// Levels the logger drops are not even formatted.
	quiet := &natsLogger{l: zap.New(zapcore.NewNopCore())}
	quiet.Debugf("%v", panicOnFormat{})
}

type panicOnFormat struct{}

func (panicOnFormat) String() string { panic("formatted a dropped log line") }
