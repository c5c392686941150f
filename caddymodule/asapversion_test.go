package caddymodule

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/coder/websocket"

	"github.com/asap-sidecar/asap-sidecar/caddymodule/delegation"
	"github.com/asap-sidecar/asap-sidecar/caddymodule/protocol"
	"github.com/asap-sidecar/asap-sidecar/internal/freeport"
)

// versionRecorder is an agent stand-in that records the ASAP-Version
// header of each request reaching it (health and manifest probes aside)
// and answers agentAnswer labelled with a version of its own, so a test
// sees whether the sidecar replaces it.
type versionRecorder struct {
	mu   sync.Mutex
	seen [][]string
}

func (u *versionRecorder) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	_, _ = io.Copy(io.Discard, r.Body)
	if !strings.HasPrefix(r.URL.Path, "/.well-known/") {
		u.mu.Lock()
		u.seen = append(u.seen, r.Header.Values(protocol.VersionHeader))
		u.mu.Unlock()
	}
	w.Header().Set(protocol.VersionHeader, "9.9")
	w.Header().Set("Content-Type", "application/json")
	_, _ = io.WriteString(w, agentAnswer)
}

func (u *versionRecorder) requests() [][]string {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([][]string(nil), u.seen...)
}

// postVersion POSTs body to url with the ASAP-Version header lines given
// (none: no header) and more headers as name, value pairs.
func postVersion(t *testing.T, url, body string, versions []string, more ...string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	for _, v := range versions {
		req.Header.Add(protocol.VersionHeader, v)
	}
	for i := 0; i+1 < len(more); i += 2 {
		req.Header.Set(more[i], more[i+1])
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, b
}

// wantVersion checks that the answer carries exactly one ASAP-Version, v.
func wantVersion(t *testing.T, resp *http.Response, v string) {
	t.Helper()
	if got := resp.Header.Values(protocol.VersionHeader); len(got) != 1 || got[0] != v {
		t.Errorf("answer (HTTP %d) has ASAP-Version %q, want exactly %q", resp.StatusCode, got, v)
	}
}

func TestVersionNegotiationPicksFirstSupported(t *testing.T) {
	up := &versionRecorder{}
	srv := httptest.NewServer(up)
	defer srv.Close()
	s := startSidecar(t, upstreamAddr(srv), "agent urn:asap:agent:demo\nasap_versions 2.1 2.2 3.0-beta\ndefault_asap_version 2.1")
	body := rpc("r1", envelope("01JVERS0000000000000000001", "echo", `{}`))

	for i, tc := range []struct {
		name     string
		versions []string // request header lines
		want     string
	}{
		{"absent header: the configured default", nil, "2.1"},
		{"blank header: the default", []string{"  "}, "2.1"},
		{"the client's order wins", []string{"2.2, 2.1"}, "2.2"},
		{"unknown tokens skipped", []string{"9.0, 3.0-beta, 2.1"}, "3.0-beta"},
		{"whitespace and empty tokens", []string{" , \t2.2 ,"}, "2.2"},
		{"several header lines are one list", []string{"7.7", "2.2"}, "2.2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, b := postVersion(t, s.url+"/asap", body, tc.versions)
			if resp.StatusCode != 200 || string(b) != agentAnswer {
				t.Fatalf("HTTP %d: %s", resp.StatusCode, b)
			}
			// The agent's own 9.9 is replaced, not added to.
			wantVersion(t, resp, tc.want)
			// The agent is asked in the negotiated version alone.
			seen := up.requests()
			if len(seen) != i+1 || !reflect.DeepEqual(seen[i], []string{tc.want}) {
				t.Fatalf("the agent saw ASAP-Version %q, want [%s]", seen[len(seen)-1], tc.want)
			}
		})
	}
}

// A list naming no supported version is answered -32000 by the sidecar
// first of all: before max_body, before the body is read, before a token
// is checked; nothing reaches the agent and nothing is recorded.
func TestUnsupportedVersionIsRefusedFirst(t *testing.T) {
	up := &versionRecorder{}
	srv := httptest.NewServer(up)
	defer srv.Close()
	s := startSidecar(t, upstreamAddr(srv), requireOpts+"\nmax_body 1KiB\nasap_versions 2.2")
	good := rpc("r1", envelope("01JVERS0000000000000000002", "echo", `{}`))

	check := func(t *testing.T, resp *http.Response, b []byte, requested string) {
		t.Helper()
		if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") {
			t.Fatalf("HTTP %d %q: %s", resp.StatusCode, resp.Header.Get("Content-Type"), b)
		}
		var a struct {
			JSONRPC string `json:"jsonrpc"`
			Error   struct {
				Code    int            `json:"code"`
				Message string         `json:"message"`
				Data    map[string]any `json:"data"`
			} `json:"error"`
			ID json.RawMessage `json:"id"`
		}
		if err := json.Unmarshal(b, &a); err != nil {
			t.Fatalf("%v: %s", err, b)
		}
		if a.JSONRPC != "2.0" || a.Error.Code != -32000 || a.Error.Message != "ASAP protocol version incompatible" || string(a.ID) != "null" {
			t.Fatalf("answer: %s", b)
		}
		if a.Error.Data["requested"] != requested || !reflect.DeepEqual(a.Error.Data["supported"], []any{"2.2"}) {
			t.Fatalf("data: %v", a.Error.Data)
		}
		wantVersion(t, resp, "2.2")
	}

	t.Run("a version the agent would take, but the sidecar does not", func(t *testing.T) {
		token := mintViaAdmin(t, s, `{"delegate":"urn:asap:agent:client","scopes":["task.execute"]}`)
		resp, b := postVersion(t, s.url+"/asap", good, []string{"2.1"}, delegation.Header, token)
		check(t, resp, b, "2.1")
	})
	t.Run("stream path", func(t *testing.T) {
		resp, b := postVersion(t, s.url+"/asap/stream", good, []string{"99.0, 3.0"})
		check(t, resp, b, "99.0, 3.0")
	})
	t.Run("before the token is checked", func(t *testing.T) {
		// No token with delegation require would be -32053 and an audit
		// entry.
		resp, b := postVersion(t, s.url+"/asap", good, []string{"99.0"})
		check(t, resp, b, "99.0")
	})
	t.Run("before the body is parsed", func(t *testing.T) {
		resp, b := postVersion(t, s.url+"/asap", "not json", []string{"99.0"})
		check(t, resp, b, "99.0")
	})
	t.Run("before max_body", func(t *testing.T) {
		resp, b := postVersion(t, s.url+"/asap", strings.Repeat(" ", 4096)+good, []string{"99.0"})
		check(t, resp, b, "99.0")
	})
	t.Run("before the body is read", func(t *testing.T) {
		// Content-Length promises more than is sent: an answer that waited
		// for the body would never come (rawExchange has a deadline).
		addr := strings.TrimPrefix(s.url, "http://")
		resp, b := rawExchange(t, addr, "POST /asap HTTP/1.1\r\nHost: sidecar\r\nContent-Type: application/json\r\nASAP-Version: 99.0\r\nContent-Length: 500\r\n\r\n{\"jsonrpc\"")
		check(t, resp, b, "99.0")
	})

	if got := up.requests(); len(got) != 0 {
		t.Fatalf("refused requests reached the agent: %q", got)
	}
	if es := auditEntries(t, s.adminAddr, ""); len(es) != 1 || es[0].Operation != "delegation.created" {
		t.Fatalf("audit log holds %v, want only the token's creation", operations(es))
	}
	if n := runningAgent(t).rejected.Load(); n != 6 {
		t.Fatalf("requests_rejected = %d, want 6", n)
	}
}

// The sidecar's own answers on the negotiated paths carry the version too.
func TestVersionHeaderOnSidecarAnswers(t *testing.T) {
	t.Run("refusals", func(t *testing.T) {
		up := &versionRecorder{}
		srv := httptest.NewServer(up)
		defer srv.Close()
		s := startSidecar(t, upstreamAddr(srv), requireOpts+"\nmax_body 1KiB")
		good := rpc("r1", envelope("01JVERS0000000000000000003", "echo", `{}`))

		// Parse error.
		resp, b := postVersion(t, s.url+"/asap", "not json", []string{"2.1"})
		if a := decodeAnswer(t, b); a.Error == nil || a.Error.Code != protocol.CodeParseError {
			t.Fatalf("parse error: %s", b)
		}
		wantVersion(t, resp, "2.1")
		// Delegation rejection.
		resp, b = postVersion(t, s.url+"/asap", good, []string{"2.1"})
		wantRejected(t, decodeAnswer(t, b), protocol.CodeTokenMalformed, "missing_token")
		wantVersion(t, resp, "2.1")
		// 413.
		resp, b = postVersion(t, s.url+"/asap", strings.Repeat(" ", 2048)+good, []string{"2.1"})
		if resp.StatusCode != http.StatusRequestEntityTooLarge {
			t.Fatalf("oversized body: %d %s", resp.StatusCode, b)
		}
		wantVersion(t, resp, "2.1")
		// 405: not negotiated, labelled with the default as the reference
		// labels every answer.
		req, _ := http.NewRequest(http.MethodGet, s.url+"/asap", nil)
		req.Header.Set(protocol.VersionHeader, "2.1")
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusMethodNotAllowed {
			t.Fatalf("GET /asap: %d", resp.StatusCode)
		}
		wantVersion(t, resp, "2.2")
		if got := up.requests(); len(got) != 0 {
			t.Fatalf("refused requests reached the agent: %q", got)
		}
	})
	t.Run("agent unreachable", func(t *testing.T) {
		s := startSidecar(t, fmt.Sprintf("127.0.0.1:%d", freeport.Port(t)), "agent urn:asap:agent:demo")
		resp, b := postVersion(t, s.url+"/asap", rpc("r1", envelope("01JVERS0000000000000000004", "echo", `{}`)), []string{"2.1"})
		if resp.StatusCode != http.StatusBadGateway {
			t.Fatalf("unreachable agent: %d %s", resp.StatusCode, b)
		}
		wantVersion(t, resp, "2.1")
	})
}

// Batch and SSE answers from the demo agent come back labelled once, with
// the negotiated version.
func TestVersionHeaderOnBatchAndStream(t *testing.T) {
	s := startSidecar(t, "", "agent urn:asap:agent:demo")
	batch := "[" + rpc("b1", envelope("01JVERS0000000000000000005", "echo", `{}`)) + "," +
		rpc("b2", envelope("01JVERS0000000000000000006", "echo", `{}`)) + "]"
	resp, b := postVersion(t, s.url+"/asap", batch, []string{"2.1"})
	var answers []rpcAnswer
	if err := json.Unmarshal(b, &answers); err != nil || len(answers) != 2 || answers[0].Result == nil || answers[1].Result == nil {
		t.Fatalf("batch: %d %s", resp.StatusCode, b)
	}
	wantVersion(t, resp, "2.1")

	// A batch with a refused call: the sidecar merges its answer in.
	mixed := "[" + rpc("m1", envelope("01JVERS0000000000000000007", "echo", `{}`)) + `,{"jsonrpc":"2.0","method":"nope","id":"m2"}]`
	resp, b = postVersion(t, s.url+"/asap", mixed, []string{"2.2, 2.1"})
	if err := json.Unmarshal(b, &answers); err != nil || len(answers) != 2 {
		t.Fatalf("mixed batch: %d %s", resp.StatusCode, b)
	}
	wantVersion(t, resp, "2.2")

	resp, b = postVersion(t, s.url+"/asap/stream", rpc("s1", envelope("01JVERS0000000000000000008", "echo", `{"chunks":2,"interval_ms":0}`)), []string{"2.1"})
	if !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") || strings.Count(string(b), "data: ") != 2 {
		t.Fatalf("stream: %q %s", resp.Header.Get("Content-Type"), b)
	}
	wantVersion(t, resp, "2.1")
}

// The WebSocket handshake is not negotiated (the reference's version
// middleware serves plain HTTP requests only): it opens whatever
// ASAP-Version it names, and frames are checked as always.
func TestWebSocketHandshakeIsNotVersionNegotiated(t *testing.T) {
	s := startSidecar(t, "", "agent urn:asap:agent:demo")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, resp, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(s.url, "http")+"/asap/ws", &websocket.DialOptions{
		HTTPHeader: http.Header{protocol.VersionHeader: {"99.0"}},
	})
	if err != nil {
		t.Fatalf("handshake with ASAP-Version 99.0: %v", err)
	}
	defer conn.CloseNow()
	if resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("handshake: %d", resp.StatusCode)
	}
	if err := conn.Write(ctx, websocket.MessageText, []byte(rpc("w1", envelope("01JVERS0000000000000000009", "echo", `{}`)))); err != nil {
		t.Fatal(err)
	}
	_, msg, err := conn.Read(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if a := decodeAnswer(t, msg); a.Result == nil {
		t.Fatalf("frame answer: %s", msg)
	}
}

// Bad version options fail `caddy validate`, naming the option, in the
// Caddyfile and in JSON.
func TestVersionOptionsFailValidation(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct{ block, want string }{
		{"asap_versions 2.1", "option default_asap_version: \"2.2\" is not one of asap_versions (2.1)"},
		{"default_asap_version 3.0", "option default_asap_version: \"3.0\" is not one of asap_versions (2.1 2.2)"},
		{"asap_versions 2.1 2.1\n\t\tdefault_asap_version 2.1", "option asap_versions: \"2.1\" is listed twice"},
	} {
		adapted, _, err := caddyconfigAdapt(fmt.Sprintf(":8080 {\n\tasap {\n\t\tstorage %s\n\t\tdelegation off\n\t\t%s\n\t}\n\treverse_proxy 127.0.0.1:9000\n}\n", dir, tc.block))
		if err != nil {
			// A written option is refused by the adapter, at its line.
			if !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), ", at Caddyfile:5") {
				t.Errorf("%q: adapt gave %v, want %q at Caddyfile:5", tc.block, err, tc.want)
			}
			continue
		}
		err = caddy.Validate(mustUnmarshalConfig(t, adapted))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: validate gave %v, want %q", tc.block, err, tc.want)
		}
	}

	cfg := fmt.Sprintf(`{"apps":{"http":{"servers":{"s":{"listen":[":8080"],"routes":[{"handle":[
		{"handler":"asap","storage":%q,"delegation":"off","asap_versions":[]},
		{"handler":"reverse_proxy","upstreams":[{"dial":"127.0.0.1:9000"}]}]}]}}}}}`, dir)
	err := caddy.Validate(mustUnmarshalConfig(t, []byte(cfg)))
	if err == nil || !strings.Contains(err.Error(), "option asap_versions: the list is empty") {
		t.Fatalf("JSON asap_versions []: validate gave %v", err)
	}
}
