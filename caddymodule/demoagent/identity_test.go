package demoagent

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// serveWith is serve with request headers as name, value pairs.
func serveWith(t *testing.T, a *Agent, method, path, body string, headers ...string) *httptest.ResponseRecorder {
	t.Helper()
	r := httptest.NewRequest(method, path, strings.NewReader(body))
	for i := 0; i+1 < len(headers); i += 2 {
		r.Header.Add(headers[i], headers[i+1])
	}
	w := httptest.NewRecorder()
	if err := a.ServeHTTP(w, r, nil); err != nil {
		t.Fatalf("ServeHTTP returned %v", err)
	}
	return w
}

func wantVersionHeader(t *testing.T, w *httptest.ResponseRecorder, v string) {
	t.Helper()
	if got := w.Header().Values("ASAP-Version"); len(got) != 1 || got[0] != v {
		t.Errorf("ASAP-Version %q, want exactly %q", got, v)
	}
}

func TestVersionNegotiation(t *testing.T) {
	a := newAgent(t)
	call := rpcCall(`"v1"`, taskEnv("env-v1", "echo", `{}`))
	for _, tc := range []struct {
		name    string
		headers []string
		want    string
	}{
		{"absent: the default", nil, "2.2"},
		{"blank: the default", []string{"ASAP-Version", " "}, "2.2"},
		{"first supported in the client's order", []string{"ASAP-Version", "2.1, 2.2"}, "2.1"},
		{"unknown tokens skipped, whitespace trimmed", []string{"ASAP-Version", " 9.0 ,, 2.2 "}, "2.2"},
		{"several lines are one list", []string{"ASAP-Version", "1.0", "ASAP-Version", "2.1"}, "2.1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := serveWith(t, a, http.MethodPost, "/asap", call, tc.headers...)
			if ans := decode(t, w.Body.Bytes()); w.Code != 200 || ans.Result == nil {
				t.Fatalf("status %d: %s", w.Code, w.Body)
			}
			wantVersionHeader(t, w, tc.want)
		})
	}

	// Nothing supported: -32000 (id null: the call is not read) instead
	// of the call's answer, on both JSON-RPC paths.
	for _, path := range []string{"/asap", "/asap/stream"} {
		w := serveWith(t, a, http.MethodPost, path, call, "ASAP-Version", "99.0, 3.0")
		ans := decode(t, w.Body.Bytes())
		if w.Code != 200 || ans.Error == nil || ans.Error.Code != -32000 || ans.Error.Message != "ASAP protocol version incompatible" || string(ans.ID) != "null" {
			t.Fatalf("%s: %d %s", path, w.Code, w.Body)
		}
		if ans.Error.Data["requested"] != "99.0, 3.0" || !reflect.DeepEqual(ans.Error.Data["supported"], []any{"2.1", "2.2"}) {
			t.Fatalf("%s: data %v", path, ans.Error.Data)
		}
		wantVersionHeader(t, w, "2.2")
	}

	// Other paths and methods are not negotiated, but labelled with the
	// default, as the reference labels every answer.
	for _, tc := range []struct{ method, path string }{
		{http.MethodGet, "/.well-known/asap/manifest.json"},
		{http.MethodGet, "/.well-known/asap/health"},
		{http.MethodGet, "/asap"},
		{http.MethodGet, "/asap/capability/list"},
		{http.MethodGet, "/nope"},
	} {
		w := serveWith(t, a, tc.method, tc.path, "", "ASAP-Version", "99.0")
		wantVersionHeader(t, w, "2.2")
	}
}

// A WebSocket handshake is not negotiated, as the reference's middleware
// serves plain HTTP only.
func TestWebSocketHandshakeIgnoresVersion(t *testing.T) {
	a := newAgent(t)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _ = a.ServeHTTP(w, r, nil) }))
	defer srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, resp, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(srv.URL, "http")+"/asap/ws", &websocket.DialOptions{
		HTTPHeader: http.Header{"Asap-Version": {"99.0"}},
	})
	if err != nil {
		t.Fatalf("handshake: %v", err)
	}
	defer conn.CloseNow()
	if v := resp.Header.Values("Asap-Version"); len(v) != 0 {
		t.Errorf("handshake answer carries ASAP-Version %q", v)
	}
}

func TestRegisterEndpoint(t *testing.T) {
	a := newAgent(t)
	detail := func(w *httptest.ResponseRecorder) string {
		t.Helper()
		var m map[string]string
		if err := json.Unmarshal(w.Body.Bytes(), &m); err != nil {
			t.Fatalf("body %s: %v", w.Body, err)
		}
		return m["detail"]
	}
	// Without a bearer token: 401 asking for one, as the reference.
	for _, auth := range []string{"", "Bearer ", "Bearer    ", "bearer abc", "Basic dXNlcjpwYXNz"} {
		w := serveWith(t, a, http.MethodPost, "/asap/agent/register", `{"capabilities":["echo"]}`, "Authorization", auth)
		if w.Code != http.StatusUnauthorized || w.Header().Get("WWW-Authenticate") != "Bearer" || detail(w) != "Authentication required" {
			t.Errorf("Authorization %q: %d %q %s", auth, w.Code, w.Header().Get("WWW-Authenticate"), w.Body)
		}
	}
	// A host token: the demo agent registers no hosts.
	w := serveWith(t, a, http.MethodPost, "/asap/agent/register", "", "Authorization", "Bearer eyJhbGciOiJFZERTQSJ9.e30.c2ln")
	if w.Code != http.StatusUnauthorized || !strings.Contains(detail(w), "registers no hosts") || w.Header().Get("Content-Type") != "application/json" {
		t.Errorf("with a token: %d %s", w.Code, w.Body)
	}
	// Other methods: 405 naming POST.
	w = serveWith(t, a, http.MethodGet, "/asap/agent/register", "")
	if w.Code != http.StatusMethodNotAllowed || w.Header().Get("Allow") != "POST" || detail(w) != "Method Not Allowed" {
		t.Errorf("GET: %d %q %s", w.Code, w.Header().Get("Allow"), w.Body)
	}
}

func TestCapabilityList(t *testing.T) {
	a := newAgent(t)
	type page struct {
		Capabilities []struct {
			Name        string `json:"name"`
			Description string `json:"description"`
		} `json:"capabilities"`
		NextCursor *int `json:"next_cursor"`
	}
	list := func(query string) (names []string, next *int) {
		t.Helper()
		w := serveWith(t, a, http.MethodGet, "/asap/capability/list"+query, "")
		if w.Code != 200 || w.Header().Get("Content-Type") != "application/json" {
			t.Fatalf("%s: %d %s", query, w.Code, w.Body)
		}
		var p page
		if err := json.Unmarshal(w.Body.Bytes(), &p); err != nil || p.Capabilities == nil {
			t.Fatalf("%s: body %s (%v)", query, w.Body, err)
		}
		names = []string{}
		for _, c := range p.Capabilities {
			if c.Description == "" {
				t.Errorf("%s has no description", c.Name)
			}
			names = append(names, c.Name)
		}
		return names, p.NextCursor
	}
	for _, tc := range []struct {
		query string
		want  []string
		next  int // -1: no next_cursor
	}{
		{"", []string{"echo", "sleep", "fail"}, -1},
		{"?query=SLE", []string{"sleep"}, -1},
		{"?query=always", []string{"fail"}, -1}, // matches the description
		{"?query=nothing-like-it", []string{}, -1},
		{"?limit=1", []string{"echo"}, 1},
		{"?cursor=1&limit=1", []string{"sleep"}, 2},
		{"?cursor=2&limit=1", []string{"fail"}, -1},
		{"?cursor=1", []string{"sleep", "fail"}, -1},
		{"?cursor=7", []string{}, -1},
		{"?limit=1000", []string{"echo", "sleep", "fail"}, -1},
	} {
		names, next := list(tc.query)
		if !reflect.DeepEqual(names, tc.want) {
			t.Errorf("%q: %v, want %v", tc.query, names, tc.want)
		}
		if (tc.next < 0) != (next == nil) || (next != nil && *next != tc.next) {
			t.Errorf("%q: next_cursor %v, want %d", tc.query, next, tc.next)
		}
	}

	// Bad paging parameters: 422 naming each, in the reference's shape.
	w := serveWith(t, a, http.MethodGet, "/asap/capability/list?cursor=-1&limit=abc", "")
	var bad struct {
		Detail []struct {
			Type  string   `json:"type"`
			Loc   []string `json:"loc"`
			Msg   string   `json:"msg"`
			Input string   `json:"input"`
		} `json:"detail"`
	}
	if err := json.Unmarshal(w.Body.Bytes(), &bad); err != nil || w.Code != http.StatusUnprocessableEntity || len(bad.Detail) != 2 ||
		bad.Detail[0].Type != "greater_than_equal" || !reflect.DeepEqual(bad.Detail[0].Loc, []string{"query", "cursor"}) || bad.Detail[0].Input != "-1" ||
		bad.Detail[1].Type != "int_parsing" || !reflect.DeepEqual(bad.Detail[1].Loc, []string{"query", "limit"}) {
		t.Errorf("cursor=-1&limit=abc: %d %s", w.Code, w.Body)
	}
	for _, q := range []string{"?limit=0", "?limit=1001"} {
		if w := serveWith(t, a, http.MethodGet, "/asap/capability/list"+q, ""); w.Code != http.StatusUnprocessableEntity || !strings.Contains(w.Body.String(), `"loc":["query","limit"]`) {
			t.Errorf("%s: %d %s", q, w.Code, w.Body)
		}
	}
	if w := serveWith(t, a, http.MethodPost, "/asap/capability/list", ""); w.Code != http.StatusMethodNotAllowed || w.Header().Get("Allow") != "GET" {
		t.Errorf("POST: %d %q", w.Code, w.Header().Get("Allow"))
	}
}
