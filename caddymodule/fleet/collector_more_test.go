package fleet

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/asap-sidecar/asap-sidecar/caddymodule/metering"
	"github.com/asap-sidecar/asap-sidecar/internal/natstest"
	"github.com/asap-sidecar/asap-sidecar/storage"
)

// publishRaw puts data on subject straight into JetStream.
func publishRaw(t testing.TB, c *Client, subject string, data []byte) {
	t.Helper()
	if _, err := c.js.Publish(context.Background(), subject, data); err != nil {
		t.Fatal(err)
	}
}

// publishUsage publishes us as a sidecar's outbox would.
func publishUsage(t testing.TB, c *Client, us ...Usage) {
	t.Helper()
	for _, u := range us {
		m, err := u.Message()
		if err != nil {
			t.Fatal(err)
		}
		publishRaw(t, c, m.Subject, m.Data)
	}
}

// fetchN takes n messages of stream through k's durable consumer, without
// acking them.
func fetchN(t testing.TB, k *Collector, stream string, n int) []jetstream.Msg {
	t.Helper()
	cons, err := k.consumer(context.Background(), stream)
	if err != nil {
		t.Fatal(err)
	}
	var msgs []jetstream.Msg
	deadline := time.Now().Add(10 * time.Second)
	for len(msgs) < n {
		if time.Now().After(deadline) {
			t.Fatalf("fetched %d messages of %s after 10s, want %d", len(msgs), stream, n)
		}
		got, err := k.fetch(cons)
		if err != nil {
			t.Fatal(err)
		}
		msgs = append(msgs, got...)
	}
	return msgs
}

// setRaw writes val at key in db, bypassing every encoder.
func setRaw(t testing.TB, db *storage.DB, key, val []byte) {
	t.Helper()
	if err := db.Commit(context.Background(), storage.Strict, func(tx *storage.Tx) error {
		tx.Set(key, val)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// A collector whose stored counter cannot be read refuses to start,
// naming the counter and the database, rather than count from zero.
func TestNewCollectorRefusesACorruptCounter(t *testing.T) {
	n := natstest.Start(t)
	db := openDB(t)
	setRaw(t, db, counterKeyOf(countDuplicates), []byte{1, 2, 3})
	k, err := NewCollector(connect(t, n.URL()), db, CollectorOptions{})
	if err == nil || !strings.Contains(err.Error(), "counter duplicates") || !strings.Contains(err.Error(), db.Dir()) {
		t.Fatalf("collector %v, error %v; want an error naming the counter and the database", k, err)
	}
}

// Before NATS is reached the collector's pull fails with ErrUnavailable
// and ingests nothing.
func TestCollectorPullBeforeNATSIsReached(t *testing.T) {
	c, _ := unreachable(t)
	k, err := NewCollector(c, openDB(t), CollectorOptions{})
	if err != nil {
		t.Fatal(err)
	}
	err = k.pull(context.Background(), UsageStream, func(context.Context, []jetstream.Msg) error {
		t.Error("ingested with no NATS")
		return nil
	})
	if !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "not connected") {
		t.Fatalf("pull before NATS is up: %v, want ErrUnavailable: not connected", err)
	}
}

// A batch the collector failed to store is not acked: pull returns the
// store's error, the messages stay pending, and they come back and are
// counted once it can store them.
func TestCollectorDoesNotAckABatchItCouldNotStore(t *testing.T) {
	n := natstest.Start(t)
	pub := connect(t, n.URL())
	ready(t, pub)
	o := &origin{id: "a"}
	publishUsage(t, pub, o.use("urn:asap:agent:client", "env-1", 1))
	k := newCollector(t, n.URL(), openDB(t), CollectorOptions{AckWait: 300 * time.Millisecond})
	errDisk := errors.New("disk full")
	err := k.pull(context.Background(), UsageStream, func(context.Context, []jetstream.Msg) error { return errDisk })
	if !errors.Is(err, errDisk) {
		t.Fatalf("pull with a failing store: %v, want the store's error", err)
	}
	cons, err := pub.js.Consumer(context.Background(), UsageStream, DefaultDurable)
	if err != nil {
		t.Fatal(err)
	}
	if info, err := cons.Info(context.Background()); err != nil || info.NumAckPending != 1 || info.AckFloor.Stream != 0 {
		t.Fatalf("consumer %+v, %v; want the message delivered and not acked", info, err)
	}
	runCollector(t, k)
	waitIngested(t, k, 1)
}

// An ack lost with the connection (after the batch was stored) makes pull
// fail with ErrUnavailable; the message is redelivered to the next
// collector on the same database, which drops it as a duplicate.
func TestCollectorLostAckIsRedeliveredAndCountedOnce(t *testing.T) {
	n := natstest.Start(t)
	pub := connect(t, n.URL())
	ready(t, pub)
	o := &origin{id: "a"}
	publishUsage(t, pub, o.use("urn:asap:agent:client", "env-1", 1))
	db := openDB(t)
	opts := CollectorOptions{AckWait: 300 * time.Millisecond}
	k := newCollector(t, n.URL(), db, opts)
	err := k.pull(context.Background(), UsageStream, func(ctx context.Context, msgs []jetstream.Msg) error {
		err := k.ingestUsage(ctx, msgs)
		k.c.Close() // the connection drops between storing and acking
		return err
	})
	if !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "acking") {
		t.Fatalf("pull whose ack is lost: %v, want ErrUnavailable: acking", err)
	}
	k2 := newCollector(t, n.URL(), db, opts)
	runCollector(t, k2)
	waitUntil(t, func() bool { return k2.Status(context.Background()).Duplicates == 1 })
	if s := summary(t, k2, metering.Filter{}); s.TotalTasks != 1 || k2.Status(context.Background()).Ingested != 1 {
		t.Fatalf("after the redelivery: %d tasks, status %+v; want 1 task ingested once", s.TotalTasks, k2.Status(context.Background()))
	}
}

// Fetching over a closed connection fails with ErrUnavailable naming the
// fetch.
func TestCollectorFetchOnAClosedConnection(t *testing.T) {
	n := natstest.Start(t)
	k := newCollector(t, n.URL(), openDB(t), CollectorOptions{})
	ready(t, k.c)
	cons, err := k.consumer(context.Background(), UsageStream)
	if err != nil {
		t.Fatal(err)
	}
	k.c.Close()
	msgs, err := k.fetch(cons)
	if len(msgs) != 0 || !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "fetching") {
		t.Fatalf("fetch on a closed connection: %d messages, %v; want ErrUnavailable: fetching", len(msgs), err)
	}
}

// A usage whose time is in year 9999 locally but 10000 in UTC cannot be
// stored (nor served back): it is counted as malformed and skipped.
func TestCollectorCountsAUsagePastYear9999InUTCAsMalformed(t *testing.T) {
	n := natstest.Start(t)
	pub := connect(t, n.URL())
	ready(t, pub)
	publishRaw(t, pub, UsageSubjectPrefix+"x", []byte(`{"origin":"x","event":{"task_id":"t","timestamp":"9999-12-31T23:59:59-01:00"}}`))
	o := &origin{id: "a"}
	publishUsage(t, pub, o.use("urn:asap:agent:client", "env-1", 1))
	k := newCollector(t, n.URL(), openDB(t), CollectorOptions{})
	runCollector(t, k)
	waitUntil(t, func() bool { s := k.Status(context.Background()); return s.Malformed+s.Ingested == 2 })
	if s := k.Status(context.Background()); s.Malformed != 1 || s.Ingested != 1 {
		t.Fatalf("status %+v, want 1 malformed and 1 ingested", s)
	}
}

// When the database refuses the write, ingesting fails with an error
// naming how many messages were not stored, and no counter moves.
func TestCollectorIngestOnAClosedDatabase(t *testing.T) {
	n := natstest.Start(t)
	pub := connect(t, n.URL())
	ready(t, pub)
	o := &origin{id: "a"}
	publishUsage(t, pub, o.use("urn:asap:agent:client", "env-1", 1))
	m, _ := Checkpoint{Origin: "a", Agent: "urn:asap:agent:a", Size: 1, Checkpoint: "note"}.Message()
	publishRaw(t, pub, m.Subject, m.Data)
	db := openDB(t)
	k := newCollector(t, n.URL(), db, CollectorOptions{})
	usage, cps := fetchN(t, k, UsageStream, 1), fetchN(t, k, CheckpointStream, 1)
	db.Close()
	ctx := context.Background()
	if err := k.ingestUsage(ctx, usage); !errors.Is(err, storage.ErrClosed) || !strings.Contains(err.Error(), "storing 1 usage messages") {
		t.Fatalf("ingesting usage into a closed database: %v", err)
	}
	if err := k.ingestCheckpoints(ctx, cps); !errors.Is(err, storage.ErrClosed) || !strings.Contains(err.Error(), "storing 1 checkpoints") {
		t.Fatalf("ingesting checkpoints into a closed database: %v", err)
	}
	if s := k.Status(ctx); s.Ingested != 0 || s.Duplicates != 0 || s.Malformed != 0 {
		t.Fatalf("counters moved on a failed ingest: %+v", s)
	}
}

// Events and counters are stored in one transaction: when a counter
// cannot be updated, none of the batch's events is stored either.
func TestCollectorStoresNothingWhenACounterCannotBeUpdated(t *testing.T) {
	n := natstest.Start(t)
	pub := connect(t, n.URL())
	ready(t, pub)
	o := &origin{id: "a"}
	publishUsage(t, pub, o.use("urn:asap:agent:client", "env-1", 1), o.use("urn:asap:agent:client", "env-2", 2))
	db := openDB(t)
	k := newCollector(t, n.URL(), db, CollectorOptions{})
	msgs := fetchN(t, k, UsageStream, 2)
	setRaw(t, db, counterKeyOf(countIngested), []byte("bad"))
	err := k.ingestUsage(context.Background(), msgs)
	if err == nil || !strings.Contains(err.Error(), "counter value has 3 bytes") {
		t.Fatalf("ingest with a corrupt counter: %v, want the counter's error", err)
	}
	if s := summary(t, k, metering.Filter{}); s.TotalTasks != 0 {
		t.Fatalf("%d tasks stored by a failed ingest, want none", s.TotalTasks)
	}
	if got := k.Status(context.Background()).Ingested; got != 0 {
		t.Fatalf("ingested %d after a failed ingest", got)
	}
}

// A stored checkpoint that cannot be read fails Checkpoints (naming what
// it was reading) rather than vanish from the list; the next checkpoint
// of that sidecar replaces it.
func TestCheckpointsWithAnUnreadableRecord(t *testing.T) {
	n := natstest.Start(t)
	pub := connect(t, n.URL())
	ready(t, pub)
	db := openDB(t)
	k := newCollector(t, n.URL(), db, CollectorOptions{})
	setRaw(t, db, checkpointKeyOf("a", "urn:asap:agent:a"), []byte("{broken"))
	if cs, err := k.Checkpoints(); err == nil || !strings.Contains(err.Error(), "reading checkpoints") {
		t.Fatalf("checkpoints %+v, %v; want an error reading checkpoints", cs, err)
	}
	m, _ := Checkpoint{Origin: "a", Agent: "urn:asap:agent:a", Size: 1, Checkpoint: "note-1", SignedAt: base}.Message()
	publishRaw(t, pub, m.Subject, m.Data)
	if err := k.ingestCheckpoints(context.Background(), fetchN(t, k, CheckpointStream, 1)); err != nil {
		t.Fatal(err)
	}
	cs, err := k.Checkpoints()
	if err != nil || len(cs) != 1 || cs[0].Checkpoint != "note-1" {
		t.Fatalf("checkpoints %+v, %v; want the new one in place of the unreadable one", cs, err)
	}
}

// Checkpoints are listed by origin, then by agent within an origin.
func TestCheckpointsAreSortedByOriginThenAgent(t *testing.T) {
	n := natstest.Start(t)
	pub := connect(t, n.URL())
	ready(t, pub)
	k := newCollector(t, n.URL(), openDB(t), CollectorOptions{})
	// One at a time: the stream keeps one message per origin.
	for _, oa := range [][2]string{{"b", "z"}, {"a", "y"}, {"a", "b"}, {"b", "a"}} {
		m, _ := Checkpoint{Origin: oa[0], Agent: oa[1], Size: 1, Checkpoint: "note-" + oa[0] + oa[1]}.Message()
		publishRaw(t, pub, m.Subject, m.Data)
		if err := k.ingestCheckpoints(context.Background(), fetchN(t, k, CheckpointStream, 1)); err != nil {
			t.Fatal(err)
		}
	}
	cs, err := k.Checkpoints()
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, c := range cs {
		got = append(got, c.Origin+"/"+c.Agent)
	}
	if fmt.Sprint(got) != "[a/b a/y b/a b/z]" {
		t.Fatalf("checkpoints in order %v, want [a/b a/y b/a b/z]", got)
	}
}

// A usage timed before 1970 can never be stored (usage ids are ULIDs,
// which start in 1970): it is counted as malformed and skipped like every
// other message the collector cannot store, and the valid usage beside it
// is ingested. (It used to fail its batch every time, unacked, and be
// redelivered forever.)
func TestCollectorSkipsAUsageBefore1970(t *testing.T) {
	n := natstest.Start(t)
	pub := connect(t, n.URL())
	ready(t, pub)
	publishRaw(t, pub, UsageSubjectPrefix+"x", []byte(`{"origin":"x","event":{"task_id":"t","timestamp":"1969-12-31T23:59:59Z"}}`))
	o := &origin{id: "a"}
	publishUsage(t, pub, o.use("urn:asap:agent:client", "env-1", 1))
	k := newCollector(t, n.URL(), openDB(t), CollectorOptions{AckWait: 300 * time.Millisecond})
	runCollector(t, k)
	waitUntil(t, func() bool { s := k.Status(context.Background()); return s.Malformed == 1 && s.Ingested == 1 })
	waitUntil(t, func() bool { p := k.Status(context.Background()).Pending; return p != nil && *p == 0 })
}
