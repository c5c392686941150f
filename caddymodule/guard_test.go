package caddymodule

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"compress/zlib"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/andybalholm/brotli"
	"github.com/asap-sidecar/asap-sidecar/caddymodule/metering"
	"github.com/asap-sidecar/asap-sidecar/caddymodule/protocol"
	"github.com/asap-sidecar/asap-sidecar/storage"
)

// The tests in this file reproduce ways around the guard (SPEC §2a): each
// sends what an attacker would, to a real sidecar, and checks that nothing
// unchecked reached the agent.

// rawExchange sends one hand-written HTTP/1.1 request and reads the answer,
// so that headers the Go client would rewrite reach the sidecar as written.
func rawExchange(t *testing.T, addr, request string) (*http.Response, []byte) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(15 * time.Second))
	if _, err := io.WriteString(conn, request); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("reading answer: %v", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, b
}

func rawPost(path, headers, body string) string {
	return fmt.Sprintf("POST %s HTTP/1.1\r\nHost: sidecar\r\nContent-Type: application/json\r\n%sContent-Length: %d\r\n\r\n%s",
		path, headers, len(body), body)
}

// A POST is never a WebSocket handshake, whatever its Connection header
// says: it takes the full pipeline (finding 1, the upgrade-header bypass).
func TestUpgradeHeadersDoNotBypassChecks(t *testing.T) {
	var mu sync.Mutex
	var upgradeSeen []string
	up := &countingUpstream{answer: func(w http.ResponseWriter, r *http.Request, _ []byte) {
		mu.Lock()
		upgradeSeen = append(upgradeSeen, r.Header.Get("Upgrade"))
		mu.Unlock()
		fixedAnswer(200, "application/json", agentAnswer)(w, r, nil)
	}}
	srv := httptest.NewServer(up)
	defer srv.Close()
	s := startSidecar(t, upstreamAddr(srv), "agent urn:asap:agent:demo\nmax_body 1KiB")
	addr := strings.TrimPrefix(s.url, "http://")

	wrongSender := strings.Replace(rpc("r1", envelope("01JUPGRADE0000000000000001", "echo", `{}`)), "urn:asap:agent:client", "not-a-urn", 1)
	for _, hdr := range []string{
		"Connection: upgrade\r\n",
		"Connection: x-noupgrade\r\n",
		"Connection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n",
		"Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
	} {
		for _, body := range []string{"not json", wrongSender, strings.Repeat(" ", 2048) + rpc("r2", envelope("01JUPGRADE0000000000000002", "echo", `{}`))} {
			resp, b := rawExchange(t, addr, rawPost("/asap", hdr, body))
			if resp.StatusCode == 200 {
				if a := decodeAnswer(t, b); a.Error == nil {
					t.Fatalf("headers %q, body %.40q: answered without an error: %s", hdr, body, b)
				}
			} else if resp.StatusCode != http.StatusRequestEntityTooLarge {
				t.Fatalf("headers %q, body %.40q: status %d: %s", hdr, body, resp.StatusCode, b)
			}
		}
	}
	if n := up.count(); n != 0 {
		t.Fatalf("the agent got %d requests that should have been refused", n)
	}
	// And a valid call with such headers is metered like any other, and
	// reaches the agent as a plain POST it cannot switch to a tunnel.
	resp, b := rawExchange(t, addr, rawPost("/asap", "Connection: Upgrade\r\nUpgrade: websocket\r\n", rpc("r3", envelope("01JUPGRADE0000000000000003", "echo", `{}`))))
	if resp.StatusCode != 200 || up.count() != 1 {
		t.Fatalf("valid call: status %d, agent hits %d: %s", resp.StatusCode, up.count(), b)
	}
	mu.Lock()
	defer mu.Unlock()
	if upgradeSeen[0] != "" {
		t.Fatalf("the agent got Upgrade: %q on a checked POST", upgradeSeen[0])
	}
	if _, ok := usageEvents(t, runningDB(t))["01JUPGRADE0000000000000003"]; !ok {
		t.Fatal("the call sent with Connection: upgrade was not metered")
	}
}

// Only POST (and a real WebSocket GET) is served on the ASAP paths.
func TestOtherMethodsOnASAPPathsAre405(t *testing.T) {
	up := &countingUpstream{answer: fixedAnswer(200, "application/json", agentAnswer)}
	srv := httptest.NewServer(up)
	defer srv.Close()
	s := startSidecar(t, upstreamAddr(srv), "agent urn:asap:agent:demo")
	body := rpc("r1", envelope("01JMETHOD00000000000000001", "echo", `{}`))
	for _, m := range []string{"GET", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD", "FOO"} {
		for _, p := range []string{"/asap", "/asap/stream", "/asap/", "/asap/ws"} {
			req, _ := http.NewRequest(m, s.url+p, strings.NewReader(body))
			req.Header.Set("Connection", "upgrade")
			resp, err := client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusMethodNotAllowed || resp.Header.Get("Allow") != "POST" {
				t.Fatalf("%s %s: status %d, Allow %q: %s", m, p, resp.StatusCode, resp.Header.Get("Allow"), b)
			}
			if m != "HEAD" {
				if a := decodeAnswer(t, b); a.Error == nil || a.Error.Code != protocol.CodeInvalidRequest || a.Error.Data["reason"] != "method_not_allowed" {
					t.Fatalf("%s %s: answer %s", m, p, b)
				}
			}
		}
	}
	if n := up.count(); n != 0 {
		t.Fatalf("the agent got %d requests with other methods", n)
	}
}

func TestHeaderHasToken(t *testing.T) {
	for _, c := range []struct {
		values []string
		want   bool
	}{
		{[]string{"upgrade"}, true},
		{[]string{"keep-alive, Upgrade"}, true},
		{[]string{"keep-alive", " UPGRADE "}, true},
		{[]string{"x-noupgrade"}, false},
		{[]string{"upgrade-insecure"}, false},
		{[]string{"keep-alive,upgradex"}, false},
		{nil, false},
	} {
		h := http.Header{"Connection": c.values}
		if got := headerHasToken(h, "Connection", "upgrade"); got != c.want {
			t.Errorf("%q: got %v, want %v", c.values, got, c.want)
		}
	}
}

// reencodingAgent is an HTTP agent answering with pythonAnswers ("[]" for
// a batch it answers none of).
func reencodingAgent() *countingUpstream {
	return &countingUpstream{answer: func(w http.ResponseWriter, r *http.Request, body []byte) {
		out, _ := pythonAnswers(body)
		if out == "" {
			out = "[]"
		}
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprint(w, out)
	}}
}

// Finding 2: what the agent reads (exact member names) is what was
// checked; ambiguous names are refused before anything is forwarded.
func TestAmbiguousMemberNamesAreRefused(t *testing.T) {
	up := &countingUpstream{answer: fixedAnswer(200, "application/json", agentAnswer)}
	srv := httptest.NewServer(up)
	defer srv.Close()
	s := startSidecar(t, upstreamAddr(srv), "agent urn:asap:agent:demo")

	benign := envelope("01JSMUGGLE0000000000000001", "echo", `{}`)
	evil := strings.Replace(strings.Replace(benign, "urn:asap:agent:client", "urn:asap:agent:mallory", 1), "task.request", "state.restore", 1)
	for name, body := range map[string]string{
		"envelope twice in params": `{"jsonrpc":"2.0","method":"asap.send","params":{"envelope":` + evil + `,"envelope":` + benign + `},"id":"r1"}`,
		"Envelope case variant":    `{"jsonrpc":"2.0","method":"asap.send","params":{"envelope":` + evil + `,"Envelope":` + benign + `},"id":"r1"}`,
		"sender folding ſ":         rpc("r1", strings.Replace(benign, `"sender":`, `"ſender":"urn:asap:agent:mallory","sender":`, 1)),
		"escaped payload_type":     rpc("r1", strings.Replace(benign, `"payload_type":`, `"payload_type":"state.restore","payload_\u0074ype":`, 1)),
		"Kelvin sign folding":      rpc("r1", strings.Replace(benign, `"payload_type":`, `"requires_ack":true,"requires_ac\u212a":false,"payload_type":`, 1)),
		"method twice":             `{"jsonrpc":"2.0","method":"asap.send","method":"other","params":{"envelope":` + benign + `},"id":"r1"}`,
		"params case variant":      `{"jsonrpc":"2.0","method":"asap.send","Params":{"envelope":` + evil + `},"params":{"envelope":` + benign + `},"id":"r1"}`,
	} {
		_, b := post(t, s.url+"/asap", body)
		a := decodeAnswer(t, b)
		if a.Error == nil || a.Error.Code != protocol.CodeInvalidRequest || a.Error.Data["reason"] != "duplicate_member" {
			t.Errorf("%s: answer %s, want -32600 duplicate_member", name, b)
		}
	}
	// Only the exact name counts: "Envelope" alone is no envelope.
	_, b := post(t, s.url+"/asap", `{"jsonrpc":"2.0","method":"asap.send","params":{"Envelope":`+benign+`},"id":"r1"}`)
	if a := decodeAnswer(t, b); a.Error == nil || a.Error.Data["reason"] != "missing_envelope" {
		t.Errorf("Envelope alone: %s", b)
	}
	if n := up.count(); n != 0 {
		t.Fatalf("the agent got %d ambiguous requests", n)
	}
}

// withEnvelopeID is an echo envelope whose id is raw JSON string content.
func withEnvelopeID(raw string) string {
	return strings.Replace(envelope("01JPLACEHOLDER", "echo", `{}`), "01JPLACEHOLDER", raw, 1)
}

// Finding 6: control characters in ids never reach the agent or a
// storage key.
func TestControlCharactersInIDsAreRefused(t *testing.T) {
	up := &countingUpstream{answer: fixedAnswer(200, "application/json", agentAnswer)}
	srv := httptest.NewServer(up)
	defer srv.Close()
	s := startSidecar(t, upstreamAddr(srv), "agent urn:asap:agent:demo")
	for name, body := range map[string]string{
		"NUL in envelope id": rpc("r1", withEnvelopeID(`01JCTRL\u0000x`)),
		"DEL in envelope id": rpc("r1", withEnvelopeID(`01JCTRL\u007fx`)),
		"newline in rpc id":  strings.Replace(rpc("r1", envelope("01JCTRL0000000000000000001", "echo", `{}`)), `"id":"r1"`, `"id":"r\n1"`, 1),
		"tab in correlation": rpc("r1", strings.Replace(envelope("01JCTRL0000000000000000002", "echo", `{}`), `"payload_type":"task.request"`, `"payload_type":"task.response","correlation_id":"c\t1"`, 1)),
		"NUL in a batch":     "[" + rpc("r1", withEnvelopeID(`01JCTRL\u0000y`)) + "]",
	} {
		_, b := post(t, s.url+"/asap", body)
		if strings.HasPrefix(body, "[") {
			var as []rpcAnswer
			if err := json.Unmarshal(b, &as); err != nil || len(as) != 1 || as[0].Error == nil || as[0].Error.Code != protocol.CodeInvalidParams {
				t.Errorf("%s: answer %s", name, b)
			}
			continue
		}
		if a := decodeAnswer(t, b); a.Error == nil || a.Error.Code != protocol.CodeInvalidParams || a.Error.Data["reason"] != "control_character_in_id" {
			t.Errorf("%s: answer %s, want -32602 control_character_in_id", name, b)
		}
	}
	if n := up.count(); n != 0 {
		t.Fatalf("the agent got %d requests with control characters in ids", n)
	}
}

// Finding 5: batch ids are unique and answers match by decoded id; a call
// the agent leaves unanswered is a failed task, not a free success.
func TestBatchAnswersMatchByDecodedID(t *testing.T) {
	up := reencodingAgent()
	srv := httptest.NewServer(up)
	defer srv.Close()
	s := startSidecar(t, upstreamAddr(srv), "agent urn:asap:agent:demo")

	one := func(id, envID, skill string) string {
		return fmt.Sprintf(`{"jsonrpc":"2.0","method":"asap.send","params":{"envelope":%s},"id":%s}`, envelope(envID, skill, `{}`), id)
	}
	for name, body := range map[string]string{
		"same string":       "[" + one(`"a"`, "01JDUPID00000000000000001A", "echo") + "," + one(`"a"`, "01JDUPID00000000000000001B", "echo") + "]",
		"escaped and plain": "[" + one(`"\u0061"`, "01JDUPID00000000000000002A", "echo") + "," + one(`"a"`, "01JDUPID00000000000000002B", "echo") + "]",
		"1 and 1.0 and 1e0": "[" + one(`1`, "01JDUPID00000000000000003A", "echo") + "," + one(`1e0`, "01JDUPID00000000000000003B", "echo") + "]",
	} {
		_, b := post(t, s.url+"/asap", body)
		if a := decodeAnswer(t, b); a.Error == nil || a.Error.Code != protocol.CodeInvalidRequest || a.Error.Data["reason"] != "duplicate_id" {
			t.Errorf("%s: answer %s, want -32600 duplicate_id", name, b)
		}
	}
	if n := up.count(); n != 0 {
		t.Fatalf("the agent got %d batches with duplicate ids", n)
	}

	// "1" (a string) and 1 (a number) are different ids.
	body := "[" + one(`"\u0061"`, "01JDECODED000000000000000A", "echo") + "," + one(`1.0`, "01JDECODED000000000000000B", "echo") + "," +
		one(`"1"`, "01JDECODED000000000000000C", "skip") + "]"
	if resp, b := post(t, s.url+"/asap", body); resp.StatusCode != 200 || up.count() != 1 {
		t.Fatalf("status %d, agent hits %d: %s", resp.StatusCode, up.count(), b)
	}
	evs := usageEvents(t, runningDB(t))
	for _, id := range []string{"01JDECODED000000000000000A", "01JDECODED000000000000000B"} {
		if ev := evs[id]; ev.TokensIn != 7 || ev.Status != "completed" || ev.TaskID != "t-"+id {
			t.Errorf("%s: event %+v, want the agent's answer (7 tokens, completed)", id, ev)
		}
	}
	if ev := evs["01JDECODED000000000000000C"]; ev.Status != "failed" || ev.TokensIn != 0 {
		t.Errorf("unanswered call: event %+v, want failed", ev)
	}
	if c := countsOf(t, "urn:asap:agent:demo"); c.Forwarded != 3 || c.Completed != 2 || c.Failed != 1 {
		t.Errorf("counts = %+v, want 3 forwarded, 2 completed, 1 failed", c)
	}
}

func compress(t *testing.T, enc string, b []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	var w io.WriteCloser
	switch enc {
	case "gzip":
		w = gzip.NewWriter(&buf)
	case "deflate":
		w = zlib.NewWriter(&buf)
	case "br":
		w = brotli.NewWriter(&buf)
	default:
		t.Fatalf("no encoder for %s", enc)
	}
	if _, err := w.Write(b); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func postEncoded(t *testing.T, url, enc string, body []byte) (*http.Response, []byte) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Content-Encoding", enc)
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, b
}

// Finding 7: compressed bodies (the reference client compresses large
// ones) are decoded for inspection, limited by their decoded size, and
// reach the agent as sent.
func TestCompressedBodiesAreInspectedAndForwardedAsSent(t *testing.T) {
	var mu sync.Mutex
	var encodings []string
	up := reencodingAgent()
	batchAgent := up.answer
	up.answer = func(w http.ResponseWriter, r *http.Request, body []byte) {
		mu.Lock()
		encodings = append(encodings, r.Header.Get("Content-Encoding"))
		mu.Unlock()
		if r.Header.Get("Content-Encoding") != "" {
			fixedAnswer(200, "application/json", agentAnswer)(w, r, body)
			return
		}
		batchAgent(w, r, body)
	}
	srv := httptest.NewServer(up)
	defer srv.Close()
	s := startSidecar(t, upstreamAddr(srv), "agent urn:asap:agent:demo\nmax_body 64KiB")

	// Valid calls in each encoding: forwarded byte for byte, metered.
	for i, enc := range []string{"gzip", "deflate", "br"} {
		id := fmt.Sprintf("01JCOMPRESS00000000000000%d", i)
		sent := compress(t, enc, []byte(rpc("r1", envelope(id, "echo", `{"text":"`+strings.Repeat("x", 4000)+`"}`))))
		resp, b := postEncoded(t, s.url+"/asap", enc, sent)
		if resp.StatusCode != 200 || string(b) != agentAnswer {
			t.Fatalf("%s: status %d: %s", enc, resp.StatusCode, b)
		}
		if !bytes.Equal(up.last(), sent) {
			t.Fatalf("%s: the agent did not get the body as sent", enc)
		}
		if _, ok := usageEvents(t, runningDB(t))[id]; !ok {
			t.Fatalf("%s: the call was not metered", enc)
		}
	}
	hits := up.count()

	// Checked after decoding: a bad call inside gzip is refused.
	bad := compress(t, "gzip", []byte(`{"jsonrpc":"2.0","method":"asap.send","params":{"envelope":`+envelope("01JCOMPRESSBAD000000000001", "echo", `{}`)+`,"Envelope":{}},"id":"r1"}`))
	if _, b := postEncoded(t, s.url+"/asap", "gzip", bad); decodeAnswer(t, b).Error == nil {
		t.Fatalf("smuggling inside gzip: %s", b)
	}
	// A bomb: 10 MB of spaces compress to a few KB; refused at max_body.
	bomb := compress(t, "gzip", append(bytes.Repeat([]byte(" "), 10<<20), rpc("r1", envelope("01JCOMPRESSBOMB00000000001", "echo", `{}`))...))
	if resp, b := postEncoded(t, s.url+"/asap", "gzip", bomb); resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Fatalf("gzip bomb: status %d: %s", resp.StatusCode, b)
	}
	// Encodings the sidecar cannot read are refused, never passed on.
	for _, enc := range []string{"zstd", "compress", "gzip, br"} {
		resp, b := postEncoded(t, s.url+"/asap", enc, []byte(rpc("r1", envelope("01JCOMPRESSODD000000000001", "echo", `{}`))))
		if resp.StatusCode != http.StatusUnsupportedMediaType {
			t.Fatalf("%s: status %d: %s", enc, resp.StatusCode, b)
		}
	}
	// Corrupt data is refused.
	for _, enc := range []string{"gzip", "deflate", "br"} {
		good := compress(t, enc, []byte(rpc("r1", envelope("01JCOMPRESSCUT000000000001", "echo", `{}`))))
		resp, b := postEncoded(t, s.url+"/asap", enc, good[:len(good)/2])
		if a := decodeAnswer(t, b); resp.StatusCode != http.StatusBadRequest || a.Error == nil || a.Error.Data["reason"] != "bad_encoding" {
			t.Fatalf("%s cut short: status %d: %s", enc, resp.StatusCode, b)
		}
	}
	if n := up.count(); n != hits {
		t.Fatalf("the agent got %d refused compressed requests", n-hits)
	}

	// A filtered batch is new JSON: it goes out decoded, without
	// Content-Encoding, with only the good call.
	good := rpc("g", envelope("01JCOMPRESSBATCH0000000001", "echo", `{}`))
	batch := compress(t, "gzip", []byte("["+good+`,{"jsonrpc":"2.0","method":"nope","id":"x"}]`))
	if resp, b := postEncoded(t, s.url+"/asap", "gzip", batch); resp.StatusCode != 200 {
		t.Fatalf("filtered batch: status %d: %s", resp.StatusCode, b)
	}
	mu.Lock()
	last := encodings[len(encodings)-1]
	mu.Unlock()
	if string(up.last()) != "["+good+"]" || last != "" {
		t.Fatalf("filtered batch reached the agent as %q (Content-Encoding %q)", up.last(), last)
	}
}

// usageByConsumer counts stored usage events by (consumer, envelope id).
func usageByConsumer(t *testing.T) map[[2]string]int {
	t.Helper()
	out := map[[2]string]int{}
	err := metering.New(runningDB(t), 0).Each(metering.Filter{}, func(e *metering.Event) bool {
		out[[2]string{e.ConsumerID, e.EnvelopeID}]++
		return true
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// Finding 3: usage dedup is per consumer, and an envelope id cannot be
// reused for a different call — sequentially or concurrently.
func TestEnvelopeIDReuse(t *testing.T) {
	up := &countingUpstream{answer: fixedAnswer(200, "application/json", agentAnswer)}
	srv := httptest.NewServer(up)
	defer srv.Close()
	s := startSidecar(t, upstreamAddr(srv), "agent urn:asap:agent:demo")
	const id = "01JREUSE000000000000000001"
	alice := envelope(id, "echo", `{"text":"a"}`)
	bob := strings.Replace(alice, "urn:asap:agent:client", "urn:asap:agent:bob", 1)

	for _, env := range []string{alice, bob, alice} { // the third is a retry
		if _, b := post(t, s.url+"/asap", rpc("r1", env)); decodeAnswer(t, b).Error != nil {
			t.Fatalf("answer %s", b)
		}
	}
	if up.count() != 3 {
		t.Fatalf("agent hits %d, want 3 (retries go through)", up.count())
	}
	got := usageByConsumer(t)
	if got[[2]string{"urn:asap:agent:client", id}] != 1 || got[[2]string{"urn:asap:agent:bob", id}] != 1 {
		t.Fatalf("usage = %v, want one event per consumer", got)
	}

	// The same id with a different call is refused and never forwarded.
	changed := envelope(id, "echo", `{"text":"something else"}`)
	_, b := post(t, s.url+"/asap", rpc("r2", changed))
	if a := decodeAnswer(t, b); a.Error == nil || a.Error.Code != protocol.CodeInvalidRequest || a.Error.Data["reason"] != "envelope_id_reused" {
		t.Fatalf("changed call under a used id: %s", b)
	}
	if up.count() != 3 {
		t.Fatal("a changed call under a used id reached the agent")
	}

	// Concurrently: 16 different calls under one fresh id, exactly one runs.
	before := up.count()
	var wg sync.WaitGroup
	var mu sync.Mutex
	ok, refused := 0, 0
	for i := 0; i < 16; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			_, b := post(t, s.url+"/asap", rpc("c", envelope("01JREUSE000000000000000002", "echo", fmt.Sprintf(`{"n":%d}`, i))))
			a := decodeAnswer(t, b)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case a.Error == nil:
				ok++
			case a.Error.Data["reason"] == "envelope_id_reused":
				refused++
			default:
				t.Errorf("answer %s", b)
			}
		}(i)
	}
	wg.Wait()
	if ok != 1 || refused != 15 || up.count()-before != 1 {
		t.Fatalf("16 different calls under one id: %d ran, %d refused, %d reached the agent; want 1/15/1", ok, refused, up.count()-before)
	}
	if n := usageByConsumer(t)[[2]string{"urn:asap:agent:client", "01JREUSE000000000000000002"}]; n != 1 {
		t.Fatalf("%d usage events for the contested id, want 1", n)
	}
}

// An agent's task id with control characters never becomes a storage
// key: the task is recorded under its envelope id, as failed.
func TestAgentTaskIDWithControlCharacters(t *testing.T) {
	answer := strings.Replace(agentAnswer, `"task_id":"task_1"`, `"task_id":"task\u0000evil"`, 1)
	up := &countingUpstream{answer: fixedAnswer(200, "application/json", answer)}
	srv := httptest.NewServer(up)
	defer srv.Close()
	s := startSidecar(t, upstreamAddr(srv), "agent urn:asap:agent:demo")
	if resp, b := post(t, s.url+"/asap", rpc("r1", envelope("01JTASKCTRL000000000000001", "echo", `{}`))); resp.StatusCode != 200 {
		t.Fatalf("status %d: %s", resp.StatusCode, b)
	}
	ev, ok := usageEvents(t, runningDB(t))["01JTASKCTRL000000000000001"]
	if !ok || ev.TaskID != "01JTASKCTRL000000000000001" || ev.Status != "failed" {
		t.Fatalf("event %+v (found %v), want it under the envelope id, failed", ev, ok)
	}
}

// A different call under a stored envelope id holds its in-flight claim
// for a moment while it is checked (and then refused). A retry of the
// stored call arriving in that moment is still a retry: it must run, not
// be refused as a reuse. Seen under load in the invariant test; here the
// refused call's claim is taken by hand so the interleaving is certain.
func TestRetryIsNotRefusedWhileAReuseIsBeingChecked(t *testing.T) {
	up := &countingUpstream{answer: fixedAnswer(200, "application/json", agentAnswer)}
	srv := httptest.NewServer(up)
	defer srv.Close()
	s := startSidecar(t, upstreamAddr(srv), "agent urn:asap:agent:demo")
	const id = "01JRETRYWHILEREUSE00000001"
	orig := envelope(id, "echo", `{"text":"a"}`)
	if _, b := post(t, s.url+"/asap", rpc("r1", orig)); decodeAnswer(t, b).Error != nil {
		t.Fatalf("first call: %s", b)
	}

	key := string(storage.SpaceUsageSeen.SizedString("urn:asap:agent:demo", "urn:asap:agent:client", id))
	other := sha256.Sum256([]byte("a different call under the same id"))
	if !runningDatabase(t).calls.claim(key, other) {
		t.Fatal("claim refused: nothing else is in flight")
	}
	_, b := post(t, s.url+"/asap", rpc("r2", orig))
	if a := decodeAnswer(t, b); a.Error != nil {
		t.Fatalf("a retry of a stored call was refused while another call under its id was being checked: %s", b)
	}
	if up.count() != 2 {
		t.Fatalf("agent hits %d, want 2", up.count())
	}
	// The retry took no claim of its own: releasing the other call's
	// claim empties the table, so a later different call is judged on
	// the stored digest alone, and refused.
	runningDatabase(t).calls.release(key)
	if n := len(runningDatabase(t).calls.m); n != 0 {
		t.Fatalf("%d in-flight claims left after every call ended", n)
	}
	_, b = post(t, s.url+"/asap", rpc("r3", envelope(id, "echo", `{"text":"b"}`)))
	if a := decodeAnswer(t, b); a.Error == nil || a.Error.Data["reason"] != "envelope_id_reused" {
		t.Fatalf("a different call under a stored id: %s", b)
	}
	if got := usageByConsumer(t)[[2]string{"urn:asap:agent:client", id}]; got != 1 {
		t.Fatalf("%d usage events for the id, want 1", got)
	}
}
