package audit

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dgraph-io/badger/v4"
	"github.com/transparency-dev/merkle/compact"
	"github.com/transparency-dev/merkle/proof"
	"github.com/transparency-dev/merkle/rfc6962"
	"golang.org/x/mod/sumdb/note"

	"github.com/asap-sidecar/asap-sidecar/storage"
)

func openDB(t testing.TB, dir string) *storage.DB {
	t.Helper()
	db, err := storage.Open(storage.Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	return db
}

func appendN(t testing.TB, db *storage.DB, l *Log, n, workers int) {
	t.Helper()
	var wg sync.WaitGroup
	jobs := make(chan int)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range jobs {
				err := db.Commit(context.Background(), storage.Strict, func(tx *storage.Tx) error {
					_, err := l.Append(tx, time.Now(), Record{Operation: OpTaskCompleted, AgentURN: fmt.Sprintf("urn:asap:agent:c%d", i%3),
						Details: map[string]any{"task_id": fmt.Sprintf("task-%d", i), "n": i, "note": "ünïcode <&>"}})
					return err
				})
				if err != nil {
					t.Error(err)
				}
			}
		}()
	}
	for i := 0; i < n; i++ {
		jobs <- i
	}
	close(jobs)
	wg.Wait()
}

func testSigner(t testing.TB) (note.Signer, note.Verifier) {
	t.Helper()
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	s, vkey, err := NewSigner(Origin("urn:asap:agent:demo"), key)
	if err != nil {
		t.Fatal(err)
	}
	v, err := note.NewVerifier(vkey)
	if err != nil {
		t.Fatal(err)
	}
	return s, v
}

// 10,000 concurrent appends: seq 0..9999 without gaps, chain and tree
// verify, and the root matches one computed independently.
func TestConcurrentAppendsAreGapFreeAndVerify(t *testing.T) {
	db := openDB(t, t.TempDir())
	defer db.Close()
	l := New(db)
	appendN(t, db, l, 10000, 64)

	seen := make([]bool, 10000)
	var leaves [][]byte
	prev := ""
	if err := l.Each(func(e *Entry) bool {
		if e.Seq >= 10000 || seen[e.Seq] || e.PrevHash != prev {
			t.Fatalf("entry %d out of order or duplicated", e.Seq)
		}
		seen[e.Seq] = true
		prev = e.Hash
		raw, _ := hex.DecodeString(e.Hash)
		leaves = append(leaves, raw)
		return true
	}); err != nil {
		t.Fatal(err)
	}
	for i, ok := range seen {
		if !ok {
			t.Fatalf("seq %d missing", i)
		}
	}
	v, err := l.Verify(nil)
	if err != nil || !v.Valid || v.Size != 10000 {
		t.Fatalf("verify = %+v %v", v, err)
	}
	// An independent RFC 6962 root over the leaves.
	size, root, err := l.Size()
	if err != nil || size != 10000 {
		t.Fatal(size, err)
	}
	if want := refRoot(leaves); !bytesEq(root, want) {
		t.Fatalf("root %x, independent root %x", root, want)
	}
}

// refRoot is RFC 6962's MTH, written out.
func refRoot(leaves [][]byte) []byte {
	switch len(leaves) {
	case 0:
		s := sha256.Sum256(nil)
		return s[:]
	case 1:
		s := sha256.Sum256(append([]byte{0}, leaves[0]...))
		return s[:]
	}
	k := 1
	for k*2 < len(leaves) {
		k *= 2
	}
	l, r := refRoot(leaves[:k]), refRoot(leaves[k:])
	s := sha256.Sum256(append(append([]byte{1}, l...), r...))
	return s[:]
}

func bytesEq(a, b []byte) bool { return hex.EncodeToString(a) == hex.EncodeToString(b) }

func TestEntryHashFollowsSpec(t *testing.T) {
	db := openDB(t, t.TempDir())
	defer db.Close()
	l := New(db)
	at := time.Date(2026, 11, 26, 1, 2, 3, 4000, time.UTC)
	var got []Entry
	err := db.Commit(context.Background(), storage.Strict, func(tx *storage.Tx) error {
		var err error
		got, err = l.Append(tx, at, Record{Operation: OpUsageRecorded, AgentURN: "urn:asap:agent:c",
			Details: map[string]any{"b": 1, "a": "x", "z": []any{true, nil, 1.5}}},
			Record{Operation: OpTaskFailed, AgentURN: "urn:asap:agent:c"})
		return err
	})
	if err != nil || len(got) != 2 {
		t.Fatal(got, err)
	}
	e := got[0]
	if e.Timestamp != "2026-11-26T01:02:03.000004Z" || e.PrevHash != "" || e.Seq != 0 {
		t.Fatalf("entry = %+v", e)
	}
	// SPEC §6, computed by hand: JCS sorts keys and drops whitespace.
	canon := `{"a":"x","b":1,"z":[true,null,1.5]}`
	if string(e.Details) != canon {
		t.Fatalf("details %s, want canonical %s", e.Details, canon)
	}
	sum := sha256.Sum256([]byte("|2026-11-26T01:02:03.000004Z|usage.recorded|" + canon))
	if e.Hash != hex.EncodeToString(sum[:]) {
		t.Fatalf("hash %s, want %x", e.Hash, sum)
	}
	if got[1].PrevHash != e.Hash || got[1].Seq != 1 || string(got[1].Details) != "{}" {
		t.Fatalf("second entry %+v", got[1])
	}
	// Time never goes backwards along the log.
	_ = db.Commit(context.Background(), storage.Strict, func(tx *storage.Tx) error {
		got, err = l.Append(tx, at.Add(-time.Hour), Record{Operation: OpTaskStarted})
		return err
	})
	if got[0].Timestamp != e.Timestamp {
		t.Fatalf("timestamp went back: %s", got[0].Timestamp)
	}
	// The entry looked up by id.
	byID, err := l.Get(e.ID)
	if err != nil || byID == nil || byID.Hash != e.Hash {
		t.Fatalf("get = %+v %v", byID, err)
	}
	if none, _ := l.Get("nope"); none != nil {
		t.Fatal("unknown id found")
	}
}

func TestProofsVerifyWithTransparencyDev(t *testing.T) {
	db := openDB(t, t.TempDir())
	defer db.Close()
	l := New(db)
	appendN(t, db, l, 37, 4)
	h := rfc6962.DefaultHasher
	for _, size := range []uint64{1, 2, 7, 16, 37} {
		root, err := l.RootAt(size)
		if err != nil {
			t.Fatal(err)
		}
		for seq := uint64(0); seq < size; seq++ {
			leaf, hashes, err := l.InclusionProof(seq, size)
			if err != nil {
				t.Fatal(err)
			}
			if err := proof.VerifyInclusion(h, seq, size, leaf, hashes, root); err != nil {
				t.Fatalf("inclusion %d in %d: %v", seq, size, err)
			}
		}
		for _, old := range []uint64{1, 3, size} {
			if old > size {
				continue
			}
			oldRoot, _ := l.RootAt(old)
			hashes, err := l.ConsistencyProof(old, size)
			if err != nil {
				t.Fatal(err)
			}
			if err := proof.VerifyConsistency(h, old, size, hashes, oldRoot, root); err != nil {
				t.Fatalf("consistency %d→%d: %v", old, size, err)
			}
		}
	}
	if _, _, err := l.InclusionProof(37, 37); err == nil || !strings.Contains(err.Error(), "not below") {
		t.Fatalf("out of range inclusion: %v", err)
	}
	if _, _, err := l.InclusionProof(0, 38); err == nil || !strings.Contains(err.Error(), "beyond") {
		t.Fatalf("beyond size: %v", err)
	}
	if _, err := l.ConsistencyProof(5, 4); err == nil {
		t.Fatal("old > new accepted")
	}
}

func TestCheckpointIsASignedNote(t *testing.T) {
	db := openDB(t, t.TempDir())
	defer db.Close()
	l := New(db)
	s, v := testSigner(t)
	appendN(t, db, l, 5, 2)
	signed, err := l.Checkpoint(context.Background(), s)
	if err != nil {
		t.Fatal(err)
	}
	n, err := note.Open(signed, note.VerifierList(v))
	if err != nil {
		t.Fatalf("note.Open: %v\n%s", err, signed)
	}
	lines := strings.Split(n.Text, "\n")
	_, root, _ := l.Size()
	if lines[0] != "urn:asap:agent:demo/audit" || lines[1] != "5" || lines[2] != base64.StdEncoding.EncodeToString(root) {
		t.Fatalf("checkpoint text %q", n.Text)
	}
	// No growth: the same checkpoint.
	again, _ := l.Checkpoint(context.Background(), s)
	if string(again) != string(signed) {
		t.Fatal("a new checkpoint for the same size")
	}
	appendN(t, db, l, 1, 1)
	third, _ := l.Checkpoint(context.Background(), s)
	if cp, err := ParseCheckpoint(third, v); err != nil || cp.Size != 6 {
		t.Fatalf("after growth: %+v %v", cp, err)
	}
	if latest, size, _ := l.LatestCheckpoint(); size != 6 || string(latest) != string(third) {
		t.Fatalf("latest = %d", size)
	}
	verdict, err := l.Verify(v)
	if err != nil || !verdict.Valid || verdict.Checkpoints != 2 {
		t.Fatalf("verify = %+v %v", verdict, err)
	}
	// Another key's verifier refuses the checkpoints.
	_, other := testSigner(t)
	if verdict, _ := l.Verify(other); verdict.Valid {
		t.Fatal("checkpoints verified with a stranger's key")
	}
}

// rawDB opens the database behind the log's back, as an attacker with disk
// access would.
func tamper(t *testing.T, dir string, fn func(txn *badger.Txn) error) {
	t.Helper()
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
}

func TestVerifyCatchesEditedDetails(t *testing.T) {
	dir := t.TempDir()
	db := openDB(t, dir)
	appendN(t, db, New(db), 20, 2)
	db.Close()
	tamper(t, dir, editBlock(7, func(b *block) { b.items[0].details = []byte(`{"n":7,"note":"edited","task_id":"task-x"}`) }))
	db = openDB(t, dir)
	defer db.Close()
	v, err := New(db).Verify(nil)
	if err != nil || v.Valid || v.FirstBadSeq == nil || *v.FirstBadSeq != 7 || !strings.Contains(*v.Reason, "hash does not match") {
		t.Fatalf("verify = %+v %v", v, err)
	}
}

func TestVerifyCatchesDeletedEntry(t *testing.T) {
	dir := t.TempDir()
	db := openDB(t, dir)
	appendN(t, db, New(db), 20, 2)
	db.Close()
	tamper(t, dir, func(txn *badger.Txn) error { return txn.Delete(blockKey(12)) })
	db = openDB(t, dir)
	defer db.Close()
	v, err := New(db).Verify(nil)
	if err != nil || v.Valid || *v.FirstBadSeq != 12 || !strings.Contains(*v.Reason, "missing") {
		t.Fatalf("verify = %+v %v", v, err)
	}
}

// An attacker truncates the tail and rewrites the chain and the tree
// consistently (and removes the checkpoints): the chain verifies, but a
// consistency proof against a checkpoint the client kept fails.
func TestTruncateAndRewriteCaughtByConsistencyProof(t *testing.T) {
	dir := t.TempDir()
	db := openDB(t, dir)
	l := New(db)
	s, v := testSigner(t)
	appendN(t, db, l, 30, 2)
	kept, err := l.Checkpoint(context.Background(), s)
	if err != nil {
		t.Fatal(err)
	}
	oldCP, _ := ParseCheckpoint(kept, v)
	db.Close()

	// Rewrite: drop everything from seq 20, drop tree nodes, head and
	// checkpoints, then append new entries from seq 20 with the log's own
	// code, so that chain, tree and head agree again.
	tamper(t, dir, func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.DefaultIteratorOptions)
		defer it.Close()
		var del [][]byte
		for it.Seek([]byte{byte(storage.SpaceAudit)}); it.ValidForPrefix([]byte{byte(storage.SpaceAudit)}); it.Next() {
			k := it.Item().KeyCopy(nil)
			switch {
			case strings.HasPrefix(string(k), string(blockPrefix)) && binary.BigEndian.Uint64(k[len(blockPrefix):]) >= 20:
				del = append(del, k)
			case strings.HasPrefix(string(k), string(storage.SpaceAudit.Prefix([]byte("n")))),
				strings.HasPrefix(string(k), string(checkpointsPref)), string(k) == string(headKey):
				del = append(del, k)
			}
		}
		for _, k := range del {
			if err := txn.Delete(k); err != nil {
				return err
			}
		}
		return nil
	})
	db = openDB(t, dir)
	defer db.Close()
	l = New(db)
	// Rebuild head and tree for the surviving 20 entries.
	err = db.Commit(context.Background(), storage.Strict, func(tx *storage.Tx) error {
		rng := factory.NewEmptyRange(0)
		h := head{}
		for seq := uint64(0); seq < 20; seq++ { // one entry a block
			v, err := tx.Get(blockKey(seq))
			if err != nil {
				return err
			}
			b, err := decodeBlock(blockKey(seq), v)
			if err != nil {
				return err
			}
			sum := b.chain()[0]
			rng.Append(hasher.HashLeaf(sum[:]), func(id compact.NodeID, hash []byte) {
				if id.Level >= storedLevel {
					tx.Set(nodeKey(id), hash)
				}
			})
			h.Size, h.Hash, h.Last = seq+1, hex.EncodeToString(sum[:]), b.ts
		}
		h.Range = rng.Hashes()
		tx.Set(headKey, h.encode())
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	appendN(t, db, l, 15, 1) // the forged tail: 35 entries in all
	verdict, err := l.Verify(v)
	if err != nil || !verdict.Valid {
		t.Fatalf("the rewrite should be internally consistent: %+v %v", verdict, err)
	}
	size, newRoot, _ := l.Size()
	hashes, err := l.ConsistencyProof(oldCP.Size, size)
	if err != nil {
		t.Fatal(err)
	}
	if err := proof.VerifyConsistency(rfc6962.DefaultHasher, oldCP.Size, size, hashes, oldCP.Hash, newRoot); err == nil {
		t.Fatal("the consistency proof from the kept checkpoint verified over a rewritten log")
	}
}

// A checkpoint kept in the store catches a truncation by itself.
func TestVerifyCatchesTruncationBelowStoredCheckpoint(t *testing.T) {
	dir := t.TempDir()
	db := openDB(t, dir)
	l := New(db)
	s, v := testSigner(t)
	appendN(t, db, l, 10, 1)
	if _, err := l.Checkpoint(context.Background(), s); err != nil {
		t.Fatal(err)
	}
	db.Close()
	tamper(t, dir, func(txn *badger.Txn) error {
		for seq := uint64(6); seq < 10; seq++ {
			if err := txn.Delete(blockKey(seq)); err != nil {
				return err
			}
		}
		return nil
	})
	db = openDB(t, dir)
	defer db.Close()
	verdict, err := New(db).Verify(v)
	if err != nil || verdict.Valid || *verdict.FirstBadSeq != 6 {
		t.Fatalf("verify = %+v %v", verdict, err)
	}
}

func TestQueryFiltersUseIndexes(t *testing.T) {
	db := openDB(t, t.TempDir())
	defer db.Close()
	l := New(db)
	appendN(t, db, l, 30, 1)
	got, err := l.Query(Filter{AgentURN: "urn:asap:agent:c1"}, 100, 0)
	if err != nil || len(got) != 10 {
		t.Fatalf("by agent: %d %v", len(got), err)
	}
	got, _ = l.Query(Filter{TaskID: "task-7"}, 100, 0)
	if len(got) != 1 || !strings.Contains(string(got[0].Details), `"task-7"`) {
		t.Fatalf("by task: %+v", got)
	}
	got, _ = l.Query(Filter{Operation: OpTaskCompleted}, 5, 10)
	if len(got) != 5 || got[0].Seq != 10 {
		t.Fatalf("by operation with offset: %+v", got)
	}
	all, _ := l.Query(Filter{}, 100, 0)
	mid, _ := all[15].Time()
	got, _ = l.Query(Filter{Start: mid}, 100, 0)
	if len(got) == 0 || got[0].Seq > 15 {
		t.Fatalf("by start: first %d", got[0].Seq)
	}
	got, _ = l.Query(Filter{End: mid}, 100, 0)
	if len(got) < 16 {
		t.Fatalf("by end: %d", len(got))
	}
	if got, _ := l.Query(Filter{}, 0, 0); len(got) != 0 {
		t.Fatal("limit 0")
	}
}
