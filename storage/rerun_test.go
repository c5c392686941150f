package storage

import (
	"bytes"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
)

// A writer rerun after a split (it did not fit the group) may stage
// something else the second time, since its reads see the committed
// state. If Badger refuses what the rerun stages, that writer alone fails,
// with none of its keys stored (not even those staged before the refused
// one), and the writers after it in the group still commit.
func TestRerunStagingAKeyBadgerRefuses(t *testing.T) {
	db := openTest(t, t.TempDir())
	defer db.Close()
	half := bytes.Repeat([]byte("v"), int(db.bdb.MaxBatchSize()/2))
	_, release := blockCommitLoop(t, db)

	a := db.Submit(Strict, func(tx *Tx) error { tx.Set([]byte("a"), half); return nil })
	var bRuns atomic.Int32
	b := db.Submit(Strict, func(tx *Tx) error {
		if bRuns.Add(1) == 1 {
			tx.Set([]byte("b"), half) // does not fit beside a: a split
			return nil
		}
		tx.Set([]byte("b-part"), []byte("1"))
		tx.Set([]byte("!badger!b"), []byte("1"))
		return nil
	})
	c := db.Submit(Strict, func(tx *Tx) error { tx.Set([]byte("c"), []byte("1")); return nil })
	release()
	ctx := testCtx(t)
	if err := b.Wait(ctx); err == nil || !strings.Contains(err.Error(), "storage: staging write") || !strings.Contains(err.Error(), "!badger!") {
		t.Fatalf("writer whose rerun staged a reserved key: %v; want a staging error naming the reserved prefix", err)
	}
	if n := bRuns.Load(); n != 2 {
		t.Fatalf("b ran %d times, want 2 (rerun after the split)", n)
	}
	for _, k := range []string{"b", "b-part", "!badger!b"} {
		if _, err := get(t, db, []byte(k)); !errors.Is(err, ErrNotFound) {
			t.Errorf("%s of the refused rerun is stored: %v", k, err)
		}
	}
	for name, p := range map[string]*Pending{"a": a, "c": c} {
		if err := p.Wait(ctx); err != nil {
			t.Errorf("writer %s beside the refused rerun: %v", name, err)
		}
		if _, err := get(t, db, []byte(name)); err != nil {
			t.Errorf("writer %s not stored: %v", name, err)
		}
	}
}
