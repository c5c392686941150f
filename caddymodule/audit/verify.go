package audit

import (
	"bytes"
	"encoding/hex"
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

// Verify recomputes the whole log from its blocks: the hash chain (each
// hash from its content and the one before, checked with its agent
// against the entry's stored tag; each block's stored prev hash against
// the block before), the Merkle tree (against the head and every stored
// node), and every stored checkpoint (its signature with v, when given,
// and its root against the entries). It names the first seq that breaks.
// A checkpoint signed by an earlier key of v's name verifies with that key
// when the log's key history has it in use at the checkpoint's size.
func (l *Log) Verify(v note.Verifier) (Verdict, error) {
	if v == nil {
		return l.VerifyKeys()
	}
	return l.VerifyKeys(v)
}

// VerifyKeys is Verify with several trusted keys (the key and the
// previous_keys of a rotation), each good at any size; beside them, keys
// of the log's history under one of their names, each within its span.
// With no key, signatures are not checked.
func (l *Log) VerifyKeys(trusted ...note.Verifier) (Verdict, error) {
	var out Verdict
	checkpoints, err := l.checkpoints()
	if err != nil {
		return out, err
	}
	var ring *keyring
	if len(trusted) > 0 {
		history, err := l.KeyHistory()
		if err != nil {
			return out, err
		}
		if ring, err = newKeyring(trusted, history); err != nil {
			return out, err
		}
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
				if ring != nil {
					cp, perr = ring.openCheckpoint(signed, size)
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
		// A stored tree node that does not match the entries below it.
		var badNode *Verdict
		checkNode := func(id compact.NodeID, hash []byte) {
			if id.Level < storedLevel || badNode != nil {
				return
			}
			first := id.Index << id.Level
			if stored, err := r.Get(nodeKey(id)); err != nil || !bytes.Equal(stored, hash) {
				res := bad(&out, first, "the tree's node %d/%d does not match entries %d to %d", id.Level, id.Index, first, first+1<<id.Level-1)
				badNode = &res
			}
		}
		err = r.Scan(blockPrefix, false, func(k, val []byte) (bool, error) {
			fail := func(seq uint64, format string, a ...any) (bool, error) {
				res := bad(&out, seq, format, a...)
				verdict = &res
				return false, nil
			}
			first, err := seqOf(blockPrefix, k)
			switch {
			case err != nil:
				return fail(next, "a block key after entry %d is malformed", int64(next)-1)
			case first > next:
				return fail(next, "entry %d is missing", next)
			case first < next:
				return fail(first, "a block at entry %d overlaps the entries before it", first)
			}
			b, err := decodeBlock(k, val)
			if err != nil {
				return fail(first, "entry %d is not a readable entry", first)
			}
			if hex.EncodeToString(b.prev) != prev {
				return fail(first, "entry %d does not chain to entry %d (prev_hash)", first, int64(first)-1)
			}
			for i, sum := range b.chain() {
				seq := first + uint64(i)
				if tagOf(sum, b.items[i].agent) != b.items[i].tag {
					return fail(seq, "entry %d's hash does not match its content", seq)
				}
				if err := rng.Append(hasher.HashLeaf(sum[:]), checkNode); err != nil {
					return false, err
				}
				if badNode != nil {
					verdict = badNode
					return false, nil
				}
				prev, next = hex.EncodeToString(sum[:]), seq+1
				out.Size = next
				if res := checkAt(next); res != nil {
					verdict = res
					return false, nil
				}
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
		if _, err := readSalt(r.Get); err != nil && next > 0 {
			res := bad(&out, 0, "the entries' ids cannot be derived: %v", err)
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
