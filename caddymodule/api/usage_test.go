package api

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/asap-sidecar/asap-sidecar/caddymodule/metering"
	"github.com/asap-sidecar/asap-sidecar/storage"
)

func openDB(t testing.TB) *storage.DB {
	t.Helper()
	db, err := storage.Open(storage.Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	t.Cleanup(func() { _ = db.Close() })
	return db
}

func newStore(t testing.TB, retention time.Duration) *metering.Store {
	t.Helper()
	return metering.New(openDB(t), retention)
}

// call serves one request with Usage, the path as a mount without
// prefix (the public API) passes it.
func call(t testing.TB, s *metering.Store, method, target, body string) *httptest.ResponseRecorder {
	t.Helper()
	r := httptest.NewRequest(method, target, strings.NewReader(body))
	if body != "" {
		r.Header.Set("Content-Type", "application/json")
	}
	w := httptest.NewRecorder()
	serve(&Services{Usage: s}, w, r)
	return w
}

func get(t testing.TB, s *metering.Store, target string) *httptest.ResponseRecorder {
	t.Helper()
	return call(t, s, http.MethodGet, target, "")
}

// expect checks status and the exact body.
func expect(t *testing.T, w *httptest.ResponseRecorder, status int, body string) {
	t.Helper()
	if w.Code != status || w.Body.String() != body {
		t.Errorf("got %d %s\nwant %d %s", w.Code, w.Body.String(), status, body)
	}
}

// expectJSON checks status, JSON content type and length, and returns the body.
func expectJSON(t *testing.T, w *httptest.ResponseRecorder, status int) map[string]any {
	t.Helper()
	if w.Code != status {
		t.Fatalf("status %d, want %d: %s", w.Code, status, w.Body.String())
	}
	if ct := w.Header().Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type %q", ct)
	}
	if cl := w.Header().Get("Content-Length"); cl != fmt.Sprint(w.Body.Len()) {
		t.Errorf("Content-Length %q for %d bytes", cl, w.Body.Len())
	}
	var m map[string]any
	if err := json.Unmarshal(w.Body.Bytes(), &m); err != nil {
		t.Fatalf("body %q: %v", w.Body.String(), err)
	}
	return m
}

func detail(t *testing.T, w *httptest.ResponseRecorder, status int) string {
	t.Helper()
	m := expectJSON(t, w, status)
	if len(m) != 1 {
		t.Errorf("error body has more than detail: %s", w.Body.String())
	}
	d, _ := m["detail"].(string)
	return d
}

func q(kv ...string) string {
	v := url.Values{}
	for i := 0; i < len(kv); i += 2 {
		v.Add(kv[i], kv[i+1])
	}
	return v.Encode()
}

// ------------------------------------------------------------------ data set

const (
	agentA = "urn:asap:agent:alpha"
	agentB = "urn:asap:agent:beta"
	consC1 = "urn:asap:agent:c1"
	consC2 = "urn:asap:agent:c2"
)

// The data set (as in the metering tests), chronological:
//
//	name task agent consumer  in  out  dur calls timestamp (UTC)            day         week
//	e1   t1   A     C1        10  20   100  1    2026-02-06T09:00:00        2026-02-06  2026-W06 (sent as +01:00)
//	e2   t2   A     C2         5   5    50  2    2026-02-06T23:59:59.999    2026-02-06  2026-W06
//	e3   t3   B     C1       100   0  1000  0    2026-02-07T00:00:00        2026-02-07  2026-W06
//	e8   t1   B     C2         3   4     5  0    2026-02-08T06:00:00        2026-02-08  2026-W06
//	e4   t4   B     C2         1   2     3  4    2026-02-09T12:00:00        2026-02-09  2026-W07
//	e5   t5   A     C1         7   8     9  1    2026-12-31T10:00:00        2026-12-31  2026-W53
//	e6   t6   B     C1         0  30    60  3    2027-01-01T00:00:00.123456 2027-01-01  2026-W53
//	e7   t7   A     C2         2   2     2  2    2027-01-04T08:00:00        2027-01-04  2027-W01
var fixture = map[string]string{
	"e1": `{"task_id":"t1","agent_id":"urn:asap:agent:alpha","consumer_id":"urn:asap:agent:c1","tokens_in":10,"tokens_out":20,"duration_ms":100,"api_calls":1,"timestamp":"2026-02-06T10:00:00+01:00"}`,
	"e2": `{"task_id":"t2","agent_id":"urn:asap:agent:alpha","consumer_id":"urn:asap:agent:c2","tokens_in":5,"tokens_out":5,"duration_ms":50,"api_calls":2,"timestamp":"2026-02-06T23:59:59.999Z"}`,
	"e3": `{"task_id":"t3","agent_id":"urn:asap:agent:beta","consumer_id":"urn:asap:agent:c1","tokens_in":100,"tokens_out":0,"duration_ms":1000,"api_calls":0,"timestamp":"2026-02-07T00:00:00Z"}`,
	"e8": `{"task_id":"t1","agent_id":"urn:asap:agent:beta","consumer_id":"urn:asap:agent:c2","tokens_in":3,"tokens_out":4,"duration_ms":5,"api_calls":0,"timestamp":"2026-02-08T06:00:00Z"}`,
	"e4": `{"task_id":"t4","agent_id":"urn:asap:agent:beta","consumer_id":"urn:asap:agent:c2","tokens_in":1,"tokens_out":2,"duration_ms":3,"api_calls":4,"timestamp":"2026-02-09T12:00:00Z"}`,
	"e5": `{"task_id":"t5","agent_id":"urn:asap:agent:alpha","consumer_id":"urn:asap:agent:c1","tokens_in":7,"tokens_out":8,"duration_ms":9,"api_calls":1,"timestamp":"2026-12-31T10:00:00Z"}`,
	"e6": `{"task_id":"t6","agent_id":"urn:asap:agent:beta","consumer_id":"urn:asap:agent:c1","tokens_in":0,"tokens_out":30,"duration_ms":60,"api_calls":3,"timestamp":"2027-01-01T00:00:00.123456Z"}`,
	"e7": `{"task_id":"t7","agent_id":"urn:asap:agent:alpha","consumer_id":"urn:asap:agent:c2","tokens_in":2,"tokens_out":2,"duration_ms":2,"api_calls":2,"timestamp":"2027-01-04T08:00:00Z"}`,
}

// Each event as GET /usage returns it (UTC, Z).
var stored = map[string]string{
	"e1": `{"task_id":"t1","agent_id":"urn:asap:agent:alpha","consumer_id":"urn:asap:agent:c1","tokens_in":10,"tokens_out":20,"duration_ms":100,"api_calls":1,"timestamp":"2026-02-06T09:00:00Z"}`,
}

var (
	chrono      = []string{"e1", "e2", "e3", "e8", "e4", "e5", "e6", "e7"}
	insertOrder = []string{"e7", "e3", "e1", "e6", "e2", "e5", "e8", "e4"}
	// timestamp as returned → name
	byTimestamp = map[string]string{
		"2026-02-06T09:00:00Z": "e1", "2026-02-06T23:59:59.999Z": "e2", "2026-02-07T00:00:00Z": "e3",
		"2026-02-08T06:00:00Z": "e8", "2026-02-09T12:00:00Z": "e4", "2026-12-31T10:00:00Z": "e5",
		"2027-01-01T00:00:00.123456Z": "e6", "2027-01-04T08:00:00Z": "e7",
	}
)

func init() {
	for n, b := range fixture {
		if n != "e1" {
			stored[n] = b
		}
	}
}

// seed records the data set through POST /usage/batch, out of time order.
func seed(t *testing.T, s *metering.Store) {
	t.Helper()
	var parts []string
	for _, n := range insertOrder {
		parts = append(parts, fixture[n])
	}
	w := call(t, s, http.MethodPost, "/usage/batch", `{"events":[`+strings.Join(parts, ",")+`]}`)
	expect(t, w, http.StatusCreated, `{"count":8,"status":"recorded","task_ids":["t7","t3","t1","t6","t2","t5","t1","t4"]}`)
}

// listed returns the names of the events in a GET /usage answer, checking
// that count matches data.
func listed(t *testing.T, w *httptest.ResponseRecorder) []string {
	t.Helper()
	var body struct {
		Data  []map[string]any `json:"data"`
		Count *int             `json:"count"`
	}
	if w.Code != http.StatusOK {
		t.Fatalf("status %d: %s", w.Code, w.Body.String())
	}
	if err := json.Unmarshal(w.Body.Bytes(), &body); err != nil {
		t.Fatal(err)
	}
	if body.Data == nil {
		t.Fatalf("data missing or null: %s", w.Body.String())
	}
	if body.Count == nil || *body.Count != len(body.Data) {
		t.Fatalf("count %v for %d events", body.Count, len(body.Data))
	}
	out := []string{}
	for _, e := range body.Data {
		n, ok := byTimestamp[e["timestamp"].(string)]
		if !ok {
			n = e["task_id"].(string)
		}
		out = append(out, n)
	}
	return out
}

func eq[T any](t *testing.T, what string, got, want T) {
	t.Helper()
	if !reflect.DeepEqual(got, want) {
		t.Errorf("%s:\n got  %#v\n want %#v", what, got, want)
	}
}

// ------------------------------------------------------------------ GET /usage

func TestListShape(t *testing.T) {
	s := newStore(t, 0)
	w := get(t, s, "/usage")
	expectJSON(t, w, http.StatusOK)
	expect(t, w, http.StatusOK, `{"count":0,"data":[]}`)

	seed(t, s)
	w = get(t, s, "/usage")
	expectJSON(t, w, http.StatusOK)
	var all []string
	for _, n := range chrono {
		all = append(all, stored[n])
	}
	expect(t, w, http.StatusOK, `{"count":8,"data":[`+strings.Join(all, ",")+`]}`)

	expect(t, get(t, s, "/usage?task_id=t3"), http.StatusOK, `{"count":1,"data":[`+stored["e3"]+`]}`)
	expect(t, get(t, s, "/usage/?task_id=t1&agent_id="+url.QueryEscape(agentA)), http.StatusOK, `{"count":1,"data":[`+stored["e1"]+`]}`)
}

func TestListFilters(t *testing.T) {
	s := newStore(t, 0)
	seed(t, s)
	cases := []struct {
		query string
		want  []string
	}{
		{"", chrono},
		{q("agent_id", agentA), []string{"e1", "e2", "e5", "e7"}},
		{q("agent_id", " "+agentA+" "), []string{"e1", "e2", "e5", "e7"}},
		{q("consumer_id", consC2), []string{"e2", "e8", "e4", "e7"}},
		{q("task_id", "t1"), []string{"e1", "e8"}},
		{q("task_id", "t1", "consumer_id", consC2), []string{"e8"}},
		{q("agent_id", agentB, "consumer_id", consC2), []string{"e8", "e4"}},
		{q("agent_id", agentA, "start", "2026-12-01T00:00:00Z", "end", "2027-01-02T00:00:00Z"), []string{"e5"}},
		// start and end are inclusive.
		{q("start", "2026-02-07T00:00:00Z"), []string{"e3", "e8", "e4", "e5", "e6", "e7"}},
		{q("end", "2026-02-07T00:00:00Z"), []string{"e1", "e2", "e3"}},
		{q("start", "2026-02-07T00:00:00Z", "end", "2026-02-07T00:00:00Z"), []string{"e3"}},
		{q("start", "2026-02-06T23:59:59.999Z", "end", "2027-01-01T00:00:00.123456Z"), []string{"e2", "e3", "e8", "e4", "e5", "e6"}},
		{q("end", "2027-01-01T00:00:00.123455Z"), []string{"e1", "e2", "e3", "e8", "e4", "e5"}},
		// The same instant in another zone.
		{q("start", "2026-02-07T01:00:00+01:00", "end", "2026-02-06T19:00:00-05:00"), []string{"e3"}},
		// No zone: UTC.
		{q("start", "2026-02-07T00:00:00", "end", "2026-02-07T00:00:00"), []string{"e3"}},
		{q("end", "2026-02-06T23:59:59.999"), []string{"e1", "e2"}},
		{q("end", "2026-02-06T23:59:59.998"), []string{"e1"}},
		{q("start", "2026-02-08T06:00"), []string{"e8", "e4", "e5", "e6", "e7"}},
		// A date is its midnight, UTC.
		{q("start", "2026-02-07"), []string{"e3", "e8", "e4", "e5", "e6", "e7"}},
		{q("end", "2026-02-07"), []string{"e1", "e2", "e3"}},
		{q("start", "2026-12-31", "end", "2027-01-02"), []string{"e5", "e6"}},
		{q("start", "2028-01-01"), []string{}},
		{q("start", "2027-01-01", "end", "2026-01-01"), []string{}},
		{q("agent_id", "urn:asap:agent:nobody"), []string{}},
		// Empty parameters do not filter.
		{q("agent_id", "", "start", "", "limit", "", "offset", ""), chrono},
	}
	for _, c := range cases {
		t.Run(c.query, func(t *testing.T) {
			eq(t, "events", listed(t, get(t, s, "/usage?"+c.query)), c.want)
		})
	}
}

func TestListLimitOffset(t *testing.T) {
	s := newStore(t, 0)
	// 150 events, one a minute, through one batch.
	var parts []string
	base := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	for i := 0; i < 150; i++ {
		parts = append(parts, fmt.Sprintf(`{"task_id":"task-%03d","agent_id":"%s","consumer_id":"%s","timestamp":"%s"}`,
			i, agentA, consC1, base.Add(time.Duration(i)*time.Minute).Format(time.RFC3339)))
	}
	w := call(t, s, http.MethodPost, "/usage/batch", `{"events":[`+strings.Join(parts, ",")+`]}`)
	if m := expectJSON(t, w, http.StatusCreated); m["count"] != float64(150) {
		t.Fatalf("batch: %v", m)
	}
	tasks := func(target string) []string {
		t.Helper()
		return listed(t, get(t, s, target))
	}
	task := func(i int) string { return fmt.Sprintf("task-%03d", i) }

	got := tasks("/usage")
	if len(got) != 100 || got[0] != task(0) || got[99] != task(99) {
		t.Errorf("default limit: %d events, %v … %v", len(got), got[0], got[len(got)-1])
	}
	if got := tasks("/usage?limit=1000"); len(got) != 150 {
		t.Errorf("limit 1000: %d", len(got))
	}
	eq(t, "limit 1", tasks("/usage?limit=1"), []string{task(0)})
	eq(t, "limit 2 offset 148", tasks("/usage?limit=2&offset=148"), []string{task(148), task(149)})
	eq(t, "offset 149", tasks("/usage?offset=149"), []string{task(149)})
	eq(t, "offset 150", tasks("/usage?offset=150"), []string{})
	eq(t, "offset far", tasks("/usage?offset=1073741824"), []string{})
	eq(t, "limit and offset with a filter", tasks("/usage?limit=3&offset=10&start="+base.Add(100*time.Minute).Format(time.RFC3339)),
		[]string{task(110), task(111), task(112)})
	// Pages neither overlap nor leave gaps.
	var joined []string
	for off := 0; off < 150; off += 40 {
		joined = append(joined, tasks(fmt.Sprintf("/usage?limit=40&offset=%d", off))...)
	}
	if len(joined) != 150 {
		t.Fatalf("pages hold %d events", len(joined))
	}
	for i, n := range joined {
		if n != task(i) {
			t.Fatalf("page position %d holds %s", i, n)
		}
	}

	for _, bad := range []struct{ query, detail string }{
		{"limit=0", "limit must be a whole number in 1..1000"},
		{"limit=1001", "limit must be a whole number in 1..1000"},
		{"limit=-1", "limit must be a whole number in 1..1000"},
		{"limit=abc", "limit must be a whole number in 1..1000"},
		{"limit=1.5", "limit must be a whole number in 1..1000"},
		{"limit=99999999999999999999", "limit must be a whole number in 1..1000"},
		{"offset=-1", "offset must be a whole number in 0..1073741824"},
		{"offset=x", "offset must be a whole number in 0..1073741824"},
		{"limit=5&offset=1073741825", "offset must be a whole number in 0..1073741824"},
		// The first problem is reported.
		{"limit=0&offset=-1", "limit must be a whole number in 1..1000"},
		{"start=nope&limit=0", `start: invalid date "nope"; use ISO 8601 (e.g. 2026-01-01T00:00:00Z)`},
	} {
		if d := detail(t, get(t, s, "/usage?"+bad.query), http.StatusBadRequest); d != bad.detail {
			t.Errorf("%s: detail %q, want %q", bad.query, d, bad.detail)
		}
	}
}

func TestBadDatesOnEveryReadRoute(t *testing.T) {
	s := newStore(t, 0)
	seed(t, s)
	routes := []string{"/usage", "/usage/aggregate?group_by=day", "/usage/summary", "/usage/agents", "/usage/consumers", "/usage/export"}
	bad := []struct{ param, value string }{
		{"start", "yesterday"},
		{"start", "2026-13-01"},
		{"end", "2026-02-30"},
		{"end", "2026-02-06T25:00:00Z"},
		{"start", "06/02/2026"},
		{"end", "2026-02"},
	}
	for _, route := range routes {
		sep := "?"
		if strings.Contains(route, "?") {
			sep = "&"
		}
		for _, b := range bad {
			w := get(t, s, route+sep+q(b.param, b.value))
			want := fmt.Sprintf("%s: invalid date %q; use ISO 8601 (e.g. 2026-01-01T00:00:00Z)", b.param, b.value)
			if d := detail(t, w, http.StatusBadRequest); d != want {
				t.Errorf("%s %s=%s: %q, want %q", route, b.param, b.value, d, want)
			}
		}
	}
}

func TestParseTime(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"2026-02-06T09:00:00Z", "2026-02-06T09:00:00Z"},
		{"2026-02-06T09:00:00.123456789Z", "2026-02-06T09:00:00.123456789Z"},
		{"2026-02-06T10:00:00+01:00", "2026-02-06T09:00:00Z"},
		{"2026-02-06T04:00:00-05:00", "2026-02-06T09:00:00Z"},
		{"2026-02-06T09:00:00", "2026-02-06T09:00:00Z"},
		{"2026-02-06T09:00:00.5", "2026-02-06T09:00:00.5Z"},
		{"2026-02-06T09:00", "2026-02-06T09:00:00Z"},
		{"2026-02-06", "2026-02-06T00:00:00Z"},
	} {
		got, err := ParseTime(c.in)
		if err != nil {
			t.Errorf("%s: %v", c.in, err)
			continue
		}
		if got.Location() != time.UTC || got.Format(time.RFC3339Nano) != c.want {
			t.Errorf("%s: %s (%v), want %s", c.in, got.Format(time.RFC3339Nano), got.Location(), c.want)
		}
	}
	for _, in := range []string{"", "now", "2026-02", "2026-02-06T09", "2026-13-01", "2026-02-30", "2026-02-06T24:30:00Z", "06/02/2026"} {
		if got, err := ParseTime(in); err == nil || !got.IsZero() {
			t.Errorf("%q accepted as %v", in, got)
		} else if err.Error() != fmt.Sprintf("invalid date %q; use ISO 8601 (e.g. 2026-01-01T00:00:00Z)", in) {
			t.Errorf("%q: %v", in, err)
		}
	}
}

// ------------------------------------------------------------------ aggregates

const (
	agentRows = `[{"agent_id":"urn:asap:agent:alpha","period":"all","total_tokens":59,"total_duration_ms":161,"total_tasks":4,"total_api_calls":6,"avg_tokens_per_task":14.75,"avg_duration_ms_per_task":40.25},` +
		`{"agent_id":"urn:asap:agent:beta","period":"all","total_tokens":140,"total_duration_ms":1068,"total_tasks":4,"total_api_calls":7,"avg_tokens_per_task":35,"avg_duration_ms_per_task":267}]`
	consumerRows = `[{"consumer_id":"urn:asap:agent:c1","period":"all","total_tokens":175,"total_duration_ms":1169,"total_tasks":4,"total_api_calls":5,"avg_tokens_per_task":43.75},` +
		`{"consumer_id":"urn:asap:agent:c2","period":"all","total_tokens":24,"total_duration_ms":60,"total_tasks":4,"total_api_calls":8,"avg_tokens_per_task":6}]`
	dayRows = `[{"period":"2026-02-06","total_tokens":40,"total_duration_ms":150,"total_tasks":2,"total_api_calls":3,"unique_agents":1,"unique_consumers":2},` +
		`{"period":"2026-02-07","total_tokens":100,"total_duration_ms":1000,"total_tasks":1,"total_api_calls":0,"unique_agents":1,"unique_consumers":1},` +
		`{"period":"2026-02-08","total_tokens":7,"total_duration_ms":5,"total_tasks":1,"total_api_calls":0,"unique_agents":1,"unique_consumers":1},` +
		`{"period":"2026-02-09","total_tokens":3,"total_duration_ms":3,"total_tasks":1,"total_api_calls":4,"unique_agents":1,"unique_consumers":1},` +
		`{"period":"2026-12-31","total_tokens":15,"total_duration_ms":9,"total_tasks":1,"total_api_calls":1,"unique_agents":1,"unique_consumers":1},` +
		`{"period":"2027-01-01","total_tokens":30,"total_duration_ms":60,"total_tasks":1,"total_api_calls":3,"unique_agents":1,"unique_consumers":1},` +
		`{"period":"2027-01-04","total_tokens":4,"total_duration_ms":2,"total_tasks":1,"total_api_calls":2,"unique_agents":1,"unique_consumers":1}]`
	weekRows = `[{"period":"2026-W06","total_tokens":147,"total_duration_ms":1155,"total_tasks":4,"total_api_calls":3,"unique_agents":2,"unique_consumers":2},` +
		`{"period":"2026-W07","total_tokens":3,"total_duration_ms":3,"total_tasks":1,"total_api_calls":4,"unique_agents":1,"unique_consumers":1},` +
		`{"period":"2026-W53","total_tokens":45,"total_duration_ms":69,"total_tasks":2,"total_api_calls":4,"unique_agents":2,"unique_consumers":1},` +
		`{"period":"2027-W01","total_tokens":4,"total_duration_ms":2,"total_tasks":1,"total_api_calls":2,"unique_agents":1,"unique_consumers":1}]`
)

func TestAggregate(t *testing.T) {
	s := newStore(t, 0)
	for _, g := range []string{"agent", "consumer", "day", "week"} {
		w := get(t, s, "/usage/aggregate?group_by="+g)
		expectJSON(t, w, http.StatusOK)
		expect(t, w, http.StatusOK, `{"data":[],"group_by":"`+g+`"}`)
	}
	seed(t, s)
	for _, c := range []struct{ g, rows string }{{"agent", agentRows}, {"consumer", consumerRows}, {"day", dayRows}, {"week", weekRows}} {
		w := get(t, s, "/usage/aggregate?group_by="+c.g)
		expectJSON(t, w, http.StatusOK)
		expect(t, w, http.StatusOK, `{"data":`+c.rows+`,"group_by":"`+c.g+`"}`)
	}
	// Filters: agent A by week; consumer C1 by agent; a window by day.
	expect(t, get(t, s, "/usage/aggregate?group_by=week&"+q("agent_id", agentA)), http.StatusOK, `{"data":[`+
		`{"period":"2026-W06","total_tokens":40,"total_duration_ms":150,"total_tasks":2,"total_api_calls":3,"unique_agents":1,"unique_consumers":2},`+
		`{"period":"2026-W53","total_tokens":15,"total_duration_ms":9,"total_tasks":1,"total_api_calls":1,"unique_agents":1,"unique_consumers":1},`+
		`{"period":"2027-W01","total_tokens":4,"total_duration_ms":2,"total_tasks":1,"total_api_calls":2,"unique_agents":1,"unique_consumers":1}],"group_by":"week"}`)
	expect(t, get(t, s, "/usage/aggregate?group_by=agent&"+q("consumer_id", consC1)), http.StatusOK, `{"data":[`+
		`{"agent_id":"urn:asap:agent:alpha","period":"all","total_tokens":45,"total_duration_ms":109,"total_tasks":2,"total_api_calls":2,"avg_tokens_per_task":22.5,"avg_duration_ms_per_task":54.5},`+
		`{"agent_id":"urn:asap:agent:beta","period":"all","total_tokens":130,"total_duration_ms":1060,"total_tasks":2,"total_api_calls":3,"avg_tokens_per_task":65,"avg_duration_ms_per_task":530}],"group_by":"agent"}`)
	expect(t, get(t, s, "/usage/aggregate?group_by=day&start=2026-12-31&end=2027-01-02"), http.StatusOK, `{"data":[`+
		`{"period":"2026-12-31","total_tokens":15,"total_duration_ms":9,"total_tasks":1,"total_api_calls":1,"unique_agents":1,"unique_consumers":1},`+
		`{"period":"2027-01-01","total_tokens":30,"total_duration_ms":60,"total_tasks":1,"total_api_calls":3,"unique_agents":1,"unique_consumers":1}],"group_by":"day"}`)

	// With start and end, the period says so; as CSV by consumer it is
	// the billing export (February: C1 has e1 e3, C2 has e2 e8 e4).
	expect(t, get(t, s, "/usage/aggregate?group_by=consumer&start=2026-12-31&end=2027-01-02"), http.StatusOK, `{"data":[`+
		`{"consumer_id":"urn:asap:agent:c1","period":"2026-12-31/2027-01-02T00:00:00Z","total_tokens":45,"total_duration_ms":69,"total_tasks":2,"total_api_calls":4,"avg_tokens_per_task":22.5}],"group_by":"consumer"}`)
	w := get(t, s, "/usage/aggregate?group_by=consumer&start=2026-02-01&end=2026-02-28T23:59:59.999999999Z&export_format=csv")
	if w.Code != http.StatusOK || w.Header().Get("Content-Type") != "text/csv; charset=utf-8" {
		t.Fatalf("csv: %d %q %s", w.Code, w.Header().Get("Content-Type"), w.Body.String())
	}
	if want := "consumer_id,period,total_tasks,tokens_in,tokens_out,total_tokens,total_api_calls,total_duration_ms,avg_tokens_per_task\r\n" +
		"urn:asap:agent:c1,2026-02-01/2026-02-28,2,110,20,130,1,1100,65\r\n" +
		"urn:asap:agent:c2,2026-02-01/2026-02-28,3,9,11,20,6,58,6.666666666666667\r\n"; w.Body.String() != want {
		t.Errorf("billing CSV:\n%q\nwant\n%q", w.Body.String(), want)
	}
	expect(t, get(t, s, "/usage/aggregate?group_by=consumer&export_format=xml"), http.StatusBadRequest, `{"detail":"export_format must be json or csv"}`)

	const bad = `{"detail":"group_by must be one of: agent, consumer, day, week"}`
	for _, query := range []string{"", "?group_by=", "?group_by=month", "?group_by=Agent", "?group_by=agents", "?group_by=day,week"} {
		expect(t, get(t, s, "/usage/aggregate"+query), http.StatusBadRequest, bad)
	}
	// group_by is trimmed like every parameter.
	expect(t, get(t, s, "/usage/aggregate?group_by=+week+"), http.StatusOK, `{"data":`+weekRows+`,"group_by":"week"}`)
}

func TestAgentsAndConsumers(t *testing.T) {
	s := newStore(t, 0)
	expect(t, get(t, s, "/usage/agents"), http.StatusOK, `{"data":[]}`)
	expect(t, get(t, s, "/usage/consumers"), http.StatusOK, `{"data":[]}`)
	seed(t, s)
	w := get(t, s, "/usage/agents")
	expectJSON(t, w, http.StatusOK)
	expect(t, w, http.StatusOK, `{"data":`+agentRows+`}`)
	w = get(t, s, "/usage/consumers")
	expectJSON(t, w, http.StatusOK)
	expect(t, w, http.StatusOK, `{"data":`+consumerRows+`}`)
	// Same filters as the others: agent B up to e8's time; the period says which.
	expect(t, get(t, s, "/usage/consumers?"+q("agent_id", agentB, "end", "2026-02-08T06:00:00Z")), http.StatusOK, `{"data":[`+
		`{"consumer_id":"urn:asap:agent:c1","period":"../2026-02-08T06:00:00Z","total_tokens":100,"total_duration_ms":1000,"total_tasks":1,"total_api_calls":0,"avg_tokens_per_task":100},`+
		`{"consumer_id":"urn:asap:agent:c2","period":"../2026-02-08T06:00:00Z","total_tokens":7,"total_duration_ms":5,"total_tasks":1,"total_api_calls":0,"avg_tokens_per_task":7}]}`)
	expect(t, get(t, s, "/usage/agents?"+q("consumer_id", consC2, "start", "2027-01-01")), http.StatusOK, `{"data":[`+
		`{"agent_id":"urn:asap:agent:alpha","period":"2027-01-01/..","total_tokens":4,"total_duration_ms":2,"total_tasks":1,"total_api_calls":2,"avg_tokens_per_task":4,"avg_duration_ms_per_task":2}]}`)
	// group_by is not a parameter of these.
	expect(t, get(t, s, "/usage/agents?group_by=day"), http.StatusOK, `{"data":`+agentRows+`}`)
}

func TestSummary(t *testing.T) {
	s := newStore(t, 0)
	w := get(t, s, "/usage/summary")
	expectJSON(t, w, http.StatusOK)
	expect(t, w, http.StatusOK, `{"total_tasks":0,"total_tokens":0,"total_duration_ms":0,"unique_agents":0,"unique_consumers":0,"total_api_calls":0}`)
	seed(t, s)
	for _, c := range []struct{ query, want string }{
		{"", `{"total_tasks":8,"total_tokens":199,"total_duration_ms":1229,"unique_agents":2,"unique_consumers":2,"total_api_calls":13}`},
		{q("agent_id", agentA), `{"total_tasks":4,"total_tokens":59,"total_duration_ms":161,"unique_agents":1,"unique_consumers":2,"total_api_calls":6}`},
		{q("consumer_id", consC2), `{"total_tasks":4,"total_tokens":24,"total_duration_ms":60,"unique_agents":2,"unique_consumers":1,"total_api_calls":8}`},
		{q("start", "2026-02-01", "end", "2026-02-28T23:59:59"), `{"total_tasks":5,"total_tokens":150,"total_duration_ms":1158,"unique_agents":2,"unique_consumers":2,"total_api_calls":7}`},
		{q("task_id", "t1"), `{"total_tasks":2,"total_tokens":37,"total_duration_ms":105,"unique_agents":2,"unique_consumers":2,"total_api_calls":1}`},
		{q("agent_id", "urn:asap:agent:nobody"), `{"total_tasks":0,"total_tokens":0,"total_duration_ms":0,"unique_agents":0,"unique_consumers":0,"total_api_calls":0}`},
	} {
		expect(t, get(t, s, "/usage/summary?"+c.query), http.StatusOK, c.want)
	}
}

// ------------------------------------------------------------------ POST /usage

func TestRecord(t *testing.T) {
	s := newStore(t, 0)
	w := call(t, s, http.MethodPost, "/usage", fixture["e1"])
	expectJSON(t, w, http.StatusCreated)
	expect(t, w, http.StatusCreated, `{"status":"recorded","task_id":"t1"}`)
	// Stored as sent, the timestamp in UTC.
	expect(t, get(t, s, "/usage"), http.StatusOK, `{"count":1,"data":[`+stored["e1"]+`]}`)

	// Only the required fields: the figures default to 0.
	expect(t, call(t, s, http.MethodPost, "/usage/",
		`{"task_id":"t9","agent_id":"a","consumer_id":"c","timestamp":"2026-03-01T00:00:00Z"}`),
		http.StatusCreated, `{"status":"recorded","task_id":"t9"}`)
	expect(t, get(t, s, "/usage?task_id=t9"), http.StatusOK,
		`{"count":1,"data":[{"task_id":"t9","agent_id":"a","consumer_id":"c","tokens_in":0,"tokens_out":0,"duration_ms":0,"api_calls":0,"timestamp":"2026-03-01T00:00:00Z"}]}`)
}

func TestRecordInvalid(t *testing.T) {
	s := newStore(t, 0)
	base := `"task_id":"t","agent_id":"a","consumer_id":"c","timestamp":"2026-01-01T00:00:00Z"`
	for _, c := range []struct{ name, body, detail string }{
		{"unknown field", `{` + base + `,"extra":1}`, `invalid usage event: unknown field "extra"`},
		{"missing task_id", `{"agent_id":"a","consumer_id":"c","timestamp":"2026-01-01T00:00:00Z"}`, "invalid usage event: task_id is required"},
		{"missing agent_id", `{"task_id":"t","consumer_id":"c","timestamp":"2026-01-01T00:00:00Z"}`, "invalid usage event: agent_id is required"},
		{"missing consumer_id", `{"task_id":"t","agent_id":"a","timestamp":"2026-01-01T00:00:00Z"}`, "invalid usage event: consumer_id is required"},
		{"missing timestamp", `{"task_id":"t","agent_id":"a","consumer_id":"c"}`, "invalid usage event: timestamp is required"},
		{"empty strings", `{"task_id":"","agent_id":"a","consumer_id":"c","timestamp":"2026-01-01T00:00:00Z"}`, "invalid usage event: task_id is required"},
		{"negative", `{` + base + `,"tokens_in":-1}`, "invalid usage event: tokens_in must be ≥ 0"},
		{"too large", `{` + base + `,"api_calls":1000000000001}`, "invalid usage event: api_calls is larger than 1000000000000"},
		{"control character", `{"task_id":"t\n","agent_id":"a","consumer_id":"c","timestamp":"2026-01-01T00:00:00Z"}`, "invalid usage event: task_id contains control characters"},
		{"too long", `{"task_id":"t","agent_id":"` + strings.Repeat("a", 257) + `","consumer_id":"c","timestamp":"2026-01-01T00:00:00Z"}`, "invalid usage event: agent_id is longer than 256 characters"},
		{"empty body", ``, "invalid usage event: EOF"},
		{"null", `null`, "invalid usage event: task_id is required"},
	} {
		t.Run(c.name, func(t *testing.T) {
			if d := detail(t, call(t, s, http.MethodPost, "/usage", c.body), http.StatusBadRequest); d != c.detail {
				t.Errorf("detail %q, want %q", d, c.detail)
			}
		})
	}
	// Errors whose wording comes from encoding/json: check the start only.
	for _, body := range []string{`not json`, `[]`, `{` + base + `,"tokens_out":1.5}`, `{` + base + `,"tokens_out":"12"}`,
		`{"task_id":"t","agent_id":"a","consumer_id":"c","timestamp":"01/01/2026"}`, `{` + base} {
		if d := detail(t, call(t, s, http.MethodPost, "/usage", body), http.StatusBadRequest); !strings.HasPrefix(d, "invalid usage event: ") {
			t.Errorf("%s: detail %q", body, d)
		}
	}
	expect(t, get(t, s, "/usage"), http.StatusOK, `{"count":0,"data":[]}`)
}

// POST /usage with an envelope_id is idempotent: a retry answers the same
// and is stored once.
func TestRecordDeduplicatesByEnvelopeID(t *testing.T) {
	s := newStore(t, 0)
	body := `{"task_id":"t1","agent_id":"a","consumer_id":"c","timestamp":"2026-01-01T00:00:00Z","envelope_id":"env-1"}`
	for i := 0; i < 2; i++ {
		expect(t, call(t, s, http.MethodPost, "/usage", body), http.StatusCreated, `{"status":"recorded","task_id":"t1"}`)
	}
	expect(t, get(t, s, "/usage/stats"), http.StatusOK, `{"total_events":1,"oldest_timestamp":"2026-01-01T00:00:00Z","retention_ttl_seconds":null}`)
	// Without an envelope id every POST is a new event.
	body = `{"task_id":"t2","agent_id":"a","consumer_id":"c","timestamp":"2026-01-01T00:00:00Z"}`
	for i := 0; i < 2; i++ {
		expect(t, call(t, s, http.MethodPost, "/usage", body), http.StatusCreated, `{"status":"recorded","task_id":"t2"}`)
	}
	if got := listed(t, get(t, s, "/usage")); len(got) != 3 {
		t.Errorf("%d events, want 3", len(got))
	}
}

func TestRecordTrailingDataRejected(t *testing.T) {
	s := newStore(t, 0)
	body := fixture["e1"] + ` {"task_id":"x"}`
	detail(t, call(t, s, http.MethodPost, "/usage", body), http.StatusBadRequest)
}

func TestRecordPreEpochTimestampIs400(t *testing.T) {
	s := newStore(t, 0)
	body := `{"task_id":"t","agent_id":"a","consumer_id":"c","timestamp":"1969-12-31T23:59:59Z"}`
	detail(t, call(t, s, http.MethodPost, "/usage", body), http.StatusBadRequest)
	detail(t, call(t, s, http.MethodPost, "/usage/batch", `{"events":[`+body+`]}`), http.StatusBadRequest)
}

// ------------------------------------------------------------------ POST /usage/batch

func TestBatch(t *testing.T) {
	s := newStore(t, 0)
	seed(t, s)
	expect(t, get(t, s, "/usage/summary"), http.StatusOK,
		`{"total_tasks":8,"total_tokens":199,"total_duration_ms":1229,"unique_agents":2,"unique_consumers":2,"total_api_calls":13}`)

	// 1000 events is the most one batch takes.
	var parts []string
	for i := 0; i < 1000; i++ {
		parts = append(parts, fmt.Sprintf(`{"task_id":"b-%d","agent_id":"urn:asap:agent:bulk","consumer_id":"c","tokens_in":%d,"timestamp":"2026-05-01T00:00:%02dZ"}`, i, i, i%60))
	}
	w := call(t, s, http.MethodPost, "/usage/batch", `{"events":[`+strings.Join(parts, ",")+`]}`)
	m := expectJSON(t, w, http.StatusCreated)
	if m["status"] != "recorded" || m["count"] != float64(1000) || len(m["task_ids"].([]any)) != 1000 ||
		m["task_ids"].([]any)[0] != "b-0" || m["task_ids"].([]any)[999] != "b-999" {
		t.Errorf("1000 events: %.200s", w.Body.String())
	}
	// Σ 0..999 = 499500 tokens.
	expect(t, get(t, s, "/usage/summary?agent_id=urn:asap:agent:bulk"), http.StatusOK,
		`{"total_tasks":1000,"total_tokens":499500,"total_duration_ms":0,"unique_agents":1,"unique_consumers":1,"total_api_calls":0}`)

	// 1001 events: refused, nothing stored.
	w = call(t, s, http.MethodPost, "/usage/batch", `{"events":[`+strings.Join(append(parts, strings.ReplaceAll(parts[0], "b-0", "b-extra")), ",")+`]}`)
	expect(t, w, http.StatusBadRequest, `{"detail":"events must hold 1..1000 events, got 1001"}`)
	if got := listed(t, get(t, s, "/usage?task_id=b-extra")); len(got) != 0 {
		t.Error("part of a refused batch was stored")
	}
}

func TestBatchInvalid(t *testing.T) {
	s := newStore(t, 0)
	ok := fixture["e3"]
	for _, c := range []struct{ name, body, detail string }{
		{"empty list", `{"events":[]}`, "events must hold 1..1000 events, got 0"},
		{"no events key", `{}`, "events must hold 1..1000 events, got 0"},
		{"null events", `{"events":null}`, "events must hold 1..1000 events, got 0"},
		{"second event invalid", `{"events":[` + ok + `,{"task_id":"x","consumer_id":"c","timestamp":"2026-01-01T00:00:00Z"}]}`,
			"event 1: invalid usage event: agent_id is required"},
		{"last event has an unknown field", `{"events":[` + ok + `,` + ok + `,{"task_id":"x","agent_id":"a","consumer_id":"c","timestamp":"2026-01-01T00:00:00Z","cost":1}]}`,
			`event 2: invalid usage event: unknown field "cost"`},
		{"first event negative", `{"events":[{"task_id":"x","agent_id":"a","consumer_id":"c","timestamp":"2026-01-01T00:00:00Z","duration_ms":-4},` + ok + `]}`,
			"event 0: invalid usage event: duration_ms must be ≥ 0"},
		{"event is not an object", `{"events":[` + ok + `,7]}`, "event 1: invalid usage event: must be a JSON object"},
	} {
		t.Run(c.name, func(t *testing.T) {
			if d := detail(t, call(t, s, http.MethodPost, "/usage/batch", c.body), http.StatusBadRequest); d != c.detail {
				t.Errorf("detail %q, want %q", d, c.detail)
			}
		})
	}
	for _, body := range []string{``, `not json`, `[]`, `{"events":{}}`, `{"events":"x"}`} {
		d := detail(t, call(t, s, http.MethodPost, "/usage/batch", body), http.StatusBadRequest)
		if !strings.HasPrefix(d, `body must be {"events": [...]}: `) {
			t.Errorf("%q: detail %q", body, d)
		}
	}
	// Nothing of any refused batch was stored.
	expect(t, get(t, s, "/usage"), http.StatusOK, `{"count":0,"data":[]}`)
	expect(t, get(t, s, "/usage/stats"), http.StatusOK, `{"total_events":0,"oldest_timestamp":null,"retention_ttl_seconds":null}`)
}

// A batch whose last event the store cannot key (a ULID holds no time
// before 1970) is refused as a whole: the events staged before it are not
// committed. (The status is 500 today, see TestRecordPreEpochTimestampIs400;
// either way it is an error and nothing is stored.)
func TestBatchIsAllOrNothingWhenStoringFails(t *testing.T) {
	s := newStore(t, 0)
	pre := `{"task_id":"old","agent_id":"a","consumer_id":"c","timestamp":"1969-12-31T23:59:59Z","envelope_id":"env-old"}`
	w := call(t, s, http.MethodPost, "/usage/batch", `{"events":[`+fixture["e1"]+`,`+fixture["e2"]+`,`+pre+`]}`)
	if w.Code < 400 {
		t.Fatalf("batch with an unstorable event: %d %s", w.Code, w.Body.String())
	}
	detail(t, w, w.Code)
	expect(t, get(t, s, "/usage/stats"), http.StatusOK, `{"total_events":0,"oldest_timestamp":null,"retention_ttl_seconds":null}`)
	if w := call(t, s, http.MethodPost, "/usage", pre); w.Code < 400 {
		t.Fatalf("single unstorable event: %d %s", w.Code, w.Body.String())
	}
	// The store is unharmed: the same events go in afterwards.
	expect(t, call(t, s, http.MethodPost, "/usage/batch", `{"events":[`+fixture["e1"]+`,`+fixture["e2"]+`]}`), http.StatusCreated,
		`{"count":2,"status":"recorded","task_ids":["t1","t2"]}`)
	eq(t, "stored", listed(t, get(t, s, "/usage")), []string{"e1", "e2"})
}

// ------------------------------------------------------------------ stats, purge

func TestStats(t *testing.T) {
	s := newStore(t, 0)
	w := get(t, s, "/usage/stats")
	expectJSON(t, w, http.StatusOK)
	expect(t, w, http.StatusOK, `{"total_events":0,"oldest_timestamp":null,"retention_ttl_seconds":null}`)
	seed(t, s)
	expect(t, get(t, s, "/usage/stats"), http.StatusOK, `{"total_events":8,"oldest_timestamp":"2026-02-06T09:00:00Z","retention_ttl_seconds":null}`)
	// Query parameters do not filter stats.
	expect(t, get(t, s, "/usage/stats?agent_id=nobody"), http.StatusOK, `{"total_events":8,"oldest_timestamp":"2026-02-06T09:00:00Z","retention_ttl_seconds":null}`)

	s30 := newStore(t, 30*24*time.Hour)
	expect(t, get(t, s30, "/usage/stats"), http.StatusOK, `{"total_events":0,"oldest_timestamp":null,"retention_ttl_seconds":2592000}`)
}

func TestPurge(t *testing.T) {
	s := newStore(t, 0)
	seed(t, s)
	w := call(t, s, http.MethodPost, "/usage/purge", "")
	expectJSON(t, w, http.StatusOK)
	expect(t, w, http.StatusOK, `{"removed":0,"status":"purged"}`)
	if got := listed(t, get(t, s, "/usage")); len(got) != 8 {
		t.Errorf("purge without retention removed events: %d left", len(got))
	}

	// Retention 24 h: events older than now − 24 h go, with their indexes
	// and dedup markers.
	s = newStore(t, 24*time.Hour)
	now := time.Now().UTC()
	ev := func(task, agent, consumer, env string, age time.Duration) string {
		return fmt.Sprintf(`{"task_id":"%s","agent_id":"%s","consumer_id":"%s","tokens_in":1,"timestamp":"%s","envelope_id":"%s"}`,
			task, agent, consumer, now.Add(-age).Format(time.RFC3339Nano), env)
	}
	old1 := ev("old-1", agentA, consC1, "env-old-1", 72*time.Hour)
	old2 := ev("old-2", agentB, consC2, "env-old-2", 25*time.Hour)
	new1 := ev("new-1", agentA, consC2, "env-new-1", 23*time.Hour)
	new2 := ev("new-2", agentA, consC1, "env-new-2", time.Minute)
	w = call(t, s, http.MethodPost, "/usage/batch", `{"events":[`+strings.Join([]string{old1, old2, new1, new2}, ",")+`]}`)
	expect(t, w, http.StatusCreated, `{"count":4,"status":"recorded","task_ids":["old-1","old-2","new-1","new-2"]}`)

	expect(t, call(t, s, http.MethodPost, "/usage/purge", ""), http.StatusOK, `{"removed":2,"status":"purged"}`)
	eq(t, "left", listed(t, get(t, s, "/usage")), []string{"new-1", "new-2"})
	eq(t, "agent B", listed(t, get(t, s, "/usage?"+q("agent_id", agentB))), []string{})
	eq(t, "consumer C1", listed(t, get(t, s, "/usage?"+q("consumer_id", consC1))), []string{"new-2"})
	eq(t, "task old-1", listed(t, get(t, s, "/usage?task_id=old-1")), []string{})
	m := expectJSON(t, get(t, s, "/usage/stats"), http.StatusOK)
	if m["total_events"] != float64(2) || m["retention_ttl_seconds"] != float64(86400) {
		t.Errorf("stats after purge: %v", m)
	}
	expect(t, call(t, s, http.MethodPost, "/usage/purge", ""), http.StatusOK, `{"removed":0,"status":"purged"}`)

	// The purged envelope may be recorded again; the kept one is still a retry.
	expect(t, call(t, s, http.MethodPost, "/usage", old1), http.StatusCreated, `{"status":"recorded","task_id":"old-1"}`)
	expect(t, call(t, s, http.MethodPost, "/usage", new2), http.StatusCreated, `{"status":"recorded","task_id":"new-2"}`)
	eq(t, "after re-recording", listed(t, get(t, s, "/usage")), []string{"old-1", "new-1", "new-2"})
}

// ------------------------------------------------------------------ POST /usage/validate

func TestValidate(t *testing.T) {
	s := newStore(t, 0)
	w := call(t, s, http.MethodPost, "/usage/validate", fixture["e1"])
	expectJSON(t, w, http.StatusOK)
	expect(t, w, http.StatusOK, `{"agent_id":"urn:asap:agent:alpha","consumer_id":"urn:asap:agent:c1","task_id":"t1","valid":true}`)

	base := `"task_id":"t","agent_id":"a","consumer_id":"c","timestamp":"2026-01-01T00:00:00Z"`
	for _, c := range []struct{ body, want string }{
		{`{"agent_id":"a","consumer_id":"c","timestamp":"2026-01-01T00:00:00Z"}`, `{"error":"invalid usage event: task_id is required","valid":false}`},
		{`{` + base + `,"extra":true}`, `{"error":"invalid usage event: unknown field \"extra\"","valid":false}`},
		{`{` + base + `,"tokens_in":-3}`, `{"error":"invalid usage event: tokens_in must be ≥ 0","valid":false}`},
		{`{"task_id":"t","agent_id":"a","consumer_id":"c"}`, `{"error":"invalid usage event: timestamp is required","valid":false}`},
		{``, `{"error":"invalid usage event: EOF","valid":false}`},
	} {
		w := call(t, s, http.MethodPost, "/usage/validate", c.body)
		expectJSON(t, w, http.StatusOK)
		expect(t, w, http.StatusOK, c.want)
	}
	for _, body := range []string{`nope`, `[1]`, `{` + base + `,"api_calls":"1"}`} {
		m := expectJSON(t, call(t, s, http.MethodPost, "/usage/validate", body), http.StatusOK)
		if m["valid"] != false || !strings.HasPrefix(fmt.Sprint(m["error"]), "invalid usage event: ") || len(m) != 2 {
			t.Errorf("%s: %v", body, m)
		}
	}
	// Validation stores nothing.
	expect(t, get(t, s, "/usage/stats"), http.StatusOK, `{"total_events":0,"oldest_timestamp":null,"retention_ttl_seconds":null}`)
}

// ------------------------------------------------------------------ GET /usage/export

const exportCSV = "task_id,agent_id,consumer_id,tokens_in,tokens_out,duration_ms,api_calls,timestamp\r\n" +
	"t1,urn:asap:agent:alpha,urn:asap:agent:c1,10,20,100,1,2026-02-06T09:00:00+00:00\r\n" +
	"t2,urn:asap:agent:alpha,urn:asap:agent:c2,5,5,50,2,2026-02-06T23:59:59.999000+00:00\r\n" +
	"t3,urn:asap:agent:beta,urn:asap:agent:c1,100,0,1000,0,2026-02-07T00:00:00+00:00\r\n" +
	"t1,urn:asap:agent:beta,urn:asap:agent:c2,3,4,5,0,2026-02-08T06:00:00+00:00\r\n" +
	"t4,urn:asap:agent:beta,urn:asap:agent:c2,1,2,3,4,2026-02-09T12:00:00+00:00\r\n" +
	"t5,urn:asap:agent:alpha,urn:asap:agent:c1,7,8,9,1,2026-12-31T10:00:00+00:00\r\n" +
	"t6,urn:asap:agent:beta,urn:asap:agent:c1,0,30,60,3,2027-01-01T00:00:00.123456+00:00\r\n" +
	"t7,urn:asap:agent:alpha,urn:asap:agent:c2,2,2,2,2,2027-01-04T08:00:00+00:00\r\n"

func TestExport(t *testing.T) {
	s := newStore(t, 0)
	w := get(t, s, "/usage/export?export_format=csv")
	if w.Code != http.StatusOK || w.Body.String() != "task_id,agent_id,consumer_id,tokens_in,tokens_out,duration_ms,api_calls,timestamp\r\n" {
		t.Errorf("empty CSV: %d %q", w.Code, w.Body.String())
	}
	expect(t, get(t, s, "/usage/export"), http.StatusOK, `{"data":[]}`)
	seed(t, s)

	w = get(t, s, "/usage/export?export_format=csv")
	if w.Code != http.StatusOK || w.Body.String() != exportCSV {
		t.Errorf("CSV: %d\n got  %q\n want %q", w.Code, w.Body.String(), exportCSV)
	}
	if ct := w.Header().Get("Content-Type"); ct != "text/csv; charset=utf-8" {
		t.Errorf("CSV Content-Type %q", ct)
	}
	if cd := w.Header().Get("Content-Disposition"); cd != "attachment; filename=usage_export.csv" {
		t.Errorf("CSV Content-Disposition %q", cd)
	}

	var all []string
	for _, n := range chrono {
		all = append(all, stored[n])
	}
	for _, target := range []string{"/usage/export", "/usage/export?export_format=json", "/usage/export?export_format=+json+"} {
		w = get(t, s, target)
		expectJSON(t, w, http.StatusOK)
		expect(t, w, http.StatusOK, `{"data":[`+strings.Join(all, ",")+`]}`)
		if cd := w.Header().Get("Content-Disposition"); cd != "attachment; filename=usage_export.json" {
			t.Errorf("%s: Content-Disposition %q", target, cd)
		}
	}

	// Filters and limit.
	lines := func(target string) []string {
		t.Helper()
		w := get(t, s, target)
		if w.Code != http.StatusOK {
			t.Fatalf("%s: %d %s", target, w.Code, w.Body.String())
		}
		return strings.SplitAfter(strings.TrimSuffix(w.Body.String(), "\r\n"), "\r\n")[1:]
	}
	csvRows := strings.SplitAfter(strings.TrimSuffix(exportCSV, "\r\n"), "\r\n")[1:]
	row := func(i int) string { return strings.TrimSuffix(csvRows[i], "\r\n") }
	trim := func(ls []string) []string {
		out := []string{}
		for _, l := range ls {
			out = append(out, strings.TrimSuffix(l, "\r\n"))
		}
		return out
	}
	eq(t, "limit 2", trim(lines("/usage/export?export_format=csv&limit=2")), []string{row(0), row(1)})
	eq(t, "agent B", trim(lines("/usage/export?export_format=csv&"+q("agent_id", agentB))), []string{row(2), row(3), row(4), row(6)})
	eq(t, "consumer C1 from 2026-02-07", trim(lines("/usage/export?export_format=csv&"+q("consumer_id", consC1, "start", "2026-02-07"))),
		[]string{row(2), row(5), row(6)})
	eq(t, "until e2", trim(lines("/usage/export?export_format=csv&end=2026-02-06T23:59:59.999")), []string{row(0), row(1)})
	eq(t, "limit 100000", len(lines("/usage/export?export_format=csv&limit=100000")), 8)
	// task_id filters the export too (the same filter as GET /usage).
	eq(t, "task t1", trim(lines("/usage/export?export_format=csv&task_id=t1")), []string{row(0), row(3)})
	// offset is not an export parameter.
	eq(t, "offset ignored", len(lines("/usage/export?export_format=csv&offset=5")), 8)

	for _, c := range []struct{ query, detail string }{
		{"export_format=xml", "export_format must be json or csv"},
		{"export_format=CSV", "export_format must be json or csv"},
		{"format=csv&export_format=tsv", "export_format must be json or csv"},
		{"limit=0", "limit must be a whole number in 1..100000"},
		{"limit=100001", "limit must be a whole number in 1..100000"},
		{"limit=ten&export_format=csv", "limit must be a whole number in 1..100000"},
		{"export_format=xml&limit=0", "limit must be a whole number in 1..100000"},
		{"export_format=xml&start=bad", `start: invalid date "bad"; use ISO 8601 (e.g. 2026-01-01T00:00:00Z)`},
	} {
		w := get(t, s, "/usage/export?"+c.query)
		if d := detail(t, w, http.StatusBadRequest); d != c.detail {
			t.Errorf("%s: %q, want %q", c.query, d, c.detail)
		}
		if cd := w.Header().Get("Content-Disposition"); cd != "" {
			t.Errorf("%s: error answer is an attachment: %q", c.query, cd)
		}
	}
}

// The export's default limit is 10000, unlike GET /usage's 100.
func TestExportDefaultLimit(t *testing.T) {
	if testing.Short() {
		t.Skip("writes 10001 events")
	}
	s := newStore(t, 0)
	base := time.Date(2026, 4, 1, 0, 0, 0, 0, time.UTC)
	for i := 0; i < 10001; i += 500 {
		err := s.DB().Commit(context.Background(), storage.Strict, func(tx *storage.Tx) error {
			for j := i; j < min(i+500, 10001); j++ {
				e := &metering.Event{TaskID: fmt.Sprintf("x%05d", j), AgentID: "a", ConsumerID: "c", Timestamp: base.Add(time.Duration(j) * time.Second)}
				if _, err := s.Put(tx, e, ""); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	w := get(t, s, "/usage/export?export_format=csv")
	body := w.Body.String()
	if n := strings.Count(body, "\r\n"); n != 10001 { // header + 10000 rows
		t.Errorf("default export: %d lines, want 10001", n)
	}
	if !strings.Contains(body, "\r\nx09999,") || strings.Contains(body, "x10000") {
		t.Error("default export does not stop after the 10000 oldest events")
	}
	var js struct{ Data []json.RawMessage }
	if err := json.Unmarshal(get(t, s, "/usage/export").Body.Bytes(), &js); err != nil || len(js.Data) != 10000 {
		t.Errorf("default JSON export: %d events, %v", len(js.Data), err)
	}
	if n := strings.Count(get(t, s, "/usage/export?export_format=csv&limit=10001").Body.String(), "\r\n"); n != 10002 {
		t.Errorf("limit 10001: %d lines", n)
	}
}

// ------------------------------------------------------------------ routing, limits, failures

func TestMethodNotAllowed(t *testing.T) {
	s := newStore(t, 0)
	for _, c := range []struct{ method, path, allow string }{
		{http.MethodPut, "/usage", "GET, POST"},
		{http.MethodDelete, "/usage", "GET, POST"},
		{http.MethodPatch, "/usage/", "GET, POST"},
		{http.MethodGet, "/usage/batch", "POST"},
		{http.MethodPut, "/usage/batch", "POST"},
		{http.MethodPost, "/usage/aggregate", "GET"},
		{http.MethodPost, "/usage/summary", "GET"},
		{http.MethodPost, "/usage/agents", "GET"},
		{http.MethodDelete, "/usage/consumers", "GET"},
		{http.MethodPost, "/usage/stats", "GET"},
		{http.MethodGet, "/usage/purge", "POST"},
		{http.MethodDelete, "/usage/purge", "POST"},
		{http.MethodGet, "/usage/validate", "POST"},
		{http.MethodPost, "/usage/export", "GET"},
	} {
		w := call(t, s, c.method, c.path, "")
		expectJSON(t, w, http.StatusMethodNotAllowed)
		expect(t, w, http.StatusMethodNotAllowed, `{"detail":"method not allowed; use `+c.allow+`"}`)
		if got := w.Header().Get("Allow"); got != c.allow {
			t.Errorf("%s %s: Allow %q, want %q", c.method, c.path, got, c.allow)
		}
	}
	// A refused POST stores nothing.
	expect(t, get(t, s, "/usage/stats"), http.StatusOK, `{"total_events":0,"oldest_timestamp":null,"retention_ttl_seconds":null}`)
}

func TestUnknownPath(t *testing.T) {
	s := newStore(t, 0)
	for _, p := range []string{"/usage/nope", "/usage/summary/extra", "/usagex", "/usage//batch", "/usage/batch/1", "/usage/Stats", "/usage/export.csv"} {
		for _, m := range []string{http.MethodGet, http.MethodPost} {
			w := call(t, s, m, p, "")
			expectJSON(t, w, http.StatusNotFound)
			expect(t, w, http.StatusNotFound, `{"detail":"Not Found"}`)
		}
	}
	// A trailing slash is the same route.
	expect(t, get(t, s, "/usage/summary/"), http.StatusOK,
		`{"total_tasks":0,"total_tokens":0,"total_duration_ms":0,"unique_agents":0,"unique_consumers":0,"total_api_calls":0}`)
}

func TestBodyLimit(t *testing.T) {
	s := newStore(t, 0)
	const limit = 4 << 20
	event := `{"task_id":"t","agent_id":"a","consumer_id":"c","timestamp":"2026-01-01T00:00:00Z"}`
	// Exactly 4 MiB (an event padded with JSON whitespace) is accepted.
	exact := event + strings.Repeat(" ", limit-len(event))
	expect(t, call(t, s, http.MethodPost, "/usage", exact), http.StatusCreated, `{"status":"recorded","task_id":"t"}`)
	expect(t, call(t, s, http.MethodPost, "/usage/validate", exact), http.StatusOK, `{"agent_id":"a","consumer_id":"c","task_id":"t","valid":true}`)
	batch := `{"events":[` + event + `]}`
	expect(t, call(t, s, http.MethodPost, "/usage/batch", batch+strings.Repeat(" ", limit-len(batch))), http.StatusCreated,
		`{"count":1,"status":"recorded","task_ids":["t"]}`)

	// One byte more is 413, on every route that reads a body.
	over := exact + " "
	for _, path := range []string{"/usage", "/usage/batch", "/usage/validate"} {
		w := call(t, s, http.MethodPost, path, over)
		expectJSON(t, w, http.StatusRequestEntityTooLarge)
		expect(t, w, http.StatusRequestEntityTooLarge, `{"detail":"request body larger than 4194304 bytes"}`)
	}
	expect(t, get(t, s, "/usage/stats"), http.StatusOK, `{"total_events":2,"oldest_timestamp":"2026-01-01T00:00:00Z","retention_ttl_seconds":null}`)
}

// Storage failures are 500 with the reference's {"detail": ...} shape.
func TestStorageFailures(t *testing.T) {
	db := openDB(t)
	s := metering.New(db, time.Hour)
	seed(t, s)
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ method, target, body, prefix string }{
		{http.MethodGet, "/usage", "", "reading usage: "},
		{http.MethodGet, "/usage/export?export_format=csv", "", "reading usage: "},
		{http.MethodGet, "/usage/aggregate?group_by=week", "", "aggregating usage: "},
		{http.MethodGet, "/usage/agents", "", "aggregating usage: "},
		{http.MethodGet, "/usage/consumers", "", "aggregating usage: "},
		{http.MethodGet, "/usage/summary", "", "summarizing usage: "},
		{http.MethodGet, "/usage/stats", "", "reading usage stats: "},
		{http.MethodPost, "/usage/purge", "", "purging usage after 0 removals: "},
		{http.MethodPost, "/usage", fixture["e1"], "storing usage: storage: database is closed"},
		{http.MethodPost, "/usage/batch", `{"events":[` + fixture["e1"] + `]}`, "storing usage: storage: database is closed"},
	} {
		w := call(t, s, c.method, c.target, c.body)
		if d := detail(t, w, http.StatusInternalServerError); !strings.HasPrefix(d, c.prefix) {
			t.Errorf("%s %s: detail %q, want prefix %q", c.method, c.target, d, c.prefix)
		}
	}
	// Validation needs no storage.
	expect(t, call(t, s, http.MethodPost, "/usage/validate", fixture["e3"]), http.StatusOK,
		`{"agent_id":"urn:asap:agent:beta","consumer_id":"urn:asap:agent:c1","task_id":"t3","valid":true}`)
	// Bad requests are still 400, not 500.
	detail(t, get(t, s, "/usage?limit=0"), http.StatusBadRequest)
	detail(t, call(t, s, http.MethodPost, "/usage", `{}`), http.StatusBadRequest)
}

func TestError(t *testing.T) {
	w := httptest.NewRecorder()
	Error(w, http.StatusTeapot, "no %s for %d", "coffee", 7)
	expectJSON(t, w, http.StatusTeapot)
	expect(t, w, http.StatusTeapot, `{"detail":"no coffee for 7"}`)
	w = httptest.NewRecorder()
	Error(w, http.StatusBadRequest, `quote " and <tag>`)
	expect(t, w, http.StatusBadRequest, `{"detail":"quote \" and \u003ctag\u003e"}`)
}

// Over real HTTP, under a mount prefix the way the admin API strips /asap.
func TestOverHTTPWithMountPrefix(t *testing.T) {
	s := newStore(t, 0)
	srv := httptest.NewServer(adminHandlerOf(&Services{Usage: s}))
	defer srv.Close()
	do := func(method, path, body string) (*http.Response, string) {
		t.Helper()
		req, err := http.NewRequest(method, srv.URL+path, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		resp, err := srv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return resp, string(b)
	}
	var parts []string
	for _, n := range chrono {
		parts = append(parts, fixture[n])
	}
	resp, body := do(http.MethodPost, "/asap/usage/batch", `{"events":[`+strings.Join(parts, ",")+`]}`)
	if resp.StatusCode != http.StatusCreated || body != `{"count":8,"status":"recorded","task_ids":["t1","t2","t3","t1","t4","t5","t6","t7"]}` {
		t.Fatalf("batch: %d %s", resp.StatusCode, body)
	}
	resp, body = do(http.MethodGet, "/asap/usage/aggregate?group_by=week", "")
	if resp.StatusCode != http.StatusOK || body != `{"data":`+weekRows+`,"group_by":"week"}` || resp.Header.Get("Content-Type") != "application/json" {
		t.Errorf("aggregate: %d %s", resp.StatusCode, body)
	}
	resp, body = do(http.MethodGet, "/asap/usage/export?export_format=csv", "")
	if resp.StatusCode != http.StatusOK || body != exportCSV || resp.Header.Get("Content-Disposition") != "attachment; filename=usage_export.csv" {
		t.Errorf("export: %d %q", resp.StatusCode, body)
	}
	resp, _ = do(http.MethodDelete, "/asap/usage/stats", "")
	if resp.StatusCode != http.StatusMethodNotAllowed || resp.Header.Get("Allow") != "GET" {
		t.Errorf("DELETE stats: %d Allow %q", resp.StatusCode, resp.Header.Get("Allow"))
	}
	resp, body = do(http.MethodPost, "/asap/usage", strings.Repeat("x", 4<<20+1))
	if resp.StatusCode != http.StatusRequestEntityTooLarge || body != `{"detail":"request body larger than 4194304 bytes"}` {
		t.Errorf("oversized: %d %s", resp.StatusCode, body)
	}
	resp, body = do(http.MethodGet, "/asap/usage?"+q("agent_id", agentA, "limit", "2", "offset", "1"), "")
	if resp.StatusCode != http.StatusOK || body != `{"count":2,"data":[`+stored["e2"]+`,`+stored["e5"]+`]}` {
		t.Errorf("list: %d %s", resp.StatusCode, body)
	}
}
