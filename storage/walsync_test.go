package storage

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"

	"github.com/dgraph-io/badger/v4"
)

// recordingSyncer is the database's own log syncer with its fdatasync
// replaced by one that also notes the file names it was called on.
func recordingSyncer(t *testing.T, db *DB) func() []string {
	var mu sync.Mutex
	var synced []string
	db.logs.mu.Lock()
	db.logs.fsync = func(f *os.File) error {
		mu.Lock()
		synced = append(synced, filepath.Base(f.Name()))
		mu.Unlock()
		return fdatasync(f)
	}
	db.logs.mu.Unlock()
	return func() []string {
		mu.Lock()
		defer mu.Unlock()
		s := synced
		synced = nil
		return s
	}
}

func memLogs(t *testing.T, dir string) []string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(dir, "*.mem"))
	if err != nil {
		t.Fatal(err)
	}
	for i := range m {
		m[i] = filepath.Base(m[i])
	}
	return m
}

// newestMemLog is the memtable log Badger writes to now.
func newestMemLog(t *testing.T, dir string) string {
	t.Helper()
	m := memLogs(t, dir)
	return m[len(m)-1]
}

// writeUntilRotation writes 64 KiB values until Badger starts a new
// memtable log, and returns its name.
func writeUntilRotation(t *testing.T, db *DB) string {
	t.Helper()
	old := newestMemLog(t, db.dir)
	for i := 0; i < 2000; i++ {
		if err := db.bdb.Update(func(txn *badger.Txn) error {
			return txn.Set(fmt.Appendf(nil, "k%08d", i), make([]byte, 64<<10))
		}); err != nil {
			t.Fatal(err)
		}
		if now := newestMemLog(t, db.dir); now != old {
			return now
		}
	}
	t.Fatal("no memtable rotation after 128 MiB of writes")
	return ""
}

// A sync covers the memtable log Badger writes to, and after Badger
// rotated to a new one, the old one too (it may have taken writes since
// the last sync, and Badger's own Sync would have skipped it) — then only
// the new one.
func TestSyncFollowsMemtableRotation(t *testing.T) {
	dir := t.TempDir()
	db, err := Open(Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	synced := recordingSyncer(t, db)
	if err := db.Sync(); err != nil {
		t.Fatal(err)
	}
	old := newestMemLog(t, dir)
	if got := synced(); !slices.Contains(got, old) {
		t.Fatalf("first sync synced %v, not the memtable log %s", got, old)
	}
	if err := db.Sync(); err != nil {
		t.Fatal(err)
	}
	if got := synced(); len(got) != 1 || got[0] != old {
		// The current memtable log, nothing else: the value log took no
		// writes.
		t.Fatalf("steady sync synced %v, want the memtable log %s only", got, old)
	}
	newest := writeUntilRotation(t, db)
	before := db.logs.mem.f
	if err := db.Sync(); err != nil {
		t.Fatal(err)
	}
	got := synced()
	// The old log once (it may have taken writes since) and the new one:
	// nothing twice.
	if len(got) != 2 || got[0] != old || got[1] != newest {
		t.Fatalf("sync after rotation synced %v; want the old log %s and the new %s", got, old, newest)
	}
	if before.Fd() != ^uintptr(0) {
		t.Fatal("the old log's handle is still open")
	}
	if err := db.Sync(); err != nil {
		t.Fatal(err)
	}
	if got := synced(); slices.Contains(got, old) || !slices.Contains(got, newest) {
		t.Fatalf("sync after that synced %v; want the new log %s only", got, newest)
	}
	held := []*os.File{db.logs.mem.f, db.logs.vl.f}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	for _, f := range held {
		if f.Fd() != ^uintptr(0) {
			t.Fatalf("%s is still open after Close", f.Name())
		}
	}
}

// A failing fdatasync fails the sync, so no strict writer is released.
func TestSyncReportsFsyncFailure(t *testing.T) {
	db, err := Open(Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	db.logs.mu.Lock()
	real := db.logs.fsync
	db.logs.fsync = func(*os.File) error { return os.ErrInvalid }
	db.logs.mu.Unlock()
	if err := db.Sync(); err == nil {
		t.Fatal("sync succeeded with a failing fdatasync")
	}
	db.logs.mu.Lock()
	db.logs.fsync = real
	db.logs.mu.Unlock()
	if err := db.Sync(); err != nil {
		t.Fatalf("sync after the disk recovered: %v", err)
	}
}

// A sync that fails on a log Badger rotated to fails as a whole, and the
// next sync takes that log again.
func TestSyncRetriesARotatedLogItFailedOn(t *testing.T) {
	dir := t.TempDir()
	db, err := Open(Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := db.Sync(); err != nil {
		t.Fatal(err)
	}
	newest := writeUntilRotation(t, db)
	db.logs.mu.Lock()
	db.logs.fsync = func(f *os.File) error {
		if filepath.Base(f.Name()) == newest {
			return os.ErrInvalid
		}
		return fdatasync(f)
	}
	db.logs.mu.Unlock()
	if err := db.Sync(); err == nil {
		t.Fatalf("sync succeeded though %s could not be synced", newest)
	}
	synced := recordingSyncer(t, db)
	if err := db.Sync(); err != nil {
		t.Fatal(err)
	}
	if got := synced(); !slices.Contains(got, newest) {
		t.Fatalf("the sync after the failure synced %v, not %s", got, newest)
	}
}

// The value log is synced only after a write large enough to go there
// (Badger's ValueThreshold and up), and then until a sync of it succeeds.
func TestSyncTakesTheValueLogAfterALargeValue(t *testing.T) {
	db, err := Open(Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := db.Sync(); err != nil {
		t.Fatal(err)
	}
	synced := recordingSyncer(t, db)
	vlog := func(files []string) bool {
		return slices.ContainsFunc(files, func(f string) bool { return filepath.Ext(f) == ".vlog" })
	}
	write := func(size int64) []string {
		t.Helper()
		if err := db.Commit(context.Background(), Strict, func(tx *Tx) error {
			tx.Set([]byte("big"), make([]byte, size))
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		return synced()
	}
	if got := write(db.vlogThreshold - 1); vlog(got) {
		t.Fatalf("a value below the threshold synced %v", got)
	}
	if got := write(db.vlogThreshold); !vlog(got) {
		t.Fatalf("a value at the threshold synced %v, not the value log", got)
	}
	if got := write(1); vlog(got) {
		t.Fatalf("the value log was synced again after a small write: %v", got)
	}

	// A failed sync of the value log is retried by the next sync.
	db.logs.vlogWritten.Store(true)
	db.logs.mu.Lock()
	db.logs.fsync = func(f *os.File) error {
		if filepath.Ext(f.Name()) == ".vlog" {
			return os.ErrInvalid
		}
		return fdatasync(f)
	}
	db.logs.mu.Unlock()
	if err := db.Sync(); err == nil {
		t.Fatal("sync succeeded though the value log could not be synced")
	}
	synced = recordingSyncer(t, db)
	if err := db.Sync(); err != nil {
		t.Fatal(err)
	}
	if got := synced(); !vlog(got) {
		t.Fatalf("the sync after the failure synced %v, not the value log", got)
	}
}
