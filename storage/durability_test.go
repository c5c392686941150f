package storage

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dgraph-io/badger/v4"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// These tests prove durability instead of assuming it: reopening after a
// clean Close, or after kill -9 (the OS page cache survives), cannot tell
// a synced write from an unsynced one. Here the pipeline's fsync is a fake
// that knows, at the moment each sync starts, which writes are committed,
// and a write counts as durable only once a sync that started after its
// commit has returned.

// probe keys are the ones the fake disk tracks.
var probePrefix = []byte("probe/")

func probe(name string) []byte { return append(append([]byte{}, probePrefix...), name...) }

// syncCall is one call of the fake fsync, announced to the test when the
// disk is gated.
type syncCall struct {
	n         int             // 1 for the first sync of the database
	committed map[string]bool // probe keys committed when the sync started
	reply     chan error      // the test's answer: nil lets the sync succeed
}

// fakeDisk is the pipeline's sync step for a test. Every sync first notes
// the committed probe keys; a gated disk then hands the call to the test
// and waits for its answer; a sync that succeeds calls Badger's real Sync
// and marks the keys it noted as durable.
type fakeDisk struct {
	calls chan *syncCall // nil: not gated
	quit  chan struct{}  // closed at cleanup: a gated sync stops waiting

	mu       sync.Mutex
	n        int
	durable  map[string]bool
	failNext error // the next sync fails with it (ungated disks)
}

func newFakeDisk(gated bool) *fakeDisk {
	d := &fakeDisk{quit: make(chan struct{}), durable: map[string]bool{}}
	if gated {
		d.calls = make(chan *syncCall)
	}
	return d
}

func (d *fakeDisk) sync(real func() error, bdb *badger.DB) error {
	committed := map[string]bool{}
	if err := bdb.View(func(txn *badger.Txn) error {
		return scan(txn, probePrefix, nil, false, func(k, _ []byte) (bool, error) {
			committed[string(k)] = true
			return true, nil
		})
	}); err != nil {
		return err
	}
	d.mu.Lock()
	d.n++
	c := &syncCall{n: d.n, committed: committed, reply: make(chan error, 1)}
	err := d.failNext
	d.failNext = nil
	d.mu.Unlock()
	if d.calls != nil {
		select {
		case d.calls <- c:
			select {
			case err = <-c.reply:
			case <-d.quit:
			}
		case <-d.quit:
		}
	}
	if err != nil {
		return err
	}
	if err := real(); err != nil {
		return err
	}
	d.mu.Lock()
	for k := range committed {
		d.durable[k] = true
	}
	d.mu.Unlock()
	return nil
}

func (d *fakeDisk) isDurable(key []byte) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.durable[string(key)]
}

func (d *fakeDisk) syncs() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.n
}

// fakeTicker is the flush loop's clock: it ticks only when the test says.
type fakeTicker struct {
	ticks  chan time.Time
	mu     sync.Mutex
	period time.Duration
}

func (f *fakeTicker) start(period time.Duration) (<-chan time.Time, func()) {
	f.mu.Lock()
	f.period = period
	f.mu.Unlock()
	return f.ticks, func() {}
}

// tick delivers one tick. The channel is unbuffered, so when tick returns
// the flush loop has taken it, and it has finished whatever an earlier
// tick started.
func (f *fakeTicker) tick(t *testing.T) {
	t.Helper()
	select {
	case f.ticks <- time.Now():
	case <-time.After(testWait):
		t.Fatalf("flush loop did not take a tick within %v", testWait)
	}
}

// openFake opens a database whose sync is disk and whose flush loop ticks
// on ticker (never, when ticker is nil). Cleanup unblocks the disk and
// closes the database, failing the test rather than hanging if Close does.
func openFake(t *testing.T, opts Options, disk *fakeDisk, ticker *fakeTicker) *DB {
	t.Helper()
	if opts.Dir == "" {
		opts.Dir = t.TempDir()
	}
	d := deps{sync: disk.sync, flushTicker: func(time.Duration) (<-chan time.Time, func()) { return nil, func() {} }}
	if ticker != nil {
		d.flushTicker = ticker.start
	}
	db, err := open(opts, d)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		close(disk.quit)
		closeWithin(t, db)
	})
	return db
}

// nextSync waits for the gated disk's next sync. It fails the test at once
// if p is released first: that is a strict write released without a sync.
func nextSync(t *testing.T, d *fakeDisk, p *Pending, what string) *syncCall {
	t.Helper()
	select {
	case c := <-d.calls:
		return c
	case <-p.Done():
		t.Fatalf("%s released (err %v) before any sync started after its commit", what, p.Err())
	case <-time.After(testWait):
		t.Fatalf("no sync started within %v for %s", testWait, what)
	}
	return nil
}

// notReleased fails the test if p is released within a short grace period.
func notReleased(t *testing.T, p *Pending, what string) {
	t.Helper()
	select {
	case <-p.Done():
		t.Fatalf("%s released (err %v) while the sync covering it was still running", what, p.Err())
	case <-time.After(30 * time.Millisecond):
	}
}

func reply(t *testing.T, c *syncCall, err error) {
	t.Helper()
	c.reply <- err // buffered: never blocks
}

// A strict writer is released only after a sync that started after its
// commit has returned: not before the sync, not without one, and not by a
// sync that was already running when it committed.
func TestStrictWriterWaitsForASyncStartedAfterItsCommit(t *testing.T) {
	disk := newFakeDisk(true)
	db := openFake(t, Options{}, disk, nil)
	ctx := testCtx(t)

	k1, k2 := probe("1"), probe("2")
	w1 := db.Submit(Strict, func(tx *Tx) error { tx.Set(k1, []byte("1")); return nil })
	c1 := nextSync(t, disk, w1, "strict write 1")
	if !c1.committed[string(k1)] {
		t.Fatalf("sync %d started before write 1 was committed, yet it is the sync that would release it", c1.n)
	}
	notReleased(t, w1, "strict write 1")

	// Write 2 arrives while sync 1 runs. Sync 1 started before write 2
	// could commit, so it must not release write 2 (the commit loop holds
	// it until sync 1 ends: see TestStrictWritesArrivingDuringASyncCommitAsOneGroup).
	w2 := db.Submit(Strict, func(tx *Tx) error { tx.Set(k2, []byte("2")); return nil })
	notReleased(t, w1, "strict write 1")
	notReleased(t, w2, "strict write 2")

	reply(t, c1, nil)
	if err := w1.Wait(ctx); err != nil {
		t.Fatalf("strict write 1 after its sync: %v", err)
	}
	if !disk.isDurable(k1) {
		t.Fatal("strict write 1 released but not durable")
	}

	c2 := nextSync(t, disk, w2, "strict write 2 (committed while sync 1 ran)")
	if !c2.committed[string(k2)] {
		t.Fatalf("sync %d started before write 2 was committed", c2.n)
	}
	notReleased(t, w2, "strict write 2")
	reply(t, c2, nil)
	if err := w2.Wait(ctx); err != nil {
		t.Fatalf("strict write 2 after its sync: %v", err)
	}
	if !disk.isDurable(k2) {
		t.Fatal("strict write 2 released but not durable")
	}
}

// Under concurrency, with groups overlapping syncs, every strict writer is
// durable by the time it is released: its then-callback (which runs just
// before Wait returns) and its Wait both see it covered by a completed sync
// that started after its commit.
func TestNoStrictWriterIsReleasedBeforeItIsDurable(t *testing.T) {
	disk := newFakeDisk(false)
	db := openFake(t, Options{}, disk, nil) // the flush loop never ticks
	ctx := testCtx(t)

	const workers, per = 16, 25
	var mu sync.Mutex
	var early, waited []string // released before durable: in then, after Wait
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; i < per; i++ {
				k := probe(fmt.Sprintf("%02d/%02d", w, i))
				d := Strict
				if i%5 == 4 {
					d = Relaxed // mixed in: they must not release strict ones early
				}
				p := db.SubmitThen(d, func(tx *Tx) error { tx.Set(k, []byte("v")); return nil }, func(err error) {
					if err == nil && d == Strict && !disk.isDurable(k) {
						mu.Lock()
						early = append(early, string(k))
						mu.Unlock()
					}
				})
				if err := p.Wait(ctx); err != nil {
					t.Errorf("%s: %v", k, err)
					return
				}
				if d == Strict && !disk.isDurable(k) {
					mu.Lock()
					waited = append(waited, string(k))
					mu.Unlock()
				}
			}
		}(w)
	}
	wg.Wait()
	if len(early) > 0 || len(waited) > 0 {
		t.Fatalf("strict writes released before a sync that started after their commit returned: %d seen by then-callbacks, %d by Wait (e.g. %q)",
			len(early), len(waited), append(early, waited...)[0])
	}
	t.Logf("%d syncs for %d strict writes", disk.syncs(), workers*per*4/5)
}

// A failing sync is an error for every strict writer it would have
// released, is logged, and the pipeline goes on.
func TestSyncErrorReachesStrictWriters(t *testing.T) {
	core, logs := observer.New(zapcore.ErrorLevel)
	disk := newFakeDisk(true)
	db := openFake(t, Options{Logger: zap.New(core)}, disk, nil)
	ctx := testCtx(t)

	var thenErr error
	thenDone := make(chan struct{})
	w := db.SubmitThen(Strict, func(tx *Tx) error { tx.Set(probe("a"), []byte("1")); return nil }, func(err error) {
		thenErr = err
		close(thenDone)
	})
	c := nextSync(t, disk, w, "strict write")
	diskFull := errors.New("no space left on device")
	reply(t, c, diskFull)
	err := w.Wait(ctx)
	if !errors.Is(err, diskFull) || !strings.Contains(err.Error(), "storage: sync: ") {
		t.Fatalf("strict write whose sync failed: Wait = %v, want the sync error", err)
	}
	within(t, thenDone, "the then-callback")
	if !errors.Is(thenErr, diskFull) {
		t.Fatalf("then-callback of a strict write whose sync failed got %v", thenErr)
	}
	if logs.FilterMessage("syncing committed writes").Len() == 0 {
		t.Fatal("failed sync not logged")
	}

	// The next write gets its own sync and succeeds.
	w2 := db.Submit(Strict, func(tx *Tx) error { tx.Set(probe("b"), []byte("1")); return nil })
	reply(t, nextSync(t, disk, w2, "strict write after the failure"), nil)
	if err := w2.Wait(ctx); err != nil {
		t.Fatalf("strict write after a failed sync: %v", err)
	}
}

// Relaxed writers are released at commit, without a sync, and the flush
// loop, which ticks every FlushInterval, syncs them at the first tick after
// their commit; a failed flush is retried on the next tick. The clock is
// the test's, so nothing here depends on timing.
// A relaxed commit returns while no sync can complete: every sync of this
// disk waits for the test, which answers none.
func TestRelaxedCommitDoesNotWaitForSync(t *testing.T) {
	disk := newFakeDisk(true)
	clock := &fakeTicker{ticks: make(chan time.Time)}
	db := openFake(t, Options{}, disk, clock)
	if err := db.Commit(testCtx(t), Relaxed, func(tx *Tx) error { tx.Set(probe("r"), []byte("1")); return nil }); err != nil {
		t.Fatalf("relaxed commit: %v", err)
	}
	if disk.isDurable(probe("r")) {
		t.Fatal("the write is durable although no sync completed")
	}
}

func TestRelaxedWritesAreSyncedWithinOneFlushInterval(t *testing.T) {
	core, logs := observer.New(zapcore.ErrorLevel)
	disk := newFakeDisk(false)
	clock := &fakeTicker{ticks: make(chan time.Time)}
	db := openFake(t, Options{FlushInterval: 7 * time.Millisecond, Logger: zap.New(core)}, disk, clock)
	ctx := testCtx(t)

	// Nothing written: ticks do not sync.
	clock.tick(t) // the flush loop has started its ticker
	clock.tick(t)
	clock.mu.Lock()
	period := clock.period
	clock.mu.Unlock()
	if period != 7*time.Millisecond {
		t.Fatalf("flush loop ticks every %v, want FlushInterval (7ms)", period)
	}
	if n := disk.syncs(); n != 0 {
		t.Fatalf("%d syncs with nothing written", n)
	}

	r1 := probe("r1")
	if err := db.Commit(ctx, Relaxed, func(tx *Tx) error { tx.Set(r1, []byte("1")); return nil }); err != nil {
		t.Fatal(err)
	}
	// No sync count is checked here: the tick taken last above may still
	// be running and see this write (TestRelaxedCommitDoesNotWaitForSync
	// shows the commit does not wait).
	clock.tick(t) // one flush interval later
	clock.tick(t) // returns once the first tick's sync has returned
	if !disk.isDurable(r1) {
		t.Fatal("relaxed write not synced by the first flush tick after its commit")
	}
	if n := disk.syncs(); n != 1 {
		t.Fatalf("%d syncs after one relaxed write, want 1", n)
	}

	// A failed flush leaves the write pending; the next tick syncs it.
	r2 := probe("r2")
	if err := db.Commit(ctx, Relaxed, func(tx *Tx) error { tx.Set(r2, []byte("1")); return nil }); err != nil {
		t.Fatal(err)
	}
	disk.mu.Lock()
	disk.failNext = errors.New("I/O error")
	disk.mu.Unlock()
	clock.tick(t)
	clock.tick(t) // the failed flush is done; this tick retries
	clock.tick(t) // and the retry is done
	if logs.FilterMessage("syncing relaxed writes").Len() != 1 {
		t.Fatal("failed flush not logged")
	}
	if !disk.isDurable(r2) {
		t.Fatal("relaxed write not synced on the tick after a failed flush")
	}
	if n := disk.syncs(); n != 3 {
		t.Fatalf("%d syncs, want 3 (one, a failure, its retry)", n)
	}
}

// DB.Sync and Close go through the same sync step.
func TestSyncAndCloseUseTheSyncStep(t *testing.T) {
	disk := newFakeDisk(false)
	dir := t.TempDir()
	db := openFake(t, Options{Dir: dir}, disk, nil)
	if err := db.Commit(testCtx(t), Relaxed, func(tx *Tx) error { tx.Set(probe("s"), []byte("1")); return nil }); err != nil {
		t.Fatal(err)
	}
	if err := db.Sync(); err != nil {
		t.Fatal(err)
	}
	if !disk.isDurable(probe("s")) {
		t.Fatal("DB.Sync did not go through the sync step")
	}
	disk.mu.Lock()
	disk.failNext = errors.New("I/O error")
	disk.mu.Unlock()
	if err := db.Close(); err == nil || !strings.Contains(err.Error(), "I/O error") {
		t.Fatalf("Close with a failing sync: %v", err)
	}
}

// testWait bounds every wait in this package's tests: a pipeline that
// loses a writer fails a test with a message instead of hanging it.
const testWait = 10 * time.Second

func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*testWait)
	t.Cleanup(cancel)
	return ctx
}

// within waits for ch to yield or close, failing the test after testWait.
func within[T any](t testing.TB, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(testWait):
		t.Fatalf("timed out after %v waiting for %s", testWait, what)
	}
	var zero T
	return zero
}

// park blocks a pipeline callback until release, or testWait at most, so a
// failed test cannot leave the pipeline (and its Close) stuck.
func park(release <-chan struct{}) {
	select {
	case <-release:
	case <-time.After(testWait):
	}
}

// closeWithin closes db, failing the test if Close does not return.
func closeWithin(t testing.TB, db *DB) {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- db.Close() }()
	select {
	case <-done:
	case <-time.After(2 * testWait):
		t.Errorf("Close did not return within %v", 2*testWait)
	}
}
