package api

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"reflect"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/asap-sidecar/asap-sidecar/caddymodule/delegation"
	"github.com/asap-sidecar/asap-sidecar/storage"
)

const (
	delAgent = "urn:asap:agent:demo"
	delRoot  = "urn:asap:agent:root"
)

// delegationSvc is a DelegationService over a real ledger and real
// minting, as the sidecar's handler builds it: the agent signs with its key
// (none: ErrNoSigningKey) and a parent is verified against the trusted
// issuers and the revocations before it is attenuated.
type delegationSvc struct {
	db       *storage.DB
	key      ed25519.PrivateKey
	ledger   *delegation.Ledger
	verifier *delegation.Verifier
}

func (s *delegationSvc) Mint(ctx context.Context, req MintRequest) (*delegation.Minted, error) {
	if s.key == nil {
		return nil, ErrNoSigningKey
	}
	g := delegation.Grant{
		Issuer: delAgent, Delegate: req.Delegate, Scopes: req.Scopes,
		TTL: time.Duration(req.ExpiresInSeconds) * time.Second, MaxTasks: req.MaxTasks, CnfJWK: req.CnfJWK,
	}
	if req.Parent != "" {
		chain, rej := s.verifier.Verify(req.Parent)
		if rej == nil {
			rej = s.ledger.CheckRevoked(chain)
		}
		if rej != nil {
			return nil, fmt.Errorf("%w: parent: %s", delegation.ErrInvalidGrant, rej.Error())
		}
		g.Parent = chain
	}
	m, err := delegation.Mint(g, s.key)
	if err != nil {
		return nil, err
	}
	if _, err := s.ledger.RecordIssued(ctx, m); err != nil {
		return nil, fmt.Errorf("recording the token: %w", err)
	}
	return m, nil
}

func (s *delegationSvc) List(activeOnly bool) ([]delegation.Record, error) {
	return s.ledger.Issued(activeOnly)
}

func (s *delegationSvc) Get(id string) (*delegation.Record, int64, error) {
	rec, err := s.ledger.Get(id)
	if err != nil || rec == nil {
		return nil, 0, err
	}
	used, err := s.ledger.Used(rec)
	return rec, used, err
}
func (s *delegationSvc) Used(r *delegation.Record) (int64, error) { return s.ledger.Used(r) }

func (s *delegationSvc) Revoke(ctx context.Context, id string, force bool) error {
	if known, err := s.ledger.Known(id); !force && err == nil && !known {
		return ErrUnknownDelegation
	}
	_, err := s.ledger.Revoke(ctx, id, time.Now())
	return err
}

// newDelegationSvc returns the service, and the key of a root issuer the
// agent trusts (for parents).
func newDelegationSvc(t *testing.T, withKey bool) (*delegationSvc, ed25519.PrivateKey) {
	t.Helper()
	db := openDB(t)
	ledger, err := delegation.OpenLedger(db)
	if err != nil {
		t.Fatal(err)
	}
	agentKey, err := delegation.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	rootKey, err := delegation.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	s := &delegationSvc{db: db, ledger: ledger, verifier: &delegation.Verifier{
		Self: delAgent,
		Trusted: map[string]ed25519.PublicKey{
			delAgent: agentKey.Public().(ed25519.PublicKey),
			delRoot:  rootKey.Public().(ed25519.PublicKey),
		},
	}}
	if withKey {
		s.key = agentKey
	}
	return s, rootKey
}

func delCall(t *testing.T, s DelegationService, method, target, body string) *httptest.ResponseRecorder {
	t.Helper()
	r := httptest.NewRequest(method, target, strings.NewReader(body))
	w := httptest.NewRecorder()
	serve(&Services{Delegations: s}, w, r)
	return w
}

// postDelegation POSTs body and returns the verified chain of the token.
func postDelegation(t *testing.T, s *delegationSvc, body string) *delegation.Chain {
	t.Helper()
	w := delCall(t, s, http.MethodPost, "/asap/delegations", body)
	m := expectJSON(t, w, http.StatusCreated)
	tok, _ := m["token"].(string)
	if len(m) != 1 || tok == "" {
		t.Fatalf("create answer %s, want {\"token\": ...}", w.Body.String())
	}
	chain, rej := s.verifier.Verify(tok)
	if rej != nil {
		t.Fatalf("minted token does not verify: %v", rej)
	}
	return chain
}

func TestDelegationCreate(t *testing.T) {
	s, _ := newDelegationSvc(t, true)
	before := time.Now().Unix()
	c := postDelegation(t, s, `{"delegate":"urn:asap:agent:c1","scopes":["task.execute","data.read"]}`)
	leaf := c.Leaf().Claims
	if len(c.Links) != 1 || leaf.Issuer != delAgent || string(leaf.Audience) != consC1 ||
		!reflect.DeepEqual(leaf.Scopes, []string{"task.execute", "data.read"}) || !strings.HasPrefix(leaf.ID, "del_") {
		t.Fatalf("claims %+v", leaf)
	}
	// expires_in_seconds defaults to a day; no limit unless asked.
	if iat := int64(*leaf.IssuedAt); iat < before || int64(*leaf.Expiry)-iat != 86400 || leaf.Constraints != nil {
		t.Fatalf("iat %d exp %d constraints %+v", iat, *leaf.Expiry, leaf.Constraints)
	}

	c = postDelegation(t, s, `{"delegate":"urn:asap:agent:c2","scopes":["*"],"expires_in_seconds":60,"max_tasks":5}`)
	leaf = c.Leaf().Claims
	if int64(*leaf.Expiry)-int64(*leaf.IssuedAt) != 60 || leaf.Constraints == nil || *leaf.Constraints.MaxTasks != 5 {
		t.Fatalf("claims %+v", leaf)
	}
	// The token was recorded.
	rec, err := s.ledger.Get(leaf.ID)
	if err != nil || rec == nil || rec.Delegate != consC2 || *rec.MaxTasks != 5 {
		t.Fatalf("ledger record %+v %v", rec, err)
	}
}

func TestDelegationCreateRejections(t *testing.T) {
	s, _ := newDelegationSvc(t, true)
	for _, c := range []struct{ body, detail string }{
		{`{"delegate":"urn:asap:agent:c1","scopes":["*"],"ttl":5}`, `invalid delegation request: json: unknown field "ttl"`},
		{`{"delegate":`, "invalid delegation request: unexpected EOF"},
		{``, "invalid delegation request: EOF"},
		{`[]`, "invalid delegation request: json: cannot unmarshal array"},
		{`{"delegate":"urn:asap:agent:c1","scopes":[]}`, "invalid delegation: scopes must name at least one scope"},
		{`{"scopes":["*"]}`, "invalid delegation: delegate is required"},
		{`{"delegate":"urn:asap:agent:c1","scopes":["*"],"max_tasks":-1}`, "invalid delegation: max_tasks must be ≥ 0"},
		{`{"delegate":"urn:asap:agent:c1","scopes":["*"],"expires_in_seconds":31536001}`, "invalid delegation: expires_in_seconds must be within 1..31536000"},
		{`{"delegate":"urn:asap:agent:c1","scopes":["*"],"parent":"not.a.token"}`, "invalid delegation: parent: "},
	} {
		d := detail(t, delCall(t, s, http.MethodPost, "/asap/delegations", c.body), http.StatusBadRequest)
		if !strings.HasPrefix(d, c.detail) {
			t.Errorf("%s: detail %q, want %q", c.body, d, c.detail)
		}
	}
	if recs, _ := s.ledger.Issued(false); len(recs) != 0 {
		t.Fatalf("%d tokens recorded by refused requests", len(recs))
	}
	w := delCall(t, s, http.MethodPost, "/asap/delegations", strings.Repeat(" ", maxBody+1))
	expect(t, w, http.StatusRequestEntityTooLarge, `{"detail":"request body larger than 4194304 bytes"}`)
}

func TestDelegationCreateWithoutKey(t *testing.T) {
	s, _ := newDelegationSvc(t, false)
	expect(t, delCall(t, s, http.MethodPost, "/asap/delegations", `{"delegate":"urn:asap:agent:c1","scopes":["*"]}`),
		http.StatusServiceUnavailable, `{"detail":"Delegation key not configured for this agent"}`)
	// The body is still checked first.
	detail(t, delCall(t, s, http.MethodPost, "/asap/delegations", `{"nope":1}`), http.StatusBadRequest)
}

func TestDelegationCreateStorageFailure(t *testing.T) {
	s, _ := newDelegationSvc(t, true)
	s.db.Close()
	d := detail(t, delCall(t, s, http.MethodPost, "/asap/delegations", `{"delegate":"urn:asap:agent:c1","scopes":["*"]}`), http.StatusInternalServerError)
	if d != "minting: recording the token: storage: database is closed" {
		t.Fatalf("detail %q", d)
	}
}

// A parent issued to the agent is attenuated; the child records its parent
// and revoking the parent revokes the child.
func TestDelegationWithParent(t *testing.T) {
	s, rootKey := newDelegationSvc(t, true)
	five := int64(5)
	parent, err := delegation.Mint(delegation.Grant{Issuer: delRoot, Delegate: delAgent, Scopes: []string{"task.execute", "data.read"}, MaxTasks: &five}, rootKey)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := json.Marshal(map[string]any{"delegate": consC1, "scopes": []string{"task.execute"}, "parent": parent.Chain})
	c := postDelegation(t, s, string(body))
	if len(c.Links) != 2 || c.Links[1].Claims.ID != parent.Claims.ID || *c.Leaf().Claims.Constraints.MaxTasks != 5 {
		t.Fatalf("chain %+v", c.Leaf().Claims)
	}
	child := c.Leaf().Claims.ID
	m := expectJSON(t, delCall(t, s, http.MethodGet, "/asap/delegations/"+child, ""), http.StatusOK)
	if m["parent_id"] != parent.Claims.ID || m["max_tasks"] != float64(5) {
		t.Fatalf("child detail %v", m)
	}
	// Wider than the parent: refused.
	body, _ = json.Marshal(map[string]any{"delegate": consC1, "scopes": []string{"data.write"}, "parent": parent.Chain})
	if d := detail(t, delCall(t, s, http.MethodPost, "/asap/delegations", string(body)), http.StatusBadRequest); d != `invalid delegation: scope "data.write" is not granted by the parent` {
		t.Fatalf("detail %q", d)
	}
	// Revoking the parent (minted elsewhere, so forced) revokes the child.
	w := delCall(t, s, http.MethodDelete, "/asap/delegations/"+parent.Claims.ID+"?force=true", "")
	if w.Code != http.StatusNoContent || w.Body.Len() != 0 {
		t.Fatalf("DELETE parent: %d %q", w.Code, w.Body.String())
	}
	m = expectJSON(t, delCall(t, s, http.MethodGet, "/asap/delegations/"+child, ""), http.StatusOK)
	if m["active"] != false || m["revoked_at"] == nil {
		t.Fatalf("child after revoking the parent: %v", m)
	}
	// And a revoked parent cannot be attenuated any more.
	body, _ = json.Marshal(map[string]any{"delegate": consC1, "scopes": []string{"task.execute"}, "parent": parent.Chain})
	if d := detail(t, delCall(t, s, http.MethodPost, "/asap/delegations", string(body)), http.StatusBadRequest); !strings.HasPrefix(d, "invalid delegation: parent: revoked") {
		t.Fatalf("detail %q", d)
	}
}

// delegationList checks GET /asap/delegations answers a bare JSON array of
// exactly the reference's summary fields.
func delegationList(t *testing.T, w *httptest.ResponseRecorder) []map[string]any {
	t.Helper()
	if w.Code != http.StatusOK || w.Header().Get("Content-Type") != "application/json" {
		t.Fatalf("list: %d %q %s", w.Code, w.Header().Get("Content-Type"), w.Body.String())
	}
	var out []map[string]any
	if err := json.Unmarshal(w.Body.Bytes(), &out); err != nil {
		t.Fatalf("list %s is not an array: %v", w.Body.String(), err)
	}
	for _, m := range out {
		keys := make([]string, 0, len(m))
		for k := range m {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		eq(t, "summary fields", keys, []string{"active", "created_at", "delegate", "delegator", "id"})
	}
	return out
}

func summaryIDs(list []map[string]any) []string {
	out := []string{}
	for _, m := range list {
		out = append(out, m["id"].(string))
	}
	return out
}

func TestDelegationListGetRevoke(t *testing.T) {
	s, _ := newDelegationSvc(t, true)
	expect(t, delCall(t, s, http.MethodGet, "/asap/delegations", ""), http.StatusOK, `[]`)

	chain := postDelegation(t, s, `{"delegate":"urn:asap:agent:c1","scopes":["task.execute"],"max_tasks":3}`)
	a := chain.Leaf().Claims
	b := postDelegation(t, s, `{"delegate":"urn:asap:agent:c2","scopes":["data.read"]}`).Leaf().Claims
	newestFirst := []string{b.ID, a.ID}

	list := delegationList(t, delCall(t, s, http.MethodGet, "/asap/delegations", ""))
	eq(t, "active list", summaryIDs(list), newestFirst)
	m := list[1]
	created := time.Unix(int64(*a.IssuedAt), 0).UTC().Format(time.RFC3339)
	if m["delegator"] != delAgent || m["delegate"] != consC1 || m["active"] != true || m["created_at"] != created {
		t.Fatalf("summary %v", m)
	}

	// Use a once: the detail shows the count.
	res, rej := s.ledger.Reserve(chain, time.Now())
	if rej != nil {
		t.Fatal(rej)
	}
	if err := s.db.Commit(context.Background(), storage.Strict, func(tx *storage.Tx) error { return res.Stage(tx, time.Now()) }); err != nil {
		t.Fatal(err)
	}
	res.Finish()

	w := delCall(t, s, http.MethodGet, "/asap/delegations/"+a.ID, "")
	expect(t, w, http.StatusOK, fmt.Sprintf(`{"id":%q,"delegator":%q,"delegate":%q,"created_at":%q,"active":true,"revoked_at":null,"expires_at":%q,"scopes":["task.execute"],"max_tasks":3,"usage_count":1}`,
		a.ID, delAgent, consC1, created, time.Unix(int64(*a.Expiry), 0).UTC().Format(time.RFC3339)))
	if d := delCall(t, s, http.MethodGet, "/asap/delegations/"+b.ID+"/", ""); !strings.Contains(d.Body.String(), `"usage_count":0`) || !strings.Contains(d.Body.String(), `"max_tasks":null`) {
		t.Fatalf("b detail: %s", d.Body.String())
	}
	// ?detail=true lists every entry as the detail shows it.
	w = delCall(t, s, http.MethodGet, "/asap/delegations?detail=true", "")
	expect(t, w, http.StatusOK, fmt.Sprintf(`[{"id":%q,"delegator":%q,"delegate":"urn:asap:agent:c2","created_at":%q,"active":true,"revoked_at":null,"expires_at":%q,"scopes":["data.read"],"max_tasks":null,"usage_count":0},`+
		`{"id":%q,"delegator":%q,"delegate":%q,"created_at":%q,"active":true,"revoked_at":null,"expires_at":%q,"scopes":["task.execute"],"max_tasks":3,"usage_count":1}]`,
		b.ID, delAgent, time.Unix(int64(*b.IssuedAt), 0).UTC().Format(time.RFC3339), time.Unix(int64(*b.Expiry), 0).UTC().Format(time.RFC3339),
		a.ID, delAgent, consC1, created, time.Unix(int64(*a.Expiry), 0).UTC().Format(time.RFC3339)))
	if w := delCall(t, s, http.MethodGet, "/asap/delegations?detail=yes", ""); w.Code != http.StatusBadRequest {
		t.Fatalf("detail=yes: %d", w.Code)
	}

	// Revoke a: 204, then inactive with its revocation time.
	revokedAfter := time.Now().Add(-time.Second)
	w = delCall(t, s, http.MethodDelete, "/asap/delegations/"+a.ID, "")
	if w.Code != http.StatusNoContent || w.Body.Len() != 0 {
		t.Fatalf("DELETE: %d %q", w.Code, w.Body.String())
	}
	m = expectJSON(t, delCall(t, s, http.MethodGet, "/asap/delegations/"+a.ID, ""), http.StatusOK)
	at, err := time.Parse(time.RFC3339Nano, fmt.Sprint(m["revoked_at"]))
	if m["active"] != false || err != nil || at.Before(revokedAfter) || at.After(time.Now()) {
		t.Fatalf("after revoke: %v (%v)", m, err)
	}
	if _, revoked := s.ledger.IsRevoked("", a.ID); !revoked {
		t.Fatal("ledger does not hold the revocation")
	}
	// Revoking again keeps the first time.
	if w := delCall(t, s, http.MethodDelete, "/asap/delegations/"+a.ID, ""); w.Code != http.StatusNoContent {
		t.Fatalf("second DELETE: %d", w.Code)
	}
	m2 := expectJSON(t, delCall(t, s, http.MethodGet, "/asap/delegations/"+a.ID, ""), http.StatusOK)
	if m2["revoked_at"] != m["revoked_at"] {
		t.Fatalf("revoked_at moved: %v → %v", m["revoked_at"], m2["revoked_at"])
	}

	for _, c := range []struct {
		query string
		want  []string
	}{
		{"", []string{b.ID}},
		{"?active=true", []string{b.ID}},
		{"?active=1", []string{b.ID}},
		{"?active=false", newestFirst},
		{"?active=0", newestFirst},
	} {
		list := delegationList(t, delCall(t, s, http.MethodGet, "/asap/delegations"+c.query, ""))
		eq(t, "list"+c.query, summaryIDs(list), c.want)
	}
	for _, bad := range []string{"yes", "TRUE", "2", "%20"} {
		if d := detail(t, delCall(t, s, http.MethodGet, "/asap/delegations?active="+bad, ""), http.StatusBadRequest); d != "active must be true or false" {
			t.Errorf("active=%s: %q", bad, d)
		}
	}

	// An id neither minted nor seen is not found, and stays unrevoked;
	// with force=true it is revoked (an id learned elsewhere). It is not
	// listed or shown, since it was not minted here.
	if w := delCall(t, s, http.MethodDelete, "/asap/delegations/del_seen_in_traffic", ""); w.Code != http.StatusNotFound ||
		!strings.Contains(w.Body.String(), "force=true") {
		t.Fatalf("DELETE of an unknown id: %d %s", w.Code, w.Body.String())
	}
	if _, revoked := s.ledger.IsRevoked("", "del_seen_in_traffic"); revoked {
		t.Fatal("an unknown id was revoked without force")
	}
	if w := delCall(t, s, http.MethodDelete, "/asap/delegations/del_seen_in_traffic?force=true", ""); w.Code != http.StatusNoContent {
		t.Fatalf("DELETE of a foreign id with force: %d %s", w.Code, w.Body.String())
	}
	if _, revoked := s.ledger.IsRevoked("", "del_seen_in_traffic"); !revoked {
		t.Fatal("foreign id not revoked")
	}
	expect(t, delCall(t, s, http.MethodGet, "/asap/delegations/del_seen_in_traffic", ""), http.StatusNotFound, `{"detail":"Delegation token not found"}`)
	eq(t, "all after foreign revoke", summaryIDs(delegationList(t, delCall(t, s, http.MethodGet, "/asap/delegations?active=false", ""))), newestFirst)
}

func TestDelegationPathsAndMethods(t *testing.T) {
	s, _ := newDelegationSvc(t, true)
	id := postDelegation(t, s, `{"delegate":"urn:asap:agent:c1","scopes":["*"]}`).Leaf().Claims.ID
	for _, c := range []struct{ method, path, allow string }{
		{http.MethodPut, "/asap/delegations", "GET, POST"},
		{http.MethodDelete, "/asap/delegations", "GET, POST"},
		{http.MethodPatch, "/asap/delegations/", "GET, POST"},
		{http.MethodPost, "/asap/delegations/" + id, "GET, DELETE"},
		{http.MethodPut, "/asap/delegations/" + id, "GET, DELETE"},
	} {
		w := delCall(t, s, c.method, c.path, "{}")
		if w.Header().Get("Allow") != c.allow {
			t.Errorf("%s %s: Allow %q, want %q", c.method, c.path, w.Header().Get("Allow"), c.allow)
		}
		if d := detail(t, w, http.StatusMethodNotAllowed); d != "method not allowed; use "+c.allow {
			t.Errorf("%s %s: detail %q", c.method, c.path, d)
		}
	}
	for _, path := range []string{
		"/asap/delegations//",
		"/asap/delegations/" + id + "/extra",
		"/asap/delegations/a/b",
		"/asap/delegations/" + strings.Repeat("x", 257),
	} {
		for _, method := range []string{http.MethodGet, http.MethodDelete} {
			expect(t, delCall(t, s, method, path, ""), http.StatusNotFound, `{"detail":"Not Found"}`)
		}
	}
	// 256 characters is an id, just an unknown one.
	expect(t, delCall(t, s, http.MethodGet, "/asap/delegations/"+strings.Repeat("x", 256), ""), http.StatusNotFound, `{"detail":"Delegation token not found"}`)
	// Nothing was revoked by the refused requests.
	if _, revoked := s.ledger.IsRevoked("", id); revoked {
		t.Fatal("a refused request revoked the token")
	}
	// A trailing slash on the collection is the collection.
	if list := delegationList(t, delCall(t, s, http.MethodGet, "/asap/delegations/", "")); len(list) != 1 {
		t.Fatalf("list with a trailing slash: %v", list)
	}
}

func TestDelegationStorageFailures(t *testing.T) {
	s, _ := newDelegationSvc(t, true)
	id := postDelegation(t, s, `{"delegate":"urn:asap:agent:c1","scopes":["*"]}`).Leaf().Claims.ID
	s.db.Close()
	for _, c := range []struct{ method, path, prefix string }{
		{http.MethodGet, "/asap/delegations", "listing delegations: "},
		{http.MethodGet, "/asap/delegations/" + id, "reading " + id + ": "},
		{http.MethodDelete, "/asap/delegations/" + id, "revoking " + id + ": "},
	} {
		if d := detail(t, delCall(t, s, c.method, c.path, ""), http.StatusInternalServerError); !strings.HasPrefix(d, c.prefix) {
			t.Errorf("%s %s: detail %q, want prefix %q", c.method, c.path, d, c.prefix)
		}
	}
	if _, revoked := s.ledger.IsRevoked("", id); revoked {
		t.Fatal("failed revocation held in memory")
	}
}
