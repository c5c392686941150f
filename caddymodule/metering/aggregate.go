package metering

import (
	"bufio"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Group-by keys of /usage/aggregate.
const (
	ByAgent    = "agent"
	ByConsumer = "consumer"
	ByDay      = "day"
	ByWeek     = "week"
)

// ValidGroupBy reports whether g is a group-by key.
func ValidGroupBy(g string) bool {
	return g == ByAgent || g == ByConsumer || g == ByDay || g == ByWeek
}

// AgentRow is one row of an aggregate by agent, in the reference's shape.
type AgentRow struct {
	AgentID              string  `json:"agent_id"`
	Period               string  `json:"period"`
	TotalTokens          int64   `json:"total_tokens"`
	TotalDurationMS      int64   `json:"total_duration_ms"`
	TotalTasks           int64   `json:"total_tasks"`
	TotalAPICalls        int64   `json:"total_api_calls"`
	AvgTokensPerTask     float64 `json:"avg_tokens_per_task"`
	AvgDurationMSPerTask float64 `json:"avg_duration_ms_per_task"`
}

// ConsumerRow is one row of an aggregate by consumer (the reference has no
// average duration here).
type ConsumerRow struct {
	ConsumerID       string  `json:"consumer_id"`
	Period           string  `json:"period"`
	TotalTokens      int64   `json:"total_tokens"`
	TotalDurationMS  int64   `json:"total_duration_ms"`
	TotalTasks       int64   `json:"total_tasks"`
	TotalAPICalls    int64   `json:"total_api_calls"`
	AvgTokensPerTask float64 `json:"avg_tokens_per_task"`
	// TokensIn and TokensOut split TotalTokens for the billing CSV; the
	// JSON keeps the reference's shape.
	TokensIn  int64 `json:"-"`
	TokensOut int64 `json:"-"`
}

// PeriodRow is one row of an aggregate by day or ISO week.
type PeriodRow struct {
	Period          string `json:"period"`
	TotalTokens     int64  `json:"total_tokens"`
	TotalDurationMS int64  `json:"total_duration_ms"`
	TotalTasks      int64  `json:"total_tasks"`
	TotalAPICalls   int64  `json:"total_api_calls"`
	UniqueAgents    int    `json:"unique_agents"`
	UniqueConsumers int    `json:"unique_consumers"`
}

// Summary is the answer of GET /usage/summary.
type Summary struct {
	TotalTasks      int64 `json:"total_tasks"`
	TotalTokens     int64 `json:"total_tokens"`
	TotalDurationMS int64 `json:"total_duration_ms"`
	UniqueAgents    int   `json:"unique_agents"`
	UniqueConsumers int   `json:"unique_consumers"`
	TotalAPICalls   int64 `json:"total_api_calls"`
}

type totals struct {
	tasks, tokens, duration, calls int64
	tokensIn, tokensOut            int64
	agents, consumers              map[string]struct{}
}

func (t *totals) add(e *Event) {
	t.tasks++
	t.tokens += e.TokensIn + e.TokensOut
	t.tokensIn += e.TokensIn
	t.tokensOut += e.TokensOut
	t.duration += e.DurationMS
	t.calls += e.APICalls
	if t.agents != nil {
		t.agents[e.AgentID] = struct{}{}
		t.consumers[e.ConsumerID] = struct{}{}
	}
}

func (t *totals) avg(v int64) float64 {
	if t.tasks == 0 {
		return 0
	}
	return float64(v) / float64(t.tasks)
}

// DayPeriod formats a day period: 2026-02-06.
func DayPeriod(ts time.Time) string { return ts.UTC().Format("2006-01-02") }

// WeekPeriod formats an ISO week period: 2026-W06.
func WeekPeriod(ts time.Time) string {
	y, w := ts.UTC().ISOWeek()
	return fmt.Sprintf("%04d-W%02d", y, w)
}

// PeriodOf names the time span a filter covers, for the period of an
// aggregate by agent or consumer: "all" without bounds, else an ISO 8601
// interval START/END with ".." for an open side. Whole days print as
// dates: 2026-01-01/2026-01-31 is all of January.
func PeriodOf(f Filter) string {
	if f.Start.IsZero() && f.End.IsZero() {
		return "all"
	}
	start, end := "..", ".."
	if !f.Start.IsZero() {
		start = f.Start.UTC().Format(time.RFC3339Nano)
		if s := f.Start.UTC(); s.Equal(s.Truncate(24 * time.Hour)) {
			start = DayPeriod(s)
		}
	}
	if !f.End.IsZero() {
		end = f.End.UTC().Format(time.RFC3339Nano)
		// End is inclusive: the last nanosecond of a day is that day.
		if next := f.End.UTC().Add(time.Nanosecond); next.Equal(next.Truncate(24 * time.Hour)) {
			end = DayPeriod(f.End)
		}
	}
	return start + "/" + end
}

// Aggregate groups the matching events; the result is a slice of
// AgentRow, ConsumerRow or PeriodRow sorted by its key. Rows by agent or
// consumer carry the filter's span as their period (PeriodOf).
func (s *Store) Aggregate(f Filter, groupBy string) (any, error) {
	if !ValidGroupBy(groupBy) {
		return nil, fmt.Errorf("group_by must be one of: agent, consumer, day, week")
	}
	groups := map[string]*totals{}
	periodic := groupBy == ByDay || groupBy == ByWeek
	err := s.Each(f, func(e *Event) bool {
		var key string
		switch groupBy {
		case ByAgent:
			key = e.AgentID
		case ByConsumer:
			key = e.ConsumerID
		case ByDay:
			key = DayPeriod(e.Timestamp)
		case ByWeek:
			key = WeekPeriod(e.Timestamp)
		}
		t := groups[key]
		if t == nil {
			t = &totals{}
			if periodic {
				t.agents, t.consumers = map[string]struct{}{}, map[string]struct{}{}
			}
			groups[key] = t
		}
		t.add(e)
		return true
	})
	if err != nil {
		return nil, err
	}
	keys := make([]string, 0, len(groups))
	for k := range groups {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	period := PeriodOf(f)
	switch groupBy {
	case ByAgent:
		rows := make([]AgentRow, 0, len(keys))
		for _, k := range keys {
			t := groups[k]
			rows = append(rows, AgentRow{AgentID: k, Period: period, TotalTokens: t.tokens, TotalDurationMS: t.duration,
				TotalTasks: t.tasks, TotalAPICalls: t.calls, AvgTokensPerTask: t.avg(t.tokens), AvgDurationMSPerTask: t.avg(t.duration)})
		}
		return rows, nil
	case ByConsumer:
		rows := make([]ConsumerRow, 0, len(keys))
		for _, k := range keys {
			t := groups[k]
			rows = append(rows, ConsumerRow{ConsumerID: k, Period: period, TotalTokens: t.tokens, TotalDurationMS: t.duration,
				TotalTasks: t.tasks, TotalAPICalls: t.calls, AvgTokensPerTask: t.avg(t.tokens), TokensIn: t.tokensIn, TokensOut: t.tokensOut})
		}
		return rows, nil
	}
	rows := make([]PeriodRow, 0, len(keys))
	for _, k := range keys {
		t := groups[k]
		rows = append(rows, PeriodRow{Period: k, TotalTokens: t.tokens, TotalDurationMS: t.duration, TotalTasks: t.tasks,
			TotalAPICalls: t.calls, UniqueAgents: len(t.agents), UniqueConsumers: len(t.consumers)})
	}
	return rows, nil
}

// Summarize totals the matching events.
func (s *Store) Summarize(f Filter) (Summary, error) {
	t := totals{agents: map[string]struct{}{}, consumers: map[string]struct{}{}}
	err := s.Each(f, func(e *Event) bool { t.add(e); return true })
	return Summary{TotalTasks: t.tasks, TotalTokens: t.tokens, TotalDurationMS: t.duration,
		UniqueAgents: len(t.agents), UniqueConsumers: len(t.consumers), TotalAPICalls: t.calls}, err
}

// CSVHeader is the reference's export header.
var CSVHeader = []string{"task_id", "agent_id", "consumer_id", "tokens_in", "tokens_out", "duration_ms", "api_calls", "timestamp"}

// WriteCSV writes events as the reference's CSV export: its header, CRLF
// line ends, Python's csv quoting (QUOTE_MINIMAL: only fields holding a
// comma, quote or line break), and timestamps in Python's isoformat
// (+00:00, microseconds only when non-zero). encoding/csv quotes more
// (leading spaces, `\.`), so the rows are written here.
func WriteCSV(w io.Writer, events []Event) error {
	bw := bufio.NewWriter(w)
	writeRow(bw, CSVHeader)
	for i := range events {
		e := &events[i]
		writeRow(bw, []string{e.TaskID, e.AgentID, e.ConsumerID,
			strconv.FormatInt(e.TokensIn, 10), strconv.FormatInt(e.TokensOut, 10),
			strconv.FormatInt(e.DurationMS, 10), strconv.FormatInt(e.APICalls, 10),
			PythonISO(e.Timestamp)})
	}
	return bw.Flush()
}

// WriteAggregateCSV writes Aggregate's rows as CSV, one line per group,
// in WriteCSV's dialect. By consumer it is the billing export: one line
// per customer with the period it covers and tokens split in and out.
func WriteAggregateCSV(w io.Writer, rows any) error {
	bw := bufio.NewWriter(w)
	i64 := func(v int64) string { return strconv.FormatInt(v, 10) }
	f64 := func(v float64) string { return strconv.FormatFloat(v, 'f', -1, 64) }
	switch rows := rows.(type) {
	case []ConsumerRow:
		writeRow(bw, []string{"consumer_id", "period", "total_tasks", "tokens_in", "tokens_out", "total_tokens", "total_api_calls", "total_duration_ms", "avg_tokens_per_task"})
		for _, r := range rows {
			writeRow(bw, []string{r.ConsumerID, r.Period, i64(r.TotalTasks), i64(r.TokensIn), i64(r.TokensOut), i64(r.TotalTokens), i64(r.TotalAPICalls), i64(r.TotalDurationMS), f64(r.AvgTokensPerTask)})
		}
	case []AgentRow:
		writeRow(bw, []string{"agent_id", "period", "total_tasks", "total_tokens", "total_api_calls", "total_duration_ms", "avg_tokens_per_task", "avg_duration_ms_per_task"})
		for _, r := range rows {
			writeRow(bw, []string{r.AgentID, r.Period, i64(r.TotalTasks), i64(r.TotalTokens), i64(r.TotalAPICalls), i64(r.TotalDurationMS), f64(r.AvgTokensPerTask), f64(r.AvgDurationMSPerTask)})
		}
	case []PeriodRow:
		writeRow(bw, []string{"period", "total_tasks", "total_tokens", "total_api_calls", "total_duration_ms", "unique_agents", "unique_consumers"})
		for _, r := range rows {
			writeRow(bw, []string{r.Period, i64(r.TotalTasks), i64(r.TotalTokens), i64(r.TotalAPICalls), i64(r.TotalDurationMS), strconv.Itoa(r.UniqueAgents), strconv.Itoa(r.UniqueConsumers)})
		}
	default:
		return fmt.Errorf("metering: no CSV form for %T", rows)
	}
	return bw.Flush()
}

func writeRow(w *bufio.Writer, fields []string) {
	for i, f := range fields {
		if i > 0 {
			w.WriteByte(',')
		}
		if strings.ContainsAny(f, ",\"\r\n") {
			w.WriteByte('"')
			w.WriteString(strings.ReplaceAll(f, `"`, `""`))
			w.WriteByte('"')
		} else {
			w.WriteString(f)
		}
	}
	w.WriteString("\r\n")
}

// PythonISO formats t as Python's datetime.isoformat() does for a UTC time.
func PythonISO(t time.Time) string {
	t = t.UTC()
	s := t.Format("2006-01-02T15:04:05")
	if us := t.Nanosecond() / 1000; us != 0 {
		s += fmt.Sprintf(".%06d", us)
	}
	return s + "+00:00"
}
