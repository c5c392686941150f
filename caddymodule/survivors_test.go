package caddymodule

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/asap-sidecar/asap-sidecar/caddymodule/audit"
	"github.com/asap-sidecar/asap-sidecar/caddymodule/delegation"
	"github.com/asap-sidecar/asap-sidecar/caddymodule/protocol"
)

// Tests that kill mutants which survived the suite before (issue 10):
// each goes through the production path, a real sidecar.

// A parent revoked after minting cannot be attenuated any more.
func TestMintUnderRevokedParentIsRefused(t *testing.T) {
	s := startSidecar(t, "", requireOpts)
	admin := "http://" + s.adminAddr + "/asap/delegations"
	parent := mintViaAdmin(t, s, `{"delegate":"urn:asap:agent:demo","scopes":["task.execute"]}`)
	body := fmt.Sprintf(`{"delegate":"urn:asap:agent:client","scopes":["task.execute"],"parent":%q}`, parent)
	if resp, b := post(t, admin, body); resp.StatusCode != http.StatusCreated {
		t.Fatalf("mint under a live parent: %d %s", resp.StatusCode, b)
	}
	leaf, _ := delegation.ParseLink(parent)
	req, _ := http.NewRequest(http.MethodDelete, admin+"/"+leaf.Claims.ID, nil)
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp, b := post(t, admin, body); resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(b), "revoked") {
		t.Fatalf("mint under a revoked parent: %d %s, want 400 naming the revocation", resp.StatusCode, b)
	}
}

// A call the agent never answered leaves no task count on disk: after a
// restart the token's slot is still free.
func TestUnansweredCallLeavesNoCountOnDisk(t *testing.T) {
	dead := httptest.NewServer(http.NotFoundHandler())
	deadAddr := upstreamAddr(dead)
	dead.Close() // nothing listens there any more
	s := startSidecar(t, deadAddr, requireOpts)
	token := mintViaAdmin(t, s, `{"delegate":"urn:asap:agent:client","scopes":["task.execute"],"max_tasks":1}`)
	if a := callWith(t, s.url, token, envelope("01JUNANSWERED0000000000001", "echo", `{}`)); a.Error == nil || a.Error.Code != protocol.CodeConnectionError {
		t.Fatalf("unreachable agent: %+v", a.Error)
	}
	// A ledger opened afresh reads what is on disk.
	fresh, err := delegation.OpenLedger(runningDB(t))
	if err != nil {
		t.Fatal(err)
	}
	if n, err := fresh.UsedByHash(delegation.HashOf(token)); err != nil || n != 0 {
		t.Fatalf("stored task count after an unanswered call: %d %v, want 0", n, err)
	}
	if n, _ := runningDatabase(t).ledger.UsedByHash(delegation.HashOf(token)); n != 0 {
		t.Fatalf("live task count after an unanswered call: %d, want 0", n)
	}
}

// duration_ms is how long the agent took, in the usage event and the
// audit entry.
func TestDurationIsTheAgentsTime(t *testing.T) {
	s := startSidecar(t, "", "agent urn:asap:agent:demo")
	if _, b := post(t, s.url+"/asap", rpc("r1", envelope("01JDURATION000000000000001", "sleep", `{"ms":80}`))); decodeAnswer(t, b).Result == nil {
		t.Fatalf("answer %s", b)
	}
	ev := usageEvents(t, runningDB(t))["01JDURATION000000000000001"]
	if ev.DurationMS < 80 || ev.DurationMS > 60_000 {
		t.Fatalf("duration_ms = %d, want at least the 80 ms the agent slept", ev.DurationMS)
	}
	var done *audit.Entry
	for _, e := range auditEntries(t, s.adminAddr, "?operation=task.completed") {
		if detail(t, e)["envelope_id"] == "01JDURATION000000000000001" {
			done = &e
		}
	}
	if done == nil {
		t.Fatal("no task.completed entry")
	}
	if d := detail(t, *done)["duration_ms"].(float64); int64(d) != ev.DurationMS {
		t.Fatalf("audit duration_ms %v, usage %d", d, ev.DurationMS)
	}
}

// A client retry runs again but is usage once: one usage.recorded entry.
func TestRetryWritesOneUsageEntry(t *testing.T) {
	s := startSidecar(t, "", "agent urn:asap:agent:demo")
	call := rpc("r1", envelope("01JRETRYAUDIT0000000000001", "echo", `{"tokens_in":4}`))
	for i := 0; i < 3; i++ {
		if _, b := post(t, s.url+"/asap", call); decodeAnswer(t, b).Result == nil {
			t.Fatalf("attempt %d: %s", i, b)
		}
	}
	n := 0
	for _, e := range auditEntries(t, s.adminAddr, "?operation=usage.recorded") {
		if detail(t, e)["envelope_id"] == "01JRETRYAUDIT0000000000001" {
			n++
		}
	}
	if n != 1 {
		t.Fatalf("%d usage.recorded entries for one task sent three times, want 1", n)
	}
	if c := countsOf(t, "urn:asap:agent:demo"); c.Forwarded != 3 {
		t.Fatalf("counts = %+v, want the 3 forwarded calls", c)
	}
}

// The checkpoint loop signs the log as it stands on each tick.
func TestCheckpointLoopSignsOnEachTick(t *testing.T) {
	s := startSidecar(t, "", "agent urn:asap:agent:demo")
	for i := 0; i < 3; i++ {
		post(t, s.url+"/asap", rpc("r", envelope(fmt.Sprintf("01JCHECKPOINT00000000000%02d", i), "echo", `{}`)))
	}
	h, d := runningAgent(t), runningDatabase(t)
	tick, stop, done := make(chan time.Time), make(chan struct{}), make(chan struct{})
	go func() { h.checkpointLoop(stop, tick, d); close(done) }()
	send := func() {
		t.Helper()
		select {
		case tick <- time.Now():
		case <-time.After(10 * time.Second):
			t.Fatal("the checkpoint loop did not take a tick within 10s")
		}
	}
	send()
	send() // taken only once the first tick was handled
	var v struct{ Size uint64 }
	if code := getJSON(t, "http://"+s.adminAddr+"/asap/audit/verify", &v); code != 200 || v.Size == 0 {
		t.Fatalf("verify: %d %+v", code, v)
	}
	note, size, err := d.audit.LatestCheckpoint()
	if err != nil || size != v.Size || !strings.Contains(string(note), "urn:asap:agent:demo/audit") {
		t.Fatalf("latest checkpoint at size %d (%v), log size %d:\n%s", size, err, v.Size, note)
	}
	close(stop)
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("the checkpoint loop did not stop")
	}
}
