package e2e

import (
	"fmt"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/asap-sidecar/asap-sidecar/caddymodule/metering"
	"github.com/asap-sidecar/asap-sidecar/storage"
)

// SPEC §11: no lost and no double-counted usage events over 100k tasks at
// concurrency 64, retries included. -short runs 10k.
func TestMeteringDriftAtConcurrency64(t *testing.T) {
	n := 100_000
	if testing.Short() {
		n = 10_000
	}
	const workers = 64
	s := newSidecar(t, externalAgent(t), "agent urn:asap:agent:demo")
	id := func(i int) string { return fmt.Sprintf("01JDRIFT%018d", i) }

	var answered, retried atomic.Int64
	jobs := make(chan int, workers)
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range jobs {
				if ok, err := call(s.url, id(i), "echo", `{"tokens_in":3,"tokens_out":5}`); !ok {
					t.Errorf("task %d: %v", i, err)
					continue
				}
				answered.Add(1)
				// Every 10th task is sent again, as a client retry would:
				// it is answered but must not be counted twice.
				if i%10 == 0 {
					if ok, err := call(s.url, id(i), "echo", `{"tokens_in":3,"tokens_out":5}`); !ok {
						t.Errorf("retry of task %d: %v", i, err)
					} else {
						retried.Add(1)
					}
				}
			}
		}()
	}
	for i := 0; i < n; i++ {
		jobs <- i
	}
	close(jobs)
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	s.stop(syscall.SIGTERM)

	db, err := storage.Open(storage.Options{Dir: s.dir})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	seen := make(map[string]int, n)
	var tokens int64
	err = metering.New(db, 0).Each(metering.Filter{}, func(e *metering.Event) bool {
		seen[e.EnvelopeID]++
		tokens += e.TokensIn + e.TokensOut
		return true
	})
	if err != nil {
		t.Fatal(err)
	}
	lost, doubled := 0, 0
	for i := 0; i < n; i++ {
		switch c := seen[id(i)]; {
		case c == 0:
			lost++
		case c > 1:
			doubled++
		}
	}
	if lost != 0 || doubled != 0 || len(seen) != n || tokens != int64(8*n) {
		t.Fatalf("%d tasks answered (+%d retries): %d lost, %d double-counted, %d distinct events, %d tokens (want %d)",
			answered.Load(), retried.Load(), lost, doubled, len(seen), tokens, 8*n)
	}
	t.Logf("%d tasks + %d retries at concurrency %d: 0 lost, 0 double-counted", n, retried.Load(), workers)
}
