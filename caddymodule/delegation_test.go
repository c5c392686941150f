package caddymodule

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
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

const requireOpts = "agent urn:asap:agent:demo\ndelegation require"

// mintViaAdmin asks the running sidecar for a token.
func mintViaAdmin(t testing.TB, s *sidecar, body string) string {
	t.Helper()
	resp, b := post(t, "http://"+s.adminAddr+"/asap/delegations", body)
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("mint: %d %s", resp.StatusCode, b)
	}
	var out struct{ Token string }
	if err := json.Unmarshal(b, &out); err != nil || out.Token == "" {
		t.Fatalf("mint answer: %s", b)
	}
	return out.Token
}

// callWith sends one task with a delegation header and returns the answer.
func callWith(t testing.TB, url, token, env string) rpcAnswer {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, url+"/asap", strings.NewReader(rpc("r", env)))
	req.Header.Set("Content-Type", "application/json")
	if token != "" {
		req.Header.Set(delegation.Header, token)
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	return readAnswer(t, resp)
}

func wantRejected(t testing.TB, a rpcAnswer, code int, reason string) {
	t.Helper()
	if a.Error == nil || a.Error.Code != code || a.Error.Data["reason"] != reason {
		t.Fatalf("want %d %s, got %+v", code, reason, a.Error)
	}
}

func TestDelegationRequiredEndToEnd(t *testing.T) {
	up := &countingUpstream{answer: fixedAnswer(200, "application/json", agentAnswer)}
	srv := httptest.NewServer(up)
	defer srv.Close()
	s := startSidecar(t, upstreamAddr(srv), requireOpts)
	env := envelope("01JDELEG000000000000000001", "echo", `{}`)

	wantRejected(t, callWith(t, s.url, "", env), protocol.CodeTokenMalformed, "missing_token")
	wantRejected(t, callWith(t, s.url, "not.a.token", env), protocol.CodeTokenMalformed, "bad_base64")

	token := mintViaAdmin(t, s, `{"delegate":"urn:asap:agent:client","scopes":["task.execute"],"max_tasks":3}`)
	if a := callWith(t, s.url, token, env); a.Result == nil {
		t.Fatalf("valid token refused: %+v", a.Error)
	}
	if up.count() != 1 {
		t.Fatalf("agent saw %d calls, want 1", up.count())
	}
	leaf, rej := delegation.ParseLink(token)
	if rej != nil {
		t.Fatal(rej)
	}
	ev := usageEvents(t, runningDB(t))["01JDELEG000000000000000001"]
	if ev.DelegationID != leaf.Claims.ID || ev.RootIssuer != "urn:asap:agent:demo" {
		t.Fatalf("usage event lacks the delegation: %+v", ev)
	}

	// Wrong sender, wrong recipient, ungranted action: refused, not forwarded.
	wantRejected(t, callWith(t, s.url, token, strings.Replace(env, "urn:asap:agent:client", "urn:asap:agent:mallory", 1)), protocol.CodeTokenAudience, "sender_not_audience")
	wantRejected(t, callWith(t, s.url, token, strings.Replace(env, `"recipient":"urn:asap:agent:demo"`, `"recipient":"urn:asap:agent:other"`, 1)), protocol.CodeTokenAudience, "recipient_mismatch")
	wantRejected(t, callWith(t, s.url, token, strings.Replace(env, `"task.request"`, `"task.cancel"`, 1)), protocol.CodeTokenScope, "action_not_granted")
	if up.count() != 1 {
		t.Fatalf("rejected calls reached the agent: %d", up.count())
	}

	// The Delegation API shows it, with its usage.
	var list []map[string]any
	if code := getJSON(t, "http://"+s.adminAddr+"/asap/delegations", &list); code != 200 || len(list) != 1 || list[0]["id"] != leaf.Claims.ID || list[0]["active"] != true {
		t.Fatalf("list: %d %v", code, list)
	}
	var one map[string]any
	if code := getJSON(t, "http://"+s.adminAddr+"/asap/delegations/"+leaf.Claims.ID, &one); code != 200 || one["usage_count"] != 1.0 || one["delegate"] != "urn:asap:agent:client" {
		t.Fatalf("get: %d %v", code, one)
	}

	// Revocation takes effect on the very next request, and survives a
	// restart.
	req, _ := http.NewRequest(http.MethodDelete, "http://"+s.adminAddr+"/asap/delegations/"+leaf.Claims.ID, nil)
	resp, err := client.Do(req)
	if err != nil || resp.StatusCode != http.StatusNoContent {
		t.Fatalf("revoke: %v %v", resp, err)
	}
	resp.Body.Close()
	wantRejected(t, callWith(t, s.url, token, env), protocol.CodeTokenRevoked, "revoked")
	if err := caddy.Stop(); err != nil {
		t.Fatal(err)
	}
	s.load(s.options)
	wantRejected(t, callWith(t, s.url, token, env), protocol.CodeTokenRevoked, "revoked")
	if code := getJSON(t, "http://"+s.adminAddr+"/asap/delegations/"+leaf.Claims.ID, &one); code != 200 || one["active"] != false || one["revoked_at"] == nil {
		t.Fatalf("after revoke: %v", one)
	}
	if up.count() != 1 {
		t.Fatalf("revoked token reached the agent: %d", up.count())
	}
}

// 50 parallel calls with max_tasks 5: exactly 5 reach the agent, 20 times.
func TestMaxTasksExactUnderConcurrency(t *testing.T) {
	up := &countingUpstream{answer: fixedAnswer(200, "application/json", agentAnswer)}
	srv := httptest.NewServer(up)
	defer srv.Close()
	s := startSidecar(t, upstreamAddr(srv), requireOpts)
	for round := 0; round < 20; round++ {
		token := mintViaAdmin(t, s, `{"delegate":"urn:asap:agent:client","scopes":["task.execute"],"max_tasks":5}`)
		before := up.count()
		var wg sync.WaitGroup
		var mu sync.Mutex
		ok, limited := 0, 0
		for i := 0; i < 50; i++ {
			wg.Add(1)
			go func(i int) {
				defer wg.Done()
				a := callWith(t, s.url, token, envelope(fmt.Sprintf("01JMAX%02d%018d", round, i), "echo", `{}`))
				mu.Lock()
				defer mu.Unlock()
				switch {
				case a.Result != nil:
					ok++
				case a.Error != nil && a.Error.Code == protocol.CodeTokenLimitSpent && a.Error.Data["reason"] == "max_tasks_reached":
					limited++
				default:
					t.Errorf("unexpected answer: %+v", a.Error)
				}
			}(i)
		}
		wg.Wait()
		if ok != 5 || limited != 45 || up.count()-before != 5 {
			t.Fatalf("round %d: %d passed, %d limited, %d reached the agent; want 5/45/5", round, ok, limited, up.count()-before)
		}
	}
}

// A call the agent never answered does not use up a slot.
func TestUnansweredCallGivesItsSlotBack(t *testing.T) {
	dead := fmt.Sprintf("127.0.0.1:%d", freeport.Port(t))
	s := startSidecar(t, dead, requireOpts)
	token := mintViaAdmin(t, s, `{"delegate":"urn:asap:agent:client","scopes":["task.execute"],"max_tasks":1}`)
	for i := 0; i < 3; i++ {
		a := callWith(t, s.url, token, envelope(fmt.Sprintf("01JDEAD%019d", i), "echo", `{}`))
		if a.Error == nil || a.Error.Code != protocol.CodeConnectionError {
			t.Fatalf("call %d: %+v (a slot was kept for an unanswered call)", i, a.Error)
		}
	}
}

// Task counts survive a restart: a spent token stays spent.
func TestMaxTasksSurviveRestart(t *testing.T) {
	s := startSidecar(t, externalDemoAgent(t), requireOpts)
	token := mintViaAdmin(t, s, `{"delegate":"urn:asap:agent:client","scopes":["task.execute"],"max_tasks":2}`)
	for i := 0; i < 2; i++ {
		if a := callWith(t, s.url, token, envelope(fmt.Sprintf("01JSPENT%018d", i), "echo", `{}`)); a.Result == nil {
			t.Fatalf("call %d: %+v", i, a.Error)
		}
	}
	if err := caddy.Stop(); err != nil {
		t.Fatal(err)
	}
	s.load(s.options)
	wantRejected(t, callWith(t, s.url, token, envelope("01JSPENT000000000000000009", "echo", `{}`)), protocol.CodeTokenLimitSpent, "max_tasks_reached")
}

// A delegate bound by cnf re-delegates to a third agent with no
// configuration on the sidecar; revoking the root cuts the whole chain.
func TestChainThroughSidecar(t *testing.T) {
	s := startSidecar(t, externalDemoAgent(t), requireOpts)
	orchKey, _ := delegation.GenerateKey()
	orchPub := orchKey.Public().(ed25519.PublicKey)
	root := mintViaAdmin(t, s, fmt.Sprintf(`{"delegate":"urn:asap:agent:orchestrator","scopes":["task.execute","data.read"],"max_tasks":10,"cnf_jwk":%s}`, delegation.PublicJWK(orchPub)))

	// The orchestrator attenuates it for a worker, offline.
	v := &delegation.Verifier{Trusted: map[string]ed25519.PublicKey{"urn:asap:agent:demo": runningDatabase(t).agentKey.Public().(ed25519.PublicKey)}}
	parent, rej := v.Verify(root)
	if rej != nil {
		t.Fatal(rej)
	}
	child, err := delegation.Mint(delegation.Grant{Issuer: "urn:asap:agent:orchestrator", Delegate: "urn:asap:agent:client",
		Scopes: []string{"task.execute"}, MaxTasks: ptr(int64(3)), Parent: parent}, orchKey)
	if err != nil {
		t.Fatal(err)
	}
	env := envelope("01JCHAIN000000000000000001", "echo", `{}`)
	if a := callWith(t, s.url, child.Chain, env); a.Result == nil {
		t.Fatalf("2-link chain refused: %+v", a.Error)
	}
	ev := usageEvents(t, runningDB(t))["01JCHAIN000000000000000001"]
	if ev.DelegationID != child.Claims.ID || ev.RootIssuer != "urn:asap:agent:demo" {
		t.Fatalf("event = %+v", ev)
	}
	// Only the leaf is not enough: the root is missing.
	wantRejected(t, callWith(t, s.url, child.Token, env), protocol.CodeTokenMalformed, "chain_incomplete")

	rootLink, _ := delegation.ParseLink(root)
	req, _ := http.NewRequest(http.MethodDelete, "http://"+s.adminAddr+"/asap/delegations/"+rootLink.Claims.ID, nil)
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	a := callWith(t, s.url, child.Chain, envelope("01JCHAIN000000000000000002", "echo", `{}`))
	wantRejected(t, a, protocol.CodeTokenRevoked, "revoked")
	if a.Error.Data["jti"] != rootLink.Claims.ID {
		t.Fatalf("rejection should name the revoked ancestor: %+v", a.Error.Data)
	}
}

func TestOptionalPolicy(t *testing.T) {
	s := startSidecar(t, externalDemoAgent(t), "agent urn:asap:agent:demo\ndelegation optional")
	env := envelope("01JOPTION000000000000000001", "echo", `{}`)
	if a := callWith(t, s.url, "", env); a.Result == nil {
		t.Fatalf("no token under optional: %+v", a.Error)
	}
	// A token that is present is always checked.
	wantRejected(t, callWith(t, s.url, "a.b.c", env), protocol.CodeTokenMalformed, "bad_base64")
}

func TestDelegationAPIErrors(t *testing.T) {
	s := startSidecar(t, externalDemoAgent(t), requireOpts)
	admin := "http://" + s.adminAddr + "/asap/delegations"
	for _, tc := range []struct {
		body string
		code int
		want string
	}{
		{`{"delegate":"urn:asap:agent:c","scopes":[]}`, 400, "at least one scope"},
		{`{"delegate":"","scopes":["task.execute"]}`, 400, "delegate is required"},
		{`{"delegate":"urn:asap:agent:c","scopes":["task.execute"],"expires_in_seconds":31536001}`, 400, "expires_in_seconds"},
		{`{"delegate":"urn:asap:agent:c","scopes":["task.execute"],"max_tasks":-1}`, 400, "max_tasks"},
		{`{"delegate":"urn:asap:agent:c","scopes":["task.execute"],"surprise":1}`, 400, "unknown field"},
		{`{"delegate":"urn:asap:agent:c","scopes":["task.execute"],"parent":"x.y.z"}`, 400, "parent"},
		{`{"delegate":"urn:asap:agent:c","scopes":["task.execute"],"cnf_jwk":{"kty":"RSA"}}`, 400, "cnf_jwk"},
	} {
		resp, b := post(t, admin, tc.body)
		if resp.StatusCode != tc.code || !strings.Contains(string(b), tc.want) {
			t.Errorf("%s → %d %s", tc.body, resp.StatusCode, b)
		}
	}
	// Attenuation beyond the parent is refused.
	parent := mintViaAdmin(t, s, `{"delegate":"urn:asap:agent:demo","scopes":["data.read"],"max_tasks":2}`)
	resp, b := post(t, admin, fmt.Sprintf(`{"delegate":"urn:asap:agent:c","scopes":["task.execute"],"parent":%q}`, parent))
	if resp.StatusCode != 400 || !strings.Contains(string(b), "not granted by the parent") {
		t.Fatalf("scope escalation: %d %s", resp.StatusCode, b)
	}
	resp, b = post(t, admin, fmt.Sprintf(`{"delegate":"urn:asap:agent:c","scopes":["data.read"],"max_tasks":3,"parent":%q}`, parent))
	if resp.StatusCode != 400 || !strings.Contains(string(b), "exceeds the parent") {
		t.Fatalf("max_tasks escalation: %d %s", resp.StatusCode, b)
	}
	attenuated := mintViaAdmin(t, s, fmt.Sprintf(`{"delegate":"urn:asap:agent:c","scopes":["data.read"],"parent":%q}`, parent))
	if n := strings.Count(attenuated, ","); n != 1 {
		t.Fatalf("attenuated token should come with its parent (2 links), has %d commas", n)
	}
	if code := getJSON(t, admin+"/del_unknown", nil); code != 404 {
		t.Fatalf("unknown id: %d", code)
	}
	req, _ := http.NewRequest(http.MethodPut, admin, nil)
	r2, _ := client.Do(req)
	io.Copy(io.Discard, r2.Body)
	r2.Body.Close()
	if r2.StatusCode != 405 {
		t.Fatalf("PUT: %d", r2.StatusCode)
	}
}

func ptr[T any](v T) *T { return &v }

func TestWebSocketNeedsADelegatedHandshake(t *testing.T) {
	s := startSidecar(t, "", requireOpts)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	wsURL := strings.Replace(s.url, "http", "ws", 1) + "/asap/ws"
	_, resp, err := websocket.Dial(ctx, wsURL, nil)
	if err == nil || resp == nil || resp.StatusCode != http.StatusForbidden {
		t.Fatalf("WebSocket without a token: %v %v", resp, err)
	}
	token := mintViaAdmin(t, s, `{"delegate":"urn:asap:agent:client","scopes":["task.execute"]}`)
	conn, _, err := websocket.Dial(ctx, wsURL, &websocket.DialOptions{HTTPHeader: http.Header{delegation.Header: {token}}})
	if err != nil {
		t.Fatalf("WebSocket with a token: %v", err)
	}
	defer conn.CloseNow()
	if err := conn.Write(ctx, websocket.MessageText, []byte(rpc("w", envelope("01JWSTOKEN00000000000000001", "echo", `{}`)))); err != nil {
		t.Fatal(err)
	}
	if _, msg, err := conn.Read(ctx); err != nil || decodeAnswer(t, msg).Result == nil {
		t.Fatalf("echo over a delegated WebSocket: %v %s", err, msg)
	}
	leaf, _ := delegation.ParseLink(token)
	req, _ := http.NewRequest(http.MethodDelete, "http://"+s.adminAddr+"/asap/delegations/"+leaf.Claims.ID, nil)
	r2, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	r2.Body.Close()
	if _, resp, err := websocket.Dial(ctx, wsURL, &websocket.DialOptions{HTTPHeader: http.Header{delegation.Header: {token}}}); err == nil || resp.StatusCode != http.StatusForbidden {
		t.Fatalf("WebSocket with a revoked token: %v %v", resp, err)
	}
}
