package fleet

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/asap-sidecar/asap-sidecar/internal/natstest"
	"github.com/asap-sidecar/asap-sidecar/storage"
)

func openDB(t testing.TB) *storage.DB {
	t.Helper()
	db, err := storage.Open(storage.Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// received collects what a follower applied.
type received struct {
	mu   sync.Mutex
	revs []Revocation
	seqs []uint64
	fail int // fail the next n applies
	got  chan struct{}
}

func newReceived() *received { return &received{got: make(chan struct{}, 1000)} }

func (r *received) apply(_ context.Context, rev Revocation, seq uint64) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.fail > 0 {
		r.fail--
		return errors.New("disk full")
	}
	r.revs = append(r.revs, rev)
	r.seqs = append(r.seqs, seq)
	r.got <- struct{}{}
	return nil
}

func (r *received) waitFor(t testing.TB, n int) []Revocation {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		r.mu.Lock()
		have := len(r.revs)
		r.mu.Unlock()
		if have >= n {
			break
		}
		select {
		case <-r.got:
		case <-deadline:
			t.Fatalf("applied %d revocations after 10s, want %d", have, n)
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Revocation(nil), r.revs...)
}

func stage(t testing.TB, db *storage.DB, o *Outbox, revs ...Revocation) {
	t.Helper()
	err := db.Commit(context.Background(), storage.Strict, func(tx *storage.Tx) error {
		for _, r := range revs {
			m, err := r.Message()
			if err != nil {
				return err
			}
			if err := o.Stage(tx, m); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	o.Notify()
}

func run(t testing.TB, fn func(ctx context.Context)) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); fn(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
}

func rev(jti string) Revocation {
	return Revocation{JTI: jti, RevokedAt: time.Date(2026, 12, 3, 10, 0, 0, 0, time.UTC), Origin: "sidecar-a"}
}

// Revocations staged at one sidecar reach a follower at another, in
// order, and leave the outbox once acknowledged.
func TestRevocationsTravelThroughTheOutbox(t *testing.T) {
	n := natstest.Start(t)
	pub, sub := connect(t, n.URL()), connect(t, n.URL())
	db := openDB(t)
	o, err := OpenOutbox(db, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	got := newReceived()
	run(t, func(ctx context.Context) { sub.FollowRevocations(ctx, 0, got.apply) })
	run(t, func(ctx context.Context) { o.Run(ctx, pub) })
	stage(t, db, o, rev("del_1"), rev("del_2"))
	stage(t, db, o, Revocation{Issuer: "urn:asap:agent:other", JTI: "del_3", Origin: "sidecar-a"})
	revs := got.waitFor(t, 3)
	if revs[0].JTI != "del_1" || revs[1].JTI != "del_2" || revs[2].JTI != "del_3" || revs[2].Issuer != "urn:asap:agent:other" {
		t.Fatalf("applied %+v", revs)
	}
	if !revs[0].RevokedAt.Equal(rev("").RevokedAt) {
		t.Fatalf("revoked_at %v", revs[0].RevokedAt)
	}
	if got.seqs[0] != 1 || got.seqs[2] != 3 {
		t.Fatalf("sequences %v", got.seqs)
	}
	waitUntil(t, func() bool { return o.Backlog() == 0 && outboxKeys(t, db) == 0 })
}

// The same revocation published twice (a crash between the ack and the
// delete) is one message in the stream.
func TestRepublishedRevocationIsDroppedByMessageID(t *testing.T) {
	n := natstest.Start(t)
	pub, sub := connect(t, n.URL()), connect(t, n.URL())
	db := openDB(t)
	o, _ := OpenOutbox(db, 0, nil)
	run(t, func(ctx context.Context) { o.Run(ctx, pub) })
	stage(t, db, o, rev("del_1"))
	waitUntil(t, func() bool { return outboxKeys(t, db) == 0 })
	stage(t, db, o, rev("del_1"), rev("del_2"))
	got := newReceived()
	run(t, func(ctx context.Context) { sub.FollowRevocations(ctx, 0, got.apply) })
	revs := got.waitFor(t, 2)
	waitUntil(t, func() bool { return outboxKeys(t, db) == 0 })
	if len(revs) != 2 || revs[1].JTI != "del_2" || got.seqs[1] != 2 {
		t.Fatalf("applied %+v at %v", revs, got.seqs)
	}
}

// A follower resumes after the sequence it applied last; a failed apply
// is retried, not skipped; a malformed message is passed on with no JTI
// so that its sequence is recorded.
func TestFollowResumesRetriesAndSkipsMalformed(t *testing.T) {
	n := natstest.Start(t)
	c := connect(t, n.URL())
	ctx := context.Background()
	ready(t, c)
	for _, jti := range []string{"del_1", "del_2"} {
		m, _ := rev(jti).Message()
		if _, err := c.js.Publish(ctx, m.Subject, m.Data); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.js.Publish(ctx, RevocationSubject, []byte("not json")); err != nil {
		t.Fatal(err)
	}
	got := newReceived()
	got.fail = 2
	run(t, func(ctx context.Context) { c.FollowRevocations(ctx, 1, got.apply) })
	revs := got.waitFor(t, 2)
	if revs[0].JTI != "del_2" || got.seqs[0] != 2 || revs[1].JTI != "" || got.seqs[1] != 3 {
		t.Fatalf("applied %+v at %v", revs, got.seqs)
	}
}

// With NATS down the outbox keeps every message (and says how many); when
// NATS is back it drains and the follower, which waited, gets them all.
func TestOutboxKeepsRevocationsThroughAnOutage(t *testing.T) {
	n := natstest.Start(t)
	pub, sub := connect(t, n.URL()), connect(t, n.URL())
	ready(t, pub)
	db := openDB(t)
	o, _ := OpenOutbox(db, 0, nil)
	got := newReceived()
	run(t, func(ctx context.Context) { sub.FollowRevocations(ctx, 0, got.apply) })
	n.Stop()
	run(t, func(ctx context.Context) { o.Run(ctx, pub) })
	for i := range 20 {
		stage(t, db, o, rev("del_"+string(rune('a'+i))))
	}
	if o.Backlog() != 20 || outboxKeys(t, db) != 20 {
		t.Fatalf("backlog %d, keys %d during the outage, want 20", o.Backlog(), outboxKeys(t, db))
	}
	// A restart during the outage finds the same backlog.
	o2, err := OpenOutbox(db, 0, nil)
	if err != nil || o2.Backlog() != 20 {
		t.Fatalf("reopened outbox backlog %d, %v", o2.Backlog(), err)
	}
	n.Start()
	revs := got.waitFor(t, 20)
	for i, r := range revs {
		if r.JTI != "del_"+string(rune('a'+i)) {
			t.Fatalf("revocation %d is %s", i, r.JTI)
		}
	}
	waitUntil(t, func() bool { return o.Backlog() == 0 && outboxKeys(t, db) == 0 })
}

func TestOutboxDropsAnUnreadableMessage(t *testing.T) {
	n := natstest.Start(t)
	pub := connect(t, n.URL())
	db := openDB(t)
	if err := db.Commit(context.Background(), storage.Strict, func(tx *storage.Tx) error {
		tx.Set(outboxKey(7), []byte("{broken"))
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	o, _ := OpenOutbox(db, 0, nil)
	if o.Backlog() != 1 || o.next.Load() != 8 {
		t.Fatalf("backlog %d next %d", o.Backlog(), o.next.Load())
	}
	run(t, func(ctx context.Context) { o.Run(ctx, pub) })
	waitUntil(t, func() bool { return outboxKeys(t, db) == 0 })
}

func outboxKeys(t testing.TB, db *storage.DB) int {
	n := 0
	if err := db.View(func(r *storage.Reader) error {
		return r.Scan(storage.SpaceOutbox.Prefix(), false, func(_, _ []byte) (bool, error) { n++; return true, nil })
	}); err != nil {
		t.Fatal(err)
	}
	return n
}

func waitUntil(t testing.TB, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met after 10s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// An outbox at its bound says so, and stops saying so once it drained.
func TestOutboxFullAtItsBound(t *testing.T) {
	n := natstest.Start(t)
	pub := connect(t, n.URL())
	db := openDB(t)
	o, _ := OpenOutbox(db, 3, nil)
	if o.Max() != 3 {
		t.Fatalf("max %d", o.Max())
	}
	stage(t, db, o, rev("del_1"), rev("del_2"))
	if o.Full() {
		t.Fatal("full at 2 of 3")
	}
	stage(t, db, o, rev("del_3"))
	if !o.Full() {
		t.Fatal("not full at 3 of 3")
	}
	run(t, func(ctx context.Context) { o.Run(ctx, pub) })
	waitUntil(t, func() bool { return !o.Full() && o.Backlog() == 0 })
	if d, _ := OpenOutbox(db, 0, nil); d.Max() != DefaultMaxBacklog {
		t.Fatalf("default max %d", d.Max())
	}
}
