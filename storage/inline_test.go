package storage

import (
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dgraph-io/badger/v4"
)

// onCallersGoroutine reports whether the calling goroutine is a writer's
// own, inside CommitThen, rather than the commit loop or the syncer.
func onCallersGoroutine() bool {
	buf := make([]byte, 64<<10)
	return strings.Contains(string(buf[:runtime.Stack(buf, false)]), "storage.(*DB).CommitThen")
}

// openInline opens a database on disk whose syncs also note whether they
// ran on a writer's own goroutine; the flush loop never ticks.
func openInline(t *testing.T, disk *fakeDisk) (*DB, func() []bool) {
	t.Helper()
	var mu sync.Mutex
	var inline []bool
	db, err := open(Options{Dir: t.TempDir()}, deps{
		sync: func(real func() error, bdb *badger.DB) error {
			mu.Lock()
			inline = append(inline, onCallersGoroutine())
			mu.Unlock()
			return disk.sync(real, bdb)
		},
		flushTicker: func(time.Duration) (<-chan time.Time, func()) { return nil, func() {} },
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		close(disk.quit)
		closeWithin(t, db)
	})
	return db, func() []bool {
		mu.Lock()
		defer mu.Unlock()
		return append([]bool(nil), inline...)
	}
}

// A writer that waits anyway and finds the pipeline idle commits and
// syncs its own write, sparing two goroutine hand-offs; it still returns
// only once a sync that started after its commit has made it durable.
func TestCommitThenOnAnIdlePipelineCommitsAndSyncsInline(t *testing.T) {
	disk := newFakeDisk(false)
	db, syncs := openInline(t, disk)
	ctx := testCtx(t)

	k := probe("inline")
	var fnInline, thenDurable bool
	err := db.CommitThen(ctx, Strict, func(tx *Tx) error {
		fnInline = onCallersGoroutine()
		tx.Set(k, []byte("v"))
		return nil
	}, func(err error) { thenDurable = err == nil && disk.isDurable(k) })
	if err != nil {
		t.Fatal(err)
	}
	if !disk.isDurable(k) || !thenDurable {
		t.Fatalf("returned (then saw durable: %v) before the write was durable", thenDurable)
	}
	if got := syncs(); !fnInline || len(got) != 1 || !got[0] {
		t.Fatalf("writer ran inline: %v; syncs (true: inline) %v; want the write and its one sync on the caller's goroutine", fnInline, got)
	}
	if q, u := db.queued.Load(), db.unsynced.Load(); q != 0 || u != 0 {
		t.Fatalf("after the write: queued %d, unsynced %d; want 0 and 0", q, u)
	}

	// Relaxed too: committed on the caller's goroutine, and not synced.
	var relaxedInline bool
	if err := db.Commit(ctx, Relaxed, func(tx *Tx) error { relaxedInline = onCallersGoroutine(); return nil }); err != nil {
		t.Fatal(err)
	}
	if !relaxedInline || len(syncs()) != 1 {
		t.Fatalf("relaxed write inline: %v, syncs %v; want inline and no new sync", relaxedInline, syncs())
	}
}

// A write only skips the queue when the queue is empty: behind a write the
// commit loop holds, a waiting writer queues, and commits after it.
func TestCommitThenQueuesBehindEarlierWrites(t *testing.T) {
	db := openTest(t, t.TempDir())
	defer db.Close()
	ctx := testCtx(t)

	blocker, release := blockCommitLoop(t, db)
	defer release()
	var mu sync.Mutex
	var order []string
	queuedWrite := db.Submit(Relaxed, func(tx *Tx) error {
		mu.Lock()
		order = append(order, "submitted first")
		mu.Unlock()
		return nil
	})
	done := make(chan error, 1)
	var inline bool
	go func() {
		done <- db.CommitThen(ctx, Strict, func(tx *Tx) error {
			inline = onCallersGoroutine()
			mu.Lock()
			order = append(order, "committed later")
			mu.Unlock()
			return nil
		}, nil)
	}()
	select {
	case err := <-done:
		t.Fatalf("the waiting writer finished (%v) while an earlier write was held in the commit loop", err)
	case <-time.After(30 * time.Millisecond):
	}
	release()
	if err := within(t, done, "the waiting writer"); err != nil {
		t.Fatal(err)
	}
	for _, p := range []*Pending{blocker, queuedWrite} {
		if err := p.Wait(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if inline || len(order) != 2 || order[0] != "submitted first" {
		t.Fatalf("inline %v, order %q; want the queued write first and the waiting one after it, in the commit loop", inline, order)
	}
}

// An inline commit that finds a strict write waiting for the syncer hands
// its own to the syncer too: the sync already running started before its
// commit and must not release it.
func TestCommitThenBehindARunningSyncWaitsForTheNextOne(t *testing.T) {
	disk := newFakeDisk(true)
	db, syncs := openInline(t, disk)
	ctx := testCtx(t)

	k1, k2 := probe("first"), probe("second")
	w1 := db.Submit(Strict, func(tx *Tx) error { tx.Set(k1, []byte("1")); return nil })
	c1 := nextSync(t, disk, w1, "the submitted strict write")

	done := make(chan error, 1)
	var committedInline bool
	go func() {
		done <- db.CommitThen(ctx, Strict, func(tx *Tx) error {
			committedInline = onCallersGoroutine()
			tx.Set(k2, []byte("2"))
			return nil
		}, nil)
	}()
	waitFor(t, "the second write to commit", func() bool { _, err := get(t, db, k2); return err == nil })
	select {
	case err := <-done:
		t.Fatalf("the second write returned (%v) while the only sync was one that started before its commit", err)
	case <-time.After(30 * time.Millisecond):
	}
	reply(t, c1, nil)
	if err := w1.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	c2 := within(t, disk.calls, "a sync covering the second write")
	if !c2.committed[string(k2)] {
		t.Fatalf("sync %d started before the second write was committed", c2.n)
	}
	select {
	case err := <-done:
		t.Fatalf("the second write returned (%v) before its sync finished", err)
	case <-time.After(30 * time.Millisecond):
	}
	reply(t, c2, nil)
	if err := within(t, done, "the second write"); err != nil {
		t.Fatal(err)
	}
	if !disk.isDurable(k2) {
		t.Fatal("the second write returned but is not durable")
	}
	if got := syncs(); !committedInline || len(got) != 2 || got[0] || got[1] {
		t.Fatalf("second write committed inline: %v; syncs (true: inline) %v; want it committed inline and both syncs run by the syncer", committedInline, got)
	}
}

// A failed inline sync fails the writer, which learns it from CommitThen.
func TestCommitThenInlineSyncFailureIsReturned(t *testing.T) {
	disk := newFakeDisk(false)
	db, _ := openInline(t, disk)
	disk.mu.Lock()
	disk.failNext = errors.New("disk on fire")
	disk.mu.Unlock()
	var thenErr error
	err := db.CommitThen(testCtx(t), Strict, func(tx *Tx) error { tx.Set(probe("x"), nil); return nil }, func(err error) { thenErr = err })
	if err == nil || !strings.Contains(err.Error(), "disk on fire") || thenErr == nil {
		t.Fatalf("CommitThen = %v, then saw %v; want the sync's error in both", err, thenErr)
	}
	if u := db.unsynced.Load(); u != 0 {
		t.Fatalf("unsynced %d after a failed sync released its writer; want 0", u)
	}
}

func TestCommitThenAfterCloseFails(t *testing.T) {
	db := openTest(t, t.TempDir())
	closeWithin(t, db)
	ran := false
	err := db.CommitThen(testCtx(t), Strict, func(tx *Tx) error { ran = true; return nil }, nil)
	if !errors.Is(err, ErrClosed) || ran {
		t.Fatalf("CommitThen after Close = %v (writer ran: %v); want ErrClosed without running it", err, ran)
	}
}

// Inline and queued writers mixed under concurrency: every strict writer
// is durable when released, every write lands once, and the pipeline's
// counts return to zero.
func TestCommitThenUnderConcurrency(t *testing.T) {
	disk := newFakeDisk(false)
	db, _ := openInline(t, disk)
	ctx := testCtx(t)

	const workers, per = 16, 40
	var wg sync.WaitGroup
	errs := make(chan error, workers*per)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; i < per; i++ {
				k := probe(fmt.Sprintf("%02d/%02d", w, i))
				write := func(tx *Tx) error {
					_, err := tx.AddUint64([]byte("count"), 1)
					tx.Set(k, []byte("v"))
					return err
				}
				switch i % 4 {
				case 0, 1:
					if err := db.CommitThen(ctx, Strict, write, nil); err != nil {
						errs <- err
					} else if !disk.isDurable(k) {
						errs <- fmt.Errorf("strict write %s returned before it was durable", k)
					}
				case 2:
					if err := db.Commit(ctx, Relaxed, write); err != nil {
						errs <- err
					}
				default:
					if err := db.Submit(Strict, write).Wait(ctx); err != nil {
						errs <- err
					}
				}
			}
		}(w)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	var n uint64
	if err := db.View(func(r *Reader) error {
		v, err := r.Get([]byte("count"))
		if err == nil {
			n, err = DecodeUint64(v)
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if n != workers*per {
		t.Fatalf("counter %d after %d writes: a write was lost or applied twice", n, workers*per)
	}
	// A relaxed writer returns once committed, a moment before the commit
	// loop uncounts its group: the counts settle, they need not be 0 yet.
	waitFor(t, "the pipeline's counts to return to 0", func() bool { return db.queued.Load() == 0 && db.unsynced.Load() == 0 })
}
