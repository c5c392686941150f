package demoagent

import (
	"net/http"
	"strconv"
	"strings"
)

// The identity endpoints the reference's compliance harness probes,
// answered as the reference agent answers them (same status codes, same
// field names). The demo agent keeps no host or agent registry, so it
// registers no one; its capabilities are its skills.

// serveRegister is POST /asap/agent/register. The reference wants a Host
// JWT as a bearer token: without one it answers 401 "Authentication
// required"; a token it cannot verify is 401 too, which is every token
// here.
func serveRegister(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		methodNotAllowed(w, http.MethodPost)
		return
	}
	if bearerToken(r) == "" {
		w.Header().Set("WWW-Authenticate", "Bearer")
		writeJSON(w, http.StatusUnauthorized, map[string]string{"detail": "Authentication required"})
		return
	}
	writeJSON(w, http.StatusUnauthorized, map[string]string{"detail": "invalid host token: the demo agent registers no hosts"})
}

// bearerToken is the token of an "Authorization: Bearer <token>" header,
// or "" (the reference's reading: the scheme is case-sensitive).
func bearerToken(r *http.Request) string {
	tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok {
		return ""
	}
	return strings.TrimSpace(tok)
}

// capability is one entry of the capability list (the reference's
// CapabilityDefinition as listed: name, description, location when set).
type capability struct {
	Name        string `json:"name"`
	Description string `json:"description"`
}

// serveCapabilityList is GET /asap/capability/list: {"capabilities":[...]}
// filtered by query (a case-insensitive substring of the name or the
// description) and paged by cursor (from 0) and limit (1..1000, default
// 100), with next_cursor while there are more. Bad paging parameters are
// 422, as the reference's query validation answers them.
func serveCapabilityList(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet {
		methodNotAllowed(w, http.MethodGet)
		return
	}
	q := r.URL.Query()
	var problems []map[string]any
	cursor := queryInt(q.Get("cursor"), "cursor", 0, 0, -1, &problems)
	limit := queryInt(q.Get("limit"), "limit", 100, 1, 1000, &problems)
	if len(problems) > 0 {
		writeJSON(w, http.StatusUnprocessableEntity, map[string]any{"detail": problems})
		return
	}
	query := strings.ToLower(q.Get("query"))
	var defs []capability
	for _, s := range skills {
		if query == "" || strings.Contains(strings.ToLower(s.id), query) || strings.Contains(strings.ToLower(s.description), query) {
			defs = append(defs, capability{Name: s.id, Description: s.description})
		}
	}
	page := []capability{}
	if cursor < len(defs) {
		page = defs[cursor:min(len(defs), cursor+limit)]
	}
	body := map[string]any{"capabilities": page}
	if cursor+limit < len(defs) {
		body["next_cursor"] = cursor + limit
	}
	writeJSON(w, http.StatusOK, body)
}

// queryInt reads an integer query parameter within [lo, hi] (hi < 0: no
// upper bound), or def when it is absent; a bad value adds a problem in
// the reference's validation-error shape.
func queryInt(raw, name string, def, lo, hi int, problems *[]map[string]any) int {
	if raw == "" {
		return def
	}
	bad := func(typ, msg string) int {
		*problems = append(*problems, map[string]any{"type": typ, "loc": []string{"query", name}, "msg": msg, "input": raw})
		return def
	}
	n, err := strconv.Atoi(raw)
	switch {
	case err != nil:
		return bad("int_parsing", "Input should be a valid integer, unable to parse string as an integer")
	case n < lo:
		return bad("greater_than_equal", "Input should be greater than or equal to "+strconv.Itoa(lo))
	case hi >= 0 && n > hi:
		return bad("less_than_equal", "Input should be less than or equal to "+strconv.Itoa(hi))
	}
	return n
}

// methodNotAllowed answers as the reference's router does.
func methodNotAllowed(w http.ResponseWriter, allow string) {
	w.Header().Set("Allow", allow)
	writeJSON(w, http.StatusMethodNotAllowed, map[string]string{"detail": "Method Not Allowed"})
}
