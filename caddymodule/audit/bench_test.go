package audit

import (
	"context"
	"runtime"
	"testing"
	"time"

	"github.com/asap-sidecar/asap-sidecar/storage"
)

// BenchmarkAppend measures strict (synced) appends at concurrency 64, with
// the Merkle tree and with the hash chain alone, in the same run.
//
//	go test -run '^$' -bench Append ./caddymodule/audit
func BenchmarkAppend(b *testing.B) {
	for _, tc := range []struct {
		name      string
		chainOnly bool
	}{{"chain+tree", false}, {"chain-only", true}} {
		b.Run(tc.name, func(b *testing.B) {
			db, err := storage.Open(storage.Options{Dir: b.TempDir()})
			if err != nil {
				b.Fatal(err)
			}
			defer db.Close()
			l := New(db)
			l.chainOnly = tc.chainOnly
			b.SetParallelism(64 / runtime.GOMAXPROCS(0))
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					err := db.Commit(context.Background(), storage.Strict, func(tx *storage.Tx) error {
						_, err := l.Append(tx, time.Now(), Record{Operation: OpTaskCompleted, AgentURN: "urn:asap:agent:client",
							Details: map[string]any{"task_id": "task_01J", "envelope_id": "01JENV", "status": "completed", "duration_ms": 12}})
						return err
					})
					if err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "appends/s")
		})
	}
}
