package fleet

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/asap-sidecar/asap-sidecar/internal/natstest"
)

func connect(t testing.TB, url string) *Client {
	t.Helper()
	c, err := Connect(Options{URL: url, Name: t.Name()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	deadline := time.Now().Add(10 * time.Second)
	for !c.Connected() {
		if time.Now().After(deadline) {
			t.Fatal("not connected to NATS after 10s")
		}
		time.Sleep(time.Millisecond)
	}
	return c
}

// ready sets c's streams and bucket up before a test measures something
// else: on a loaded machine creating them can take seconds.
func ready(t testing.TB, c *Client) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		err := c.setup(context.Background())
		if err == nil && c.Ready() {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("fleet streams not set up after 30s: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

const hashA = "n4bQgYhMfWWaL-qgxVrQFaO_TxsrC4Is0V1sFbDwCgg"

// Three replicas, 64 concurrent takers, max 20: exactly 20 slots, and the
// bucket says 20.
func TestTakeIsExactAcrossReplicas(t *testing.T) {
	n := natstest.Start(t)
	replicas := []*Client{connect(t, n.URL()), connect(t, n.URL()), connect(t, n.URL())}
	for _, r := range replicas {
		ready(t, r)
	}
	const max, takers = 20, 64
	var got, spent atomic.Int64
	var wg sync.WaitGroup
	for i := range takers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := replicas[i%3].Take(context.Background(), hashA, max, inAnHour)
			switch {
			case err == nil:
				got.Add(1)
			case errors.Is(err, ErrSpent):
				spent.Add(1)
			default:
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if got.Load() != max || spent.Load() != takers-max {
		t.Fatalf("%d slots taken, %d refused; want %d and %d", got.Load(), spent.Load(), max, takers-max)
	}
	if c, err := replicas[0].Count(context.Background(), hashA); err != nil || c != max {
		t.Fatalf("count %d, %v; want %d", c, err, max)
	}
}

// A released slot can be taken again, by another replica; a second
// release gives nothing more back, and counts never go below zero.
func TestReleaseGivesTheSlotBack(t *testing.T) {
	n := natstest.Start(t)
	a, b := connect(t, n.URL()), connect(t, n.URL())
	ctx := context.Background()
	s1, err := a.Take(ctx, hashA, 2, inAnHour)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.Take(ctx, hashA, 2, inAnHour); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Take(ctx, hashA, 2, inAnHour); !errors.Is(err, ErrSpent) {
		t.Fatalf("third take: %v, want ErrSpent", err)
	}
	if err := s1.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if err := s1.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if c, _ := a.Count(ctx, hashA); c != 1 {
		t.Fatalf("count after one release (twice) = %d, want 1", c)
	}
	s3, err := b.Take(ctx, hashA, 2, inAnHour)
	if err != nil {
		t.Fatalf("take after release: %v", err)
	}
	// A stale cached revision on a (b wrote last) costs a retry, not a
	// wrong count.
	if _, err := a.Take(ctx, hashA, 2, inAnHour); !errors.Is(err, ErrSpent) {
		t.Fatalf("take with a stale cache: %v, want ErrSpent", err)
	}
	var nilSlot *Slot
	if err := nilSlot.Release(ctx); err != nil {
		t.Fatal(err)
	}
	_ = s3
	// Other tokens are counted apart.
	if _, err := a.Take(ctx, "other", 1, inAnHour); err != nil {
		t.Fatal(err)
	}
	if c, _ := a.Count(ctx, "never-used"); c != 0 {
		t.Fatalf("unused token count %d", c)
	}
}

// A count that is not a number is named, not taken as zero.
func TestTakeRefusesACorruptCount(t *testing.T) {
	n := natstest.Start(t)
	c := connect(t, n.URL())
	ctx := context.Background()
	ready(t, c)
	if _, err := c.limits.Put(ctx, limitKey(hashA), []byte("lots")); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Take(ctx, hashA, 5, inAnHour); err == nil || errors.Is(err, ErrUnavailable) {
		t.Fatalf("take of a corrupt count: %v", err)
	}
}

// With NATS down, Take fails with ErrUnavailable (the caller decides:
// fail closed by default), and works again once NATS is back.
func TestTakeWhileNATSIsDown(t *testing.T) {
	n := natstest.Start(t)
	c := connect(t, n.URL())
	ctx := context.Background()
	if _, err := c.Take(ctx, hashA, 5, inAnHour); err != nil {
		t.Fatal(err)
	}
	n.Stop()
	if _, err := c.Take(ctx, hashA, 5, inAnHour); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("take with NATS down: %v, want ErrUnavailable", err)
	}
	n.Start()
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, err := c.Take(ctx, hashA, 5, inAnHour)
		if err == nil {
			break
		}
		if !errors.Is(err, ErrUnavailable) || time.Now().After(deadline) {
			t.Fatalf("take after NATS came back: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if cnt, _ := c.Count(ctx, hashA); cnt != 2 {
		t.Fatalf("count %d after the outage, want 2 (kept on disk)", cnt)
	}
}

func TestConnectNeedsAURL(t *testing.T) {
	if _, err := Connect(Options{}); err == nil {
		t.Fatal("connected without a URL")
	}
}

var inAnHour = time.Now().Add(time.Hour)

// A count lives until its token expires (plus KeepAfterExpiry): the bucket
// does not keep every token ever used. Updates keep the TTL too.
func TestCountsExpireWithTheirToken(t *testing.T) {
	n := natstest.Start(t)
	c := connect(t, n.URL())
	c.keepAfterExpiry = 0
	ctx := context.Background()
	exp := time.Now().Add(time.Second)
	if _, err := c.Take(ctx, hashA, 5, exp); err != nil {
		t.Fatal(err)
	}
	s, err := c.Take(ctx, hashA, 5, exp) // an update, not a create
	if err != nil {
		t.Fatal(err)
	}
	if cnt, _ := c.Count(ctx, hashA); cnt != 2 {
		t.Fatalf("count %d, want 2", cnt)
	}
	if _, err := c.Take(ctx, "long-lived", 5, inAnHour); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, func() bool { cnt, err := c.Count(ctx, hashA); return err == nil && cnt == 0 })
	if cnt, _ := c.Count(ctx, "long-lived"); cnt != 1 {
		t.Fatalf("a token an hour from expiry lost its count: %d", cnt)
	}
	// A release after expiry finds nothing to give back and writes nothing.
	if err := s.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := c.limits.Get(ctx, limitKey(hashA)); !errors.Is(err, jetstream.ErrKeyNotFound) {
		t.Fatalf("the release wrote the expired count back: %v", err)
	}
	if got := c.ttl(time.Now().Add(-time.Hour)); got != time.Second {
		t.Fatalf("ttl of a past expiry %v, want the 1s floor", got)
	}
}
