package storage

import (
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
	put := func(i int) {
		t.Helper()
		if err := db.bdb.Update(func(txn *badger.Txn) error {
			return txn.Set(fmt.Appendf(nil, "k%08d", i), make([]byte, 64<<10))
		}); err != nil {
			t.Fatal(err)
		}
	}
	put(0)
	if err := db.Sync(); err != nil {
		t.Fatal(err)
	}
	first := memLogs(t, dir)
	if got := synced(); !slices.Contains(got, first[len(first)-1]) {
		t.Fatalf("first sync synced %v, not the memtable log %v", got, first)
	}
	if err := db.Sync(); err != nil {
		t.Fatal(err)
	}
	if got := synced(); len(got) != 2 || got[0] != first[len(first)-1] {
		// The current memtable log and the value log, nothing else.
		t.Fatalf("steady sync synced %v, want the memtable log %s and the value log", got, first[len(first)-1])
	}
	// Write until Badger starts a new memtable log.
	old := first[len(first)-1]
	for i := 1; ; i++ {
		put(i)
		if now := memLogs(t, dir); now[len(now)-1] != old {
			break
		}
		if i > 2000 {
			t.Fatal("no memtable rotation after 128 MiB of writes")
		}
	}
	before := db.logs.mem.f
	if err := db.Sync(); err != nil {
		t.Fatal(err)
	}
	now := memLogs(t, dir)
	got := synced()
	// The old log once (it may have taken writes since), the new one, the
	// value log: nothing twice.
	if len(got) != 3 || got[0] != old || got[1] != now[len(now)-1] {
		t.Fatalf("sync after rotation synced %v; want the old log %s, the new %s and the value log", got, old, now[len(now)-1])
	}
	if before.Fd() != ^uintptr(0) {
		t.Fatal("the old log's handle is still open")
	}
	if err := db.Sync(); err != nil {
		t.Fatal(err)
	}
	if got := synced(); slices.Contains(got, old) || !slices.Contains(got, now[len(now)-1]) {
		t.Fatalf("sync after that synced %v; want the new log %s only", got, now[len(now)-1])
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
	old := memLogs(t, dir)
	for i := 0; memLogs(t, dir)[len(memLogs(t, dir))-1] == old[len(old)-1]; i++ {
		if err := db.bdb.Update(func(txn *badger.Txn) error {
			return txn.Set(fmt.Appendf(nil, "k%08d", i), make([]byte, 64<<10))
		}); err != nil {
			t.Fatal(err)
		}
	}
	newest := memLogs(t, dir)[len(memLogs(t, dir))-1]
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
