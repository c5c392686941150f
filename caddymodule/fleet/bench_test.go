package fleet

import (
	"context"
	"fmt"
	"sort"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/asap-sidecar/asap-sidecar/internal/natstest"
)

// BenchmarkTake is what fleet mode adds to a call with a limited token:
// one compare-and-set on the token's count (a take, released afterwards so
// the count never runs out), one client, loopback NATS. It reports the
// median and 99th percentile of the take alone.
func BenchmarkTake(b *testing.B) {
	n := natstest.Start(b)
	c := connect(b, n.URL())
	ctx := context.Background()
	if _, err := c.Take(ctx, hashA, 1<<40, inAnHour); err != nil { // warm: streams, bucket, cache
		b.Fatal(err)
	}
	took := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		start := time.Now()
		if _, err := c.Take(ctx, hashA, 1<<40, inAnHour); err != nil {
			b.Fatal(err)
		}
		took = append(took, time.Since(start))
	}
	b.StopTimer()
	sort.Slice(took, func(i, j int) bool { return took[i] < took[j] })
	b.ReportMetric(float64(took[len(took)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(took[len(took)*99/100].Microseconds()), "p99-µs")
}

// BenchmarkTakeContended is three replicas taking slots of one token at
// once: conflicts cost retries.
func BenchmarkTakeContended(b *testing.B) {
	n := natstest.Start(b)
	cs := []*Client{connect(b, n.URL()), connect(b, n.URL()), connect(b, n.URL())}
	ctx := context.Background()
	b.ResetTimer()
	b.SetParallelism(1)
	var next atomic.Int64
	b.RunParallel(func(pb *testing.PB) {
		c := cs[next.Add(1)%3]
		for pb.Next() {
			if _, err := c.Take(ctx, hashA, 1<<40, inAnHour); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkCollectorIngest is the collector's ingest rate: b.N usage
// messages wait in the stream, and the collector stores them all
// (deduplicated, durable, acknowledged). Reported as events/s.
func BenchmarkCollectorIngest(b *testing.B) {
	n := natstest.Start(b)
	pub := connect(b, n.URL())
	ready(b, pub)
	o := &origin{id: "bench"}
	for i := 0; i < b.N; i++ {
		m, err := o.use("urn:asap:agent:client", fmt.Sprintf("env-%d", i), i).Message()
		if err != nil {
			b.Fatal(err)
		}
		if _, err := pub.js.PublishAsync(m.Subject, m.Data, jetstream.WithMsgID(m.ID)); err != nil {
			b.Fatal(err)
		}
	}
	select {
	case <-pub.js.PublishAsyncComplete():
	case <-time.After(time.Minute):
		b.Fatal("publishing did not complete")
	}
	k, err := NewCollector(connect(b, n.URL()), openDB(b), CollectorOptions{})
	if err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	start := time.Now()
	run(b, k.Run)
	for k.ingested.Load() < uint64(b.N) {
		if time.Since(start) > 5*time.Minute {
			b.Fatalf("ingested %d of %d", k.ingested.Load(), b.N)
		}
		time.Sleep(time.Millisecond)
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "events/s")
}
