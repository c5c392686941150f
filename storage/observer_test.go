package storage

import (
	"sync"
	"testing"
	"time"
)

// recorder is an Observer that keeps what it heard.
type recorder struct {
	mu      sync.Mutex
	writers int // summed over groups
	groups  int
	syncs   int
}

func (r *recorder) CommitGroup(n int) {
	r.mu.Lock()
	r.groups++
	r.writers += n
	r.mu.Unlock()
}

func (r *recorder) Synced(time.Duration) {
	r.mu.Lock()
	r.syncs++
	r.mu.Unlock()
}

func (r *recorder) snapshot() (groups, writers, syncs int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.groups, r.writers, r.syncs
}

func TestObserverHearsEveryGroupAndSync(t *testing.T) {
	rec := &recorder{}
	// A long flush interval: every sync seen here is a strict write's.
	db, err := Open(Options{Dir: t.TempDir(), FlushInterval: time.Hour, Observer: rec})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	const n = 20
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := db.Commit(testCtx(t), Strict, func(tx *Tx) error {
				tx.Set(SpaceTask.KeyString("urn:asap:agent:a", string(rune('a'+i))), []byte("v"))
				return nil
			}); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	groups, writers, syncs := rec.snapshot()
	// Every writer is in exactly one committed group, and a strict
	// write returns only after a sync that covers it.
	if writers != n || groups < 1 || groups > n || syncs < 1 || syncs > groups {
		t.Fatalf("groups %d, writers %d, syncs %d; want %d writers in 1..%d groups and 1..groups syncs", groups, writers, syncs, n, n)
	}
	// Relaxed writes are committed but not synced until a flush.
	if err := db.Commit(testCtx(t), Relaxed, func(tx *Tx) error {
		tx.Set(SpaceTask.KeyString("urn:asap:agent:a", "relaxed"), []byte("v"))
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if g, w, s := rec.snapshot(); g != groups+1 || w != n+1 || s != syncs {
		t.Fatalf("after a relaxed write: groups %d, writers %d, syncs %d", g, w, s)
	}
	if err := db.Sync(); err != nil {
		t.Fatal(err)
	}
	if _, _, s := rec.snapshot(); s != syncs+1 {
		t.Fatalf("Sync not observed: %d syncs, want %d", s, syncs+1)
	}
}

func TestSizeGrowsWithWrites(t *testing.T) {
	db := openTest(t, t.TempDir())
	defer db.Close()
	before, err := db.Size()
	if err != nil {
		t.Fatal(err)
	}
	big := make([]byte, 1<<20) // reaches the value log
	for i := range big {
		big[i] = byte(i)
	}
	for i := range 4 {
		if err := db.Commit(testCtx(t), Strict, func(tx *Tx) error {
			tx.Set(SpaceTask.KeyString("urn:asap:agent:a", string(rune('a'+i))), big)
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	after, err := db.Size()
	if err != nil {
		t.Fatal(err)
	}
	if after.LSM <= 0 || after.ValueLog < before.ValueLog+4<<20 {
		t.Fatalf("size before %+v, after %+v: want the LSM > 0 and the value log grown by 4MiB", before, after)
	}
}
