package fleet

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/asap-sidecar/asap-sidecar/internal/natstest"
)

// A revocation stream deleted under a set-up client is named when the
// follower cannot subscribe, as NATS being unavailable, and the follower
// keeps its place.
func TestFollowNamesADeletedStream(t *testing.T) {
	n := natstest.Start(t)
	c := connect(t, n.URL())
	ready(t, c)
	if err := c.js.DeleteStream(context.Background(), RevocationStream); err != nil {
		t.Fatal(err)
	}
	last, err := c.followOnce(context.Background(), 41, func(context.Context, Revocation, uint64) error {
		t.Error("applied a revocation from a deleted stream")
		return nil
	})
	if last != 41 || !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "subscribing to "+RevocationStream) {
		t.Fatalf("follow of a deleted stream: last %d, %v; want 41 and ErrUnavailable naming %s", last, err, RevocationStream)
	}
}

// A malformed revocation is logged with its sequence and at most its
// first 256 bytes, so a huge message cannot flood the log.
func TestFollowLogsAMalformedRevocationTruncated(t *testing.T) {
	n := natstest.Start(t)
	c, logs := connectLogged(t, n.URL())
	ready(t, c)
	junk := strings.Repeat("x", 1000)
	if _, err := c.js.Publish(context.Background(), RevocationSubject, []byte(junk)); err != nil {
		t.Fatal(err)
	}
	got := newReceived()
	run(t, func(ctx context.Context) { c.FollowRevocations(ctx, 0, got.apply) })
	if revs := got.waitFor(t, 1); revs[0].JTI != "" || got.seqs[0] != 1 {
		t.Fatalf("applied %+v at %v, want an empty revocation at 1", revs, got.seqs)
	}
	entries := logs.FilterMessage("fleet: skipping a malformed revocation").All()
	if len(entries) != 1 {
		t.Fatalf("%d log entries for the malformed revocation, want 1", len(entries))
	}
	fields := entries[0].ContextMap()
	if data, _ := fields["data"].(string); data != junk[:256] || fields["seq"] != uint64(1) {
		t.Fatalf("logged seq %v and %d bytes of data, want seq 1 and the first 256 bytes", fields["seq"], len(data))
	}
	if short := truncate([]byte("short"), 256); string(short) != "short" {
		t.Fatalf("truncate of a short message: %q", short)
	}
}

// A stream deleted under a ready client (an operator deleting it) is
// set up again by the next operation that finds it missing: the outbox
// drains. (Setup used to run once per client, so the outbox kept its
// messages until the sidecar restarted.)
func TestFleetRecoversFromAStreamLostUnderIt(t *testing.T) {
	n := natstest.Start(t)
	pub := connect(t, n.URL())
	ready(t, pub)
	if err := pub.js.DeleteStream(context.Background(), RevocationStream); err != nil {
		t.Fatal(err)
	}
	db := openDB(t)
	o, _ := OpenOutbox(db, 0, nil)
	stage(t, db, o, rev("del_1"))
	run(t, func(ctx context.Context) { o.Run(ctx, pub) })
	waitUntil(t, func() bool { return outboxKeys(t, db) == 0 })
}

// A NATS that lost its whole store (restarted without its volume) gets
// the fleet's streams and bucket again once the client reconnects:
// limited tokens are counted and the outbox drains, with no restart of
// the sidecar.
func TestFleetSetsUpAgainAfterNATSLostItsStore(t *testing.T) {
	n := natstest.Start(t)
	c := connect(t, n.URL())
	ready(t, c)
	ctx := context.Background()
	inAnHour := time.Now().Add(time.Hour)
	if _, err := c.Take(ctx, "hash-before", 5, inAnHour); err != nil {
		t.Fatal(err)
	}

	n.Wipe()
	waitUntil(t, c.Connected)
	db := openDB(t)
	o, _ := OpenOutbox(db, 0, nil)
	stage(t, db, o, rev("del_after_wipe"))
	run(t, func(ctx context.Context) { o.Run(ctx, c) })
	waitUntil(t, func() bool { return outboxKeys(t, db) == 0 })
	waitUntil(t, func() bool { _, err := c.Take(ctx, "hash-after", 5, inAnHour); return err == nil })
	if got, err := c.Count(ctx, "hash-after"); err != nil || got != 1 {
		t.Fatalf("count after the wipe: %d, %v; want 1", got, err)
	}
	// The revocation reached the recreated stream.
	info, err := c.js.Stream(ctx, RevocationStream)
	if err != nil || info.CachedInfo().State.Msgs != 1 {
		t.Fatalf("revocation stream after the wipe: %v", err)
	}
}
