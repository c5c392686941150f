package caddymodule

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/asap-sidecar/asap-sidecar/caddymodule/audit"
	"github.com/asap-sidecar/asap-sidecar/caddymodule/delegation"
	"github.com/asap-sidecar/asap-sidecar/caddymodule/protocol"
)

// Tests of delegation on WebSocket handshakes, killing mutants that
// survived the suite (found by gremlins).

// Under delegation optional, a WebSocket opens without a token, and a
// token that is present is checked.
func TestWebSocketUnderOptionalPolicy(t *testing.T) {
	s := startSidecar(t, "", "agent urn:asap:agent:demo\ndelegation optional")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	wsURL := strings.Replace(s.url, "http", "ws", 1) + "/asap/ws"
	conn, resp, err := websocket.Dial(ctx, wsURL, nil)
	if err != nil {
		t.Fatalf("WebSocket without a token under optional: %v %v", resp, err)
	}
	defer conn.CloseNow()
	if msg := roundTripFrame(t, conn, rpc("w", envelope("01JWSOPTIONAL0000000000001", "echo", `{}`))); decodeAnswer(t, msg).Result == nil {
		t.Fatalf("echo over an undelegated WebSocket under optional: %s", msg)
	}
	conn.Close(websocket.StatusNormalClosure, "")
	_, resp, err = websocket.Dial(ctx, wsURL, &websocket.DialOptions{HTTPHeader: http.Header{delegation.Header: {"a.b.c"}}})
	if err == nil || resp == nil || resp.StatusCode != http.StatusForbidden {
		t.Fatalf("WebSocket with a malformed token under optional: %v %v, want 403", resp, err)
	}
}

// A refused WebSocket handshake leaves a delegation.rejected entry that
// names the offending token id when there is one, and no empty one when
// there is none.
func TestWebSocketRejectionAuditNamesJTI(t *testing.T) {
	s := startSidecar(t, "", requireOpts)
	token := mintViaAdmin(t, s, `{"delegate":"urn:asap:agent:client","scopes":["task.execute"]}`)
	leaf, _ := delegation.ParseLink(token)
	req, _ := http.NewRequest(http.MethodDelete, "http://"+s.adminAddr+"/asap/delegations/"+leaf.Claims.ID, nil)
	r2, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	r2.Body.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	wsURL := strings.Replace(s.url, "http", "ws", 1) + "/asap/ws"
	for _, tok := range []string{token, "a.b.c"} {
		_, resp, err := websocket.Dial(ctx, wsURL, &websocket.DialOptions{HTTPHeader: http.Header{delegation.Header: {tok}}})
		if err == nil || resp == nil || resp.StatusCode != http.StatusForbidden {
			t.Fatalf("WebSocket with token %.20s…: %v %v, want 403", tok, resp, err)
		}
	}
	// Rejections are appended without making the client wait.
	byReason := map[string]map[string]any{}
	waitFor(t, func() bool {
		for _, e := range auditEntries(t, s.adminAddr, "?operation="+audit.OpDelegationRejected) {
			if d := detail(t, e); d["path"] == "/asap/ws" {
				byReason[fmt.Sprint(d["reason"])] = d
			}
		}
		return len(byReason) == 2
	})
	if d := byReason["revoked"]; d == nil || d["jti"] != leaf.Claims.ID || d["code"] != float64(protocol.CodeTokenRevoked) {
		t.Errorf("revoked token's rejection: %v, want jti %s", d, leaf.Claims.ID)
	}
	if d := byReason["bad_base64"]; d == nil {
		t.Errorf("no rejection entry for the malformed token: %v", byReason)
	} else if jti, ok := d["jti"]; ok {
		t.Errorf("malformed token's rejection names jti %q; it has none", jti)
	}
}
