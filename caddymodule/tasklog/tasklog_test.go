package tasklog

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/asap-sidecar/asap-sidecar/storage"
)

const (
	agentA = "urn:asap:agent:alpha"
	agentB = "urn:asap:agent:beta"
)

func openDB(t *testing.T) *storage.DB {
	t.Helper()
	db, err := storage.Open(storage.Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := db.Close(); err != nil {
			t.Errorf("closing db: %v", err)
		}
	})
	return db
}

func put(t *testing.T, db *storage.DB, ttl time.Duration, recs ...Record) {
	t.Helper()
	err := db.Commit(context.Background(), storage.Strict, func(tx *storage.Tx) error {
		for i := range recs {
			if err := Put(tx, &recs[i], ttl); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("committing records: %v", err)
	}
}

func rec(agent, envID, outcome string) Record {
	return Record{
		EnvelopeID:  envID,
		TaskID:      "task_" + envID,
		AgentID:     agent,
		ConsumerID:  "urn:asap:agent:client",
		PayloadType: "task.request",
		Outcome:     outcome,
		Status:      outcome,
		HTTPStatus:  200,
		DurationMS:  12.5,
		StartedAt:   time.Date(2026, 11, 26, 1, 0, 0, 123456789, time.UTC),
	}
}

func counts(t *testing.T, db *storage.DB, agent string) Counts {
	t.Helper()
	c, err := CountsOf(db, agent)
	if err != nil {
		t.Fatalf("CountsOf(%s): %v", agent, err)
	}
	return c
}

func TestPutGetRoundTrip(t *testing.T) {
	db := openDB(t)
	want := Record{
		EnvelopeID:  "01JENV",
		TaskID:      "task_1",
		AgentID:     agentA,
		ConsumerID:  "urn:asap:agent:client",
		PayloadType: "task.request",
		Outcome:     OutcomeFailed,
		Status:      "failed",
		HTTPStatus:  502,
		ErrorCode:   -32032,
		DurationMS:  1234.75,
		StartedAt:   time.Date(2026, 11, 26, 1, 2, 3, 400000000, time.UTC),
	}
	put(t, db, 0, want)

	got, err := Get(db, agentA, "01JENV")
	if err != nil {
		t.Fatalf("Get: %v", err)
	}
	if !got.StartedAt.Equal(want.StartedAt) {
		t.Errorf("started_at = %v, want %v", got.StartedAt, want.StartedAt)
	}
	got.StartedAt = want.StartedAt
	if !reflect.DeepEqual(*got, want) {
		t.Errorf("Get = %+v\nwant %+v", *got, want)
	}

	// The record is keyed by agent too.
	if _, err := Get(db, agentB, "01JENV"); err == nil {
		t.Error("record found under another agent")
	}
}

func TestRecordJSONFieldNames(t *testing.T) {
	b, err := json.Marshal(Record{EnvelopeID: "e", AgentID: "a", TaskID: "t", ErrorCode: -1, Status: "s"})
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{`"envelope_id":"e"`, `"task_id":"t"`, `"agent_id":"a"`, `"consumer_id":""`, `"payload_type":""`,
		`"outcome":""`, `"status":"s"`, `"http_status":0`, `"error_code":-1`, `"duration_ms":0`, `"started_at":`} {
		if !strings.Contains(string(b), f) {
			t.Errorf("record JSON %s lacks %s", b, f)
		}
	}
	b, _ = json.Marshal(Record{})
	for _, f := range []string{"task_id", "status", "error_code"} {
		if strings.Contains(string(b), `"`+f+`"`) {
			t.Errorf("empty %s not omitted: %s", f, b)
		}
	}
	b, _ = json.Marshal(Counts{Forwarded: 3, Completed: 2, Failed: 1})
	if string(b) != `{"tasks_forwarded":3,"tasks_completed":2,"tasks_failed":1}` {
		t.Errorf("counts JSON = %s", b)
	}
}

func TestCountersByOutcome(t *testing.T) {
	db := openDB(t)
	if c := counts(t, db, agentA); c != (Counts{}) {
		t.Fatalf("fresh counts = %+v", c)
	}
	put(t, db, 0,
		rec(agentA, "e1", OutcomeCompleted),
		rec(agentA, "e2", OutcomeCompleted),
		rec(agentA, "e3", OutcomeFailed),
	)
	if c, want := counts(t, db, agentA), (Counts{Forwarded: 3, Completed: 2, Failed: 1}); c != want {
		t.Errorf("after one commit counts = %+v, want %+v", c, want)
	}
	// Separate commits add up.
	put(t, db, 0, rec(agentA, "e4", OutcomeFailed))
	put(t, db, 0, rec(agentA, "e5", OutcomeCompleted))
	if c, want := counts(t, db, agentA), (Counts{Forwarded: 5, Completed: 3, Failed: 2}); c != want {
		t.Errorf("after three commits counts = %+v, want %+v", c, want)
	}
	// Another agent's counters are its own.
	put(t, db, 0, rec(agentB, "e1", OutcomeFailed))
	if c, want := counts(t, db, agentB), (Counts{Forwarded: 1, Failed: 1}); c != want {
		t.Errorf("agent B counts = %+v, want %+v", c, want)
	}
	if c, want := counts(t, db, agentA), (Counts{Forwarded: 5, Completed: 3, Failed: 2}); c != want {
		t.Errorf("agent A counts changed by B: %+v, want %+v", c, want)
	}
	if c := counts(t, db, "urn:asap:agent:nobody"); c != (Counts{}) {
		t.Errorf("unknown agent counts = %+v", c)
	}
}

// Only OutcomeFailed counts as failed; every other outcome is completed.
func TestOutcomeOtherThanFailedCountsAsCompleted(t *testing.T) {
	db := openDB(t)
	put(t, db, 0, rec(agentA, "e1", ""), rec(agentA, "e2", "cancelled"), rec(agentA, "e3", "FAILED"))
	if c, want := counts(t, db, agentA), (Counts{Forwarded: 3, Completed: 3}); c != want {
		t.Errorf("counts = %+v, want %+v", c, want)
	}
}

func TestPutRejectsRecordsWithoutIDs(t *testing.T) {
	tests := []struct {
		name string
		r    Record
	}{
		{"no agent", Record{EnvelopeID: "e1", Outcome: OutcomeCompleted}},
		{"no envelope id", Record{AgentID: agentA, Outcome: OutcomeCompleted}},
		{"neither", Record{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			db := openDB(t)
			err := db.Commit(context.Background(), storage.Strict, func(tx *storage.Tx) error {
				return Put(tx, &tt.r, 0)
			})
			if err == nil {
				t.Fatal("record accepted")
			}
			if !strings.Contains(err.Error(), "tasklog: record needs agent_id and envelope_id") {
				t.Errorf("error = %q", err)
			}
			if c := counts(t, db, agentA); c != (Counts{}) {
				t.Errorf("rejected record bumped counters: %+v", c)
			}
			if c := counts(t, db, ""); c != (Counts{}) {
				t.Errorf("rejected record bumped empty agent's counters: %+v", c)
			}
		})
	}
}

func TestPutRejectsUnencodableRecord(t *testing.T) {
	db := openDB(t)
	r := rec(agentA, "e1", OutcomeCompleted)
	r.DurationMS = math.NaN()
	err := db.Commit(context.Background(), storage.Strict, func(tx *storage.Tx) error {
		return Put(tx, &r, 0)
	})
	if err == nil {
		t.Fatal("NaN duration encoded")
	}
	if c := counts(t, db, agentA); c != (Counts{}) {
		t.Errorf("failed Put bumped counters: %+v", c)
	}
}

// A writer that fails after a good Put leaves neither record nor counters.
func TestFailedTransactionStoresNothing(t *testing.T) {
	db := openDB(t)
	err := db.Commit(context.Background(), storage.Strict, func(tx *storage.Tx) error {
		good := rec(agentA, "e1", OutcomeCompleted)
		if err := Put(tx, &good, 0); err != nil {
			return err
		}
		return Put(tx, &Record{AgentID: agentA}, 0)
	})
	if err == nil {
		t.Fatal("want an error")
	}
	if _, err := Get(db, agentA, "e1"); err == nil {
		t.Error("record of the failed transaction stored")
	}
	if c := counts(t, db, agentA); c != (Counts{}) {
		t.Errorf("failed transaction bumped counters: %+v", c)
	}
}

func TestGetMissingRecord(t *testing.T) {
	db := openDB(t)
	put(t, db, 0, rec(agentA, "e1", OutcomeCompleted))
	got, err := Get(db, agentA, "missing")
	if err == nil {
		t.Fatalf("Get of a missing record = %+v", got)
	}
	if got != nil {
		t.Errorf("Get returned %+v with its error", got)
	}
	if !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("error %v does not wrap storage.ErrNotFound", err)
	}
	if want := "tasklog: record missing of " + agentA; !strings.Contains(err.Error(), want) {
		t.Errorf("error %q lacks %q", err, want)
	}
}

func TestListOrderAndLimit(t *testing.T) {
	db := openDB(t)
	// Stored out of order, across commits.
	put(t, db, 0, rec(agentA, "e3", OutcomeCompleted), rec(agentA, "e1", OutcomeFailed))
	put(t, db, 0, rec(agentA, "e5", OutcomeCompleted), rec(agentA, "e2", OutcomeCompleted))
	put(t, db, 0, rec(agentA, "e4", OutcomeFailed))
	put(t, db, 0, rec(agentB, "e0", OutcomeCompleted), rec(agentB, "e9", OutcomeCompleted))

	ids := func(rs []Record) []string {
		var out []string
		for _, r := range rs {
			if r.AgentID != agentA {
				t.Errorf("List(%s) returned a record of %s", agentA, r.AgentID)
			}
			out = append(out, r.EnvelopeID)
		}
		return out
	}
	tests := []struct {
		limit int
		want  []string
	}{
		{1, []string{"e1"}},
		{2, []string{"e1", "e2"}},
		{5, []string{"e1", "e2", "e3", "e4", "e5"}},
		{100, []string{"e1", "e2", "e3", "e4", "e5"}},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprint(tt.limit), func(t *testing.T) {
			got, err := List(db, agentA, tt.limit)
			if err != nil {
				t.Fatal(err)
			}
			if g := ids(got); !reflect.DeepEqual(g, tt.want) {
				t.Errorf("List(limit %d) = %v, want %v", tt.limit, g, tt.want)
			}
		})
	}

	// The full records come back, not just ids.
	got, _ := List(db, agentA, 1)
	want := rec(agentA, "e1", OutcomeFailed)
	if len(got) != 1 || !got[0].StartedAt.Equal(want.StartedAt) {
		t.Fatalf("List = %+v", got)
	}
	got[0].StartedAt = want.StartedAt
	if !reflect.DeepEqual(got[0], want) {
		t.Errorf("listed record = %+v, want %+v", got[0], want)
	}
}

// "List returns ... at most limit": a limit of 0 must not return a record.
func TestListLimitZero(t *testing.T) {
	db := openDB(t)
	put(t, db, 0, rec(agentA, "e1", OutcomeCompleted), rec(agentA, "e2", OutcomeCompleted))
	got, err := List(db, agentA, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) > 0 {
		t.Fatalf("List(db, agent, 0) returned %d record(s), more than the limit of 0: the scan callback appends before checking len(out) < limit", len(got))
	}
}

// An agent whose URN is a prefix of another's must not see its records
// (keys separate agent and envelope id with a NUL byte).
func TestListDoesNotLeakAcrossPrefixAgents(t *testing.T) {
	db := openDB(t)
	short, long := "urn:asap:agent:ab", "urn:asap:agent:abc"
	put(t, db, 0, rec(long, "x1", OutcomeCompleted), rec(long, "x2", OutcomeCompleted))
	put(t, db, 0, rec(short, "y1", OutcomeCompleted))
	got, err := List(db, short, 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].EnvelopeID != "y1" {
		t.Errorf("List(%s) = %+v", short, got)
	}
	got, err = List(db, long, 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 {
		t.Errorf("List(%s) = %+v", long, got)
	}
	if c := counts(t, db, short); c.Forwarded != 1 {
		t.Errorf("counts of %s = %+v", short, c)
	}
}

func TestListEmpty(t *testing.T) {
	db := openDB(t)
	got, err := List(db, agentA, 10)
	if err != nil || len(got) != 0 {
		t.Errorf("List on an empty db = %v, %v", got, err)
	}
}

func TestRecordsExpireCountersRemain(t *testing.T) {
	db := openDB(t)
	put(t, db, time.Second, rec(agentA, "short1", OutcomeCompleted), rec(agentA, "short2", OutcomeFailed))
	put(t, db, 0, rec(agentA, "keep", OutcomeCompleted))
	put(t, db, time.Hour, rec(agentA, "long", OutcomeCompleted))

	if got, _ := List(db, agentA, 10); len(got) != 4 {
		t.Fatalf("before expiry List = %d records", len(got))
	}
	if _, err := Get(db, agentA, "short1"); err != nil {
		t.Fatalf("before expiry: %v", err)
	}

	time.Sleep(2100 * time.Millisecond)

	for _, id := range []string{"short1", "short2"} {
		if _, err := Get(db, agentA, id); !errors.Is(err, storage.ErrNotFound) {
			t.Errorf("Get(%s) after its TTL: err = %v, want ErrNotFound", id, err)
		}
	}
	for _, id := range []string{"keep", "long"} {
		if _, err := Get(db, agentA, id); err != nil {
			t.Errorf("Get(%s) without/with long TTL: %v", id, err)
		}
	}
	got, err := List(db, agentA, 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].EnvelopeID != "keep" || got[1].EnvelopeID != "long" {
		t.Errorf("after expiry List = %+v", got)
	}
	if c, want := counts(t, db, agentA), (Counts{Forwarded: 4, Completed: 3, Failed: 1}); c != want {
		t.Errorf("counters after expiry = %+v, want %+v", c, want)
	}
}

func setRaw(t *testing.T, db *storage.DB, k, v []byte) {
	t.Helper()
	err := db.Commit(context.Background(), storage.Strict, func(tx *storage.Tx) error {
		tx.Set(k, v)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestCorruptCounter(t *testing.T) {
	for _, name := range []string{"forwarded", "completed", "failed"} {
		t.Run(name, func(t *testing.T) {
			db := openDB(t)
			put(t, db, 0, rec(agentA, "e1", OutcomeCompleted))
			setRaw(t, db, counterKey(agentA, name), []byte("bad"))
			if c, err := CountsOf(db, agentA); err == nil {
				t.Fatalf("CountsOf with a corrupt %s counter = %+v", name, c)
			} else if !strings.Contains(err.Error(), "counter value has 3 bytes, want 8") {
				t.Errorf("error = %q", err)
			}
			// Other agents are unaffected.
			if _, err := CountsOf(db, agentB); err != nil {
				t.Errorf("CountsOf(other agent): %v", err)
			}
		})
	}
}

// Put must not silently reset a counter it cannot read.
func TestPutFailsOnCorruptCounter(t *testing.T) {
	for _, tt := range []struct{ counter, outcome string }{
		{"forwarded", OutcomeCompleted},
		{"completed", OutcomeCompleted},
		{"failed", OutcomeFailed},
	} {
		t.Run(tt.counter, func(t *testing.T) {
			db := openDB(t)
			setRaw(t, db, counterKey(agentA, tt.counter), []byte{1, 2})
			err := db.Commit(context.Background(), storage.Strict, func(tx *storage.Tx) error {
				r := rec(agentA, "e1", tt.outcome)
				return Put(tx, &r, 0)
			})
			if err == nil {
				t.Fatal("Put over a corrupt counter succeeded")
			}
			if _, err := Get(db, agentA, "e1"); err == nil {
				t.Error("record stored although its counters could not be updated")
			}
		})
	}
}

func TestCorruptRecord(t *testing.T) {
	db := openDB(t)
	put(t, db, 0, rec(agentA, "e1", OutcomeCompleted))
	setRaw(t, db, key(agentA, "e2"), []byte("{not json"))
	put(t, db, 0, rec(agentA, "e3", OutcomeCompleted))

	if _, err := Get(db, agentA, "e2"); err == nil {
		t.Error("Get of a corrupt record succeeded")
	} else if !strings.Contains(err.Error(), "tasklog: record e2 of "+agentA) {
		t.Errorf("error = %q", err)
	}
	if _, err := Get(db, agentA, "e1"); err != nil {
		t.Errorf("good record: %v", err)
	}
	if got, err := List(db, agentA, 10); err == nil {
		t.Errorf("List over a corrupt record = %+v, want an error", got)
	}
	// A limit that stops before the corrupt record does not see it.
	if got, err := List(db, agentA, 1); err != nil || len(got) != 1 {
		t.Errorf("List(limit 1) = %+v, %v", got, err)
	}
}

func TestKeysUseTheirSpaces(t *testing.T) {
	k := key(agentA, "e1")
	if k[0] != byte(storage.SpaceTask) || string(k[1:]) != agentA+"\x00e1" {
		t.Errorf("record key = %q", k)
	}
	c := counterKey(agentA, "failed")
	if c[0] != byte(storage.SpaceCounter) || string(c[1:]) != agentA+"\x00failed" {
		t.Errorf("counter key = %q", c)
	}
}
