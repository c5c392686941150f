package caddymodule

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/asap-sidecar/asap-sidecar/caddymodule/audit"
	"github.com/asap-sidecar/asap-sidecar/caddymodule/metering"
	"github.com/asap-sidecar/asap-sidecar/storage"
)

// BenchmarkBackup fills a database with ASAP_BENCH_TASKS tasks (default
// 1,000,000), each written as the handler writes one with metering and
// audit on (outcome counters, the usage event with its indexes and
// retention TTL, task.started, task.completed and usage.recorded), but
// straight through the storage pipeline rather than over HTTP. It then
// times backups of it to a file, reports the file's size against the
// database's, and times one restore:
//
//	go test -run '^$' -bench Backup -benchtime 1x -timeout 1h ./caddymodule
func BenchmarkBackup(b *testing.B) {
	tasks := 1_000_000
	if v := os.Getenv("ASAP_BENCH_TASKS"); v != "" {
		var err error
		if tasks, err = strconv.Atoi(v); err != nil || tasks < 1 {
			b.Fatalf("ASAP_BENCH_TASKS=%q: want a positive number", v)
		}
	}
	dir := b.TempDir()
	db, err := storage.Open(storage.Options{Dir: filepath.Join(dir, "db")})
	if err != nil {
		b.Fatal(err)
	}
	started := time.Now()
	fillTasks(b, db, tasks)
	b.Logf("wrote %d tasks in %s", tasks, time.Since(started).Round(time.Millisecond))
	if err := db.Sync(); err != nil {
		b.Fatal(err)
	}
	dbSize, err := dirSize(filepath.Join(dir, "db"))
	if err != nil {
		b.Fatal(err)
	}
	file := filepath.Join(dir, "asap.backup")
	var info storage.BackupInfo
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		f, err := os.Create(file)
		if err != nil {
			b.Fatal(err)
		}
		if info, err = db.Backup(f); err != nil {
			b.Fatal(err)
		}
		if err := f.Close(); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	if err := db.Close(); err != nil {
		b.Fatal(err)
	}
	f, err := os.Open(file)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	started = time.Now()
	if _, err := storage.Restore(storage.Options{Dir: filepath.Join(dir, "restored")}, f); err != nil {
		b.Fatal(err)
	}
	restoreTook := time.Since(started)
	b.ReportMetric(float64(tasks), "tasks")
	b.ReportMetric(float64(info.Bytes)/1e6, "backup-MB")
	b.ReportMetric(float64(dbSize)/1e6, "db-MB")
	b.ReportMetric(float64(info.Bytes)/float64(tasks), "backup-B/task")
	b.ReportMetric(restoreTook.Seconds(), "restore-s")
}

// fillTasks writes n tasks' records, as persist does, from 8 writers so
// the pipeline groups them.
func fillTasks(b *testing.B, db *storage.DB, n int) {
	const agent, consumer = "urn:asap:agent:demo", "urn:asap:agent:client"
	meter := metering.New(db, 30*24*time.Hour)
	log := audit.New(db)
	ctx := context.Background()
	var wg sync.WaitGroup
	const writers = 8
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			var pend []*storage.Pending
			for i := w; i < n; i += writers {
				envID := fmt.Sprintf("01JBACKUP%017d", i)
				taskID := fmt.Sprintf("task_01JBACKUP%012d", i)
				now := time.Now().UTC().Truncate(time.Microsecond)
				ev := &metering.Event{TaskID: taskID, AgentID: agent, ConsumerID: consumer, TokensIn: 120, TokensOut: 480,
					APICalls: 1, DurationMS: 12, Timestamp: now, Status: "completed", PayloadType: "task.request",
					EnvelopeID: envID, DelegationID: "del_01JBACKUPDELEGATION00000", RootIssuer: agent}
				base := make(audit.Fields, 0, 12).Str("task_id", taskID).Str("envelope_id", envID).Str("agent", agent).
					Str("consumer", consumer).Str("payload_type", "task.request").
					Str("delegation_id", ev.DelegationID).Str("root_issuer", agent)
				trail := []audit.Record{
					base.Str("started_at", now.Format(audit.TimeFormat)).Record(audit.OpTaskStarted, consumer),
					append(audit.Fields{}, base...).Str("status", "completed").Int("http_status", 200).Int("duration_ms", 12).Record(audit.OpTaskCompleted, consumer),
					usageRecord(ev),
				}
				pend = append(pend, db.Submit(storage.Relaxed, func(tx *storage.Tx) error {
					if err := metering.CountOutcome(tx, agent, false); err != nil {
						return err
					}
					if _, err := meter.PutCall(tx, ev, envID, nil); err != nil {
						return err
					}
					return log.Stage(tx, now, trail...)
				}))
				if len(pend) == 256 {
					for _, p := range pend {
						if err := p.Wait(ctx); err != nil {
							b.Error(err)
							return
						}
					}
					pend = pend[:0]
				}
			}
			for _, p := range pend {
				if err := p.Wait(ctx); err != nil {
					b.Error(err)
				}
			}
		}(w)
	}
	wg.Wait()
	if b.Failed() {
		b.FailNow()
	}
}
