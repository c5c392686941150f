package fleet

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/asap-sidecar/asap-sidecar/internal/natstest"
)

// The cache of last-seen counts is bounded: past 100,000 keys it starts
// over rather than grow with every token ever used.
func TestLastSeenCacheIsBounded(t *testing.T) {
	var s lastSeen
	for i := range 100_001 {
		s.put(fmt.Sprintf("t.%d", i), kvState{n: 1, rev: uint64(i + 1)})
	}
	if got := s.get("t.0"); got.rev != 1 {
		t.Fatalf("first key %+v before the bound, want rev 1", got)
	}
	s.put("t.new", kvState{n: 2, rev: 9})
	if len(s.m) != 1 {
		t.Fatalf("%d keys cached after the bound was passed, want only the new one", len(s.m))
	}
	if got := s.get("t.0"); got != (kvState{}) {
		t.Fatalf("an old key survived the reset: %+v", got)
	}
	if got := s.get("t.new"); got != (kvState{n: 2, rev: 9}) {
		t.Fatalf("the new key %+v, want n 2 rev 9", got)
	}
}

// With NATS down, taking a token this client has never counted (so it
// must read the count first) fails with ErrUnavailable naming the read.
func TestTakeOfAnUncachedTokenWhileNATSIsDown(t *testing.T) {
	n := natstest.Start(t)
	c := connect(t, n.URL())
	ready(t, c)
	n.Stop()
	_, err := c.Take(context.Background(), "never-seen", 5, inAnHour)
	if !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "reading a task count") {
		t.Fatalf("take with NATS down: %v, want ErrUnavailable reading a task count", err)
	}
}
