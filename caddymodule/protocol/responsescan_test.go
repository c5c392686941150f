package protocol

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"unicode/utf8"
)

// The scanner must read every answer exactly as encoding/json does: the
// records (failed or completed, task id, metrics) may not depend on which
// of the two read it.
func FuzzScanResponseMatchesDecoder(f *testing.F) {
	for _, s := range responseSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		checkScanMatchesDecoder(t, b)
	})
}

func TestScanResponseMatchesDecoder(t *testing.T) {
	for _, s := range responseSeeds {
		t.Run(s, func(t *testing.T) { checkScanMatchesDecoder(t, []byte(s)) })
	}
}

func checkScanMatchesDecoder(t *testing.T, b []byte) {
	t.Helper()
	checkEnvelopeMatchesDecoder(t, trimmed(b))
	body := trimmed(b)
	got, gotErr, scanned := scanResponse(body)
	if !scanned {
		if utf8.Valid(body) && nestingDepth(body, scanDepth) <= scanDepth {
			t.Fatalf("%q: the scanner left an answer it reads", b)
		}
		return // decodeResponse reads it: nothing to compare
	}
	want, wantErr := decodeResponse(body)
	if (gotErr == nil) != (wantErr == nil) {
		t.Fatalf("%q: scanner error %v, decoder error %v", b, gotErr, wantErr)
	}
	if len(got) == 0 && len(want) == 0 {
		return
	}
	for i := range want {
		// encoding/json copies raw values; compare them as bytes.
		if string(got[i].ID) != string(want[i].ID) || string(got[i].Metrics) != string(want[i].Metrics) {
			t.Fatalf("%q: reply %d raw fields differ: scanner %+v, decoder %+v", b, i, got[i], want[i])
		}
		got[i].ID, got[i].Metrics, want[i].ID, want[i].Metrics = nil, nil, nil, nil
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("%q:\nscanner %+v\ndecoder %+v", b, got, want)
	}
}

// checkEnvelopeMatchesDecoder holds scanEnvelope to encoding/json, with
// b as a reply envelope (readEnvelope uses it on both paths).
func checkEnvelopeMatchesDecoder(t *testing.T, b []byte) {
	t.Helper()
	if kind(b) != '{' {
		return
	}
	got, ok := scanEnvelope(b, false)
	var want wireReplyEnvelope
	wantErr := json.Unmarshal(b, &want)
	if !scannable(b) {
		if ok {
			t.Fatalf("%q: scanEnvelope read what it cannot check", b)
		}
		return
	}
	if ok != (wantErr == nil) {
		t.Fatalf("%q: scanEnvelope ok=%v, encoding/json error %v", b, ok, wantErr)
	}
	if ok && !reflect.DeepEqual(norm(got), norm(want)) {
		t.Fatalf("%q:\nscanner %+v\ndecoder %+v", b, got, want)
	}
}

// norm makes raw values comparable (nil and empty alike).
func norm(e wireReplyEnvelope) [5]string {
	return [5]string{string(e.PayloadType), string(e.Payload.TaskID), string(e.Payload.Status), string(e.Payload.Metrics), string(e.Payload.Final)}
}

func trimmed(b []byte) []byte {
	i, j := 0, len(b)
	for i < j && (b[i] == ' ' || b[i] == '\t' || b[i] == '\r' || b[i] == '\n') {
		i++
	}
	for j > i && (b[j-1] == ' ' || b[j-1] == '\t' || b[j-1] == '\r' || b[j-1] == '\n') {
		j--
	}
	return b[i:j]
}

// Each seed is a way the two readers could part: case, duplicates,
// merging, null, wrong types, escapes in names, batches.
var responseSeeds = []string{
	`{"jsonrpc":"2.0","result":{"envelope":{"payload_type":"task.response","payload":{"task_id":"t1","status":"completed","metrics":{"tokens_in":3}}}},"id":"r1"}`,
	`{"result":{"envelope":{"payload":{"status":"completed"}}},"RESULT":{"Envelope":{"payload":{"STATUS":"failed"}}},"id":1}`,
	`{"result":{"envelope":{"payload":{"task_id":"a"}}},"result":{},"id":1}`,
	`{"result":{"envelope":{"payload":{"task_id":"a"}}},"result":null,"id":1}`,
	`{"result":null,"result":{"envelope":{}},"id":1}`,
	`{"result":5,"id":1}`,
	`{"error":"x","id":1}`,
	`{"error":null,"id":1}`,
	`{"error":{"code":-32001},"error":{"message":"m"},"id":1}`,
	`{"error":{"code":"nan"},"id":null}`,
	`{"result":{"envelope":{"payload":{"task_id":"a"},"payload":{"status":"failed"}}},"id":1}`,
	`{"result":{"envelope":{"payload":null}},"id":1}`,
	`{"result":{"envelope":{"payload":"x","payload_type":"task.response"}},"id":1}`,
	`{"result":{"envelope":{"payload":{"task_id":"a\u0001"}}},"id":1}`,
	`{"result":{"envelope":{"\u0070ayload":{"task_\u0069d":"esc"}}},"\u0069d":"e"}`,
	`{"result":{"envelope":{"payload":{"final":true,"status":"completed"},"payload_type":"TaskStream"}},"id":1}`,
	`{"result":{"envelope":{"payload":{"metrics":{"tokens_in":1},"METRICS":[1]}}},"id":1}`,
	`{"result":{"envelope":[1,2]},"id":1}`,
	`{"result":{"envelope":"s"},"id":1}`,
	`{"ſtatus":1,"result":{"envelope":{"payload":{"ſtatus":"failed"}}},"id":1}`,
	`{"result":{"envelope":{"payload":{"\u212Aey":"k","status":"completed"}}},"id":1}`,
	`[{"result":{"envelope":{}},"id":1},null,{"error":{"code":1},"id":2},{"id":3}]`,
	`[{"result":{"envelope":{}},"id":1},5]`,
	`[]`,
	`{}`,
	`[null]`,
	`{"id":1,"result":{"envelope":{}}} x`,
	`{"id":1,"result":{"envelope":{}},}`,
	"{\"id\":\"\xff\",\"result\":{\"envelope\":{}}}",
	`{"id":1,"result":{"envelope":{"payload":{"task_id":"t"}}}}` + "   \n",
	`  {"id" : 1 , "result" : { "envelope" : { "payload" : { "status" : "failed" } } } }  `,
	`[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]`,
	`{"id":1e400,"result":{"envelope":{}}}`,
	`{"id":1,"result":{"envelope":{"payload":{"status":"\ud800"}}}}`,
	`{"payload_type":"task.response","payload":{"task_id":"t","status":"failed","metrics":{"a":1},"final":true}}`,
	`{"payload":{"task_id":"a"},"PAYLOAD":null,"Payload":{"status":"s"}}`,
	`{"payload":{"task_id":"a"},"payload":7}`,
	`{"payload":[],"payload_type":1}`,
	`{"payload_type":"a","payload_type":"b","payload":{"final":false,"Final":true}}`,
}

func TestMembers(t *testing.T) {
	var got []string
	ok := Members([]byte(` {"a":1, "b\u0062":[2,{"c":3}],"a":"x"} `), func(name, v []byte) { got = append(got, string(name)+"="+string(v)) })
	if !ok || strings.Join(got, " ") != `a=1 bb=[2,{"c":3}] a="x"` {
		t.Fatalf("members %v (%v)", got, ok)
	}
	for _, bad := range []string{`[1]`, `{"a":1,}`, "{\"a\":\"\xff\"}", `"s"`, ``} {
		if Members([]byte(bad), func(_, _ []byte) { t.Fatalf("%q: called", bad) }) {
			t.Fatalf("%q: read as an object", bad)
		}
	}
}

// Answers the scanner leaves to encoding/json are read all the same, and
// an envelope encoding/json refuses (a payload that is not an object)
// gives nothing, whichever reader met it.
func TestParseResponseFallsBackToTheDecoder(t *testing.T) {
	notUTF8 := "{\"result\":{\"envelope\":{\"payload_type\":\"task.response\",\"note\":\"\xff\",\"payload\":{\"task_id\":\"t9\",\"status\":\"failed\"}}},\"id\":1}"
	rs, err := ParseResponse([]byte(notUTF8))
	if err != nil || len(rs) != 1 || rs[0].TaskID != "t9" || rs[0].Status != "failed" || rs[0].PayloadType != TypeTaskResponse {
		t.Fatalf("answer with invalid UTF-8: %+v %v", rs, err)
	}
	for _, body := range []string{
		`{"result":{"envelope":{"payload_type":"task.response","payload":"x"}},"id":1}`,
		"{\"result\":{\"envelope\":{\"payload_type\":\"task.response\",\"n\":\"\xff\",\"payload\":[1]}},\"id\":1}",
	} {
		rs, err := ParseResponse([]byte(body))
		if err != nil || len(rs) != 1 || rs[0].PayloadType != "" || rs[0].TaskID != "" {
			t.Fatalf("%q: an unreadable envelope gave %+v %v", body, rs, err)
		}
	}
	sse := "data: {\"payload_type\":\"task.stream\",\"x\":\"\xff\",\"payload\":{\"task_id\":\"s1\",\"final\":true}}\n\n"
	if rs := ParseSSE([]byte(sse)); len(rs) != 1 || rs[0].TaskID != "s1" || !rs[0].Final {
		t.Fatalf("SSE event with invalid UTF-8: %+v", rs)
	}
}
