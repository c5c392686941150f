package storage

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/dgraph-io/badger/v4"
)

// A format record that is not a format (a damaged value) is an error
// naming the database, from Format and from Open, read-write or not;
// it is not taken as format 0 or as a new database.
func TestDamagedFormatRecord(t *testing.T) {
	dir := t.TempDir()
	db := openTest(t, dir)
	if err := db.Commit(context.Background(), Strict, func(tx *Tx) error { tx.Set(formatKey, []byte{0, 1, 2}); return nil }); err != nil {
		t.Fatal(err)
	}
	if v, err := db.Format(); err == nil || !strings.Contains(err.Error(), "3 bytes") {
		t.Errorf("Format of a damaged record = %d, %v; want an error", v, err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	for _, ro := range []bool{false, true} {
		_, err := Open(Options{Dir: dir, ReadOnly: ro})
		if err == nil || !strings.Contains(err.Error(), "reading the format of "+dir) || !strings.Contains(err.Error(), "3 bytes") {
			t.Errorf("Open (read-only %v) of a damaged format record: %v; want an error naming %s", ro, err, dir)
		}
	}
	// Refused, not overwritten: the record is as it was.
	bdb, err := badger.Open(badger.DefaultOptions(dir).WithReadOnly(true).WithLogger(nil))
	if err != nil {
		t.Fatal(err)
	}
	defer bdb.Close()
	if err := bdb.View(func(txn *badger.Txn) error {
		item, err := txn.Get(formatKey)
		if err != nil {
			return err
		}
		v, err := item.ValueCopy(nil)
		if err == nil && string(v) != "\x00\x01\x02" {
			err = fmt.Errorf("format record is now %x", v)
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
}
