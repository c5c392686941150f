package storage

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

func isClosed(db *DB) bool {
	db.closeMu.RLock()
	defer db.closeMu.RUnlock()
	return db.closed
}

func isDone(p *Pending) bool {
	select {
	case <-p.Done():
		return true
	default:
		return false
	}
}

// blockCommitLoop submits a writer that parks the commit loop inside its
// function until the returned release is called.
func blockCommitLoop(t *testing.T, db *DB) (blocker *Pending, release func()) {
	t.Helper()
	entered, gate := make(chan struct{}), make(chan struct{})
	blocker = db.Submit(Relaxed, func(tx *Tx) error {
		close(entered)
		park(gate)
		return nil
	})
	within(t, entered, "the commit loop to run the blocking writer")
	var once sync.Once
	return blocker, func() { once.Do(func() { close(gate) }) }
}

func TestOpenTakesDocumentedDefaults(t *testing.T) {
	dir := t.TempDir()
	db, err := Open(Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if db.Dir() != dir {
		t.Errorf("Dir() = %q, want %q", db.Dir(), dir)
	}
	if db.opts.FlushInterval != time.Second || db.opts.MaxBatch != 256 || db.opts.GCInterval != 10*time.Minute || db.opts.Logger == nil {
		t.Errorf("defaults = flush %v, batch %d, gc %v, logger %v", db.opts.FlushInterval, db.opts.MaxBatch, db.opts.GCInterval, db.opts.Logger)
	}
	if cap(db.queue) != 4*256 {
		t.Errorf("queue capacity %d, want %d", cap(db.queue), 4*256)
	}

	db2, err := Open(Options{Dir: t.TempDir(), FlushInterval: 3 * time.Millisecond, MaxBatch: 7, GCInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer db2.Close()
	if db2.opts.FlushInterval != 3*time.Millisecond || db2.opts.MaxBatch != 7 || db2.opts.GCInterval != time.Hour || cap(db2.queue) != 28 {
		t.Errorf("explicit options not kept: %+v, queue %d", db2.opts, cap(db2.queue))
	}
}

func TestOpenFailsWhenDirCannotBeCreated(t *testing.T) {
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	db, err := Open(Options{Dir: filepath.Join(file, "db")})
	if err == nil {
		db.Close()
		t.Fatal("Open under a regular file succeeded")
	}
	if !strings.Contains(err.Error(), "storage: creating ") || !strings.Contains(err.Error(), file) {
		t.Fatalf("error %q does not name the directory it could not create", err)
	}
}

func TestSyncPersistsRelaxedWrites(t *testing.T) {
	dir := t.TempDir()
	// A flush interval far beyond the test: only Sync and Close sync.
	db, err := Open(Options{Dir: dir, FlushInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Commit(testCtx(t), Relaxed, func(tx *Tx) error { tx.Set([]byte("k"), []byte("v")); return nil }); err != nil {
		t.Fatal(err)
	}
	if err := db.Sync(); err != nil {
		t.Fatalf("Sync: %v", err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	db = openTest(t, dir)
	defer db.Close()
	if v, err := get(t, db, []byte("k")); err != nil || string(v) != "v" {
		t.Fatalf("after Sync and reopen: %q %v", v, err)
	}
}

// Strict writers are released by the syncer, after the fsync that
// follows their commit; relaxed writers are released at commit, so a busy
// syncer delays the first but never the second.
func TestStrictWaitsForSyncerRelaxedDoesNot(t *testing.T) {
	db := openTest(t, t.TempDir())
	defer db.Close()
	ctx := testCtx(t)

	// The syncer runs the then-callback of strict writes: park it there.
	inSyncer, release := make(chan struct{}), make(chan struct{})
	first := db.SubmitThen(Strict, func(tx *Tx) error { tx.Set([]byte("s1"), []byte("1")); return nil }, func(err error) {
		close(inSyncer)
		park(release)
	})
	within(t, inSyncer, "the syncer to run the first write's callback")

	// Relaxed: done at commit although the syncer is busy.
	relaxedCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := db.Commit(relaxedCtx, Relaxed, func(tx *Tx) error { tx.Set([]byte("r"), []byte("1")); return nil }); err != nil {
		t.Fatalf("relaxed write waited for the syncer: %v", err)
	}

	// Strict: committed (readable) but not done until the syncer has synced it.
	var synced atomic.Bool
	second := db.SubmitThen(Strict, func(tx *Tx) error { tx.Set([]byte("s2"), []byte("2")); return nil }, func(err error) {
		if err == nil {
			synced.Store(true)
		}
	})
	third := db.Submit(Strict, func(tx *Tx) error { tx.Set([]byte("s3"), []byte("3")); return nil })
	waitFor(t, "the strict writes to commit", func() bool {
		_, err2 := get(t, db, []byte("s2"))
		_, err3 := get(t, db, []byte("s3"))
		return err2 == nil && err3 == nil
	})
	time.Sleep(20 * time.Millisecond)
	if isDone(first) || isDone(second) || isDone(third) || synced.Load() {
		t.Fatal("a strict write was released before the syncer synced it")
	}
	close(release)
	for i, p := range []*Pending{first, second, third} {
		if err := p.Wait(ctx); err != nil {
			t.Fatalf("strict write %d: %v", i+1, err)
		}
	}
	if !synced.Load() {
		t.Fatal("then-callback of a strict write did not see success")
	}
}

// Close finishes strict groups the commit loop handed to the syncer but the
// syncer had not synced yet, and does not return before they are released.
func TestCloseDrainsTheSyncQueue(t *testing.T) {
	dir := t.TempDir()
	db := openTest(t, dir)
	inSyncer, release := make(chan struct{}), make(chan struct{})
	first := db.SubmitThen(Strict, func(tx *Tx) error { tx.Set([]byte("a"), []byte("1")); return nil }, func(error) {
		close(inSyncer)
		park(release)
	})
	within(t, inSyncer, "the syncer to run the first write's callback")
	second := db.Submit(Strict, func(tx *Tx) error { tx.Set([]byte("b"), []byte("2")); return nil })
	waitFor(t, "the second group to reach the sync queue", func() bool { return len(db.syncQ) == 1 })

	closed := make(chan error, 1)
	go func() { closed <- db.Close() }()
	waitFor(t, "Close to start", func() bool { return isClosed(db) })
	// Let the commit loop see stop and close the sync queue behind the
	// group still waiting in it.
	time.Sleep(50 * time.Millisecond)
	select {
	case err := <-closed:
		t.Fatalf("Close returned (%v) while the syncer still held a group", err)
	default:
	}
	if isDone(second) {
		t.Fatal("queued strict write released before it was synced")
	}
	close(release)
	if err := within(t, closed, "Close"); err != nil {
		t.Fatalf("Close: %v", err)
	}
	for i, p := range []*Pending{first, second} {
		if !isDone(p) || p.Err() != nil {
			t.Fatalf("write %d after Close: done %v err %v", i+1, isDone(p), p.Err())
		}
	}
	db = openTest(t, dir)
	defer db.Close()
	for _, k := range []string{"a", "b"} {
		if _, err := get(t, db, []byte(k)); err != nil {
			t.Fatalf("%s lost: %v", k, err)
		}
	}
}

// Writes still in the submit queue when Close is called are committed
// before Close returns, group by group.
func TestCloseCommitsWritesStillQueued(t *testing.T) {
	// The commit loop picks between the queue and stop at random; with one
	// write a group and four queued writes, stop wins at least once in
	// all but 1/16 of the runs. Every run must keep every write.
	for run := 0; run < 4; run++ {
		dir := t.TempDir()
		db, err := Open(Options{Dir: dir, MaxBatch: 1, FlushInterval: time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		blocker, release := blockCommitLoop(t, db)
		var ps []*Pending
		for i := 0; i < 4; i++ {
			k := SpaceTask.Key(EncodeUint64(uint64(i)))
			d := Strict
			if i%2 == 1 {
				d = Relaxed
			}
			ps = append(ps, db.Submit(d, func(tx *Tx) error { tx.Set(k, []byte("x")); return nil }))
		}
		closed := make(chan error, 1)
		go func() { closed <- db.Close() }()
		waitFor(t, "Close to start", func() bool { return isClosed(db) })
		release()
		if err := within(t, closed, "Close"); err != nil {
			t.Fatalf("run %d: Close: %v", run, err)
		}
		for i, p := range append([]*Pending{blocker}, ps...) {
			if !isDone(p) || p.Err() != nil {
				t.Fatalf("run %d: write %d after Close: done %v err %v", run, i, isDone(p), p.Err())
			}
		}
		db = openTest(t, dir)
		n := 0
		db.View(func(r *Reader) error {
			return r.Scan(SpaceTask.Prefix(), false, func(k, v []byte) (bool, error) { n++; return true, nil })
		})
		db.Close()
		if n != 4 {
			t.Fatalf("run %d: %d of 4 queued writes survived Close", run, n)
		}
	}
}

// When a group is split, the writer that did not fit runs again on a
// fresh transaction; if it fails then, it alone fails and leaves nothing.
func TestWriterFailingOnRerunAfterSplit(t *testing.T) {
	db := openTest(t, t.TempDir())
	defer db.Close()
	half := bytes.Repeat([]byte("v"), int(db.bdb.MaxBatchSize()/2))
	_, release := blockCommitLoop(t, db)

	var aRuns, bRuns atomic.Int32
	a := db.Submit(Strict, func(tx *Tx) error {
		aRuns.Add(1)
		tx.Set([]byte("a"), half)
		return nil
	})
	rerun := errors.New("second run refused")
	b := db.Submit(Strict, func(tx *Tx) error {
		if bRuns.Add(1) > 1 {
			return rerun
		}
		tx.Set([]byte("b"), half)
		return nil
	})
	release()
	ctx := testCtx(t)
	if err := a.Wait(ctx); err != nil {
		t.Fatalf("first writer: %v", err)
	}
	if err := b.Wait(ctx); !errors.Is(err, rerun) {
		t.Fatalf("second writer: err %v, want its rerun error", err)
	}
	if aRuns.Load() != 1 || bRuns.Load() != 2 {
		t.Fatalf("runs: a %d, b %d; want 1 and 2 (b rerun after the split)", aRuns.Load(), bRuns.Load())
	}
	if v, err := get(t, db, []byte("a")); err != nil || len(v) != len(half) {
		t.Fatalf("a: %d bytes, %v", len(v), err)
	}
	if _, err := get(t, db, []byte("b")); !errors.Is(err, ErrNotFound) {
		t.Fatalf("b stored although its rerun failed: %v", err)
	}
}

// The split also happens on the number of keys, not only on bytes.
func TestGroupIsSplitOnKeyCount(t *testing.T) {
	db := openTest(t, t.TempDir())
	defer db.Close()
	maxCount := int(db.bdb.MaxBatchCount())
	per := maxCount * 4 / 10 // two fit under the 80 % limit, three do not
	_, release := blockCommitLoop(t, db)
	var ps []*Pending
	for w := 0; w < 3; w++ {
		w := w
		ps = append(ps, db.Submit(Strict, func(tx *Tx) error {
			for i := 0; i < per; i++ {
				tx.Set(SpaceUsage.Key([]byte{byte('a' + w)}, EncodeUint64(uint64(i))), nil)
			}
			return nil
		}))
	}
	// One writer alone above the key limit is refused outright.
	tooMany := db.Submit(Strict, func(tx *Tx) error {
		for i := 0; i < maxCount*9/10; i++ {
			tx.Set(SpaceTask.Key(EncodeUint64(uint64(i))), nil)
		}
		return nil
	})
	release()
	ctx := testCtx(t)
	for i, p := range ps {
		if err := p.Wait(ctx); err != nil {
			t.Fatalf("writer %d: %v", i, err)
		}
	}
	if err := tooMany.Wait(ctx); err == nil || !strings.Contains(err.Error(), "exceeds the transaction limit") {
		t.Fatalf("oversized key count: %v", err)
	}
	counts := map[byte]int{}
	db.View(func(r *Reader) error {
		return r.Scan(SpaceUsage.Prefix(), false, func(k, v []byte) (bool, error) { counts[k[1]]++; return true, nil })
	})
	for w := byte(0); w < 3; w++ {
		if counts['a'+w] != per {
			t.Fatalf("writer %d stored %d of %d keys", w, counts['a'+w], per)
		}
	}
	n := 0
	db.View(func(r *Reader) error {
		return r.Scan(SpaceTask.Prefix(), false, func(k, v []byte) (bool, error) { n++; return true, nil })
	})
	if n != 0 {
		t.Fatalf("refused writer left %d keys", n)
	}
}

// hugeKey is longer than Badger accepts (65000 bytes).
var hugeKey = SpaceTask.Key(bytes.Repeat([]byte("k"), 65001))

// A writer staging a key Badger refuses fails, leaves nothing behind, and
// the writers queued after it in the same group still commit. Writers
// staged before it must end consistent: done with their writes stored, or
// failed with nothing stored (TestInvalidKeyFailsOnlyItsOwnWriter asks
// for more).
func TestKeyBadgerRefusesFailsItsWriter(t *testing.T) {
	db := openTest(t, t.TempDir())
	defer db.Close()
	_, release := blockCommitLoop(t, db)
	before := db.Submit(Strict, func(tx *Tx) error { tx.Set([]byte("before"), []byte("1")); return nil })
	bad := db.Submit(Strict, func(tx *Tx) error {
		tx.Set([]byte("bad-ok-part"), []byte("1"))
		tx.Set(hugeKey, []byte("1"))
		return nil
	})
	after := db.Submit(Strict, func(tx *Tx) error { tx.Set([]byte("after"), []byte("1")); return nil })
	release()
	ctx := testCtx(t)
	if err := bad.Wait(ctx); err == nil || !strings.Contains(err.Error(), "over the limit") {
		t.Fatalf("writer with a huge key: %v", err)
	}
	if _, err := get(t, db, []byte("bad-ok-part")); !errors.Is(err, ErrNotFound) {
		t.Fatalf("half of the refused writer was stored: %v", err)
	}
	if err := after.Wait(ctx); err != nil {
		t.Fatalf("writer after the refused one: %v", err)
	}
	if _, err := get(t, db, []byte("after")); err != nil {
		t.Fatalf("writer after the refused one not stored: %v", err)
	}
	errBefore := before.Wait(ctx)
	_, getErr := get(t, db, []byte("before"))
	if (errBefore == nil) != (getErr == nil) {
		t.Fatalf("writer before the refused one: Wait %v but stored-read %v", errBefore, getErr)
	}
	// The pipeline goes on.
	if err := db.Commit(ctx, Strict, func(tx *Tx) error { tx.Set([]byte("later"), []byte("1")); return nil }); err != nil {
		t.Fatal(err)
	}
}

// Was a bug: commit.go:210-220 (commitGroup) fails every writer already staged in
// the shared transaction when a later writer of the same group stages a key
// Badger refuses (empty, reserved !badger! prefix, or longer than 65000
// bytes): an innocent writer gets "storage: staging write: Key with size
// 65002 exceeded 65000 limit" for another caller's write. Only the
// offending writer should fail, as with a writer that returns an error or
// panics.
func TestInvalidKeyFailsOnlyItsOwnWriter(t *testing.T) {
	db := openTest(t, t.TempDir())
	defer db.Close()
	_, release := blockCommitLoop(t, db)
	before := db.Submit(Strict, func(tx *Tx) error { tx.Set([]byte("before"), []byte("1")); return nil })
	bad := db.Submit(Strict, func(tx *Tx) error { tx.Set(hugeKey, []byte("1")); return nil })
	release()
	ctx := testCtx(t)
	if err := bad.Wait(ctx); err == nil {
		t.Fatal("huge key accepted")
	}
	if err := before.Wait(ctx); err != nil {
		t.Fatalf("innocent writer failed: %v", err)
	}
	if _, err := get(t, db, []byte("before")); err != nil {
		t.Fatalf("innocent writer not stored: %v", err)
	}
}

// Counter reads of a key Badger refuses are errors, not a silent zero.
func TestCounterOnInvalidKeyIsAnError(t *testing.T) {
	db := openTest(t, t.TempDir())
	defer db.Close()
	err := db.Commit(testCtx(t), Strict, func(tx *Tx) error {
		_, err := tx.AddUint64([]byte{}, 1)
		return err
	})
	if err == nil || !strings.Contains(err.Error(), "empty") {
		t.Fatalf("AddUint64 on an empty key: %v", err)
	}
}

// A failed commit fails every writer of its group with a storage error,
// is logged, and the pipeline goes on once Badger accepts writes again.
func TestCommitErrorFailsTheGroupAndIsLogged(t *testing.T) {
	core, logs := observer.New(zapcore.ErrorLevel)
	db, err := Open(Options{Dir: t.TempDir(), Logger: zap.New(core)})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	// A stream writer's Prepare blocks every other write to Badger until
	// it is cancelled: commits fail meanwhile.
	sw := db.bdb.NewStreamWriter()
	if err := sw.Prepare(); err != nil {
		t.Fatal(err)
	}
	_, release := blockCommitLoop(t, db)
	ctx := testCtx(t)
	var ps []*Pending
	for i, d := range []Durability{Strict, Relaxed, Strict} {
		k := []byte{'k', byte('0' + i)}
		ps = append(ps, db.Submit(d, func(tx *Tx) error { tx.Set(k, []byte("v")); return nil }))
	}
	release()
	for i, p := range ps {
		if err := p.Wait(ctx); err == nil || !strings.Contains(err.Error(), "storage: commit: ") {
			t.Fatalf("writer %d during blocked writes: %v", i, err)
		}
	}
	if got := logs.FilterMessage("committing write group").Len(); got == 0 {
		t.Fatal("failed commit not logged")
	}
	sw.Cancel()
	if err := db.Commit(ctx, Strict, func(tx *Tx) error { tx.Set([]byte("again"), []byte("v")); return nil }); err != nil {
		t.Fatalf("after writes resume: %v", err)
	}
	if _, err := get(t, db, []byte("again")); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"k0", "k1", "k2"} {
		if _, err := get(t, db, []byte(k)); !errors.Is(err, ErrNotFound) {
			t.Fatalf("%s of a failed commit is readable: %v", k, err)
		}
	}
}

// The value-log GC runs on its interval (Badger reports each attempt) and
// stops with Close.
func TestGCLoopRunsOnItsIntervalAndStopsAtClose(t *testing.T) {
	core, logs := observer.New(zapcore.DebugLevel)
	db, err := Open(Options{Dir: t.TempDir(), Logger: zap.New(core), GCInterval: 2 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	gcRuns := func() int { return logs.FilterMessage("badger: No file with discard stats").Len() }
	waitFor(t, "several GC runs", func() bool { return gcRuns() >= 3 })
	for _, e := range logs.FilterMessage("badger: No file with discard stats").All() {
		if e.Level != zapcore.DebugLevel {
			t.Fatalf("Badger debug line logged at %v", e.Level)
		}
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	n := gcRuns()
	time.Sleep(30 * time.Millisecond)
	if gcRuns() != n {
		t.Fatalf("GC still running after Close: %d runs, then %d", n, gcRuns())
	}
}

// Badger's own lines reach the logger with a prefix; its chatty info level
// is demoted to debug.
func TestBadgerLoggerLevels(t *testing.T) {
	core, logs := observer.New(zapcore.DebugLevel)
	l := badgerLogger{zap.New(core).Sugar()}
	l.Errorf("e %d", 1)
	l.Warningf("w %d", 2)
	l.Infof("i %d", 3)
	l.Debugf("d %d", 4)
	want := []struct {
		level zapcore.Level
		msg   string
	}{
		{zapcore.ErrorLevel, "badger: e 1"},
		{zapcore.WarnLevel, "badger: w 2"},
		{zapcore.DebugLevel, "badger: i 3"},
		{zapcore.DebugLevel, "badger: d 4"},
	}
	got := logs.All()
	if len(got) != len(want) {
		t.Fatalf("%d lines, want %d", len(got), len(want))
	}
	for i, w := range want {
		if got[i].Level != w.level || got[i].Message != w.msg {
			t.Errorf("line %d = %v %q, want %v %q", i, got[i].Level, got[i].Message, w.level, w.msg)
		}
	}
}

// Reverse ScanFrom from a key that is not stored starts at the largest
// stored key below it, and stays inside the prefix.
func TestScanFromReverseBetweenKeys(t *testing.T) {
	db := openTest(t, t.TempDir())
	defer db.Close()
	_ = db.Commit(testCtx(t), Strict, func(tx *Tx) error {
		for _, i := range []uint64{10, 20, 30, 40} {
			tx.Set(SpaceUsage.Key([]byte("a"), EncodeUint64(i)), []byte{byte(i)})
		}
		tx.Set(SpaceUsage.Key([]byte("b"), EncodeUint64(0)), []byte{99})
		tx.Set(SpaceTask.Key([]byte("a")), []byte{98})
		return nil
	})
	pa := SpaceUsage.Prefix([]byte("a"))
	scan := func(seek []byte, reverse bool) []byte {
		var out []byte
		if err := db.View(func(r *Reader) error {
			return r.ScanFrom(pa, seek, reverse, func(k, v []byte) (bool, error) { out = append(out, v[0]); return true, nil })
		}); err != nil {
			t.Fatal(err)
		}
		return out
	}
	if got := scan(SpaceUsage.Key([]byte("a"), EncodeUint64(25)), true); !bytes.Equal(got, []byte{20, 10}) {
		t.Errorf("reverse from 25 = %v, want [20 10]", got)
	}
	if got := scan(SpaceUsage.Key([]byte("a"), EncodeUint64(25)), false); !bytes.Equal(got, []byte{30, 40}) {
		t.Errorf("forward from 25 = %v, want [30 40]", got)
	}
	if got := scan(SpaceUsage.Key([]byte("a"), EncodeUint64(5)), true); len(got) != 0 {
		t.Errorf("reverse from below the first key = %v, want nothing", got)
	}
	if got := scan(nil, true); !bytes.Equal(got, []byte{40, 30, 20, 10}) {
		t.Errorf("reverse from the end = %v", got)
	}
}

// Keys Badger would refuse are refused before staging, each naming why.
func TestInvalidKeysAreRefusedBeforeStaging(t *testing.T) {
	db := openTest(t, t.TempDir())
	defer db.Close()
	for _, tc := range []struct {
		key  []byte
		want string
	}{{nil, "empty key"}, {[]byte("!badger!head"), "reserved namespace"}, {hugeKey, "over the limit"}} {
		err := db.Commit(testCtx(t), Strict, func(tx *Tx) error { tx.Set(tc.key, []byte("v")); return nil })
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Fatalf("key %.20q: %v, want %q", tc.key, err, tc.want)
		}
	}
}
