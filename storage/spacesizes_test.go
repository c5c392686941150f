package storage

import (
	"context"
	"reflect"
	"testing"
)

// SpaceSizes counts live keys and their bytes per space, and what
// overwritten and deleted versions still hold, in space order.
func TestSpaceSizes(t *testing.T) {
	dir := t.TempDir()
	db := openTest(t, dir)
	commit := func(fn func(tx *Tx)) {
		t.Helper()
		if err := db.Commit(context.Background(), Strict, func(tx *Tx) error { fn(tx); return nil }); err != nil {
			t.Fatal(err)
		}
	}
	commit(func(tx *Tx) {
		tx.Set(SpaceUsage.Key([]byte("k1")), []byte("12345"))     // 3+5 bytes, overwritten below
		tx.Set(SpaceUsage.Key([]byte("k2")), []byte("1"))         // 3+1, deleted below
		tx.Set(SpaceAudit.Key([]byte("e")), []byte("0123456789")) // 2+10
	})
	commit(func(tx *Tx) {
		tx.Set(SpaceUsage.Key([]byte("k1")), []byte("123")) // 3+3 live
		tx.Delete(SpaceUsage.Key([]byte("k2")))
	})
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	got, err := SpaceSizes(dir)
	if err != nil {
		t.Fatal(err)
	}
	want := []SpaceSize{
		{Space: SpaceAudit, Keys: 1, Bytes: 12},
		{Space: SpaceMeta, Keys: 1, Bytes: 7 + 8},                     // the format version
		{Space: SpaceUsage, Keys: 1, Bytes: 6, StaleBytes: 8 + 3 + 4}, // old k1, k2's tombstone, old k2
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("SpaceSizes = %+v, want %+v", got, want)
	}
	if _, err := SpaceSizes(t.TempDir() + "/missing"); err == nil {
		t.Fatal("SpaceSizes of a directory with no database: no error")
	}
}
