package metering

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
)

// The expected values below are computed by hand from the table above fx.

func TestAggregateByAgent(t *testing.T) {
	s := New(openDB(t), 0)
	seed(t, s)
	rows, err := s.Aggregate(Filter{}, ByAgent)
	if err != nil {
		t.Fatal(err)
	}
	// A: e1 e2 e5 e7 → tokens 30+10+15+4=59, duration 100+50+9+2=161, calls 1+2+1+2=6
	// B: e3 e8 e4 e6 → tokens 100+7+3+30=140, duration 1000+5+3+60=1068, calls 0+0+4+3=7
	eq(t, "rows", rows.([]AgentRow), []AgentRow{
		{AgentID: agentA, Period: "all", TotalTokens: 59, TotalDurationMS: 161, TotalTasks: 4, TotalAPICalls: 6, AvgTokensPerTask: 14.75, AvgDurationMSPerTask: 40.25},
		{AgentID: agentB, Period: "all", TotalTokens: 140, TotalDurationMS: 1068, TotalTasks: 4, TotalAPICalls: 7, AvgTokensPerTask: 35, AvgDurationMSPerTask: 267},
	})
	if b := jsonOf(t, rows); b != `[{"agent_id":"urn:asap:agent:alpha","period":"all","total_tokens":59,"total_duration_ms":161,`+
		`"total_tasks":4,"total_api_calls":6,"avg_tokens_per_task":14.75,"avg_duration_ms_per_task":40.25},`+
		`{"agent_id":"urn:asap:agent:beta","period":"all","total_tokens":140,"total_duration_ms":1068,`+
		`"total_tasks":4,"total_api_calls":7,"avg_tokens_per_task":35,"avg_duration_ms_per_task":267}]` {
		t.Errorf("JSON %s", b)
	}

	// Consumer C1 only: A has e1 e5, B has e3 e6.
	rows, err = s.Aggregate(Filter{ConsumerID: consC1}, ByAgent)
	if err != nil {
		t.Fatal(err)
	}
	eq(t, "consumer C1 by agent", rows.([]AgentRow), []AgentRow{
		{AgentID: agentA, Period: "all", TotalTokens: 45, TotalDurationMS: 109, TotalTasks: 2, TotalAPICalls: 2, AvgTokensPerTask: 22.5, AvgDurationMSPerTask: 54.5},
		{AgentID: agentB, Period: "all", TotalTokens: 130, TotalDurationMS: 1060, TotalTasks: 2, TotalAPICalls: 3, AvgTokensPerTask: 65, AvgDurationMSPerTask: 530},
	})
}

func TestAggregateByConsumer(t *testing.T) {
	s := New(openDB(t), 0)
	seed(t, s)
	rows, err := s.Aggregate(Filter{}, ByConsumer)
	if err != nil {
		t.Fatal(err)
	}
	// C1: e1 e3 e5 e6 → tokens 30+100+15+30=175, duration 100+1000+9+60=1169, calls 1+0+1+3=5
	// C2: e2 e8 e4 e7 → tokens 10+7+3+4=24, duration 50+5+3+2=60, calls 2+0+4+2=8
	eq(t, "rows", rows.([]ConsumerRow), []ConsumerRow{
		{ConsumerID: consC1, Period: "all", TotalTokens: 175, TotalDurationMS: 1169, TotalTasks: 4, TotalAPICalls: 5, AvgTokensPerTask: 43.75, TokensIn: 117, TokensOut: 58},
		{ConsumerID: consC2, Period: "all", TotalTokens: 24, TotalDurationMS: 60, TotalTasks: 4, TotalAPICalls: 8, AvgTokensPerTask: 6, TokensIn: 11, TokensOut: 13},
	})
	// No average duration in the consumer shape.
	if b := jsonOf(t, rows); b != `[{"consumer_id":"urn:asap:agent:c1","period":"all","total_tokens":175,"total_duration_ms":1169,`+
		`"total_tasks":4,"total_api_calls":5,"avg_tokens_per_task":43.75},`+
		`{"consumer_id":"urn:asap:agent:c2","period":"all","total_tokens":24,"total_duration_ms":60,`+
		`"total_tasks":4,"total_api_calls":8,"avg_tokens_per_task":6}]` {
		t.Errorf("JSON %s", b)
	}
	// The billing CSV: one line per consumer, tokens split in and out.
	var csv strings.Builder
	if err := WriteAggregateCSV(&csv, rows); err != nil {
		t.Fatal(err)
	}
	if want := "consumer_id,period,total_tasks,tokens_in,tokens_out,total_tokens,total_api_calls,total_duration_ms,avg_tokens_per_task\r\n" +
		"urn:asap:agent:c1,all,4,117,58,175,5,1169,43.75\r\n" +
		"urn:asap:agent:c2,all,4,11,13,24,8,60,6\r\n"; csv.String() != want {
		t.Errorf("CSV:\n%s\nwant\n%s", csv.String(), want)
	}
	// A bounded query says which span it covers.
	rows, _ = s.Aggregate(Filter{AgentID: agentB, End: fx["e8"].Timestamp}, ByConsumer)
	end := "../" + fx["e8"].Timestamp.UTC().Format(time.RFC3339Nano)
	eq(t, "agent B up to e8", rows.([]ConsumerRow), []ConsumerRow{
		{ConsumerID: consC1, Period: end, TotalTokens: 100, TotalDurationMS: 1000, TotalTasks: 1, TotalAPICalls: 0, AvgTokensPerTask: 100, TokensIn: 100},
		{ConsumerID: consC2, Period: end, TotalTokens: 7, TotalDurationMS: 5, TotalTasks: 1, TotalAPICalls: 0, AvgTokensPerTask: 7, TokensIn: 3, TokensOut: 4},
	})
}

func TestPeriodOf(t *testing.T) {
	jan1 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	endOfJan := time.Date(2026, 2, 1, 0, 0, 0, 0, time.UTC).Add(-time.Nanosecond)
	noon := time.Date(2026, 1, 15, 12, 30, 0, 0, time.UTC)
	for _, tc := range []struct {
		f    Filter
		want string
	}{
		{Filter{}, "all"},
		{Filter{Start: jan1, End: endOfJan}, "2026-01-01/2026-01-31"},
		{Filter{Start: noon}, "2026-01-15T12:30:00Z/.."},
		{Filter{Start: jan1, End: noon}, "2026-01-01/2026-01-15T12:30:00Z"},
	} {
		if got := PeriodOf(tc.f); got != tc.want {
			t.Errorf("PeriodOf(%v..%v) = %q, want %q", tc.f.Start, tc.f.End, got, tc.want)
		}
	}
}

func TestAggregateByDay(t *testing.T) {
	s := New(openDB(t), 0)
	seed(t, s)
	rows, err := s.Aggregate(Filter{}, ByDay)
	if err != nil {
		t.Fatal(err)
	}
	eq(t, "rows", rows.([]PeriodRow), []PeriodRow{
		{Period: "2026-02-06", TotalTokens: 40, TotalDurationMS: 150, TotalTasks: 2, TotalAPICalls: 3, UniqueAgents: 1, UniqueConsumers: 2},
		{Period: "2026-02-07", TotalTokens: 100, TotalDurationMS: 1000, TotalTasks: 1, TotalAPICalls: 0, UniqueAgents: 1, UniqueConsumers: 1},
		{Period: "2026-02-08", TotalTokens: 7, TotalDurationMS: 5, TotalTasks: 1, TotalAPICalls: 0, UniqueAgents: 1, UniqueConsumers: 1},
		{Period: "2026-02-09", TotalTokens: 3, TotalDurationMS: 3, TotalTasks: 1, TotalAPICalls: 4, UniqueAgents: 1, UniqueConsumers: 1},
		{Period: "2026-12-31", TotalTokens: 15, TotalDurationMS: 9, TotalTasks: 1, TotalAPICalls: 1, UniqueAgents: 1, UniqueConsumers: 1},
		{Period: "2027-01-01", TotalTokens: 30, TotalDurationMS: 60, TotalTasks: 1, TotalAPICalls: 3, UniqueAgents: 1, UniqueConsumers: 1},
		{Period: "2027-01-04", TotalTokens: 4, TotalDurationMS: 2, TotalTasks: 1, TotalAPICalls: 2, UniqueAgents: 1, UniqueConsumers: 1},
	})
	if b := jsonOf(t, rows.([]PeriodRow)[0]); b != `{"period":"2026-02-06","total_tokens":40,"total_duration_ms":150,`+
		`"total_tasks":2,"total_api_calls":3,"unique_agents":1,"unique_consumers":2}` {
		t.Errorf("JSON %s", b)
	}
}

func TestAggregateByWeek(t *testing.T) {
	s := New(openDB(t), 0)
	seed(t, s)
	rows, err := s.Aggregate(Filter{}, ByWeek)
	if err != nil {
		t.Fatal(err)
	}
	// W06: e1 e2 e3 e8 → tokens 30+10+100+7=147, duration 100+50+1000+5=1155, calls 3, agents A B, consumers C1 C2
	// W53 of 2026 holds 2026-12-31 and 2027-01-01 (e5 e6): tokens 45, duration 69, calls 4, agents A B, consumer C1
	eq(t, "rows", rows.([]PeriodRow), []PeriodRow{
		{Period: "2026-W06", TotalTokens: 147, TotalDurationMS: 1155, TotalTasks: 4, TotalAPICalls: 3, UniqueAgents: 2, UniqueConsumers: 2},
		{Period: "2026-W07", TotalTokens: 3, TotalDurationMS: 3, TotalTasks: 1, TotalAPICalls: 4, UniqueAgents: 1, UniqueConsumers: 1},
		{Period: "2026-W53", TotalTokens: 45, TotalDurationMS: 69, TotalTasks: 2, TotalAPICalls: 4, UniqueAgents: 2, UniqueConsumers: 1},
		{Period: "2027-W01", TotalTokens: 4, TotalDurationMS: 2, TotalTasks: 1, TotalAPICalls: 2, UniqueAgents: 1, UniqueConsumers: 1},
	})
	rows, _ = s.Aggregate(Filter{AgentID: agentA}, ByWeek)
	eq(t, "agent A by week", rows.([]PeriodRow), []PeriodRow{
		{Period: "2026-W06", TotalTokens: 40, TotalDurationMS: 150, TotalTasks: 2, TotalAPICalls: 3, UniqueAgents: 1, UniqueConsumers: 2},
		{Period: "2026-W53", TotalTokens: 15, TotalDurationMS: 9, TotalTasks: 1, TotalAPICalls: 1, UniqueAgents: 1, UniqueConsumers: 1},
		{Period: "2027-W01", TotalTokens: 4, TotalDurationMS: 2, TotalTasks: 1, TotalAPICalls: 2, UniqueAgents: 1, UniqueConsumers: 1},
	})
}

func TestAggregateEmptyAndInvalid(t *testing.T) {
	s := New(openDB(t), 0)
	for _, g := range []string{ByAgent, ByConsumer, ByDay, ByWeek} {
		rows, err := s.Aggregate(Filter{}, g)
		if err != nil {
			t.Fatal(err)
		}
		if b := jsonOf(t, rows); b != "[]" {
			t.Errorf("%s on an empty store: %s", g, b)
		}
	}
	seed(t, s)
	rows, _ := s.Aggregate(Filter{AgentID: "urn:asap:agent:nobody"}, ByWeek)
	if b := jsonOf(t, rows); b != "[]" {
		t.Errorf("no match: %s", b)
	}
	for _, g := range []string{"", "month", "Agent", "agents", "days", " day"} {
		rows, err := s.Aggregate(Filter{}, g)
		if err == nil || err.Error() != "group_by must be one of: agent, consumer, day, week" || rows != nil {
			t.Errorf("group_by %q: %v, %v", g, rows, err)
		}
	}
	for _, g := range []string{"agent", "consumer", "day", "week"} {
		if !ValidGroupBy(g) {
			t.Errorf("ValidGroupBy(%q) = false", g)
		}
	}
	if ValidGroupBy("month") || ValidGroupBy("") {
		t.Error("ValidGroupBy accepts junk")
	}
}

func TestPeriods(t *testing.T) {
	for _, c := range []struct{ ts, day, week string }{
		{"2026-02-06T12:00:00Z", "2026-02-06", "2026-W06"},
		{"2026-01-01T00:00:00Z", "2026-01-01", "2026-W01"},
		{"2025-12-29T00:00:00Z", "2025-12-29", "2026-W01"},
		{"2025-12-28T23:59:59Z", "2025-12-28", "2025-W52"},
		{"2026-12-31T23:59:59Z", "2026-12-31", "2026-W53"},
		{"2027-01-01T00:00:00Z", "2027-01-01", "2026-W53"},
		{"2027-01-03T23:59:59.999Z", "2027-01-03", "2026-W53"},
		{"2027-01-04T00:00:00Z", "2027-01-04", "2027-W01"},
		{"2024-12-30T00:00:00Z", "2024-12-30", "2025-W01"},
		// Periods are UTC, whatever zone the time is given in.
		{"2026-02-06T23:30:00-05:00", "2026-02-07", "2026-W06"},
		{"2026-02-09T01:00:00+02:00", "2026-02-08", "2026-W06"},
	} {
		ts := mustTime(c.ts)
		if got := DayPeriod(ts); got != c.day {
			t.Errorf("DayPeriod(%s) = %s, want %s", c.ts, got, c.day)
		}
		if got := WeekPeriod(ts); got != c.week {
			t.Errorf("WeekPeriod(%s) = %s, want %s", c.ts, got, c.week)
		}
	}
}

func TestSummarize(t *testing.T) {
	s := New(openDB(t), 0)
	sum, err := s.Summarize(Filter{})
	if err != nil {
		t.Fatal(err)
	}
	if sum != (Summary{}) {
		t.Errorf("empty: %+v", sum)
	}
	if b := jsonOf(t, sum); b != `{"total_tasks":0,"total_tokens":0,"total_duration_ms":0,"unique_agents":0,"unique_consumers":0,"total_api_calls":0}` {
		t.Errorf("empty JSON %s", b)
	}
	seed(t, s)
	for _, c := range []struct {
		name string
		f    Filter
		want Summary
	}{
		{"all", Filter{}, Summary{TotalTasks: 8, TotalTokens: 199, TotalDurationMS: 1229, UniqueAgents: 2, UniqueConsumers: 2, TotalAPICalls: 13}},
		{"agent A", Filter{AgentID: agentA}, Summary{TotalTasks: 4, TotalTokens: 59, TotalDurationMS: 161, UniqueAgents: 1, UniqueConsumers: 2, TotalAPICalls: 6}},
		{"consumer C2", Filter{ConsumerID: consC2}, Summary{TotalTasks: 4, TotalTokens: 24, TotalDurationMS: 60, UniqueAgents: 2, UniqueConsumers: 1, TotalAPICalls: 8}},
		{"task t1", Filter{TaskID: "t1"}, Summary{TotalTasks: 2, TotalTokens: 37, TotalDurationMS: 105, UniqueAgents: 2, UniqueConsumers: 2, TotalAPICalls: 1}},
		{"February 2026", Filter{Start: mustTime("2026-02-01T00:00:00Z"), End: mustTime("2026-02-28T23:59:59Z")},
			Summary{TotalTasks: 5, TotalTokens: 150, TotalDurationMS: 1158, UniqueAgents: 2, UniqueConsumers: 2, TotalAPICalls: 7}},
		{"nothing", Filter{AgentID: "urn:asap:agent:nobody"}, Summary{}},
	} {
		sum, err := s.Summarize(c.f)
		if err != nil {
			t.Fatal(err)
		}
		eq(t, c.name, sum, c.want)
	}
	sum, _ = s.Summarize(Filter{})
	if b := jsonOf(t, sum); b != `{"total_tasks":8,"total_tokens":199,"total_duration_ms":1229,"unique_agents":2,"unique_consumers":2,"total_api_calls":13}` {
		t.Errorf("JSON %s", b)
	}
}

// ---------------------------------------------------------------- CSV

const csvHeader = "task_id,agent_id,consumer_id,tokens_in,tokens_out,duration_ms,api_calls,timestamp\r\n"

func TestWriteCSV(t *testing.T) {
	ev := func(task, consumer string, in, out, dur, calls int64, ts string) Event {
		return Event{TaskID: task, AgentID: "urn:asap:agent:a", ConsumerID: consumer, TokensIn: in, TokensOut: out,
			DurationMS: dur, APICalls: calls, Timestamp: mustTime(ts), Status: "completed", EnvelopeID: "not exported"}
	}
	events := []Event{
		ev("t1", "urn:asap:agent:c", 1, 2, 3, 4, "2026-01-01T00:00:00Z"),
		ev("t,2", `c "q"`, 0, 0, 0, 0, "2026-01-01T00:00:00.123456Z"),
		ev("t3", "urn:asap:agent:c", MaxMetric, 10, 20, 30, "2026-01-01T01:00:00.123456789+01:00"),
		ev("t4", "urn:asap:agent:c", 5, 6, 7, 8, "2026-06-30T23:59:59.000001Z"),
		ev("t5", "urn:asap:agent:c", 0, 0, 0, 0, "2026-01-01T00:00:00.0005Z"),
		ev("t6", "urn:asap:agent:c", 0, 0, 0, 0, "2026-01-01T00:00:00.000000999Z"),
		ev("zürich", "urn:asap:agent:c", 0, 0, 0, 0, "2026-01-01T00:00:00Z"),
	}
	var buf bytes.Buffer
	if err := WriteCSV(&buf, events); err != nil {
		t.Fatal(err)
	}
	want := csvHeader +
		"t1,urn:asap:agent:a,urn:asap:agent:c,1,2,3,4,2026-01-01T00:00:00+00:00\r\n" +
		"\"t,2\",urn:asap:agent:a,\"c \"\"q\"\"\",0,0,0,0,2026-01-01T00:00:00.123456+00:00\r\n" +
		"t3,urn:asap:agent:a,urn:asap:agent:c,1000000000000,10,20,30,2026-01-01T00:00:00.123456+00:00\r\n" +
		"t4,urn:asap:agent:a,urn:asap:agent:c,5,6,7,8,2026-06-30T23:59:59.000001+00:00\r\n" +
		"t5,urn:asap:agent:a,urn:asap:agent:c,0,0,0,0,2026-01-01T00:00:00.000500+00:00\r\n" +
		"t6,urn:asap:agent:a,urn:asap:agent:c,0,0,0,0,2026-01-01T00:00:00+00:00\r\n" +
		"zürich,urn:asap:agent:a,urn:asap:agent:c,0,0,0,0,2026-01-01T00:00:00+00:00\r\n"
	if buf.String() != want {
		t.Errorf("CSV:\n got  %q\n want %q", buf.String(), want)
	}

	for _, empty := range [][]Event{nil, {}} {
		buf.Reset()
		if err := WriteCSV(&buf, empty); err != nil {
			t.Fatal(err)
		}
		if buf.String() != csvHeader {
			t.Errorf("no events: %q", buf.String())
		}
	}
	eq(t, "CSVHeader", CSVHeader, []string{"task_id", "agent_id", "consumer_id", "tokens_in", "tokens_out", "duration_ms", "api_calls", "timestamp"})
}

func TestWriteCSVFromStore(t *testing.T) {
	s := New(openDB(t), 0)
	seed(t, s)
	events, err := s.Query(Filter{ConsumerID: consC1}, 100, 0)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := WriteCSV(&buf, events); err != nil {
		t.Fatal(err)
	}
	want := csvHeader +
		"t1,urn:asap:agent:alpha,urn:asap:agent:c1,10,20,100,1,2026-02-06T09:00:00+00:00\r\n" +
		"t3,urn:asap:agent:beta,urn:asap:agent:c1,100,0,1000,0,2026-02-07T00:00:00+00:00\r\n" +
		"t5,urn:asap:agent:alpha,urn:asap:agent:c1,7,8,9,1,2026-12-31T10:00:00+00:00\r\n" +
		"t6,urn:asap:agent:beta,urn:asap:agent:c1,0,30,60,3,2027-01-01T00:00:00.123456+00:00\r\n"
	if buf.String() != want {
		t.Errorf("CSV:\n got  %q\n want %q", buf.String(), want)
	}
}

func TestWriteCSVQuotesLikePython(t *testing.T) {
	var buf bytes.Buffer
	if err := WriteCSV(&buf, []Event{{TaskID: " t1", AgentID: "a", ConsumerID: `\.`, Timestamp: mustTime("2026-01-01T00:00:00Z")}}); err != nil {
		t.Fatal(err)
	}
	if want := csvHeader + " t1,a,\\.,0,0,0,0,2026-01-01T00:00:00+00:00\r\n"; buf.String() != want {
		t.Errorf("got %q, want %q", buf.String(), want)
	}
}

type failingWriter struct{ err error }

func (w failingWriter) Write([]byte) (int, error) { return 0, w.err }

func TestWriteCSVReportsWriteErrors(t *testing.T) {
	boom := errors.New("disk full")
	if err := WriteCSV(failingWriter{boom}, nil); !errors.Is(err, boom) {
		t.Errorf("header only: %v", err)
	}
	// Enough rows to overflow the csv writer's buffer mid-way.
	many := make([]Event, 500)
	for i := range many {
		many[i] = Event{TaskID: fmt.Sprintf("task-%04d-%s", i, strings.Repeat("x", 40)), AgentID: agentA, ConsumerID: consC1,
			Timestamp: mustTime("2026-01-01T00:00:00Z")}
	}
	if err := WriteCSV(failingWriter{boom}, many); !errors.Is(err, boom) {
		t.Errorf("many rows: %v", err)
	}
}

func TestPythonISO(t *testing.T) {
	for _, c := range []struct {
		in   time.Time
		want string
	}{
		{mustTime("2026-01-01T00:00:00Z"), "2026-01-01T00:00:00+00:00"},
		{mustTime("2026-01-01T00:00:00.123456Z"), "2026-01-01T00:00:00.123456+00:00"},
		{mustTime("2026-01-01T00:00:00.1Z"), "2026-01-01T00:00:00.100000+00:00"},
		{mustTime("2026-01-01T00:00:00.000001Z"), "2026-01-01T00:00:00.000001+00:00"},
		{mustTime("2026-01-01T00:00:00.999999999Z"), "2026-01-01T00:00:00.999999+00:00"},
		{mustTime("2026-01-01T00:00:00.000000999Z"), "2026-01-01T00:00:00+00:00"},
		{mustTime("2026-07-01T02:00:00+02:00"), "2026-07-01T00:00:00+00:00"},
		{mustTime("2025-12-31T23:00:00-01:30"), "2026-01-01T00:30:00+00:00"},
		{time.Date(999, 1, 2, 3, 4, 5, 0, time.UTC), "0999-01-02T03:04:05+00:00"},
	} {
		if got := PythonISO(c.in); got != c.want {
			t.Errorf("PythonISO(%v) = %s, want %s", c.in, got, c.want)
		}
	}
}
