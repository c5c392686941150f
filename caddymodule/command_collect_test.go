package caddymodule

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"golang.org/x/mod/sumdb/note"

	"github.com/asap-sidecar/asap-sidecar/caddymodule/fleet"
	"github.com/asap-sidecar/asap-sidecar/caddymodule/metering"
	"github.com/asap-sidecar/asap-sidecar/internal/natstest"
	"github.com/asap-sidecar/asap-sidecar/storage"
)

func TestCollectRefusesBadFlags(t *testing.T) {
	t.Setenv(collectBearerEnv, "")
	db := t.TempDir()
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--db", db}, "--nats is required"},
		{[]string{"--nats", "nats://127.0.0.1:4222"}, "--db is required"},
		{[]string{"--nats", "nats://x", "--db", db, "--listen", ":9180"}, "--listen :9180 is reachable from other hosts: set --bearer"},
		{[]string{"--nats", "nats://x", "--db", db, "--listen", "0.0.0.0:9180"}, "set --bearer"},
		{[]string{"--nats", "nats://x", "--db", db, "--listen", "collector.example:9180"}, "set --bearer"},
		{[]string{"--nats", "nats://x", "--db", db, "--listen", "9180"}, `--listen "9180"`},
		{[]string{"--nats", "nats://x", "--db", db, "--bearer", "short"}, "at least 16 characters"},
		{[]string{"--nats", "nats://x", "--db", db, "--durable", "a.b"}, "--durable"},
		{[]string{"--nats", "nats://x", "--db", db, "--retention", "soon"}, "--retention"},
	} {
		code, err := cmdCollect(cmdFlags(t, "collect", tc.args...))
		if code == 0 || err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: status %d, error %v; want one saying %q", tc.args, code, err, tc.want)
		}
	}
	// A credential makes any address acceptable; loopback needs none.
	for _, args := range [][]string{
		{"--nats", "nats://x", "--db", db, "--listen", ":9180", "--bearer", "0123456789abcdef"},
		{"--nats", "nats://x", "--db", db, "--listen", "[::1]:9180", "--retention", "90d"},
		{"--nats", "nats://x", "--db", db, "--listen", "localhost:9180"},
	} {
		if _, err := collectFlags(cmdFlags(t, "collect", args...)); err != nil {
			t.Errorf("%v: %v", args, err)
		}
	}
	t.Setenv(collectBearerEnv, "0123456789abcdef")
	if c, err := collectFlags(cmdFlags(t, "collect", "--nats", "nats://x", "--db", db, "--listen", ":9180")); err != nil || c.bearer != "0123456789abcdef" {
		t.Errorf("the bearer from $%s: %q, %v", collectBearerEnv, c.bearer, err)
	}
}

// collectorGet asks the collector at addr with the bearer and decodes the
// answer into v; it returns the status.
func collectorGet(t testing.TB, addr, bearer, path string, v any) int {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, "http://"+addr+path, nil)
	if bearer != "" {
		req.Header.Set("Authorization", "Bearer "+bearer)
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if v != nil && resp.StatusCode == 200 {
		if err := json.Unmarshal(b, v); err != nil {
			t.Fatalf("GET %s: %v in %s", path, err, b)
		}
	}
	return resp.StatusCode
}

func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not after 15s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Tasks through a real sidecar in fleet mode reach a collector run as
// 'asap collect' runs it: its Usage API agrees with the sidecar's own,
// a replica metering the same envelope id adds its execution, and the
// sidecar's latest signed checkpoint is there and verifies.
func TestCollectorGathersARealSidecarsUsageAndCheckpoint(t *testing.T) {
	n := natstest.Start(t)
	s := startSidecar(t, "", fmt.Sprintf("agent urn:asap:agent:demo\ncheckpoint_interval 1s\nfleet {\nnats %s\nname sidecar-a\n}", n.URL()))

	const bearer = "collector-secret-0123"
	ctx, cancel := context.WithCancel(context.Background())
	addrc, done := make(chan string, 1), make(chan error, 1)
	cfg := collectConfig{nats: n.URL(), db: t.TempDir(), listen: "127.0.0.1:0", bearer: bearer, durable: fleet.DefaultDurable}
	go func() { done <- runCollect(ctx, cfg, zap.NewNop(), func(a string) { addrc <- a }) }()
	var addr string
	select {
	case addr = <-addrc:
	case err := <-done:
		t.Fatalf("collector: %v", err)
	}
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			cancel()
			<-done
		}
	})

	const tasks = 12
	for i := range tasks {
		body := rpc(fmt.Sprintf("r%d", i), envelope(fmt.Sprintf("01JCOLLECT%016d", i), "echo", fmt.Sprintf(`{"tokens_in":%d,"tokens_out":3}`, 10+i)))
		if resp, b := post(t, s.url+"/asap", body); resp.StatusCode != 200 {
			t.Fatalf("task %d: %d %s", i, resp.StatusCode, b)
		}
	}
	// A retry of the first envelope is not metered again anywhere.
	post(t, s.url+"/asap", rpc("again", envelope(fmt.Sprintf("01JCOLLECT%016d", 0), "echo", `{"tokens_in":10,"tokens_out":3}`)))

	var st fleet.CollectorStatus
	eventually(t, "the collector ingests every task", func() bool {
		return collectorGet(t, addr, bearer, "/fleet/status", &st) == 200 && st.Ingested >= tasks
	})
	var own, fleetWide metering.Summary
	if getJSON(t, "http://"+s.adminAddr+"/asap/usage/summary", &own) != 200 || collectorGet(t, addr, bearer, "/usage/summary", &fleetWide) != 200 {
		t.Fatal("summaries not served")
	}
	if own.TotalTasks != tasks || fleetWide != own {
		t.Fatalf("collector summary %+v, the sidecar's %+v (%d tasks)", fleetWide, own, tasks)
	}

	// A second replica of the agent executes the same envelope id: two
	// executions, both counted; the consumer's total adds up.
	replica := openReplica(t, n.URL())
	replica.stage(t, fleet.Usage{Origin: "replica-b", Name: "b", Dedup: "01JCOLLECT0000000000000000", Event: metering.Event{
		TaskID: "task-b", AgentID: "urn:asap:agent:demo-b", ConsumerID: "urn:asap:agent:client",
		TokensIn: 100, TokensOut: 1, APICalls: 1, DurationMS: 5, Timestamp: time.Now().UTC(),
	}})
	eventually(t, "the replica's task arrives", func() bool {
		return collectorGet(t, addr, bearer, "/fleet/status", &st) == 200 && st.Ingested >= tasks+1
	})
	var consumers map[string]any
	if collectorGet(t, addr, bearer, "/usage/consumers", &consumers) != 200 {
		t.Fatal("/usage/consumers not served")
	}
	if collectorGet(t, addr, bearer, "/usage/summary", &fleetWide) != 200 || fleetWide.TotalTasks != tasks+1 ||
		fleetWide.TotalTokens != own.TotalTokens+101 || fleetWide.UniqueAgents != 2 || fleetWide.UniqueConsumers != 1 {
		t.Fatalf("fleet summary %+v after the replica's task; the sidecar's own %+v", fleetWide, own)
	}
	if st.Ingested != tasks+1 || st.Duplicates != 0 {
		t.Fatalf("status %+v", st)
	}

	// The sidecar's latest signed checkpoint, as it serves it itself.
	var cps []fleet.Checkpoint
	var current string
	eventually(t, "the sidecar's latest checkpoint reaches the collector", func() bool {
		resp, err := client.Get("http://" + s.adminAddr + "/asap/audit/checkpoint")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		current = string(b)
		return collectorGet(t, addr, bearer, "/fleet/checkpoints", &cps) == 200 && len(cps) == 1 && cps[0].Checkpoint == current
	})
	c := cps[0]
	v, err := note.NewVerifier(c.PublicKey)
	if err != nil {
		t.Fatalf("public key %q: %v", c.PublicKey, err)
	}
	if _, err := note.Open([]byte(c.Checkpoint), note.VerifierList(v)); err != nil {
		t.Fatalf("the checkpoint does not verify with its public key: %v", err)
	}
	if c.Agent != "urn:asap:agent:demo" || c.Name != "sidecar-a" || c.Size < tasks || c.SignedAt.IsZero() ||
		!strings.HasPrefix(c.Checkpoint, fmt.Sprintf("urn:asap:agent:demo/audit\n%d\n", c.Size)) {
		t.Fatalf("checkpoint %+v", c)
	}

	// Only the bearer gets in; only the Usage API and /fleet are served.
	if code := collectorGet(t, addr, "", "/usage/summary", nil); code != http.StatusUnauthorized {
		t.Fatalf("no bearer: %d", code)
	}
	if code := collectorGet(t, addr, "wrong-secret-0123456", "/fleet/status", nil); code != http.StatusUnauthorized {
		t.Fatalf("wrong bearer: %d", code)
	}
	for _, p := range []string{"/audit", "/asap/delegations", "/fleet/nothing", "/sla"} {
		if code := collectorGet(t, addr, bearer, p, nil); code != http.StatusNotFound {
			t.Fatalf("%s: %d, want 404", p, code)
		}
	}
	cancel()
	stopped = true
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("the collector stopped with %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("the collector did not stop within 15s of its context ending")
	}
}

// replica publishes usage through an outbox of its own, as another
// sidecar of the fleet does.
type replica struct {
	db     *storage.DB
	outbox *fleet.Outbox
}

func openReplica(t testing.TB, url string) *replica {
	t.Helper()
	db, err := storage.Open(storage.Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	c, err := fleet.Connect(fleet.Options{URL: url, Name: "replica"})
	if err != nil {
		t.Fatal(err)
	}
	o, err := fleet.OpenOutbox(db, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan struct{})
	go func() { defer close(ran); o.Run(ctx, c) }()
	t.Cleanup(func() { cancel(); <-ran; c.Close(); db.Close() })
	return &replica{db: db, outbox: o}
}

func (r *replica) stage(t testing.TB, u fleet.Usage) {
	t.Helper()
	m, err := u.Message()
	if err != nil {
		t.Fatal(err)
	}
	if err := r.db.Commit(context.Background(), storage.Strict, func(tx *storage.Tx) error { return r.outbox.Stage(tx, m) }); err != nil {
		t.Fatal(err)
	}
	r.outbox.Notify()
}
