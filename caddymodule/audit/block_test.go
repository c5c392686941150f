package audit

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"math/rand"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/dgraph-io/badger/v4"
	"github.com/oklog/ulid/v2"
	"github.com/transparency-dev/merkle/compact"

	"github.com/asap-sidecar/asap-sidecar/storage"
)

func testBlock() *block {
	return &block{first: 7, prev: bytes.Repeat([]byte{0xab}, 32), ts: "2026-03-01T10:00:00.000005Z", items: []item{
		{op: OpTaskStarted, agent: "urn:asap:agent:c", details: []byte(`{"task_id":"t1"}`), tag: [tagSize]byte{1, 2, 3, 4}},
		{op: "custom.op", agent: "", details: []byte(`{}`), tag: [tagSize]byte{5, 6, 7, 8}},
		{op: OpSLAResolved, agent: "urn:asap:agent:d\x00x", details: []byte(`{"a":[1,"ü"]}`)},
	}}
}

// Blocks come back as they were written, known operations as one byte
// and others spelled out.
func TestBlockRoundTrip(t *testing.T) {
	for _, b := range []*block{testBlock(), {first: 0, ts: "x", items: []item{{op: OpUsageRecorded, details: []byte(`{}`)}}}} {
		v, err := b.encode()
		if err != nil {
			t.Fatal(err)
		}
		got, err := decodeBlock(blockKey(b.first), v)
		if err != nil {
			t.Fatal(err)
		}
		if len(got.prev) == 0 {
			got.prev = b.prev // nil and empty alike
		}
		if !reflect.DeepEqual(got, b) {
			t.Fatalf("round trip:\n got  %+v\n want %+v", got, b)
		}
	}
	for i, op := range opCodes {
		if opCode(op) != byte(i+1) {
			t.Fatalf("%s has code %d", op, opCode(op))
		}
	}
	if opCode("task.started\x00") != 0 || opCode("") != 0 {
		t.Fatal("an unknown operation got a code")
	}
}

// The format is pinned: a block written today reads tomorrow. A change to
// the dictionary, the operation codes or the layout fails here; such a
// change needs a migration of stored logs.
func TestBlockFormatIsPinned(t *testing.T) {
	dict := sha256.Sum256(blockDict.Bytes())
	if got := hex.EncodeToString(dict[:]); got != pinnedDict {
		t.Fatalf("the block dictionary changed: sha256 %s", got)
	}
	if opCodes != [...]string{"task.started", "task.completed", "task.failed", "usage.recorded", "delegation.created",
		"delegation.revoked", "delegation.rejected", "sla.breach", "sla.resolved"} {
		t.Fatalf("operation codes changed: %v", opCodes)
	}
	stored, _ := hex.DecodeString(pinnedBlock)
	b, err := decodeBlock(blockKey(7), stored)
	if err != nil {
		t.Fatal(err)
	}
	if want := testBlock(); !reflect.DeepEqual(b, want) {
		t.Fatalf("the pinned block reads as\n %+v\nwant\n %+v", b, want)
	}
}

const (
	pinnedDict  = "a099005ab02555012bac180228ec6c3d8d4dc431050f37e6bcdbaa52e9cf97bf"
	pinnedBlock = "9e010c20ababab720300741b323032362d30332d30315431303a30303a30302e3030303030355a01103ab6000863107b2e7e006c31227d" +
		"010203040009637573746f6d2e6f7000027b7d0506070809123a3a00546400780e7b2261223a5b312c22c3bc225d7d00000000"
)

// Whatever a stored value holds, reading it is an error or a block, never
// a panic or a huge allocation.
func TestDecodeBlockRejectsCorruptValues(t *testing.T) {
	raw := func(parts ...[]byte) []byte { return CompressBlock(bytes.Join(parts, nil)) }
	field := func(s string) []byte { return appendBytes(nil, []byte(s)) }
	prev, ts, tag := field(strings.Repeat("p", 32)), field("2026-03-01T10:00:00.000005Z"), []byte{1, 2, 3, 4}
	entry := bytes.Join([][]byte{{1}, field("urn:asap:agent:c"), field(`{}`), tag}, nil)
	if _, err := decodeBlock(blockKey(1), raw(prev, ts, entry)); err != nil {
		t.Fatalf("the well-formed block: %v", err)
	}
	hugeHeader := binary.AppendUvarint(nil, uint64(maxBlockSize)+1)
	for name, c := range map[string]struct {
		key, val []byte
		want     string
	}{
		"not s2":                 {blockKey(1), []byte("not a block"), "not s2"},
		"empty":                  {blockKey(1), nil, "not s2"},
		"claims to be huge":      {blockKey(1), append(hugeHeader, 0, 0, 0), "not s2"},
		"s2 body cut":            {blockKey(1), raw(prev, ts, entry)[:20], "not s2"},
		"nothing inside":         {blockKey(1), raw(), "truncated"},
		"no timestamp":           {blockKey(1), raw(prev), "truncated"},
		"no entries":             {blockKey(1), raw(prev, ts), "no entries"},
		"prev of 5 bytes":        {blockKey(1), raw(field("12345"), ts, entry), "prev hash is not 32 bytes"},
		"prev length past end":   {blockKey(1), raw([]byte{200}), "truncated"},
		"length overflows":       {blockKey(1), raw(prev, ts, []byte{0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}), "truncated"},
		"unknown op code":        {blockKey(1), raw(prev, ts, []byte{byte(len(opCodes) + 1)}, entry[1:]), "unknown operation code"},
		"op string cut":          {blockKey(1), raw(prev, ts, []byte{0, 9, 'x'}), "truncated"},
		"tag cut":                {blockKey(1), raw(prev, ts, entry[:len(entry)-1]), "truncated"},
		"details not JSON":       {blockKey(1), raw(prev, ts, []byte{1}, field("u"), field(`{"a":`), tag), "details are not JSON"},
		"trailing byte":          {blockKey(1), raw(prev, ts, entry, []byte{1}), "truncated"},
		"seq beyond ids":         {blockKey(maxEntries), raw(prev, ts, entry), "seq out of range"},
		"runs past ids":          {blockKey(maxEntries - 1), raw(prev, ts, entry, entry), "seq out of range"},
		"short key":              {[]byte("ae\x00x"), raw(prev, ts, entry), "malformed key"},
		"key with an extra byte": {append(blockKey(1), 0), raw(prev, ts, entry), "malformed key"},
	} {
		b, err := decodeBlock(c.key, c.val)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %+v %v, want an error with %q", name, b, err, c.want)
		}
	}
}

func TestDecodeBlockNeverPanics(t *testing.T) {
	b := testBlock()
	b.items = append(b.items, b.items...)
	good, err := b.encode()
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewSource(1))
	for i := 0; i < 20000; i++ {
		v := append([]byte(nil), good...)
		switch rng.Intn(4) {
		case 0:
			v[rng.Intn(len(v))] ^= byte(1 + rng.Intn(255))
		case 1:
			v = v[:rng.Intn(len(v))]
		case 2:
			for n := 1 + rng.Intn(4); n > 0; n-- {
				v[rng.Intn(len(v))] = byte(rng.Intn(256))
			}
		case 3:
			j := rng.Intn(len(v))
			v = append(v[:j], append([]byte{byte(rng.Intn(256))}, v[j:]...)...)
		}
		got, err := decodeBlock(blockKey(3), v)
		if err == nil {
			_ = got.entries(make([]byte, saltSize), got.chain())
		}
	}
}

// A block as large as the limit allows is refused at Append, not stored
// and then unreadable.
func TestAppendRefusesOversizedBlock(t *testing.T) {
	defer func(n int) { maxBlockSize = n }(maxBlockSize)
	maxBlockSize = 200
	db := openDB(t, t.TempDir())
	defer db.Close()
	l := New(db)
	small := Record{Operation: OpTaskStarted, AgentURN: "urn:asap:agent:c", Details: map[string]any{"n": strings.Repeat("x", 50)}}
	if _, err := commitAppend(t, db, l, t0, small, small, small); err == nil || !strings.Contains(err.Error(), "exceed 200 bytes") {
		t.Fatalf("Append of an oversized block: %v", err)
	}
	mustAppend(t, db, l, t0, small)
	if v, err := l.Verify(nil); err != nil || !v.Valid || v.Size != 1 {
		t.Fatalf("verify %+v %v", v, err)
	}
}

func TestAppendRefusesPastTheLastID(t *testing.T) {
	db := openDB(t, t.TempDir())
	fill(t, db, New(db), 1)
	db, l := reopenAfter(t, db, editHead(func(h *head) {
		h.Size, h.Range = maxEntries-1, [][]byte{}
		for level := 0; level < 48; level++ {
			h.Range = append(h.Range, make([]byte, 32))
		}
	}))
	rec := Record{Operation: OpTaskStarted}
	if _, err := commitAppend(t, db, l, t0, rec, rec); err == nil || !strings.Contains(err.Error(), "the log is full") {
		t.Fatalf("Append past 2^48 entries: %v", err)
	}
	es, err := commitAppend(t, db, l, t0, rec)
	if err != nil || es[0].Seq != maxEntries-1 {
		t.Fatalf("the last seq: %+v %v", es, err)
	}
	if got, err := l.Get(es[0].ID); err != nil || got == nil || got.Seq != maxEntries-1 {
		t.Fatalf("Get of the last id: %+v %v", got, err)
	}
}

// ------------------------------------------------------------------ ids

// Ids are ULIDs of the entry's time, the database's salt and the seq;
// Get finds an entry by its id and by nothing else.
func TestDerivedIDs(t *testing.T) {
	db := openDB(t, t.TempDir())
	l := New(db)
	es := mustAppend(t, db, l, t0.Add(1500*time.Microsecond), Record{Operation: OpTaskStarted}, Record{Operation: OpTaskCompleted})
	es = append(es, fill(t, db, l, 2)...)
	var salt []byte
	_ = db.View(func(r *storage.Reader) error { salt, _ = readSalt(r.Get); return nil })
	if len(salt) != saltSize {
		t.Fatalf("salt %x", salt)
	}
	seen := map[string]bool{}
	for _, e := range es {
		u, err := ulid.ParseStrict(e.ID)
		if err != nil || u.String() != e.ID || seen[e.ID] {
			t.Fatalf("id %q: %v (or a duplicate)", e.ID, err)
		}
		seen[e.ID] = true
		at, _ := e.Time()
		entropy := u.Entropy()
		if u.Time() != uint64(at.UnixMilli()) || !bytes.Equal(entropy[:4], salt) ||
			!bytes.Equal(entropy[4:], be64(e.Seq)[2:]) {
			t.Fatalf("id %s of entry %d at %s: time %d, entropy %x", e.ID, e.Seq, e.Timestamp, u.Time(), entropy)
		}
	}
	if es[0].ID[:10] != es[1].ID[:10] || es[0].ID == es[1].ID {
		t.Fatalf("one append, one time part: %s %s", es[0].ID, es[1].ID)
	}
	// Another database draws another salt: its ids are not found here.
	other := openDB(t, t.TempDir())
	defer other.Close()
	foreign := mustAppend(t, other, New(other), t0.Add(1500*time.Microsecond), Record{Operation: OpTaskStarted})
	if foreign[0].ID == es[0].ID {
		t.Fatal("two databases derived the same id")
	}
	// Ids that are no entry's: the salt, seq or time differs, or they are
	// not ULIDs.
	at0, _ := es[0].Time()
	ms := uint64(at0.UnixMilli())
	for name, id := range map[string]string{
		"another database's":     foreign[0].ID,
		"another salt":           entryID([]byte{1, 2, 3, 4, 5}, 0, ms),
		"seq beyond the log":     entryID(salt, 4, ms),
		"seq far beyond the log": entryID(salt, maxEntries-1, ms),
		"another time":           entryID(salt, 0, ms+1),
		"lower case":             strings.ToLower(es[0].ID),
		"not a ULID":             "01JXXXXXXXXXXXXXXXXXXXXXXU",
		"overflowing ULID":       "8" + es[0].ID[1:],
	} {
		if got, err := l.Get(id); err != nil || got != nil {
			t.Errorf("%s (%s): %+v %v, want no entry", name, id, got, err)
		}
	}
	// A timestamp edited behind the log's back changes the entry's id.
	db, l = reopenAfter(t, db, editBlock(0, func(b *block) { b.ts = "2027-01-01T00:00:00.000000Z" }))
	if got, err := l.Get(es[0].ID); err != nil || got != nil {
		t.Fatalf("the old id after a timestamp edit: %+v %v", got, err)
	}
	all, _ := l.Query(Filter{}, 10, 0)
	if got, err := l.Get(all[0].ID); err != nil || got == nil || got.Seq != 0 || got.Timestamp != "2027-01-01T00:00:00.000000Z" {
		t.Fatalf("the new id: %+v %v", got, err)
	}
	// An unreadable timestamp gives time 0.
	_, l = reopenAfter(t, db, editBlock(0, func(b *block) { b.ts = "yesterday" }))
	all, _ = l.Query(Filter{}, 10, 0)
	if u := ulid.MustParse(all[1].ID); u.Time() != 0 {
		t.Fatalf("id of an entry at %q has time %d", all[1].Timestamp, u.Time())
	}
	if got, err := l.Get(all[1].ID); err != nil || got == nil || got.Seq != 1 {
		t.Fatalf("Get by the id of an unreadable time: %+v %v", got, err)
	}
}

// The salt is drawn once, with the first entry; a log that lost it can
// derive no id, and says so.
func TestIDSaltLostOrCorrupt(t *testing.T) {
	for name, c := range map[string]struct {
		fn   func(txn *badger.Txn) error
		want string
	}{
		"lost":    {func(txn *badger.Txn) error { return txn.Delete(saltKey) }, "Key not found"},
		"corrupt": {func(txn *badger.Txn) error { return txn.Set(saltKey, []byte{1, 2, 3}) }, "id salt is corrupt"},
	} {
		t.Run(name, func(t *testing.T) {
			db := openDB(t, t.TempDir())
			es := fill(t, db, New(db), 3)
			db, l := reopenAfter(t, db, c.fn)
			v, err := l.Verify(nil)
			if err != nil {
				t.Fatal(err)
			}
			expectBad(t, v, 0, "the entries' ids cannot be derived")
			if _, err := l.Query(Filter{}, 10, 0); err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("Query: %v", err)
			}
			if err := l.Each(func(*Entry) bool { return true }); err == nil {
				t.Error("Each without a salt succeeded")
			}
			if _, err := commitAppend(t, db, l, t0, Record{Operation: OpTaskStarted}); err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("Append drew a new salt over a log that had one: %v", err)
			}
			got, err := l.Get(es[0].ID)
			if got != nil || (name == "corrupt") != (err != nil) {
				t.Errorf("Get: %+v %v", got, err)
			}
		})
	}
	// An empty log has no salt, and needs none.
	db := openDB(t, t.TempDir())
	defer db.Close()
	if v, err := New(db).Verify(nil); err != nil || !v.Valid {
		t.Fatalf("verify of an empty log: %+v %v", v, err)
	}
}

// ------------------------------------------------------------------ layout

// auditKeys counts the audit space's keys by their kind letter.
func auditKeys(t *testing.T, db *storage.DB) map[string]int {
	t.Helper()
	out := map[string]int{}
	err := db.View(func(r *storage.Reader) error {
		return r.Scan(storage.SpaceAudit.Prefix(), false, func(k, _ []byte) (bool, error) {
			out[string(k[1])]++
			return true, nil
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// One key per Append, one index key per agent and task of a block, tree
// nodes from level 4 only, and no id index.
func TestStorageLayout(t *testing.T) {
	db := openDB(t, t.TempDir())
	defer db.Close()
	l := New(db)
	task := func(op, agent, task string) Record {
		return Record{Operation: op, AgentURN: agent, Details: map[string]any{"task_id": task}}
	}
	for i := 0; i < 10; i++ { // 10 tasks of 3 entries, one agent and task each
		id := fmt.Sprintf("task-%d", i)
		mustAppend(t, db, l, t0, task(OpTaskStarted, "urn:asap:agent:c", id), task(OpTaskCompleted, "urn:asap:agent:c", id),
			task(OpUsageRecorded, "urn:asap:agent:c", id))
	}
	// Two agents, two tasks and an entry without a task in one block.
	mustAppend(t, db, l, t0, task(OpTaskStarted, "urn:asap:agent:c", "x"), task(OpTaskStarted, "urn:asap:agent:d", "y"),
		Record{Operation: OpSLABreach, AgentURN: "urn:asap:agent:d"})
	want := map[string]int{
		"e": 11,           // blocks
		"i": 10*2 + 2 + 2, // agent and task keys
		"n": 3,            // 4/0, 4/1 and 5/0 over 33 entries
		"h": 1, "s": 1,    // head, salt
	}
	if got := auditKeys(t, db); !reflect.DeepEqual(got, want) {
		t.Fatalf("keys by kind %v, want %v", got, want)
	}
	fill(t, db, l, 31) // 64 entries: 4/0..4/3, 5/0, 5/1, 6/0
	if got := auditKeys(t, db)["n"]; got != 7 {
		t.Fatalf("%d tree nodes over 64 entries, want 7", got)
	}
	err := db.View(func(r *storage.Reader) error {
		for _, id := range []compact.NodeID{compact.NewNodeID(6, 0), compact.NewNodeID(4, 3)} {
			stored, err := r.Get(nodeKey(id))
			if err != nil {
				return err
			}
			// The stored node is the one rehashed from the entries.
			rehashed := rehashFromEntries(t, r, id)
			if !bytes.Equal(stored, rehashed) {
				return fmt.Errorf("node %d/%d is %x, its entries give %x", id.Level, id.Index, stored, rehashed)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// rehashFromEntries is a node's hash from the leaves of its entries, by
// RFC 6962 (refRoot), not by the log's own node().
func rehashFromEntries(t *testing.T, r *storage.Reader, id compact.NodeID) []byte {
	t.Helper()
	var leaves [][]byte
	begin, end := id.Index<<id.Level, (id.Index+1)<<id.Level
	for seq := begin; seq < end; seq++ {
		b, err := blockAt(r, seq)
		if err != nil {
			t.Fatal(err)
		}
		sum := b.chain()[seq-b.first]
		leaves = append(leaves, sum[:])
	}
	return refRoot(leaves)
}

// Every node a proof can ask for, stored or rehashed, is the RFC 6962 hash
// of its entries, over logs of blocks of several entries.
func TestNodesOfMultiEntryBlocks(t *testing.T) {
	db := openDB(t, t.TempDir())
	defer db.Close()
	l := New(db)
	for i := 0; i < 14; i++ { // 42 entries in blocks of 3
		mustAppend(t, db, l, t0.Add(time.Duration(i)*time.Second), Record{Operation: OpTaskStarted}, Record{Operation: OpTaskCompleted},
			Record{Operation: OpUsageRecorded})
	}
	err := db.View(func(r *storage.Reader) error {
		for level := uint(0); level <= 5; level++ {
			for index := uint64(0); (index+1)<<level <= 42; index++ {
				id := compact.NewNodeID(level, index)
				got, err := node(r, id)
				if err != nil {
					return err
				}
				if want := rehashFromEntries(t, r, id); !bytes.Equal(got, want) {
					return fmt.Errorf("node %d/%d = %x, want %x", level, index, got, want)
				}
			}
		}
		// A node past the last entry needs entries the log has not.
		if _, err := node(r, compact.NewNodeID(2, 10)); !errors.Is(err, storage.ErrNotFound) || !strings.Contains(err.Error(), "entry 42") {
			return fmt.Errorf("node 2/10 over 40..43: %v", err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// ------------------------------------------------------------------ Verify over blocks of three

// taskLog appends n tasks of three entries (one block each) and returns
// them.
func taskLog(t *testing.T, db *storage.DB, l *Log, n int) []Entry {
	t.Helper()
	var out []Entry
	for i := 0; i < n; i++ {
		d := map[string]any{"task_id": fmt.Sprintf("task-%d", i)}
		out = append(out, mustAppend(t, db, l, t0.Add(time.Duration(i)*time.Second),
			Record{Operation: OpTaskStarted, AgentURN: "urn:asap:agent:c", Details: d},
			Record{Operation: OpTaskCompleted, AgentURN: "urn:asap:agent:c", Details: d},
			Record{Operation: OpUsageRecorded, AgentURN: "urn:asap:agent:c", Details: d})...)
	}
	return out
}

// Inside a block, the stored tags name the entry an edit broke, as the
// stored hashes did when each entry had its own key; between blocks, the
// stored prev hash and the keys catch what was moved, dropped or added.
func TestVerifyBlocksOfSeveralEntries(t *testing.T) {
	move := func(from, to uint64) func(txn *badger.Txn) error {
		return func(txn *badger.Txn) error {
			v, err := rawGet(txn, blockKey(from))
			if err != nil {
				return err
			}
			return txn.Set(blockKey(to), v)
		}
	}
	for _, c := range []struct {
		name   string
		tamper func(txn *badger.Txn) error
		seq    uint64
		reason string
	}{
		{"details of a middle entry", editBlock(6, func(b *block) { b.items[1].details = []byte(`{"task_id":"task-x"}`) }), 7, "entry 7's hash does not match its content"},
		{"operation of a last entry", editBlock(6, func(b *block) { b.items[2].op = OpTaskFailed }), 8, "entry 8's hash does not match its content"},
		{"agent of a first entry", editBlock(6, func(b *block) { b.items[0].agent = "urn:asap:agent:x" }), 6, "entry 6's hash does not match its content"},
		{"timestamp of a block", editBlock(6, func(b *block) { b.ts = "2026-03-01T10:00:02.000001Z" }), 6, "entry 6's hash does not match its content"},
		{"a stored tag", editBlock(6, func(b *block) { b.items[1].tag[3] ^= 1 }), 7, "entry 7's hash does not match its content"},
		{"the last entry of the log", editBlock(12, func(b *block) { b.items[2].details = []byte(`{}`) }), 14, "entry 14's hash does not match its content"},
		{"an entry dropped from a block", editBlock(6, func(b *block) { b.items = b.items[:2] }), 8, "entry 8 is missing"},
		{"an entry added to a block", editBlock(6, func(b *block) { b.items = append(b.items, b.items[2]) }), 9, "entry 9's hash does not match its content"},
		{"a block's prev hash", editBlock(9, func(b *block) { b.prev[0] ^= 1 }), 9, "entry 9 does not chain to entry 8 (prev_hash)"},
		{"a block deleted", func(txn *badger.Txn) error { return txn.Delete(blockKey(6)) }, 6, "entry 6 is missing"},
		{"a block inserted inside another", move(6, 7), 7, "a block at entry 7 overlaps the entries before it"},
		{"two blocks swapped", func(txn *badger.Txn) error {
			a, _ := rawGet(txn, blockKey(3))
			b, _ := rawGet(txn, blockKey(6))
			if err := txn.Set(blockKey(3), b); err != nil {
				return err
			}
			return txn.Set(blockKey(6), a)
		}, 3, "entry 3 does not chain to entry 2 (prev_hash)"},
		{"s2 value cut short", func(txn *badger.Txn) error {
			v, _ := rawGet(txn, blockKey(9))
			return txn.Set(blockKey(9), v[:len(v)-3])
		}, 9, "entry 9 is not a readable entry"},
		{"not s2 at all", func(txn *badger.Txn) error { return txn.Set(blockKey(9), []byte("{}")) }, 9, "entry 9 is not a readable entry"},
		{"a malformed block key", func(txn *badger.Txn) error { return txn.Set(append(blockPrefix, 'x'), []byte("{}")) }, 15, "a block key after entry 14 is malformed"},
	} {
		t.Run(c.name, func(t *testing.T) {
			db := openDB(t, t.TempDir())
			taskLog(t, db, New(db), 5)
			_, l := reopenAfter(t, db, c.tamper)
			v, err := l.Verify(nil)
			if err != nil {
				t.Fatal(err)
			}
			expectBad(t, v, c.seq, c.reason)
		})
	}
}

// A tree node stored wrong is caught where it is first built, and Verify
// names the first entry below it.
func TestVerifyChecksEveryStoredNode(t *testing.T) {
	for _, id := range []compact.NodeID{compact.NewNodeID(4, 0), compact.NewNodeID(4, 2), compact.NewNodeID(5, 0), compact.NewNodeID(5, 1), compact.NewNodeID(6, 0)} {
		t.Run(fmt.Sprintf("%d/%d", id.Level, id.Index), func(t *testing.T) {
			v := verified(t, 70, nil, nil, func(txn *badger.Txn) error { return txn.Set(nodeKey(id), make([]byte, 32)) })
			first := id.Index << id.Level
			expectBad(t, v, first, fmt.Sprintf("the tree's node %d/%d does not match entries %d to %d", id.Level, id.Index, first, first+1<<id.Level-1))
		})
	}
}

// Reads of a multi-entry log: Get finds every entry, Each and Query give
// them whole, proofs verify.
func TestReadsOfBlocksOfSeveralEntries(t *testing.T) {
	db := openDB(t, t.TempDir())
	defer db.Close()
	l := New(db)
	es := taskLog(t, db, l, 6)
	for _, want := range es {
		got, err := l.Get(want.ID)
		if err != nil || got == nil || !reflect.DeepEqual(*got, want) {
			t.Fatalf("Get(%s) = %+v %v, want %+v", want.ID, got, err, want)
		}
	}
	var all []Entry
	if err := l.Each(func(e *Entry) bool { all = append(all, *e); return true }); err != nil || !reflect.DeepEqual(all, es) {
		t.Fatalf("Each: %v", err)
	}
	got, err := l.Query(Filter{TaskID: "task-4"}, 10, 1)
	if err != nil || !reflect.DeepEqual(got, es[13:15]) {
		t.Fatalf("task-4 from offset 1: %v %v", seqs(got), err)
	}
	if got, _ := l.Query(Filter{AgentURN: "urn:asap:agent:c", Operation: OpUsageRecorded}, 2, 1); !reflect.DeepEqual(seqs(got), []uint64{5, 8}) {
		t.Fatalf("usage of c from offset 1: %v", seqs(got))
	}
	if got, _ := l.Query(Filter{Start: t0.Add(2 * time.Second), End: t0.Add(3 * time.Second)}, 10, 0); !reflect.DeepEqual(seqs(got), []uint64{6, 7, 8, 9, 10, 11}) {
		t.Fatalf("window: %v", seqs(got))
	}
	if v, err := l.Verify(nil); err != nil || !v.Valid || v.Size != 18 {
		t.Fatalf("verify %+v %v", v, err)
	}
}

// A checkpoint key that is not one is an error, not a crash.
func TestMalformedCheckpointKey(t *testing.T) {
	db := openDB(t, t.TempDir())
	fill(t, db, New(db), 2)
	_, l := reopenAfter(t, db, func(txn *badger.Txn) error { return txn.Set(append(checkpointsPref, 'x'), []byte("note")) })
	if _, _, err := l.LatestCheckpoint(); err == nil || !strings.Contains(err.Error(), "malformed key") {
		t.Fatalf("LatestCheckpoint: %v", err)
	}
	if _, err := l.Verify(nil); err == nil || !strings.Contains(err.Error(), "malformed key") {
		t.Fatalf("Verify: %v", err)
	}
}

func TestAppendOverCorruptHeadHash(t *testing.T) {
	for name, hash := range map[string]string{"not hex": "zz", "short": "abcd", "empty after entries": ""} {
		t.Run(name, func(t *testing.T) {
			db := openDB(t, t.TempDir())
			fill(t, db, New(db), 2)
			db, l := reopenAfter(t, db, editHead(func(h *head) { h.Hash = hash }))
			if _, err := commitAppend(t, db, l, t0, Record{Operation: OpTaskStarted}); err == nil || !strings.Contains(err.Error(), "head is corrupt") {
				t.Fatalf("Append: %v", err)
			}
		})
	}
	// An empty log's head names no hash.
	db := openDB(t, t.TempDir())
	db, l := reopenAfter(t, db, editHeadRaw(head{Hash: strings.Repeat("ab", 32)}))
	if _, err := commitAppend(t, db, l, t0, Record{Operation: OpTaskStarted}); err == nil || !strings.Contains(err.Error(), "head is corrupt") {
		t.Fatalf("Append: %v", err)
	}
}

func editHeadRaw(h head) func(txn *badger.Txn) error {
	return func(txn *badger.Txn) error {
		return txn.Set(headKey, h.encode())
	}
}

// The head round-trips, and a head cut short before its range is
// refused rather than read as another head.
func TestHeadEncoding(t *testing.T) {
	h := head{Size: 300, Hash: strings.Repeat("ab", 32), Last: "2026-12-03T06:00:00.000001Z",
		Range: [][]byte{bytes.Repeat([]byte{1}, 32), bytes.Repeat([]byte{2}, 32), {}}}
	enc := h.encode()
	get := func(b []byte) func([]byte) ([]byte, error) {
		return func([]byte) ([]byte, error) { return b, nil }
	}
	got, err := readHead(get(enc))
	if err != nil || !reflect.DeepEqual(*got, h) {
		t.Fatalf("round trip: %+v %v, want %+v", got, err, h)
	}
	if _, err := readHead(get(nil)); err == nil || !strings.Contains(err.Error(), "no size") {
		t.Fatalf("empty head: %v", err)
	}
	fixed := len(enc) - 3*1 - 64 // the range starts here
	for n := 0; n < fixed; n++ {
		if _, err := readHead(get(enc[:n])); err == nil || !strings.Contains(err.Error(), "head is corrupt") {
			t.Fatalf("head cut to %d of %d bytes: %v", n, len(enc), err)
		}
	}
}

// The block size limit is inclusive: a block of exactly maxBlockSize
// bytes is stored and read back; one byte more is refused on both sides.
func TestBlockOfExactlyTheLimit(t *testing.T) {
	defer func(n int) { maxBlockSize = n }(maxBlockSize)
	b := &block{first: 0, ts: "2026-12-03T06:00:00.000001Z", items: []item{{op: OpTaskStarted, agent: "urn:asap:agent:c", details: []byte(`{"n":"xxxxxxxxxx"}`)}}}
	raw := appendBytes(appendBytes(nil, nil), []byte(b.ts))
	raw = append(raw, opCode(OpTaskStarted))
	raw = appendBytes(raw, []byte(b.items[0].agent))
	raw = appendBytes(raw, b.items[0].details)
	raw = append(raw, make([]byte, tagSize)...)
	maxBlockSize = len(raw)
	val, err := b.encode()
	if err != nil {
		t.Fatalf("a block of exactly the limit (%d bytes): %v", maxBlockSize, err)
	}
	if got, err := DecompressBlock(val); err != nil || !bytes.Equal(got, raw) {
		t.Fatalf("reading a block of exactly the limit: %v", err)
	}
	maxBlockSize--
	if _, err := b.encode(); err == nil {
		t.Fatal("a block one byte over the limit was encoded")
	}
	if _, err := DecompressBlock(val); err == nil {
		t.Fatal("a block one byte over the limit was read")
	}
}
