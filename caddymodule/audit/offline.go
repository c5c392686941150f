package audit

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"regexp"
	"sort"

	"github.com/transparency-dev/formats/log"
	"github.com/transparency-dev/merkle/compact"
	"github.com/transparency-dev/merkle/proof"
	"golang.org/x/mod/sumdb/note"
)

// ExportCheckpoint is a signed checkpoint as an export carries it: the
// tree size it covers and the signed note, verbatim.
type ExportCheckpoint struct {
	Type string `json:"type,omitempty"` // "checkpoint" on a jsonl line
	Size uint64 `json:"size"`
	Note string `json:"note"`
}

// Checkpoints returns the stored checkpoints of sizes up to max, by size.
func (l *Log) Checkpoints(max uint64) ([]ExportCheckpoint, error) {
	all, err := l.checkpoints()
	if err != nil {
		return nil, err
	}
	out := []ExportCheckpoint{}
	for size, signed := range all {
		if size <= max {
			out = append(out, ExportCheckpoint{Size: size, Note: string(signed)})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Size < out[j].Size })
	return out, nil
}

// ReadExport reads a json export ({"entries": [...], "checkpoints": [...]})
// or a jsonl one (an entry a line, checkpoints on lines marked
// "type":"checkpoint"), calling entry for each entry in file order. It
// returns the checkpoints the export carries.
func ReadExport(r io.Reader, entry func(*Entry) error) ([]ExportCheckpoint, error) {
	br := bufio.NewReaderSize(r, 1<<16)
	head, err := br.Peek(256)
	if err != nil && err != io.EOF && err != bufio.ErrBufferFull {
		return nil, err
	}
	if len(bytes.TrimSpace(head)) == 0 {
		return nil, errors.New("the export is empty")
	}
	dec := json.NewDecoder(br)
	if m := jsonExportHead.FindSubmatch(head); m != nil {
		if _, err := dec.Token(); err != nil {
			return nil, err
		}
		key, _ := dec.Token()
		k, _ := key.(string)
		return readJSONExport(dec, k, entry)
	}
	var cps []ExportCheckpoint
	for line := 1; ; line++ {
		var v struct {
			Entry
			Type string `json:"type"`
			Size uint64 `json:"size"`
			Note string `json:"note"`
		}
		if err := dec.Decode(&v); err == io.EOF {
			return cps, nil
		} else if err != nil {
			return nil, fmt.Errorf("line %d of the export is not a JSON entry (give a json or jsonl export; csv carries no checkpoints): %w", line, err)
		}
		if v.Type == "checkpoint" {
			cps = append(cps, ExportCheckpoint{Size: v.Size, Note: v.Note})
			continue
		}
		if err := entry(&v.Entry); err != nil {
			return nil, err
		}
	}
}

// jsonExportHead is how a json export begins: one of its own keys first,
// never an entry's field.
var jsonExportHead = regexp.MustCompile(`^\s*\{\s*"(entries|checkpoints|count)"`)

func readJSONExport(dec *json.Decoder, key string, entry func(*Entry) error) ([]ExportCheckpoint, error) {
	var cps []ExportCheckpoint
	n := 0
	for {
		switch key {
		case "entries":
			if tok, err := dec.Token(); err != nil || tok != json.Delim('[') {
				return nil, fmt.Errorf("the export's entries are not a list")
			}
			for dec.More() {
				var e Entry
				if err := dec.Decode(&e); err != nil {
					return nil, fmt.Errorf("entry %d of the export is not readable: %w", n, err)
				}
				n++
				if err := entry(&e); err != nil {
					return nil, err
				}
			}
			if _, err := dec.Token(); err != nil {
				return nil, err
			}
		case "checkpoints":
			if err := dec.Decode(&cps); err != nil {
				return nil, fmt.Errorf("the export's checkpoints are not readable: %w", err)
			}
		default:
			var skip json.RawMessage
			if err := dec.Decode(&skip); err != nil {
				return nil, err
			}
		}
		if !dec.More() {
			return cps, nil
		}
		tok, err := dec.Token()
		if err != nil {
			return nil, fmt.Errorf("the export is not JSON: %w", err)
		}
		key, _ = tok.(string)
	}
}

// BadEntry names the first entry of an export that does not check.
type BadEntry struct {
	Seq    uint64
	Reason string
}

func (b *BadEntry) Error() string { return fmt.Sprintf("seq %d: %s", b.Seq, b.Reason) }

// Auditor checks an exported log with no database: it recomputes the hash
// chain entry by entry and keeps the RFC 6962 leaf hashes (32 bytes an
// entry) to check checkpoints and build proofs at any size.
type Auditor struct {
	leaves [][]byte
	prev   string
}

// Size is the number of entries added so far.
func (a *Auditor) Size() uint64 { return uint64(len(a.leaves)) }

// Add checks e, the next entry: its seq, its link to the entry before and
// its hash against its content.
func (a *Auditor) Add(e *Entry) error {
	want := a.Size()
	switch {
	case e.Seq != want:
		return &BadEntry{want, fmt.Sprintf("entry %d is missing or out of order (found seq %d)", want, e.Seq)}
	case e.PrevHash != a.prev:
		return &BadEntry{want, fmt.Sprintf("prev_hash does not link to entry %d's hash", int64(want)-1)}
	}
	got, err := e.Recompute()
	if err != nil {
		return &BadEntry{want, err.Error()}
	}
	if got != e.Hash {
		return &BadEntry{want, "hash does not match the entry's content (timestamp, operation or details edited)"}
	}
	sum, _ := hex.DecodeString(got)
	a.leaves = append(a.leaves, hasher.HashLeaf(sum))
	a.prev = got
	return nil
}

// RootAt is the tree's root over the first size entries.
func (a *Auditor) RootAt(size uint64) []byte {
	if size == 0 {
		return hasher.EmptyRoot()
	}
	rng := factory.NewEmptyRange(0)
	for _, l := range a.leaves[:size] {
		_ = rng.Append(l, nil)
	}
	root, _ := rng.GetRootHash(nil)
	return root
}

// BadCheckpoint names a checkpoint that does not check.
type BadCheckpoint struct {
	Name   string // where it came from
	Reason string
}

func (b *BadCheckpoint) Error() string { return fmt.Sprintf("checkpoint %s: %s", b.Name, b.Reason) }

// NamedCheckpoint is a signed note and where it came from.
type NamedCheckpoint struct {
	Name string
	Note []byte
}

// CheckCheckpoints opens each checkpoint with one of verifiers (its name
// is the checkpoint's origin) and checks its root against the entries at
// its size, in one pass. It returns the parsed checkpoints in order.
func (a *Auditor) CheckCheckpoints(cps []NamedCheckpoint, verifiers []note.Verifier) ([]*log.Checkpoint, error) {
	parsed := make([]*log.Checkpoint, len(cps))
	for i, c := range cps {
		n, err := note.Open(c.Note, note.VerifierList(verifiers...))
		if err != nil {
			return nil, &BadCheckpoint{c.Name, fmt.Sprintf("its signature does not verify with the given key(s): %v", err)}
		}
		var cp log.Checkpoint
		if _, err := cp.Unmarshal([]byte(n.Text)); err != nil {
			return nil, &BadCheckpoint{c.Name, fmt.Sprintf("not a checkpoint: %v", err)}
		}
		if cp.Origin != n.Sigs[0].Name {
			return nil, &BadCheckpoint{c.Name, fmt.Sprintf("origin %q is not the signer's name %q", cp.Origin, n.Sigs[0].Name)}
		}
		if cp.Size > a.Size() {
			return nil, &BadCheckpoint{c.Name, fmt.Sprintf("signed at size %d, but the export has only %d entries (export truncated)", cp.Size, a.Size())}
		}
		parsed[i] = &cp
	}
	order := make([]int, len(cps))
	for i := range order {
		order[i] = i
	}
	sort.Slice(order, func(x, y int) bool { return parsed[order[x]].Size < parsed[order[y]].Size })
	rng := factory.NewEmptyRange(0)
	for _, i := range order {
		cp := parsed[i]
		for rng.End() < cp.Size {
			_ = rng.Append(a.leaves[rng.End()], nil)
		}
		root := hasher.EmptyRoot()
		if cp.Size > 0 {
			root, _ = rng.GetRootHash(nil)
		}
		if !bytes.Equal(root, cp.Hash) {
			return nil, &BadCheckpoint{cps[i].Name, fmt.Sprintf("its root does not match entries 0 to %d (an entry below %d was changed, or the checkpoint was)", int64(cp.Size)-1, cp.Size)}
		}
	}
	return parsed, nil
}

// nodeHash is the hash of tree node id (a perfect subtree), from the
// leaves below it.
func (a *Auditor) nodeHash(id compact.NodeID) []byte {
	begin, end := id.Coverage()
	level := append([][]byte(nil), a.leaves[begin:end]...)
	for len(level) > 1 {
		for i := 0; i < len(level)/2; i++ {
			level[i] = hasher.HashChildren(level[2*i], level[2*i+1])
		}
		level = level[:len(level)/2]
	}
	return level[0]
}

func (a *Auditor) proofHashes(nodes proof.Nodes) ([][]byte, error) {
	hashes := make([][]byte, len(nodes.IDs))
	for i, id := range nodes.IDs {
		hashes[i] = a.nodeHash(id)
	}
	return nodes.Rehash(hashes, hasher.HashChildren)
}

// InclusionProof builds the RFC 6962 proof that entry seq is in the tree
// of size, and verifies it against root. It returns the leaf hash too.
func (a *Auditor) InclusionProof(seq, size uint64, root []byte) ([]byte, [][]byte, error) {
	if seq >= size || size > a.Size() {
		return nil, nil, fmt.Errorf("seq %d is not in a tree of size %d (the export has %d entries)", seq, size, a.Size())
	}
	nodes, err := proof.Inclusion(seq, size)
	if err != nil {
		return nil, nil, err
	}
	hashes, err := a.proofHashes(nodes)
	if err != nil {
		return nil, nil, err
	}
	if err := proof.VerifyInclusion(hasher, seq, size, a.leaves[seq], hashes, root); err != nil {
		return nil, nil, fmt.Errorf("inclusion of %d in %d: %w", seq, size, err)
	}
	return a.leaves[seq], hashes, nil
}

// ConsistencyProof builds the RFC 6962 proof that the tree of size extends
// the one of old, and verifies it from the entries' root at old to root.
func (a *Auditor) ConsistencyProof(old, size uint64, root []byte) ([][]byte, error) {
	if old > size || size > a.Size() {
		return nil, fmt.Errorf("old size %d is not within size %d (the export has %d entries)", old, size, a.Size())
	}
	nodes, err := proof.Consistency(old, size)
	if err != nil {
		return nil, err
	}
	hashes, err := a.proofHashes(nodes)
	if err != nil {
		return nil, err
	}
	if err := proof.VerifyConsistency(hasher, old, size, hashes, a.RootAt(old), root); err != nil {
		return nil, fmt.Errorf("consistency of %d with %d: %w", old, size, err)
	}
	return hashes, nil
}
