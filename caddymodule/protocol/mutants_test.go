package protocol

import (
	"encoding/json"
	"strings"
	"testing"
)

// The tests below pin edges that mutation testing (gremlins) found
// unguarded: off-by-one bounds, escape parity, hex digits, allocation
// sizing and the walker's behaviour at the very end of its input.

// exact returns a copy of s whose capacity is its length, so that reading
// past the end panics instead of seeing spare capacity.
func exact(s string) []byte {
	b := []byte(s)
	return b[:len(b):len(b)]
}

func TestIDKeyEdges(t *testing.T) {
	cases := []struct {
		raw string
		key string
		ok  bool
	}{
		{`"`, "", false},              // a lone quote is no string
		{" \" ", "", false},           // nor with blanks around it
		{"\"\x01\"", "", false},       // raw control character
		{"\"a\x1fb\"", "", false},     // raw control character inside
		{`"""`, "", false},            // unescaped quote inside
		{`"\"`, "", false},            // the only quote is escaped
		{`"a\\"`, `sa\`, true},        // escaped backslash, then the end
		{"\"\x80\"", "s\uFFFD", true}, // invalid UTF-8 decodes as U+FFFD
		{"\"a\xffb\"", "sa\uFFFDb", true},
		{`"é"`, "sé", true},
		{`" "`, "s ", true},
		{`1.9`, "n1.9", true},
		{`1.09`, "n1.09", true},
		{`0.99`, "n0.99", true},
		{`1e9`, "n1e+09", true},
		{`9`, "n9", true},
		{`-9.0`, "n-9", true},
	}
	for _, tc := range cases {
		key, ok := IDKey(json.RawMessage(tc.raw))
		if key != tc.key || ok != tc.ok {
			t.Errorf("IDKey(%q) = %q %v, want %q %v", tc.raw, key, ok, tc.key, tc.ok)
		}
	}
}

func TestValidNumberEdges(t *testing.T) {
	cases := []struct {
		s  string
		ok bool
	}{
		{"", false},
		{"-", false},
		{"0", true},
		{"9", true},
		{"1.9", true},
		{"1.09", true},
		{"1.90", true},
		{"9.9e9", true},
		{"1.e9", false},
		{"1.x", false},
		{"1e:", false},
		{"1./", false},
	}
	for _, tc := range cases {
		if got := validNumber(exact(tc.s)); got != tc.ok {
			t.Errorf("validNumber(%q) = %v, want %v", tc.s, got, tc.ok)
		}
		if got, want := validJSON([]byte(tc.s)), json.Valid([]byte(tc.s)); got != want {
			t.Errorf("validJSON(%q) = %v, json.Valid %v", tc.s, got, want)
		}
	}
}

// Hex digits of \u escapes, letters at both ends of each range, and
// truncated input that must be refused without reading past its end.
func TestValidJSONEdges(t *testing.T) {
	for _, s := range []string{
		`"\u004F"`, `"\u00AF"`, `"\u00af"`, `"\u00Ff"`, `"\u09aF"`, `"\u004G"`, `"\u004g"`, `"\u004@"`, `"\u004/"`, `"\u004:"`,
		`["\u00`, `["\u004`, `["\u0041`, `[" \u0`, `["\`, `[tru`, `[fals`, `[nul`, ` tru`, `[true`, `{"a":fals`, `{"a":nul`,
		`["a\\"]`, `["a\\\"b"]`, `["\\\\"]`, `["\\\\\"]`, `[""]`, `["",""]`, `{"":""}`,
	} {
		want := json.Valid([]byte(s))
		if got := validJSON(exact(s)); got != want {
			t.Errorf("validJSON(%q) = %v, json.Valid %v", s, got, want)
		}
		// ParseRequest must answer (not panic) for each.
		req, err := ParseRequest(exact(s), Limits{})
		if !want && (err == nil || err.Reason != "invalid_json") {
			t.Errorf("ParseRequest(%q) = %+v %v, want invalid_json", s, req, err)
		}
	}
}

func TestStringEndParity(t *testing.T) {
	cases := []struct {
		s    string // a string value, then more
		want int    // index just past the string
	}{
		{`""`, 2},
		{`"",1`, 2},
		{`"a"`, 3},
		{`"\""x"`, 4},
		{`"\\"x"`, 4},
		{`"\\\""x"`, 6},
		{`"\\\\"x"`, 6},
		{`"a\\","b"`, 5},
		{`"a\\\\\""x"`, 9},
		{`"abc`, 4}, // unterminated: the end of the input
	}
	for _, tc := range cases {
		if got := stringEnd(exact(tc.s), 0); got != tc.want {
			t.Errorf("stringEnd(%q) = %d, want %d", tc.s, got, tc.want)
		}
	}
}

func TestValueEndAtEndOfInput(t *testing.T) {
	cases := []struct {
		s    string
		i    int
		want int
	}{
		{`123`, 0, 3},
		{`-1.5e3`, 0, 6},
		{`true`, 0, 4},
		{`null`, 0, 4},
		{`[1,23`, 3, 5},
		{`[1,2] `, 0, 5},
		{`{"a":[1]}`, 0, 9},
		{`{"a":"}"}`, 0, 9},
		{`""`, 0, 2},
		// Truncated containers end at the end of the input.
		{`[1,2`, 0, 4},
		{`{"a":{`, 0, 6},
	}
	for _, tc := range cases {
		if got := valueEnd(exact(tc.s), tc.i); got != tc.want {
			t.Errorf("valueEnd(%q, %d) = %d, want %d", tc.s, tc.i, got, tc.want)
		}
	}
}

// The member iterator stops at the end of its input even when the closing
// bracket is missing.
func TestElementsStopAtEnd(t *testing.T) {
	for _, s := range []string{`[1,2`, `[1,2 `, `{"a":1`, `[`, `{`} {
		it := newElements(exact(s))
		n := 0
		for {
			if _, _, ok := it.next(s[0] == '{'); !ok {
				break
			}
			if n++; n > 3 {
				t.Fatalf("%q: iterator does not stop", s)
			}
		}
	}
}

// Empty strings and strings ending in an escaped backslash are read in
// place: the members after them are found.
func TestEnvelopeStringsWithEdgeValues(t *testing.T) {
	env := `{"trace_id":"","correlation_id":"c\\","id":"x\\\\","asap_version":"0.1",` +
		`"sender":"urn:asap:agent:client","recipient":"urn:asap:agent:research",` +
		`"payload_type":"task.request","payload":{"s":"\\","t":""}}`
	body := `{"jsonrpc":"2.0","method":"asap.send","id":"","params":{"envelope":` + env + `}}`
	req, err := ParseRequest(exact(body), Limits{})
	if err != nil {
		t.Fatal(err)
	}
	c := req.Calls[0]
	if c.Err != nil {
		t.Fatalf("call refused: %v", c.Err)
	}
	e := c.Envelope
	if c.Key != "s" || string(c.ID) != `""` || e.TraceID != "" || e.CorrelationID != `c\` || e.ID != `x\\` ||
		e.Sender != "urn:asap:agent:client" || e.Recipient != "urn:asap:agent:research" || e.Type() != TypeTaskRequest ||
		string(e.Payload) != `{"s":"\\","t":""}` || string(e.Raw) != env {
		t.Fatalf("call = %+v", c)
	}
}

func TestURNEdgeCharacters(t *testing.T) {
	for _, s := range []string{"urn:asap:agent:z", "urn:asap:agent:0", "urn:asap:agent:a:z9", "urn:asap:agent:0-z"} {
		if !ValidURN(s) {
			t.Errorf("ValidURN(%q) = false", s)
		}
	}
	for _, s := range []string{"urn:asap:agent:{", "urn:asap:agent:/", "urn:asap:agent:`", "urn:asap:agent:a:{"} {
		if ValidURN(s) {
			t.Errorf("ValidURN(%q) = true", s)
		}
	}
}

func TestEnvelopeIDLengthBoundary(t *testing.T) {
	for _, tc := range []struct {
		n      int
		reason string
	}{{255, ""}, {256, ""}, {257, "invalid_envelope_id"}} {
		req, err := ParseRequest([]byte(call(withEnv("id", `"`+strings.Repeat("x", tc.n)+`"`))), Limits{})
		if err != nil {
			t.Fatal(err)
		}
		reason := ""
		if e := req.Calls[0].Err; e != nil {
			reason = e.Reason
		}
		if reason != tc.reason {
			t.Errorf("envelope id of %d bytes: reason %q, want %q", tc.n, reason, tc.reason)
		}
	}
}

// An unknown method is echoed in full up to 64 bytes, and cut beyond.
func TestUnknownMethodEchoBoundary(t *testing.T) {
	for _, tc := range []struct {
		method, echo string
	}{
		{strings.Repeat("m", 63), strings.Repeat("m", 63)},
		{strings.Repeat("m", 64), strings.Repeat("m", 64)},
		{strings.Repeat("m", 65), strings.Repeat("m", 64) + "…"},
		{strings.Repeat("m", 63) + "é", strings.Repeat("m", 63) + "…"},
	} {
		req, err := ParseRequest([]byte(strings.Replace(call(goodEnv), `"asap.send"`, `"`+tc.method+`"`, 1)), Limits{})
		if err != nil {
			t.Fatal(err)
		}
		e := req.Calls[0].Err
		if e == nil || e.Reason != "unknown_method" || e.Extra["method"] != tc.echo {
			t.Errorf("method %q: %+v, want echo %q", tc.method, e, tc.echo)
		}
	}
}

func TestTruncateEdges(t *testing.T) {
	cases := []struct {
		s    string
		n    int
		want string
	}{
		{"", 0, ""},
		{"abc", 3, "abc"},
		{"abcd", 3, "abc…"},
		{"é", 1, "…"},
		// No rune start at all: nothing is kept, and nothing panics.
		{strings.Repeat("\x80", 70), 64, "…"},
		{"\x80\x80", 1, "…"},
	}
	for _, tc := range cases {
		if got := truncate(tc.s, tc.n); got != tc.want {
			t.Errorf("truncate(%q, %d) = %q, want %q", tc.s, tc.n, got, tc.want)
		}
	}
}

// Names that differ only in the case of a first letter at either end of
// A-Z are the same member.
func TestDuplicateMembersFirstLetterEdges(t *testing.T) {
	for _, pair := range [][2]string{{"A", "a"}, {"Z", "z"}, {"Ab", "aB"}, {"zq", "ZQ"}, {"@", "`"}, {"[", "{"}} {
		body := callWith(jr + `,` + meth + `,` + rid + `,` + params + `,"` + pair[0] + `":1,"` + pair[1] + `":2`)
		req, err := ParseRequest([]byte(body), Limits{})
		if err != nil {
			t.Fatal(err)
		}
		e := req.Calls[0].Err
		dup := e != nil && e.Reason == "duplicate_member"
		want := strings.EqualFold(pair[0], pair[1])
		if dup != want {
			t.Errorf("members %q and %q: %+v, want duplicate %v", pair[0], pair[1], e, want)
		}
	}
	for c := 0; c < 128; c++ {
		if got, want := lowerASCII(byte(c)), strings.ToLower(string(rune(c)))[0]; got != want {
			t.Errorf("lowerASCII(%q) = %q, want %q", byte(c), got, want)
		}
	}
}

// SSE data lines are joined with a newline, so a JSON string split over
// two lines holds a raw newline and the event does not parse.
func TestParseSSESplitString(t *testing.T) {
	body := "data: {\"payload_type\":\"task.\ndata: response\",\"payload\":{}}\n\n"
	if rs := ParseSSE([]byte(body)); len(rs) != 0 {
		t.Fatalf("split string parsed: %+v", rs)
	}
	body = "data: {\"payload_type\":\"task.response\",\"payload\":{\"task_id\":\"t\",\"n\":1\ndata: 2}}\n\n"
	if rs := ParseSSE([]byte(body)); len(rs) != 0 {
		t.Fatalf("split number parsed: %+v", rs)
	}
}

// The envelope's string members share one allocation sized up front.
func TestDecodeEnvelopeAllocatesOnce(t *testing.T) {
	env := []byte(goodEnv)
	var e Envelope
	allocs := testing.AllocsPerRun(100, func() {
		if err := decodeEnvelope(env, &e); err != nil {
			t.Fatal(err)
		}
	})
	if allocs > 1 {
		t.Fatalf("decodeEnvelope allocates %v times, want 1", allocs)
	}
}

// Small inputs take the paths that do not allocate: pairwise comparison of
// up to 16 batch ids and 32 member names, and an id string without
// escapes keyed without the JSON decoder.
func TestSmallInputsDoNotAllocate(t *testing.T) {
	calls := make([]Call, 16)
	for i := range calls {
		calls[i].Key = "s" + string(rune('a'+i))
	}
	if n := testing.AllocsPerRun(100, func() {
		if d := duplicateKey(calls); d != -1 {
			t.Fatalf("duplicateKey = %d", d)
		}
	}); n != 0 {
		t.Errorf("duplicateKey of 16 calls allocates %v times", n)
	}
	calls[15].Key = calls[3].Key
	if d := duplicateKey(calls); d != 15 {
		t.Errorf("duplicateKey = %d, want 15", d)
	}

	names := make([][]byte, 32)
	for i := range names {
		names[i] = []byte{'a' + byte(i%26), 'A' + byte(i/26)}
	}
	if n := testing.AllocsPerRun(100, func() {
		if name, dup := foldDuplicate(names); dup {
			t.Fatalf("foldDuplicate = %q", name)
		}
	}); n != 0 {
		t.Errorf("foldDuplicate of 32 names allocates %v times", n)
	}

	for _, raw := range []string{`"a b"`, `" "`, `"x y z"`} {
		id := json.RawMessage(raw)
		var key string
		if n := testing.AllocsPerRun(100, func() { key, _ = IDKey(id) }); n > 1 {
			t.Errorf("IDKey(%s) allocates %v times, want at most 1", raw, n)
		}
		if key != "s"+raw[1:len(raw)-1] {
			t.Errorf("IDKey(%s) = %q", raw, key)
		}
	}
}
