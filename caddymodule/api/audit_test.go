package api

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/csv"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/dgraph-io/badger/v4"
	"github.com/transparency-dev/merkle/proof"
	"github.com/transparency-dev/merkle/rfc6962"
	"golang.org/x/mod/sumdb/note"

	"github.com/asap-sidecar/asap-sidecar/caddymodule/audit"
	"github.com/asap-sidecar/asap-sidecar/storage"
)

const auditAgent = "urn:asap:agent:demo"

// auditSvc is an AuditService over a real log, signing checkpoints with a
// real note signer when it has a key, as the sidecar's handler does.
type auditSvc struct {
	db       *storage.DB
	log      *audit.Log
	signer   note.Signer
	verifier note.Verifier
}

func (s *auditSvc) Log() *audit.Log { return s.log }

func (s *auditSvc) Checkpoint(ctx context.Context) ([]byte, error) {
	if s.signer == nil {
		return nil, errors.New("checkpoints need the agent option and a key")
	}
	return s.log.Checkpoint(ctx, s.signer)
}

func (s *auditSvc) Verifiers() []note.Verifier {
	if s.verifier == nil {
		return nil
	}
	return []note.Verifier{s.verifier}
}

func newAuditSvc(t *testing.T, withKey bool) *auditSvc {
	t.Helper()
	db := openDB(t)
	s := &auditSvc{db: db, log: audit.New(db)}
	if withKey {
		_, key, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		signer, vkey, err := audit.NewSigner(audit.Origin(auditAgent), key)
		if err != nil {
			t.Fatal(err)
		}
		v, err := note.NewVerifier(vkey)
		if err != nil {
			t.Fatal(err)
		}
		s.signer, s.verifier = signer, v
	}
	return s
}

// reopen closes the service's database, lets fn change it behind the log's
// back, and opens it again.
func (s *auditSvc) reopen(t *testing.T, fn func(txn *badger.Txn) error) {
	t.Helper()
	dir := s.db.Dir()
	if err := s.db.Close(); err != nil {
		t.Fatal(err)
	}
	bdb, err := badger.Open(badger.DefaultOptions(dir).WithLogger(nil))
	if err != nil {
		t.Fatal(err)
	}
	if err := bdb.Update(fn); err != nil {
		t.Fatal(err)
	}
	if err := bdb.Close(); err != nil {
		t.Fatal(err)
	}
	db, err := storage.Open(storage.Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	s.db, s.log = db, audit.New(db)
}

var auditT0 = time.Date(2026, 3, 1, 10, 0, 0, 0, time.UTC)

// seedAudit appends six entries a minute apart:
//
//	seq  operation           agent  task
//	0    task.started        c1     t1
//	1    task.completed      c1     t1
//	2    task.started        c2     t2
//	3    task.failed         c2     t2
//	4    delegation.created  demo   -
//	5    usage.recorded      c1     t3
func seedAudit(t *testing.T, s *auditSvc) []audit.Entry {
	t.Helper()
	recs := []audit.Record{
		{Operation: audit.OpTaskStarted, AgentURN: consC1, Details: map[string]any{"task_id": "t1"}},
		{Operation: audit.OpTaskCompleted, AgentURN: consC1, Details: map[string]any{"task_id": "t1", "duration_ms": 12}},
		{Operation: audit.OpTaskStarted, AgentURN: consC2, Details: map[string]any{"task_id": "t2"}},
		{Operation: audit.OpTaskFailed, AgentURN: consC2, Details: map[string]any{"task_id": "t2", "error": "boom, \"quoted\"\nline"}},
		{Operation: audit.OpDelegationCreated, AgentURN: auditAgent, Details: map[string]any{"jti": "del_1"}},
		{Operation: audit.OpUsageRecorded, AgentURN: consC1, Details: map[string]any{"task_id": "t3", "tokens_in": 10}},
	}
	var out []audit.Entry
	for i, rec := range recs {
		var es []audit.Entry
		err := s.db.Commit(context.Background(), storage.Strict, func(tx *storage.Tx) error {
			var err error
			es, err = s.log.Append(tx, auditT0.Add(time.Duration(i)*time.Minute), rec)
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, es...)
	}
	return out
}

func auditCall(t *testing.T, s *auditSvc, method, target string) *httptest.ResponseRecorder {
	t.Helper()
	r := httptest.NewRequest(method, target, nil)
	w := httptest.NewRecorder()
	serve(&Services{Audit: s}, w, r)
	return w
}

func auditGet(t *testing.T, s *auditSvc, target string) *httptest.ResponseRecorder {
	t.Helper()
	return auditCall(t, s, http.MethodGet, target)
}

// auditEntries decodes {"entries":[...],"count":n}, checking count.
func auditEntries(t *testing.T, w *httptest.ResponseRecorder) []audit.Entry {
	t.Helper()
	m := expectJSON(t, w, http.StatusOK)
	if len(m) != 2 {
		t.Errorf("list body has keys beyond entries and count: %s", w.Body.String())
	}
	var body struct {
		Entries []audit.Entry `json:"entries"`
		Count   int           `json:"count"`
	}
	if err := json.Unmarshal(w.Body.Bytes(), &body); err != nil {
		t.Fatal(err)
	}
	if body.Entries == nil {
		t.Errorf("entries is null, want a list: %s", w.Body.String())
	}
	if body.Count != len(body.Entries) {
		t.Errorf("count %d for %d entries", body.Count, len(body.Entries))
	}
	return body.Entries
}

// exportEntries is auditEntries for a json export of the whole log, which
// carries its checkpoints too: wantCheckpoints of them, the last covering
// every entry.
func exportEntries(t *testing.T, w *httptest.ResponseRecorder, wantCheckpoints int) []audit.Entry {
	t.Helper()
	var body struct {
		Checkpoints *[]audit.ExportCheckpoint `json:"checkpoints"`
	}
	if err := json.Unmarshal(w.Body.Bytes(), &body); err != nil || body.Checkpoints == nil || len(*body.Checkpoints) != wantCheckpoints {
		t.Fatalf("want %d checkpoints in a json export: %v %s", wantCheckpoints, err, w.Body.String())
	}
	cps := *body.Checkpoints
	var m map[string]json.RawMessage
	_ = json.Unmarshal(w.Body.Bytes(), &m)
	delete(m, "checkpoints")
	b, _ := json.Marshal(m)
	w2 := httptest.NewRecorder()
	w2.Header().Set("Content-Type", "application/json")
	w2.Header().Set("Content-Length", fmt.Sprint(len(b)))
	w2.Write(b)
	entries := auditEntries(t, w2)
	if wantCheckpoints > 0 && cps[len(cps)-1].Size != uint64(len(entries)) {
		t.Errorf("the last checkpoint covers %d of %d entries", cps[len(cps)-1].Size, len(entries))
	}
	return entries
}

// An export of the whole log carries signed checkpoints that check
// offline, signing one of the log as exported first; jsonl only when
// asked; a filtered export none.
func TestAuditExportCarriesCheckpoints(t *testing.T) {
	s := newAuditSvc(t, true)
	all := seedAudit(t, s)
	if _, err := s.Checkpoint(context.Background()); err != nil { // an older one, at the full size
		t.Fatal(err)
	}
	err := s.db.Commit(context.Background(), storage.Strict, func(tx *storage.Tx) error {
		es, err := s.log.Append(tx, auditT0.Add(time.Hour), audit.Record{Operation: audit.OpTaskStarted, AgentURN: consC1, Details: map[string]any{"task_id": "t9"}})
		all = append(all, es...)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	w := auditGet(t, s, "/audit/export")
	eq(t, "json", exportEntries(t, w, 2), all)

	var a audit.Auditor
	cps, err := audit.ReadExport(bytes.NewReader(w.Body.Bytes()), a.Add)
	if err != nil {
		t.Fatal(err)
	}
	named := []audit.NamedCheckpoint{}
	for _, c := range cps {
		named = append(named, audit.NamedCheckpoint{Name: fmt.Sprint(c.Size), Note: []byte(c.Note)})
	}
	if _, err := a.CheckCheckpoints(named, []note.Verifier{s.verifier}); err != nil {
		t.Fatalf("the export's checkpoints do not check: %v", err)
	}

	jsonl := auditGet(t, s, "/audit/export?format=jsonl&checkpoints=true").Body.String()
	if strings.Count(jsonl, "\n") != len(all)+2 || !strings.Contains(jsonl, `{"type":"checkpoint","size":`+fmt.Sprint(len(all))+`,"note":"`) {
		t.Errorf("jsonl with checkpoints:\n%s", jsonl)
	}
	if w := auditGet(t, s, "/audit/export?format=json&checkpoints=false"); strings.Contains(w.Body.String(), "checkpoints") {
		t.Errorf("checkpoints=false: %s", w.Body.String())
	}
	if w := auditGet(t, s, "/audit/export?"+q("urn", consC1)); strings.Contains(w.Body.String(), "checkpoints") {
		t.Errorf("a filtered export carries checkpoints: %s", w.Body.String())
	}
	if d := detail(t, auditGet(t, s, "/audit/export?checkpoints=maybe"), http.StatusBadRequest); d != "checkpoints must be true or false" {
		t.Errorf("checkpoints=maybe: %q", d)
	}
}

func auditSeqs(es []audit.Entry) []uint64 {
	out := []uint64{}
	for _, e := range es {
		out = append(out, e.Seq)
	}
	return out
}

func TestAuditList(t *testing.T) {
	s := newAuditSvc(t, false)
	all := seedAudit(t, s)
	got := auditEntries(t, auditGet(t, s, "/audit"))
	eq(t, "GET /audit", got, all)
	eq(t, "GET /audit/", auditEntries(t, auditGet(t, s, "/audit/")), all)

	at := func(min int) string { return auditT0.Add(time.Duration(min) * time.Minute).Format(time.RFC3339) }
	for _, c := range []struct {
		query string
		want  []uint64
	}{
		{q("urn", consC1), []uint64{0, 1, 5}},
		{q("urn", " "+consC2+" "), []uint64{2, 3}}, // trimmed
		{q("task_id", "t2"), []uint64{2, 3}},
		{q("operation", audit.OpTaskStarted), []uint64{0, 2}},
		{q("urn", consC1, "operation", audit.OpTaskCompleted), []uint64{1}},
		{q("urn", consC2, "task_id", "t1"), []uint64{}},
		{q("urn", "urn:asap:agent:nobody"), []uint64{}},
		{q("start", at(2)), []uint64{2, 3, 4, 5}},
		{q("end", at(2)), []uint64{0, 1, 2}},
		{q("start", at(1), "end", at(3)), []uint64{1, 2, 3}},
		{q("start", "2026-03-01T10:02:30+00:00"), []uint64{3, 4, 5}},
		{q("start", "2026-03-01T11:02:00+01:00"), []uint64{2, 3, 4, 5}}, // zone honoured
		{q("start", "2026-03-01T10:03:00"), []uint64{3, 4, 5}},          // naive is UTC
		{q("start", "2026-03-01"), []uint64{0, 1, 2, 3, 4, 5}},
		{q("end", "2026-02-28"), []uint64{}},
		{q("urn", consC1, "start", at(1)), []uint64{1, 5}},
		{q("limit", "2"), []uint64{0, 1}},
		{q("limit", "2", "offset", "1"), []uint64{1, 2}},
		{q("urn", consC1, "limit", "1", "offset", "2"), []uint64{5}},
		{q("offset", "6"), []uint64{}},
		{q("limit", "0"), []uint64{}},
		{q("limit", "1000", "offset", "0"), []uint64{0, 1, 2, 3, 4, 5}},
	} {
		got := auditEntries(t, auditGet(t, s, "/audit?"+c.query))
		eq(t, c.query, auditSeqs(got), c.want)
	}
}

func TestAuditListBadParameters(t *testing.T) {
	s := newAuditSvc(t, false)
	seedAudit(t, s)
	for _, c := range []struct{ query, detail string }{
		{q("limit", "abc"), "limit must be a whole number in 0..1000"},
		{q("limit", "-1"), "limit must be a whole number in 0..1000"},
		{q("limit", "1001"), "limit must be a whole number in 0..1000"},
		{q("offset", "-1"), "offset must be a whole number in 0..1073741824"},
		{q("offset", "x"), "offset must be a whole number in 0..1073741824"},
		{q("start", "yesterday"), `start: invalid date "yesterday"; use ISO 8601 (e.g. 2026-01-01T00:00:00Z)`},
		{q("end", "2026-13-01"), `end: invalid date "2026-13-01"; use ISO 8601 (e.g. 2026-01-01T00:00:00Z)`},
		// The first problem is the one reported.
		{q("start", "bad", "limit", "abc"), `start: invalid date "bad"; use ISO 8601 (e.g. 2026-01-01T00:00:00Z)`},
	} {
		if d := detail(t, auditGet(t, s, "/audit?"+c.query), http.StatusBadRequest); d != c.detail {
			t.Errorf("%s: detail %q, want %q", c.query, d, c.detail)
		}
	}
}

func TestAuditEntryByID(t *testing.T) {
	s := newAuditSvc(t, false)
	all := seedAudit(t, s)
	for _, e := range all {
		w := auditGet(t, s, "/audit/"+e.ID)
		expectJSON(t, w, http.StatusOK)
		var got audit.Entry
		if err := json.Unmarshal(w.Body.Bytes(), &got); err != nil {
			t.Fatal(err)
		}
		eq(t, "entry "+e.ID, got, e)
		// The wire shape carries the SPEC §6 fields.
		var m map[string]any
		json.Unmarshal(w.Body.Bytes(), &m)
		keys := []string{}
		for k := range m {
			keys = append(keys, k)
		}
		if len(keys) != 8 {
			t.Errorf("entry fields %v", keys)
		}
	}
	// With a trailing slash too.
	expectJSON(t, auditGet(t, s, "/audit/"+all[2].ID+"/"), http.StatusOK)

	expect(t, auditGet(t, s, "/audit/01JZZZZZZZZZZZZZZZZZZZZZZZ"), http.StatusNotFound, `{"detail":"Audit entry not found"}`)
	expect(t, auditGet(t, s, "/audit/proof"), http.StatusNotFound, `{"detail":"Audit entry not found"}`)
	for _, path := range []string{
		"/audit/" + strings.Repeat("A", 65),
		"/audit/a/b",
		"/audit/proof/other",
		"/audit/verify/x",
		"/audit//",
	} {
		expect(t, auditGet(t, s, path), http.StatusNotFound, `{"detail":"Not Found"}`)
	}
	// 64 characters is still an id (just not a known one).
	expect(t, auditGet(t, s, "/audit/"+strings.Repeat("A", 64)), http.StatusNotFound, `{"detail":"Audit entry not found"}`)
}

func TestAuditVerify(t *testing.T) {
	s := newAuditSvc(t, true)
	seedAudit(t, s)
	expect(t, auditGet(t, s, "/audit/verify"), http.StatusOK,
		`{"valid":true,"size":6,"first_bad_seq":null,"reason":null,"checkpoints_checked":0}`)
	if w := auditGet(t, s, "/audit/checkpoint"); w.Code != http.StatusOK {
		t.Fatalf("checkpoint: %d %s", w.Code, w.Body.String())
	}
	expect(t, auditGet(t, s, "/audit/verify/"), http.StatusOK,
		`{"valid":true,"size":6,"first_bad_seq":null,"reason":null,"checkpoints_checked":1}`)

	// Edit entry 3's details behind the log's back.
	s.reopen(t, func(txn *badger.Txn) error { return editStoredBlock(txn, 3, "boom", "none") })
	expect(t, auditGet(t, s, "/audit/verify"), http.StatusOK,
		`{"valid":false,"size":3,"first_bad_seq":3,"reason":"entry 3's hash does not match its content","checkpoints_checked":0}`)
}

// A checkpoint signed by another key fails verification with the
// service's verifier.
func TestAuditVerifyUsesTheServiceVerifier(t *testing.T) {
	s := newAuditSvc(t, true)
	seedAudit(t, s)
	if _, err := s.Checkpoint(context.Background()); err != nil {
		t.Fatal(err)
	}
	other := newAuditSvc(t, true)
	s.verifier = other.verifier
	m := expectJSON(t, auditGet(t, s, "/audit/verify"), http.StatusOK)
	if m["valid"] != false || m["first_bad_seq"] != float64(0) || !strings.Contains(fmt.Sprint(m["reason"]), "checkpoint at size 6 does not verify") {
		t.Fatalf("verify with a stranger's verifier: %v", m)
	}
	s.verifier = nil // no verifier: signatures are not checked
	expect(t, auditGet(t, s, "/audit/verify"), http.StatusOK,
		`{"valid":true,"size":6,"first_bad_seq":null,"reason":null,"checkpoints_checked":1}`)
}

// editStoredBlock replaces old by new (same length, so the block's
// layout holds) in the block stored at seq, as a tamperer would.
func editStoredBlock(txn *badger.Txn, seq uint64, old, new string) error {
	key := storage.SpaceAudit.Key([]byte("e"), storage.EncodeUint64(seq))
	item, err := txn.Get(key)
	if err != nil {
		return err
	}
	v, err := item.ValueCopy(nil)
	if err != nil {
		return err
	}
	raw, err := audit.DecompressBlock(v)
	if err != nil {
		return err
	}
	if bytes.Count(raw, []byte(old)) != 1 || len(old) != len(new) {
		return fmt.Errorf("%q is not in block %d once", old, seq)
	}
	return txn.Set(key, audit.CompressBlock(bytes.Replace(raw, []byte(old), []byte(new), 1)))
}

func TestAuditExport(t *testing.T) {
	s := newAuditSvc(t, false)
	all := seedAudit(t, s)

	for _, target := range []string{"/audit/export", "/audit/export?format=json"} {
		w := auditGet(t, s, target)
		eq(t, target, exportEntries(t, w, 0), all)
		if cd := w.Header().Get("Content-Disposition"); cd != "attachment; filename=audit_export.json" {
			t.Errorf("%s: Content-Disposition %q", target, cd)
		}
	}

	w := auditGet(t, s, "/audit/export?format=jsonl")
	if w.Code != http.StatusOK || w.Header().Get("Content-Type") != "application/x-ndjson" ||
		w.Header().Get("Content-Disposition") != "attachment; filename=audit_export.jsonl" {
		t.Fatalf("jsonl: %d %v", w.Code, w.Header())
	}
	var lines []audit.Entry
	sc := bufio.NewScanner(bytes.NewReader(w.Body.Bytes()))
	for sc.Scan() {
		var e audit.Entry
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			t.Fatalf("jsonl line %q: %v", sc.Text(), err)
		}
		lines = append(lines, e)
	}
	eq(t, "jsonl", lines, all)
	if !strings.HasSuffix(w.Body.String(), "}\n") || strings.Count(w.Body.String(), "\n") != len(all) {
		t.Errorf("jsonl is not one entry a line: %q", w.Body.String())
	}

	w = auditGet(t, s, "/audit/export?format=csv")
	if w.Code != http.StatusOK || w.Header().Get("Content-Type") != "text/csv; charset=utf-8" ||
		w.Header().Get("Content-Disposition") != "attachment; filename=audit_export.csv" {
		t.Fatalf("csv: %d %v", w.Code, w.Header())
	}
	eq(t, "csv", readAuditCSV(t, w.Body.Bytes()), auditCSVRows(all))

	// Filters and limit apply to exports.
	eq(t, "csv by urn", readAuditCSV(t, auditGet(t, s, "/audit/export?"+q("format", "csv", "urn", consC1)).Body.Bytes()),
		auditCSVRows([]audit.Entry{all[0], all[1], all[5]}))
	eq(t, "json with limit", auditSeqs(auditEntries(t, auditGet(t, s, "/audit/export?"+q("limit", "2", "operation", audit.OpTaskStarted, "start", "2026-03-01T10:00:30Z")))), []uint64{2})
	eq(t, "jsonl empty", auditGet(t, s, "/audit/export?"+q("format", "jsonl", "task_id", "none")).Body.String(), "")
	eq(t, "csv empty", readAuditCSV(t, auditGet(t, s, "/audit/export?"+q("format", "csv", "task_id", "none")).Body.Bytes()), auditCSVRows(nil))

	for _, c := range []struct{ query, detail string }{
		{q("format", "xml"), "format must be json, jsonl or csv"},
		{q("format", "CSV"), "format must be json, jsonl or csv"},
		{q("limit", "0"), "limit must be a whole number in 1..1073741824"},
		{q("format", "xml", "start", "soon"), `start: invalid date "soon"; use ISO 8601 (e.g. 2026-01-01T00:00:00Z)`},
	} {
		w := auditGet(t, s, "/audit/export?"+c.query)
		if d := detail(t, w, http.StatusBadRequest); d != c.detail {
			t.Errorf("%s: detail %q, want %q", c.query, d, c.detail)
		}
		if w.Header().Get("Content-Disposition") != "" {
			t.Errorf("%s: an error offered as a download", c.query)
		}
	}
}

func auditCSVRows(es []audit.Entry) [][]string {
	rows := [][]string{{"id", "seq", "timestamp", "operation", "agent_urn", "details", "prev_hash", "hash"}}
	for _, e := range es {
		rows = append(rows, []string{e.ID, fmt.Sprint(e.Seq), e.Timestamp, e.Operation, e.AgentURN, string(e.Details), e.PrevHash, e.Hash})
	}
	return rows
}

func readAuditCSV(t *testing.T, b []byte) [][]string {
	t.Helper()
	rows, err := csv.NewReader(bytes.NewReader(b)).ReadAll()
	if err != nil {
		t.Fatalf("csv %q: %v", b, err)
	}
	return rows
}

// failingCSVWriter fails every write, like a client gone away.
type failingCSVWriter struct{ n int }

var errClientGone = errors.New("client went away")

func (w *failingCSVWriter) Write(p []byte) (int, error) { w.n++; return 0, errClientGone }

func TestWriteAuditCSV(t *testing.T) {
	es := []audit.Entry{{ID: "01J", Seq: 7, Timestamp: "2026-03-01T10:00:00.000000000Z", Operation: "task.failed",
		AgentURN: consC1, Details: json.RawMessage(`{"error":"a, \"b\"\nc"}`), PrevHash: "p", Hash: "h"}}
	var buf bytes.Buffer
	if err := WriteAuditCSV(&buf, es); err != nil {
		t.Fatal(err)
	}
	want := "id,seq,timestamp,operation,agent_urn,details,prev_hash,hash\n" +
		`01J,7,2026-03-01T10:00:00.000000000Z,task.failed,urn:asap:agent:c1,"{""error"":""a, \""b\""\nc""}",p,h` + "\n"
	if buf.String() != want {
		t.Fatalf("csv:\n%s\nwant:\n%s", buf.String(), want)
	}
	eq(t, "round trip", readAuditCSV(t, buf.Bytes()), auditCSVRows(es))

	// A failing writer is reported: at the end for a small export, and as
	// soon as the buffer fills for a large one.
	if err := WriteAuditCSV(&failingCSVWriter{}, es); !errors.Is(err, errClientGone) {
		t.Fatalf("small export to a failing writer: %v", err)
	}
	big := []audit.Entry{{ID: "1", Details: json.RawMessage(`"` + strings.Repeat("x", 8192) + `"`)}, {ID: "2"}}
	w := &failingCSVWriter{}
	if err := WriteAuditCSV(w, big); !errors.Is(err, errClientGone) {
		t.Fatalf("large export to a failing writer: %v", err)
	}
	if w.n != 1 {
		t.Fatalf("%d writes after the first failed", w.n-1)
	}
}

func TestAuditCheckpoint(t *testing.T) {
	s := newAuditSvc(t, true)
	seedAudit(t, s)
	w := auditGet(t, s, "/audit/checkpoint")
	if w.Code != http.StatusOK || w.Header().Get("Content-Type") != "text/plain; charset=utf-8" {
		t.Fatalf("checkpoint: %d %q %s", w.Code, w.Header().Get("Content-Type"), w.Body.String())
	}
	n, err := note.Open(w.Body.Bytes(), note.VerifierList(s.verifier))
	if err != nil {
		t.Fatalf("note.Open: %v\n%s", err, w.Body.String())
	}
	_, root, _ := s.log.Size()
	if want := auditAgent + "/audit\n6\n" + base64.StdEncoding.EncodeToString(root) + "\n"; n.Text != want {
		t.Fatalf("checkpoint text %q, want %q", n.Text, want)
	}
	// Unchanged log: the same note.
	if again := auditGet(t, s, "/audit/checkpoint/"); again.Body.String() != w.Body.String() {
		t.Fatal("a new checkpoint without growth")
	}

	noKey := newAuditSvc(t, false)
	seedAudit(t, noKey)
	expect(t, auditGet(t, noKey, "/audit/checkpoint"), http.StatusServiceUnavailable,
		`{"detail":"no checkpoint: checkpoints need the agent option and a key"}`)
}

func proofHashes(t *testing.T, v any) [][]byte {
	t.Helper()
	list, ok := v.([]any)
	if !ok {
		t.Fatalf("hashes %v is not a list", v)
	}
	out := make([][]byte, len(list))
	for i, h := range list {
		b, err := base64.StdEncoding.DecodeString(h.(string))
		if err != nil || len(b) != 32 {
			t.Fatalf("hash %v is not standard base64 of 32 bytes: %v", h, err)
		}
		out[i] = b
	}
	return out
}

func TestAuditInclusionProof(t *testing.T) {
	s := newAuditSvc(t, true)
	all := seedAudit(t, s)
	h := rfc6962.DefaultHasher
	for size := uint64(1); size <= 6; size++ {
		root, err := s.log.RootAt(size)
		if err != nil {
			t.Fatal(err)
		}
		for seq := uint64(0); seq < size; seq++ {
			target := fmt.Sprintf("/audit/proof/inclusion?seq=%d&size=%d", seq, size)
			m := expectJSON(t, auditGet(t, s, target), http.StatusOK)
			if m["seq"] != float64(seq) || m["size"] != float64(size) || len(m) != 4 {
				t.Fatalf("%s: %v", target, m)
			}
			leaf, err := base64.StdEncoding.DecodeString(m["leaf_hash"].(string))
			if err != nil {
				t.Fatal(err)
			}
			// SPEC §6: the leaf is the entry's 32-byte chain hash.
			raw, _ := hex.DecodeString(all[seq].Hash)
			if !bytes.Equal(leaf, h.HashLeaf(raw)) {
				t.Fatalf("%s: leaf_hash is not the RFC 6962 leaf of entry %d's hash", target, seq)
			}
			if err := proof.VerifyInclusion(h, seq, size, leaf, proofHashes(t, m["hashes"]), root); err != nil {
				t.Fatalf("%s: %v", target, err)
			}
		}
	}
	// The default size is the current one, and the proof verifies against
	// the signed checkpoint a client holds.
	cp, err := s.Checkpoint(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	c, err := audit.ParseCheckpoint(cp, s.verifier)
	if err != nil {
		t.Fatal(err)
	}
	m := expectJSON(t, auditGet(t, s, "/audit/proof/inclusion?seq=4"), http.StatusOK)
	if m["size"] != float64(6) {
		t.Fatalf("default size %v, want 6", m["size"])
	}
	leaf, _ := base64.StdEncoding.DecodeString(m["leaf_hash"].(string))
	if err := proof.VerifyInclusion(h, 4, c.Size, leaf, proofHashes(t, m["hashes"]), c.Hash); err != nil {
		t.Fatalf("against the checkpoint: %v", err)
	}
	// A one-entry tree needs no hashes: an empty list, not null.
	if w := auditGet(t, s, "/audit/proof/inclusion?seq=0&size=1"); !strings.Contains(w.Body.String(), `"hashes":[]`) {
		t.Fatalf("one-entry proof: %s", w.Body.String())
	}

	for _, c := range []struct{ query, detail string }{
		{"", "seq is required"},
		{q("size", "3"), "seq is required"},
		{q("seq", " "), "seq is required"},
		{q("seq", "abc"), "seq must be a whole number in 0..4611686018427387904"},
		{q("seq", "-1"), "seq must be a whole number in 0..4611686018427387904"},
		{q("seq", "0", "size", "x"), "size must be a whole number in 0..4611686018427387904"},
		{q("seq", "6"), "bad request: seq 6 is not below size 6"},
		{q("seq", "3", "size", "3"), "bad request: seq 3 is not below size 3"},
		{q("seq", "0", "size", "7"), "bad request: size 7 is beyond the log's 6 entries"},
	} {
		if d := detail(t, auditGet(t, s, "/audit/proof/inclusion?"+c.query), http.StatusBadRequest); d != c.detail {
			t.Errorf("inclusion?%s: detail %q, want %q", c.query, d, c.detail)
		}
	}
}

func TestAuditConsistencyProof(t *testing.T) {
	s := newAuditSvc(t, false)
	seedAudit(t, s)
	h := rfc6962.DefaultHasher
	for newSize := uint64(0); newSize <= 6; newSize++ {
		newRoot, err := s.log.RootAt(newSize)
		if err != nil {
			t.Fatal(err)
		}
		for old := uint64(0); old <= newSize; old++ {
			oldRoot, _ := s.log.RootAt(old)
			target := fmt.Sprintf("/audit/proof/consistency?old=%d&new=%d", old, newSize)
			m := expectJSON(t, auditGet(t, s, target), http.StatusOK)
			if m["old"] != float64(old) || m["new"] != float64(newSize) || len(m) != 3 {
				t.Fatalf("%s: %v", target, m)
			}
			if err := proof.VerifyConsistency(h, old, newSize, proofHashes(t, m["hashes"]), oldRoot, newRoot); err != nil {
				t.Fatalf("%s: %v", target, err)
			}
		}
	}
	// Default new size is the current one.
	m := expectJSON(t, auditGet(t, s, "/audit/proof/consistency?old=3"), http.StatusOK)
	oldRoot, _ := s.log.RootAt(3)
	_, root, _ := s.log.Size()
	if m["new"] != float64(6) {
		t.Fatalf("default new %v", m["new"])
	}
	if err := proof.VerifyConsistency(h, 3, 6, proofHashes(t, m["hashes"]), oldRoot, root); err != nil {
		t.Fatal(err)
	}
	// A proof for the root computed from the wrong old tree fails.
	wrongOld, _ := s.log.RootAt(2)
	if err := proof.VerifyConsistency(h, 3, 6, proofHashes(t, m["hashes"]), wrongOld, root); err == nil {
		t.Fatal("consistency proof verified against the wrong old root")
	}

	for _, c := range []struct{ query, detail string }{
		{"", "old is required"},
		{q("new", "3"), "old is required"},
		{q("old", "x"), "old must be a whole number in 0..4611686018427387904"},
		{q("old", "1", "new", "-2"), "new must be a whole number in 0..4611686018427387904"},
		{q("old", "7"), "bad request: old size 7 is above new size 6"},
		{q("old", "4", "new", "3"), "bad request: old size 4 is above new size 3"},
		{q("old", "1", "new", "9"), "bad request: size 9 is beyond the log's 6 entries"},
	} {
		if d := detail(t, auditGet(t, s, "/audit/proof/consistency?"+c.query), http.StatusBadRequest); d != c.detail {
			t.Errorf("consistency?%s: detail %q, want %q", c.query, d, c.detail)
		}
	}
}

// A tree node the proof needs but the store lost is the server's problem.
// Nodes below level 4 are rehashed from the entries, so losing entry 5
// loses leaf 5.
func TestAuditProofOverLostTreeNode(t *testing.T) {
	s := newAuditSvc(t, false)
	seedAudit(t, s)
	// Entry 5's block (one entry each).
	s.reopen(t, func(txn *badger.Txn) error {
		return txn.Delete(storage.SpaceAudit.Key([]byte("e"), storage.EncodeUint64(5)))
	})
	for _, target := range []string{"/audit/proof/inclusion?seq=5", "/audit/proof/inclusion?seq=4&size=6", "/audit/proof/consistency?old=5&new=6"} {
		if d := detail(t, auditGet(t, s, target), http.StatusInternalServerError); !strings.HasPrefix(d, "building the proof: audit: ") {
			t.Errorf("%s: detail %q", target, d)
		}
	}
	// Proofs that do not need it still work.
	expectJSON(t, auditGet(t, s, "/audit/proof/inclusion?seq=1&size=4"), http.StatusOK)
}

func TestAuditMethodNotAllowed(t *testing.T) {
	s := newAuditSvc(t, true)
	all := seedAudit(t, s)
	for _, method := range []string{http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete, http.MethodHead} {
		// A path no route has is not found, whatever the method.
		if w := auditCall(t, s, method, "/audit/a/b"); w.Code != http.StatusNotFound {
			t.Errorf("%s /audit/a/b: %d", method, w.Code)
		}
		for _, path := range []string{"/audit", "/audit/verify", "/audit/export", "/audit/checkpoint", "/audit/proof/inclusion", "/audit/" + all[0].ID} {
			w := auditCall(t, s, method, path)
			if w.Code != http.StatusMethodNotAllowed || w.Header().Get("Allow") != "GET" {
				t.Errorf("%s %s: %d Allow %q", method, path, w.Code, w.Header().Get("Allow"))
			}
			if method != http.MethodHead {
				if d := detail(t, w, http.StatusMethodNotAllowed); d != "method not allowed; use GET" {
					t.Errorf("%s %s: detail %q", method, path, d)
				}
			}
		}
	}
	// Nothing was changed or removed.
	eq(t, "after refused methods", auditEntries(t, auditGet(t, s, "/audit")), all)
}

func TestAuditStorageFailures(t *testing.T) {
	s := newAuditSvc(t, true)
	all := seedAudit(t, s)
	if err := s.db.Close(); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ target, prefix string }{
		{"/audit", "reading the audit log: "},
		{"/audit?urn=" + consC1, "reading the audit log: "},
		{"/audit/export?format=csv", "reading the audit log: "},
		{"/audit/" + all[0].ID, "reading " + all[0].ID + ": "},
		{"/audit/verify", "verifying: "},
		{"/audit/proof/inclusion?seq=0&size=1", "building the proof: "},
		{"/audit/proof/consistency?old=0&new=1", "building the proof: "},
	} {
		if d := detail(t, auditGet(t, s, c.target), http.StatusInternalServerError); !strings.HasPrefix(d, c.prefix) {
			t.Errorf("%s: detail %q, want prefix %q", c.target, d, c.prefix)
		}
	}
	if d := detail(t, auditGet(t, s, "/audit/checkpoint"), http.StatusServiceUnavailable); !strings.HasPrefix(d, "no checkpoint: ") {
		t.Errorf("checkpoint: detail %q", d)
	}
	// Without a size the proofs read the log's size first; that failing is
	// not a success either way (see TestAuditProofSizeReadFailureIs500).
	for _, target := range []string{"/audit/proof/inclusion?seq=0", "/audit/proof/consistency?old=0"} {
		w := auditGet(t, s, target)
		if w.Code < 400 || !strings.Contains(strings.ToLower(w.Body.String()), "closed") {
			t.Errorf("%s: %d %s", target, w.Code, w.Body.String())
		}
	}
	// Bad requests are still 400.
	detail(t, auditGet(t, s, "/audit?limit=x"), http.StatusBadRequest)
	detail(t, auditGet(t, s, "/audit/proof/inclusion"), http.StatusBadRequest)
}

// Was a bug: audit.go:164-172 (sizeParam) stores a storage error from
// log.Size() in the query's error, which inclusionProof and
// consistencyProof answer as 400 Bad Request. GET
// /audit/proof/inclusion?seq=0 on a database that cannot be read answers
// 400 {"detail":"DB Closed"}; it is the server's fault and
// should be 500, as it is when size is given.
func TestAuditProofSizeReadFailureIs500(t *testing.T) {
	s := newAuditSvc(t, false)
	seedAudit(t, s)
	if err := s.db.Close(); err != nil {
		t.Fatal(err)
	}
	for _, target := range []string{"/audit/proof/inclusion?seq=0", "/audit/proof/consistency?old=0"} {
		detail(t, auditGet(t, s, target), http.StatusInternalServerError)
	}
}

// The same handler under the admin API's /asap prefix, over real HTTP.
func TestAuditOverHTTPWithMountPrefix(t *testing.T) {
	s := newAuditSvc(t, true)
	all := seedAudit(t, s)
	srv := httptest.NewServer(adminHandlerOf(&Services{Audit: s}))
	defer srv.Close()
	resp, err := srv.Client().Get(srv.URL + "/asap/audit/" + all[3].ID)
	if err != nil {
		t.Fatal(err)
	}
	var got audit.Entry
	err = json.NewDecoder(resp.Body).Decode(&got)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK || !reflect.DeepEqual(got, all[3]) {
		t.Fatalf("entry over HTTP: %d %+v %v", resp.StatusCode, got, err)
	}
	resp, err = srv.Client().Get(srv.URL + "/asap/audit/checkpoint")
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	buf.ReadFrom(resp.Body)
	resp.Body.Close()
	if _, err := audit.ParseCheckpoint(buf.Bytes(), s.verifier); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("checkpoint over HTTP: %d %v", resp.StatusCode, err)
	}
}

func TestWriteJSONEncodingFailure(t *testing.T) {
	w := httptest.NewRecorder()
	writeJSON(w, http.StatusOK, map[string]any{"c": make(chan int)})
	expect(t, w, http.StatusInternalServerError, `{"detail":"encoding the answer failed"}`)
	if w.Header().Get("Content-Length") != fmt.Sprint(w.Body.Len()) || w.Header().Get("Content-Type") != "application/json" {
		t.Fatalf("headers %v", w.Header())
	}
}
