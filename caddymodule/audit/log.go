package audit

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/transparency-dev/merkle/compact"
	"github.com/transparency-dev/merkle/proof"
	"github.com/transparency-dev/merkle/rfc6962"

	"github.com/asap-sidecar/asap-sidecar/storage"
)

// Log is the audit log of one database. Its state lives in the audit key
// space, so it holds nothing a reload or restart could lose:
//
//	a e\0<seq>                  block: the entries of one Append, from seq (block.go)
//	a i\0<kind><value>\0<seq>   index by agent (u) and task id (t): one key per
//	                            value and block, seq the block's first
//	a n\0<level><index>         Merkle tree node, levels storedLevel and up
//	a h                         head: size, last hash and time, compact range
//	a s                         id salt (block.go)
//	a c\0<size>                 signed checkpoint
//
// Entry hashes, ids and the tree's lower levels are not stored: they are
// recomputed from the blocks when read.
type Log struct {
	db *storage.DB
	// chainOnly skips the Merkle tree; only the benchmark that measures
	// the tree's cost sets it.
	chainOnly bool
	// salt is the id salt once read from committed data: it never
	// changes after the first append, and reading it cost a lookup
	// through every level of the tree per append.
	salt atomic.Pointer[[]byte]
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
	saltKey         = storage.SpaceAudit.Key([]byte("s"))
	blockPrefix     = storage.SpaceAudit.Prefix([]byte("e"))
	checkpointsPref = storage.SpaceAudit.Prefix([]byte("c"))
)

func blockKey(seq uint64) []byte { return storage.SpaceAudit.Key([]byte("e"), be64(seq)) }
func nodeKey(id compact.NodeID) []byte {
	return storage.SpaceAudit.Key([]byte("n"), append([]byte{byte(id.Level)}, be64(id.Index)...))
}
func checkpointKey(size uint64) []byte { return storage.SpaceAudit.Key([]byte("c"), be64(size)) }

// storedLevel is the lowest tree level kept on disk. A node below it
// covers at most 8 entries and is rehashed from their blocks when a root
// or a proof needs it: storing every level cost two 44-byte keys per
// entry, levels 4 and up cost one per 8 entries.
const storedLevel = 4

// Index kinds.
const (
	byAgent = 'u'
	byTask  = 't'
)

func indexPrefix(kind byte, value string) []byte {
	return storage.SpaceAudit.Prefix([]byte("i"), append([]byte{kind}, value...))
}

// head is the log's tip, rewritten by every Append: size, last hash
// (hex) and timestamp, and the compact range of the tree (one hash per
// set bit of size). Stored as uvarint size, then uvarint-length-prefixed
// hash, last and range hashes: binary, as it is read and written once per
// task.
type head struct {
	Size  uint64
	Hash  string
	Last  string
	Range [][]byte
}

func (h *head) encode() []byte {
	b := make([]byte, 0, 16+len(h.Hash)+len(h.Last)+33*len(h.Range))
	b = binary.AppendUvarint(b, h.Size)
	b = appendBytes(b, []byte(h.Hash))
	b = appendBytes(b, []byte(h.Last))
	for _, r := range h.Range {
		b = appendBytes(b, r)
	}
	return b
}

func readHead(get func([]byte) ([]byte, error)) (*head, error) {
	b, err := get(headKey)
	if errors.Is(err, storage.ErrNotFound) {
		return &head{}, nil
	}
	if err != nil {
		return nil, err
	}
	size, w := binary.Uvarint(b)
	if w <= 0 {
		return nil, fmt.Errorf("audit: head is %w: no size", errCorrupt)
	}
	d := decoder{rest: b[w:]}
	h := &head{Size: size, Hash: string(d.bytes()), Last: string(d.bytes())}
	for !d.bad && len(d.rest) > 0 {
		h.Range = append(h.Range, bytes.Clone(d.bytes()))
	}
	if d.bad {
		return nil, fmt.Errorf("audit: head is %w: truncated", errCorrupt)
	}
	return h, nil
}

// Append stages recs as the next entries, inside tx, as one block, and
// returns them as they will read back.
func (l *Log) Append(tx *storage.Tx, now time.Time, recs ...Record) ([]Entry, error) {
	b, sums, salt, err := l.stage(tx, now, recs)
	if err != nil || b == nil {
		return nil, err
	}
	return b.entries(salt, sums), nil
}

// Stage is Append for callers that do not need the entries back (the
// request path): the same writes, without building them.
func (l *Log) Stage(tx *storage.Tx, now time.Time, recs ...Record) error {
	_, _, _, err := l.stage(tx, now, recs)
	return err
}

// stage writes recs as the next block: sequence numbers come from the
// head read in the same transaction, so they are gap-free however many
// writers share a group. Timestamps never go backwards; the entries of
// one block share one.
func (l *Log) stage(tx *storage.Tx, now time.Time, recs []Record) (*block, [][sha256.Size]byte, []byte, error) {
	if len(recs) == 0 {
		return nil, nil, nil, nil
	}
	h, err := readHead(tx.Get)
	if err != nil {
		return nil, nil, nil, err
	}
	if h.Size > maxEntries || uint64(len(recs)) > maxEntries-h.Size {
		return nil, nil, nil, fmt.Errorf("audit: the log is full (%d entries)", h.Size)
	}
	// The block keeps the hash it chains to, raw.
	prev, err := hex.DecodeString(h.Hash)
	wantLen := sha256.Size
	if h.Size == 0 {
		wantLen = 0
	}
	if err != nil || len(prev) != wantLen {
		return nil, nil, nil, errors.New("audit: head is corrupt: its last hash is not a hash")
	}
	salt, err := l.idSalt(tx)
	if errors.Is(err, storage.ErrNotFound) && h.Size == 0 {
		// The log's first append draws the salt of its ids.
		salt = make([]byte, saltSize)
		_, _ = rand.Read(salt) // never fails (Go 1.24)
		tx.Set(saltKey, salt)
	} else if err != nil {
		return nil, nil, nil, err
	}
	rng := factory.NewEmptyRange(0)
	if !l.chainOnly {
		if rng, err = factory.NewRange(0, h.Size, h.Range); err != nil {
			return nil, nil, nil, fmt.Errorf("audit: head range is corrupt: %w", err)
		}
	}
	// Microseconds are what the entry keeps: order is judged on them. The
	// format is fixed-width, so text order is time order; the last
	// timestamp is parsed only when the clock went back, to be sure it is
	// one (a head never holds anything else, but it is read from disk).
	ts := now.UTC().Format(TimeFormat)
	if ts < h.Last && len(h.Last) == len(TimeFormat) {
		if _, err := time.Parse(TimeFormat, h.Last); err == nil {
			ts = h.Last
		}
	}
	b := &block{first: h.Size, prev: prev, ts: ts, items: make([]item, len(recs))}
	for i, rec := range recs {
		if err := rec.Prepare(); err != nil {
			return nil, nil, nil, err
		}
		b.items[i] = item{op: rec.Operation, agent: rec.AgentURN, details: rec.canonical}
	}
	sums := b.chain()
	visit := func(id compact.NodeID, hash []byte) {
		if id.Level >= storedLevel {
			tx.Set(nodeKey(id), hash)
		}
	}
	// One index key per agent and task of the block, however many of its
	// entries name them.
	indexed := map[string]bool{}
	index := func(kind byte, value string) {
		k := append(indexPrefix(kind, value), be64(b.first)...)
		if !indexed[string(k)] {
			indexed[string(k)] = true
			tx.Set(k, nil)
		}
	}
	for i := range b.items {
		b.items[i].tag = tagOf(sums[i], b.items[i].agent)
		if !l.chainOnly {
			if err := rng.Append(hasher.HashLeaf(sums[i][:]), visit); err != nil {
				return nil, nil, nil, err
			}
		}
		index(byAgent, recs[i].AgentURN)
		if task := recs[i].taskID(); task != "" {
			index(byTask, task)
		}
	}
	val, err := b.encode()
	if err != nil {
		return nil, nil, nil, err
	}
	tx.Set(blockKey(b.first), val)
	h.Size, h.Hash, h.Last = h.Size+uint64(len(recs)), hex.EncodeToString(sums[len(sums)-1][:]), b.ts
	h.Range = rng.Hashes()
	tx.Set(headKey, h.encode())
	return b, sums, salt, nil
}

// idSalt is the log's id salt: cached once committed, else as tx sees it.
// Only a committed salt is cached: one staged in tx (or by an earlier
// writer of its group) is lost if the group fails to commit.
func (l *Log) idSalt(tx *storage.Tx) ([]byte, error) {
	if s := l.salt.Load(); s != nil {
		return *s, nil
	}
	var committed []byte
	if err := l.db.View(func(r *storage.Reader) error {
		var err error
		committed, err = readSalt(r.Get)
		return err
	}); err == nil {
		l.salt.Store(&committed)
		return committed, nil
	}
	return readSalt(tx.Get)
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
		h, err := node(r, compact.NewNodeID(uint(level), begin>>uint(level)))
		if err != nil {
			return nil, err
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

// node is the hash of a perfect subtree: stored from storedLevel up,
// rehashed from its entries below. Everything that reads the tree reads
// it here.
func node(r *storage.Reader, id compact.NodeID) ([]byte, error) {
	if id.Level >= storedLevel {
		h, err := r.Get(nodeKey(id))
		if err != nil {
			return nil, fmt.Errorf("audit: tree node %d/%d: %w", id.Level, id.Index, err)
		}
		return h, nil
	}
	begin, end := id.Index<<id.Level, (id.Index+1)<<id.Level
	hashes := make([][]byte, 0, end-begin)
	err := scanBlocks(r, begin, func(b *block) (bool, error) {
		next := begin + uint64(len(hashes))
		if b.first > next {
			return false, nil // entry next is missing
		}
		for i, sum := range b.chain() {
			if seq := b.first + uint64(i); seq >= next && seq < end {
				hashes = append(hashes, hasher.HashLeaf(sum[:]))
			}
		}
		return begin+uint64(len(hashes)) < end, nil
	})
	if err != nil {
		return nil, fmt.Errorf("audit: tree node %d/%d: %w", id.Level, id.Index, err)
	}
	if missing := begin + uint64(len(hashes)); missing < end {
		return nil, fmt.Errorf("audit: tree node %d/%d: entry %d: %w", id.Level, id.Index, missing, storage.ErrNotFound)
	}
	for len(hashes) > 1 {
		for i := range hashes[:len(hashes)/2] {
			hashes[i] = hasher.HashChildren(hashes[2*i], hashes[2*i+1])
		}
		hashes = hashes[:len(hashes)/2]
	}
	return hashes[0], nil
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
		h, err := node(r, id)
		if err != nil {
			return nil, err
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
		if leaf, err = node(r, compact.NewNodeID(0, seq)); err != nil {
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

// Get reads one entry by id (nil when there is none). The id names its
// seq; it is the entry's only if it is the id that entry derives.
func (l *Log) Get(id string) (*Entry, error) {
	salt, seq, ok := idSeq(id)
	if !ok {
		return nil, nil
	}
	var e *Entry
	err := l.db.View(func(r *storage.Reader) error {
		own, err := readSalt(r.Get)
		if errors.Is(err, storage.ErrNotFound) {
			return nil // nothing was ever appended
		}
		if err != nil {
			return err
		}
		if !bytes.Equal(salt, own) {
			return nil // another database's id
		}
		b, err := blockAt(r, seq)
		if errors.Is(err, storage.ErrNotFound) {
			h, herr := readHead(r.Get)
			if herr != nil {
				return herr
			}
			if seq < h.Size {
				return err // inside the log: a lost entry
			}
			return nil // beyond it: no entry
		}
		if err != nil {
			return err
		}
		if got := b.entries(own, b.chain())[seq-b.first]; got.ID == id {
			e = &got
		}
		return nil
	})
	return e, err
}
