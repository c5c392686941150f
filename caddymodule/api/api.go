// Package api serves the operator REST APIs (usage, delegations, SLA,
// audit) with the reference implementation's paths and JSON shapes, from
// one route table (routes.go). The same Handler backs the Caddy admin API
// (under /asap) and the optional public mount; it knows nothing about
// Caddy.
package api

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// maxBody bounds API request bodies (a full /usage/batch is ~300 KiB).
const maxBody = 4 << 20

// Error answers like the reference (FastAPI): {"detail": "..."}.
func Error(w http.ResponseWriter, status int, format string, a ...any) {
	writeJSON(w, status, map[string]string{"detail": fmt.Sprintf(format, a...)})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		status = http.StatusInternalServerError
		b = []byte(`{"detail":"encoding the answer failed"}`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(status)
	_, _ = w.Write(b)
}

func readBody(w http.ResponseWriter, r *http.Request) ([]byte, bool) {
	b, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBody))
	if err != nil {
		Error(w, http.StatusRequestEntityTooLarge, "request body larger than %d bytes", maxBody)
		return nil, false
	}
	return b, true
}

// ParseTime reads an ISO 8601 time from a query: RFC 3339 with zone, a
// naive date-time (taken as UTC, as the reference does) or a date.
func ParseTime(s string) (time.Time, error) {
	for _, layout := range []string{time.RFC3339Nano, "2006-01-02T15:04:05.999999999", "2006-01-02T15:04", "2006-01-02"} {
		if t, err := time.Parse(layout, s); err == nil {
			return t.UTC(), nil
		}
	}
	return time.Time{}, fmt.Errorf("invalid date %q; use ISO 8601 (e.g. 2026-01-01T00:00:00Z)", s)
}

// query reads typed query parameters, remembering the first problem.
type query struct {
	v   url.Values
	err error
}

func (q *query) str(name string) string { return strings.TrimSpace(q.v.Get(name)) }

func (q *query) time(name string) time.Time {
	s := q.str(name)
	if s == "" || q.err != nil {
		return time.Time{}
	}
	t, err := ParseTime(s)
	if err != nil {
		q.err = fmt.Errorf("%s: %v", name, err)
	}
	return t
}

func (q *query) int(name string, def, min, max int) int {
	s := q.str(name)
	if s == "" || q.err != nil {
		return def
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < min || n > max {
		q.err = fmt.Errorf("%s must be a whole number in %d..%d", name, min, max)
		return def
	}
	return n
}
