package storage

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// openForSync opens a database whose log syncer has not synced yet: its
// first Sync lists the directory.
func openForSync(t *testing.T) *DB {
	t.Helper()
	db, err := Open(Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { closeWithin(t, db) })
	return db
}

// moveAway renames dir away; the returned function (also run at cleanup)
// puts it back, once.
func moveAway(t *testing.T, dir string) (back func()) {
	t.Helper()
	moved := dir + ".moved"
	if err := os.Rename(dir, moved); err != nil {
		t.Fatal(err)
	}
	done := false
	back = func() {
		if !done {
			done = true
			if err := os.Rename(moved, dir); err != nil {
				t.Fatal(err)
			}
		}
	}
	t.Cleanup(back)
	return back
}

// A sync that cannot list the database directory fails, naming it, and
// the sync after the directory is back succeeds.
func TestSyncFailsWhenTheDirectoryCannotBeListed(t *testing.T) {
	db := openForSync(t)
	back := moveAway(t, db.dir)
	err := db.Sync()
	if !errors.Is(err, os.ErrNotExist) || !strings.Contains(err.Error(), "listing "+db.dir) {
		t.Fatalf("sync of a directory that is gone: %v; want a listing error naming %s", err, db.dir)
	}
	back()
	if err := db.Sync(); err != nil {
		t.Fatalf("sync once the directory is back: %v", err)
	}
}

// A log listed but gone before it is opened (flushed to a table and
// deleted meanwhile; here a dangling link) is skipped: the sync succeeds
// and follows the newest log that exists.
func TestSyncSkipsALogGoneBeforeItIsOpened(t *testing.T) {
	db := openForSync(t)
	newest := newestMemLog(t, db.dir)
	ghost := filepath.Join(db.dir, "99999.mem")
	if err := os.Symlink(filepath.Join(db.dir, "gone"), ghost); err != nil {
		t.Fatal(err)
	}
	defer os.Remove(ghost)
	if err := db.Sync(); err != nil {
		t.Fatalf("sync with a log gone before it was opened: %v", err)
	}
	if got := filepath.Base(db.logs.mem.f.Name()); got != newest {
		t.Fatalf("the syncer follows %s, want the newest log there is, %s", got, newest)
	}
}

// A log that is there but cannot be opened fails the sync, naming it;
// nothing is skipped silently.
func TestSyncFailsOnALogItCannotOpen(t *testing.T) {
	db := openForSync(t)
	loop := filepath.Join(db.dir, "99998.mem")
	if err := os.Symlink(loop, loop); err != nil { // opening it: too many levels of links
		t.Fatal(err)
	}
	err := db.Sync()
	if err == nil || !strings.Contains(err.Error(), "opening "+loop) {
		t.Fatalf("sync with a log that cannot be opened: %v; want an error naming %s", err, loop)
	}
	if err := os.Remove(loop); err != nil {
		t.Fatal(err)
	}
	if err := db.Sync(); err != nil {
		t.Fatalf("sync once the log is gone: %v", err)
	}
}

// The new logs' directory entries must be synced too: when the directory
// cannot be opened for that, the sync fails, naming it.
func TestSyncFailsWhenTheDirectoryCannotBeSynced(t *testing.T) {
	db := openForSync(t)
	var back func()
	// The value log is synced after the memtable logs: the directory goes
	// away once its file is synced, before its directory entry is.
	db.logs.mu.Lock()
	db.logs.fsync = func(f *os.File) error {
		if filepath.Ext(f.Name()) == ".vlog" && back == nil {
			back = moveAway(t, db.dir)
		}
		return fdatasync(f)
	}
	db.logs.mu.Unlock()
	err := db.Sync()
	if back == nil {
		t.Fatal("the sync did not take the value log")
	}
	back()
	if err == nil || !strings.Contains(err.Error(), "opening "+db.dir+" to sync it") {
		t.Fatalf("sync whose directory could not be synced: %v; want an error naming %s", err, db.dir)
	}
}

// A failed directory sync is owed until one succeeds: a new log's name
// must be durable before a strict writer is released. (It was recorded as
// done before the directory sync ran, so the next Sync only fdatasynced
// the log and reported success while the directory still could not be
// synced.)
func TestSyncRetriesADirectorySyncThatFailed(t *testing.T) {
	db := openForSync(t)
	var back func()
	db.logs.mu.Lock()
	db.logs.fsync = func(f *os.File) error {
		if filepath.Ext(f.Name()) == ".vlog" && back == nil {
			back = moveAway(t, db.dir)
		}
		return fdatasync(f)
	}
	db.logs.mu.Unlock()
	if err := db.Sync(); err == nil {
		t.Fatal("the first sync succeeded without syncing the directory")
	}
	if err := db.Sync(); err == nil {
		back()
		t.Fatal("the second sync succeeded though the directory still cannot be synced: the failed directory sync was not retried")
	}
	back()
	if err := db.Sync(); err != nil {
		t.Fatalf("sync once the directory is back: %v", err)
	}
	if db.logs.dirOwed {
		t.Fatal("the directory sync is still owed after a sync that succeeded")
	}
}
