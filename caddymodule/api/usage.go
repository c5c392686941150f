package api

import (
	"encoding/json"
	"fmt"
	"net/http"
	"time"

	"github.com/asap-sidecar/asap-sidecar/caddymodule/metering"
)

func filterFrom(q *query) metering.Filter {
	return metering.Filter{
		AgentID:    q.str("agent_id"),
		ConsumerID: q.str("consumer_id"),
		TaskID:     q.str("task_id"),
		Start:      q.time("start"),
		End:        q.time("end"),
	}
}

func usageList(w http.ResponseWriter, r *http.Request, s *Services) {
	q := &query{v: r.URL.Query()}
	f := filterFrom(q)
	limit := q.int("limit", 100, 1, 1000)
	offset := q.int("offset", 0, 0, 1<<30)
	if q.err != nil {
		Error(w, http.StatusBadRequest, "%v", q.err)
		return
	}
	events, err := s.Usage.Query(f, limit, offset)
	if err != nil {
		Error(w, http.StatusInternalServerError, "reading usage: %v", err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"data": events, "count": len(events)})
}

func usageAggregate(w http.ResponseWriter, r *http.Request, s *Services) {
	q := &query{v: r.URL.Query()}
	f := filterFrom(q)
	if q.err != nil {
		Error(w, http.StatusBadRequest, "%v", q.err)
		return
	}
	g := q.str("group_by")
	if !metering.ValidGroupBy(g) {
		Error(w, http.StatusBadRequest, "group_by must be one of: agent, consumer, day, week")
		return
	}
	format := q.str("export_format")
	if format != "" && format != "json" && format != "csv" {
		Error(w, http.StatusBadRequest, "export_format must be json or csv")
		return
	}
	rows, err := s.Usage.Aggregate(f, g)
	if err != nil {
		Error(w, http.StatusInternalServerError, "aggregating usage: %v", err)
		return
	}
	if format == "csv" {
		// By consumer this is the billing export: a line per customer
		// with the period it covers.
		w.Header().Set("Content-Type", "text/csv; charset=utf-8")
		w.Header().Set("Content-Disposition", "attachment; filename=usage_by_"+g+".csv")
		_ = metering.WriteAggregateCSV(w, rows)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"group_by": g, "data": rows})
}

// usageGroups serves /usage/agents and /usage/consumers.
func usageGroups(by string) func(http.ResponseWriter, *http.Request, *Services) {
	return func(w http.ResponseWriter, r *http.Request, s *Services) { usageGroup(w, r, s, by) }
}

func usageGroup(w http.ResponseWriter, r *http.Request, s *Services, by string) {
	q := &query{v: r.URL.Query()}
	f := filterFrom(q)
	if q.err != nil {
		Error(w, http.StatusBadRequest, "%v", q.err)
		return
	}
	rows, err := s.Usage.Aggregate(f, by)
	if err != nil {
		Error(w, http.StatusInternalServerError, "aggregating usage: %v", err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"data": rows})
}

func usageSummary(w http.ResponseWriter, r *http.Request, s *Services) {
	q := &query{v: r.URL.Query()}
	f := filterFrom(q)
	if q.err != nil {
		Error(w, http.StatusBadRequest, "%v", q.err)
		return
	}
	sum, err := s.Usage.Summarize(f)
	if err != nil {
		Error(w, http.StatusInternalServerError, "summarizing usage: %v", err)
		return
	}
	writeJSON(w, http.StatusOK, sum)
}

func usageStats(w http.ResponseWriter, _ *http.Request, s *Services) {
	st, err := s.Usage.Stats()
	if err != nil {
		Error(w, http.StatusInternalServerError, "reading usage stats: %v", err)
		return
	}
	writeJSON(w, http.StatusOK, st)
}

func usagePurge(w http.ResponseWriter, _ *http.Request, s *Services) {
	n, err := s.Usage.Purge(time.Now())
	if err != nil {
		Error(w, http.StatusInternalServerError, "purging usage after %d removals: %v", n, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"status": "purged", "removed": n})
}

func usageRecord(w http.ResponseWriter, r *http.Request, s *Services) {
	b, ok := readBody(w, r)
	if !ok {
		return
	}
	e, err := metering.DecodeEvent(b)
	if err != nil {
		Error(w, http.StatusBadRequest, "%v", err)
		return
	}
	if err := s.Usage.Record(r.Context(), []*metering.Event{e}); err != nil {
		Error(w, http.StatusInternalServerError, "storing usage: %v", err)
		return
	}
	writeJSON(w, http.StatusCreated, map[string]any{"status": "recorded", "task_id": e.TaskID})
}

func usageBatch(w http.ResponseWriter, r *http.Request, s *Services) {
	b, ok := readBody(w, r)
	if !ok {
		return
	}
	var body struct {
		Events []json.RawMessage `json:"events"`
	}
	if err := json.Unmarshal(b, &body); err != nil {
		Error(w, http.StatusBadRequest, "body must be {\"events\": [...]}: %v", err)
		return
	}
	if len(body.Events) < 1 || len(body.Events) > 1000 {
		Error(w, http.StatusBadRequest, "events must hold 1..1000 events, got %d", len(body.Events))
		return
	}
	events := make([]*metering.Event, len(body.Events))
	ids := make([]string, len(body.Events))
	for i, raw := range body.Events {
		e, err := metering.DecodeEvent(raw)
		if err != nil {
			Error(w, http.StatusBadRequest, "event %d: %v", i, err)
			return
		}
		events[i], ids[i] = e, e.TaskID
	}
	if err := s.Usage.Record(r.Context(), events); err != nil {
		Error(w, http.StatusInternalServerError, "storing usage: %v", err)
		return
	}
	writeJSON(w, http.StatusCreated, map[string]any{"status": "recorded", "count": len(events), "task_ids": ids})
}

func usageValidate(w http.ResponseWriter, r *http.Request, _ *Services) {
	b, ok := readBody(w, r)
	if !ok {
		return
	}
	e, err := metering.DecodeEvent(b)
	if err != nil {
		writeJSON(w, http.StatusOK, map[string]any{"valid": false, "error": err.Error()})
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"valid": true, "task_id": e.TaskID, "agent_id": e.AgentID, "consumer_id": e.ConsumerID})
}

func usageExport(w http.ResponseWriter, r *http.Request, s *Services) {
	q := &query{v: r.URL.Query()}
	f := filterFrom(q)
	limit := q.int("limit", 10000, 1, 100000)
	format := q.str("export_format")
	if format == "" {
		format = "json"
	}
	if q.err == nil && format != "json" && format != "csv" {
		q.err = fmt.Errorf("export_format must be json or csv")
	}
	if q.err != nil {
		Error(w, http.StatusBadRequest, "%v", q.err)
		return
	}
	events, err := s.Usage.Query(f, limit, 0)
	if err != nil {
		Error(w, http.StatusInternalServerError, "reading usage: %v", err)
		return
	}
	w.Header().Set("Content-Disposition", "attachment; filename=usage_export."+format)
	if format == "csv" {
		w.Header().Set("Content-Type", "text/csv; charset=utf-8")
		_ = metering.WriteCSV(w, events)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"data": events})
}
