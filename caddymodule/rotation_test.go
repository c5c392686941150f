package caddymodule

import (
	"crypto/ed25519"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"golang.org/x/mod/sumdb/note"

	"github.com/asap-sidecar/asap-sidecar/caddymodule/audit"
	"github.com/asap-sidecar/asap-sidecar/caddymodule/delegation"
	"github.com/asap-sidecar/asap-sidecar/caddymodule/protocol"
)

// getBody GETs an admin path and returns its status and body.
func getBody(t testing.TB, url string) (int, []byte) {
	t.Helper()
	resp, err := client.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, b
}

// auditValid asks the running sidecar to verify its log.
func auditValid(t testing.TB, s *sidecar) audit.Verdict {
	t.Helper()
	var v audit.Verdict
	if code := getJSON(t, "http://"+s.adminAddr+"/asap/audit/verify", &v); code != http.StatusOK || !v.Valid {
		reason := ""
		if v.Reason != nil {
			reason = *v.Reason
		}
		t.Fatalf("audit verify: %d valid=%v %s", code, v.Valid, reason)
	}
	return v
}

// mintWith mints a client token offline with the key in file, as of now.
func mintWith(t testing.TB, file string, ttl time.Duration, now time.Time) string {
	t.Helper()
	key, err := delegation.LoadPrivateKey(file)
	if err != nil {
		t.Fatal(err)
	}
	m, err := delegation.Mint(delegation.Grant{Issuer: "urn:asap:agent:demo", Delegate: "urn:asap:agent:client",
		Scopes: []string{"task.execute"}, TTL: ttl, Now: now}, key)
	if err != nil {
		t.Fatal(err)
	}
	return m.Token
}

// signedWith reports whether token's signature verifies with the key in pub.
func signedWith(t testing.TB, token, pub string) bool {
	t.Helper()
	v := &delegation.Verifier{Trusted: map[string]ed25519.PublicKey{"urn:asap:agent:demo": loadPub(t, pub)}}
	_, rej := v.Verify(token)
	return rej == nil
}

// SPEC §7 key rotation, with tasks flowing all along: the config is
// reloaded with a new key and the old one in previous_keys, then again
// without previous_keys. Tokens of the old key keep working until they
// expire (and not after previous_keys is dropped), the new key signs new
// tokens and checkpoints, and the audit log verifies before, between and
// after, the checkpoint signed before the rotation included (through the
// admin API and with --db).
func TestKeyRotationUnderTraffic(t *testing.T) {
	keyDir := t.TempDir()
	oldKey, oldPub := keys(t, keyDir, "old")
	newKey, newPub := keys(t, keyDir, "new")
	base := "agent urn:asap:agent:demo\ndelegation require\n"
	s := startSidecar(t, externalDemoAgent(t), base+"key "+oldKey)
	admin := "http://" + s.adminAddr + "/asap"

	// Before: an old-key token for the traffic, one that expires, one
	// already expired.
	oldToken := mintViaAdmin(t, s, `{"delegate":"urn:asap:agent:client","scopes":["task.execute"],"expires_in_seconds":3600}`)
	if !signedWith(t, oldToken, oldPub) {
		t.Fatal("the sidecar did not sign with its key")
	}
	expired := mintWith(t, oldKey, time.Hour, time.Now().Add(-2*time.Hour))

	stop := make(chan struct{})
	var ok, retries atomic.Int64
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			id := fmt.Sprintf("01JROTATE%017d", i)
			req := func() (*http.Response, error) {
				r, _ := http.NewRequest(http.MethodPost, s.url+"/asap", strings.NewReader(rpc("r", envelope(id, "echo", `{}`))))
				r.Header.Set("Content-Type", "application/json")
				r.Header.Set(delegation.Header, oldToken)
				return client.Do(r)
			}
			resp, err := req()
			for attempt := 0; err != nil && attempt < 3; attempt++ { // reset by a reload: retry, as clients do
				retries.Add(1)
				resp, err = req()
			}
			if err != nil {
				t.Errorf("task %s: %v", id, err)
				return
			}
			if a := readAnswer(t, resp); a.Result == nil {
				t.Errorf("task %s with the old key's token refused: %+v", id, a.Error)
				return
			}
			ok.Add(1)
		}
	}()
	flowing := func() {
		before := ok.Load()
		waitFor(t, func() bool { return ok.Load() >= before+10 || t.Failed() })
	}
	flowing()

	_, oldCheckpoint := getBody(t, admin+"/audit/checkpoint")
	var status Status
	getJSON(t, admin+"/status", &status)
	oldVKey := status.Agents[0].AuditKey
	oldV, err := note.NewVerifier(oldVKey)
	if err != nil {
		t.Fatal(err)
	}
	oldCP, err := audit.ParseCheckpoint(oldCheckpoint, oldV)
	if err != nil {
		t.Fatalf("checkpoint before the rotation: %v\n%s", err, oldCheckpoint)
	}
	auditValid(t, s)

	// Rotate: new key, old one in previous_keys.
	s.load(base + "key " + newKey + "\nprevious_keys " + oldKey)
	flowing()
	newToken := mintViaAdmin(t, s, `{"delegate":"urn:asap:agent:client","scopes":["task.execute"],"expires_in_seconds":3600}`)
	if !signedWith(t, newToken, newPub) || signedWith(t, newToken, oldPub) {
		t.Fatal("after the rotation new tokens are not signed with the new key")
	}
	if a := callWith(t, s.url, newToken, envelope("01JROTATENEW0000000000001", "echo", `{}`)); a.Result == nil {
		t.Fatalf("new key's token refused: %+v", a.Error)
	}
	// An old-key token past its expiry is refused as expired: its
	// signature verified, its time did not.
	wantRejected(t, callWith(t, s.url, expired, envelope("01JROTATEEXP0000000000001", "echo", `{}`)), protocol.CodeTokenTime, "expired")
	_, stranger := keys(t, keyDir, "stranger")
	strangerToken := mintWith(t, strings.TrimSuffix(stranger, ".pub")+".key", time.Hour, time.Now())
	wantRejected(t, callWith(t, s.url, strangerToken, envelope("01JROTATEBAD0000000000001", "echo", `{}`)), protocol.CodeTokenSignature, "bad_signature")

	flowing()
	code, newCheckpoint := getBody(t, admin+"/audit/checkpoint")
	getJSON(t, admin+"/status", &status)
	newV, err := note.NewVerifier(status.Agents[0].AuditKey)
	if err != nil {
		t.Fatal(err)
	}
	if newCP, err := audit.ParseCheckpoint(newCheckpoint, newV); code != http.StatusOK || err != nil || newCP.Size <= oldCP.Size {
		t.Fatalf("checkpoint after the rotation: %d %v\n%s", code, err, newCheckpoint)
	}
	if v := auditValid(t, s); v.Checkpoints < 2 {
		t.Fatalf("verify checked %d checkpoints", v.Checkpoints)
	}

	// Drop previous_keys, once the old tokens have expired (here: at once,
	// so the old token is refused from now on).
	close(stop)
	wg.Wait()
	s.load(base + "key " + newKey)
	wantRejected(t, callWith(t, s.url, oldToken, envelope("01JROTATEOLD0000000000001", "echo", `{}`)), protocol.CodeTokenSignature, "bad_signature")
	if a := callWith(t, s.url, newToken, envelope("01JROTATENEW0000000000002", "echo", `{}`)); a.Result == nil {
		t.Fatalf("new key's token refused: %+v", a.Error)
	}
	// The old checkpoint still verifies, with the key of its time.
	v := auditValid(t, s)
	var keysAnswer struct {
		Keys  []audit.KeyUse `json:"keys"`
		Count int            `json:"count"`
	}
	getJSON(t, admin+"/audit/keys", &keysAnswer)
	if keysAnswer.Count != 2 || keysAnswer.Keys[0].VKey != oldVKey || keysAnswer.Keys[0].LastSize != oldCP.Size ||
		keysAnswer.Keys[1].VKey != status.Agents[0].AuditKey || keysAnswer.Keys[0].EndorsedBy != keysAnswer.Keys[1].VKey {
		t.Fatalf("key history %+v", keysAnswer)
	}
	code, stored := getBody(t, fmt.Sprintf("%s/audit/checkpoint?size=%d", admin, oldCP.Size))
	if code != http.StatusOK || string(stored) != string(oldCheckpoint) {
		t.Fatalf("stored checkpoint at %d: %d %s", oldCP.Size, code, stored)
	}
	if code, b := getBody(t, admin+"/audit/checkpoint?size=999999"); code != http.StatusNotFound {
		t.Fatalf("checkpoint at an unsigned size: %d %s", code, b)
	}
	if code, b := getBody(t, admin+"/audit/checkpoint?size=-1"); code != http.StatusBadRequest {
		t.Fatalf("checkpoint at size -1: %d %s", code, b)
	}
	t.Logf("%d tasks with the old token during the rotation (%d retried), %d checkpoints verified", ok.Load(), retries.Load(), v.Checkpoints)

	// Stopped: --db verify with the new key alone checks every checkpoint.
	if err := caddy.Stop(); err != nil {
		t.Fatal(err)
	}
	_, out, err := run(t, cmdAuditVerify, "audit verify", "--db", s.dir, "--vkey", status.Agents[0].AuditKey)
	if err != nil || out != fmt.Sprintf("valid: %d entries, %d checkpoints checked\n", v.Size, v.Checkpoints) {
		t.Fatalf("audit verify --db: %v %q", err, out)
	}
	// With the old key alone the new checkpoints do not verify: the
	// history is vouched for by newer keys, never older ones.
	if _, out, err := run(t, cmdAuditVerify, "audit verify", "--db", s.dir, "--vkey", oldVKey); err == nil || !strings.Contains(out, "BROKEN") {
		t.Fatalf("audit verify --db with the old key: %v %q", err, out)
	}
	s.load(s.options) // for the cleanup's Stop
}

// trust naming the agent's own URN adds a key beside the agent's own: the
// tokens the sidecar mints keep working, and so do the trusted key's.
func TestTrustOwnURNKeepsOwnTokens(t *testing.T) {
	keyDir := t.TempDir()
	ownKey, _ := keys(t, keyDir, "own")
	otherKey, otherPub := keys(t, keyDir, "other")
	s := startSidecar(t, externalDemoAgent(t), "agent urn:asap:agent:demo\ndelegation require\nkey "+ownKey+"\ntrust urn:asap:agent:demo "+otherPub)
	own := mintViaAdmin(t, s, `{"delegate":"urn:asap:agent:client","scopes":["task.execute"]}`)
	if a := callWith(t, s.url, own, envelope("01JTRUSTOWN00000000000001", "echo", `{}`)); a.Result == nil {
		t.Fatalf("own token refused: %+v", a.Error)
	}
	other := mintWith(t, otherKey, time.Hour, time.Now())
	if a := callWith(t, s.url, other, envelope("01JTRUSTOWN00000000000002", "echo", `{}`)); a.Result == nil {
		t.Fatalf("trusted key's token refused: %+v", a.Error)
	}

	// The same without a key option: the generated key stays trusted.
	s.load("agent urn:asap:agent:demo\ndelegation require\ntrust urn:asap:agent:demo " + otherPub)
	own = mintViaAdmin(t, s, `{"delegate":"urn:asap:agent:client","scopes":["task.execute"]}`)
	if !signedWith(t, own, filepath.Join(s.dir, agentKeyFile)) {
		t.Fatal("not signed with the generated key")
	}
	if a := callWith(t, s.url, own, envelope("01JTRUSTOWN00000000000003", "echo", `{}`)); a.Result == nil {
		t.Fatalf("own token (generated key) refused: %+v", a.Error)
	}
	if a := callWith(t, s.url, other, envelope("01JTRUSTOWN00000000000004", "echo", `{}`)); a.Result == nil {
		t.Fatalf("trusted key's token refused: %+v", a.Error)
	}
}

// previous_keys that cannot be read fail the config, naming the option.
func TestPreviousKeysUnreadable(t *testing.T) {
	s := newSidecar(t, "", "", "")
	cfg, _, err := caddyconfigAdapt(s.caddyfile("agent urn:asap:agent:demo\nprevious_keys " + filepath.Join(t.TempDir(), "missing.key")))
	if err != nil {
		t.Fatal(err)
	}
	err = caddy.Validate(mustUnmarshalConfig(t, cfg))
	if err == nil || !strings.Contains(err.Error(), "option previous_keys") {
		t.Fatalf("validate: %v", err)
	}
}
