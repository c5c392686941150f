package storage

import (
	"context"
	"errors"
	"strings"
	"testing"
)

// A new database records the format it is written in; a database from a
// newer build is refused with both formats named; an older format without
// a migration is refused too; a read-only open writes nothing.
func TestFormatVersion(t *testing.T) {
	dir := t.TempDir()
	db, err := Open(Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	if v, err := db.Format(); err != nil || v != FormatVersion {
		t.Fatalf("new database format %d, %v; want %d", v, err, FormatVersion)
	}
	set := func(v uint64) {
		t.Helper()
		if err := db.Commit(context.Background(), Strict, func(tx *Tx) error { tx.Set(formatKey, EncodeUint64(v)); return nil }); err != nil {
			t.Fatal(err)
		}
	}
	set(FormatVersion + 1)
	db.Close()
	_, err = Open(Options{Dir: dir})
	if !errors.Is(err, ErrNewerFormat) || !strings.Contains(err.Error(), "format 2") || !strings.Contains(err.Error(), dir) {
		t.Fatalf("opening a newer format: %v", err)
	}
	if _, err := Open(Options{Dir: dir, ReadOnly: true}); !errors.Is(err, ErrNewerFormat) {
		t.Fatalf("read-only open of a newer format: %v", err)
	}

	// An older format this build cannot migrate.
	dir2 := t.TempDir()
	db, _ = Open(Options{Dir: dir2})
	set(0)
	db.Close()
	if _, err := Open(Options{Dir: dir2}); err == nil || !strings.Contains(err.Error(), "no migration") {
		t.Fatalf("opening format 0: %v", err)
	}

	// A database without the key (written before v1.3.0): a read-only
	// open leaves it so, a read-write open records the format.
	dir3 := t.TempDir()
	db, _ = Open(Options{Dir: dir3})
	if err := db.Commit(context.Background(), Strict, func(tx *Tx) error { tx.Delete(formatKey); return nil }); err != nil {
		t.Fatal(err)
	}
	db.Close()
	ro, err := Open(Options{Dir: dir3, ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	if v, err := ro.Format(); err != nil || v != 0 {
		t.Fatalf("read-only open of a database without a format: %d, %v", v, err)
	}
	ro.Close()
	db, err = Open(Options{Dir: dir3})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if v, _ := db.Format(); v != FormatVersion {
		t.Fatalf("read-write open did not record the format: %d", v)
	}
}
