package storage

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/dgraph-io/badger/v4"
)

// The per-task write of the sidecar: a ~400-byte record under its own key
// plus the agent's forwarded and completed counters.
var taskRecord = bytes.Repeat([]byte("r"), 400)

const benchConcurrency = 64

func setConcurrency(b *testing.B) {
	p := benchConcurrency / runtime.GOMAXPROCS(0)
	if p < 1 {
		p = 1
	}
	b.SetParallelism(p)
}

// BenchmarkTaskWrite compares, at concurrency 64 and with every write
// synced before it counts as done, the group-commit pipeline against one
// synced Badger transaction per task (SPEC §11 asks for ≥ 3×). Run both in
// one invocation: go test -bench TaskWrite -run ^$ ./storage
func BenchmarkTaskWrite(b *testing.B) {
	for _, counters := range []bool{true, false} {
		name := "record+counters"
		if !counters {
			name = "record-only"
		}
		b.Run(name+"/group-commit", func(b *testing.B) { benchGroup(b, counters) })
		b.Run(name+"/txn-per-task", func(b *testing.B) { benchTxnPerTask(b, counters) })
	}
}

func benchGroup(b *testing.B, counters bool) {
	db, err := Open(Options{Dir: b.TempDir()})
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	setConcurrency(b)
	strictTaskWrites(b, db, counters)
}

// strictTaskWrites commits b.N strict task records (with the agent's two
// counters when counters is set) from b's parallel goroutines and reports
// tasks/s.
func strictTaskWrites(b *testing.B, db *DB, counters bool) {
	var seq atomic.Uint64
	fwd, done := SpaceCounter.KeyString("agent", "forwarded"), SpaceCounter.KeyString("agent", "completed")
	cpu0 := processCPU()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		ctx := context.Background()
		for pb.Next() {
			key := SpaceTask.KeyString("agent", fmt.Sprintf("env-%d", seq.Add(1)))
			err := db.Commit(ctx, Strict, func(tx *Tx) error {
				tx.Set(key, taskRecord)
				if !counters {
					return nil
				}
				if _, err := tx.AddUint64(fwd, 1); err != nil {
					return err
				}
				_, err := tx.AddUint64(done, 1)
				return err
			})
			if err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "tasks/s")
	// CPU is what limits the sidecar's throughput: the process's user and
	// system time (the pipeline, Badger and the fsyncs) per task.
	b.ReportMetric(float64(processCPU()-cpu0)/float64(b.N)/1e3, "cpu-µs/task")
}

// processCPU is the user plus system CPU time this process has used, in ns.
func processCPU() int64 {
	var r syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &r); err != nil {
		return 0
	}
	return r.Utime.Nano() + r.Stime.Nano()
}

func benchTxnPerTask(b *testing.B, counters bool) {
	bdb, err := badger.Open(badger.DefaultOptions(b.TempDir()).WithSyncWrites(true).WithLogger(nil).
		WithMemTableSize(16 << 20).WithNumMemtables(3).WithBlockCacheSize(32 << 20).WithIndexCacheSize(16 << 20).WithNumCompactors(2))
	if err != nil {
		b.Fatal(err)
	}
	defer bdb.Close()
	var seq, conflicts atomic.Uint64
	fwd, done := SpaceCounter.KeyString("agent", "forwarded"), SpaceCounter.KeyString("agent", "completed")
	incr := func(txn *badger.Txn, k []byte) error {
		var n uint64
		item, err := txn.Get(k)
		switch {
		case errors.Is(err, badger.ErrKeyNotFound):
		case err != nil:
			return err
		default:
			v, err := item.ValueCopy(nil)
			if err != nil {
				return err
			}
			if n, err = DecodeUint64(v); err != nil {
				return err
			}
		}
		return txn.Set(k, EncodeUint64(n+1))
	}
	setConcurrency(b)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			key := SpaceTask.KeyString("agent", fmt.Sprintf("env-%d", seq.Add(1)))
			for {
				err := bdb.Update(func(txn *badger.Txn) error {
					if err := txn.Set(key, taskRecord); err != nil {
						return err
					}
					if !counters {
						return nil
					}
					if err := incr(txn, fwd); err != nil {
						return err
					}
					return incr(txn, done)
				})
				if errors.Is(err, badger.ErrConflict) {
					conflicts.Add(1) // a concurrent counter update won: retry
					continue
				}
				if err != nil {
					b.Error(err)
					return
				}
				break
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "tasks/s")
	b.ReportMetric(float64(conflicts.Load())/float64(b.N), "retries/task")
}

// BenchmarkStrictGroupCommit is the strict path alone: 1, 16 and 64
// concurrent writers, each waiting until its task record and counters are
// synced. It reports tasks/s, the process's CPU time per task, and how
// many fsyncs (Badger Syncs) each task cost — the figure group commit
// exists to push far below 1.
//
//	go test -run '^$' -bench StrictGroupCommit ./storage
func BenchmarkStrictGroupCommit(b *testing.B) {
	for _, writers := range []int{1, 16, 64} {
		b.Run(fmt.Sprintf("writers=%d", writers), func(b *testing.B) {
			var syncs atomic.Uint64
			db, err := open(Options{Dir: b.TempDir()}, deps{sync: func(real func() error, _ *badger.DB) error {
				syncs.Add(1)
				return real()
			}})
			if err != nil {
				b.Fatal(err)
			}
			defer db.Close()
			b.SetParallelism(max(1, writers/runtime.GOMAXPROCS(0)))
			strictTaskWrites(b, db, true)
			b.ReportMetric(float64(syncs.Load())/float64(b.N), "fsyncs/task")
		})
	}
}
