package caddymodule

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/asap-sidecar/asap-sidecar/caddymodule/demoagent"
	"github.com/asap-sidecar/asap-sidecar/caddymodule/metering"
)

// The agent runs outside the reloaded config here, as a real agent process
// would. The client behaves like the reference ASAP client: it sends an
// idempotency key and retries a call whose connection failed before any
// answer arrived. Caddy's listeners use SO_REUSEPORT, so a connection that
// lands on the old config's socket as it closes is reset by the kernel;
// plain reverse_proxy shows the same. What must never happen is an error
// answer, a lost or doubled record, or a reopened database.
func TestReloadUnderTrafficKeepsDatabaseAndLosesNothing(t *testing.T) {
	agent := &demoagent.Agent{}
	if err := agent.Provision(caddy.Context{}); err != nil {
		t.Fatal(err)
	}
	agentSrv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _ = agent.ServeHTTP(w, r, nil) }))
	defer agentSrv.Close()
	s := startSidecar(t, upstreamAddr(agentSrv), "agent urn:asap:agent:demo")
	db0, err := runningAgent(t).store.Wait(context.Background(), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	opened0 := db0.openedAt

	stop := make(chan struct{})
	var ok, errorAnswers, retries atomic.Int64
	var wg sync.WaitGroup
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				id := fmt.Sprintf("01JRELOAD%03d%014d", w, i)
				resp, err := postRetrying(s.url+"/asap", id, rpc("r", envelope(id, "echo", `{}`)), &retries)
				if err != nil {
					t.Errorf("call %s failed after retries: %v", id, err)
					return
				}
				if a := readAnswer(t, resp); a.Result == nil {
					errorAnswers.Add(1)
					t.Errorf("call %s answered with an error during reload: %+v", id, a.Error)
					continue
				}
				ok.Add(1)
			}
		}(w)
	}
	// Each reload happens while calls flow: wait for answers between them.
	flowing := func() {
		before := ok.Load()
		waitFor(t, func() bool { return ok.Load() >= before+20 })
	}
	for i := 0; i < 6; i++ {
		flowing()
		s.load(fmt.Sprintf("agent urn:asap:agent:demo\nmax_body %dKiB", 1024+i))
	}
	flowing()
	close(stop)
	wg.Wait()
	t.Logf("%d calls, %d connection-level retries", ok.Load(), retries.Load())

	h := runningAgent(t)
	if h.MaxBody != 1029<<10 {
		t.Fatalf("reloaded config not in effect: max_body %d", h.MaxBody)
	}
	db1, err := h.store.Wait(context.Background(), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if db1 != db0 || db1.openedAt != opened0 {
		t.Fatal("reload reopened the database")
	}
	c, _ := metering.CountsOf(db1.db, "urn:asap:agent:demo")
	evs := usageEvents(t, db1.db)
	if errorAnswers.Load() != 0 || ok.Load() == 0 || c.Forwarded != uint64(ok.Load()) || len(evs) != int(ok.Load()) {
		t.Fatalf("ok %d, error answers %d, counted %d, events %d", ok.Load(), errorAnswers.Load(), c.Forwarded, len(evs))
	}
}

// postRetrying posts like the reference client: with an idempotency key,
// retrying (up to 3 times) when the connection failed before an answer.
func postRetrying(url, key, body string, retries *atomic.Int64) (*http.Response, error) {
	var err error
	for attempt := 0; attempt < 4; attempt++ {
		if attempt > 0 {
			retries.Add(1)
			time.Sleep(time.Duration(attempt) * 10 * time.Millisecond)
		}
		req, _ := http.NewRequest(http.MethodPost, url, strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("X-Idempotency-Key", key)
		var resp *http.Response
		if resp, err = client.Do(req); err == nil {
			return resp, nil
		}
	}
	return nil, err
}

func TestRestartKeepsRecords(t *testing.T) {
	s := startSidecar(t, "", "agent urn:asap:agent:demo")
	for i := 0; i < 5; i++ {
		post(t, s.url+"/asap", rpc("r", envelope(fmt.Sprintf("01JRESTART%016d", i), "echo", `{}`)))
	}
	if err := caddy.Stop(); err != nil {
		t.Fatal(err)
	}
	// Stopped: the database is closed and its lock released.
	if _, _, err := databases.LoadOrNew(s.dir, func() (caddy.Destructor, error) { return nil, fmt.Errorf("probe") }); err == nil {
		t.Fatal("database still held after stop")
	}
	s.load(s.options)
	db, err := runningAgent(t).store.Wait(context.Background(), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := metering.CountsOf(db.db, "urn:asap:agent:demo")
	if c.Forwarded != 5 {
		t.Fatalf("after restart counts = %+v", c)
	}
	if evs := usageEvents(t, db.db); len(evs) != 5 || evs["01JRESTART0000000000000004"].TaskID == "" {
		t.Fatalf("after restart events = %+v", evs)
	}
}

func TestValidateNeverOpensTheDatabase(t *testing.T) {
	s := startSidecar(t, "", "agent urn:asap:agent:demo")
	cfg := s.caddyfile("agent urn:asap:agent:demo")
	adapted, _, err := caddyconfigAdapt(cfg)
	if err != nil {
		t.Fatal(err)
	}
	// Validating a config that names the running sidecar's storage must
	// not try to open (and lock) it.
	if err := caddy.Validate(mustUnmarshalConfig(t, adapted)); err != nil {
		t.Fatalf("validate: %v", err)
	}
	// And the running one still works.
	if _, b := post(t, s.url+"/asap", rpc("r", envelope("01JVALIDATE000000000000001", "echo", `{}`))); decodeAnswer(t, b).Result == nil {
		t.Fatalf("after validate: %s", b)
	}
}
