package api

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"sort"
	"time"

	"github.com/coder/websocket"

	"github.com/asap-sidecar/asap-sidecar/caddymodule/sla"
)

// Notice is one live notification: its JSON-RPC method and the whole
// notification as JSON.
type Notice struct {
	Method string
	JSON   []byte
}

// SLAService is what the SLA API needs from the sidecar.
type SLAService interface {
	// Trackers are the tracked agents' trackers, by agent URN.
	Trackers() map[string]*sla.Tracker
	Breaches(f sla.BreachFilter) ([]sla.Breach, error)
	History(agent string, start, end time.Time, limit, offset int) ([]sla.Metrics, int, error)
	// Subscribe delivers breach notifications until cancel is called.
	Subscribe() (<-chan Notice, func())
}

// Windows of the SLA API.
var Windows = map[string]time.Duration{"1h": time.Hour, "24h": 24 * time.Hour, "7d": 7 * 24 * time.Hour, "30d": 30 * 24 * time.Hour}

var windowOrder = []string{"1h", "24h", "7d", "30d"}

// pyISO is Python's datetime.isoformat() for a UTC time, which the
// reference uses for period_start and period_end of /sla.
func pyISO(t time.Time) string {
	t = t.UTC()
	s := t.Format("2006-01-02T15:04:05")
	if us := t.Nanosecond() / 1000; us != 0 {
		s += fmt.Sprintf(".%06d", us)
	}
	return s + "+00:00"
}

type slaRow struct {
	AgentID           string      `json:"agent_id"`
	Metrics           sla.Metrics `json:"metrics"`
	CompliancePercent *float64    `json:"compliance_percent"`
	BudgetRemaining   *float64    `json:"error_budget_remaining_percent"`
}

func rowOf(id string, t *sla.Tracker, window time.Duration) slaRow {
	m, _ := t.Window(window)
	row := slaRow{AgentID: id, Metrics: m, BudgetRemaining: t.BudgetRemaining(window)}
	if !t.Config().Definition.Empty() {
		c := t.Compliance(window)
		row.CompliancePercent = &c
	}
	return row
}

func sortedIDs(ts map[string]*sla.Tracker) []string {
	ids := make([]string, 0, len(ts))
	for id := range ts {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	return ids
}

func slaStatus(w http.ResponseWriter, r *http.Request, s *Services) {
	svc := s.SLA
	name := r.URL.Query().Get("window")
	if name == "" {
		name = "24h"
	}
	window, ok := Windows[name]
	if !ok {
		Error(w, http.StatusBadRequest, "window must be one of: 1h, 24h, 7d, 30d")
		return
	}
	agent := r.URL.Query().Get("agent_id")
	ts := svc.Trackers()
	rows := []slaRow{}
	for _, id := range sortedIDs(ts) {
		if agent == "" || agent == id {
			rows = append(rows, rowOf(id, ts[id], window))
		}
	}
	now := time.Now()
	writeJSON(w, http.StatusOK, map[string]any{
		"data": rows, "window": name, "period_start": pyISO(now.Add(-window)), "period_end": pyISO(now),
	})
}

func slaHistory(w http.ResponseWriter, r *http.Request, s *Services) {
	svc := s.SLA
	q := &query{v: r.URL.Query()}
	start, end := q.time("start"), q.time("end")
	limit := q.int("limit", 100, 1, 1000)
	offset := q.int("offset", 0, 0, 1<<30)
	if q.err != nil {
		Error(w, http.StatusBadRequest, "%v", q.err)
		return
	}
	data, total, err := svc.History(q.str("agent_id"), start, end, limit, offset)
	if err != nil {
		Error(w, http.StatusInternalServerError, "reading SLA history: %v", err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"data": data, "count": len(data), "total": total, "offset": offset, "limit": limit})
}

func slaBreaches(w http.ResponseWriter, r *http.Request, s *Services) {
	svc := s.SLA
	q := &query{v: r.URL.Query()}
	f := sla.BreachFilter{AgentID: q.str("agent_id"), Severity: q.str("severity"), Start: q.time("start"), End: q.time("end")}
	if q.err == nil && f.Severity != "" && f.Severity != sla.SeverityWarning && f.Severity != sla.SeverityCritical {
		Error(w, http.StatusBadRequest, "severity must be one of: warning, critical")
		return
	}
	if q.err != nil {
		Error(w, http.StatusBadRequest, "%v", q.err)
		return
	}
	data, err := svc.Breaches(f)
	if err != nil {
		Error(w, http.StatusInternalServerError, "reading breaches: %v", err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"data": data, "count": len(data)})
}

type definitionView struct {
	Availability    *string `json:"availability"`
	MaxLatencyP95MS *int64  `json:"max_latency_p95_ms"`
	MaxErrorRate    *string `json:"max_error_rate"`
	SupportHours    *string `json:"support_hours"`
}

func viewOf(d sla.Definition) definitionView {
	var v definitionView
	if d.Availability != nil {
		s := sla.Percent(*d.Availability)
		v.Availability = &s
	}
	if d.MaxLatencyP95 > 0 {
		ms := d.MaxLatencyP95.Milliseconds()
		v.MaxLatencyP95MS = &ms
	}
	if d.MaxErrorRate != nil {
		s := sla.Percent(*d.MaxErrorRate)
		v.MaxErrorRate = &s
	}
	if d.SupportHours != "" {
		v.SupportHours = &d.SupportHours
	}
	return v
}

// agentSLA is one agent's status per window, its open breaches and recent
// history in one answer (the roadmap's GET /agents/{id}/sla).
func agentSLA(w http.ResponseWriter, r *http.Request, s *Services) {
	id, svc := r.PathValue("id"), s.SLA
	t, ok := svc.Trackers()[id]
	if !ok {
		Error(w, http.StatusNotFound, "no SLA is tracked for agent %s", truncateID(id))
		return
	}
	windows := map[string]slaRow{}
	for _, name := range windowOrder {
		windows[name] = rowOf(id, t, Windows[name])
	}
	open := t.OpenBreaches()
	sort.Slice(open, func(i, j int) bool { return open[i].DetectedAt.Before(open[j].DetectedAt) })
	_, total, err := svc.History(id, time.Time{}, time.Time{}, 0, 0)
	if err != nil {
		Error(w, http.StatusInternalServerError, "reading SLA history: %v", err)
		return
	}
	recent, _, _ := svc.History(id, time.Time{}, time.Time{}, 10, max(0, total-10))
	writeJSON(w, http.StatusOK, map[string]any{
		"agent_id": id, "definition": viewOf(t.Config().Definition), "windows": windows,
		"open_breaches": open, "history": recent,
	})
}

func truncateID(s string) string {
	if len(s) > 64 {
		return s[:64] + "…"
	}
	return s
}

// slaEvents streams notifications as Server-Sent Events: "event: <method>"
// and the notification as data.
func slaEvents(w http.ResponseWriter, r *http.Request, s *Services) {
	svc := s.SLA
	rc := http.NewResponseController(w)
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	w.WriteHeader(http.StatusOK)
	notices, cancel := svc.Subscribe()
	defer cancel()
	fmt.Fprint(w, ": subscribed to sla.breach and sla.resolved\n\n")
	_ = rc.Flush()
	keepAlive := time.NewTicker(15 * time.Second)
	defer keepAlive.Stop()
	for {
		select {
		case <-r.Context().Done():
			return
		case n, ok := <-notices:
			if !ok {
				return
			}
			if _, err := fmt.Fprintf(w, "event: %s\ndata: %s\n\n", n.Method, n.JSON); err != nil {
				return
			}
		case <-keepAlive.C:
			if _, err := fmt.Fprint(w, ": keep-alive\n\n"); err != nil {
				return
			}
		}
		if err := rc.Flush(); err != nil {
			return
		}
	}
}

type rpcRequest struct {
	JSONRPC string          `json:"jsonrpc"`
	Method  string          `json:"method"`
	ID      json.RawMessage `json:"id"`
}

// slaSubscribe speaks JSON-RPC over WebSocket: sla.subscribe and
// sla.unsubscribe, then sla.breach and sla.resolved notifications.
func slaSubscribe(w http.ResponseWriter, r *http.Request, s *Services) {
	svc := s.SLA
	conn, err := websocket.Accept(w, r, nil)
	if err != nil {
		return // Accept answered the client
	}
	defer conn.CloseNow()
	conn.SetReadLimit(1 << 16)
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()

	notices, unsubscribe := svc.Subscribe()
	defer unsubscribe()
	subscribed := make(chan bool, 1)
	subscribed <- false
	// Writer: forwards notifications while subscribed.
	go func() {
		defer cancel()
		for {
			select {
			case <-ctx.Done():
				return
			case n, ok := <-notices:
				if !ok {
					return
				}
				on := <-subscribed
				subscribed <- on
				if on {
					if err := conn.Write(ctx, websocket.MessageText, n.JSON); err != nil {
						return
					}
				}
			}
		}
	}()
	for {
		_, msg, err := conn.Read(ctx)
		if err != nil {
			return
		}
		var req rpcRequest
		if json.Unmarshal(msg, &req) != nil {
			continue // not JSON: ignored, as the reference does
		}
		var reply any
		switch req.Method {
		case "sla.subscribe":
			<-subscribed
			subscribed <- true
			reply = map[string]any{"jsonrpc": "2.0", "result": map[string]bool{"subscribed": true}, "id": req.ID}
		case "sla.unsubscribe":
			<-subscribed
			subscribed <- false
			reply = map[string]any{"jsonrpc": "2.0", "result": map[string]bool{"unsubscribed": true}, "id": req.ID}
		default:
			reply = map[string]any{"jsonrpc": "2.0", "id": req.ID, "error": map[string]any{
				"code": -32601, "message": "Method not found", "data": map[string]string{"method": truncateID(req.Method)}}}
		}
		b, _ := json.Marshal(reply)
		if err := conn.Write(ctx, websocket.MessageText, b); err != nil {
			return
		}
	}
}
