package fleet

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/asap-sidecar/asap-sidecar/caddymodule/metering"
	"github.com/asap-sidecar/asap-sidecar/internal/natstest"
	"github.com/asap-sidecar/asap-sidecar/storage"
)

// origin is one simulated sidecar: its own database and outbox publishing
// to the fleet, as a sidecar in fleet mode does.
type origin struct {
	id     string
	db     *storage.DB
	outbox *Outbox
}

func newOrigin(t testing.TB, id, url string) *origin {
	t.Helper()
	db := openDB(t)
	o, err := OpenOutbox(db, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	c := connect(t, url)
	run(t, func(ctx context.Context) { o.Run(ctx, c) })
	return &origin{id: id, db: db, outbox: o}
}

var base = time.Date(2026, 12, 3, 10, 0, 0, 0, time.UTC)

// use is task n of consumer at o: tokens n+1 in, 2 out, 10ms, 1 call.
func (o *origin) use(consumer, envelope string, n int) Usage {
	return Usage{Origin: o.id, Name: "name-" + o.id, Dedup: envelope, Event: metering.Event{
		TaskID: fmt.Sprintf("task-%s-%s", o.id, envelope), AgentID: "urn:asap:agent:" + o.id, ConsumerID: consumer,
		TokensIn: int64(n + 1), TokensOut: 2, DurationMS: 10, APICalls: 1, Timestamp: base.Add(time.Duration(n) * time.Second),
		EnvelopeID: envelope, Status: "completed",
	}}
}

// stage writes us into o's outbox in one transaction, as record.go does.
func (o *origin) stage(t testing.TB, us ...Usage) {
	t.Helper()
	err := o.db.Commit(context.Background(), storage.Strict, func(tx *storage.Tx) error {
		for _, u := range us {
			m, err := u.Message()
			if err != nil {
				return err
			}
			if err := o.outbox.Stage(tx, m); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	o.outbox.Notify()
}

func newCollector(t testing.TB, url string, db *storage.DB, o CollectorOptions) *Collector {
	t.Helper()
	k, err := NewCollector(connect(t, url), db, o)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// runCollector runs k until the returned stop is called (or the test ends).
func runCollector(t testing.TB, k *Collector) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); k.Run(ctx) }()
	stopped := false
	stop = func() {
		if !stopped {
			stopped = true
			cancel()
			<-done
		}
	}
	t.Cleanup(stop)
	return stop
}

func waitIngested(t testing.TB, k *Collector, n uint64) {
	t.Helper()
	waitUntil(t, func() bool { return k.Status(context.Background()).Ingested >= n })
	if got := k.Status(context.Background()).Ingested; got != n {
		t.Fatalf("ingested %d, want %d", got, n)
	}
}

func summary(t testing.TB, k *Collector, f metering.Filter) metering.Summary {
	t.Helper()
	s, err := k.Store().Summarize(f)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// Three sidecars' usage reaches one collector: its totals are the sum,
// agents stay apart and a consumer's total adds up across sidecars.
func TestCollectorSumsTheFleet(t *testing.T) {
	n := natstest.Start(t)
	k := newCollector(t, n.URL(), openDB(t), CollectorOptions{})
	runCollector(t, k)
	var wantTokens int64
	for i, id := range []string{"a", "b", "c"} {
		o := newOrigin(t, id, n.URL())
		for j := range 10 + i {
			u := o.use("urn:asap:agent:client", fmt.Sprintf("env-%d", j), j)
			wantTokens += u.Event.TokensIn + u.Event.TokensOut
			o.stage(t, u)
		}
	}
	waitIngested(t, k, 33)
	s := summary(t, k, metering.Filter{})
	if s.TotalTasks != 33 || s.TotalTokens != wantTokens || s.TotalDurationMS != 330 || s.TotalAPICalls != 33 ||
		s.UniqueAgents != 3 || s.UniqueConsumers != 1 {
		t.Fatalf("summary %+v, want 33 tasks, %d tokens, 3 agents, 1 consumer", s, wantTokens)
	}
	if s := summary(t, k, metering.Filter{AgentID: "urn:asap:agent:b"}); s.TotalTasks != 11 {
		t.Fatalf("agent b has %d tasks, want 11", s.TotalTasks)
	}
	if s := summary(t, k, metering.Filter{ConsumerID: "urn:asap:agent:client"}); s.TotalTasks != 33 {
		t.Fatalf("the consumer has %d tasks across the fleet, want 33", s.TotalTasks)
	}
	st := k.Status(context.Background())
	if st.Duplicates != 0 || st.Malformed != 0 || !st.Connected || st.LastMessageAt == nil {
		t.Fatalf("status %+v", st)
	}
	waitUntil(t, func() bool { p := k.Status(context.Background()).Pending; return p != nil && *p == 0 })
}

// A republish after JetStream's duplicate window (a new message id for
// the same task) is dropped by the collector; the same envelope id at two
// sidecars is two executions and counts twice.
func TestCollectorDeduplicatesOnOriginAgentConsumerAndEnvelope(t *testing.T) {
	n := natstest.Start(t)
	pub := connect(t, n.URL())
	ctx := context.Background()
	ready(t, pub)
	a, b := &origin{id: "a"}, &origin{id: "b"}
	publish := func(u Usage, id string) {
		t.Helper()
		m, err := u.Message()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := pub.js.Publish(ctx, m.Subject, m.Data, jetstream.WithMsgID(id)); err != nil {
			t.Fatal(err)
		}
	}
	same := a.use("urn:asap:agent:client", "env-1", 1)
	publish(same, "first")
	publish(same, "after-the-window") // JetStream keeps it: a new id
	twin := same
	twin.Origin = "b"
	publish(twin, "other-origin")
	publish(a.use("urn:asap:agent:other-client", "env-1", 1), "other-consumer")
	publish(b.use("urn:asap:agent:client", "env-2", 2), "b-own")

	k := newCollector(t, n.URL(), openDB(t), CollectorOptions{})
	runCollector(t, k)
	waitUntil(t, func() bool { s := k.Status(ctx); return s.Ingested+s.Duplicates == 5 })
	st := k.Status(ctx)
	if st.Ingested != 4 || st.Duplicates != 1 {
		t.Fatalf("ingested %d, duplicates %d; want 4 and 1", st.Ingested, st.Duplicates)
	}
	if s := summary(t, k, metering.Filter{ConsumerID: "urn:asap:agent:client"}); s.TotalTasks != 3 {
		t.Fatalf("consumer has %d tasks, want 3 (env-1 at a and at b, env-2 at b)", s.TotalTasks)
	}
}

// A collector that stored a batch and died before acking gets it again
// after AckWait and counts none of it twice.
func TestCollectorRedeliveryAfterALostAckCountsOnce(t *testing.T) {
	n := natstest.Start(t)
	o := newOrigin(t, "a", n.URL())
	for i := range 5 {
		o.stage(t, o.use("urn:asap:agent:client", fmt.Sprintf("env-%d", i), i))
	}
	waitUntil(t, func() bool { return o.outbox.Backlog() == 0 })
	db := openDB(t)
	opts := CollectorOptions{AckWait: 300 * time.Millisecond}
	crashed := newCollector(t, n.URL(), db, opts)
	ctx := context.Background()
	ready(t, crashed.c)
	cons, err := crashed.consumer(ctx, UsageStream)
	if err != nil {
		t.Fatal(err)
	}
	var msgs []jetstream.Msg
	for len(msgs) < 5 {
		got, err := crashed.fetch(cons)
		if err != nil {
			t.Fatal(err)
		}
		msgs = append(msgs, got...)
	}
	if err := crashed.ingestUsage(ctx, msgs); err != nil { // stored, never acked
		t.Fatal(err)
	}
	k := newCollector(t, n.URL(), db, opts)
	if st := k.Status(ctx); st.Ingested != 5 {
		t.Fatalf("a restarted collector reads ingested %d from its database, want 5", st.Ingested)
	}
	runCollector(t, k)
	waitUntil(t, func() bool { return k.Status(ctx).Duplicates == 5 })
	if s := summary(t, k, metering.Filter{}); s.TotalTasks != 5 || k.Status(ctx).Ingested != 5 {
		t.Fatalf("after the redelivery: %d tasks, status %+v", s.TotalTasks, k.Status(ctx))
	}
}

// NATS goes away while sidecars keep metering and comes back; the
// collector is also restarted on its database. Every task is counted
// exactly once.
func TestCollectorThroughAnOutageAndARestart(t *testing.T) {
	n := natstest.Start(t)
	db := openDB(t)
	opts := CollectorOptions{AckWait: 500 * time.Millisecond, Batch: 7}
	k := newCollector(t, n.URL(), db, opts)
	stop := runCollector(t, k)
	origins := []*origin{newOrigin(t, "a", n.URL()), newOrigin(t, "b", n.URL()), newOrigin(t, "c", n.URL())}
	task := 0
	stageRound := func(per int) {
		for range per {
			for _, o := range origins {
				o.stage(t, o.use("urn:asap:agent:client", fmt.Sprintf("env-%d", task), task))
			}
			task++
		}
	}
	stageRound(20)
	waitUntil(t, func() bool { return k.Status(context.Background()).Ingested >= 30 })
	n.Stop() // mid-stream: the rest of the first round is in outboxes or the stream
	waitUntil(t, func() bool { return !k.Status(context.Background()).Connected })
	if p := k.Status(context.Background()).Pending; p != nil {
		t.Fatalf("pending %d while NATS is down; want unknown", *p)
	}
	stageRound(20)
	n.Start()
	stageRound(5)
	waitIngested(t, k, 3*45)
	stop()
	// A new collector process on the same database resumes at the
	// durable consumer's place.
	k2 := newCollector(t, n.URL(), db, opts)
	runCollector(t, k2)
	stageRound(5)
	waitIngested(t, k2, 3*50)
	if s := summary(t, k2, metering.Filter{}); s.TotalTasks != 150 || s.UniqueAgents != 3 {
		t.Fatalf("summary %+v, want 150 tasks of 3 agents", s)
	}
	waitUntil(t, func() bool { p := k2.Status(context.Background()).Pending; return p != nil && *p == 0 })
	if s := summary(t, k2, metering.Filter{}); s.TotalTasks != 150 {
		t.Fatalf("%d tasks once nothing is pending, want 150", s.TotalTasks)
	}
}

// The collector keeps the latest checkpoint of each sidecar; an older one
// arriving late replaces nothing.
func TestCollectorKeepsTheLatestCheckpointPerOrigin(t *testing.T) {
	n := natstest.Start(t)
	k := newCollector(t, n.URL(), openDB(t), CollectorOptions{})
	a, b := newOrigin(t, "a", n.URL()), newOrigin(t, "b", n.URL())
	cp := func(o *origin, size uint64, at time.Time) Checkpoint {
		return Checkpoint{Origin: o.id, Name: "name-" + o.id, Agent: "urn:asap:agent:" + o.id, Size: size,
			Checkpoint: fmt.Sprintf("urn:asap:agent:%s/audit\n%d\nroot\n\n— sig %d\n", o.id, size, at.Unix()),
			SignedAt:   at, PublicKey: "urn:asap:agent:" + o.id + "/audit+0000+key"}
	}
	stageCP := func(o *origin, cs ...Checkpoint) {
		t.Helper()
		if err := o.db.Commit(context.Background(), storage.Strict, func(tx *storage.Tx) error {
			for _, c := range cs {
				m, err := c.Message()
				if err != nil {
					return err
				}
				if err := o.outbox.Stage(tx, m); err != nil {
					return err
				}
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		o.outbox.Notify()
	}
	stageCP(a, cp(a, 5, base), cp(a, 9, base.Add(time.Minute)))
	stageCP(b, cp(b, 3, base))
	waitUntil(t, func() bool { return a.outbox.Backlog() == 0 && b.outbox.Backlog() == 0 })
	runCollector(t, k)
	waitUntil(t, func() bool { cs, _ := k.Checkpoints(); return len(cs) == 2 })
	// Late: an older one (a republish), then a re-signed one of the same size.
	stageCP(a, cp(a, 5, base.Add(2*time.Minute)))
	stageCP(b, cp(b, 3, base.Add(time.Hour)))
	waitUntil(t, func() bool {
		cs, _ := k.Checkpoints()
		return len(cs) == 2 && cs[1].SignedAt.Equal(base.Add(time.Hour))
	})
	cs, err := k.Checkpoints()
	if err != nil {
		t.Fatal(err)
	}
	if cs[0].Origin != "a" || cs[0].Size != 9 || cs[0].Checkpoint != cp(a, 9, base.Add(time.Minute)).Checkpoint ||
		cs[0].Name != "name-a" || cs[0].PublicKey == "" {
		t.Fatalf("latest of a: %+v, want size 9", cs[0])
	}
	if cs[1].Origin != "b" || cs[1].Size != 3 {
		t.Fatalf("latest of b: %+v", cs[1])
	}
}

// Messages nobody can read are counted and skipped, not retried forever;
// the stream goes on behind them.
func TestCollectorSkipsMalformedMessages(t *testing.T) {
	n := natstest.Start(t)
	pub := connect(t, n.URL())
	ctx := context.Background()
	ready(t, pub)
	for _, m := range []struct{ subject, data string }{
		{UsageSubjectPrefix + "x", "not json"},
		{UsageSubjectPrefix + "x", `{"event":{"task_id":"t","timestamp":"2026-01-01T00:00:00Z"}}`}, // no origin
		{UsageSubjectPrefix + "x", `{"origin":"x","event":{"task_id":"t"}}`},                       // no time
		{UsageSubjectPrefix + "x", `{"origin":"x","event":{"task_id":"t","timestamp":"9999-12-31T23:59:59Z"}}`},
		{CheckpointSubjectPrefix + "x", `{"origin":"x"}`},
	} {
		if _, err := pub.js.Publish(ctx, m.subject, []byte(m.data)); err != nil {
			t.Fatal(err)
		}
	}
	o := &origin{id: "a"}
	m, _ := o.use("urn:asap:agent:client", "", 1).Message() // no envelope id: dedup on the task
	if _, err := pub.js.Publish(ctx, m.Subject, m.Data); err != nil {
		t.Fatal(err)
	}
	k := newCollector(t, n.URL(), openDB(t), CollectorOptions{Durable: "other"})
	runCollector(t, k)
	waitUntil(t, func() bool { s := k.Status(ctx); return s.Malformed == 4 && s.Ingested == 2 })
	if _, err := pub.js.Consumer(ctx, UsageStream, "other"); err != nil {
		t.Fatalf("the durable consumer is not named by the option: %v", err)
	}
}
