package caddymodule

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/asap-sidecar/asap-sidecar/caddymodule/protocol"
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
