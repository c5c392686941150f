package storage

import (
	"errors"
	"testing"
	"time"
)

// notCommitted fails the test if key is committed within a short grace
// period: a write the commit loop should be holding.
func notCommitted(t *testing.T, db *DB, key []byte, what string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Millisecond)
	for time.Now().Before(deadline) {
		if _, err := get(t, db, key); !errors.Is(err, ErrNotFound) {
			t.Fatalf("%s committed (get: %v) while a sync was running; want it held for one group after the sync", what, err)
		}
		time.Sleep(time.Millisecond)
	}
}

// Strict writes arriving while a sync runs would wait for the next sync
// wherever they were committed, so the commit loop holds them and commits
// them as one group when the sync ends: one transaction instead of one
// per arrival. They are still released only by a sync started after that
// commit.
func TestStrictWritesArrivingDuringASyncCommitAsOneGroup(t *testing.T) {
	disk := newFakeDisk(true)
	rec := &recorder{}
	db := openFake(t, Options{Observer: rec}, disk, nil)
	ctx := testCtx(t)

	k1 := probe("first")
	w1 := db.Submit(Strict, func(tx *Tx) error { tx.Set(k1, []byte("1")); return nil })
	c1 := nextSync(t, disk, w1, "strict write 1")

	// One write first, given time to be committed on its own; then two
	// more. None may commit while sync 1 runs.
	keys := [][]byte{probe("held/a"), probe("held/b"), probe("held/c")}
	var held []*Pending
	for i, k := range keys {
		held = append(held, db.Submit(Strict, func(tx *Tx) error { tx.Set(k, []byte("v")); return nil }))
		if i == 0 {
			notCommitted(t, db, k, "the first write arriving during sync 1")
		}
	}
	for _, k := range keys {
		notCommitted(t, db, k, "a write arriving during sync 1")
	}
	if g, _, _ := rec.snapshot(); g != 1 {
		t.Fatalf("%d groups committed during sync 1; want only write 1's", g)
	}

	reply(t, c1, nil)
	if err := w1.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	c2 := nextSync(t, disk, held[0], "the held writes")
	for _, k := range keys {
		if !c2.committed[string(k)] {
			t.Fatalf("sync %d started before held write %q was committed", c2.n, k)
		}
	}
	for i, p := range held {
		notReleased(t, p, "held write "+string(keys[i]))
	}
	if g, w, _ := rec.snapshot(); g != 2 || w != 4 {
		t.Fatalf("%d groups of %d writers in all; want 2 (write 1, then the three held ones together)", g, w)
	}
	reply(t, c2, nil)
	for i, p := range held {
		if err := p.Wait(ctx); err != nil || !disk.isDurable(keys[i]) {
			t.Fatalf("held write %q: %v, durable %v", keys[i], err, disk.isDurable(keys[i]))
		}
	}
}

// A relaxed write never waits for a sync: one arriving while strict ones
// are held is committed at once, and the held strict writes with it.
func TestRelaxedWriteIsNotHeldBehindASync(t *testing.T) {
	disk := newFakeDisk(true)
	db := openFake(t, Options{}, disk, nil)
	ctx := testCtx(t)

	w1 := db.Submit(Strict, func(tx *Tx) error { tx.Set(probe("1"), []byte("1")); return nil })
	c1 := nextSync(t, disk, w1, "strict write 1")
	ks := probe("strict, held")
	strict := db.Submit(Strict, func(tx *Tx) error { tx.Set(ks, []byte("v")); return nil })
	notCommitted(t, db, ks, "the strict write")
	kr := probe("relaxed")
	relaxed := db.Submit(Relaxed, func(tx *Tx) error { tx.Set(kr, []byte("v")); return nil })
	if err := relaxed.Wait(ctx); err != nil {
		t.Fatalf("relaxed write during a sync: %v", err)
	}
	if _, err := get(t, db, ks); err != nil {
		t.Fatalf("the held strict write was not committed with the relaxed one: %v", err)
	}
	notReleased(t, strict, "the strict write, committed during sync 1")
	reply(t, c1, nil)
	c2 := nextSync(t, disk, strict, "the strict write")
	reply(t, c2, nil)
	if err := strict.Wait(ctx); err != nil || !disk.isDurable(ks) {
		t.Fatalf("strict write: %v, durable %v", err, disk.isDurable(ks))
	}
}

// Holding is bounded: a full batch is committed without waiting for the
// sync to end.
func TestHeldBatchIsCommittedWhenFull(t *testing.T) {
	disk := newFakeDisk(true)
	db := openFake(t, Options{MaxBatch: 2}, disk, nil)
	ctx := testCtx(t)

	w1 := db.Submit(Strict, func(tx *Tx) error { tx.Set(probe("1"), []byte("1")); return nil })
	c1 := nextSync(t, disk, w1, "strict write 1")
	ka, kb := probe("a"), probe("b")
	a := db.Submit(Strict, func(tx *Tx) error { tx.Set(ka, []byte("v")); return nil })
	b := db.Submit(Strict, func(tx *Tx) error { tx.Set(kb, []byte("v")); return nil })
	waitFor(t, "the full batch to commit during sync 1", func() bool {
		_, ea := get(t, db, ka)
		_, eb := get(t, db, kb)
		return ea == nil && eb == nil
	})
	reply(t, c1, nil)
	c2 := nextSync(t, disk, a, "the full batch")
	reply(t, c2, nil)
	for _, p := range []*Pending{a, b} {
		if err := p.Wait(ctx); err != nil {
			t.Fatal(err)
		}
	}
}

// Close does not wait for a sync to end to commit held writes: they are
// committed, synced after the running sync, and released without error.
func TestCloseCommitsHeldWrites(t *testing.T) {
	disk := newFakeDisk(true)
	db := openFake(t, Options{}, disk, nil)
	ctx := testCtx(t)

	w1 := db.Submit(Strict, func(tx *Tx) error { tx.Set(probe("1"), []byte("1")); return nil })
	c1 := nextSync(t, disk, w1, "strict write 1")
	k := probe("held")
	held := db.Submit(Strict, func(tx *Tx) error { tx.Set(k, []byte("v")); return nil })
	notCommitted(t, db, k, "the held write")
	closed := make(chan error, 1)
	go func() { closed <- db.Close() }()
	waitFor(t, "Close to commit the held write", func() bool { _, err := get(t, db, k); return err == nil })
	reply(t, c1, nil)
	c2 := nextSync(t, disk, held, "the held write")
	reply(t, c2, nil)
	if err := held.Wait(ctx); err != nil || !disk.isDurable(k) {
		t.Fatalf("held write after Close: %v, durable %v", err, disk.isDurable(k))
	}
	// Close's own final sync.
	go func() {
		if c, ok := <-disk.calls; ok {
			reply(t, c, nil)
		}
	}()
	select {
	case err := <-closed:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(testWait):
		t.Fatal("Close did not return")
	}
}
