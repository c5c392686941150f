package protocol

import (
	"encoding/json"
	"fmt"
	"regexp"
	"strings"
	"testing"
)

// callWith builds a call from its members, written out as given.
func callWith(members string) string { return "{" + members + "}" }

const (
	jr     = `"jsonrpc":"2.0"`
	meth   = `"method":"asap.send"`
	rid    = `"id":"req-1"`
	params = `"params":{"envelope":` + goodEnv + `}`
)

// evilEnv is goodEnv sent by someone else.
var evilEnv = strings.Replace(goodEnv, "urn:asap:agent:client", "urn:asap:agent:evil", 1)

// envMembers is goodEnv without its braces, to add members to.
var envMembers = goodEnv[1 : len(goodEnv)-1]

func TestDuplicateMembers(t *testing.T) {
	cases := []struct {
		name, body string
		id         string // the id the refusal echoes
	}{
		// The request object.
		{"method twice", callWith(jr + `,` + meth + `,"method":"asap.send",` + params + `,` + rid), "null"},
		{"id and Id", callWith(jr + `,` + meth + `,` + params + `,` + rid + `,"Id":"req-2"`), "null"},
		{"id twice", callWith(jr + `,` + meth + `,` + params + `,` + rid + `,"id":"req-2"`), "null"},
		{"params and PARAMS", callWith(jr + `,` + meth + `,"PARAMS":{"envelope":` + evilEnv + `},` + params + `,` + rid), "null"},
		{"jsonrpc escaped twice", callWith(jr + `,"\u006asonrpc":"2.0",` + meth + `,` + params + `,` + rid), "null"},
		// params.
		{"envelope and Envelope", callWith(jr + `,` + meth + `,"params":{"envelope":` + evilEnv + `,"Envelope":` + goodEnv + `},` + rid), `"req-1"`},
		{"Envelope and envelope", callWith(jr + `,` + meth + `,"params":{"Envelope":` + goodEnv + `,"envelope":` + evilEnv + `},` + rid), `"req-1"`},
		{"envelope twice", callWith(jr + `,` + meth + `,"params":{"envelope":` + evilEnv + `,"envelope":` + goodEnv + `},` + rid), `"req-1"`},
		{"envelope escaped", callWith(jr + `,` + meth + `,"params":{"envelope":` + evilEnv + `,"\u0065nvelope":` + goodEnv + `},` + rid), `"req-1"`},
		{"other member twice in params", callWith(jr + `,` + meth + `,"params":{"envelope":` + goodEnv + `,"x":1,"X":2},` + rid), `"req-1"`},
		// The envelope.
		{"sender and Sender", call(`{"Sender":"urn:asap:agent:evil",` + envMembers + `}`), `"req-1"`},
		{"long s folding", call(`{` + envMembers + `,"ſender":"urn:asap:agent:evil"}`), `"req-1"`},
		{"payload_type twice", call(`{` + envMembers + `,"payload_type":"task.cancel"}`), `"req-1"`},
		{"kelvin sign", call(`{` + envMembers + `,"K":1,"k":2}`), `"req-1"`},
		{"kelvin sign escaped", call(`{` + envMembers + `,"\u212a":1,"K":2}`), `"req-1"`},
		{"unknown member twice", call(`{` + envMembers + `,"note":"a","note":"b"}`), `"req-1"`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			req, err := ParseRequest([]byte(tc.body), Limits{})
			if err != nil {
				t.Fatalf("whole-body error %v", err)
			}
			c := req.Calls[0]
			if c.Err == nil || c.Err.Code != CodeInvalidRequest || c.Err.Reason != "duplicate_member" {
				t.Fatalf("got %+v, want duplicate_member", c.Err)
			}
			if c.Err.Extra["member"] == "" || !strings.Contains(c.Err.Detail, fmt.Sprint(c.Err.Extra["member"])) {
				t.Fatalf("detail does not name the member: %+v", c.Err)
			}
			if got := string(c.Err.WithID(c.Err.ID).ID); (tc.id == "null" && got != "") || (tc.id != "null" && got != tc.id) {
				t.Fatalf("echoed id %s, want %s", got, tc.id)
			}
			if req.Forwardable() {
				t.Fatal("forwardable")
			}
		})
	}
	// A long member name is cut in the answer.
	long := strings.Repeat("n", 500)
	req, _ := ParseRequest([]byte(call(`{`+envMembers+`,"`+long+`":1,"`+strings.ToUpper(long)+`":2}`)), Limits{})
	if e := req.Calls[0].Err; e == nil || e.Reason != "duplicate_member" || len(e.Detail) > 300 {
		t.Fatalf("long name: %+v", e)
	}
}

// Beyond 32 members the duplicate check takes another path.
func TestDuplicateMembersManyNames(t *testing.T) {
	var b strings.Builder
	for i := range 40 {
		fmt.Fprintf(&b, `,"m%d":%d`, i, i)
	}
	many := b.String()
	req, _ := ParseRequest([]byte(call(`{`+envMembers+many+`}`)), Limits{})
	if e := req.Calls[0].Err; e != nil {
		t.Fatalf("distinct names refused: %v", e)
	}
	for _, dup := range []string{`,"M7":0`, `,"SENDER":0`, `,"\u212a":0,"k":0`, `,"ſ":0,"S":0`} {
		req, _ := ParseRequest([]byte(call(`{`+envMembers+many+dup+`}`)), Limits{})
		if e := req.Calls[0].Err; e == nil || e.Reason != "duplicate_member" {
			t.Fatalf("%s among many: %v", dup, e)
		}
	}
}

func TestFoldKeyMatchesEqualFold(t *testing.T) {
	words := []string{"k", "K", "\u212a", "s", "S", "ſ", "ss", "ß", "ẞ", "Σ", "σ", "ς", "id", "ID", "iD", "İd", "ıd", "", "é", "É", "ǅ", "ǆ", "Ǆ"}
	for _, a := range words {
		for _, b := range words {
			if (foldKey([]byte(a)) == foldKey([]byte(b))) != strings.EqualFold(a, b) {
				t.Errorf("%q %q: foldKey and EqualFold disagree", a, b)
			}
			_, dup := foldDuplicate([][]byte{[]byte(a), []byte(b)})
			if dup != strings.EqualFold(a, b) {
				t.Errorf("%q %q: foldDuplicate says %v", a, b, dup)
			}
		}
	}
}

// Members are read by their exact names only.
func TestExactMemberNames(t *testing.T) {
	cases := []struct {
		name, body string
		code       int
		reason     string
	}{
		{"Envelope is not envelope", callWith(jr + `,` + meth + `,"params":{"Envelope":` + goodEnv + `},` + rid), CodeInvalidParams, "missing_envelope"},
		{"ID is not id", callWith(jr + `,` + meth + `,` + params + `,"ID":"req-1"`), CodeInvalidRequest, "missing_id"},
		{"Method is not method", callWith(jr + `,"Method":"asap.send",` + params + `,` + rid), CodeInvalidRequest, "missing_method"},
		{"Params is not params", callWith(jr + `,` + meth + `,"Params":{"envelope":` + goodEnv + `},` + rid), CodeInvalidParams, "params_not_object"},
		{"JSONRPC is not jsonrpc", callWith(`"JSONRPC":"1.0",` + meth + `,` + params + `,` + rid), 0, ""},
		{"Sender is not sender", call(withEnv("sender", "")[:len(withEnv("sender", ""))-1] + `,"Sender":"urn:asap:agent:a"}`), CodeInvalidParams, "missing_sender"},
		{"escaped names are the names", callWith(`"\u006asonrpc":"2.0","m\u0065thod":"asap.send","par\u0061ms":{"\u0065nvelope":` + goodEnv + `},"\u0069d":"req-1"`), 0, ""},
		{"wrong type named", call(withEnv("trace_id", `[1]`)), CodeInvalidParams, "invalid_envelope"},
		{"requires_ack string", call(withEnv("requires_ack", `"yes"`)), CodeInvalidParams, "invalid_envelope"},
		{"params null", callWith(jr + `,` + meth + `,"params":null,` + rid), CodeInvalidParams, "params_not_object"},
		{"params string", callWith(jr + `,` + meth + `,"params":"x",` + rid), CodeInvalidParams, "params_not_object"},
		{"envelope null", callWith(jr + `,` + meth + `,"params":{"envelope":null},` + rid), CodeInvalidParams, "missing_envelope"},
		{"envelope array", callWith(jr + `,` + meth + `,"params":{"envelope":[]},` + rid), CodeInvalidParams, "envelope_not_object"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			req, err := ParseRequest([]byte(tc.body), Limits{})
			if err != nil {
				t.Fatalf("whole-body error %v", err)
			}
			c := req.Calls[0]
			if tc.reason == "" {
				if c.Err != nil {
					t.Fatalf("refused: %v", c.Err)
				}
				return
			}
			if c.Err == nil || c.Err.Code != tc.code || c.Err.Reason != tc.reason {
				t.Fatalf("got %+v, want %d %s", c.Err, tc.code, tc.reason)
			}
		})
	}
	// The wrong-type detail names the field and the type it had.
	req, _ := ParseRequest([]byte(call(withEnv("trace_id", `[1]`))), Limits{})
	if d := req.Calls[0].Err.Detail; !strings.Contains(d, `"trace_id"`) || !strings.Contains(d, "array") {
		t.Fatalf("detail = %s", d)
	}
	// Every envelope field is read, escapes decoded.
	env := `{"id":"e\u0031","asap_version":"0.1","timestamp":"2026-11-26T01:00:00Z","sender":"urn:asap:agent:\u0063lient","recipient":"urn:asap:agent:research","payload_type":"task.response","payload":{"a":1},"correlation_id":"c\"1","trace_id":"t1","requires_ack":true,"extensions":{"x":null}}`
	req, _ = ParseRequest([]byte(call(env)), Limits{})
	c := req.Calls[0]
	if string(c.Envelope.Raw) != env {
		t.Fatalf("envelope Raw = %s, want the object as received", c.Envelope.Raw)
	}
	c.Envelope.Raw = nil
	want := Envelope{ID: "e1", ASAPVersion: "0.1", Timestamp: "2026-11-26T01:00:00Z", Sender: "urn:asap:agent:client", Recipient: "urn:asap:agent:research",
		PayloadType: "task.response", Payload: json.RawMessage(`{"a":1}`), CorrelationID: `c"1`, TraceID: "t1", RequiresAck: true, Extensions: json.RawMessage(`{"x":null}`)}
	if c.Err != nil || fmt.Sprint(c.Envelope) != fmt.Sprint(want) {
		t.Fatalf("envelope = %+v, err %v", c.Envelope, c.Err)
	}
}

func TestControlCharactersInIDs(t *testing.T) {
	cases := []struct {
		name, body, field string
	}{
		{"rpc id NUL", strings.Replace(call(goodEnv), `"id":"req-1"`, `"id":"a\u0000"`, 1), "the request id"},
		{"rpc id DEL escaped", strings.Replace(call(goodEnv), `"id":"req-1"`, `"id":"a\u007f"`, 1), "the request id"},
		{"rpc id DEL raw", strings.Replace(call(goodEnv), `"id":"req-1"`, "\"id\":\"a\x7f\"", 1), "the request id"},
		{"rpc id newline", strings.Replace(call(goodEnv), `"id":"req-1"`, `"id":"a\nb"`, 1), "the request id"},
		{"rpc id unit separator", strings.Replace(call(goodEnv), `"id":"req-1"`, `"id":"\u001f"`, 1), "the request id"},
		{"envelope id NUL", call(withEnv("id", `"e\u0000"`)), "envelope.id"},
		{"envelope id DEL", call(withEnv("id", `"e\u007f"`)), "envelope.id"},
		{"envelope id tab", call(withEnv("id", `"e\t"`)), "envelope.id"},
		{"correlation id NUL", call(withEnv("correlation_id", `"\u0000"`)), "envelope.correlation_id"},
		{"correlation id DEL", call(withEnv("correlation_id", `"c\u007F"`)), "envelope.correlation_id"},
		{"correlation id CR", call(withEnv("correlation_id", `"c\r"`)), "envelope.correlation_id"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			req, err := ParseRequest([]byte(tc.body), Limits{})
			if err != nil {
				t.Fatalf("whole-body error %v", err)
			}
			c := req.Calls[0]
			if c.Err == nil || c.Err.Code != CodeInvalidParams || c.Err.Reason != "control_character_in_id" {
				t.Fatalf("got %+v", c.Err)
			}
			if c.Err.Extra["field"] != tc.field || !strings.Contains(c.Err.Detail, tc.field) {
				t.Fatalf("field = %v (%s), want %s", c.Err.Extra["field"], c.Err.Detail, tc.field)
			}
			if !json.Valid(c.Err.JSON()) {
				t.Fatalf("answer %s", c.Err.JSON())
			}
			if strings.HasPrefix(tc.field, "envelope") && string(c.Err.ID) != `"req-1"` {
				t.Fatalf("echoed id %s", c.Err.ID)
			}
			if tc.field == "the request id" && (c.Err.ID != nil || c.Key != "") {
				t.Fatalf("a bad id was kept: %s %q", c.Err.ID, c.Key)
			}
		})
	}
	// Other characters are fine.
	for _, id := range []string{`"é\u0080\u009f x"`, `"\u00a0"`, `"~"`} {
		req, _ := ParseRequest([]byte(call(withEnv("id", id))), Limits{})
		if req.Calls[0].Err != nil {
			t.Fatalf("%s refused: %v", id, req.Calls[0].Err)
		}
	}
	for s, want := range map[string]bool{"": true, "abc": true, "é€": true, "\x00": false, "a\x1f": false, "\x7f": false, " ": true, "\u0080": true} {
		if ValidID(s) != want {
			t.Errorf("ValidID(%q) = %v", s, !want)
		}
	}
}

func TestIDKey(t *testing.T) {
	cases := []struct {
		raw string
		key string
		ok  bool
	}{
		{`"a"`, "sa", true},
		{`"\u0061"`, "sa", true},
		{` "a" `, "sa", true},
		{`""`, "s", true},
		{`"1"`, "s1", true},
		{`1`, "n1", true},
		{`1.0`, "n1", true},
		{`1e0`, "n1", true},
		{`10E-1`, "n1", true},
		{`0.1e1`, "n1", true},
		{`-0`, "n0", true},
		{`0`, "n0", true},
		{`-1.5`, "n-1.5", true},
		{`123456789012`, "n1.23456789012e+11", true},
		{`1e400`, "", false},
		{`-1e400`, "", false},
		{`null`, "", false},
		{`true`, "", false},
		{`{}`, "", false},
		{`[1]`, "", false},
		{``, "", false},
		{`"a`, "", false},
		{`01`, "", false},
		{`1.`, "", false},
		{`0x10`, "", false},
		{`-Inf`, "", false},
		{`1_0`, "", false},
	}
	for _, tc := range cases {
		key, ok := IDKey(json.RawMessage(tc.raw))
		if key != tc.key || ok != tc.ok {
			t.Errorf("IDKey(%s) = %q %v, want %q %v", tc.raw, key, ok, tc.key, tc.ok)
		}
	}
	// Every call carries its Key.
	req, _ := ParseRequest([]byte(strings.Replace(call(goodEnv), `"id":"req-1"`, `"id":2.50`, 1)), Limits{})
	if req.Calls[0].Key != "n2.5" || string(req.Calls[0].ID) != "2.50" {
		t.Fatalf("call key %q id %s", req.Calls[0].Key, req.Calls[0].ID)
	}
	// An id number out of float64 range cannot be keyed: refused.
	req, _ = ParseRequest([]byte(strings.Replace(call(goodEnv), `"id":"req-1"`, `"id":1e999`, 1)), Limits{})
	if e := req.Calls[0].Err; e == nil || e.Reason != "invalid_id" || e.ID != nil {
		t.Fatalf("huge id: %+v", e)
	}
}

func TestMethod(t *testing.T) {
	for body, want := range map[string]string{
		call(goodEnv): MethodSend,
		strings.Replace(call(goodEnv), `asap.send`, `sla.subscribe`, 1):                          "sla.subscribe",
		strings.Replace(call(goodEnv), `"asap.send"`, `"sla.\u0073ubscribe"`, 1):                 "sla.subscribe",
		strings.Replace(call(goodEnv), `"asap.send"`, `7`, 1):                                    "",
		strings.Replace(call(goodEnv), `"id":"req-1"`, `"id":null`, 1):                           MethodSend,
		strings.Replace(call(goodEnv), `"asap.send"`, `"sla.subscribe","Method":"asap.send"`, 1): "",
	} {
		req, _ := ParseRequest([]byte(body), Limits{})
		if got := req.Calls[0].Method; got != want {
			t.Errorf("%s: Method = %q, want %q", body, got, want)
		}
	}
	req, _ := ParseRequest([]byte(strings.Replace(call(goodEnv), `asap.send`, `sla.subscribe`, 1)), Limits{})
	if e := req.Calls[0].Err; e == nil || e.Reason != "unknown_method" {
		t.Fatalf("sla.subscribe: %v", e)
	}
}

func withID(id string) string {
	return strings.Replace(call(goodEnv), `"id":"req-1"`, `"id":`+id, 1)
}

func TestBatchDuplicateIDs(t *testing.T) {
	cases := []struct {
		name string
		ids  []string
		dup  bool
	}{
		{"same string", []string{`"a"`, `"a"`}, true},
		{"escaped and plain", []string{`"\u0061"`, `"a"`}, true},
		{"1 and 1.0", []string{`1`, `1.0`}, true},
		{"1 and 1e0", []string{`1`, `2`, `1e0`}, true},
		{"0 and -0", []string{`0`, `-0`}, true},
		{"string 1 and number 1", []string{`"1"`, `1`}, false},
		{"distinct", []string{`"a"`, `"b"`, `1`, `2`}, false},
		{"case differs", []string{`"a"`, `"A"`}, false},
		{"far apart", append(append([]string{`"x"`}, seq(30)...), `"x"`), true},
		{"many distinct", seq(50), false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			calls := make([]string, len(tc.ids))
			for i, id := range tc.ids {
				calls[i] = withID(id)
			}
			req, err := ParseRequest([]byte("["+strings.Join(calls, ",")+"]"), Limits{})
			if !tc.dup {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			if err == nil || err.Code != CodeInvalidRequest || err.Reason != "duplicate_id" || req != nil {
				t.Fatalf("got %v", err)
			}
			if err.Extra["id"] == "" || !strings.Contains(err.Detail, fmt.Sprint(err.Extra["id"])) {
				t.Fatalf("detail does not name the id: %+v", err)
			}
		})
	}
	// Calls refused before their id was read do not take part, calls
	// refused later do.
	batch := "[" + withID(`null`) + "," + withID(`null`) + "," + withID(`"a\u0000"`) + "," + withID(`"a\u0000"`) + "," + withID(`"ok"`) + "]"
	req, err := ParseRequest([]byte(batch), Limits{})
	if err != nil || req.Calls[4].Err != nil {
		t.Fatalf("ids that were never read counted: %v", err)
	}
	later := strings.Replace(withID(`"a"`), "asap.send", "asap.other", 1)
	if _, err := ParseRequest([]byte("["+later+","+withID(`"a"`)+"]"), Limits{}); err == nil || err.Reason != "duplicate_id" {
		t.Fatalf("refused call with an id not counted: %v", err)
	}
}

func seq(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprint(i)
	}
	return out
}

func TestNestingDepthHonoursEscapes(t *testing.T) {
	lim := Limits{MaxDepth: 4}
	// An escaped quote does not end the string: the brackets after it
	// are still inside.
	inside := `{"a":"x\"[[[[[[[[[[{{{{{{{"}`
	if _, err := ParseRequest([]byte(inside), lim); err != nil && err.Reason == "too_deep" {
		t.Fatal(`brackets after \" counted as nesting`)
	}
	if d := nestingDepth([]byte(inside), 4); d != 1 {
		t.Fatalf("depth = %d", d)
	}
	// An escaped backslash does not escape the quote after it: these
	// brackets are outside the string and count.
	outside := `{"a":"x\\","b":[[[[[[1]]]]]]}`
	if _, err := ParseRequest([]byte(outside), lim); err == nil || err.Reason != "too_deep" {
		t.Fatalf(`brackets after \\" not counted: %v`, err)
	}
	if d := nestingDepth([]byte(`[[["\\"]]]`), 10); d != 3 {
		t.Fatalf("depth = %d", d)
	}
	// Exactly MaxDepth is fine.
	if d := nestingDepth([]byte(`[[[[1]]]]`), 4); d != 4 {
		t.Fatalf("depth = %d", d)
	}
	if _, err := ParseRequest([]byte(`[[[[1]]]]`), lim); err != nil && err.Reason == "too_deep" {
		t.Fatal("depth 4 refused with MaxDepth 4")
	}
}

func TestMaxBatchBoundary(t *testing.T) {
	batch := func(n int) []byte {
		calls := make([]string, n)
		for i := range calls {
			calls[i] = withID(fmt.Sprint(i))
		}
		return []byte("[" + strings.Join(calls, ",") + "]")
	}
	for _, lim := range []Limits{{}, {MaxBatch: 3}, {MaxBatch: 1}} {
		max := lim.withDefaults().MaxBatch
		req, err := ParseRequest(batch(max), lim)
		if err != nil || len(req.Calls) != max {
			t.Fatalf("batch of exactly %d refused: %v", max, err)
		}
		for _, c := range req.Calls {
			if c.Err != nil {
				t.Fatalf("call refused: %v", c.Err)
			}
		}
		if _, err := ParseRequest(batch(max+1), lim); err == nil || err.Reason != "batch_too_large" {
			t.Fatalf("batch of %d with limit %d: %v", max+1, max, err)
		}
	}
}

func TestReplyKeyAndBadTaskID(t *testing.T) {
	resp := func(id, taskID string) string {
		return `{"jsonrpc":"2.0","result":{"envelope":{"payload_type":"task.response","payload":{"task_id":` + taskID + `,"status":"completed"}}},"id":` + id + `}`
	}
	rs, err := ParseResponse([]byte("[" + resp(`"\u0061"`, `"t1"`) + "," + resp(`1.0`, `"t\u0000"`) + "," + resp(`null`, `"t\u007f"`) + `,{"error":{"code":-1},"id":"e"}]`))
	if err != nil || len(rs) != 4 {
		t.Fatalf("%+v %v", rs, err)
	}
	if rs[0].Key != "sa" || rs[0].TaskID != "t1" || rs[0].BadTaskID || rs[0].Failed() {
		t.Fatalf("reply 0 = %+v", rs[0])
	}
	if rs[1].Key != "n1" || rs[1].TaskID != "" || !rs[1].BadTaskID || !rs[1].Failed() {
		t.Fatalf("reply 1 = %+v", rs[1])
	}
	if rs[2].Key != "" || rs[2].TaskID != "" || !rs[2].BadTaskID {
		t.Fatalf("reply 2 = %+v", rs[2])
	}
	if rs[3].Key != "se" || rs[3].ErrorCode != -1 {
		t.Fatalf("reply 3 = %+v", rs[3])
	}
	// A call and its answer meet on the key.
	req, _ := ParseRequest([]byte(withID(`1e0`)), Limits{})
	if req.Calls[0].Key != rs[1].Key {
		t.Fatalf("call key %q, reply key %q", req.Calls[0].Key, rs[1].Key)
	}
	sse := ParseSSE([]byte("data: {\"payload_type\":\"task.stream\",\"payload\":{\"task_id\":\"a\\nb\",\"final\":true}}\n\n" +
		"data: {\"payload_type\":\"task.stream\",\"payload\":{\"task_id\":\"ok\"}}\n\n"))
	if len(sse) != 2 || sse[0].TaskID != "" || !sse[0].BadTaskID || !sse[0].Final || sse[1].TaskID != "ok" || sse[1].BadTaskID {
		t.Fatalf("sse = %+v", sse)
	}
}

func TestValidJSONMatchesEncodingJSON(t *testing.T) {
	for _, s := range []string{
		`{}`, `[]`, `""`, `0`, `-0`, `1.5e+3`, `true`, `false`, `null`, ` {"a" : [1 , {"b":null}] } `,
		`{"a":"\"\\\/\b\f\n\r\t\u00e9\uD83D\uDE00"}`, "\"\x7f\"", `"é"`,
		``, ` `, `{`, `}`, `[1,]`, `{"a":1,}`, `{,}`, `[,1]`, `{"a"}`, `{"a":}`, `{1:2}`, `{'a':1}`,
		`01`, `-`, `1.`, `.5`, `1e`, `1e+`, `+1`, `1-2`, `1.2.3`, `0x1`, `NaN`, `Infinity`, `tru`, `nul`, `truex`, `true false`,
		"\"a\x00\"", "\"\t\"", `"\x41"`, `"\u12"`, `"\u12G4"`, `"\'"`, `"abc`, `"\`, `[1 2]`, `{"a":1 "b":2}`, `[]]`, `{}}`, `[[]`, "\ufeff{}",
	} {
		if got, want := validJSON([]byte(s)), json.Valid([]byte(s)); got != want {
			t.Errorf("validJSON(%q) = %v, json.Valid %v", s, got, want)
		}
	}
}

func TestValidURNMatchesPattern(t *testing.T) {
	pattern := regexp.MustCompile(`^urn:asap:agent:[a-z0-9-]+(:[a-z0-9-]+)?$`)
	for _, s := range []string{
		"urn:asap:agent:a", "urn:asap:agent:a-b:c-9", "urn:asap:agent:", "urn:asap:agent::x", "urn:asap:agent:a:",
		"urn:asap:agent:a:b:c", "urn:asap:agent:A", "urn:asap:agent:a\n", "urn:asap:agent:a b", "urn:asap:agent:é",
		"URN:asap:agent:a", "urn:asap:agents:a", "xurn:asap:agent:a", "urn:asap:agent:_", "urn:asap:agent:-",
		"urn:asap:agent:" + strings.Repeat("a", 241), "urn:asap:agent:" + strings.Repeat("a", 242),
	} {
		want := len(s) <= MaxURNLength && pattern.MatchString(s)
		if ValidURN(s) != want {
			t.Errorf("ValidURN(%q) = %v", s, !want)
		}
	}
}
