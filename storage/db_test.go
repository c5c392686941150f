package storage

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dgraph-io/badger/v4"
	"github.com/dgraph-io/badger/v4/options"
)

func openTest(t testing.TB, dir string) *DB {
	t.Helper()
	db, err := Open(Options{Dir: dir, FlushInterval: 20 * time.Millisecond})
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	return db
}

func get(t *testing.T, db *DB, key []byte) ([]byte, error) {
	t.Helper()
	var v []byte
	err := db.View(func(r *Reader) error {
		var err error
		v, err = r.Get(key)
		return err
	})
	return v, err
}

func TestOpenNeedsDir(t *testing.T) {
	_, err := Open(Options{})
	if err == nil || !strings.Contains(err.Error(), "storage option") {
		t.Fatalf("want error naming the storage option, got %v", err)
	}
}

func TestSecondOpenOfSameDirFails(t *testing.T) {
	dir := t.TempDir()
	db := openTest(t, dir)
	defer db.Close()
	_, err := Open(Options{Dir: dir})
	if err == nil || !strings.Contains(err.Error(), "another sidecar") {
		t.Fatalf("second open: want lock error, got %v", err)
	}
}

func TestCommitIsVisibleAndDurableAcrossReopen(t *testing.T) {
	dir := t.TempDir()
	db := openTest(t, dir)
	key := SpaceTask.KeyString("urn:asap:agent:a", "env-1")
	if err := db.Commit(testCtx(t), Strict, func(tx *Tx) error {
		tx.Set(key, []byte("v1"))
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if v, err := get(t, db, key); err != nil || string(v) != "v1" {
		t.Fatalf("get = %q, %v", v, err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatalf("second close: %v", err)
	}
	db = openTest(t, dir)
	defer db.Close()
	if v, err := get(t, db, key); err != nil || string(v) != "v1" {
		t.Fatalf("after reopen get = %q, %v", v, err)
	}
}

func TestFailingWriterLeavesNothingAndOthersCommit(t *testing.T) {
	db := openTest(t, t.TempDir())
	defer db.Close()
	ctx := testCtx(t)
	boom := errors.New("boom")
	var wg sync.WaitGroup
	errs := make([]error, 3)
	for i, fn := range []func(*Tx) error{
		func(tx *Tx) error { tx.Set([]byte("ok1"), []byte("1")); return nil },
		func(tx *Tx) error { tx.Set([]byte("bad"), []byte("x")); return boom },
		func(tx *Tx) error { tx.Set([]byte("ok2"), []byte("2")); return nil },
	} {
		wg.Add(1)
		go func(i int, fn func(*Tx) error) {
			defer wg.Done()
			errs[i] = db.Commit(ctx, Strict, fn)
		}(i, fn)
	}
	wg.Wait()
	if errs[0] != nil || errs[2] != nil || !errors.Is(errs[1], boom) {
		t.Fatalf("errors = %v", errs)
	}
	if _, err := get(t, db, []byte("bad")); !errors.Is(err, ErrNotFound) {
		t.Fatalf("failed writer's key: err = %v, want not found", err)
	}
	for _, k := range []string{"ok1", "ok2"} {
		if _, err := get(t, db, []byte(k)); err != nil {
			t.Fatalf("%s: %v", k, err)
		}
	}
}

func TestPanickingWriterIsAnErrorAndPipelineSurvives(t *testing.T) {
	db := openTest(t, t.TempDir())
	defer db.Close()
	ctx := testCtx(t)
	err := db.Commit(ctx, Strict, func(tx *Tx) error {
		tx.Set([]byte("p"), []byte("x"))
		panic("kaboom")
	})
	if err == nil || !strings.Contains(err.Error(), "kaboom") {
		t.Fatalf("want panic as error, got %v", err)
	}
	if err := db.Commit(ctx, Strict, func(tx *Tx) error { tx.Set([]byte("after"), []byte("1")); return nil }); err != nil {
		t.Fatalf("pipeline dead after panic: %v", err)
	}
	if _, err := get(t, db, []byte("p")); !errors.Is(err, ErrNotFound) {
		t.Fatalf("panicked writer's key stored: %v", err)
	}
}

func TestCountersExactUnderConcurrency(t *testing.T) {
	db := openTest(t, t.TempDir())
	defer db.Close()
	key := SpaceCounter.KeyString("agent", "tasks")
	const workers, per = 64, 50
	ctx := testCtx(t)
	var wg sync.WaitGroup
	seen := make(chan uint64, workers*per)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; i < per; i++ {
				d := Strict
				if i%2 == 1 {
					d = Relaxed
				}
				err := db.Commit(ctx, d, func(tx *Tx) error {
					n, err := tx.AddUint64(key, 1)
					seen <- n
					return err
				})
				if err != nil {
					t.Error(err)
				}
			}
		}(w)
	}
	wg.Wait()
	close(seen)
	// Every increment saw a distinct value: no lost update.
	got := map[uint64]bool{}
	for n := range seen {
		if got[n] {
			t.Fatalf("value %d handed out twice", n)
		}
		got[n] = true
	}
	v, _ := get(t, db, key)
	n, err := DecodeUint64(v)
	if err != nil || n != workers*per {
		t.Fatalf("counter = %d, %v; want %d", n, err, workers*per)
	}
}

func TestReadsSeeOwnAndEarlierWritesOfTheGroup(t *testing.T) {
	db := openTest(t, t.TempDir())
	defer db.Close()
	ctx := testCtx(t)
	err := db.Commit(ctx, Strict, func(tx *Tx) error {
		tx.Set([]byte("k"), []byte("a"))
		if v, err := tx.Get([]byte("k")); err != nil || string(v) != "a" {
			return fmt.Errorf("own write: %q %v", v, err)
		}
		tx.Delete([]byte("k"))
		if _, err := tx.Get([]byte("k")); !errors.Is(err, ErrNotFound) {
			return fmt.Errorf("own delete: %v", err)
		}
		tx.Set([]byte("k"), []byte("b"))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if v, _ := get(t, db, []byte("k")); string(v) != "b" {
		t.Fatalf("k = %q", v)
	}
	if err := db.Commit(ctx, Strict, func(tx *Tx) error { tx.Delete([]byte("k")); return nil }); err != nil {
		t.Fatal(err)
	}
	if _, err := get(t, db, []byte("k")); !errors.Is(err, ErrNotFound) {
		t.Fatalf("deleted key: %v", err)
	}
}

func TestCorruptCounterIsAnError(t *testing.T) {
	db := openTest(t, t.TempDir())
	defer db.Close()
	ctx := testCtx(t)
	key := []byte("c")
	_ = db.Commit(ctx, Strict, func(tx *Tx) error { tx.Set(key, []byte("xyz")); return nil })
	err := db.Commit(ctx, Strict, func(tx *Tx) error { _, err := tx.AddUint64(key, 1); return err })
	if err == nil || !strings.Contains(err.Error(), "3 bytes") {
		t.Fatalf("want counter size error, got %v", err)
	}
}

// SetWithTTL hands Badger an expiry of commit time + ttl, which Badger keeps
// in whole Unix seconds (truncated) and treats as expired once the clock
// reaches it. So a 1-second key may already be gone right after its commit
// (committed at x.999 s, it expires at x+1 s): the test reads the stored
// expiry instead of racing it, then waits for the clock to pass it.
func TestTTLExpires(t *testing.T) {
	db := openTest(t, t.TempDir())
	defer db.Close()
	before := time.Now()
	err := db.Commit(testCtx(t), Strict, func(tx *Tx) error {
		tx.SetWithTTL([]byte("short"), []byte("x"), time.Second)
		tx.SetWithTTL([]byte("long"), []byte("y"), time.Hour)
		tx.SetWithTTL([]byte("never"), []byte("z"), 0)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	after := time.Now()
	expires := storedExpiry(t, db)
	for k, ttl := range map[string]time.Duration{"short": time.Second, "long": time.Hour} {
		lo, hi := uint64(before.Add(ttl).Unix()), uint64(after.Add(ttl).Unix())
		if got, ok := expires[k]; !ok || got < lo || got > hi {
			t.Fatalf("%s: stored expiry %d (present %v), want commit time + %v in [%d, %d]", k, got, ok, ttl, lo, hi)
		}
	}
	if got, ok := expires["never"]; !ok || got != 0 {
		t.Fatalf("ttl 0: stored expiry %d (present %v), want none", got, ok)
	}
	// Badger's rule: expired once now (in whole seconds) >= expiry.
	wait := time.Until(time.Unix(int64(expires["short"]), 0))
	if wait > 2*time.Second {
		t.Fatalf("short key expires in %v", wait)
	}
	time.Sleep(wait + 10*time.Millisecond)
	if _, err := get(t, db, []byte("short")); !errors.Is(err, ErrNotFound) {
		t.Fatalf("expired key still readable: %v", err)
	}
	for _, k := range []string{"long", "never"} {
		if _, err := get(t, db, []byte(k)); err != nil {
			t.Fatalf("%s: %v", k, err)
		}
	}
}

// storedExpiry returns Badger's expiry (Unix seconds, 0 for none) of every
// key, expired or not.
func storedExpiry(t *testing.T, db *DB) map[string]uint64 {
	t.Helper()
	out := map[string]uint64{}
	err := db.bdb.View(func(txn *badger.Txn) error {
		opts := badger.DefaultIteratorOptions
		opts.AllVersions = true // also yields expired entries
		it := txn.NewIterator(opts)
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			k := string(it.Item().KeyCopy(nil))
			if _, seen := out[k]; !seen { // newest version first
				out[k] = it.Item().ExpiresAt()
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestRelaxedWritesAreSyncedByFlushLoop(t *testing.T) {
	dir := t.TempDir()
	db := openTest(t, dir)
	p := db.Submit(Relaxed, func(tx *Tx) error { tx.Set([]byte("r"), []byte("1")); return nil })
	if err := p.Wait(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	within(t, p.Done(), "the relaxed write")
	if p.Err() != nil {
		t.Fatal(p.Err())
	}
	db.dirtyMu.Lock()
	dirty := db.dirty
	db.dirtyMu.Unlock()
	if !dirty {
		t.Fatal("relaxed commit did not mark the database dirty")
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		db.dirtyMu.Lock()
		dirty = db.dirty
		db.dirtyMu.Unlock()
		if !dirty {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("flush loop never synced")
		}
		time.Sleep(5 * time.Millisecond)
	}
	db.Close()
	db = openTest(t, dir)
	defer db.Close()
	if v, err := get(t, db, []byte("r")); err != nil || string(v) != "1" {
		t.Fatalf("relaxed write lost: %q %v", v, err)
	}
}

func TestSubmitAfterCloseFails(t *testing.T) {
	db := openTest(t, t.TempDir())
	db.Close()
	err := db.Commit(testCtx(t), Strict, func(tx *Tx) error { return nil })
	if !errors.Is(err, ErrClosed) {
		t.Fatalf("want ErrClosed, got %v", err)
	}
}

func TestCloseDrainsQueuedWrites(t *testing.T) {
	dir := t.TempDir()
	db := openTest(t, dir)
	var ps []*Pending
	for i := 0; i < 500; i++ {
		k := SpaceTask.Key(EncodeUint64(uint64(i)))
		ps = append(ps, db.Submit(Relaxed, func(tx *Tx) error { tx.Set(k, []byte("x")); return nil }))
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	for i, p := range ps {
		select {
		case <-p.Done():
		default:
			t.Fatalf("write %d not finished after Close", i)
		}
		if p.Err() != nil {
			t.Fatalf("write %d: %v", i, p.Err())
		}
	}
	db = openTest(t, dir)
	defer db.Close()
	n := 0
	db.View(func(r *Reader) error {
		return r.Scan(SpaceTask.Prefix(), false, func(k, v []byte) (bool, error) { n++; return true, nil })
	})
	if n != 500 {
		t.Fatalf("after reopen %d records, want 500", n)
	}
}

func TestWaitHonoursContext(t *testing.T) {
	db := openTest(t, t.TempDir())
	defer db.Close()
	release := make(chan struct{})
	blocker := db.Submit(Strict, func(tx *Tx) error { park(release); return nil })
	ctx, cancel := context.WithTimeout(testCtx(t), 20*time.Millisecond)
	defer cancel()
	err := db.Commit(ctx, Strict, func(tx *Tx) error { return nil })
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("want deadline exceeded, got %v", err)
	}
	close(release)
	if err := blocker.Wait(testCtx(t)); err != nil {
		t.Fatal(err)
	}
}

func TestOversizedWriteIsRejectedOthersCommit(t *testing.T) {
	db := openTest(t, t.TempDir())
	defer db.Close()
	big := bytes.Repeat([]byte("x"), int(db.bdb.MaxBatchSize()))
	err := db.Commit(testCtx(t), Strict, func(tx *Tx) error {
		tx.Set([]byte("big"), big)
		return nil
	})
	if err == nil || !strings.Contains(err.Error(), "exceeds the transaction limit") {
		t.Fatalf("want limit error, got %v", err)
	}
	if err := db.Commit(testCtx(t), Strict, func(tx *Tx) error { tx.Set([]byte("small"), []byte("1")); return nil }); err != nil {
		t.Fatal(err)
	}
}

func TestGroupLargerThanOneTransactionIsSplit(t *testing.T) {
	db := openTest(t, t.TempDir())
	defer db.Close()
	// Each write is 1/5 of Badger's batch limit, so a group of 64 cannot
	// fit one transaction and must be split, every write still landing
	// whole and every counter increment exactly once.
	val := bytes.Repeat([]byte("v"), int(db.bdb.MaxBatchSize()/5))
	ctr := []byte("ctr")
	ctx := testCtx(t)
	var wg sync.WaitGroup
	for i := 0; i < 64; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			err := db.Commit(ctx, Strict, func(tx *Tx) error {
				tx.Set(SpaceTask.Key(EncodeUint64(uint64(i))), val)
				_, err := tx.AddUint64(ctr, 1)
				return err
			})
			if err != nil {
				t.Error(err)
			}
		}(i)
	}
	wg.Wait()
	v, _ := get(t, db, ctr)
	if n, _ := DecodeUint64(v); n != 64 {
		t.Fatalf("counter = %d, want 64", n)
	}
	n := 0
	db.View(func(r *Reader) error {
		return r.Scan(SpaceTask.Prefix(), false, func(k, v []byte) (bool, error) {
			if len(v) != len(val) {
				return false, fmt.Errorf("value of %d bytes", len(v))
			}
			n++
			return true, nil
		})
	})
	if n != 64 {
		t.Fatalf("%d records, want 64", n)
	}
}

func TestScanOrderPrefixAndSeek(t *testing.T) {
	db := openTest(t, t.TempDir())
	defer db.Close()
	_ = db.Commit(testCtx(t), Strict, func(tx *Tx) error {
		for i := 0; i < 5; i++ {
			tx.Set(SpaceUsage.Key([]byte("a"), EncodeUint64(uint64(i))), []byte{byte(i)})
		}
		tx.Set(SpaceUsage.Key([]byte("b"), EncodeUint64(9)), []byte{9})
		tx.Set(SpaceTask.Key([]byte("a")), []byte{99})
		return nil
	})
	collect := func(fn func(r *Reader, f func(k, v []byte) (bool, error)) error) []byte {
		var out []byte
		db.View(func(r *Reader) error {
			return fn(r, func(k, v []byte) (bool, error) { out = append(out, v[0]); return true, nil })
		})
		return out
	}
	pa := SpaceUsage.Prefix([]byte("a"))
	if got := collect(func(r *Reader, f func(k, v []byte) (bool, error)) error { return r.Scan(pa, false, f) }); !bytes.Equal(got, []byte{0, 1, 2, 3, 4}) {
		t.Fatalf("forward = %v", got)
	}
	if got := collect(func(r *Reader, f func(k, v []byte) (bool, error)) error { return r.Scan(pa, true, f) }); !bytes.Equal(got, []byte{4, 3, 2, 1, 0}) {
		t.Fatalf("reverse = %v", got)
	}
	seek := SpaceUsage.Key([]byte("a"), EncodeUint64(2))
	if got := collect(func(r *Reader, f func(k, v []byte) (bool, error)) error { return r.ScanFrom(pa, seek, false, f) }); !bytes.Equal(got, []byte{2, 3, 4}) {
		t.Fatalf("from 2 forward = %v", got)
	}
	if got := collect(func(r *Reader, f func(k, v []byte) (bool, error)) error { return r.ScanFrom(pa, seek, true, f) }); !bytes.Equal(got, []byte{2, 1, 0}) {
		t.Fatalf("from 2 reverse = %v", got)
	}
	if got := collect(func(r *Reader, f func(k, v []byte) (bool, error)) error { return r.Scan(SpaceUsage.Prefix(), false, f) }); len(got) != 6 {
		t.Fatalf("whole space = %v", got)
	}
	// Early stop.
	n := 0
	db.View(func(r *Reader) error {
		return r.Scan(pa, false, func(k, v []byte) (bool, error) { n++; return n < 2, nil })
	})
	if n != 2 {
		t.Fatalf("stopped after %d", n)
	}
	// Errors from the callback come back.
	wantErr := errors.New("stop")
	err := db.View(func(r *Reader) error {
		return r.Scan(pa, false, func(k, v []byte) (bool, error) { return true, wantErr })
	})
	if !errors.Is(err, wantErr) {
		t.Fatalf("scan error = %v", err)
	}
	// Tx.Scan sees committed data.
	err = db.Commit(testCtx(t), Strict, func(tx *Tx) error {
		c := 0
		err := tx.Scan(pa, false, func(k, v []byte) (bool, error) { c++; return true, nil })
		if c != 5 {
			return fmt.Errorf("tx scan saw %d", c)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestKeys(t *testing.T) {
	k := SpaceTask.KeyString("a", "b")
	if !bytes.Equal(k, []byte("ta\x00b")) {
		t.Fatalf("key = %q", k)
	}
	if p := SpaceTask.Prefix([]byte("a")); !bytes.Equal(p, []byte("ta\x00")) || !bytes.HasPrefix(k, p) {
		t.Fatalf("prefix = %q", p)
	}
	// "a" prefix must not match "ab".
	if bytes.HasPrefix(SpaceTask.KeyString("ab", "c"), SpaceTask.Prefix([]byte("a"))) {
		t.Fatal("prefix of a matches ab")
	}
	if p := SpaceTask.Prefix(); !bytes.Equal(p, []byte("t")) {
		t.Fatalf("space prefix = %q", p)
	}
}

func TestDurabilityWords(t *testing.T) {
	for in, want := range map[string]Durability{"": Strict, "strict": Strict, "relaxed": Relaxed} {
		got, err := ParseDurability(in)
		if err != nil || got != want {
			t.Fatalf("%q → %v %v", in, got, err)
		}
	}
	if _, err := ParseDurability("fast"); err == nil || !strings.Contains(err.Error(), "strict or relaxed") {
		t.Fatalf("bad word: %v", err)
	}
	if Strict.String() != "strict" || Relaxed.String() != "relaxed" {
		t.Fatal("String")
	}
}

func TestSubmitThenRunsOnceWithOutcome(t *testing.T) {
	db := openTest(t, t.TempDir())
	boom := errors.New("boom")
	var mu sync.Mutex
	got := map[string][]error{}
	note := func(name string) func(error) {
		return func(err error) { mu.Lock(); got[name] = append(got[name], err); mu.Unlock() }
	}
	ok := db.SubmitThen(Relaxed, func(tx *Tx) error { tx.Set([]byte("a"), []byte("1")); return nil }, note("ok"))
	bad := db.SubmitThen(Strict, func(tx *Tx) error { return boom }, note("bad"))
	ok.Wait(testCtx(t))
	bad.Wait(testCtx(t))
	db.Close()
	late := db.SubmitThen(Strict, func(tx *Tx) error { return nil }, note("late"))
	late.Wait(testCtx(t))
	mu.Lock()
	defer mu.Unlock()
	if len(got["ok"]) != 1 || got["ok"][0] != nil || len(got["bad"]) != 1 || !errors.Is(got["bad"][0], boom) ||
		len(got["late"]) != 1 || !errors.Is(got["late"][0], ErrClosed) {
		t.Fatalf("callbacks = %v", got)
	}
}

// Databases written before block compression was turned off hold Snappy
// tables; Badger records each table's compression in its manifest, so they
// must still read back after an upgrade.
func TestOpensDatabaseWithCompressedTables(t *testing.T) {
	dir := t.TempDir()
	old, err := badger.Open(badger.DefaultOptions(dir).WithLogger(nil).WithCompression(options.Snappy))
	if err != nil {
		t.Fatal(err)
	}
	value := bytes.Repeat([]byte("usage event "), 100)
	err = old.Update(func(txn *badger.Txn) error {
		for i := 0; i < 1000; i++ {
			if err := txn.Set(SpaceUsage.KeyString(fmt.Sprint(i)), value); err != nil {
				return err
			}
		}
		return nil
	})
	if err == nil {
		err = old.Flatten(1) // push the data into on-disk compressed tables
	}
	if err != nil {
		t.Fatal(err)
	}
	if err := old.Close(); err != nil {
		t.Fatal(err)
	}
	if sst := sstBytes(t, dir); sst == 0 || sst > 1000*int64(len(value))/4 {
		t.Fatalf("want the data in compressed tables; %d bytes of .sst", sst)
	}
	db := openTest(t, dir)
	defer db.Close()
	for _, i := range []int{0, 499, 999} {
		got, err := get(t, db, SpaceUsage.KeyString(fmt.Sprint(i)))
		if err != nil || !bytes.Equal(got, value) {
			t.Fatalf("key %d after reopening: %v, %d bytes", i, err, len(got))
		}
	}
}

func sstBytes(t *testing.T, dir string) int64 {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(dir, "*.sst"))
	if err != nil {
		t.Fatal(err)
	}
	var n int64
	for _, f := range files {
		if st, err := os.Stat(f); err == nil {
			n += st.Size()
		}
	}
	return n
}

// A writer's own staged writes read back the same whether it staged a few
// keys (searched in order) or many (indexed): the latest write of each key
// wins, a delete hides it, and each key is applied once.
func TestStagedWritesReadBackAtEverySize(t *testing.T) {
	for _, n := range []int{1, scanOps, scanOps + 1, 3 * scanOps} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			db := openTest(t, t.TempDir())
			defer db.Close()
			key := func(i int) []byte { return fmt.Appendf(nil, "s/%03d", i) }
			err := db.Commit(testCtx(t), Strict, func(tx *Tx) error {
				for i := 0; i < n; i++ {
					tx.Set(key(i), []byte("first"))
				}
				for i := 0; i < n; i += 2 {
					tx.Set(key(i), []byte("second"))
				}
				for i := 1; i < n; i += 4 {
					tx.Delete(key(i))
				}
				if len(tx.ops) != n {
					return fmt.Errorf("%d staged writes for %d keys", len(tx.ops), n)
				}
				for i := 0; i < n; i++ {
					v, err := tx.Get(key(i))
					want := map[bool]string{true: "second", false: "first"}[i%2 == 0]
					if i%4 == 1 {
						if !errors.Is(err, ErrNotFound) {
							return fmt.Errorf("deleted %s reads %q %v", key(i), v, err)
						}
						continue
					}
					if err != nil || string(v) != want {
						return fmt.Errorf("%s reads %q %v, want %q", key(i), v, err, want)
					}
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			for i := 0; i < n; i++ {
				v, err := get(t, db, key(i))
				if i%4 == 1 {
					if !errors.Is(err, ErrNotFound) {
						t.Fatalf("deleted %s committed as %q", key(i), v)
					}
				} else if want := map[bool]string{true: "second", false: "first"}[i%2 == 0]; string(v) != want {
					t.Fatalf("%s committed as %q, want %q", key(i), v, want)
				}
			}
		})
	}
}
