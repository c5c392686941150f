package caddymodule

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/asap-sidecar/asap-sidecar/caddymodule/protocol"
)

// Tests that kill mutants of reuse.go (envelope-id reuse, in-flight
// claims) which survived the suite before.

// reuse.go:92. Reading a dedup marker that is there (or not) is no
// failure: nothing is logged about it.
func TestDedupMarkerReadLogsNothing(t *testing.T) {
	s, logPath := startSidecarLogs(t, "", "agent urn:asap:agent:demo", "")
	for i := 0; i < 2; i++ { // unseen, then a retry of a stored call
		if _, b := post(t, s.url+"/asap", rpc("r1", envelope(envID("MARKER", 1), "echo", `{}`))); decodeAnswer(t, b).Result == nil {
			t.Fatalf("attempt %d: %s", i, b)
		}
	}
	// The marker is read before the call is forwarded, so any warning
	// about it is in the log by now.
	if l := linesWith(t, logPath, "reading a dedup marker; the call goes on"); len(l) != 0 {
		t.Fatalf("warnings about reading dedup markers that read fine: %v", l)
	}
}

// reuse.go:41. A retry of a call in flight shares its claim: when the
// retry is done, the claim still holds for the first, and a different
// call under the same id is refused while the first runs.
func TestInFlightClaimOutlivesItsRetry(t *testing.T) {
	arrived, hold := make(chan struct{}, 1), make(chan struct{})
	var release sync.Once
	free := func() { release.Do(func() { close(hold) }) }
	var mu sync.Mutex
	var others [][]byte
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if r.Method != http.MethodPost {
			return
		}
		switch {
		case bytes.Contains(body, []byte(`"id":"hold"`)):
			arrived <- struct{}{}
			<-hold
		case bytes.Contains(body, []byte(`"id":"drop"`)):
			// No answer at all: the retry is not usage and stores no
			// marker.
			c, _, err := w.(http.Hijacker).Hijack()
			if err == nil {
				c.Close()
			}
			return
		default:
			mu.Lock()
			others = append(others, body)
			mu.Unlock()
		}
		var c struct {
			ID json.RawMessage `json:"id"`
		}
		json.Unmarshal(body, &c)
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"jsonrpc":"2.0",%s,"id":%s}`, resultBody("x", "completed", `{"tokens_in":1}`), c.ID)
	}))
	t.Cleanup(up.Close)
	t.Cleanup(free) // before up.Close, which waits for the held call
	s := startSidecar(t, upstreamAddr(up), "agent urn:asap:agent:demo")

	id := envID("INFLIGHT", 1)
	first := envelope(id, "echo", `{"n":1}`)
	firstDone := make(chan []byte, 1)
	go func() {
		resp, err := client.Post(s.url+"/asap", "application/json", strings.NewReader(rpc("hold", first)))
		if err != nil {
			firstDone <- []byte(err.Error())
			return
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		firstDone <- b
	}()
	select {
	case <-arrived:
	case <-time.After(10 * time.Second):
		t.Fatal("the first call did not reach the agent within 10s")
	}
	// The retry (same envelope) shares the claim, and the agent drops it.
	if a := decodeAnswer(t, postBody(t, s.url+"/asap", rpc("drop", first))); a.Error == nil || a.Error.Code != protocol.CodeConnectionError {
		t.Fatalf("retry the agent dropped: %+v", a)
	}
	// The first call still runs: a different call under its id is reuse.
	other := envelope(id, "echo", `{"n":2}`)
	wantRejected(t, decodeAnswer(t, postBody(t, s.url+"/asap", rpc("other", other))), protocol.CodeInvalidRequest, "envelope_id_reused")
	mu.Lock()
	n := len(others)
	mu.Unlock()
	if n != 0 {
		t.Fatalf("the agent got %d calls reusing an id in flight", n)
	}
	free()
	select {
	case b := <-firstDone:
		if decodeAnswer(t, b).Result == nil {
			t.Fatalf("first call: %s", b)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the first call was not answered within 10s of its release")
	}
}

// postBody is post's body.
func postBody(t *testing.T, url, body string) []byte {
	t.Helper()
	_, b := post(t, url, body)
	return b
}

// reuse.go:99. A marker written by the usage API holds no digest: the
// sidecar cannot tell a retry from another call, so the call goes on
// (and is not metered a second time).
func TestUsageAPIMarkerIsNoReuse(t *testing.T) {
	s := startSidecar(t, "", "agent urn:asap:agent:demo")
	id := envID("APIMARKER", 1)
	ev := fmt.Sprintf(`{"task_id":"t-api","agent_id":"urn:asap:agent:demo","consumer_id":"urn:asap:agent:client","tokens_in":9,"tokens_out":0,"duration_ms":1,"api_calls":0,"timestamp":"2026-11-26T01:00:00Z","envelope_id":%q}`, id)
	if resp, b := post(t, "http://"+s.adminAddr+"/asap/usage", ev); resp.StatusCode != http.StatusCreated {
		t.Fatalf("reporting usage: %d %s", resp.StatusCode, b)
	}
	if a := decodeAnswer(t, postBody(t, s.url+"/asap", rpc("r1", envelope(id, "echo", `{}`)))); a.Result == nil {
		t.Fatalf("call under an id the usage API recorded: %+v, want it forwarded", a.Error)
	}
	if e := usageEvents(t, runningDB(t))[id]; e.TaskID != "t-api" || e.TokensIn != 9 {
		t.Fatalf("usage of the id: %+v, want only the reported event", e)
	}
	if c := countsOf(t, "urn:asap:agent:demo"); c.Forwarded != 1 {
		t.Fatalf("counts = %+v, want the call forwarded", c)
	}
}
