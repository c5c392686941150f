package caddymodule

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/transparency-dev/merkle/proof"
	"github.com/transparency-dev/merkle/rfc6962"
	"golang.org/x/mod/sumdb/note"

	"github.com/asap-sidecar/asap-sidecar/caddymodule/audit"
	"github.com/asap-sidecar/asap-sidecar/caddymodule/delegation"
	"github.com/asap-sidecar/asap-sidecar/caddymodule/protocol"
)

func auditEntries(t testing.TB, admin, query string) []audit.Entry {
	t.Helper()
	var out struct {
		Entries []audit.Entry `json:"entries"`
		Count   int           `json:"count"`
	}
	if code := getJSON(t, "http://"+admin+"/asap/audit"+query, &out); code != 200 || out.Count != len(out.Entries) {
		t.Fatalf("audit %s: %d %+v", query, code, out)
	}
	return out.Entries
}

func operations(es []audit.Entry) []string {
	ops := make([]string, len(es))
	for i, e := range es {
		ops[i] = e.Operation
	}
	return ops
}

func detail(t testing.TB, e audit.Entry) map[string]any {
	t.Helper()
	var d map[string]any
	if err := json.Unmarshal(e.Details, &d); err != nil {
		t.Fatal(err)
	}
	return d
}

func keysOf(d map[string]any) string {
	keys := make([]string, 0, len(d))
	for k := range d {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return strings.Join(keys, " ")
}

func TestEveryEventLeavesAuditEntries(t *testing.T) {
	s := startSidecar(t, externalDemoAgent(t), requireOpts)
	token := mintViaAdmin(t, s, `{"delegate":"urn:asap:agent:client","scopes":["task.execute"],"max_tasks":10}`)
	leaf, _ := delegation.ParseLink(token)

	if a := callWith(t, s.url, token, envelope("01JAUDIT000000000000000001", "echo", `{"tokens_in":3,"tokens_out":4}`)); a.Result == nil {
		t.Fatalf("task: %+v", a.Error)
	}
	if a := callWith(t, s.url, token, envelope("01JAUDIT000000000000000002", "fail", `{}`)); a.Result == nil {
		t.Fatalf("failing task: %+v", a.Error)
	}
	wantRejected(t, callWith(t, s.url, token, strings.Replace(envelope("01JAUDIT000000000000000003", "echo", `{}`), "urn:asap:agent:client", "urn:asap:agent:mallory", 1)),
		protocol.CodeTokenAudience, "sender_not_audience")
	req, _ := http.NewRequest(http.MethodDelete, "http://"+s.adminAddr+"/asap/delegations/"+leaf.Claims.ID, nil)
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()

	var all []audit.Entry
	deadline := time.Now().Add(5 * time.Second)
	for { // the rejection is written without making the caller wait
		all = auditEntries(t, s.adminAddr, "?limit=1000")
		if len(all) >= 9 || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	ops := strings.Join(operations(all), " ")
	want := []string{"delegation.created", "task.started", "task.completed", "usage.recorded", "task.started", "task.failed", "usage.recorded", "delegation.rejected", "delegation.revoked"}
	for _, op := range want {
		if !strings.Contains(ops, op) {
			t.Fatalf("no %s entry in %s", op, ops)
		}
	}
	if len(all) != len(want) {
		t.Fatalf("entries %s, want %v", ops, want)
	}
	for i, e := range all {
		if e.Seq != uint64(i) || (i > 0 && e.PrevHash != all[i-1].Hash) {
			t.Fatalf("entry %d out of chain: %+v", i, e)
		}
		if strings.Contains(string(e.Details), token) || strings.Contains(string(e.Details), "PRIVATE") {
			t.Fatalf("entry %d holds a secret: %s", i, e.Details)
		}
	}
	// Lookups by task, operation and agent are index scans.
	completed := auditEntries(t, s.adminAddr, "?operation=task.completed")
	if len(completed) != 1 {
		t.Fatalf("task.completed entries: %d", len(completed))
	}
	d := detail(t, completed[0])
	if d["envelope_id"] != "01JAUDIT000000000000000001" || d["delegation_id"] != leaf.Claims.ID || d["consumer"] != "urn:asap:agent:client" {
		t.Fatalf("task.completed details %v", d)
	}
	// Each task entry carries exactly its documented details (SPEC §6).
	common := "agent consumer delegation_id envelope_id payload_type root_issuer task_id"
	for i, want := range []string{
		common + " started_at",                     // task.started
		common + " duration_ms http_status status", // task.completed
		"agent api_calls consumer delegation_id duration_ms envelope_id root_issuer task_id tokens_in tokens_out", // usage.recorded
		common + " started_at",                     // task.started
		common + " duration_ms http_status status", // task.failed
	} {
		w := strings.Fields(want)
		sort.Strings(w)
		if got, want := keysOf(detail(t, all[1+i])), strings.Join(w, " "); got != want {
			t.Fatalf("%s details have %q, want %q", all[1+i].Operation, got, want)
		}
	}
	if f := detail(t, all[5]); f["status"] != "failed" || f["http_status"] != 200.0 || f["agent"] != "urn:asap:agent:demo" || f["payload_type"] != "task.request" {
		t.Fatalf("task.failed details %v", f)
	}
	if st := detail(t, all[1])["started_at"].(string); len(st) != len(audit.TimeFormat) {
		t.Fatalf("started_at %q is not in the entry time format", st)
	}
	taskID := d["task_id"].(string)
	byTask := auditEntries(t, s.adminAddr, "?task_id="+taskID)
	if got := strings.Join(operations(byTask), " "); got != "task.started task.completed usage.recorded" {
		t.Fatalf("entries of task %s: %s", taskID, got)
	}
	if u := detail(t, byTask[2]); u["tokens_in"] != 3.0 || u["tokens_out"] != 4.0 {
		t.Fatalf("usage.recorded details %v", u)
	}
	rejected := auditEntries(t, s.adminAddr, "?urn=urn:asap:agent:mallory")
	if len(rejected) != 1 || rejected[0].Operation != "delegation.rejected" || detail(t, rejected[0])["reason"] != "sender_not_audience" || detail(t, rejected[0])["jti"] != leaf.Claims.ID {
		t.Fatalf("rejection entries %+v", rejected)
	}
	one := all[3]
	var got audit.Entry
	if code := getJSON(t, "http://"+s.adminAddr+"/asap/audit/"+one.ID, &got); code != 200 || got.Hash != one.Hash {
		t.Fatalf("entry by id: %d %+v", code, got)
	}

	var v audit.Verdict
	if code := getJSON(t, "http://"+s.adminAddr+"/asap/audit/verify", &v); code != 200 || !v.Valid || v.Size != uint64(len(all)) {
		t.Fatalf("verify: %+v", v)
	}
	// Nothing updates or deletes an entry.
	for _, m := range []string{http.MethodPost, http.MethodPut, http.MethodDelete, http.MethodPatch} {
		req, _ := http.NewRequest(m, "http://"+s.adminAddr+"/asap/audit/"+one.ID, nil)
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusMethodNotAllowed {
			t.Fatalf("%s on an entry: %d", m, resp.StatusCode)
		}
	}
}

func TestCheckpointsAndProofsFromTheAdminAPI(t *testing.T) {
	s := startSidecar(t, externalDemoAgent(t), "agent urn:asap:agent:demo")
	for i := 0; i < 3; i++ {
		post(t, s.url+"/asap", rpc("r", envelope(fmt.Sprintf("01JPROOF%018d", i), "echo", `{}`)))
	}
	var st Status
	getJSON(t, "http://"+s.adminAddr+"/asap/status", &st)
	vkey := st.Agents[0].AuditKey
	verifier, err := note.NewVerifier(vkey)
	if err != nil {
		t.Fatalf("status audit_key %q: %v", vkey, err)
	}
	if verifier.Name() != "urn:asap:agent:demo/audit" {
		t.Fatalf("signer name %q", verifier.Name())
	}
	fetch := func() (uint64, []byte) {
		resp, err := client.Get("http://" + s.adminAddr + "/asap/audit/checkpoint")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		n, err := note.Open(b, note.VerifierList(verifier))
		if err != nil {
			t.Fatalf("checkpoint does not open with the sidecar's key: %v\n%s", err, b)
		}
		lines := strings.Split(n.Text, "\n")
		if lines[0] != "urn:asap:agent:demo/audit" {
			t.Fatalf("origin %q", lines[0])
		}
		var size uint64
		fmt.Sscan(lines[1], &size)
		root, _ := base64.StdEncoding.DecodeString(lines[2])
		return size, root
	}
	size1, root1 := fetch()
	// task.started, task.completed and usage.recorded per task.
	if size1 != 9 || st.Agents[0].AuditEntries != 9 {
		t.Fatalf("size %d / status %d, want 9", size1, st.Agents[0].AuditEntries)
	}
	for i := 3; i < 7; i++ {
		post(t, s.url+"/asap", rpc("r", envelope(fmt.Sprintf("01JPROOF%018d", i), "echo", `{}`)))
	}
	size2, root2 := fetch()
	if size2 <= size1 {
		t.Fatalf("checkpoint did not grow: %d", size2)
	}
	var incl struct {
		Seq, Size uint64
		LeafHash  string   `json:"leaf_hash"`
		Hashes    []string `json:"hashes"`
	}
	for seq := uint64(0); seq < size2; seq++ {
		if code := getJSON(t, fmt.Sprintf("http://%s/asap/audit/proof/inclusion?seq=%d&size=%d", s.adminAddr, seq, size2), &incl); code != 200 {
			t.Fatalf("inclusion %d: %d", seq, code)
		}
		leaf, _ := base64.StdEncoding.DecodeString(incl.LeafHash)
		if err := proof.VerifyInclusion(rfc6962.DefaultHasher, seq, size2, leaf, decodeAll(t, incl.Hashes), root2); err != nil {
			t.Fatalf("inclusion of %d in %d: %v", seq, size2, err)
		}
	}
	var cons struct {
		Old, New uint64
		Hashes   []string `json:"hashes"`
	}
	if code := getJSON(t, fmt.Sprintf("http://%s/asap/audit/proof/consistency?old=%d&new=%d", s.adminAddr, size1, size2), &cons); code != 200 {
		t.Fatalf("consistency: %d", code)
	}
	if err := proof.VerifyConsistency(rfc6962.DefaultHasher, size1, size2, decodeAll(t, cons.Hashes), root1, root2); err != nil {
		t.Fatalf("consistency %d→%d: %v", size1, size2, err)
	}
	for _, bad := range []string{"/proof/inclusion?seq=99&size=3", "/proof/inclusion", "/proof/consistency?old=9&new=3", "/proof/inclusion?seq=0&size=9999"} {
		if code := getJSON(t, "http://"+s.adminAddr+"/asap/audit"+bad, nil); code != 400 {
			t.Fatalf("%s: %d, want 400", bad, code)
		}
	}
	// Exports.
	for format, want := range map[string]string{"json": `"entries"`, "jsonl": `"operation":"task.started"`, "csv": "id,seq,timestamp,operation,agent_urn,details,prev_hash,hash"} {
		resp, err := client.Get("http://" + s.adminAddr + "/asap/audit/export?format=" + format)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !strings.Contains(string(b), want) {
			t.Fatalf("export %s: %d %.200s", format, resp.StatusCode, b)
		}
		if format == "jsonl" && strings.Count(string(b), "\n") != int(size2) {
			t.Fatalf("jsonl lines %d, want %d", strings.Count(string(b), "\n"), size2)
		}
	}
}

func decodeAll(t testing.TB, in []string) [][]byte {
	t.Helper()
	out := make([][]byte, len(in))
	for i, s := range in {
		b, err := base64.StdEncoding.DecodeString(s)
		if err != nil {
			t.Fatal(err)
		}
		out[i] = b
	}
	return out
}
