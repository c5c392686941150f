package audit

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/klauspost/compress/s2"
	"github.com/oklog/ulid/v2"

	"github.com/asap-sidecar/asap-sidecar/storage"
)

// A block is what one Append stores, under a e\0<seq of its first entry>:
// the entries it appended, which share one timestamp, and the chain hash
// before them. Entry hashes are not stored but recomputed along the block
// from that prev hash; each entry keeps only a tag (see tagOf), so that
// Verify can name the entry an edit broke rather than just its block. Ids
// are derived from seq and time (see entryID).
//
// The value is s2-compressed with blockDict; uncompressed it is
//
//	uvarint len, prev hash (0 or 32 bytes)
//	uvarint len, timestamp (TimeFormat)
//	per entry, to the end:
//	  operation code (1 byte; 0: uvarint len, operation follows)
//	  uvarint len, agent_urn
//	  uvarint len, canonical details
//	  tag (tagSize bytes)
type block struct {
	first uint64
	prev  []byte
	ts    string
	items []item
}

type item struct {
	op, agent string
	details   []byte
	tag       [tagSize]byte
}

// tagSize is the size of an entry's tag: enough that an edit goes
// unnoticed at its own entry once in 4 billion (and is caught one entry
// or block later even then).
const tagSize = 4

// tagOf is the tag a block keeps for an entry: the first bytes of
// SHA-256(entry hash || agent_urn). The hash is what the chain, the tree
// and the checkpoints prove; agent_urn is outside it (SPEC §6), so the
// tag is all that notices an agent edited behind the log's back (unless
// the tag is rewritten too).
func tagOf(sum [sha256.Size]byte, agent string) (tag [tagSize]byte) {
	h := sha256.New()
	h.Write(sum[:])
	h.Write([]byte(agent))
	copy(tag[:], h.Sum(nil))
	return tag
}

// opCodes are the operations stored as one byte, code = index + 1. The
// order is part of the on-disk format: new operations go at the end.
var opCodes = [...]string{
	OpTaskStarted, OpTaskCompleted, OpTaskFailed, OpUsageRecorded, OpDelegationCreated,
	OpDelegationRevoked, OpDelegationRejected, OpSLABreach, OpSLAResolved,
}

// maxEntries bounds seq: ids carry it in 48 bits (at 100,000 entries a
// second, 89 years).
const maxEntries = 1 << 48

// maxBlockSize bounds a block before compression, so that a corrupt
// length header cannot make a read allocate gigabytes. Badger keeps no
// value over 64 MiB anyway. A variable for tests.
var maxBlockSize = 64 << 20

// blockDict primes the compressor with what the sidecar's entries repeat:
// detail keys in canonical (sorted) order and their common values, so a
// task's first entry costs little more than the two after it, which
// repeat it. It is part of the on-disk format: changing a byte makes
// every stored block unreadable (TestBlockFormatIsPinned).
var blockDict = s2.NewDict(append([]byte{0}, ""+
	`{"actual":,"breach_id":"","breach_type":"","detected_at":"","resolved_at":"","severity":"","threshold":}`+
	`{"code":,"delegate":"urn:asap:agent:","delegator":"urn:asap:agent:","expires_at":"","jti":"","max_tasks":,"parent_id":"","path":"","scopes":["task.execute"]}`+
	`{"agent":"urn:asap:agent:","api_calls":1,"consumer":"urn:asap:agent:","delegation_id":"","duration_ms":,"envelope_id":"","error_code":,`+
	`"http_status":200,"payload_type":"task.request","reason":"agent did not answer","root_issuer":"urn:asap:agent:","started_at":"20",`+
	`"status":"failed","status":"completed","task_id":"task_","tokens_in":,"tokens_out":}`...))

// errCorrupt marks a stored block that cannot be decoded.
var errCorrupt = errors.New("corrupt")

func (b *block) encode() ([]byte, error) {
	// A capacity hint: room for every item without growing.
	size := 96
	for _, it := range b.items {
		size += len(it.agent) + len(it.details) + 64
	}
	raw := make([]byte, 0, size)
	raw = appendBytes(raw, b.prev)
	raw = appendBytes(raw, []byte(b.ts))
	for _, it := range b.items {
		raw = append(raw, opCode(it.op))
		if opCode(it.op) == 0 {
			raw = appendBytes(raw, []byte(it.op))
		}
		raw = appendBytes(raw, []byte(it.agent))
		raw = appendBytes(raw, it.details)
		raw = append(raw, it.tag[:]...)
	}
	if len(raw) > maxBlockSize {
		return nil, fmt.Errorf("audit: the entries of one append exceed %d bytes", maxBlockSize)
	}
	return CompressBlock(raw), nil
}

// CompressBlock and DecompressBlock are the compression of a stored block
// (s2 with blockDict), exported for tools and tests that read or tamper
// with a stopped sidecar's store behind the log's back.
func CompressBlock(raw []byte) []byte { return blockDict.Encode(nil, raw) }

// DecompressBlock returns the uncompressed bytes of a stored block value.
// A panic in the decoder becomes an error: the library fuzzes its plain
// decoder but not the dictionary one, and this one reads whatever the
// disk holds.
func DecompressBlock(val []byte) (raw []byte, err error) {
	notS2 := errors.New("audit: a block value is not s2")
	if n, err := s2.DecodedLen(val); err != nil || n > maxBlockSize {
		return nil, notS2
	}
	defer func() {
		if recover() != nil {
			raw, err = nil, notS2
		}
	}()
	if raw, err = blockDict.Decode(nil, val); err != nil {
		return nil, notS2
	}
	return raw, nil
}

func opCode(op string) byte {
	for i, known := range opCodes {
		if op == known {
			return byte(i + 1)
		}
	}
	return 0
}

func appendBytes(b, s []byte) []byte {
	return append(binary.AppendUvarint(b, uint64(len(s))), s...)
}

// decodeBlock reads the block stored under key. Whatever the bytes, it
// returns a block or an error, never panics: a tampered store is read
// like any other.
func decodeBlock(key, val []byte) (*block, error) {
	first, err := seqOf(blockPrefix, key)
	if err != nil {
		return nil, err
	}
	fail := func(what string) (*block, error) {
		return nil, fmt.Errorf("audit: block %d is %w: %s", first, errCorrupt, what)
	}
	raw, err := DecompressBlock(val)
	if err != nil {
		return fail("not s2")
	}
	d := decoder{rest: raw}
	b := &block{first: first, prev: d.bytes(), ts: string(d.bytes())}
	if len(b.prev) != 0 && len(b.prev) != sha256.Size {
		return fail("prev hash is not 32 bytes")
	}
	for !d.bad && len(d.rest) > 0 {
		var it item
		switch code := d.fixed(1)[0]; { // the loop runs while bytes remain
		case code == 0:
			it.op = string(d.bytes())
		case int(code) <= len(opCodes):
			it.op = opCodes[code-1]
		default:
			return fail("unknown operation code")
		}
		it.agent = string(d.bytes())
		it.details = d.bytes()
		copy(it.tag[:], d.fixed(tagSize))
		if !d.bad && !json.Valid(it.details) {
			return fail("details are not JSON")
		}
		b.items = append(b.items, it)
	}
	switch {
	case d.bad:
		return fail("truncated")
	case len(b.items) == 0:
		return fail("no entries")
	case first >= maxEntries || uint64(len(b.items)) > maxEntries-first:
		return fail("seq out of range")
	}
	return b, nil
}

// decoder reads a block's fields; past the end it yields nothing and
// records that it was bad.
type decoder struct {
	rest []byte
	bad  bool
}

func (d *decoder) fixed(n int) []byte {
	if n > len(d.rest) {
		d.bad, d.rest = true, nil
		return nil
	}
	out := d.rest[:n]
	d.rest = d.rest[n:]
	return out
}

func (d *decoder) bytes() []byte {
	n, w := binary.Uvarint(d.rest)
	if w <= 0 || n > uint64(len(d.rest)-w) {
		d.bad, d.rest = true, nil
		return nil
	}
	d.rest = d.rest[w:]
	return d.fixed(int(n))
}

// chain recomputes the block's entry hashes (raw), each from the one
// before it, the first from the stored prev hash.
func (b *block) chain() [][sha256.Size]byte {
	out := make([][sha256.Size]byte, len(b.items))
	var prev [2 * sha256.Size]byte
	prevHex := prev[:hex.Encode(prev[:], b.prev)]
	size := 0
	for _, it := range b.items {
		size = max(size, len(it.details))
	}
	buf := make([]byte, 0, len(prev)+len(b.ts)+size+64)
	for i, it := range b.items {
		out[i] = chainSumBytes(buf, prevHex, b.ts, it.op, it.details)
		prevHex = prev[:hex.Encode(prev[:], out[i][:])]
	}
	return out
}

// entries are the block's entries as the API shows them, given the
// hashes chain returned.
func (b *block) entries(salt []byte, sums [][sha256.Size]byte) []Entry {
	out := make([]Entry, len(b.items))
	ms := idTime(b.ts)
	prev := hex.EncodeToString(b.prev)
	for i, it := range b.items {
		hash := hex.EncodeToString(sums[i][:])
		seq := b.first + uint64(i)
		out[i] = Entry{
			ID: entryID(salt, seq, ms), Seq: seq, Timestamp: b.ts, Operation: it.op, AgentURN: it.agent,
			Details: json.RawMessage(it.details), PrevHash: prev, Hash: hash,
		}
		prev = hash
	}
	return out
}

// seqOf is the seq at the end of a key under prefix: 8 bytes, big-endian.
func seqOf(prefix, key []byte) (uint64, error) {
	if len(key) != len(prefix)+8 {
		return 0, fmt.Errorf("audit: malformed key %q", key)
	}
	return binary.BigEndian.Uint64(key[len(prefix):]), nil
}

// saltSize is the size of the database's id salt. An entry id is a ULID,
// as clients expect, but derived rather than stored: its time is the
// entry's timestamp (ms), its 80 bits of entropy the salt (32 bits, drawn
// with the first entry) and the entry's seq (48 bits). Get reads the seq
// back out of an id, so no id index is needed; the salt keeps one
// database's ids from naming another's entries.
const saltSize = 4

func readSalt(get func([]byte) ([]byte, error)) ([]byte, error) {
	salt, err := get(saltKey)
	if err != nil {
		return nil, fmt.Errorf("audit: id salt: %w", err)
	}
	if len(salt) != saltSize {
		return nil, fmt.Errorf("audit: id salt is %w", errCorrupt)
	}
	return salt, nil
}

// idTime is an id's time part: the entry's timestamp in ms, 0 for one
// that does not parse (only a tampered entry has one).
func idTime(ts string) uint64 {
	t, err := time.Parse(TimeFormat, ts)
	if err != nil || t.UnixMilli() < 0 {
		return 0
	}
	return uint64(t.UnixMilli())
}

func entryID(salt []byte, seq, ms uint64) string {
	var u ulid.ULID
	_ = u.SetTime(ms) // TimeFormat stops at year 9999, far below the ULID limit
	copy(u[6:10], salt)
	var s [8]byte
	binary.BigEndian.PutUint64(s[:], seq)
	copy(u[10:], s[2:])
	return u.String()
}

// idSeq reads the salt and seq back out of an id.
func idSeq(id string) (salt []byte, seq uint64, ok bool) {
	u, err := ulid.ParseStrict(id)
	if err != nil {
		return nil, 0, false
	}
	var s [8]byte
	copy(s[2:], u[10:])
	return u[6:10], binary.BigEndian.Uint64(s[:]), true
}

// entryReader turns stored blocks into entries inside one snapshot,
// reading the salt once.
type entryReader struct {
	r    *storage.Reader
	salt []byte
}

func (er *entryReader) entries(b *block) ([]Entry, error) {
	if er.salt == nil {
		salt, err := readSalt(er.r.Get)
		if err != nil {
			return nil, err
		}
		er.salt = salt
	}
	return b.entries(er.salt, b.chain()), nil
}

// scanBlocks calls fn for every stored block in key order, from the one
// holding entry from (or the first after it), until fn returns false.
func scanBlocks(r *storage.Reader, from uint64, fn func(b *block) (bool, error)) error {
	seek := blockKey(from)
	// The block holding from starts at or before it: the last key at or
	// below seek.
	if err := r.ScanFrom(blockPrefix, seek, true, func(k, _ []byte) (bool, error) {
		seek = append([]byte(nil), k...)
		return false, nil
	}); err != nil {
		return err
	}
	return r.ScanFrom(blockPrefix, seek, false, func(k, v []byte) (bool, error) {
		b, err := decodeBlock(k, v)
		if err != nil {
			return false, err
		}
		return fn(b)
	})
}

// blockAt reads the block holding entry seq; storage.ErrNotFound when no
// stored block does.
func blockAt(r *storage.Reader, seq uint64) (*block, error) {
	var found *block
	err := scanBlocks(r, seq, func(b *block) (bool, error) {
		found = b
		return false, nil
	})
	if err != nil {
		return nil, err
	}
	if found == nil || seq < found.first || seq-found.first >= uint64(len(found.items)) {
		return nil, fmt.Errorf("audit: entry %d: %w", seq, storage.ErrNotFound)
	}
	return found, nil
}
