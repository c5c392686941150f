package caddymodule

import (
	"context"
	"io"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/asap-sidecar/asap-sidecar/caddymodule/api"
)

// Every route of the api package's one table answers on both mounts —
// Caddy's admin endpoint and the asap_api handler — with the same status,
// from the route itself: never the router's 404 or 405; and no timestamp
// in any answer has more than 6 fractional digits.
func TestEveryAPIRouteOnBothMounts(t *testing.T) {
	s := startSidecarWith(t, "", "agent urn:asap:agent:demo", apiMount)
	// Something in every store: a task through the sidecar, an event
	// reported with a nanosecond timestamp.
	if resp, b := post(t, s.url+"/asap", rpc("r1", envelope("01JROUTES0000000000000001", "echo", `{"text":"hi"}`))); resp.StatusCode != http.StatusOK {
		t.Fatalf("task: %d %s", resp.StatusCode, b)
	}
	if resp, b := post(t, "http://"+s.adminAddr+"/asap/usage", `{"task_id":"t9","agent_id":"urn:asap:agent:demo","consumer_id":"urn:asap:agent:a",`+
		`"tokens_in":1,"tokens_out":1,"duration_ms":1,"api_calls":1,"timestamp":"2026-02-06T10:00:00.123456789Z"}`); resp.StatusCode != http.StatusCreated {
		t.Fatalf("usage event: %d %s", resp.StatusCode, b)
	}
	tooFine := regexp.MustCompile(`T\d\d:\d\d:\d\d\.\d{7,}`)
	// Real ids for the {id} routes: an audit entry and a delegation.
	resp, b := post(t, "http://"+s.adminAddr+"/asap/delegations",
		`{"delegate":"urn:asap:agent:client","scopes":["task.execute"],"expires_in_seconds":3600}`)
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("minting: %d %s", resp.StatusCode, b)
	}
	var minted []struct {
		ID string `json:"id"`
	}
	if code := getJSON(t, "http://"+s.adminAddr+"/asap/delegations", &minted); code != http.StatusOK || len(minted) != 1 {
		t.Fatalf("delegation list: %d %+v", code, minted)
	}
	mintedID := minted[0].ID
	var entries struct {
		Entries []struct {
			ID string `json:"id"`
		} `json:"entries"`
	}
	if code := getJSON(t, "http://"+s.adminAddr+"/asap/audit", &entries); code != http.StatusOK || len(entries.Entries) == 0 {
		t.Fatalf("audit list: %d %+v", code, entries)
	}
	ids := strings.NewReplacer("{id}", "", "/agents/", "/agents/urn:asap:agent:demo/", "/audit/", "/audit/"+entries.Entries[0].ID,
		"/asap/delegations/", "/asap/delegations/"+mintedID)
	concrete := func(p string) string {
		if !strings.Contains(p, "{id}") {
			return p
		}
		return strings.Replace(ids.Replace(p), "//", "/", -1)
	}

	do := func(method, url string, bearer bool) (int, string, http.Header) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		req, err := http.NewRequestWithContext(ctx, method, url, nil)
		if err != nil {
			t.Fatal(err)
		}
		if bearer {
			req.Header.Set("Authorization", "Bearer "+testBearer)
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, url, err)
		}
		defer resp.Body.Close()
		if strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
			return resp.StatusCode, "", resp.Header // a stream: the status is the answer
		}
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body), resp.Header
	}

	admin, public := api.Endpoints(api.AdminMount), api.Endpoints(api.PublicMount)
	if len(admin) != len(public) || len(admin) < 25 {
		t.Fatalf("%d admin and %d public endpoints", len(admin), len(public))
	}
	for i := range admin {
		a, p := admin[i], public[i]
		if a.Method != p.Method || !strings.HasPrefix(a.Path, "/asap/") {
			t.Fatalf("admin %v and public %v differ", a, p)
		}
		if a.Method == http.MethodDelete {
			continue // revoking runs last, once per mount
		}
		codeA, bodyA, _ := do(a.Method, "http://"+s.adminAddr+concrete(a.Path), false)
		codeP, bodyP, _ := do(p.Method, s.url+concrete(p.Path), true)
		if codeA != codeP {
			t.Errorf("%s: admin %d %.200s, public %s %d %.200s", a.Method+" "+a.Path, codeA, bodyA, p.Path, codeP, bodyP)
		}
		if codeA == http.StatusMethodNotAllowed || bodyA == `{"detail":"Not Found"}` {
			t.Errorf("%s %s: the router answered %d %s", a.Method, a.Path, codeA, bodyA)
		}
		for _, b := range []string{bodyA, bodyP} {
			if m := tooFine.FindString(b); m != "" {
				t.Errorf("%s %s: timestamp %s has more than 6 fractional digits", a.Method, a.Path, m)
			}
		}
	}
	// Revoke through each mount: 204 both times (a second revocation of
	// the same id changes nothing).
	for _, target := range []struct {
		url    string
		bearer bool
	}{{"http://" + s.adminAddr + "/asap/delegations/" + mintedID, false}, {s.url + "/asap/delegations/" + mintedID, true}} {
		if code, body, _ := do(http.MethodDelete, target.url, target.bearer); code != http.StatusNoContent {
			t.Errorf("DELETE %s: %d %s", target.url, code, body)
		}
	}
	if code, body, _ := do(http.MethodGet, "http://"+s.adminAddr+"/asap/delegations/"+mintedID, false); code != http.StatusOK ||
		!strings.Contains(body, `"revoked_at":"`) || tooFine.MatchString(body) {
		t.Errorf("revoked delegation: %d %s", code, body)
	}

	// An id neither minted nor seen in traffic: 404, unless forced.
	unknown := "http://" + s.adminAddr + "/asap/delegations/del_never_seen_here"
	if code, body, _ := do(http.MethodDelete, unknown, false); code != http.StatusNotFound || !strings.Contains(body, "force=true") {
		t.Errorf("DELETE of an unknown id: %d %s", code, body)
	}
	if code, body, _ := do(http.MethodDelete, unknown+"?force=true", false); code != http.StatusNoContent {
		t.Errorf("forced DELETE of an unknown id: %d %s", code, body)
	}

	// A known path with another method: 405 with Allow on both mounts.
	for _, tc := range []struct{ method, admin, public, allow string }{
		{http.MethodDelete, "/asap/usage", "/usage", "GET, POST"},
		{http.MethodPost, "/asap/usage/summary", "/usage/summary", "GET"},
		{http.MethodPut, "/asap/delegations/" + mintedID, "/asap/delegations/" + mintedID, "GET, DELETE"},
		{http.MethodPost, "/asap/audit/verify", "/audit/verify", "GET"},
	} {
		for _, m := range []struct {
			url    string
			bearer bool
		}{{"http://" + s.adminAddr + tc.admin, false}, {s.url + tc.public, true}} {
			code, body, h := do(tc.method, m.url, m.bearer)
			if code != http.StatusMethodNotAllowed || h.Get("Allow") != tc.allow || !strings.Contains(body, `"detail"`) {
				t.Errorf("%s %s: %d Allow %q %s", tc.method, m.url, code, h.Get("Allow"), body)
			}
		}
	}
	// An unknown path under the admin prefix is the API's 404; on the
	// public site it is not the API's at all and reaches the agent.
	if code, body, _ := do(http.MethodGet, "http://"+s.adminAddr+"/asap/nope", false); code != http.StatusNotFound || body != `{"detail":"Not Found"}` {
		t.Errorf("admin /asap/nope: %d %s", code, body)
	}
	// (without a credential: the API would answer 401).
	if code, body, _ := do(http.MethodGet, s.url+"/usagex", false); code == http.StatusUnauthorized {
		t.Errorf("public /usagex was taken by the API: %d %s", code, body)
	}
}
