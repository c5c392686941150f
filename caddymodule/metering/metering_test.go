package metering

import (
	"context"
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/asap-sidecar/asap-sidecar/storage"
)

// Shared helpers and the fixed data set used across this package's tests.

const (
	agentA = "urn:asap:agent:alpha"
	agentB = "urn:asap:agent:beta"
	consC1 = "urn:asap:agent:c1"
	consC2 = "urn:asap:agent:c2"
)

func openDB(t testing.TB) *storage.DB {
	t.Helper()
	db, err := storage.Open(storage.Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	t.Cleanup(func() {
		if err := db.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
	})
	return db
}

func commit(t testing.TB, db *storage.DB, fn func(tx *storage.Tx) error) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	return db.Commit(ctx, storage.Strict, fn)
}

// put records a copy of e in its own strict commit and reports whether it
// was recorded (false: deduplicated).
func put(t testing.TB, s *Store, e Event, dedup string) bool {
	t.Helper()
	var ok bool
	if err := commit(t, s.DB(), func(tx *storage.Tx) error {
		var err error
		ok, err = s.Put(tx, &e, dedup)
		return err
	}); err != nil {
		t.Fatalf("put %s: %v", e.TaskID, err)
	}
	return ok
}

func mustTime(s string) time.Time {
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		panic(err)
	}
	return t
}

// The fixed data set. EnvelopeID names each event (task ids repeat: e8
// reuses t1). Timestamps span several days, the ISO week boundary
// 2026-W06/W07 and the year end that still belongs to 2026-W53.
//
//	name task agent consumer  in  out  dur calls timestamp (UTC)            day         week
//	e1   t1   A     C1        10  20   100  1    2026-02-06T09:00:00        2026-02-06  2026-W06 (given as +01:00)
//	e2   t2   A     C2         5   5    50  2    2026-02-06T23:59:59.999    2026-02-06  2026-W06
//	e3   t3   B     C1       100   0  1000  0    2026-02-07T00:00:00        2026-02-07  2026-W06
//	e8   t1   B     C2         3   4     5  0    2026-02-08T06:00:00        2026-02-08  2026-W06
//	e4   t4   B     C2         1   2     3  4    2026-02-09T12:00:00        2026-02-09  2026-W07
//	e5   t5   A     C1         7   8     9  1    2026-12-31T10:00:00        2026-12-31  2026-W53
//	e6   t6   B     C1         0  30    60  3    2027-01-01T00:00:00.123456 2027-01-01  2026-W53
//	e7   t7   A     C2         2   2     2  2    2027-01-04T08:00:00        2027-01-04  2027-W01
var fx = map[string]Event{
	"e1": {TaskID: "t1", AgentID: agentA, ConsumerID: consC1, TokensIn: 10, TokensOut: 20, DurationMS: 100, APICalls: 1,
		Timestamp: mustTime("2026-02-06T10:00:00+01:00"), EnvelopeID: "e1",
		Status: "completed", PayloadType: "task.request", DelegationID: "jti-1", RootIssuer: "urn:asap:agent:root"},
	"e2": {TaskID: "t2", AgentID: agentA, ConsumerID: consC2, TokensIn: 5, TokensOut: 5, DurationMS: 50, APICalls: 2,
		Timestamp: mustTime("2026-02-06T23:59:59.999Z"), EnvelopeID: "e2"},
	"e3": {TaskID: "t3", AgentID: agentB, ConsumerID: consC1, TokensIn: 100, TokensOut: 0, DurationMS: 1000, APICalls: 0,
		Timestamp: mustTime("2026-02-07T00:00:00Z"), EnvelopeID: "e3"},
	"e8": {TaskID: "t1", AgentID: agentB, ConsumerID: consC2, TokensIn: 3, TokensOut: 4, DurationMS: 5, APICalls: 0,
		Timestamp: mustTime("2026-02-08T06:00:00Z"), EnvelopeID: "e8"},
	"e4": {TaskID: "t4", AgentID: agentB, ConsumerID: consC2, TokensIn: 1, TokensOut: 2, DurationMS: 3, APICalls: 4,
		Timestamp: mustTime("2026-02-09T12:00:00Z"), EnvelopeID: "e4"},
	"e5": {TaskID: "t5", AgentID: agentA, ConsumerID: consC1, TokensIn: 7, TokensOut: 8, DurationMS: 9, APICalls: 1,
		Timestamp: mustTime("2026-12-31T10:00:00Z"), EnvelopeID: "e5"},
	"e6": {TaskID: "t6", AgentID: agentB, ConsumerID: consC1, TokensIn: 0, TokensOut: 30, DurationMS: 60, APICalls: 3,
		Timestamp: mustTime("2027-01-01T00:00:00.123456Z"), EnvelopeID: "e6"},
	"e7": {TaskID: "t7", AgentID: agentA, ConsumerID: consC2, TokensIn: 2, TokensOut: 2, DurationMS: 2, APICalls: 2,
		Timestamp: mustTime("2027-01-04T08:00:00Z"), EnvelopeID: "e7"},
}

var (
	chrono      = []string{"e1", "e2", "e3", "e8", "e4", "e5", "e6", "e7"}
	insertOrder = []string{"e7", "e3", "e1", "e6", "e2", "e5", "e8", "e4"}
)

// seed stores the data set, out of time order, one commit per event, each
// deduplicated by its envelope id.
func seed(t testing.TB, s *Store) {
	t.Helper()
	for _, n := range insertOrder {
		if !put(t, s, fx[n], fx[n].EnvelopeID) {
			t.Fatalf("seeding %s: deduplicated", n)
		}
	}
}

func names(events []Event) []string {
	out := make([]string, len(events))
	for i := range events {
		out[i] = events[i].EnvelopeID
	}
	return out
}

func eq[T any](t *testing.T, what string, got, want T) {
	t.Helper()
	if !reflect.DeepEqual(got, want) {
		t.Errorf("%s:\n got  %#v\n want %#v", what, got, want)
	}
}

func jsonOf(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// ---------------------------------------------------------------- ParseMetrics

func TestParseMetrics(t *testing.T) {
	long := `"` + strings.Repeat("a", 50) + `"`
	cases := []struct {
		name          string
		raw           string
		in, out, call int64
		problems      []string
	}{
		{"all numbers", `{"tokens_in":10,"tokens_out":20,"api_calls":3}`, 10, 20, 3, nil},
		{"unknown keys ignored", `{"tokens_in":1,"latency_ms":5,"model":"x"}`, 1, 0, 0, nil},
		{"empty object", `{}`, 0, 0, 0, nil},
		{"tokens_used when tokens_out absent", `{"tokens_in":10,"tokens_used":7}`, 10, 7, 0, nil},
		{"tokens_used when tokens_out is 0", `{"tokens_out":0,"tokens_used":7}`, 0, 7, 0, nil},
		{"tokens_used when tokens_out is null", `{"tokens_out":null,"tokens_used":7}`, 0, 7, 0, nil},
		{"tokens_out wins when > 0", `{"tokens_out":5,"tokens_used":7}`, 0, 5, 0, nil},
		{"tokens_out 1 still wins", `{"tokens_out":1,"tokens_used":700}`, 0, 1, 0, nil},
		{"nulls are zero without problems", `{"tokens_in":null,"tokens_out":null,"tokens_used":null,"api_calls":null}`, 0, 0, 0, nil},
		{"whole float accepted", `{"tokens_in":2.0,"api_calls":1e3}`, 2, 0, 1000, nil},
		{"negative zero accepted", `{"tokens_in":-0}`, 0, 0, 0, nil},
		{"1e12 exactly accepted", `{"tokens_in":1e12}`, 1_000_000_000_000, 0, 0, nil},
		{"MaxMetric as integer accepted", `{"api_calls":1000000000000}`, 0, 0, MaxMetric, nil},
		{"negative", `{"tokens_in":-1,"tokens_out":4}`, 0, 4, 0, []string{"tokens_in=-1"}},
		{"fractional", `{"tokens_in":1.5,"api_calls":2}`, 0, 0, 2, []string{"tokens_in=1.5"}},
		{"string number", `{"tokens_in":"12"}`, 0, 0, 0, []string{`tokens_in="12"`}},
		{"bool", `{"api_calls":true}`, 0, 0, 0, []string{"api_calls=true"}},
		{"object", `{"tokens_out":{"n":1}}`, 0, 0, 0, []string{`tokens_out={"n":1}`}},
		{"array", `{"tokens_out":[1]}`, 0, 0, 0, []string{"tokens_out=[1]"}},
		{"huge 1e13", `{"tokens_in":1e13}`, 0, 0, 0, []string{"tokens_in=1e13"}},
		{"MaxMetric+1", `{"tokens_in":1000000000001}`, 0, 0, 0, []string{"tokens_in=1000000000001"}},
		{"beyond float64", `{"api_calls":1e400}`, 0, 0, 0, []string{"api_calls=1e400"}},
		{"bad tokens_out falls back to tokens_used", `{"tokens_out":-2,"tokens_used":6}`, 0, 6, 0, []string{"tokens_out=-2"}},
		{"bad tokens_used reported even when unused", `{"tokens_out":4,"tokens_used":-3}`, 0, 4, 0, []string{"tokens_used=-3"}},
		{"bad tokens_out and tokens_used", `{"tokens_out":"x","tokens_used":1.25}`, 0, 0, 0, []string{`tokens_out="x"`, "tokens_used=1.25"}},
		{"every field bad, in field order", `{"api_calls":-1,"tokens_used":"u","tokens_out":false,"tokens_in":{}}`, 0, 0, 0,
			[]string{"tokens_in={}", "tokens_out=false", `tokens_used="u"`, "api_calls=-1"}},
		{"long value truncated to 32 bytes", `{"tokens_in":` + long + `}`, 0, 0, 0, []string{"tokens_in=" + long[:32] + "…"}},
		{"a value of exactly 32 bytes kept whole", `{"tokens_in":"` + strings.Repeat("b", 30) + `"}`, 0, 0, 0, []string{`tokens_in="` + strings.Repeat("b", 30) + `"`}},
		{"metrics is an array", `[1,2]`, 0, 0, 0, []string{"metrics is not an object"}},
		{"metrics is a string", `"tokens"`, 0, 0, 0, []string{"metrics is not an object"}},
		{"metrics is a number", `42`, 0, 0, 0, []string{"metrics is not an object"}},
		{"metrics is broken JSON", `{"tokens_in":`, 0, 0, 0, []string{"metrics is not an object"}},
		{"metrics is null", `null`, 0, 0, 0, nil},
		{"empty raw", ``, 0, 0, 0, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			m := ParseMetrics(json.RawMessage(c.raw))
			eq(t, "metrics", [3]int64{m.TokensIn, m.TokensOut, m.APICalls}, [3]int64{c.in, c.out, c.call})
			eq(t, "problems", m.Problems, c.problems)
		})
	}
	if m := ParseMetrics(nil); m.TokensIn != 0 || m.TokensOut != 0 || m.APICalls != 0 || m.Problems != nil {
		t.Errorf("nil raw: %+v", m)
	}
}

// ---------------------------------------------------------------- Validate

func validEvent() Event {
	return Event{TaskID: "t1", AgentID: agentA, ConsumerID: consC1, TokensIn: 1, TokensOut: 2, DurationMS: 3, APICalls: 4,
		Timestamp: mustTime("2026-01-01T00:00:00Z")}
}

func TestValidate(t *testing.T) {
	cases := []struct {
		name   string
		change func(e *Event)
		err    string // "" = valid
	}{
		{"valid", func(e *Event) {}, ""},
		{"zero metrics valid", func(e *Event) { e.TokensIn, e.TokensOut, e.DurationMS, e.APICalls = 0, 0, 0, 0 }, ""},
		{"MaxMetric valid", func(e *Event) {
			e.TokensIn, e.TokensOut, e.DurationMS, e.APICalls = MaxMetric, MaxMetric, MaxMetric, MaxMetric
		}, ""},
		{"256 chars valid", func(e *Event) { e.TaskID = strings.Repeat("x", 256) }, ""},
		{"non-ASCII valid", func(e *Event) { e.AgentID = "urn:asap:agent:zürich" }, ""},
		{"space valid", func(e *Event) { e.TaskID = "task one" }, ""},
		{"non-UTC timestamp valid", func(e *Event) { e.Timestamp = mustTime("2026-01-01T05:00:00+05:00") }, ""},

		{"task_id missing", func(e *Event) { e.TaskID = "" }, "task_id is required"},
		{"agent_id missing", func(e *Event) { e.AgentID = "" }, "agent_id is required"},
		{"consumer_id missing", func(e *Event) { e.ConsumerID = "" }, "consumer_id is required"},
		{"all ids missing names the first", func(e *Event) { e.TaskID, e.AgentID, e.ConsumerID = "", "", "" }, "task_id is required"},
		{"timestamp missing", func(e *Event) { e.Timestamp = time.Time{} }, "timestamp is required"},
		{"task_id 257 chars", func(e *Event) { e.TaskID = strings.Repeat("x", 257) }, "task_id is longer than 256 characters"},
		{"agent_id 257 chars", func(e *Event) { e.AgentID = strings.Repeat("a", 257) }, "agent_id is longer than 256 characters"},
		{"consumer_id 1000 chars", func(e *Event) { e.ConsumerID = strings.Repeat("c", 1000) }, "consumer_id is longer than 256 characters"},
		{"NUL in task_id", func(e *Event) { e.TaskID = "t\x001" }, "task_id contains control characters"},
		{"NUL in agent_id", func(e *Event) { e.AgentID = agentA + "\x00" }, "agent_id contains control characters"},
		{"NUL in consumer_id", func(e *Event) { e.ConsumerID = "\x00" }, "consumer_id contains control characters"},
		{"newline", func(e *Event) { e.TaskID = "t\n1" }, "task_id contains control characters"},
		{"tab", func(e *Event) { e.AgentID = "a\tb" }, "agent_id contains control characters"},
		{"DEL", func(e *Event) { e.ConsumerID = "c\x7f" }, "consumer_id contains control characters"},
		{"C1 control", func(e *Event) { e.TaskID = "t\u0085" }, "task_id contains control characters"},
		{"negative tokens_in", func(e *Event) { e.TokensIn = -1 }, "tokens_in must be ≥ 0"},
		{"negative tokens_out", func(e *Event) { e.TokensOut = -5 }, "tokens_out must be ≥ 0"},
		{"negative duration_ms", func(e *Event) { e.DurationMS = -1 }, "duration_ms must be ≥ 0"},
		{"negative api_calls", func(e *Event) { e.APICalls = -1 << 62 }, "api_calls must be ≥ 0"},
		{"tokens_in > MaxMetric", func(e *Event) { e.TokensIn = MaxMetric + 1 }, "tokens_in is larger than 1000000000000"},
		{"tokens_out > MaxMetric", func(e *Event) { e.TokensOut = 1 << 62 }, "tokens_out is larger than 1000000000000"},
		{"duration_ms > MaxMetric", func(e *Event) { e.DurationMS = MaxMetric + 1 }, "duration_ms is larger than 1000000000000"},
		{"api_calls > MaxMetric", func(e *Event) { e.APICalls = MaxMetric * 2 }, "api_calls is larger than 1000000000000"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := validEvent()
			c.change(&e)
			err := e.Validate()
			if c.err == "" {
				if err != nil {
					t.Fatalf("want valid, got %v", err)
				}
				return
			}
			if err == nil || err.Error() != c.err {
				t.Fatalf("want error %q, got %v", c.err, err)
			}
		})
	}
}

func TestValidateLengthLimitCountsCharacters(t *testing.T) {
	e := validEvent()
	e.TaskID = strings.Repeat("é", 256)
	if err := e.Validate(); err != nil {
		t.Fatalf("256 characters: %v", err)
	}
	e.TaskID = strings.Repeat("é", 257)
	if err := e.Validate(); err == nil {
		t.Fatal("257 characters accepted")
	}
}

// The first and last years the store keys are accepted.
func TestValidateTimestampYearEdges(t *testing.T) {
	for _, ts := range []string{"1970-01-01T00:00:00Z", "9999-12-31T23:59:59Z"} {
		e := validEvent()
		e.Timestamp = mustTime(ts)
		if err := e.Validate(); err != nil {
			t.Errorf("%s: %v", ts, err)
		}
	}
	e := validEvent()
	e.Timestamp = time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC)
	if err := e.Validate(); err == nil {
		t.Error("year 10000 accepted")
	}
}

func TestValidateRejectsTimestampsTheStoreCannotKey(t *testing.T) {
	for _, ts := range []string{"1969-12-31T23:59:59Z", "1900-01-01T00:00:00Z", "0001-01-01T00:00:01Z"} {
		e := validEvent()
		e.Timestamp = mustTime(ts)
		if err := e.Validate(); err == nil {
			t.Errorf("%s: accepted, but Put cannot store it", ts)
		}
	}
}

// ---------------------------------------------------------------- DecodeEvent

func TestDecodeEvent(t *testing.T) {
	b := `{"task_id":"t1","agent_id":"urn:asap:agent:a","consumer_id":"urn:asap:agent:c","tokens_in":1,"tokens_out":2,` +
		`"duration_ms":3,"api_calls":4,"timestamp":"2026-01-01T02:00:00.5+02:00"}`
	e, err := DecodeEvent([]byte(b))
	if err != nil {
		t.Fatal(err)
	}
	want := Event{TaskID: "t1", AgentID: "urn:asap:agent:a", ConsumerID: "urn:asap:agent:c", TokensIn: 1, TokensOut: 2,
		DurationMS: 3, APICalls: 4, Timestamp: time.Date(2026, 1, 1, 0, 0, 0, 500_000_000, time.UTC)}
	eq(t, "event", *e, want)
	if e.Timestamp.Location() != time.UTC {
		t.Errorf("timestamp not normalised to UTC: %v", e.Timestamp.Location())
	}

	// Only the four required fields: the figures default to 0.
	e, err = DecodeEvent([]byte(`{"task_id":"t","agent_id":"a","consumer_id":"c","timestamp":"2026-01-01T00:00:00Z"}`))
	if err != nil {
		t.Fatal(err)
	}
	if e.TokensIn != 0 || e.TokensOut != 0 || e.DurationMS != 0 || e.APICalls != 0 {
		t.Errorf("defaults: %+v", e)
	}

	// The sidecar's own fields are part of the event (envelope_id is the
	// dedup key of POST /usage).
	e, err = DecodeEvent([]byte(`{"task_id":"t","agent_id":"a","consumer_id":"c","timestamp":"2026-01-01T00:00:00Z",` +
		`"status":"failed","envelope_id":"env-1","delegation_id":"j","root_issuer":"r","payload_type":"task.request"}`))
	if err != nil {
		t.Fatal(err)
	}
	if e.EnvelopeID != "env-1" || e.Status != "failed" || e.DelegationID != "j" || e.RootIssuer != "r" || e.PayloadType != "task.request" {
		t.Errorf("sidecar fields: %+v", e)
	}
}

func TestDecodeEventErrors(t *testing.T) {
	base := `"task_id":"t","agent_id":"a","consumer_id":"c","timestamp":"2026-01-01T00:00:00Z"`
	cases := []struct{ name, body, want string }{
		{"unknown field", `{` + base + `,"extra":1}`, `unknown field "extra"`},
		{"missing task_id", `{"agent_id":"a","consumer_id":"c","timestamp":"2026-01-01T00:00:00Z"}`, "task_id is required"},
		{"missing agent_id", `{"task_id":"t","consumer_id":"c","timestamp":"2026-01-01T00:00:00Z"}`, "agent_id is required"},
		{"missing consumer_id", `{"task_id":"t","agent_id":"a","timestamp":"2026-01-01T00:00:00Z"}`, "consumer_id is required"},
		{"missing timestamp", `{"task_id":"t","agent_id":"a","consumer_id":"c"}`, "timestamp is required"},
		{"null body", `null`, "task_id is required"},
		{"empty body", ``, "EOF"},
		{"not JSON", `hello`, "invalid character"},
		{"array", `[]`, "must be a JSON object"},
		{"bad timestamp", `{"task_id":"t","agent_id":"a","consumer_id":"c","timestamp":"yesterday"}`, "parsing time"},
		{"negative", `{` + base + `,"tokens_in":-1}`, "tokens_in must be ≥ 0"},
		{"too large", `{` + base + `,"duration_ms":1000000000001}`, "duration_ms is larger than 1000000000000"},
		{"fraction", `{` + base + `,"tokens_out":1.5}`, "tokens_out"},
		{"string figure", `{` + base + `,"api_calls":"12"}`, "api_calls"},
		{"bool figure", `{` + base + `,"tokens_in":true}`, "tokens_in"},
		{"overflowing int64", `{` + base + `,"tokens_in":1e30}`, "tokens_in"},
		{"NUL escape", `{"task_id":"t\u0000","agent_id":"a","consumer_id":"c","timestamp":"2026-01-01T00:00:00Z"}`, "task_id contains control characters"},
		{"too long", `{"task_id":"` + strings.Repeat("t", 300) + `","agent_id":"a","consumer_id":"c","timestamp":"2026-01-01T00:00:00Z"}`, "task_id is longer than 256"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e, err := DecodeEvent([]byte(c.body))
			if err == nil {
				t.Fatalf("accepted: %+v", e)
			}
			if e != nil {
				t.Errorf("event returned with error: %+v", e)
			}
			if !strings.HasPrefix(err.Error(), "invalid usage event: ") || !strings.Contains(err.Error(), c.want) {
				t.Errorf("error %q: want prefix %q and %q", err, "invalid usage event: ", c.want)
			}
		})
	}
}

func TestDecodeEventRejectsTrailingData(t *testing.T) {
	ok := `{"task_id":"t","agent_id":"a","consumer_id":"c","timestamp":"2026-01-01T00:00:00Z"}`
	for _, body := range []string{ok + ` {"task_id":"x"}`, ok + `garbage`, ok + `]`} {
		if e, err := DecodeEvent([]byte(body)); err == nil {
			t.Errorf("%q accepted as %+v", body, e)
		}
	}
}

func TestDecodeEventFieldNamesAreCaseSensitive(t *testing.T) {
	body := `{"TASK_ID":"t","Agent_Id":"a","consumer_id":"c","Timestamp":"2026-01-01T00:00:00Z"}`
	if e, err := DecodeEvent([]byte(body)); err == nil {
		t.Errorf("accepted as %+v", e)
	}
}
