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

// BenchmarkTaskDetails builds a task.completed record's details as the
// request path does (Fields) and as a map, in the same run.
//
//	go test -run '^$' -bench TaskDetails ./caddymodule/audit
func BenchmarkTaskDetails(b *testing.B) {
	b.Run("fields", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			r := make(Fields, 0, 12).Str("task_id", "task_01JD0000000000000000000000").Str("envelope_id", "01JD0000000000000000000000").
				Str("agent", "urn:asap:agent:demo").Str("consumer", "urn:asap:agent:client").Str("payload_type", "task.request").
				Str("status", "completed").Int("http_status", 200).Int("duration_ms", 3).Record(OpTaskCompleted, "urn:asap:agent:client")
			if len(r.canonical) == 0 {
				b.Fatal("not prepared")
			}
		}
	})
	b.Run("map", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			r := Record{Operation: OpTaskCompleted, AgentURN: "urn:asap:agent:client", Details: map[string]any{
				"task_id": "task_01JD0000000000000000000000", "envelope_id": "01JD0000000000000000000000",
				"agent": "urn:asap:agent:demo", "consumer": "urn:asap:agent:client", "payload_type": "task.request",
				"status": "completed", "http_status": 200, "duration_ms": int64(3)}}
			if err := r.Prepare(); err != nil {
				b.Fatal(err)
			}
		}
	})
}
