package fleet

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/asap-sidecar/asap-sidecar/internal/natstest"
	"github.com/asap-sidecar/asap-sidecar/storage"
)

// streamMsgs is how many messages stream holds.
func streamMsgs(t testing.TB, c *Client, stream string) uint64 {
	t.Helper()
	s, err := c.js.Stream(context.Background(), stream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return info.State.Msgs
}

// stageRaw stages messages as they are, in one transaction.
func stageRaw(t testing.TB, db *storage.DB, o *Outbox, ms ...Message) {
	t.Helper()
	if err := db.Commit(context.Background(), storage.Strict, func(tx *storage.Tx) error {
		for _, m := range ms {
			if err := o.Stage(tx, m); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// An outbox on a database that cannot be read does not open.
func TestOpenOutboxOnAClosedDatabase(t *testing.T) {
	db := openDB(t)
	db.Close()
	if o, err := OpenOutbox(db, 0, nil); err == nil || !strings.Contains(err.Error(), "reading the outbox") {
		t.Fatalf("outbox %v, error %v; want an error reading the outbox", o, err)
	}
}

// A message whose data is not JSON is refused by Stage: the transaction
// that staged it fails and nothing is left in the outbox or counted.
func TestStageRefusesDataThatIsNotJSON(t *testing.T) {
	db := openDB(t)
	o, err := OpenOutbox(db, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = db.Commit(context.Background(), storage.Strict, func(tx *storage.Tx) error {
		return o.Stage(tx, Message{Subject: RevocationSubject, ID: "x", Data: json.RawMessage("{broken")})
	})
	if err == nil || !strings.Contains(err.Error(), "json") {
		t.Fatalf("staging broken JSON: %v, want a JSON error", err)
	}
	if o.Backlog() != 0 || outboxKeys(t, db) != 0 {
		t.Fatalf("backlog %d, %d keys after a refused stage; want 0", o.Backlog(), outboxKeys(t, db))
	}
}

// A full batch is followed at once by the next: with the retry tick an
// hour away and one wake-up, five messages in batches of two all leave.
func TestOutboxPublishesBatchAfterBatchWithoutWaiting(t *testing.T) {
	n := natstest.Start(t)
	pub := connect(t, n.URL())
	ready(t, pub)
	db := openDB(t)
	o, _ := OpenOutbox(db, 0, nil)
	o.batch, o.retry = 2, time.Hour
	stage(t, db, o, rev("del_1"), rev("del_2"), rev("del_3"), rev("del_4"), rev("del_5"))
	run(t, func(ctx context.Context) { o.Run(ctx, pub) })
	waitUntil(t, func() bool { return outboxKeys(t, db) == 0 })
	if got := streamMsgs(t, pub, RevocationStream); got != 5 {
		t.Fatalf("%d revocations in the stream, want 5", got)
	}
	if o.Backlog() != 0 {
		t.Fatalf("backlog %d once drained", o.Backlog())
	}
}

// Before NATS was ever reached, publishing fails with ErrUnavailable and
// the staged message stays.
func TestOutboxKeepsMessagesBeforeNATSIsReached(t *testing.T) {
	c, _ := unreachable(t)
	db := openDB(t)
	o, _ := OpenOutbox(db, 0, nil)
	stage(t, db, o, rev("del_1"))
	n, err := o.publishBatch(context.Background(), c)
	if n != 0 || !errors.Is(err, ErrUnavailable) {
		t.Fatalf("published %d, %v; want 0 and ErrUnavailable", n, err)
	}
	if outboxKeys(t, db) != 1 || o.Backlog() != 1 {
		t.Fatalf("%d keys, backlog %d; want the message kept", outboxKeys(t, db), o.Backlog())
	}
}

// A message JetStream refuses (no stream takes its subject) is not
// removed, and neither is anything after it: order is kept.
func TestOutboxKeepsARefusedMessageAndWhatFollows(t *testing.T) {
	n := natstest.Start(t)
	pub := connect(t, n.URL())
	ready(t, pub)
	db := openDB(t)
	o, _ := OpenOutbox(db, 0, nil)
	good, _ := rev("del_1").Message()
	stageRaw(t, db, o, Message{Subject: "asap.nowhere", ID: "x", Data: json.RawMessage(`{}`)}, good)
	done, err := o.publishBatch(context.Background(), pub)
	if done != 0 || !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "not acknowledged") {
		t.Fatalf("published %d, %v; want 0 and ErrUnavailable: not acknowledged", done, err)
	}
	if outboxKeys(t, db) != 2 || o.Backlog() != 2 {
		t.Fatalf("%d keys, backlog %d; want both messages kept", outboxKeys(t, db), o.Backlog())
	}
}

// listen subscribes to subject on a connection of its own, passing each
// message to reply (nil: answer nothing, so a publish there is never
// acknowledged).
func listen(t testing.TB, url, subject string, reply func(*nats.Msg)) {
	t.Helper()
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	if _, err := nc.Subscribe(subject, func(m *nats.Msg) {
		if reply != nil {
			reply(m)
		}
	}); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
}

// A publish no one acknowledges in time fails the batch with
// ErrUnavailable naming the timeout, and the message stays.
func TestOutboxKeepsAMessageNobodyAcknowledges(t *testing.T) {
	n := natstest.Start(t)
	pub := connect(t, n.URL())
	ready(t, pub)
	pub.timeout = 200 * time.Millisecond
	listen(t, n.URL(), "asap.silent", nil)
	db := openDB(t)
	o, _ := OpenOutbox(db, 0, nil)
	stageRaw(t, db, o, Message{Subject: "asap.silent", ID: "x", Data: json.RawMessage(`{}`)})
	done, err := o.publishBatch(context.Background(), pub)
	if done != 0 || !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "no acknowledgement within 200ms") {
		t.Fatalf("published %d, %v; want 0 and no acknowledgement within 200ms", done, err)
	}
	if outboxKeys(t, db) != 1 {
		t.Fatalf("%d keys, want the unacknowledged message kept", outboxKeys(t, db))
	}
}

// Cancelling while waiting for acknowledgements returns at once with the
// context's error, and removes nothing.
func TestOutboxStopsWaitingWhenCancelled(t *testing.T) {
	n := natstest.Start(t)
	pub := connect(t, n.URL())
	ready(t, pub)
	pub.timeout = time.Minute
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	listen(t, n.URL(), "asap.silent", func(*nats.Msg) { cancel() })
	db := openDB(t)
	o, _ := OpenOutbox(db, 0, nil)
	stageRaw(t, db, o, Message{Subject: "asap.silent", ID: "x", Data: json.RawMessage(`{}`)})
	start := time.Now()
	done, err := o.publishBatch(ctx, pub)
	if done != 0 || !errors.Is(err, context.Canceled) {
		t.Fatalf("published %d, %v; want 0 and context.Canceled", done, err)
	}
	if time.Since(start) > 30*time.Second {
		t.Fatalf("took %v: waited for the timeout, not the cancellation", time.Since(start))
	}
	if outboxKeys(t, db) != 1 {
		t.Fatalf("%d keys, want the message kept", outboxKeys(t, db))
	}
}

// If acknowledged messages cannot be removed (the database closed under
// the publisher, as in a crash), publishBatch says so and the messages are
// still there when the database is opened again: they will go out again
// (at least once; JetStream's message id drops the copy).
func TestOutboxKeepsAcknowledgedMessagesItCouldNotRemove(t *testing.T) {
	n := natstest.Start(t)
	pub := connect(t, n.URL())
	ready(t, pub)
	dir := t.TempDir()
	db, err := storage.Open(storage.Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	o, _ := OpenOutbox(db, 0, nil)
	stageRaw(t, db, o, Message{Subject: "asap.acker", ID: "x", Data: json.RawMessage(`{}`)})
	// An acknowledger that closes the database first, as a crash would.
	listen(t, n.URL(), "asap.acker", func(m *nats.Msg) {
		db.Close()
		_ = m.Respond([]byte(`{"stream":"FAKE","seq":1}`))
	})
	done, err := o.publishBatch(context.Background(), pub)
	if done != 0 || !errors.Is(err, storage.ErrClosed) {
		t.Fatalf("published %d, %v; want 0 and storage.ErrClosed", done, err)
	}
	db2, err := storage.Open(storage.Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db2.Close() })
	if outboxKeys(t, db2) != 1 {
		t.Fatalf("%d keys after reopening, want the acknowledged message still there", outboxKeys(t, db2))
	}
}
