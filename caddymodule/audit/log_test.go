package audit

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dgraph-io/badger/v4"
	"github.com/transparency-dev/formats/log"
	"github.com/transparency-dev/merkle/compact"
	"golang.org/x/mod/sumdb/note"

	"github.com/asap-sidecar/asap-sidecar/storage"
)

var t0 = time.Date(2026, 3, 1, 10, 0, 0, 0, time.UTC)

// commitAppend appends recs at now in one strict write.
func commitAppend(t testing.TB, db *storage.DB, l *Log, now time.Time, recs ...Record) ([]Entry, error) {
	t.Helper()
	var out []Entry
	err := db.Commit(context.Background(), storage.Strict, func(tx *storage.Tx) error {
		var err error
		out, err = l.Append(tx, now, recs...)
		return err
	})
	return out, err
}

func mustAppend(t testing.TB, db *storage.DB, l *Log, now time.Time, recs ...Record) []Entry {
	t.Helper()
	out, err := commitAppend(t, db, l, now, recs...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// fill appends n entries one a second from t0.
func fill(t testing.TB, db *storage.DB, l *Log, n int) []Entry {
	t.Helper()
	var out []Entry
	for i := 0; i < n; i++ {
		out = append(out, mustAppend(t, db, l, t0.Add(time.Duration(i)*time.Second),
			Record{Operation: OpTaskCompleted, AgentURN: "urn:asap:agent:c", Details: map[string]any{"task_id": fmt.Sprintf("task-%d", i)}})...)
	}
	return out
}

// reopenAfter closes db, lets fn change the files behind the log's back,
// and opens the database again (closed at the end of the test).
func reopenAfter(t *testing.T, db *storage.DB, fn func(txn *badger.Txn) error) (*storage.DB, *Log) {
	t.Helper()
	dir := db.Dir()
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	tamper(t, dir, fn)
	db = openDB(t, dir)
	t.Cleanup(func() { db.Close() })
	return db, New(db)
}

func rawGet(txn *badger.Txn, key []byte) ([]byte, error) {
	item, err := txn.Get(key)
	if err != nil {
		return nil, err
	}
	return item.ValueCopy(nil)
}

// editBlock rewrites the stored block that starts at seq, as an attacker
// who knows the format would: fields change, stored tags do not.
func editBlock(seq uint64, edit func(b *block)) func(txn *badger.Txn) error {
	return func(txn *badger.Txn) error {
		v, err := rawGet(txn, blockKey(seq))
		if err != nil {
			return err
		}
		b, err := decodeBlock(blockKey(seq), v)
		if err != nil {
			return err
		}
		edit(b)
		v, err = b.encode()
		if err != nil {
			return err
		}
		return txn.Set(blockKey(seq), v)
	}
}

// rawHash is a hex entry hash as a block stores its prev hash.
func rawHash(h string) []byte {
	b, _ := hex.DecodeString(h)
	return b
}

// editHead rewrites the stored head.
func editHead(edit func(h *head)) func(txn *badger.Txn) error {
	return func(txn *badger.Txn) error {
		b, err := rawGet(txn, headKey)
		if err != nil {
			return err
		}
		h, err := readHead(func([]byte) ([]byte, error) { return b, nil })
		if err != nil {
			return err
		}
		edit(h)
		return txn.Set(headKey, h.encode())
	}
}

func seqs(es []Entry) []uint64 {
	out := []uint64{}
	for _, e := range es {
		out = append(out, e.Seq)
	}
	return out
}

// ------------------------------------------------------------------ Query

// modelEntry is what the query model knows of an entry.
type modelEntry struct {
	agent, op, task string
	at              time.Time // effective: never before the previous entry
}

func (m modelEntry) matches(f Filter) bool {
	return (f.AgentURN == "" || m.agent == f.AgentURN) && (f.Operation == "" || m.op == f.Operation) &&
		(f.TaskID == "" || m.task == f.TaskID) && (f.Start.IsZero() || !m.at.Before(f.Start)) &&
		(f.End.IsZero() || !m.at.After(f.End))
}

func modelQuery(model []modelEntry, f Filter, limit, offset int, skip map[uint64]bool) []uint64 {
	out := []uint64{}
	for i, m := range model {
		if skip[uint64(i)] || !m.matches(f) {
			continue
		}
		if offset > 0 {
			offset--
			continue
		}
		if len(out) >= limit {
			break
		}
		out = append(out, uint64(i))
	}
	return out
}

var (
	qAgents = []string{"urn:asap:agent:a0", "urn:asap:agent:a1", "urn:asap:agent:a2"}
	qOps    = []string{OpTaskStarted, OpTaskCompleted, OpUsageRecorded, OpTaskFailed}
)

// queryLog appends 40 entries with known agents, operations, tasks and
// times, one an Append (so one a block); the clock goes back at entries 20
// and 21, so entries 19..21 share one timestamp.
func queryLog(t *testing.T) (*storage.DB, *Log, []modelEntry) {
	t.Helper()
	return groupedQueryLog(t, []int{1})
}

// groupedQueryLog is queryLog with the entries appended in groups of the
// given sizes (cycling): one block and one timestamp (its first entry's)
// for each group, as a task's entries are.
func groupedQueryLog(t *testing.T, sizes []int) (*storage.DB, *Log, []modelEntry) {
	t.Helper()
	db := openDB(t, t.TempDir())
	t.Cleanup(func() { db.Close() })
	l := New(db)
	var model []modelEntry
	var last time.Time
	var group []Record
	var groupAt time.Time
	for i, g := 0, 0; i < 40; i++ {
		at := t0.Add(time.Duration(i) * 10 * time.Second)
		switch i {
		case 20, 21:
			at = t0.Add(150 * time.Second)
		case 22:
			at = t0.Add(195 * time.Second)
		}
		m := modelEntry{agent: qAgents[i%3], op: qOps[i%4]}
		rec := Record{Operation: m.op, AgentURN: m.agent}
		if i%5 != 0 {
			m.task = fmt.Sprintf("task-%d", i/4)
			rec.Details = map[string]any{"task_id": m.task, "i": i}
		}
		if len(group) == 0 {
			groupAt = at
			if at.After(last) {
				last = at
			}
		}
		m.at = last
		model = append(model, m)
		group = append(group, rec)
		if len(group) < sizes[g%len(sizes)] && i < 39 {
			continue
		}
		es := mustAppend(t, db, l, groupAt, group...)
		for _, e := range es {
			if got, _ := e.Time(); !got.Equal(model[e.Seq].at) {
				t.Fatalf("entry %d at %v, want %v", e.Seq, got, model[e.Seq].at)
			}
		}
		group, g = nil, g+1
	}
	return db, l, model
}

func queryFilters(model []modelEntry) []Filter {
	starts := []time.Time{{}, model[0].at, model[19].at, model[30].at.Add(-time.Second), model[39].at.Add(time.Nanosecond), t0.Add(-time.Hour)}
	ends := []time.Time{{}, model[19].at, model[39].at, model[0].at.Add(-time.Nanosecond), model[12].at.Add(3 * time.Second)}
	var out []Filter
	for _, agent := range []string{"", qAgents[0], qAgents[1], "urn:asap:agent:nobody"} {
		for _, op := range []string{"", qOps[0], qOps[2]} {
			for _, task := range []string{"", "task-3", "task-6", "task-none"} {
				for _, s := range starts {
					for _, e := range ends {
						out = append(out, Filter{AgentURN: agent, Operation: op, TaskID: task, Start: s, End: e})
					}
				}
			}
		}
	}
	return out
}

// Every combination of filters, window and paging answers exactly what a
// plain scan of the log would.
func TestQueryMatchesModel(t *testing.T) {
	// Blocks of several entries (with several agents and tasks) answer as
	// blocks of one do.
	for _, sizes := range [][]int{{1}, {3, 1, 2, 4}} {
		_, l, model := groupedQueryLog(t, sizes)
		pages := []struct{ limit, offset int }{{1000, 0}, {2, 1}, {1, 0}, {5, 100}}
		for _, f := range queryFilters(model) {
			for _, p := range pages {
				got, err := l.Query(f, p.limit, p.offset)
				if err != nil {
					t.Fatalf("blocks of %v, %+v: %v", sizes, f, err)
				}
				if want := modelQuery(model, f, p.limit, p.offset, nil); !reflect.DeepEqual(seqs(got), want) {
					t.Fatalf("blocks of %v, filter %+v limit %d offset %d:\n got  %v\n want %v", sizes, f, p.limit, p.offset, seqs(got), want)
				}
			}
		}
	}
	_, l, _ := queryLog(t)
	// Entries come back whole.
	got, _ := l.Query(Filter{TaskID: "task-3"}, 10, 0)
	if len(got) != 3 || got[0].Seq != 12 || got[0].AgentURN != qAgents[0] || got[0].Operation != qOps[0] ||
		string(got[0].Details) != `{"i":12,"task_id":"task-3"}` {
		t.Fatalf("task-3 = %+v", got)
	}
	for _, limit := range []int{0, -1} {
		if got, err := l.Query(Filter{}, limit, 0); err != nil || got == nil || len(got) != 0 {
			t.Fatalf("limit %d: %v %v, want an empty non-nil list", limit, got, err)
		}
	}
}

// A task id or agent that extends another after a NUL shares its index
// prefix; the entries of one never show up for the other, nor twice when
// both are in one block (one Append).
func TestQueryIndexValuesSharingAPrefix(t *testing.T) {
	db := openDB(t, t.TempDir())
	defer db.Close()
	l := New(db)
	mustAppend(t, db, l, t0,
		Record{Operation: OpTaskStarted, AgentURN: "urn:asap:agent:x", Details: map[string]any{"task_id": "t"}},
		Record{Operation: OpTaskStarted, AgentURN: "urn:asap:agent:x\x00y", Details: map[string]any{"task_id": "t\x00u"}},
		Record{Operation: OpTaskStarted + "\x00z", AgentURN: "urn:asap:agent:x", Details: map[string]any{"task_id": "t"}})
	for _, c := range []struct {
		f    Filter
		want []uint64
	}{
		{Filter{TaskID: "t"}, []uint64{0, 2}},
		{Filter{TaskID: "t\x00u"}, []uint64{1}},
		{Filter{AgentURN: "urn:asap:agent:x"}, []uint64{0, 2}},
		{Filter{Operation: OpTaskStarted}, []uint64{0, 1}},
	} {
		got, err := l.Query(c.f, 10, 0)
		if err != nil || !reflect.DeepEqual(seqs(got), c.want) {
			t.Errorf("%q: %v %v, want %v", fmt.Sprintf("%+v", c.f), seqs(got), err, c.want)
		}
	}
}

// The bisection for a window's start probes entry 20 of 40 first. Without
// it the search falls back to a scan from the start: answers stay right.
func TestQueryTimeWindowWithMissingEntry(t *testing.T) {
	db, _, model := queryLog(t)
	_, l := reopenAfter(t, db, func(txn *badger.Txn) error { return txn.Delete(blockKey(20)) })
	skip := map[uint64]bool{20: true}
	for _, f := range []Filter{
		{Start: model[25].at},
		{Start: model[10].at, End: model[30].at},
		{Start: model[19].at},
		{End: model[22].at},
	} {
		got, err := l.Query(f, 1000, 0)
		if err != nil {
			t.Fatalf("%+v: %v", f, err)
		}
		if want := modelQuery(model, f, 1000, 0, skip); !reflect.DeepEqual(seqs(got), want) {
			t.Fatalf("%+v:\n got  %v\n want %v", f, seqs(got), want)
		}
	}
	// An index still naming the missing entry is an error, not a silent gap.
	if _, err := l.Query(Filter{AgentURN: model[20].agent}, 1000, 0); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("agent index over a missing entry: %v", err)
	}
}

// An entry whose timestamp cannot be read cannot steer the bisection
// either, and never matches a window.
func TestQueryEntryWithUnreadableTimestamp(t *testing.T) {
	db, _, model := queryLog(t)
	_, l := reopenAfter(t, db, editBlock(20, func(b *block) { b.ts = "yesterday" }))
	skip := map[uint64]bool{20: true}
	for _, f := range []Filter{{Start: model[25].at}, {Start: model[5].at, End: model[21].at}, {Operation: model[20].op, Start: model[1].at}} {
		got, err := l.Query(f, 1000, 0)
		if err != nil {
			t.Fatalf("%+v: %v", f, err)
		}
		if want := modelQuery(model, f, 1000, 0, skip); !reflect.DeepEqual(seqs(got), want) {
			t.Fatalf("%+v:\n got  %v\n want %v", f, seqs(got), want)
		}
	}
	// Without a window it is listed like any other.
	got, _ := l.Query(Filter{}, 1000, 0)
	if len(got) != 40 || got[20].Timestamp != "yesterday" {
		t.Fatalf("unfiltered: %d entries", len(got))
	}
}

// An entry whose details no longer name the task its index says is left out.
func TestQueryTaskIndexCheckedAgainstDetails(t *testing.T) {
	db, _, _ := queryLog(t)
	_, l := reopenAfter(t, db, editBlock(13, func(b *block) { b.items[0].details = []byte(`{"task_id":"task-other"}`) }))
	got, err := l.Query(Filter{TaskID: "task-3"}, 10, 0)
	if err != nil || !reflect.DeepEqual(seqs(got), []uint64{12, 14}) {
		t.Fatalf("task-3 = %v %v", seqs(got), err)
	}
}

// Garbage where an entry should be is an error on every read path.
func TestReadsOfAnUnreadableEntryFail(t *testing.T) {
	db, _, model := queryLog(t)
	es, _ := New(db).Query(Filter{}, 1000, 0)
	id := es[20].ID
	_, l := reopenAfter(t, db, func(txn *badger.Txn) error { return txn.Set(blockKey(20), []byte("not a block")) })
	for _, f := range []Filter{{}, {AgentURN: model[20].agent}, {Start: model[30].at}} {
		if _, err := l.Query(f, 1000, 0); err == nil {
			t.Errorf("%+v: no error over a garbage entry", f)
		}
	}
	if err := l.Each(func(*Entry) bool { return true }); err == nil {
		t.Error("Each: no error over a garbage entry")
	}
	if e, err := l.Get(id); err == nil {
		t.Errorf("Get: %+v without error", e)
	}
	// Entries before the garbage are still readable one by one.
	n := 0
	if err := l.Each(func(e *Entry) bool { n++; return e.Seq < 5 }); err != nil || n != 6 {
		t.Fatalf("Each stopping early: %d entries, %v", n, err)
	}
}

// ------------------------------------------------------------------ Get, Size, RootAt

func TestGetByID(t *testing.T) {
	db := openDB(t, t.TempDir())
	l := New(db)
	es := fill(t, db, l, 3)
	for _, want := range es {
		got, err := l.Get(want.ID)
		if err != nil || got == nil || !reflect.DeepEqual(*got, want) {
			t.Fatalf("Get(%s) = %+v %v, want %+v", want.ID, got, err, want)
		}
	}
	for _, id := range []string{"", "nope", es[0].ID + "x", strings.ToLower(es[0].ID)} {
		if got, err := l.Get(id); err != nil || got != nil {
			t.Fatalf("Get(%q) = %+v %v, want nil", id, got, err)
		}
	}
	// An id of an entry inside the log that is gone is an error.
	_, l = reopenAfter(t, db, func(txn *badger.Txn) error { return txn.Delete(blockKey(1)) })
	if got, err := l.Get(es[1].ID); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("Get of a deleted entry = %+v %v", got, err)
	}
}

func TestEmptyLog(t *testing.T) {
	db := openDB(t, t.TempDir())
	defer db.Close()
	l := New(db)
	empty := sha256.Sum256(nil)
	size, root, err := l.Size()
	if err != nil || size != 0 || !bytes.Equal(root, empty[:]) {
		t.Fatalf("Size = %d %x %v, want 0 and SHA-256 of nothing", size, root, err)
	}
	if root, err := l.RootAt(0); err != nil || !bytes.Equal(root, empty[:]) {
		t.Fatalf("RootAt(0) = %x %v", root, err)
	}
	if _, err := l.RootAt(1); err == nil {
		t.Fatal("RootAt beyond an empty log succeeded")
	}
	if v, err := l.Verify(nil); err != nil || !v.Valid || v.Size != 0 || v.FirstBadSeq != nil || v.Reason != nil {
		t.Fatalf("Verify = %+v %v", v, err)
	}
	if got, err := l.Query(Filter{}, 10, 0); err != nil || len(got) != 0 {
		t.Fatalf("Query = %v %v", got, err)
	}
	if _, _, err := l.InclusionProof(0, 0); !errors.Is(err, ErrBadRequest) {
		t.Fatalf("inclusion in an empty tree: %v", err)
	}
	if hashes, err := l.ConsistencyProof(0, 0); err != nil || len(hashes) != 0 {
		t.Fatalf("consistency 0→0 = %v %v", hashes, err)
	}
	if cp, size, err := l.LatestCheckpoint(); cp != nil || size != 0 || err != nil {
		t.Fatalf("LatestCheckpoint = %q %d %v", cp, size, err)
	}
	// Appending nothing writes nothing.
	var out []Entry
	err = db.Commit(context.Background(), storage.Strict, func(tx *storage.Tx) error {
		var err error
		out, err = l.Append(tx, time.Now())
		return err
	})
	if err != nil || out != nil {
		t.Fatalf("Append() = %v %v", out, err)
	}
	if size, _, _ := l.Size(); size != 0 {
		t.Fatalf("size %d after appending nothing", size)
	}
}

func TestRootAtEverySizeMatchesIndependentRoot(t *testing.T) {
	db := openDB(t, t.TempDir())
	defer db.Close()
	l := New(db)
	es := fill(t, db, l, 13)
	var leaves [][]byte
	for i := range es {
		raw, _ := hex.DecodeString(es[i].Hash)
		leaves = append(leaves, raw)
		root, err := l.RootAt(uint64(i + 1))
		if err != nil || !bytes.Equal(root, refRoot(leaves)) {
			t.Fatalf("RootAt(%d) = %x %v, want %x", i+1, root, err, refRoot(leaves))
		}
	}
	if _, err := l.RootAt(14); err == nil || !strings.Contains(err.Error(), "tree node") {
		t.Fatalf("RootAt beyond the log: %v", err)
	}
}

// ------------------------------------------------------------------ proofs

func TestProofArgumentErrors(t *testing.T) {
	db := openDB(t, t.TempDir())
	defer db.Close()
	l := New(db)
	fill(t, db, l, 10)
	for _, c := range []struct {
		name string
		err  error
	}{
		{"inclusion seq = size", func() error { _, _, err := l.InclusionProof(10, 10); return err }()},
		{"inclusion seq > size", func() error { _, _, err := l.InclusionProof(11, 5); return err }()},
		{"inclusion size beyond log", func() error { _, _, err := l.InclusionProof(3, 11); return err }()},
		{"consistency old > new", func() error { _, err := l.ConsistencyProof(6, 5); return err }()},
		{"consistency new beyond log", func() error { _, err := l.ConsistencyProof(3, 11); return err }()},
		{"consistency both beyond log", func() error { _, err := l.ConsistencyProof(11, 11); return err }()},
	} {
		if !errors.Is(c.err, ErrBadRequest) {
			t.Errorf("%s: %v, want ErrBadRequest", c.name, c.err)
		}
	}
	// Sizes up to the log are fine, and old == new needs no hashes.
	if hashes, err := l.ConsistencyProof(10, 10); err != nil || len(hashes) != 0 {
		t.Fatalf("consistency 10→10: %v %v", hashes, err)
	}
	if hashes, err := l.ConsistencyProof(0, 10); err != nil || len(hashes) != 0 {
		t.Fatalf("consistency 0→10: %v %v", hashes, err)
	}
	leaf, hashes, err := l.InclusionProof(0, 1)
	if err != nil || len(hashes) != 0 || len(leaf) != sha256.Size {
		t.Fatalf("inclusion 0 in 1: %x %v %v", leaf, hashes, err)
	}
}

// Tree nodes the proofs need but the store lost are errors, and not the
// caller's: a stored node (levels 4 and up), or the entries a lower one is
// rehashed from.
func TestProofsOverMissingTreeNodes(t *testing.T) {
	db := openDB(t, t.TempDir())
	fill(t, db, New(db), 40)
	_, l := reopenAfter(t, db, func(txn *badger.Txn) error {
		if err := txn.Delete(nodeKey(compact.NewNodeID(4, 0))); err != nil {
			return err
		}
		if err := txn.Set(blockKey(37), []byte("garbage")); err != nil {
			return err
		}
		return txn.Delete(blockKey(35))
	})
	check := func(name string, err error, want string) {
		t.Helper()
		if err == nil || errors.Is(err, ErrBadRequest) || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want a storage error naming %q", name, err, want)
		}
	}
	_, _, err := l.InclusionProof(35, 40)
	check("inclusion of a lost entry", err, "leaf 35")
	_, _, err = l.InclusionProof(34, 40) // its sibling is entry 35
	check("inclusion needing a lost entry", err, "tree node 0/35")
	_, _, err = l.InclusionProof(20, 40) // needs node 4/0
	check("inclusion needing a lost node", err, "tree node 4/0")
	_, err = l.ConsistencyProof(20, 40) // needs node 4/0
	check("consistency needing a lost node", err, "tree node 4/0")
	_, err = l.ConsistencyProof(33, 40) // needs node 1/17, over entries 34 and 35
	check("consistency needing a lost entry", err, "tree node 1/17")
	_, err = l.RootAt(16)
	check("root over a lost node", err, "tree node 4/0")
	_, _, err = l.InclusionProof(38, 40) // needs node 1/18, over entries 36 and 37
	check("inclusion over an unreadable entry", err, "tree node 1/18: audit: block 37 is corrupt")
	// What does not need them still works: the lower nodes of 0..15 from
	// the entries, node 4/1 from the store.
	if _, _, err := l.InclusionProof(1, 16); err != nil {
		t.Errorf("inclusion of 1 in 16: %v", err)
	}
	if _, _, err := l.InclusionProof(3, 32); err != nil {
		t.Errorf("inclusion of 3 in 32: %v", err)
	}
	if _, err := l.ConsistencyProof(16, 32); err != nil { // node 4/1 alone
		t.Errorf("consistency 16→32: %v", err)
	}
}

// ------------------------------------------------------------------ Verify

// verified builds a log of n entries, lets fn tamper with it, and verifies.
func verified(t *testing.T, n int, v note.Verifier, prepare func(db *storage.DB, l *Log), fn func(txn *badger.Txn) error) Verdict {
	t.Helper()
	db := openDB(t, t.TempDir())
	l := New(db)
	fill(t, db, l, n)
	if prepare != nil {
		prepare(db, l)
	}
	_, l = reopenAfter(t, db, fn)
	verdict, err := l.Verify(v)
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	return verdict
}

func expectBad(t *testing.T, v Verdict, seq uint64, reason string) {
	t.Helper()
	if v.Valid || v.FirstBadSeq == nil || *v.FirstBadSeq != seq || v.Reason == nil || !strings.Contains(*v.Reason, reason) {
		got := "<nil>"
		if v.Reason != nil {
			got = *v.Reason
		}
		bad := "<nil>"
		if v.FirstBadSeq != nil {
			bad = fmt.Sprint(*v.FirstBadSeq)
		}
		t.Fatalf("verdict valid=%v first_bad_seq=%s reason=%q; want invalid at %d with %q", v.Valid, bad, got, seq, reason)
	}
}

func TestVerifyEntryTampering(t *testing.T) {
	t.Run("unreadable block", func(t *testing.T) {
		v := verified(t, 12, nil, nil, func(txn *badger.Txn) error { return txn.Set(blockKey(4), []byte("{")) })
		expectBad(t, v, 4, "entry 4 is not a readable entry")
		if v.Size != 4 {
			t.Fatalf("size %d, want the 4 good entries", v.Size)
		}
	})
	t.Run("block moved to another seq", func(t *testing.T) {
		// Blocks hold no seq: one stored under another's key is caught by
		// the hash it chains to.
		v := verified(t, 12, nil, nil, func(txn *badger.Txn) error {
			b, err := rawGet(txn, blockKey(9))
			if err != nil {
				return err
			}
			return txn.Set(blockKey(4), b)
		})
		expectBad(t, v, 4, "entry 4 does not chain to entry 3 (prev_hash)")
	})
	t.Run("prev_hash", func(t *testing.T) {
		var two string
		v := verified(t, 12, nil, func(db *storage.DB, l *Log) {
			es, _ := l.Query(Filter{}, 3, 0)
			two = es[2].Hash
		}, editBlock(4, func(b *block) { b.prev = rawHash(two) }))
		expectBad(t, v, 4, "entry 4 does not chain to entry 3 (prev_hash)")
	})
	t.Run("first entry with a prev_hash", func(t *testing.T) {
		v := verified(t, 3, nil, nil, editBlock(0, func(b *block) { b.prev = make([]byte, 32) }))
		expectBad(t, v, 0, "entry 0 does not chain")
	})
	t.Run("stored tree node edited", func(t *testing.T) {
		v := verified(t, 40, nil, nil, func(txn *badger.Txn) error {
			return txn.Set(nodeKey(compact.NewNodeID(4, 1)), bytes.Repeat([]byte{7}, 32))
		})
		expectBad(t, v, 16, "the tree's node 4/1 does not match entries 16 to 31")
	})
	t.Run("stored tree node deleted", func(t *testing.T) {
		v := verified(t, 40, nil, nil, func(txn *badger.Txn) error { return txn.Delete(nodeKey(compact.NewNodeID(5, 0))) })
		expectBad(t, v, 0, "the tree's node 5/0 does not match entries 0 to 31")
	})
}

func TestVerifyHeadTampering(t *testing.T) {
	t.Run("size", func(t *testing.T) {
		v := verified(t, 12, nil, nil, editHead(func(h *head) { h.Size = 13 }))
		expectBad(t, v, 12, "the log holds 12 entries but its head says 13")
	})
	t.Run("hash", func(t *testing.T) {
		v := verified(t, 12, nil, nil, editHead(func(h *head) { h.Hash = strings.Repeat("ab", 32) }))
		expectBad(t, v, 12, "the head's last hash is not entry 11's")
	})
	t.Run("root", func(t *testing.T) {
		v := verified(t, 12, nil, nil, editHead(func(h *head) { h.Range[0] = bytes.Repeat([]byte{1}, 32) }))
		expectBad(t, v, 0, "the tree's root does not match the entries")
	})
	t.Run("root after a good checkpoint", func(t *testing.T) {
		s, ver := testSigner(t)
		v := verified(t, 12, ver, func(db *storage.DB, l *Log) {
			if _, err := l.Checkpoint(context.Background(), s); err != nil {
				t.Fatal(err)
			}
		}, editHead(func(h *head) { h.Range[1][0] ^= 1 }))
		expectBad(t, v, 12, "the tree's root does not match the entries")
		if v.Checkpoints != 1 {
			t.Fatalf("%d checkpoints checked", v.Checkpoints)
		}
	})
}

// A head that cannot be read at all makes Verify fail rather than pass.
func TestVerifyCorruptHeadIsNotValid(t *testing.T) {
	for name, fn := range map[string]func(txn *badger.Txn) error{
		"garbage":         func(txn *badger.Txn) error { return txn.Set(headKey, []byte("garbage")) },
		"range too short": editHead(func(h *head) { h.Range = h.Range[:1] }),
	} {
		t.Run(name, func(t *testing.T) {
			db := openDB(t, t.TempDir())
			fill(t, db, New(db), 12)
			_, l := reopenAfter(t, db, fn)
			v, err := l.Verify(nil)
			if err == nil && v.Valid {
				t.Fatal("a corrupt head verified")
			}
			if err != nil && !strings.Contains(err.Error(), "head") {
				t.Fatalf("error %v does not name the head", err)
			}
		})
	}
}

// Was a bug: verify.go:50-53 and 144-147 return an error (GET /audit/verify
// answers 500) when the stored head is unreadable or its compact range does
// not fit its size, instead of a verdict; a tampered head is tampering like
// any other and should be reported as {"valid":false, ...}.
func TestVerifyReportsCorruptHeadAsInvalid(t *testing.T) {
	for name, fn := range map[string]func(txn *badger.Txn) error{
		"garbage":         func(txn *badger.Txn) error { return txn.Set(headKey, []byte("garbage")) },
		"range too short": editHead(func(h *head) { h.Range = h.Range[:1] }),
	} {
		t.Run(name, func(t *testing.T) {
			db := openDB(t, t.TempDir())
			fill(t, db, New(db), 12)
			_, l := reopenAfter(t, db, fn)
			v, err := l.Verify(nil)
			if err != nil || v.Valid || v.Reason == nil {
				t.Fatalf("verdict %+v, err %v; want valid=false with a reason and no error", v, err)
			}
		})
	}
}

// signatureFlipped changes one bit of a signed note's signature.
func signatureFlipped(signed []byte) []byte {
	text := openText(signed)
	sigLine := strings.TrimSuffix(string(signed[len(text)+1:]), "\n")
	i := strings.LastIndex(sigLine, " ")
	sig, _ := base64.StdEncoding.DecodeString(sigLine[i+1:])
	sig[len(sig)-1] ^= 1
	return []byte(string(text) + "\n" + sigLine[:i+1] + base64.StdEncoding.EncodeToString(sig) + "\n")
}

func TestVerifyCheckpoints(t *testing.T) {
	ctx := context.Background()
	checkpointAt := func(t *testing.T, s note.Signer) func(db *storage.DB, l *Log) {
		return func(db *storage.DB, l *Log) {
			if _, err := l.Checkpoint(ctx, s); err != nil {
				t.Fatal(err)
			}
		}
	}
	t.Run("bad signature", func(t *testing.T) {
		s, v := testSigner(t)
		var signed []byte
		verdict := verified(t, 5, v, func(db *storage.DB, l *Log) {
			checkpointAt(t, s)(db, l)
			signed, _, _ = l.LatestCheckpoint()
		}, func(txn *badger.Txn) error { return txn.Set(checkpointKey(5), signatureFlipped(signed)) })
		expectBad(t, verdict, 0, "checkpoint at size 5 does not verify")
	})
	t.Run("bad signature not checked without a verifier", func(t *testing.T) {
		s, _ := testSigner(t)
		var signed []byte
		verdict := verified(t, 5, nil, func(db *storage.DB, l *Log) {
			checkpointAt(t, s)(db, l)
			signed, _, _ = l.LatestCheckpoint()
		}, func(txn *badger.Txn) error { return txn.Set(checkpointKey(5), signatureFlipped(signed)) })
		if !verdict.Valid || verdict.Checkpoints != 1 {
			t.Fatalf("verdict %+v", verdict)
		}
	})
	t.Run("unreadable checkpoint without a verifier", func(t *testing.T) {
		s, _ := testSigner(t)
		verdict := verified(t, 5, nil, checkpointAt(t, s), func(txn *badger.Txn) error { return txn.Set(checkpointKey(5), []byte("garbage")) })
		expectBad(t, verdict, 0, "checkpoint at size 5 does not verify")
	})
	t.Run("good at size 0 and later", func(t *testing.T) {
		s, v := testSigner(t)
		db := openDB(t, t.TempDir())
		defer db.Close()
		l := New(db)
		cp0, err := l.Checkpoint(ctx, s)
		if err != nil {
			t.Fatal(err)
		}
		c, err := ParseCheckpoint(cp0, v)
		if err != nil || c.Size != 0 || !bytes.Equal(c.Hash, hasher.EmptyRoot()) {
			t.Fatalf("checkpoint of the empty log = %+v %v", c, err)
		}
		fill(t, db, l, 3)
		if _, err := l.Checkpoint(ctx, s); err != nil {
			t.Fatal(err)
		}
		verdict, err := l.Verify(v)
		if err != nil || !verdict.Valid || verdict.Checkpoints != 2 || verdict.Size != 3 {
			t.Fatalf("verdict %+v %v", verdict, err)
		}
	})
	t.Run("stranger's at size 0", func(t *testing.T) {
		_, v := testSigner(t)
		stranger, _ := testSigner(t) // same name, other key
		verdict := verified(t, 0, v, checkpointAt(t, stranger), func(*badger.Txn) error { return nil })
		expectBad(t, verdict, 0, "checkpoint at size 0 does not verify")
		if verdict.Size != 0 {
			t.Fatalf("size %d", verdict.Size)
		}
	})
	t.Run("root not the entries'", func(t *testing.T) {
		s, v := testSigner(t)
		verdict := verified(t, 8, v, func(db *storage.DB, l *Log) {
			// A good checkpoint at 3, then a well-signed one at 5 over
			// another root.
			var at3 []byte
			if err := db.View(func(r *storage.Reader) error {
				var err error
				at3, err = rootAt(r, 3)
				return err
			}); err != nil {
				t.Fatal(err)
			}
			good, _ := note.Sign(&note.Note{Text: string(log.Checkpoint{Origin: s.Name(), Size: 3, Hash: at3}.Marshal())}, s)
			forged, _ := note.Sign(&note.Note{Text: string(log.Checkpoint{Origin: s.Name(), Size: 5, Hash: bytes.Repeat([]byte{9}, 32)}.Marshal())}, s)
			if err := db.Commit(ctx, storage.Strict, func(tx *storage.Tx) error {
				tx.Set(checkpointKey(3), good)
				tx.Set(checkpointKey(5), forged)
				return nil
			}); err != nil {
				t.Fatal(err)
			}
		}, func(*badger.Txn) error { return nil })
		expectBad(t, verdict, 3, "entries below 5 do not match the checkpoint signed at size 5")
		if verdict.Checkpoints != 1 {
			t.Fatalf("%d checkpoints passed, want the one at 3", verdict.Checkpoints)
		}
	})
	t.Run("beyond the log (truncated)", func(t *testing.T) {
		s, v := testSigner(t)
		var headAt6 []byte
		verdict := verified(t, 6, v, func(db *storage.DB, l *Log) {
			_ = db.View(func(r *storage.Reader) error {
				var err error
				headAt6, err = r.Get(headKey)
				return err
			})
			fill(t, db, l, 4)
			checkpointAt(t, s)(db, l)
		}, func(txn *badger.Txn) error {
			// Cut the log back to 6 entries with a head that agrees.
			for seq := uint64(6); seq < 10; seq++ {
				if err := txn.Delete(blockKey(seq)); err != nil {
					return err
				}
			}
			return txn.Set(headKey, headAt6)
		})
		expectBad(t, verdict, 6, "a checkpoint was signed at size 10, but the log has only 6 entries (truncated)")
	})
}

func TestVerifyFailsOnClosedDatabase(t *testing.T) {
	db := openDB(t, t.TempDir())
	l := New(db)
	fill(t, db, l, 2)
	db.Close()
	if _, err := l.Verify(nil); err == nil {
		t.Fatal("Verify of a closed database succeeded")
	}
}

// ------------------------------------------------------------------ checkpoints

func TestCheckpointSignerChange(t *testing.T) {
	ctx := context.Background()
	db := openDB(t, t.TempDir())
	defer db.Close()
	l := New(db)
	s, v := testSigner(t)
	fill(t, db, l, 4)
	first, err := l.Checkpoint(ctx, s)
	if err != nil {
		t.Fatal(err)
	}
	// Same size, another name: a new checkpoint in that name replaces it.
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	other, otherVKey, err := NewSigner(Origin("urn:asap:agent:other"), key)
	if err != nil {
		t.Fatal(err)
	}
	ov, _ := note.NewVerifier(otherVKey)
	second, err := l.Checkpoint(ctx, other)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(first, second) {
		t.Fatal("a signer with another name got the old checkpoint")
	}
	c, err := ParseCheckpoint(second, ov)
	if err != nil || c.Origin != "urn:asap:agent:other/audit" || c.Size != 4 {
		t.Fatalf("new checkpoint %+v %v", c, err)
	}
	if latest, size, _ := l.LatestCheckpoint(); size != 4 || !bytes.Equal(latest, second) {
		t.Fatalf("latest %d %q", size, latest)
	}
	if verdict, _ := l.Verify(ov); !verdict.Valid {
		t.Fatalf("verify with the new signer: %+v", verdict)
	}
	if verdict, _ := l.Verify(v); verdict.Valid {
		t.Fatal("the replaced checkpoint still verifies with the old key")
	}
}

// Was a bug: checkpoint.go:52-58 reuses the latest checkpoint when the size is
// unchanged and the origin matches, without looking at the key that signed
// it. After the agent's key changes (same URN), Checkpoint(newSigner)
// returns the note signed with the old key, which the new verifier key
// rejects, until the log grows.
func TestCheckpointReuseNeedsTheSameKey(t *testing.T) {
	ctx := context.Background()
	db := openDB(t, t.TempDir())
	defer db.Close()
	l := New(db)
	oldKey, _ := testSigner(t)
	newKey, newV := testSigner(t) // same name, new key
	fill(t, db, l, 4)
	if _, err := l.Checkpoint(ctx, oldKey); err != nil {
		t.Fatal(err)
	}
	signed, err := l.Checkpoint(ctx, newKey)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ParseCheckpoint(signed, newV); err != nil {
		t.Fatalf("checkpoint returned for the new key does not verify with it: %v", err)
	}
}

func TestCheckpointErrors(t *testing.T) {
	ctx := context.Background()
	t.Run("signing fails", func(t *testing.T) {
		db := openDB(t, t.TempDir())
		defer db.Close()
		l := New(db)
		fill(t, db, l, 2)
		_, key, _ := ed25519.GenerateKey(rand.Reader)
		// A name note refuses to sign under.
		if _, err := l.Checkpoint(ctx, &signer{name: "bad name", key: key}); err == nil || !strings.Contains(err.Error(), "signing checkpoint") {
			t.Fatalf("Checkpoint with a bad signer: %v", err)
		}
		if cp, _, err := l.LatestCheckpoint(); cp != nil || err != nil {
			t.Fatalf("a checkpoint was stored: %q %v", cp, err)
		}
	})
	t.Run("corrupt head", func(t *testing.T) {
		db := openDB(t, t.TempDir())
		fill(t, db, New(db), 2)
		_, l := reopenAfter(t, db, func(txn *badger.Txn) error { return txn.Set(headKey, []byte("{")) })
		s, _ := testSigner(t)
		if _, err := l.Checkpoint(ctx, s); err == nil || !strings.Contains(err.Error(), "head is corrupt") {
			t.Fatalf("Checkpoint over a corrupt head: %v", err)
		}
	})
	t.Run("closed database", func(t *testing.T) {
		db := openDB(t, t.TempDir())
		l := New(db)
		db.Close()
		s, _ := testSigner(t)
		if _, err := l.Checkpoint(ctx, s); err == nil {
			t.Fatal("Checkpoint on a closed database succeeded")
		}
	})
}

func TestNewSignerRejectsBadNames(t *testing.T) {
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	for _, name := range []string{"", "has space", "plus+sign"} {
		if s, vkey, err := NewSigner(name, key); err == nil {
			t.Errorf("NewSigner(%q) = %v %q, want an error", name, s, vkey)
		}
	}
	s, vkey, err := NewSigner(Origin("urn:asap:agent:demo"), key)
	if err != nil || s.Name() != "urn:asap:agent:demo/audit" || !strings.HasPrefix(vkey, "urn:asap:agent:demo/audit+") {
		t.Fatalf("NewSigner = %v %q %v", s, vkey, err)
	}
	v, _ := note.NewVerifier(vkey)
	if s.KeyHash() != v.KeyHash() {
		t.Fatalf("key hash %08x, verifier's %08x", s.KeyHash(), v.KeyHash())
	}
}

func TestParseCheckpointErrors(t *testing.T) {
	s, v := testSigner(t)
	root := bytes.Repeat([]byte{3}, 32)
	sign := func(text string) []byte {
		b, err := note.Sign(&note.Note{Text: text}, s)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	good := sign(string(log.Checkpoint{Origin: s.Name(), Size: 7, Hash: root}.Marshal()))
	if c, err := ParseCheckpoint(good, v); err != nil || c.Size != 7 || !bytes.Equal(c.Hash, root) || c.Origin != s.Name() {
		t.Fatalf("good checkpoint: %+v %v", c, err)
	}
	_, stranger := testSigner(t)
	for name, c := range map[string]struct {
		signed []byte
		v      note.Verifier
		want   string
	}{
		"garbage":          {[]byte("garbage"), v, "malformed"},
		"not a checkpoint": {sign("just one line\n"), v, "checkpoint"},
		"wrong origin":     {sign(string(log.Checkpoint{Origin: "urn:asap:agent:other/audit", Size: 7, Hash: root}.Marshal())), v, "origin is not the signer's name"},
		"other key":        {good, stranger, ""},
		"bit flipped":      {signatureFlipped(good), v, ""},
	} {
		if cp, err := ParseCheckpoint(c.signed, c.v); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %+v %v, want an error with %q", name, cp, err, c.want)
		}
	}
}

// ------------------------------------------------------------------ Append

func TestAppendRefusesBadDetailsAndWritesNothing(t *testing.T) {
	db := openDB(t, t.TempDir())
	defer db.Close()
	l := New(db)
	good := Record{Operation: OpTaskStarted, AgentURN: "urn:asap:agent:c", Details: map[string]any{"task_id": "t1"}}
	for name, c := range map[string]struct {
		rec  Record
		want string
	}{
		"channel":         {Record{Operation: OpTaskFailed, AgentURN: "urn:asap:agent:c", Details: map[string]any{"ch": make(chan int)}}, "audit: details of task.failed"},
		"function":        {Record{Operation: OpTaskFailed, Details: map[string]any{"f": func() {}}}, "audit: details of task.failed"},
		"number too big":  {Record{Operation: OpTaskFailed, Details: map[string]any{"n": json.Number("1e400")}}, "audit: details of task.failed"},
		"NaN":             {Record{Operation: OpTaskFailed, Details: map[string]any{"n": nanValue()}}, "audit: details of task.failed"},
		"nested too deep": {Record{Operation: OpTaskFailed, Details: map[string]any{"d": deep(10001)}}, "audit: details of task.failed"},
	} {
		_, err := commitAppend(t, db, l, time.Now(), good, c.rec)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %q", name, err, c.want)
		}
	}
	if size, _, err := l.Size(); err != nil || size != 0 {
		t.Fatalf("size %d %v after refused appends", size, err)
	}
	for _, f := range []Filter{{}, {TaskID: "t1"}, {AgentURN: "urn:asap:agent:c"}, {Operation: OpTaskStarted}} {
		if got, _ := l.Query(f, 10, 0); len(got) != 0 {
			t.Fatalf("%+v found %d entries of refused appends", f, len(got))
		}
	}
	// The log goes on from seq 0.
	es := mustAppend(t, db, l, time.Now(), good, Record{Operation: OpTaskCompleted})
	if es[0].Seq != 0 || es[1].Seq != 1 || es[0].PrevHash != "" || string(es[1].Details) != "{}" {
		t.Fatalf("after refusals: %+v", es)
	}
	if v, err := l.Verify(nil); err != nil || !v.Valid || v.Size != 2 {
		t.Fatalf("verify %+v %v", v, err)
	}
}

func nanValue() float64 {
	zero := 0.0
	return zero / zero
}

func deep(n int) any {
	var v any = "leaf"
	for i := 0; i < n; i++ {
		v = []any{v}
	}
	return v
}

func TestAppendOverCorruptHead(t *testing.T) {
	for name, c := range map[string]struct {
		fn   func(txn *badger.Txn) error
		want string
	}{
		"garbage":      {func(txn *badger.Txn) error { return txn.Set(headKey, []byte("garbage")) }, "audit: head is corrupt"},
		"range length": {editHead(func(h *head) { h.Range = append(h.Range, h.Range[0]) }), "audit: head range is corrupt"},
	} {
		t.Run(name, func(t *testing.T) {
			db := openDB(t, t.TempDir())
			fill(t, db, New(db), 5)
			db, l := reopenAfter(t, db, c.fn)
			if _, err := commitAppend(t, db, l, time.Now(), Record{Operation: OpTaskStarted}); err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("Append: %v, want %q", err, c.want)
			}
			if _, _, err := l.Size(); err == nil || !strings.Contains(err.Error(), "corrupt") {
				t.Fatalf("Size: %v", err)
			}
			if _, _, err := l.InclusionProof(0, 1); err == nil && name == "garbage" {
				t.Fatal("InclusionProof over an unreadable head succeeded")
			}
			if _, err := l.ConsistencyProof(1, 2); err == nil && name == "garbage" {
				t.Fatal("ConsistencyProof over an unreadable head succeeded")
			}
			if _, err := l.Query(Filter{Start: t0}, 10, 0); err == nil && name == "garbage" {
				t.Fatal("windowed Query over an unreadable head succeeded")
			}
			// Entries themselves stay readable.
			if got, err := l.Query(Filter{}, 10, 0); err != nil || len(got) != 5 {
				t.Fatalf("plain Query: %d %v", len(got), err)
			}
		})
	}
}

// Timestamps are UTC with nine fractional digits and never go back, even
// when the clock does; one Append shares one timestamp.
func TestTimestampsNeverDecrease(t *testing.T) {
	db := openDB(t, t.TempDir())
	defer db.Close()
	l := New(db)
	zone := time.FixedZone("UTC+2", 2*3600)
	steps := []struct {
		now  time.Time
		want string
	}{
		{time.Date(2026, 3, 1, 12, 0, 0, 5000, zone), "2026-03-01T10:00:00.000005Z"},
		{time.Date(2026, 3, 1, 9, 0, 0, 0, time.UTC), "2026-03-01T10:00:00.000005Z"},     // clock back an hour
		{time.Date(2026, 3, 1, 10, 0, 0, 4000, time.UTC), "2026-03-01T10:00:00.000005Z"}, // back a microsecond
		{time.Date(2026, 3, 1, 10, 0, 0, 5999, time.UTC), "2026-03-01T10:00:00.000005Z"}, // nanoseconds are dropped
		{time.Date(2026, 3, 1, 10, 0, 0, 6000, time.UTC), "2026-03-01T10:00:00.000006Z"},
		{time.Date(2026, 3, 1, 10, 0, 1, 0, time.UTC), "2026-03-01T10:00:01.000000Z"},
	}
	for i, s := range steps {
		es := mustAppend(t, db, l, s.now, Record{Operation: OpTaskStarted}, Record{Operation: OpTaskCompleted})
		for _, e := range es {
			if e.Timestamp != s.want {
				t.Fatalf("step %d: timestamp %s, want %s", i, e.Timestamp, s.want)
			}
			at, err := e.Time()
			if err != nil || at.Format(TimeFormat) != s.want || at.Location() != time.UTC {
				t.Fatalf("step %d: Time() = %v %v", i, at, err)
			}
		}
	}
	if v, err := l.Verify(nil); err != nil || !v.Valid || v.Size != 12 {
		t.Fatalf("verify %+v %v", v, err)
	}
}

// ------------------------------------------------------------------ Entry helpers

func TestEntryHelpers(t *testing.T) {
	raw := bytes.Repeat([]byte{0xab}, 32)
	e := Entry{Seq: 3, Hash: hex.EncodeToString(raw)}
	if b, err := e.LeafData(); err != nil || !bytes.Equal(b, raw) {
		t.Fatalf("LeafData = %x %v", b, err)
	}
	want := sha256.Sum256(append([]byte{0}, raw...))
	if h := hasher.HashLeaf(raw); !bytes.Equal(h, want[:]) {
		t.Fatalf("leaf hash = %x, want %x", h, want)
	}
	for _, h := range []string{"", "zz", hex.EncodeToString(raw[:31]), hex.EncodeToString(append(raw, 1))} {
		bad := Entry{Seq: 9, Hash: h}
		if _, err := bad.LeafData(); err == nil || err.Error() != "entry 9: hash is not 32 hex bytes" {
			t.Errorf("LeafData(%q): %v", h, err)
		}
	}
	if _, err := (&Entry{Details: json.RawMessage(`{"a":`)}).Recompute(); err == nil || !strings.Contains(err.Error(), "details are not JSON") {
		t.Fatalf("Recompute of broken details: %v", err)
	}
	ok := Entry{PrevHash: "p", Timestamp: "ts", Operation: "op", Details: json.RawMessage(`{ "b" : 1, "a" : 2 }`)}
	sum := sha256.Sum256([]byte(`p|ts|op|{"a":2,"b":1}`))
	if h, err := ok.Recompute(); err != nil || h != hex.EncodeToString(sum[:]) {
		t.Fatalf("Recompute = %s %v", h, err)
	}
	if at, err := (&Entry{Timestamp: "2026-03-01T10:00:00.123456Z"}).Time(); err != nil || at.Nanosecond() != 123456000 {
		t.Fatalf("Time = %v %v", at, err)
	}
	for _, ts := range []string{"", "2026-03-01T10:00:00Z", "2026-03-01T10:00:00.123456789Z", "2026-03-01T10:00:00.123456+01:00"} {
		if _, err := (&Entry{Timestamp: ts}).Time(); err == nil {
			t.Errorf("Time(%q) parsed", ts)
		}
	}
	if got := openText([]byte("no blank line\n")); string(got) != "no blank line\n" {
		t.Fatalf("openText without a signature block = %q", got)
	}
	if got := openText([]byte("a\nb\n\n— sig\n")); string(got) != "a\nb\n" {
		t.Fatalf("openText = %q", got)
	}
}

// A record prepared ahead of Append (on the request's goroutine) lands
// exactly as one Append prepares itself; preparing twice changes nothing.
func TestPreparedRecordsAppendLikeUnprepared(t *testing.T) {
	at := t0
	recs := func() []Record {
		return []Record{
			{Operation: OpTaskCompleted, AgentURN: "urn:asap:agent:c", Details: map[string]any{"task_id": "t1", "z": 1, "a": []any{"x", 2.5}}},
			{Operation: OpTaskStarted, AgentURN: "urn:asap:agent:c"},
		}
	}
	// Unprepared, in one log.
	db1 := openDB(t, t.TempDir())
	defer db1.Close()
	plain := mustAppend(t, db1, New(db1), at, recs()...)
	// Prepared (twice), in another.
	db2 := openDB(t, t.TempDir())
	defer db2.Close()
	l2 := New(db2)
	prepared := recs()
	for i := range prepared {
		for n := 0; n < 2; n++ {
			if err := prepared[i].Prepare(); err != nil {
				t.Fatalf("Prepare %d: %v", i, err)
			}
		}
	}
	if prepared[1].Details == nil || len(prepared[1].Details) != 0 {
		t.Fatalf("nil details prepared as %v, want an empty object", prepared[1].Details)
	}
	got := mustAppend(t, db2, l2, at, prepared...)
	for i := range got {
		if got[i].Hash != plain[i].Hash || string(got[i].Details) != string(plain[i].Details) || got[i].PrevHash != plain[i].PrevHash {
			t.Fatalf("entry %d prepared %+v, unprepared %+v", i, got[i], plain[i])
		}
	}
	if string(got[0].Details) != `{"a":["x",2.5],"task_id":"t1","z":1}` || string(got[1].Details) != `{}` {
		t.Fatalf("details %s %s", got[0].Details, got[1].Details)
	}
	if es, _ := l2.Query(Filter{TaskID: "t1"}, 10, 0); len(es) != 1 || es[0].Seq != 0 {
		t.Fatalf("prepared record not indexed by task: %v", seqs(es))
	}
	if v, err := l2.Verify(nil); err != nil || !v.Valid || v.Size != 2 {
		t.Fatalf("verify %+v %v", v, err)
	}
}

func TestPrepareErrors(t *testing.T) {
	for _, c := range []struct {
		details map[string]any
		want    string
	}{
		{map[string]any{"c": make(chan int)}, "audit: details of sla.breach: json: unsupported type: chan int"},
		{map[string]any{"n": json.Number("1e400")}, "audit: details of sla.breach: "},
	} {
		r := Record{Operation: OpSLABreach, Details: c.details}
		err := r.Prepare()
		if err == nil || !strings.HasPrefix(err.Error(), c.want) {
			t.Errorf("Prepare(%v): %v, want %q", c.details, err, c.want)
		}
		// Not prepared: a second attempt fails the same way.
		if err2 := r.Prepare(); err2 == nil || err2.Error() != err.Error() {
			t.Errorf("second Prepare: %v", err2)
		}
	}
}

// The time-window queries start where a bisection over the entries says;
// a search that falls back to scanning from 0 answers the same, only
// slower, so the bisection is checked itself, against the model.
func TestFirstAtOrAfterBisects(t *testing.T) {
	for _, sizes := range [][]int{{1}, {3, 1, 2, 4}} {
		t.Run(fmt.Sprint(sizes), func(t *testing.T) { testFirstAtOrAfter(t, sizes) })
	}
}

func testFirstAtOrAfter(t *testing.T, sizes []int) {
	db, _, model := groupedQueryLog(t, sizes)
	want := func(at time.Time) uint64 {
		for i, m := range model {
			if !m.at.Before(at) {
				return uint64(i)
			}
		}
		return uint64(len(model))
	}
	var probes []time.Time
	for _, m := range model {
		probes = append(probes, m.at.Add(-time.Nanosecond), m.at, m.at.Add(time.Nanosecond))
	}
	probes = append(probes, t0.Add(-time.Hour), model[len(model)-1].at.Add(time.Hour))
	err := db.View(func(r *storage.Reader) error {
		for _, at := range probes {
			got, err := firstAtOrAfter(r, at)
			if err != nil {
				return err
			}
			if got != want(at) {
				t.Errorf("first entry at or after %v: %d, want %d", at, got, want(at))
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// A checkpoint of a log that has not grown is the stored one: nothing is
// signed or written again. Shown with the commit pipeline held and a
// context already cancelled, which any write would fail on.
func TestCheckpointOfAnUnchangedLogWritesNothing(t *testing.T) {
	db := openDB(t, t.TempDir())
	defer db.Close()
	l := New(db)
	s, _ := testSigner(t)
	fill(t, db, l, 5)
	first, err := l.Checkpoint(context.Background(), s)
	if err != nil {
		t.Fatal(err)
	}
	inPipeline, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	held := db.Submit(storage.Strict, func(tx *storage.Tx) error {
		once.Do(func() { close(inPipeline) })
		<-release
		return nil
	})
	defer func() { close(release); _ = held.Wait(context.Background()) }()
	select {
	case <-inPipeline:
	case <-time.After(10 * time.Second):
		t.Fatal("the blocking write never reached the pipeline")
	}
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	again, err := l.Checkpoint(cancelled, s)
	if err != nil {
		t.Fatalf("checkpoint of an unchanged log tried to write: %v", err)
	}
	if !bytes.Equal(again, first) {
		t.Fatalf("checkpoint of an unchanged log differs:\n%s\nvs\n%s", again, first)
	}
}

// The id salt drawn by a first append whose write fails is never stored,
// so it must not be kept either: the next append draws the salt that is
// stored, and every id reads back.
func TestSaltOfAFailedFirstAppendIsNotKept(t *testing.T) {
	db := openDB(t, t.TempDir())
	l := New(db)
	failed := errors.New("the rest of the write failed")
	err := db.Commit(context.Background(), storage.Strict, func(tx *storage.Tx) error {
		if _, err := l.Append(tx, t0, Record{Operation: OpTaskStarted, AgentURN: "urn:asap:agent:a"}); err != nil {
			return err
		}
		return failed
	})
	if !errors.Is(err, failed) {
		t.Fatalf("write: %v", err)
	}
	es, err := commitAppend(t, db, l, t0, Record{Operation: OpTaskStarted, AgentURN: "urn:asap:agent:a"})
	if err != nil {
		t.Fatal(err)
	}
	// A fresh log reads the salt from disk only.
	for _, lg := range []*Log{l, New(db)} {
		got, err := lg.Get(es[0].ID)
		if err != nil || got == nil || got.Hash != es[0].Hash {
			t.Fatalf("entry %s does not read back: %+v %v", es[0].ID, got, err)
		}
	}
	// Once committed, the salt is kept and later ids agree with it.
	es2, err := commitAppend(t, db, l, t0, Record{Operation: OpTaskCompleted, AgentURN: "urn:asap:agent:a"})
	if err != nil {
		t.Fatal(err)
	}
	if got, err := New(db).Get(es2[0].ID); err != nil || got == nil || got.Seq != 1 {
		t.Fatalf("second entry %s: %+v %v", es2[0].ID, got, err)
	}
}
