package storage

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/asap-sidecar/asap-sidecar/internal/dirstate"
)

func TestReadOnlyOpenReadsAndChangesNoFile(t *testing.T) {
	dir := t.TempDir()
	db := openTest(t, dir)
	key := SpaceTask.KeyString("urn:asap:agent:a", "env-ro")
	if err := db.Commit(testCtx(t), Strict, func(tx *Tx) error { tx.Set(key, []byte("v1")); return nil }); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	before := dirstate.Of(t, dir)
	if len(before) == 0 {
		t.Fatal("the closed database has no files")
	}

	ro, err := Open(Options{Dir: dir, ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	// A second reader shares the lock; a writer is kept out.
	ro2, err := Open(Options{Dir: dir, ReadOnly: true})
	if err != nil {
		t.Fatalf("second read-only open: %v", err)
	}
	if _, err := Open(Options{Dir: dir}); err == nil || !strings.Contains(err.Error(), "another sidecar") {
		t.Fatalf("read-write open beside a reader: %v", err)
	}
	if v, err := get(t, ro, key); err != nil || string(v) != "v1" {
		t.Fatalf("read-only get: %q %v", v, err)
	}
	if err := ro.Commit(testCtx(t), Strict, func(tx *Tx) error { tx.Set(key, []byte("v2")); return nil }); !errors.Is(err, ErrReadOnly) {
		t.Fatalf("write to a read-only database: %v, want ErrReadOnly", err)
	}
	if err := errors.Join(ro.Close(), ro2.Close()); err != nil {
		t.Fatal(err)
	}
	dirstate.Same(t, before, dirstate.Of(t, dir))

	// The write was refused, not lost later: the value is still v1.
	db = openTest(t, dir)
	defer db.Close()
	if v, err := get(t, db, key); err != nil || string(v) != "v1" {
		t.Fatalf("after the read-only session: %q %v", v, err)
	}
}

func TestReadOnlyOpenOfNoDatabase(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "typo")
	_, err := Open(Options{Dir: dir, ReadOnly: true})
	if err == nil || !strings.Contains(err.Error(), "holds no database") {
		t.Fatalf("read-only open of a missing directory: %v", err)
	}
	if _, err := os.Stat(dir); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("the read-only open created %s: %v", dir, err)
	}
}

// A database whose process died (here: the files of an open database,
// copied as a crash would leave them) cannot be read read-only until a
// read-write open has replayed its log.
func TestReadOnlyOpenAfterCrashNeedsRecovery(t *testing.T) {
	live := t.TempDir()
	db := openTest(t, live)
	key := SpaceTask.KeyString("urn:asap:agent:a", "env-crash")
	if err := db.Commit(testCtx(t), Strict, func(tx *Tx) error { tx.Set(key, []byte("kept")); return nil }); err != nil {
		t.Fatal(err)
	}
	crashed := t.TempDir()
	ents, err := os.ReadDir(live)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if e.Name() == "LOCK" {
			continue
		}
		b, err := os.ReadFile(filepath.Join(live, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(crashed, e.Name()), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	db.Close()

	before := dirstate.Of(t, crashed)
	_, err = Open(Options{Dir: crashed, ReadOnly: true})
	if !errors.Is(err, ErrNotClosedCleanly) {
		t.Fatalf("read-only open of a crashed database: %v, want ErrNotClosedCleanly", err)
	}
	dirstate.Same(t, before, dirstate.Of(t, crashed))

	rw := openTest(t, crashed)
	if err := rw.Close(); err != nil {
		t.Fatal(err)
	}
	ro, err := Open(Options{Dir: crashed, ReadOnly: true})
	if err != nil {
		t.Fatalf("read-only open after recovery: %v", err)
	}
	defer ro.Close()
	if v, err := get(t, ro, key); err != nil || string(v) != "kept" {
		t.Fatalf("after recovery: %q %v", v, err)
	}
}
