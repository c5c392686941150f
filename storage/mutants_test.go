package storage

import (
	"bytes"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// The tests in this file pin down behaviour that mutation testing
// (gremlins) showed the other tests left open: exact limits, group sizes,
// and the edges of the key encodings.

// Empty parts are parts: each one but the first adds a separator.
func TestKeyOfEmptyParts(t *testing.T) {
	for _, tc := range []struct {
		parts [][]byte
		want  string
	}{
		{nil, "t"},
		{[][]byte{nil}, "t"},
		{[][]byte{nil, nil}, "t\x00"},
		{[][]byte{{}, {}, {}}, "t\x00\x00"},
		{[][]byte{[]byte("a"), nil, nil, nil}, "ta\x00\x00\x00"},
	} {
		if got := SpaceTask.Key(tc.parts...); string(got) != tc.want {
			t.Errorf("Key(%q) = %q, want %q", tc.parts, got, tc.want)
		}
	}
	if got := SpaceTask.Prefix(nil, nil); string(got) != "t\x00\x00" {
		t.Errorf("Prefix of two empty parts = %q", got)
	}
}

// A length that runs one or a few bytes past the end of the key is
// malformed, also when the key's buffer has room behind it.
func TestSplitSizedRefusesLengthsPastTheEnd(t *testing.T) {
	s := byte(SpaceDelRevoke)
	for _, key := range [][]byte{
		{s, 2, 'a'},
		{s, 3, 'a', 'b'},
		{s, 1, 'a', 2, 'b'},
		{s, 1, 'a', 3, 'b', 'c'},
	} {
		roomy := append(make([]byte, 0, 64), key...)
		for _, k := range [][]byte{roomy, key} {
			parts, err := SplitSized(k)
			if !errors.Is(err, ErrBadKey) {
				t.Errorf("SplitSized(%q) (cap %d) = %q, %v; want ErrBadKey", k, cap(k), parts, err)
			}
		}
	}
}

// mutantsBatchLimits are the pipeline's limits on one transaction: 80 %
// of Badger's, in bytes as the pipeline estimates them and in keys.
func mutantsBatchLimits(db *DB) (maxSize, maxCount int) {
	return int(db.bdb.MaxBatchSize() * 8 / 10), int(db.bdb.MaxBatchCount() * 8 / 10)
}

// The pipeline estimates each entry at key + value + 32 bytes.
const entryOverhead = 32

// A writer exactly at the transaction limit, in bytes or in keys, fits:
// only a writer over it is refused.
func TestWriterExactlyAtTheLimitFits(t *testing.T) {
	db := openTest(t, t.TempDir())
	defer db.Close()
	ctx := testCtx(t)
	maxSize, maxCount := mutantsBatchLimits(db)

	key := []byte("exact-bytes")
	val := bytes.Repeat([]byte("v"), maxSize-len(key)-entryOverhead)
	if err := db.Commit(ctx, Strict, func(tx *Tx) error { tx.Set(key, val); return nil }); err != nil {
		t.Fatalf("writer of exactly %d estimated bytes: %v", maxSize, err)
	}
	if v, err := get(t, db, key); err != nil || len(v) != len(val) {
		t.Fatalf("writer at the byte limit: stored %d bytes, %v", len(v), err)
	}
	over := bytes.Repeat([]byte("v"), len(val)+1)
	if err := db.Commit(ctx, Strict, func(tx *Tx) error { tx.Set([]byte("overs-bytes"), over); return nil }); err == nil ||
		!strings.Contains(err.Error(), "exceeds the transaction limit") {
		t.Fatalf("writer one byte over the limit: %v", err)
	}

	countKeys := func(space Space, n int) func(tx *Tx) error {
		return func(tx *Tx) error {
			for i := 0; i < n; i++ {
				tx.Set(space.Key(EncodeUint64(uint64(i))), nil)
			}
			return nil
		}
	}
	if err := db.Commit(ctx, Strict, countKeys(SpaceUsage, maxCount)); err != nil {
		t.Fatalf("writer of exactly %d keys: %v", maxCount, err)
	}
	n := 0
	db.View(func(r *Reader) error {
		return r.Scan(SpaceUsage.Prefix(), false, func(k, v []byte) (bool, error) { n++; return true, nil })
	})
	if n != maxCount {
		t.Fatalf("writer at the key limit stored %d of %d keys", n, maxCount)
	}
	if err := db.Commit(ctx, Strict, countKeys(SpaceAudit, maxCount+1)); err == nil ||
		!strings.Contains(err.Error(), "exceeds the transaction limit") {
		t.Fatalf("writer one key over the limit: %v", err)
	}
}

// Two writers that together are exactly at the limit share one
// transaction: the second is not split off into another and run again.
func TestGroupExactlyAtTheLimitIsNotSplit(t *testing.T) {
	db := openTest(t, t.TempDir())
	defer db.Close()
	ctx := testCtx(t)
	maxSize, maxCount := mutantsBatchLimits(db)

	for _, tc := range []struct {
		name   string
		first  func(tx *Tx)
		second func(tx *Tx)
	}{
		{
			name: "bytes",
			first: func(tx *Tx) {
				tx.Set([]byte("b1"), bytes.Repeat([]byte("1"), maxSize/2-2-entryOverhead))
			},
			second: func(tx *Tx) {
				tx.Set([]byte("b2"), bytes.Repeat([]byte("2"), maxSize-maxSize/2-2-entryOverhead))
			},
		},
		{
			name: "keys",
			first: func(tx *Tx) {
				for i := 0; i < maxCount/2; i++ {
					tx.Set(SpaceCounter.Key([]byte("a"), EncodeUint64(uint64(i))), nil)
				}
			},
			second: func(tx *Tx) {
				for i := 0; i < maxCount-maxCount/2; i++ {
					tx.Set(SpaceCounter.Key([]byte("b"), EncodeUint64(uint64(i))), nil)
				}
			},
		},
	} {
		_, release := blockCommitLoop(t, db)
		var firstRuns, secondRuns atomic.Int32
		first := db.Submit(Strict, func(tx *Tx) error { firstRuns.Add(1); tc.first(tx); return nil })
		second := db.Submit(Strict, func(tx *Tx) error { secondRuns.Add(1); tc.second(tx); return nil })
		release()
		for i, p := range []*Pending{first, second} {
			if err := p.Wait(ctx); err != nil {
				t.Fatalf("%s: writer %d: %v", tc.name, i+1, err)
			}
		}
		if firstRuns.Load() != 1 || secondRuns.Load() != 1 {
			t.Fatalf("%s: runs %d and %d; a group exactly at the limit fits one transaction, so each runs once",
				tc.name, firstRuns.Load(), secondRuns.Load())
		}
	}
}

// The pipeline's size estimate is conservative: a writer whose entries
// Badger itself counts over its batch limit (key + value + 12 bytes each
// for small values) is refused as too big before it is staged, so the
// writers sharing its group still commit.
func TestWriterBadgerCountsTooBigIsRefusedBeforeStaging(t *testing.T) {
	db := openTest(t, t.TempDir())
	defer db.Close()
	ctx := testCtx(t)
	const entry = 150 // bytes of key and value per entry
	n := int(db.bdb.MaxBatchSize())/(entry+12) + 1
	if _, maxCount := mutantsBatchLimits(db); n >= maxCount {
		t.Fatalf("test needs fewer keys (%d) than the key limit (%d)", n, maxCount)
	}
	_, release := blockCommitLoop(t, db)
	innocent := db.Submit(Strict, func(tx *Tx) error { tx.Set([]byte("innocent"), []byte("1")); return nil })
	big := db.Submit(Strict, func(tx *Tx) error {
		for i := 0; i < n; i++ {
			k := SpaceTask.Key(EncodeUint64(uint64(i)))
			tx.Set(k, make([]byte, entry-len(k)))
		}
		return nil
	})
	release()
	if err := big.Wait(ctx); err == nil || !strings.Contains(err.Error(), "exceeds the transaction limit") {
		t.Fatalf("writer over Badger's batch limit: %v, want it refused as too big", err)
	}
	if err := innocent.Wait(ctx); err != nil {
		t.Fatalf("writer in the same group as a too big one: %v", err)
	}
	if _, err := get(t, db, []byte("innocent")); err != nil {
		t.Fatalf("innocent writer not stored: %v", err)
	}
}

// MaxBatch caps a group: with MaxBatch 1 every writer is committed and
// released before the next one runs.
func TestMaxBatchCapsTheGroup(t *testing.T) {
	db, err := Open(Options{Dir: t.TempDir(), MaxBatch: 1, FlushInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var mu sync.Mutex
	var events []string
	note := func(e string) {
		mu.Lock()
		events = append(events, e)
		mu.Unlock()
	}
	_, release := blockCommitLoop(t, db)
	var ps []*Pending
	for _, name := range []string{"a", "b", "c"} {
		ps = append(ps, db.SubmitThen(Relaxed, func(tx *Tx) error {
			note("run " + name)
			tx.Set([]byte(name), []byte("1"))
			return nil
		}, func(err error) { note("done " + name) }))
	}
	release()
	for _, p := range ps {
		if err := p.Wait(testCtx(t)); err != nil {
			t.Fatal(err)
		}
	}
	mu.Lock()
	got := strings.Join(events, ", ")
	mu.Unlock()
	if want := "run a, done a, run b, done b, run c, done c"; got != want {
		t.Fatalf("events %q, want %q: a group holds at most MaxBatch writers", got, want)
	}
}

// Strict writes are synced by the syncer; they do not leave the flush
// loop a sync to do.
func TestStrictOnlyGroupsLeaveTheFlushLoopIdle(t *testing.T) {
	disk := newFakeDisk(false)
	clock := &fakeTicker{ticks: make(chan time.Time)}
	db := openFake(t, Options{}, disk, clock)
	ctx := testCtx(t)
	clock.tick(t) // the flush loop runs
	for _, k := range []string{"s1", "s2"} {
		if err := db.Commit(ctx, Strict, func(tx *Tx) error { tx.Set(probe(k), []byte("1")); return nil }); err != nil {
			t.Fatal(err)
		}
	}
	n := disk.syncs()
	if n == 0 {
		t.Fatal("strict writes released without a sync")
	}
	clock.tick(t)
	clock.tick(t) // the previous tick's work is finished
	if got := disk.syncs(); got != n {
		t.Fatalf("flush loop synced %d times after strict-only writes; nothing relaxed was pending", got-n)
	}
}

// With nothing to collect, each GC tick makes one attempt: the loop does
// not retry a GC that found nothing worth rewriting. A ticker never
// delivers more ticks than elapsed periods, so the bound holds whatever
// the machine's speed.
func TestGCLoopMakesOneAttemptPerTickWhenNothingToCollect(t *testing.T) {
	core, logs := observer.New(zapcore.DebugLevel)
	const interval = 20 * time.Millisecond
	start := time.Now()
	db, err := Open(Options{Dir: t.TempDir(), Logger: zap.New(core), GCInterval: interval})
	if err != nil {
		t.Fatal(err)
	}
	attempts := func() int { return logs.FilterMessage("badger: No file with discard stats").Len() }
	waitFor(t, "two GC ticks", func() bool { return attempts() >= 2 })
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	elapsed := time.Since(start)
	if n, ticks := attempts(), int(elapsed/interval); n > ticks+1 {
		t.Fatalf("%d GC attempts in %v, at most %d ticks: a fruitless GC is retried", n, elapsed, ticks)
	}
}
