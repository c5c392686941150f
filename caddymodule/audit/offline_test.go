package audit

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
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
	if _, _, err := a.InclusionProof(11, 11, parsed[0].Hash); err == nil || !strings.Contains(err.Error(), "seq 11 is not in a tree of size 11") {
		t.Errorf("an inclusion proof of the seq just past the tree: %v; want it refused as not in the tree", err)
	}
	// The tree is consistent with itself: an empty proof.
	if same, err := a.ConsistencyProof(11, 11, parsed[0].Hash); err != nil || len(same) != 0 {
		t.Errorf("consistency of size 11 with itself: %d hashes, %v; want none and no error", len(same), err)
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

// An export is untrusted input to the offline auditor: every malformed
// shape is an error that says what is wrong (never a panic or a silent
// partial read), both json and jsonl are read in file order, and keys
// the reader does not know are skipped.
func TestReadExportFormsAndMalformedInput(t *testing.T) {
	entry := func(seq int) string {
		return fmt.Sprintf(`{"id":"e%d","seq":%d,"timestamp":"2026-01-01T00:00:00Z","operation":"task.started","agent_urn":"urn:asap:agent:a","details":{},"prev_hash":"","hash":"h%d"}`, seq, seq, seq)
	}
	cp := `{"size":2,"note":"n"}`
	for _, tc := range []struct {
		name, in   string
		seqs       []uint64 // entries read, in order
		checkpoint int      // checkpoints returned
		err        string   // "" for none
	}{
		{"json", `{"entries":[` + entry(0) + `,` + entry(1) + `],"checkpoints":[` + cp + `]}`, []uint64{0, 1}, 1, ""},
		{"json, checkpoints first, count and an unknown key skipped", `{"count":2,"checkpoints":[` + cp + `],"x":{"y":[1,2]},"entries":[` + entry(0) + `,` + entry(1) + `]}`, []uint64{0, 1}, 1, ""},
		{"json with leading whitespace", "\n\t " + `{"entries":[` + entry(0) + `]}`, []uint64{0}, 0, ""},
		{"jsonl with a checkpoint line", entry(0) + "\n" + entry(1) + "\n" + `{"type":"checkpoint","size":2,"note":"n"}` + "\n", []uint64{0, 1}, 1, ""},
		{"empty", "  \n\t", nil, 0, "the export is empty"},
		{"json entries not a list", `{"entries":{"seq":0}}`, nil, 0, "the export's entries are not a list"},
		{"json entry unreadable", `{"entries":[` + entry(0) + `,{"seq":"one"}]}`, []uint64{0}, 0, "entry 1 of the export is not readable"},
		{"json checkpoints unreadable", `{"checkpoints":[{"size":"big"}],"entries":[]}`, nil, 0, "the export's checkpoints are not readable"},
		{"json cut off inside the entries", `{"entries":[` + entry(0) + `,` + entry(1)[:40], []uint64{0}, 0, "entry 1 of the export is not readable"},
		{"json cut off after a key", `{"entries":[` + entry(0) + `],"checkpoints"`, []uint64{0}, 0, "checkpoints are not readable"},
		{"jsonl with a broken line", entry(0) + "\n{not json\n", []uint64{0}, 0, "line 2 of the export is not a JSON entry"},
		{"csv", "id,seq,timestamp\ne0,0,2026-01-01T00:00:00Z\n", nil, 0, "line 1 of the export is not a JSON entry (give a json or jsonl export; csv carries no checkpoints)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var seqs []uint64
			cps, err := ReadExport(strings.NewReader(tc.in), func(e *Entry) error { seqs = append(seqs, e.Seq); return nil })
			switch {
			case tc.err == "" && err != nil:
				t.Fatalf("error %v", err)
			case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
				t.Fatalf("error %v, want one containing %q", err, tc.err)
			}
			if fmt.Sprint(seqs) != fmt.Sprint(tc.seqs) {
				t.Fatalf("entries read %v, want %v", seqs, tc.seqs)
			}
			if tc.err == "" && len(cps) != tc.checkpoint {
				t.Fatalf("%d checkpoints, want %d", len(cps), tc.checkpoint)
			}
		})
	}

	// The entry callback's error stops the read and is returned as is.
	stop := errors.New("seq 1: hash does not match")
	for name, in := range map[string]string{
		"json":  `{"entries":[` + entry(0) + `,` + entry(1) + `,` + entry(2) + `]}`,
		"jsonl": entry(0) + "\n" + entry(1) + "\n" + entry(2) + "\n",
	} {
		n := 0
		_, err := ReadExport(strings.NewReader(in), func(e *Entry) error {
			n++
			if e.Seq == 1 {
				return stop
			}
			return nil
		})
		if !errors.Is(err, stop) || n != 2 {
			t.Fatalf("%s: error %v after %d entries; want the callback's error after 2", name, err, n)
		}
	}
}

// A checkpoint of the empty log (a sidecar signs one before its first
// task) checks against the empty tree's root.
func TestAuditorChecksTheEmptyLogsCheckpoint(t *testing.T) {
	db := openDB(t, t.TempDir())
	defer db.Close()
	l := New(db)
	signer, verifier := testSigner(t)
	empty, err := l.Checkpoint(context.Background(), signer)
	if err != nil {
		t.Fatal(err)
	}
	parsed, err := (&Auditor{}).CheckCheckpoints([]NamedCheckpoint{{"empty", empty}}, []note.Verifier{verifier})
	if err != nil || len(parsed) != 1 || parsed[0].Size != 0 {
		t.Fatalf("the empty log's checkpoint: %+v, %v; want it checked at size 0", parsed, err)
	}
}
