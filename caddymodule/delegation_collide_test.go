package caddymodule

import (
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/asap-sidecar/asap-sidecar/caddymodule/delegation"
	"github.com/asap-sidecar/asap-sidecar/caddymodule/protocol"
)

// signClaims signs claims as a compact JWS with the reference header.
func signClaims(t testing.TB, claims map[string]any, key ed25519.PrivateKey) string {
	t.Helper()
	b, err := json.Marshal(claims)
	if err != nil {
		t.Fatal(err)
	}
	enc := base64.RawURLEncoding
	in := enc.EncodeToString([]byte(`{"alg":"Ed25519","typ":"JWT"}`)) + "." + enc.EncodeToString(b)
	return in + "." + enc.EncodeToString(ed25519.Sign(key, []byte(in)))
}

// SPEC §2a over HTTP: a delegate bound by cnf mints a child reusing the
// victim's jti. It cannot spend the victim's max_tasks, revoking its
// (issuer, jti) leaves the victim working, and only a bare-jti revocation
// reaches both — and says so in the audit log.
func TestCollidingJTICannotTouchAnotherConsumer(t *testing.T) {
	up := &countingUpstream{answer: fixedAnswer(200, "application/json", agentAnswer)}
	srv := httptest.NewServer(up)
	defer srv.Close()
	s := startSidecar(t, upstreamAddr(srv), requireOpts)
	const mallory = "urn:asap:agent:mallory"

	victim := mintViaAdmin(t, s, `{"delegate":"urn:asap:agent:client","scopes":["task.execute"],"max_tasks":2}`)
	victimLink, _ := delegation.ParseLink(victim)
	jti := victimLink.Claims.ID

	malloryKey, _ := delegation.GenerateKey()
	parent := mintViaAdmin(t, s, fmt.Sprintf(`{"delegate":%q,"scopes":["task.execute"],"max_tasks":10,"cnf_jwk":%s}`,
		mallory, delegation.PublicJWK(malloryKey.Public().(ed25519.PublicKey))))
	parentLink, _ := delegation.ParseLink(parent)
	now := time.Now().Unix()
	child := signClaims(t, map[string]any{
		"iss": mallory, "aud": mallory, "jti": jti, "iat": now, "exp": int64(*parentLink.Claims.Expiry),
		"scp": []string{"task.execute"}, "x-asap-constraints": map[string]any{"max_tasks": 2},
		"prf": []string{parentLink.Hash},
	}, malloryKey)
	attack := child + "," + parent
	fromMallory := func(id string) string {
		return strings.Replace(envelope(id, "echo", `{}`), `"sender":"urn:asap:agent:client"`, `"sender":"`+mallory+`"`, 1)
	}

	// Mallory spends her colliding token's two tasks.
	for i := 0; i < 2; i++ {
		if a := callWith(t, s.url, attack, fromMallory(fmt.Sprintf("01JCOLLIDE0000000000000A%02d", i))); a.Result == nil {
			t.Fatalf("mallory's task %d: %+v", i, a.Error)
		}
	}
	wantRejected(t, callWith(t, s.url, attack, fromMallory("01JCOLLIDE0000000000000A09")), protocol.CodeTokenLimitSpent, "max_tasks_reached")

	// The victim's token still has both of its tasks.
	if a := callWith(t, s.url, victim, envelope("01JCOLLIDE0000000000000V01", "echo", `{}`)); a.Result == nil {
		t.Fatalf("the victim's first task was refused after mallory reused its jti: %+v", a.Error)
	}

	// The operator revokes mallory's token by (issuer, jti): the victim
	// keeps working.
	rev, err := runningDatabase(t).ledger.RevokeFrom(context.Background(), mallory, jti, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if len(rev.Tokens) != 1 || rev.Tokens[0] != (delegation.TokenRef{Issuer: mallory, JTI: jti, Hash: delegation.HashOf(child)}) {
		t.Fatalf("revocation of mallory's token affects %+v", rev.Tokens)
	}
	wantRejected(t, callWith(t, s.url, attack, fromMallory("01JCOLLIDE0000000000000A10")), protocol.CodeTokenRevoked, "revoked")
	if a := callWith(t, s.url, victim, envelope("01JCOLLIDE0000000000000V02", "echo", `{}`)); a.Result == nil {
		t.Fatalf("the victim's second task after mallory's revocation: %+v", a.Error)
	}
	wantRejected(t, callWith(t, s.url, victim, envelope("01JCOLLIDE0000000000000V03", "echo", `{}`)), protocol.CodeTokenLimitSpent, "max_tasks_reached")
	var one map[string]any
	if code := getJSON(t, "http://"+s.adminAddr+"/asap/delegations/"+jti, &one); code != 200 || one["usage_count"] != 2.0 || one["active"] != true {
		t.Fatalf("victim's record: %d %v", code, one)
	}
	// Count task bodies only: the upstream also sees health probes.
	up.mu.Lock()
	ran := 0
	for _, b := range up.bodies {
		if strings.Contains(string(b), "01JCOLLIDE") {
			ran++
		}
	}
	up.mu.Unlock()
	if ran != 4 {
		t.Fatalf("the agent ran %d tasks, want 4", ran)
	}

	// A bare-jti revocation hits every issuer, and the audit entry names
	// both tokens.
	req, _ := http.NewRequest(http.MethodDelete, "http://"+s.adminAddr+"/asap/delegations/"+jti, nil)
	resp, err := client.Do(req)
	if err != nil || resp.StatusCode != http.StatusNoContent {
		t.Fatalf("revoke: %v %v", resp, err)
	}
	resp.Body.Close()
	wantRejected(t, callWith(t, s.url, victim, envelope("01JCOLLIDE0000000000000V04", "echo", `{}`)), protocol.CodeTokenRevoked, "revoked")
	es := auditEntries(t, s.adminAddr, "?operation=delegation.revoked")
	if len(es) != 1 {
		t.Fatalf("%d delegation.revoked entries", len(es))
	}
	var d struct {
		JTI    string                `json:"jti"`
		Tokens []delegation.TokenRef `json:"tokens"`
	}
	if err := json.Unmarshal(es[0].Details, &d); err != nil || d.JTI != jti {
		t.Fatalf("details %s: %v", es[0].Details, err)
	}
	named := map[delegation.TokenRef]bool{}
	for _, r := range d.Tokens {
		named[r] = true
	}
	for _, r := range []delegation.TokenRef{{Issuer: "urn:asap:agent:demo", JTI: jti, Hash: victimLink.Hash}, {Issuer: mallory, JTI: jti, Hash: delegation.HashOf(child)}} {
		if !named[r] {
			t.Errorf("the audit entry does not name %+v: %s", r, es[0].Details)
		}
	}
}
