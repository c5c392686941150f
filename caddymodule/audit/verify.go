package audit

import (
	"bytes"
	"encoding/json"
	"fmt"
	"sort"

	"github.com/transparency-dev/merkle/compact"
	"golang.org/x/mod/sumdb/note"

	"github.com/asap-sidecar/asap-sidecar/storage"
)

// Verdict is the answer of GET /audit/verify.
type Verdict struct {
	Valid       bool    `json:"valid"`
	Size        uint64  `json:"size"`
	FirstBadSeq *uint64 `json:"first_bad_seq"`
	Reason      *string `json:"reason"`
	// Checkpoints is how many stored checkpoints were checked.
	Checkpoints int `json:"checkpoints_checked"`
}

func bad(v *Verdict, seq uint64, format string, a ...any) Verdict {
	reason := fmt.Sprintf(format, a...)
	v.Valid, v.FirstBadSeq, v.Reason = false, &seq, &reason
	return *v
}

// Verify recomputes the whole log from its entries: the hash chain (each
// hash from its content, each prev_hash from the entry before), the
// Merkle tree (against the head and the stored leaves), and every stored
// checkpoint (its signature with v, when given, and its root against the
// entries). It names the first seq that breaks.
func (l *Log) Verify(v note.Verifier) (Verdict, error) {
	var out Verdict
	checkpoints, err := l.checkpoints()
	if err != nil {
		return out, err
	}
	sizes := make([]uint64, 0, len(checkpoints))
	for s := range checkpoints {
		sizes = append(sizes, s)
	}
	sort.Slice(sizes, func(i, j int) bool { return sizes[i] < sizes[j] })

	var verdict *Verdict
	err = l.db.View(func(r *storage.Reader) error {
		h, headErr := readHead(r.Get)
		rng := factory.NewEmptyRange(0)
		var next uint64
		prev := ""
		lastGood := uint64(0) // entries below this are covered by a good checkpoint
		ci := 0
		checkAt := func(size uint64) *Verdict {
			for ci < len(sizes) && sizes[ci] == size {
				signed := checkpoints[size]
				cp, perr := parseUnverified(signed)
				if v != nil {
					cp, perr = ParseCheckpoint(signed, v)
				}
				if perr != nil {
					res := bad(&out, lastGood, "checkpoint at size %d does not verify: %v", size, perr)
					return &res
				}
				root, _ := rng.GetRootHash(nil)
				if size == 0 {
					root = hasher.EmptyRoot()
				}
				if !bytes.Equal(root, cp.Hash) {
					res := bad(&out, lastGood, "entries below %d do not match the checkpoint signed at size %d", size, size)
					return &res
				}
				out.Checkpoints++
				lastGood = size
				ci++
			}
			return nil
		}
		if res := checkAt(0); res != nil {
			verdict = res
			return nil
		}
		err = r.Scan(entryPrefix, false, func(k, val []byte) (bool, error) {
			seq := seqOf(k)
			if seq != next {
				res := bad(&out, next, "entry %d is missing", next)
				verdict = &res
				return false, nil
			}
			var e Entry
			if err := json.Unmarshal(val, &e); err != nil || e.Seq != seq {
				res := bad(&out, seq, "entry %d is not a readable entry", seq)
				verdict = &res
				return false, nil
			}
			if e.PrevHash != prev {
				res := bad(&out, seq, "entry %d does not chain to entry %d (prev_hash)", seq, int64(seq)-1)
				verdict = &res
				return false, nil
			}
			want, err := e.Recompute()
			if err != nil || want != e.Hash {
				res := bad(&out, seq, "entry %d's hash does not match its content", seq)
				verdict = &res
				return false, nil
			}
			leafData, _ := e.LeafData()
			leaf := hasher.HashLeaf(leafData)
			stored, err := r.Get(nodeKey(compact.NewNodeID(0, seq)))
			if err != nil || !bytes.Equal(stored, leaf) {
				res := bad(&out, seq, "the tree's leaf %d is not entry %d", seq, seq)
				verdict = &res
				return false, nil
			}
			if err := rng.Append(leaf, nil); err != nil {
				return false, err
			}
			prev, next = e.Hash, seq+1
			out.Size = next
			if res := checkAt(next); res != nil {
				verdict = res
				return false, nil
			}
			return true, nil
		})
		if err != nil || verdict != nil {
			return err
		}
		if headErr != nil {
			res := bad(&out, next, "the log's head is unreadable: %v", headErr)
			verdict = &res
			return nil
		}
		if next != h.Size {
			res := bad(&out, next, "the log holds %d entries but its head says %d", next, h.Size)
			verdict = &res
			return nil
		}
		if prev != h.Hash {
			res := bad(&out, next, "the head's last hash is not entry %d's", int64(next)-1)
			verdict = &res
			return nil
		}
		if ci < len(sizes) {
			res := bad(&out, next, "a checkpoint was signed at size %d, but the log has only %d entries (truncated)", sizes[ci], next)
			verdict = &res
			return nil
		}
		headRoot, err := rootOf(h)
		if err != nil {
			res := bad(&out, next, "the head's tree range is unreadable: %v", err)
			verdict = &res
			return nil
		}
		computed, _ := rng.GetRootHash(nil)
		if h.Size == 0 {
			computed = hasher.EmptyRoot()
		}
		if !bytes.Equal(headRoot, computed) {
			res := bad(&out, lastGood, "the tree's root does not match the entries")
			verdict = &res
		}
		return nil
	})
	if err != nil {
		return out, err
	}
	if verdict != nil {
		return *verdict, nil
	}
	out.Valid = true
	return out, nil
}

func parseUnverified(signed []byte) (*checkpointBody, error) {
	var c checkpointBody
	if _, err := c.Unmarshal(openText(signed)); err != nil {
		return nil, err
	}
	return &c, nil
}
