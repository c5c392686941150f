package audit

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"golang.org/x/mod/sumdb/note"
)

// The Auditor, fed a log's entries and checkpoints with no database,
// finds the same roots and proofs as the log itself, and names the first
// entry or checkpoint that does not check.
func TestAuditorChecksAnExportOffline(t *testing.T) {
	db := openDB(t, t.TempDir())
	defer db.Close()
	l := New(db)
	signer, verifier := testSigner(t)
	fill(t, db, l, 5)
	small, err := l.Checkpoint(context.Background(), signer)
	if err != nil {
		t.Fatal(err)
	}
	fill(t, db, l, 6)
	big, err := l.Checkpoint(context.Background(), signer)
	if err != nil {
		t.Fatal(err)
	}
	entries, err := l.Query(Filter{}, 1000, 0)
	if err != nil || len(entries) != 11 {
		t.Fatalf("%d entries, %v", len(entries), err)
	}
	stored, err := l.Checkpoints(11)
	if err != nil || len(stored) != 2 || stored[0].Size != 5 || stored[1].Size != 11 || stored[1].Note != string(big) {
		t.Fatalf("stored checkpoints %+v, %v", stored, err)
	}
	if got, err := l.StoredCheckpoint(5); err != nil || !bytes.Equal(got, small) {
		t.Fatalf("StoredCheckpoint(5) = %q, %v", got, err)
	}
	if got, err := l.StoredCheckpoint(7); err != nil || got != nil {
		t.Fatalf("StoredCheckpoint(7) = %q, %v; want none", got, err)
	}

	// The export as JSON, read back.
	b, err := json.Marshal(map[string]any{"entries": entries, "checkpoints": stored})
	if err != nil {
		t.Fatal(err)
	}
	a := &Auditor{}
	cps, err := ReadExport(bytes.NewReader(b), a.Add)
	if err != nil || len(cps) != 2 || a.Size() != 11 {
		t.Fatalf("ReadExport: %d checkpoints, %d entries, %v", len(cps), a.Size(), err)
	}
	// RFC 6962 leaf data: the entry hashes.
	data := make([][]byte, len(entries))
	for i, e := range entries {
		data[i], _ = hex.DecodeString(e.Hash)
	}
	if !bytes.Equal(a.RootAt(11), refRoot(data)) || !bytes.Equal(a.RootAt(5), refRoot(data[:5])) || !bytes.Equal(a.RootAt(0), refRoot(nil)) {
		t.Fatal("the auditor's roots differ from an independent RFC 6962 computation")
	}
	named := []NamedCheckpoint{{"big", big}, {"small", small}}
	parsed, err := a.CheckCheckpoints(named, []note.Verifier{verifier})
	if err != nil || parsed[0].Size != 11 || parsed[1].Size != 5 {
		t.Fatalf("CheckCheckpoints: %+v, %v", parsed, err)
	}

	// Proofs built offline equal the log's own and verify.
	leaf, hashes, err := a.InclusionProof(3, 11, parsed[0].Hash)
	wantLeaf, wantHashes, _ := l.InclusionProof(3, 11)
	if err != nil || !bytes.Equal(leaf, wantLeaf) || len(hashes) != len(wantHashes) {
		t.Fatalf("inclusion: %v", err)
	}
	for i := range hashes {
		if !bytes.Equal(hashes[i], wantHashes[i]) {
			t.Fatalf("inclusion hash %d differs", i)
		}
	}
	cons, err := a.ConsistencyProof(5, 11, parsed[0].Hash)
	wantCons, _ := l.ConsistencyProof(5, 11)
	if err != nil || len(cons) != len(wantCons) {
		t.Fatalf("consistency: %v", err)
	}
	if _, _, err := a.InclusionProof(11, 11, parsed[0].Hash); err == nil {
		t.Error("an inclusion proof of a seq past the tree")
	}
	if _, err := a.ConsistencyProof(12, 11, parsed[0].Hash); err == nil {
		t.Error("a consistency proof from past the tree")
	}
	if _, _, err := a.InclusionProof(3, 11, parsed[1].Hash); err == nil {
		t.Error("an inclusion proof verified against another tree's root")
	}

	// Another key's checkpoint, and an export cut below a checkpoint.
	_, stranger := testSigner(t)
	var bad *BadCheckpoint
	if _, err := a.CheckCheckpoints(named, []note.Verifier{stranger}); !errors.As(err, &bad) || bad.Name != "big" ||
		!strings.Contains(err.Error(), "checkpoint big") {
		t.Errorf("another key: %v", err)
	}
	short := &Auditor{}
	for i := 0; i < 7; i++ {
		if err := short.Add(&entries[i]); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := short.CheckCheckpoints(named, []note.Verifier{verifier}); !errors.As(err, &bad) || !strings.Contains(bad.Reason, "truncated") {
		t.Errorf("truncated export: %v", err)
	}

	// Edited, missing and relinked entries: the first bad seq is named.
	var be *BadEntry
	edited := entries[4]
	edited.Details = json.RawMessage(`{"edited":true}`)
	check := func(what string, list []Entry, seq uint64) {
		t.Helper()
		a := &Auditor{}
		var err error
		for i := range list {
			if err = a.Add(&list[i]); err != nil {
				break
			}
		}
		if !errors.As(err, &be) || be.Seq != seq || !strings.HasPrefix(err.Error(), "seq ") {
			t.Errorf("%s: %v, want entry %d named", what, err, seq)
		}
	}
	check("an edited entry", append(append(append([]Entry{}, entries[:4]...), edited), entries[5:]...), 4)
	check("a missing entry", append(append([]Entry{}, entries[:2]...), entries[3:]...), 2)
	relinked := append([]Entry{}, entries...)
	relinked[6].PrevHash = relinked[4].Hash
	check("a broken link", relinked, 6)
}
