package audit

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/oklog/ulid/v2"
	"github.com/transparency-dev/merkle/compact"
	"github.com/transparency-dev/merkle/proof"
	"github.com/transparency-dev/merkle/rfc6962"

	"github.com/asap-sidecar/asap-sidecar/storage"
)

// Log is the audit log of one database. Its state lives in the audit key
// space, so it holds nothing a reload or restart could lose:
//
//	a e\0<seq>              entry
//	a d\0<id>               id → seq
//	a i\0<kind><value>\0<seq>   index by agent (u) and task id (t)
//	a n\0<level><index>     Merkle tree node (leaves are level 0)
//	a h                     head: size, last hash and time, compact range
//	a c\0<size>             signed checkpoint
type Log struct {
	db *storage.DB
	// chainOnly skips the Merkle tree; only the benchmark that measures
	// the tree's cost sets it.
	chainOnly bool
}

// New returns the log kept in db.
func New(db *storage.DB) *Log { return &Log{db: db} }

var (
	hasher  = rfc6962.DefaultHasher
	factory = &compact.RangeFactory{Hash: hasher.HashChildren}
)

func be64(v uint64) []byte {
	b := make([]byte, 8)
	binary.BigEndian.PutUint64(b, v)
	return b
}

var (
	headKey         = storage.SpaceAudit.Key([]byte("h"))
	entryPrefix     = storage.SpaceAudit.Prefix([]byte("e"))
	checkpointsPref = storage.SpaceAudit.Prefix([]byte("c"))
)

func entryKey(seq uint64) []byte { return storage.SpaceAudit.Key([]byte("e"), be64(seq)) }
func idKey(id string) []byte     { return storage.SpaceAudit.Key([]byte("d"), []byte(id)) }
func nodeKey(id compact.NodeID) []byte {
	return storage.SpaceAudit.Key([]byte("n"), append([]byte{byte(id.Level)}, be64(id.Index)...))
}
func checkpointKey(size uint64) []byte { return storage.SpaceAudit.Key([]byte("c"), be64(size)) }

// Index kinds.
const (
	byAgent = 'u'
	byTask  = 't'
)

func indexPrefix(kind byte, value string) []byte {
	return storage.SpaceAudit.Prefix([]byte("i"), append([]byte{kind}, value...))
}

// head is the log's tip.
type head struct {
	Size  uint64   `json:"size"`
	Hash  string   `json:"hash"`
	Last  string   `json:"last"`
	Range [][]byte `json:"range"`
}

func readHead(get func([]byte) ([]byte, error)) (*head, error) {
	b, err := get(headKey)
	if errors.Is(err, storage.ErrNotFound) {
		return &head{}, nil
	}
	if err != nil {
		return nil, err
	}
	var h head
	if err := json.Unmarshal(b, &h); err != nil {
		return nil, fmt.Errorf("audit: head is corrupt: %w", err)
	}
	return &h, nil
}

// Append stages recs as the next entries, inside tx: sequence numbers come
// from the head read in the same transaction, so they are gap-free however
// many writers share a group. Timestamps never go backwards.
func (l *Log) Append(tx *storage.Tx, now time.Time, recs ...Record) ([]Entry, error) {
	if len(recs) == 0 {
		return nil, nil
	}
	h, err := readHead(tx.Get)
	if err != nil {
		return nil, err
	}
	rng := factory.NewEmptyRange(0)
	if !l.chainOnly {
		if rng, err = factory.NewRange(0, h.Size, h.Range); err != nil {
			return nil, fmt.Errorf("audit: head range is corrupt: %w", err)
		}
	}
	// Microseconds are what the entry keeps: order is judged on them.
	now = now.UTC().Truncate(time.Microsecond)
	if last, err := time.Parse(TimeFormat, h.Last); err == nil && now.Before(last) {
		now = last
	}
	ts := now.Format(TimeFormat)
	visit := func(id compact.NodeID, hash []byte) { tx.Set(nodeKey(id), hash) }
	out := make([]Entry, 0, len(recs))
	for _, rec := range recs {
		if err := rec.Prepare(); err != nil {
			return nil, err
		}
		canon := rec.canonical
		e := Entry{
			ID:        ulid.Make().String(),
			Seq:       h.Size,
			Timestamp: ts,
			Operation: rec.Operation,
			AgentURN:  rec.AgentURN,
			Details:   canon,
			PrevHash:  h.Hash,
		}
		e.Hash = ChainHash(e.PrevHash, e.Timestamp, e.Operation, canon)
		if !l.chainOnly {
			leaf, _ := e.LeafData()
			if err := rng.Append(hasher.HashLeaf(leaf), visit); err != nil {
				return nil, err
			}
		}
		b, err := json.Marshal(&e)
		if err != nil {
			return nil, err
		}
		seq := be64(e.Seq)
		tx.Set(entryKey(e.Seq), b)
		tx.Set(idKey(e.ID), seq)
		tx.Set(append(indexPrefix(byAgent, e.AgentURN), seq...), nil)
		if task, ok := rec.Details["task_id"].(string); ok && task != "" {
			tx.Set(append(indexPrefix(byTask, task), seq...), nil)
		}
		h.Size, h.Hash, h.Last = h.Size+1, e.Hash, ts
		out = append(out, e)
	}
	h.Range = rng.Hashes()
	b, err := json.Marshal(h)
	if err != nil {
		return nil, err
	}
	tx.Set(headKey, b)
	return out, nil
}

// Size is the number of entries and the current root hash.
func (l *Log) Size() (uint64, []byte, error) {
	var size uint64
	var root []byte
	err := l.db.View(func(r *storage.Reader) error {
		h, err := readHead(r.Get)
		if err != nil {
			return err
		}
		size = h.Size
		root, err = rootOf(h)
		return err
	})
	return size, root, err
}

func rootOf(h *head) ([]byte, error) {
	if h.Size == 0 {
		return hasher.EmptyRoot(), nil
	}
	rng, err := factory.NewRange(0, h.Size, h.Range)
	if err != nil {
		return nil, fmt.Errorf("audit: head range is corrupt: %w", err)
	}
	return rng.GetRootHash(nil)
}

// RootAt is the tree root over the first size entries, from stored nodes.
func (l *Log) RootAt(size uint64) ([]byte, error) {
	var root []byte
	err := l.db.View(func(r *storage.Reader) error {
		var err error
		root, err = rootAt(r, size)
		return err
	})
	return root, err
}

func rootAt(r *storage.Reader, size uint64) ([]byte, error) {
	if size == 0 {
		return hasher.EmptyRoot(), nil
	}
	// The perfect subtrees covering [0, size), left to right: one per set
	// bit of size, from the highest.
	var hashes [][]byte
	var begin uint64
	for level := 63; level >= 0; level-- {
		if size&(1<<uint(level)) == 0 {
			continue
		}
		id := compact.NewNodeID(uint(level), begin>>uint(level))
		h, err := r.Get(nodeKey(id))
		if err != nil {
			return nil, fmt.Errorf("audit: tree node %d/%d: %w", id.Level, id.Index, err)
		}
		hashes = append(hashes, h)
		begin += 1 << uint(level)
	}
	rng, err := factory.NewRange(0, size, hashes)
	if err != nil {
		return nil, err
	}
	return rng.GetRootHash(nil)
}

// checkSize refuses sizes beyond the log.
func checkSize(r *storage.Reader, size uint64) error {
	h, err := readHead(r.Get)
	if err != nil {
		return err
	}
	if size > h.Size {
		return fmt.Errorf("%w: size %d is beyond the log's %d entries", ErrBadRequest, size, h.Size)
	}
	return nil
}

// ErrBadRequest marks errors caused by the caller's arguments.
var ErrBadRequest = errors.New("bad request")

func nodeHashes(r *storage.Reader, nodes proof.Nodes) ([][]byte, error) {
	hashes := make([][]byte, len(nodes.IDs))
	for i, id := range nodes.IDs {
		h, err := r.Get(nodeKey(id))
		if err != nil {
			return nil, fmt.Errorf("audit: tree node %d/%d: %w", id.Level, id.Index, err)
		}
		hashes[i] = h
	}
	return nodes.Rehash(hashes, hasher.HashChildren)
}

// InclusionProof proves entry seq is in the tree of the given size. It
// returns the leaf hash and the proof, both RFC 6962.
func (l *Log) InclusionProof(seq, size uint64) ([]byte, [][]byte, error) {
	if seq >= size {
		return nil, nil, fmt.Errorf("%w: seq %d is not below size %d", ErrBadRequest, seq, size)
	}
	var leaf []byte
	var hashes [][]byte
	err := l.db.View(func(r *storage.Reader) error {
		if err := checkSize(r, size); err != nil {
			return err
		}
		nodes, err := proof.Inclusion(seq, size)
		if err != nil {
			return fmt.Errorf("%w: %v", ErrBadRequest, err)
		}
		if leaf, err = r.Get(nodeKey(compact.NewNodeID(0, seq))); err != nil {
			return fmt.Errorf("audit: leaf %d: %w", seq, err)
		}
		hashes, err = nodeHashes(r, nodes)
		return err
	})
	return leaf, hashes, err
}

// ConsistencyProof proves the tree of size newSize extends that of oldSize.
func (l *Log) ConsistencyProof(oldSize, newSize uint64) ([][]byte, error) {
	if oldSize > newSize {
		return nil, fmt.Errorf("%w: old size %d is above new size %d", ErrBadRequest, oldSize, newSize)
	}
	var hashes [][]byte
	err := l.db.View(func(r *storage.Reader) error {
		if err := checkSize(r, newSize); err != nil {
			return err
		}
		nodes, err := proof.Consistency(oldSize, newSize)
		if err != nil {
			return fmt.Errorf("%w: %v", ErrBadRequest, err)
		}
		hashes, err = nodeHashes(r, nodes)
		return err
	})
	return hashes, err
}

// Get reads one entry by id (nil when there is none).
func (l *Log) Get(id string) (*Entry, error) {
	var e *Entry
	err := l.db.View(func(r *storage.Reader) error {
		seq, err := r.Get(idKey(id))
		if errors.Is(err, storage.ErrNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		b, err := r.Get(storage.SpaceAudit.Key([]byte("e"), seq))
		if err != nil {
			return err
		}
		e = new(Entry)
		return json.Unmarshal(b, e)
	})
	return e, err
}

// leafHashOf is the RFC 6962 leaf hash of an entry hash (hex).
func leafHashOf(entryHash string) ([]byte, error) {
	e := Entry{Hash: entryHash}
	leaf, err := e.LeafData()
	if err != nil {
		return nil, err
	}
	return hasher.HashLeaf(leaf), nil
}
