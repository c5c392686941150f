package metering

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/oklog/ulid/v2"

	"github.com/asap-sidecar/asap-sidecar/caddymodule/wire"
	"github.com/asap-sidecar/asap-sidecar/storage"
)

// ---------------------------------------------------------------- Put, dedup

func TestStoreAccessors(t *testing.T) {
	db := openDB(t)
	s := New(db, 90*time.Minute)
	if s.DB() != db {
		t.Error("DB() is not the database given to New")
	}
	if s.Retention() != 90*time.Minute {
		t.Errorf("Retention() = %v", s.Retention())
	}
	if New(db, 0).Retention() != 0 {
		t.Error("zero retention not kept")
	}
}

func TestPutDedup(t *testing.T) {
	s := New(openDB(t), 0)
	e := validEvent()
	if !put(t, s, e, "env-1") {
		t.Fatal("first Put: not recorded")
	}
	if put(t, s, e, "env-1") {
		t.Fatal("second Put of the same agent and dedup: recorded again")
	}
	// Same dedup id, another agent: a different envelope stream.
	other := e
	other.AgentID = agentB
	if !put(t, s, other, "env-1") {
		t.Fatal("same dedup id for another agent: not recorded")
	}
	if put(t, s, other, "env-1") {
		t.Fatal("agent B retry: recorded again")
	}
	// A different dedup id for the same agent is a different call.
	if !put(t, s, e, "env-2") {
		t.Fatal("new dedup id: not recorded")
	}
	// An empty dedup never deduplicates.
	for i := 0; i < 3; i++ {
		if !put(t, s, e, "") {
			t.Fatalf("empty dedup, Put %d: not recorded", i)
		}
	}
	got, err := s.Query(Filter{}, 100, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 6 {
		t.Fatalf("stored %d events, want 6 (env-1 A, env-1 B, env-2 A, three without dedup)", len(got))
	}
	byAgent, _ := s.Query(Filter{AgentID: agentB}, 100, 0)
	if len(byAgent) != 1 {
		t.Errorf("agent B has %d events, want 1", len(byAgent))
	}
}

func TestPutNormalisesTimestampToUTC(t *testing.T) {
	s := New(openDB(t), 0)
	e := validEvent()
	e.Timestamp = mustTime("2026-03-01T08:30:00.25+05:30")
	ok := false
	if err := commit(t, s.DB(), func(tx *storage.Tx) error {
		var err error
		ok, err = s.Put(tx, &e, "")
		return err
	}); err != nil || !ok {
		t.Fatalf("put: %v %v", ok, err)
	}
	if e.Timestamp.Location() != time.UTC {
		t.Errorf("Put left the caller's timestamp in %v", e.Timestamp.Location())
	}
	got, err := s.Query(Filter{}, 10, 0)
	if err != nil || len(got) != 1 {
		t.Fatalf("query: %v %v", got, err)
	}
	want := time.Date(2026, 3, 1, 3, 0, 0, 250_000_000, time.UTC)
	if !got[0].Timestamp.Equal(want) || got[0].Timestamp.Location() != time.UTC {
		t.Errorf("stored timestamp %v, want %v in UTC", got[0].Timestamp, want)
	}
}

// The event, its three index copies and the dedup marker are written by one
// Put in one transaction: all of them, with the key layout the package
// documents, and the marker holding the call's digest and nothing else.
func TestPutKeyLayout(t *testing.T) {
	s := New(openDB(t), 0)
	e := fx["e1"]
	if err := commit(t, s.DB(), func(tx *storage.Tx) error {
		ok, err := s.PutCall(tx, &e, "env-layout", []byte("digest-layout"))
		if !ok {
			t.Error("not recorded")
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	type kv struct{ k, v []byte }
	var all []kv
	if err := s.DB().View(func(r *storage.Reader) error {
		return r.Scan(nil, false, func(k, v []byte) (bool, error) {
			if k[0] == byte(storage.SpaceMeta) {
				return true, nil // the database's own bookkeeping (format version)
			}
			all = append(all, kv{append([]byte{}, k...), append([]byte{}, v...)})
			return true, nil
		})
	}); err != nil {
		t.Fatal(err)
	}
	if len(all) != 5 {
		for _, x := range all {
			t.Logf("key %q", x.k)
		}
		t.Fatalf("Put wrote %d keys, want 5 (event, 3 index keys, dedup marker)", len(all))
	}
	var primary []byte
	for _, x := range all {
		if x.k[0] == 'u' {
			primary = x.k
		}
	}
	if len(primary) != 17 {
		t.Fatalf("primary key %q: want 'u' + 16-byte ULID", primary)
	}
	var id ulid.ULID
	copy(id[:], primary[1:])
	if id.Time() != ulid.Timestamp(e.Timestamp) {
		t.Errorf("ULID time %d, want the event's %d", id.Time(), ulid.Timestamp(e.Timestamp))
	}
	marker := storage.SpaceUsageSeen.SizedString(agentA, consC1, "env-layout")
	want := map[string]bool{
		string(primary):                  false,
		idx('a', agentA) + string(id[:]): false,
		idx('c', consC1) + string(id[:]): false,
		idx('t', "t1") + string(id[:]):   false,
		string(marker):                   false,
	}
	var stored Event
	for _, x := range all {
		if _, ok := want[string(x.k)]; !ok {
			t.Errorf("unexpected key %q", x.k)
			continue
		}
		want[string(x.k)] = true
		if x.k[0] == 'w' {
			if string(x.v) != "digest-layout" {
				t.Errorf("dedup marker value %q, want the call's digest", x.v)
			}
			continue
		}
		if x.k[0] == 'v' {
			if len(x.v) != 0 {
				t.Errorf("index entry %q has a value (%d bytes); indexes are keys only", x.k, len(x.v))
			}
			continue
		}
		var err error
		if stored, err = decodeEvent(id, x.v); err != nil {
			t.Fatalf("value of %q: %v", x.k, err)
		}
	}
	for k, seen := range want {
		if !seen {
			t.Errorf("missing key %q", k)
		}
	}
	e.Timestamp = e.Timestamp.UTC()
	eq(t, "stored event", stored, e)
}

// The marker and the event land in the same commit: a commit whose function
// fails leaves neither, and a second Put of the same dedup inside one commit
// function is refused.
func TestPutDedupWithinOneCommit(t *testing.T) {
	s := New(openDB(t), 0)
	e := validEvent()

	boom := errors.New("abort")
	err := commit(t, s.DB(), func(tx *storage.Tx) error {
		ok, err := s.Put(tx, &e, "env-1")
		if err != nil || !ok {
			t.Errorf("staged Put: %v %v", ok, err)
		}
		if _, err := tx.Get(dedupKey(e.AgentID, e.ConsumerID, "env-1")); err != nil {
			t.Errorf("marker not visible to the same transaction: %v", err)
		}
		return boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("commit: %v", err)
	}
	if got, _ := s.Query(Filter{}, 10, 0); len(got) != 0 {
		t.Fatalf("failed commit left %d events", len(got))
	}
	if st, _ := s.Stats(); st.TotalEvents != 0 {
		t.Fatalf("failed commit left %d events in stats", st.TotalEvents)
	}

	var first, second, third bool
	if err := commit(t, s.DB(), func(tx *storage.Tx) error {
		var err error
		a, b, c := e, e, e
		b.TaskID, c.TaskID = "retry", "other-agent"
		c.AgentID = agentB
		if first, err = s.Put(tx, &a, "env-1"); err != nil {
			return err
		}
		if second, err = s.Put(tx, &b, "env-1"); err != nil {
			return err
		}
		third, err = s.Put(tx, &c, "env-1")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if !first || second || !third {
		t.Fatalf("in one commit: first %v (want true), same dedup again %v (want false), other agent %v (want true)", first, second, third)
	}
	got, err := s.Query(Filter{}, 10, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].TaskID == "retry" || got[1].TaskID == "retry" {
		t.Fatalf("stored %+v, want the first and the other agent's only", got)
	}
	// The marker of the failed commit was never written, the one of the
	// successful commit was: a later Put is refused.
	if put(t, s, e, "env-1") {
		t.Fatal("marker of the committed Put missing")
	}
}

// Writers sharing a group commit see each other's markers: concurrent
// retries of one envelope are recorded once.
func TestPutDedupConcurrent(t *testing.T) {
	s := New(openDB(t), 0)
	const n = 32
	var wg sync.WaitGroup
	var mu sync.Mutex
	recorded := 0
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			e := validEvent()
			e.TaskID = fmt.Sprintf("try-%d", i)
			var ok bool
			if err := commit(t, s.DB(), func(tx *storage.Tx) error {
				var err error
				ok, err = s.Put(tx, &e, "same-envelope")
				return err
			}); err != nil {
				t.Error(err)
				return
			}
			if ok {
				mu.Lock()
				recorded++
				mu.Unlock()
			}
		}(i)
	}
	wg.Wait()
	if recorded != 1 {
		t.Fatalf("%d of %d concurrent Puts of one envelope reported recorded, want 1", recorded, n)
	}
	if got, _ := s.Query(Filter{}, 100, 0); len(got) != 1 {
		t.Fatalf("stored %d events, want 1", len(got))
	}
}

// A timestamp a ULID cannot hold makes Put fail without staging anything.
func TestPutRefusesPreEpochTimestamp(t *testing.T) {
	s := New(openDB(t), 0)
	e := validEvent()
	e.Timestamp = mustTime("1969-12-31T23:59:59Z")
	err := commit(t, s.DB(), func(tx *storage.Tx) error {
		ok, err := s.Put(tx, &e, "env-old")
		if ok {
			t.Error("Put reported recorded")
		}
		return err
	})
	if !errors.Is(err, ulid.ErrBigTime) {
		t.Fatalf("want ulid.ErrBigTime, got %v", err)
	}
	if st, _ := s.Stats(); st.TotalEvents != 0 {
		t.Fatal("something was stored")
	}
	e.Timestamp = mustTime("1970-01-01T00:00:00Z")
	if !put(t, s, e, "env-old") {
		t.Fatal("epoch itself refused, or the marker of the failed Put survived")
	}
}

// A timestamp the API could not write back (after year 9999, yet one a
// ULID holds) makes Put fail without staging anything.
func TestPutRefusesYearsAfter9999(t *testing.T) {
	s := New(openDB(t), 0)
	e := validEvent()
	e.Timestamp = time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC)
	err := commit(t, s.DB(), func(tx *storage.Tx) error {
		ok, err := s.Put(tx, &e, "env-late")
		if ok {
			t.Error("Put reported recorded")
		}
		return err
	})
	if err == nil || !strings.Contains(err.Error(), "10000") {
		t.Fatalf("want an error naming the year, got %v", err)
	}
	e.Timestamp = mustTime("9999-12-31T23:59:59.999999999Z")
	if !put(t, s, e, "env-late") {
		t.Fatal("year 9999 refused, or the marker of the failed Put survived")
	}
	got, err := s.Query(Filter{}, 10, 0)
	if err != nil || len(got) != 1 || !got[0].Timestamp.Equal(wire.Time(e.Timestamp)) {
		t.Fatalf("%v %v", got, err)
	}
}

// ---------------------------------------------------------------- Filter, Each, Query

// idx is the documented prefix of value's index range of kind.
func idx(kind byte, value string) string {
	h := sha256.Sum256([]byte(value))
	return "v" + string(kind) + string(h[:8])
}

func TestFilterPrefixPicksNarrowestIndex(t *testing.T) {
	start, end := mustTime("2026-01-01T00:00:00Z"), mustTime("2026-02-01T00:00:00Z")
	cases := []struct {
		name string
		f    Filter
		want string
	}{
		{"task beats consumer and agent", Filter{TaskID: "t1", ConsumerID: consC1, AgentID: agentA, Start: start, End: end}, idx('t', "t1")},
		{"task alone", Filter{TaskID: "t1"}, idx('t', "t1")},
		{"consumer beats agent", Filter{ConsumerID: consC1, AgentID: agentA}, idx('c', consC1)},
		{"consumer alone", Filter{ConsumerID: consC1, End: end}, idx('c', consC1)},
		{"agent", Filter{AgentID: agentA, Start: start}, idx('a', agentA)},
		{"time only: primary", Filter{Start: start, End: end}, "u"},
		{"nothing: primary", Filter{}, "u"},
	}
	for _, c := range cases {
		if got := c.f.prefix(); string(got) != c.want {
			t.Errorf("%s: prefix %q, want %q", c.name, got, c.want)
		}
	}
	if string(storage.SpaceUsage.Prefix()) != "u" || string(indexPrefix(idxAgent, "x")) != idx('a', "x") {
		t.Error("key spaces moved")
	}
}

func TestQueryFilters(t *testing.T) {
	s := New(openDB(t), 0)
	seed(t, s)
	ts := func(n string) time.Time { return fx[n].Timestamp }
	cases := []struct {
		name string
		f    Filter
		want []string
	}{
		{"all, oldest first", Filter{}, chrono},
		{"agent", Filter{AgentID: agentA}, []string{"e1", "e2", "e5", "e7"}},
		{"agent B", Filter{AgentID: agentB}, []string{"e3", "e8", "e4", "e6"}},
		{"consumer", Filter{ConsumerID: consC2}, []string{"e2", "e8", "e4", "e7"}},
		{"task shared by two events", Filter{TaskID: "t1"}, []string{"e1", "e8"}},
		{"task", Filter{TaskID: "t6"}, []string{"e6"}},
		{"start inclusive at exact timestamp", Filter{Start: ts("e3")}, []string{"e3", "e8", "e4", "e5", "e6", "e7"}},
		{"end inclusive at exact timestamp", Filter{End: ts("e3")}, []string{"e1", "e2", "e3"}},
		{"start = end = one event", Filter{Start: ts("e3"), End: ts("e3")}, []string{"e3"}},
		{"start at sub-second timestamp", Filter{Start: ts("e2")}, []string{"e2", "e3", "e8", "e4", "e5", "e6", "e7"}},
		{"start 1ns after (same ms)", Filter{Start: ts("e2").Add(time.Nanosecond)}, []string{"e3", "e8", "e4", "e5", "e6", "e7"}},
		{"end at microsecond timestamp", Filter{End: ts("e6")}, []string{"e1", "e2", "e3", "e8", "e4", "e5", "e6"}},
		{"end 1µs before (same ms)", Filter{End: ts("e6").Add(-time.Microsecond)}, []string{"e1", "e2", "e3", "e8", "e4", "e5"}},
		{"start in another zone", Filter{Start: mustTime("2026-12-31T11:00:00+01:00")}, []string{"e5", "e6", "e7"}},
		{"window", Filter{Start: mustTime("2026-02-07T00:00:00Z"), End: mustTime("2026-02-09T23:59:59Z")}, []string{"e3", "e8", "e4"}},
		{"end before everything", Filter{End: mustTime("2026-01-01T00:00:00Z")}, []string{}},
		{"start after everything", Filter{Start: mustTime("2028-01-01T00:00:00Z")}, []string{}},
		{"start after end", Filter{Start: mustTime("2027-01-01T00:00:00Z"), End: mustTime("2026-01-01T00:00:00Z")}, []string{}},
		{"pre-epoch start: no seek, everything", Filter{Start: mustTime("1960-01-01T00:00:00Z")}, chrono},
		{"pre-epoch end: nothing", Filter{End: mustTime("1960-01-01T00:00:00Z")}, []string{}},
		{"agent + consumer", Filter{AgentID: agentB, ConsumerID: consC2}, []string{"e8", "e4"}},
		{"agent + window", Filter{AgentID: agentA, Start: mustTime("2026-12-01T00:00:00Z"), End: mustTime("2027-01-02T00:00:00Z")}, []string{"e5"}},
		{"task + agent", Filter{TaskID: "t1", AgentID: agentB}, []string{"e8"}},
		{"task + consumer", Filter{TaskID: "t1", ConsumerID: consC1}, []string{"e1"}},
		{"task + start", Filter{TaskID: "t1", Start: ts("e1").Add(time.Millisecond)}, []string{"e8"}},
		{"task + end", Filter{TaskID: "t1", End: ts("e1")}, []string{"e1"}},
		{"consumer + end", Filter{ConsumerID: consC1, End: ts("e5")}, []string{"e1", "e3", "e5"}},
		{"consumer + start + end", Filter{ConsumerID: consC1, Start: ts("e3"), End: ts("e6")}, []string{"e3", "e5", "e6"}},
		{"every filter", Filter{AgentID: agentA, ConsumerID: consC1, TaskID: "t5", Start: ts("e5"), End: ts("e5")}, []string{"e5"}},
		{"agent + consumer with no common event", Filter{AgentID: agentA, ConsumerID: consC1, TaskID: "t7"}, []string{}},
		{"unknown agent", Filter{AgentID: "urn:asap:agent:nobody"}, []string{}},
		{"unknown consumer", Filter{ConsumerID: "urn:asap:agent:nobody"}, []string{}},
		{"unknown task", Filter{TaskID: "t99"}, []string{}},
		{"agent id prefix is not a match", Filter{AgentID: "urn:asap:agent:alph"}, []string{}},
		{"task id prefix is not a match", Filter{TaskID: "t"}, []string{}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := s.Query(c.f, 1000, 0)
			if err != nil {
				t.Fatal(err)
			}
			if got == nil {
				t.Fatal("Query returned a nil slice")
			}
			eq(t, "Query", names(got), c.want)
			var each []string
			if err := s.Each(c.f, func(e *Event) bool { each = append(each, e.EnvelopeID); return true }); err != nil {
				t.Fatal(err)
			}
			if len(each) == 0 {
				each = []string{}
			}
			eq(t, "Each", each, c.want)
		})
	}
}

// An index range may name an event of another id (ids sharing a hash):
// queries answer from the event itself, never from the range it was in.
func TestIndexEntriesOfOtherIDsAreFilteredOut(t *testing.T) {
	s := New(openDB(t), 0)
	seed(t, s)
	var e3 ulid.ULID // agent B, consumer C1, task t3
	if err := s.DB().View(func(r *storage.Reader) error {
		return r.Scan(storage.SpaceUsage.Prefix(), false, func(k, v []byte) (bool, error) {
			e, err := decodeEvent(idOf(k), v)
			if e.EnvelopeID == "e3" {
				e3 = idOf(k)
			}
			return true, err
		})
	}); err != nil {
		t.Fatal(err)
	}
	if err := commit(t, s.DB(), func(tx *storage.Tx) error {
		tx.Set(indexKey(idxAgent, agentA, e3), nil)
		tx.Set(indexKey(idxConsumer, consC2, e3), nil)
		tx.Set(indexKey(idxTask, "t1", e3), nil)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		f    Filter
		want []string
	}{
		{Filter{AgentID: agentA}, []string{"e1", "e2", "e5", "e7"}},
		{Filter{AgentID: agentA, Start: fx["e2"].Timestamp, End: fx["e5"].Timestamp}, []string{"e2", "e5"}},
		{Filter{ConsumerID: consC2}, []string{"e2", "e8", "e4", "e7"}},
		{Filter{TaskID: "t1"}, []string{"e1", "e8"}},
	} {
		got, err := s.Query(c.f, 100, 0)
		if err != nil {
			t.Fatal(err)
		}
		eq(t, fmt.Sprintf("%+v", c.f), names(got), c.want)
	}
}

// Index keys are the same size however long the ids; a dedup marker's key
// is its parts, readable.
func TestKeysDoNotGrowWithIDs(t *testing.T) {
	s := New(openDB(t), 0)
	e := validEvent()
	long := strings.Repeat("x", 256)
	e.TaskID, e.AgentID, e.ConsumerID = long, "urn:asap:agent:"+long, "urn:asap:agent:"+long
	if !put(t, s, e, long) {
		t.Fatal("not recorded")
	}
	sizes := map[byte][]int{}
	if err := s.DB().View(func(r *storage.Reader) error {
		return r.Scan(nil, false, func(k, _ []byte) (bool, error) {
			if k[0] == byte(storage.SpaceMeta) {
				return true, nil // the database's own bookkeeping (format version)
			}
			sizes[k[0]] = append(sizes[k[0]], len(k))
			return true, nil
		})
	}); err != nil {
		t.Fatal(err)
	}
	eq(t, "key sizes by space", sizes, map[byte][]int{'u': {17}, 'v': {26, 26, 26}, 'w': {len(storage.SpaceUsageSeen.SizedString(e.AgentID, e.ConsumerID, long))}})
}

func TestQueryReturnsFullEvents(t *testing.T) {
	s := New(openDB(t), 0)
	seed(t, s)
	for _, f := range []Filter{{}, {AgentID: agentA}, {ConsumerID: consC1}, {TaskID: "t1"}} {
		got, err := s.Query(f, 1, 0)
		if err != nil || len(got) != 1 {
			t.Fatalf("%+v: %v %v", f, got, err)
		}
		want := fx["e1"]
		want.Timestamp = want.Timestamp.UTC()
		eq(t, fmt.Sprintf("first event for %+v", f), got[0], want)
	}
	got, _ := s.Query(Filter{TaskID: "t1"}, 1, 0)
	if b := jsonOf(t, got[0]); b != `{"task_id":"t1","agent_id":"urn:asap:agent:alpha","consumer_id":"urn:asap:agent:c1",`+
		`"tokens_in":10,"tokens_out":20,"duration_ms":100,"api_calls":1,"timestamp":"2026-02-06T09:00:00Z",`+
		`"status":"completed","payload_type":"task.request","envelope_id":"e1","delegation_id":"jti-1","root_issuer":"urn:asap:agent:root"}` {
		t.Errorf("JSON %s", b)
	}
	got, _ = s.Query(Filter{TaskID: "t3"}, 1, 0)
	if b := jsonOf(t, got[0]); b != `{"task_id":"t3","agent_id":"urn:asap:agent:beta","consumer_id":"urn:asap:agent:c1",`+
		`"tokens_in":100,"tokens_out":0,"duration_ms":1000,"api_calls":0,"timestamp":"2026-02-07T00:00:00Z","envelope_id":"e3"}` {
		t.Errorf("JSON %s", b)
	}
}

func TestQueryPagination(t *testing.T) {
	s := New(openDB(t), 0)
	seed(t, s)
	for _, f := range []Filter{{}, {AgentID: agentB}, {ConsumerID: consC1, Start: fx["e3"].Timestamp}} {
		all, err := s.Query(f, 1000, 0)
		if err != nil {
			t.Fatal(err)
		}
		for size := 1; size <= len(all)+1; size++ {
			var joined []string
			seen := map[string]bool{}
			for off := 0; ; off += size {
				page, err := s.Query(f, size, off)
				if err != nil {
					t.Fatal(err)
				}
				if len(page) > size {
					t.Fatalf("%+v limit %d offset %d: %d events", f, size, off, len(page))
				}
				if len(page) == 0 {
					if page == nil {
						t.Fatal("empty page is nil")
					}
					break
				}
				for _, n := range names(page) {
					if seen[n] {
						t.Fatalf("%+v limit %d: %s on two pages", f, size, n)
					}
					seen[n] = true
				}
				joined = append(joined, names(page)...)
				if len(page) < size {
					break
				}
			}
			eq(t, fmt.Sprintf("%+v pages of %d", f, size), joined, names(all))
		}
	}
	page, _ := s.Query(Filter{}, 3, 0)
	eq(t, "page 1", names(page), []string{"e1", "e2", "e3"})
	page, _ = s.Query(Filter{}, 3, 3)
	eq(t, "page 2", names(page), []string{"e8", "e4", "e5"})
	page, _ = s.Query(Filter{}, 3, 6)
	eq(t, "page 3", names(page), []string{"e6", "e7"})
	page, _ = s.Query(Filter{AgentID: agentA}, 2, 1)
	eq(t, "agent A limit 2 offset 1", names(page), []string{"e2", "e5"})
	page, _ = s.Query(Filter{}, 10, 8)
	if page == nil || len(page) != 0 {
		t.Errorf("offset past the end: %#v", page)
	}
}

func TestQueryEmptyStore(t *testing.T) {
	s := New(openDB(t), 0)
	for _, f := range []Filter{{}, {AgentID: agentA}, {ConsumerID: consC1}, {TaskID: "t1"}, {Start: time.Now(), End: time.Now()}} {
		got, err := s.Query(f, 100, 0)
		if err != nil {
			t.Fatal(err)
		}
		if got == nil || len(got) != 0 {
			t.Errorf("%+v: %#v, want a non-nil empty slice", f, got)
		}
		if b := jsonOf(t, got); b != "[]" {
			t.Errorf("JSON %s", b)
		}
	}
}

func TestQueryLimitZeroReturnsNothing(t *testing.T) {
	s := New(openDB(t), 0)
	seed(t, s)
	for _, limit := range []int{0, -1} {
		if got, _ := s.Query(Filter{}, limit, 0); len(got) != 0 {
			t.Errorf("limit %d: %d events", limit, len(got))
		}
	}
}

func TestEachStopsWhenFnReturnsFalse(t *testing.T) {
	s := New(openDB(t), 0)
	seed(t, s)
	calls := 0
	if err := s.Each(Filter{}, func(*Event) bool { calls++; return calls < 3 }); err != nil {
		t.Fatal(err)
	}
	if calls != 3 {
		t.Errorf("fn called %d times after returning false on the 3rd", calls)
	}
}

// Within one millisecond (the ULID's resolution) events come back in
// arrival order; across milliseconds, in timestamp order.
func TestQueryOrdersByMillisecondThenArrival(t *testing.T) {
	s := New(openDB(t), 0)
	late, early, next := validEvent(), validEvent(), validEvent()
	late.TaskID, late.Timestamp = "late", mustTime("2026-01-01T00:00:00.000900Z")
	early.TaskID, early.Timestamp = "early", mustTime("2026-01-01T00:00:00.000100Z")
	next.TaskID, next.Timestamp = "next-ms", mustTime("2026-01-01T00:00:00.001000Z")
	put(t, s, next, "")
	put(t, s, late, "")
	put(t, s, early, "")
	got, _ := s.Query(Filter{}, 10, 0)
	if len(got) != 3 || got[0].TaskID != "late" || got[1].TaskID != "early" || got[2].TaskID != "next-ms" {
		t.Errorf("order %v, want late, early (same ms, arrival order), then next-ms", got)
	}
}

// Corrupt records make reads fail loudly, and show which ones a query
// reads: a time window seeks past older records and stops at the first
// newer one, so garbage outside the window is never touched.
func TestRangeScansStayInsideTheWindow(t *testing.T) {
	s := New(openDB(t), 24*time.Hour)
	seed(t, s)
	garbage := func(at string, key func(id ulid.ULID) []byte) {
		id := ulid.MustNew(ulid.Timestamp(mustTime(at)), nil)
		if err := commit(t, s.DB(), func(tx *storage.Tx) error {
			tx.Set(key(id), []byte("not json"))
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	garbage("2026-01-15T00:00:00Z", primaryKey)
	garbage("2027-06-01T00:00:00Z", primaryKey)
	garbage("2026-01-15T00:00:00Z", func(id ulid.ULID) []byte { return indexKey(idxAgent, agentA, id) })
	garbage("2027-06-01T00:00:00Z", func(id ulid.ULID) []byte { return indexKey(idxConsumer, consC1, id) })
	// A key too short to end in a ULID is skipped without reading its value.
	if err := commit(t, s.DB(), func(tx *storage.Tx) error {
		tx.Set(indexPrefix(idxTask, "t1"), []byte("not json"))
		tx.Set(append(indexPrefix(idxTask, "t1"), "short"...), []byte("not json"))
		return nil
	}); err != nil {
		t.Fatal(err)
	}

	inside := []Filter{
		{Start: mustTime("2026-02-01T00:00:00Z"), End: mustTime("2027-02-01T00:00:00Z")},
		{AgentID: agentA, Start: mustTime("2026-02-01T00:00:00Z")},
		{ConsumerID: consC1, End: mustTime("2027-02-01T00:00:00Z")},
		{TaskID: "t1"},
		{AgentID: agentB},
		{ConsumerID: consC2},
	}
	for _, f := range inside {
		if _, err := s.Query(f, 100, 0); err != nil {
			t.Errorf("%+v read a record outside its range: %v", f, err)
		}
	}
	got, _ := s.Query(inside[0], 100, 0)
	eq(t, "window", names(got), chrono)
	got, _ = s.Query(Filter{TaskID: "t1"}, 100, 0)
	eq(t, "task t1 next to short keys", names(got), []string{"e1", "e8"})

	for _, f := range []Filter{
		{},
		{Start: mustTime("2026-01-01T00:00:00Z")},
		{End: mustTime("2027-12-01T00:00:00Z")},
		{AgentID: agentA},
		{ConsumerID: consC1},
	} {
		if _, err := s.Query(f, 100, 0); err == nil {
			t.Errorf("%+v: corrupt record inside the range not reported", f)
		}
		if _, err := s.Aggregate(f, ByDay); err == nil {
			t.Errorf("Aggregate %+v: corrupt record not reported", f)
		}
		if _, err := s.Summarize(f); err == nil {
			t.Errorf("Summarize %+v: corrupt record not reported", f)
		}
	}
	if _, err := s.Stats(); err == nil {
		t.Error("Stats: corrupt first record not reported")
	}
	if n, err := s.Purge(mustTime("2030-01-01T00:00:00Z")); err == nil || n != 0 {
		t.Errorf("Purge over a corrupt record: %d, %v", n, err)
	}
}

// ---------------------------------------------------------------- Stats

func TestStats(t *testing.T) {
	db := openDB(t)
	s := New(db, 0)
	st, err := s.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if st.TotalEvents != 0 || st.OldestTimestamp != nil || st.RetentionTTLSeconds != nil {
		t.Errorf("empty: %+v", st)
	}
	if b := jsonOf(t, st); b != `{"total_events":0,"oldest_timestamp":null,"retention_ttl_seconds":null}` {
		t.Errorf("empty JSON %s", b)
	}
	seed(t, s)
	st, err = s.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if b := jsonOf(t, st); b != `{"total_events":8,"oldest_timestamp":"2026-02-06T09:00:00Z","retention_ttl_seconds":null}` {
		t.Errorf("JSON %s", b)
	}
	if st.OldestTimestamp.Location() != time.UTC {
		t.Errorf("oldest in %v", st.OldestTimestamp.Location())
	}
	for _, c := range []struct {
		retention time.Duration
		want      int64
	}{{90 * 24 * time.Hour, 7_776_000}, {time.Hour, 3600}, {1500 * time.Millisecond, 1}, {time.Second, 1}} {
		st, err := New(db, c.retention).Stats()
		if err != nil {
			t.Fatal(err)
		}
		if st.RetentionTTLSeconds == nil || *st.RetentionTTLSeconds != c.want || st.TotalEvents != 8 {
			t.Errorf("retention %v: %+v", c.retention, st)
		}
	}
}

// ---------------------------------------------------------------- Purge

func TestPurgeRemovesOldEventsIndexesAndMarkers(t *testing.T) {
	s := New(openDB(t), 24*time.Hour)
	seed(t, s)
	// now − 24 h = 2027-01-02T00:00:00Z: every event but e7 is older.
	removed, err := s.Purge(mustTime("2027-01-03T00:00:00Z"))
	if err != nil {
		t.Fatal(err)
	}
	if removed != 7 {
		t.Fatalf("removed %d, want 7", removed)
	}
	for _, c := range []struct {
		f    Filter
		want []string
	}{
		{Filter{}, []string{"e7"}},
		{Filter{AgentID: agentA}, []string{"e7"}},
		{Filter{AgentID: agentB}, []string{}},
		{Filter{ConsumerID: consC1}, []string{}},
		{Filter{ConsumerID: consC2}, []string{"e7"}},
		{Filter{TaskID: "t1"}, []string{}},
		{Filter{TaskID: "t6"}, []string{}},
		{Filter{TaskID: "t7"}, []string{"e7"}},
	} {
		got, err := s.Query(c.f, 100, 0)
		if err != nil {
			t.Fatal(err)
		}
		eq(t, fmt.Sprintf("after purge %+v", c.f), names(got), c.want)
	}
	st, _ := s.Stats()
	if st.TotalEvents != 1 || !st.OldestTimestamp.Equal(fx["e7"].Timestamp) {
		t.Errorf("stats after purge: %+v", st)
	}
	// No index entry or marker of a purged event is left behind.
	var keys []string
	if err := s.DB().View(func(r *storage.Reader) error {
		return r.Scan(nil, false, func(k, _ []byte) (bool, error) {
			if k[0] == byte(storage.SpaceMeta) {
				return true, nil // the database's own bookkeeping (format version)
			}
			keys = append(keys, string(k))
			return true, nil
		})
	}); err != nil {
		t.Fatal(err)
	}
	if len(keys) != 5 {
		t.Errorf("keys left: %q, want e7's five", keys)
	}
	// Purged envelopes may be recorded again; the kept one may not.
	for _, n := range []string{"e1", "e6"} {
		if !put(t, s, fx[n], fx[n].EnvelopeID) {
			t.Errorf("%s: dedup marker survived the purge", n)
		}
	}
	if put(t, s, fx["e7"], "e7") {
		t.Error("e7: marker of a kept event lost")
	}
	// Purging again removes the re-recorded old events only.
	if n, err := s.Purge(mustTime("2027-01-03T00:00:00Z")); err != nil || n != 2 {
		t.Errorf("second purge: %d %v", n, err)
	}
	if n, err := s.Purge(mustTime("2027-01-03T00:00:00Z")); err != nil || n != 0 {
		t.Errorf("third purge: %d %v", n, err)
	}
}

// The cutoff is exact to the nanosecond, including events that share the
// cutoff's millisecond.
func TestPurgeCutoffIsExact(t *testing.T) {
	s := New(openDB(t), 24*time.Hour)
	cutoff := mustTime("2026-06-01T00:00:00.000500Z")
	at := map[string]time.Time{
		"at-cutoff":      cutoff,
		"same-ms-after":  cutoff.Add(400 * time.Microsecond),
		"same-ms-before": cutoff.Add(-100 * time.Nanosecond),
		"ms-before":      cutoff.Add(-time.Millisecond),
		"ms-after":       cutoff.Add(time.Millisecond),
		"long-ago":       mustTime("2020-01-01T00:00:00Z"),
		"future":         mustTime("2026-07-01T00:00:00Z"),
		"ns-before":      cutoff.Add(-time.Nanosecond),
	}
	for _, n := range []string{"at-cutoff", "same-ms-after", "same-ms-before", "ms-before", "ms-after", "long-ago", "future", "ns-before"} {
		e := validEvent()
		e.TaskID, e.EnvelopeID, e.Timestamp = n, n, at[n]
		put(t, s, e, n)
	}
	removed, err := s.Purge(cutoff.Add(24 * time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if removed != 4 {
		t.Errorf("removed %d, want 4", removed)
	}
	got, _ := s.Query(Filter{}, 100, 0)
	kept := map[string]bool{}
	for _, n := range names(got) {
		kept[n] = true
	}
	eq(t, "kept", kept, map[string]bool{"at-cutoff": true, "same-ms-after": true, "ms-after": true, "future": true})
}

func TestPurgeWithoutRetentionRemovesNothing(t *testing.T) {
	db := openDB(t)
	s := New(db, 0)
	seed(t, s)
	for _, st := range []*Store{s, New(db, -time.Hour)} {
		n, err := st.Purge(mustTime("2100-01-01T00:00:00Z"))
		if err != nil || n != 0 {
			t.Errorf("retention %v: removed %d, %v", st.Retention(), n, err)
		}
	}
	if got, _ := s.Query(Filter{}, 100, 0); len(got) != 8 {
		t.Errorf("%d events left, want 8", len(got))
	}
}

// More old events than one delete transaction takes (500).
func TestPurgeManyEventsInChunks(t *testing.T) {
	s := New(openDB(t), time.Hour)
	base := mustTime("2020-01-01T00:00:00Z")
	const old = 1203
	for i := 0; i < old; i += 200 {
		if err := commit(t, s.DB(), func(tx *storage.Tx) error {
			for j := i; j < min(i+200, old); j++ {
				e := validEvent()
				e.TaskID = fmt.Sprintf("old-%d", j)
				e.AgentID = fmt.Sprintf("urn:asap:agent:%d", j%7)
				e.EnvelopeID = e.TaskID
				e.Timestamp = base.Add(time.Duration(j) * time.Second)
				if _, err := s.Put(tx, &e, e.EnvelopeID); err != nil {
					return err
				}
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	now := time.Now()
	for i := 0; i < 3; i++ {
		e := validEvent()
		e.TaskID, e.Timestamp = fmt.Sprintf("new-%d", i), now.Add(-time.Duration(i)*time.Minute)
		put(t, s, e, "")
	}
	n, err := s.Purge(now)
	if err != nil || n != old {
		t.Fatalf("removed %d, %v; want %d", n, err, old)
	}
	st, _ := s.Stats()
	if st.TotalEvents != 3 {
		t.Errorf("%d events left, want 3", st.TotalEvents)
	}
	if got, _ := s.Query(Filter{AgentID: "urn:asap:agent:3"}, 1000, 0); len(got) != 0 {
		t.Errorf("agent index still returns %d purged events", len(got))
	}
	if got, _ := s.Query(Filter{AgentID: agentA}, 1000, 0); len(got) != 3 {
		t.Errorf("agent A: %d events, want 3", len(got))
	}
}

// ---------------------------------------------------------------- TTL

// Retention is a Badger TTL: events, their index copies and their dedup
// markers disappear without Purge; outcome counters stay.
func TestRetentionTTLExpiresEventsWithoutPurge(t *testing.T) {
	t.Parallel()
	written := wire.Time(time.Now())
	e := validEvent()
	e.Timestamp = written
	e.EnvelopeID = "ttl-env"
	write := func(s *Store) {
		t.Helper()
		if err := commit(t, s.DB(), func(tx *storage.Tx) error {
			if err := CountOutcome(tx, e.AgentID, false); err != nil {
				return err
			}
			_, err := s.Put(tx, &e, e.EnvelopeID)
			return err
		}); err != nil {
			t.Fatal(err)
		}
	}
	filters := []Filter{{}, {AgentID: e.AgentID}, {ConsumerID: e.ConsumerID}, {TaskID: e.TaskID}, {Start: written, End: written}}

	// Written with a TTL, every index finds the event while it lives. An
	// hour's retention, so a slow machine cannot outrun it.
	fresh := New(openDB(t), time.Hour)
	write(fresh)
	for _, f := range filters {
		if got, err := fresh.Query(f, 10, 0); err != nil || len(got) != 1 {
			t.Errorf("fresh, %+v: %d events, %v", f, len(got), err)
		}
	}
	if st, _ := fresh.Stats(); st.TotalEvents != 1 {
		t.Errorf("fresh stats: %+v", st)
	}

	// With one second, everything but the counters is gone once it has
	// passed (Badger expires at whole seconds: at most two).
	db := openDB(t)
	s := New(db, time.Second)
	write(s)
	time.Sleep(time.Until(written.Add(2100 * time.Millisecond)))
	for _, f := range filters {
		got, err := s.Query(f, 10, 0)
		if err != nil || got == nil || len(got) != 0 {
			t.Errorf("expired, %+v: %v, %v", f, got, err)
		}
	}
	st, err := s.Stats()
	if err != nil || st.TotalEvents != 0 || st.OldestTimestamp != nil || st.RetentionTTLSeconds == nil || *st.RetentionTTLSeconds != 1 {
		t.Errorf("expired stats: %+v %v", st, err)
	}
	if sum, _ := s.Summarize(Filter{}); sum != (Summary{}) {
		t.Errorf("expired summary: %+v", sum)
	}
	c, err := CountsOf(db, e.AgentID)
	if err != nil || c != (Counts{Forwarded: 1, Completed: 1}) {
		t.Errorf("counters after TTL: %+v %v", c, err)
	}
	if !put(t, s, e, e.EnvelopeID) {
		t.Error("dedup marker outlived its TTL")
	}
}

// ---------------------------------------------------------------- counters

func TestCountOutcomeConcurrent(t *testing.T) {
	db := openDB(t)
	const n = 64
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			if err := commit(t, db, func(tx *storage.Tx) error {
				if err := CountOutcome(tx, agentA, i%4 == 0); err != nil {
					return err
				}
				if i%2 == 0 {
					return CountOutcome(tx, agentB, i%8 == 0)
				}
				return nil
			}); err != nil {
				t.Error(err)
			}
		}(i)
	}
	wg.Wait()
	c, err := CountsOf(db, agentA)
	if err != nil {
		t.Fatal(err)
	}
	eq(t, "agent A", c, Counts{Forwarded: 64, Completed: 48, Failed: 16})
	c, _ = CountsOf(db, agentB)
	eq(t, "agent B", c, Counts{Forwarded: 32, Completed: 24, Failed: 8})
	c, err = CountsOf(db, "urn:asap:agent:never")
	if err != nil {
		t.Fatal(err)
	}
	eq(t, "unknown agent", c, Counts{})
	if b := jsonOf(t, Counts{Forwarded: 3, Completed: 2, Failed: 1}); b != `{"tasks_forwarded":3,"tasks_completed":2,"tasks_failed":1}` {
		t.Errorf("JSON %s", b)
	}
}

// Counters are not part of metering's retention: Purge leaves them.
func TestCountersSurvivePurge(t *testing.T) {
	db := openDB(t)
	s := New(db, time.Hour)
	e := validEvent()
	if err := commit(t, db, func(tx *storage.Tx) error {
		if err := CountOutcome(tx, e.AgentID, true); err != nil {
			return err
		}
		_, err := s.Put(tx, &e, "x")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if n, _ := s.Purge(time.Now()); n != 1 {
		t.Fatalf("purged %d", n)
	}
	if c, _ := CountsOf(db, e.AgentID); c != (Counts{Forwarded: 1, Failed: 1}) {
		t.Errorf("counters after purge: %+v", c)
	}
}

func TestCountersRejectCorruptValues(t *testing.T) {
	db := openDB(t)
	for _, name := range []string{"forwarded", "failed"} {
		agent := "urn:asap:agent:" + name
		if err := commit(t, db, func(tx *storage.Tx) error {
			tx.Set(counterKey(agent, name), []byte("bad"))
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		if _, err := CountsOf(db, agent); err == nil {
			t.Errorf("%s: CountsOf accepted a 3-byte counter", name)
		}
		err := commit(t, db, func(tx *storage.Tx) error { return CountOutcome(tx, agent, true) })
		if err == nil {
			t.Errorf("%s: CountOutcome added to a 3-byte counter", name)
		}
	}
}

// The dedup marker is per consumer and remembers the call's digest.
func TestDedupIsPerConsumerAndKeepsTheDigest(t *testing.T) {
	s := New(openDB(t), 0)
	e := Event{TaskID: "t1", AgentID: "urn:asap:agent:a", ConsumerID: "urn:asap:agent:alice", EnvelopeID: "env-1", Timestamp: time.Now()}
	other := e
	other.TaskID, other.ConsumerID = "t2", "urn:asap:agent:bob"
	var first, second bool
	if err := commit(t, s.DB(), func(tx *storage.Tx) error {
		var err error
		if first, err = s.PutCall(tx, &e, "env-1", []byte("digest-a")); err != nil {
			return err
		}
		second, err = s.PutCall(tx, &other, "env-1", []byte("digest-b"))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if !first || !second {
		t.Fatalf("two consumers, one envelope id: metered %v and %v, want both", first, second)
	}
	for _, c := range []struct{ consumer, digest string }{{"urn:asap:agent:alice", "digest-a"}, {"urn:asap:agent:bob", "digest-b"}} {
		d, ok, err := s.Seen("urn:asap:agent:a", c.consumer, "env-1")
		if err != nil || !ok || string(d) != c.digest {
			t.Fatalf("Seen(%s) = %q, %v, %v; want %q", c.consumer, d, ok, err, c.digest)
		}
	}
	if _, ok, err := s.Seen("urn:asap:agent:a", "urn:asap:agent:carol", "env-1"); ok || err != nil {
		t.Fatalf("Seen for a consumer that never sent it: %v, %v", ok, err)
	}
	// A marker written without a digest (POST /usage) is seen, with none.
	carol := e
	carol.ConsumerID = "urn:asap:agent:carol"
	put(t, s, carol, "env-1")
	if d, ok, err := s.Seen("urn:asap:agent:a", carol.ConsumerID, "env-1"); !ok || err != nil || d != nil {
		t.Fatalf("Seen after Put without a digest: %q, %v, %v; want no digest", d, ok, err)
	}
}
