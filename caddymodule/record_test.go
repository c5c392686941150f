package caddymodule

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/asap-sidecar/asap-sidecar/caddymodule/delegation"
	"github.com/asap-sidecar/asap-sidecar/storage"
)

// Tests that kill mutants of the request path which survived the suite
// before: record.go here, reuse.go and wsproxy.go in the other *_d_test
// files, which share these helpers. Each goes through a real sidecar:
// Caddy in-process, the real module, Badger on disk.

// envID is a 26-character envelope id made of tag and n.
func envID(tag string, n int) string {
	return fmt.Sprintf("01JD%s%0*d", tag, 22-len(tag), n)
}

// startSidecarLogs is startSidecarWith with Caddy's log (warnings and
// up, as JSON) written to a file the test reads, instead of dropped below
// ERROR. It returns the sidecar and the log's path.
func startSidecarLogs(t *testing.T, upstream, options, siteExtra string) (*sidecar, string) {
	t.Helper()
	s := newSidecar(t, upstream, options, siteExtra)
	s.logFile = filepath.Join(t.TempDir(), "caddy.log")
	s.start()
	return s, s.logFile
}

// logLines reads a JSON log file, one object a line.
func logLines(t *testing.T, path string) []map[string]any {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	var out []map[string]any
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("log line is not JSON: %v: %s", err, sc.Bytes())
		}
		out = append(out, m)
	}
	return out
}

// linesWith are the log lines whose msg is msg.
func linesWith(t *testing.T, path, msg string) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, l := range logLines(t, path) {
		if l["msg"] == msg {
			out = append(out, l)
		}
	}
	return out
}

// agentAnswering is a POST agent stand-in that answers one call at a time with
// the JSON-RPC member (`"result":…` or `"error":…`) member gives for the
// envelope id, echoing the call's id. Anything else (the sidecar's health
// probes) gets an empty 200.
func agentAnswering(t *testing.T, member func(envID string) string) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		var c struct {
			ID     json.RawMessage `json:"id"`
			Params struct {
				Envelope struct {
					ID string `json:"id"`
				} `json:"envelope"`
			} `json:"params"`
		}
		if r.Method != http.MethodPost || json.Unmarshal(body, &c) != nil || c.ID == nil {
			return
		}
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"jsonrpc":"2.0",%s,"id":%s}`, member(c.Params.Envelope.ID), c.ID)
	}))
	t.Cleanup(srv.Close)
	return srv
}

// resultBody is a task.response result member.
func resultBody(envID, status, metrics string) string {
	return fmt.Sprintf(`"result":{"envelope":{"payload_type":"task.response","payload":{"task_id":"t-%s","status":%q,"metrics":%s}}}`,
		envID, status, metrics)
}

// entriesFor are the audit entries of operation op, by envelope id.
func entriesFor(t *testing.T, s *sidecar, op string) map[string]map[string]any {
	t.Helper()
	out := map[string]map[string]any{}
	for _, e := range auditEntries(t, s.adminAddr, "?limit=1000&operation="+op) {
		d := detail(t, e)
		id, _ := d["envelope_id"].(string)
		if _, dup := out[id]; dup {
			t.Fatalf("two %s entries for envelope %s", op, id)
		}
		out[id] = d
	}
	return out
}

// corruptAuditHead overwrites the audit log's head with bytes that do not
// decode: every later append fails.
func corruptAuditHead(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := runningDB(t).Commit(ctx, storage.Strict, func(tx *storage.Tx) error {
		tx.Set(storage.SpaceAudit.Key([]byte("h")), []byte{0x80})
		return nil
	})
	if err != nil {
		t.Fatalf("corrupting the audit head: %v", err)
	}
}

// record.go:48. With metering and audit off, the only thing an answered
// call writes is its delegation slot: it must reach the disk (and an
// unanswered call's must not, TestUnansweredCallLeavesNoCountOnDisk).
func TestUnmeteredUnauditedCallPersistsItsSlot(t *testing.T) {
	s := startSidecar(t, "", requireOpts+"\nmetering off\naudit off")
	token := mintViaAdmin(t, s, `{"delegate":"urn:asap:agent:client","scopes":["task.execute"],"max_tasks":3}`)
	if a := callWith(t, s.url, token, envelope(envID("SLOT", 1), "echo", `{}`)); a.Result == nil {
		t.Fatalf("task: %+v", a.Error)
	}
	// A ledger opened afresh reads what is on disk, as after a restart.
	fresh, err := delegation.OpenLedger(runningDB(t))
	if err != nil {
		t.Fatal(err)
	}
	if n, err := fresh.UsedByHash(delegation.HashOf(token)); err != nil || n != 1 {
		t.Fatalf("stored task count after an answered call with metering and audit off: %d %v, want 1", n, err)
	}
}

// record.go:87. Unusable metrics are counted as 0 with a warning (SPEC
// §4), and usable ones without.
func TestUnusableMetricsAreCountedAsZeroWithAWarning(t *testing.T) {
	bad, good := envID("METRICS", 1), envID("METRICS", 2)
	up := agentAnswering(t, func(id string) string {
		if id == bad {
			return resultBody(id, "completed", `{"tokens_in":-3,"tokens_out":5}`)
		}
		return resultBody(id, "completed", `{"tokens_in":2,"tokens_out":1}`)
	})
	s, logPath := startSidecarLogs(t, upstreamAddr(up), "agent urn:asap:agent:demo", "")
	for _, id := range []string{bad, good} {
		if _, b := post(t, s.url+"/asap", rpc("r1", envelope(id, "echo", `{}`))); decodeAnswer(t, b).Result == nil {
			t.Fatalf("%s: %s", id, b)
		}
	}
	evs := usageEvents(t, runningDB(t))
	if e := evs[bad]; e.TokensIn != 0 || e.TokensOut != 5 {
		t.Fatalf("usage with tokens_in -3: %+v, want tokens_in 0, tokens_out 5", e)
	}
	if e := evs[good]; e.TokensIn != 2 || e.TokensOut != 1 {
		t.Fatalf("usage with good metrics: %+v", e)
	}
	// The warning is logged before the answer goes out.
	warned := map[string][]any{}
	for _, l := range linesWith(t, logPath, "agent reported unusable metrics; counted as 0") {
		id, _ := l["envelope_id"].(string)
		values, _ := l["values"].([]any)
		warned[id] = values
	}
	if v, ok := warned[bad]; !ok || len(v) != 1 || v[0] != "tokens_in=-3" {
		t.Fatalf("warning for the unusable tokens_in: %v (%v), want one naming tokens_in=-3; all warnings: %v", v, ok, warned)
	}
	if _, ok := warned[good]; ok {
		t.Fatalf("a warning for metrics that were fine: %v", warned)
	}
}

// record.go:121. The call is recorded for the configured agent, not for
// whatever the envelope names as recipient.
func TestCallIsRecordedForTheConfiguredAgent(t *testing.T) {
	up := agentAnswering(t, func(id string) string { return resultBody(id, "completed", `{"tokens_in":1}`) })
	s := startSidecar(t, upstreamAddr(up), "agent urn:asap:agent:demo")
	id := envID("AGENTOF", 1)
	env := strings.Replace(envelope(id, "echo", `{}`), `"recipient":"urn:asap:agent:demo"`, `"recipient":"urn:asap:agent:other"`, 1)
	if !strings.Contains(env, "urn:asap:agent:other") {
		t.Fatal("the envelope names no other recipient")
	}
	if _, b := post(t, s.url+"/asap", rpc("r1", env)); decodeAnswer(t, b).Result == nil {
		t.Fatalf("answer %s", b)
	}
	if e := usageEvents(t, runningDB(t))[id]; e.AgentID != "urn:asap:agent:demo" {
		t.Fatalf("usage recorded for agent %q, want the configured urn:asap:agent:demo", e.AgentID)
	}
	if d := entriesFor(t, s, "task.completed")[id]; d["agent"] != "urn:asap:agent:demo" {
		t.Fatalf("task.completed names agent %v, want the configured urn:asap:agent:demo", d["agent"])
	}
	if c := countsOf(t, "urn:asap:agent:demo"); c.Forwarded != 1 {
		t.Fatalf("counts of the configured agent: %+v, want 1 forwarded", c)
	}
}

// record.go:165. A task.failed entry carries the agent's JSON-RPC error
// code when it answered one, and none when the task failed otherwise.
func TestTaskFailedEntryCarriesTheErrorCode(t *testing.T) {
	rpcErr, failed := envID("ERRCODE", 1), envID("ERRCODE", 2)
	up := agentAnswering(t, func(id string) string {
		if id == rpcErr {
			return `"error":{"code":-32001,"message":"boom"}`
		}
		return resultBody(id, "failed", `{}`)
	})
	s := startSidecar(t, upstreamAddr(up), "agent urn:asap:agent:demo")
	for _, id := range []string{rpcErr, failed} {
		post(t, s.url+"/asap", rpc("r1", envelope(id, "echo", `{}`)))
	}
	entries := entriesFor(t, s, "task.failed")
	d, ok := entries[rpcErr]
	if !ok {
		t.Fatalf("no task.failed entry for the JSON-RPC error: %v", entries)
	}
	if code, ok := d["error_code"].(float64); !ok || code != -32001 {
		t.Fatalf("task.failed for a JSON-RPC error: error_code %v, want -32001 (details %v)", d["error_code"], d)
	}
	d, ok = entries[failed]
	if !ok {
		t.Fatalf("no task.failed entry for the failed task: %v", entries)
	}
	if code, present := d["error_code"]; present {
		t.Fatalf("task.failed for a task with status failed has error_code %v", code)
	}
}

// record.go:184. usage.recorded names the token a task ran under, and
// no token when it ran under none.
func TestUsageEntryNamesTheDelegation(t *testing.T) {
	s := startSidecar(t, "", "agent urn:asap:agent:demo\ndelegation optional")
	token := mintViaAdmin(t, s, `{"delegate":"urn:asap:agent:client","scopes":["task.execute"]}`)
	leaf, rej := delegation.ParseLink(token)
	if rej != nil {
		t.Fatal(rej)
	}
	with, without := envID("USAGEDEL", 1), envID("USAGEDEL", 2)
	if a := callWith(t, s.url, token, envelope(with, "echo", `{}`)); a.Result == nil {
		t.Fatalf("task with a token: %+v", a.Error)
	}
	if a := callWith(t, s.url, "", envelope(without, "echo", `{}`)); a.Result == nil {
		t.Fatalf("task without a token: %+v", a.Error)
	}
	entries := entriesFor(t, s, "usage.recorded")
	d, ok := entries[with]
	if !ok || d["delegation_id"] != leaf.Claims.ID || d["root_issuer"] != leaf.Claims.Issuer || leaf.Claims.Issuer == "" {
		t.Fatalf("usage.recorded of a task under a token: %v (%v), want delegation_id %s, root_issuer %s",
			d, ok, leaf.Claims.ID, leaf.Claims.Issuer)
	}
	d, ok = entries[without]
	if !ok {
		t.Fatalf("no usage.recorded entry for the task without a token: %v", entries)
	}
	for _, k := range []string{"delegation_id", "root_issuer"} {
		if v, present := d[k]; present {
			t.Fatalf("usage.recorded of a task without a token has %s %v", k, v)
		}
	}
}

// record.go:240. A task whose audit entries cannot be appended is not
// recorded without them: its write fails as a whole and the client is
// told its record could not be stored.
func TestAuditAppendFailureFailsTheTask(t *testing.T) {
	s := startSidecar(t, "", "agent urn:asap:agent:demo")
	if _, b := post(t, s.url+"/asap", rpc("r1", envelope(envID("AUDITFAIL", 1), "echo", `{}`))); decodeAnswer(t, b).Result == nil {
		t.Fatalf("before the corruption: %s", b)
	}
	corruptAuditHead(t)
	id := envID("AUDITFAIL", 2)
	resp, b := post(t, s.url+"/asap", rpc("r1", envelope(id, "echo", `{"tokens_in":4}`)))
	if a := decodeAnswer(t, b); resp.StatusCode != http.StatusServiceUnavailable || a.Error == nil || a.Error.Data["reason"] != "record_not_durable" {
		t.Fatalf("task whose audit entries could not be appended: %d %s, want 503 record_not_durable", resp.StatusCode, b)
	}
	if e, ok := usageEvents(t, runningDB(t))[id]; ok {
		t.Fatalf("usage stored without its audit entries: %+v", e)
	}
	if c := countsOf(t, "urn:asap:agent:demo"); c.Forwarded != 1 {
		t.Fatalf("counts = %+v, want only the call before the corruption", c)
	}
}
