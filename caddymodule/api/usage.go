package api

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/asap-sidecar/asap-sidecar/caddymodule/metering"
	"github.com/asap-sidecar/asap-sidecar/storage"
)

// Usage serves the reference's /usage router over a metering store. Path
// is the request path with any mount prefix removed ("/usage/summary").
func Usage(w http.ResponseWriter, r *http.Request, path string, store *metering.Store) {
	sub := strings.TrimPrefix(strings.TrimSuffix(path, "/"), "/usage")
	u := usageAPI{store: store}
	switch sub {
	case "":
		switch r.Method {
		case http.MethodGet:
			u.list(w, r)
		case http.MethodPost:
			u.record(w, r)
		default:
			methodNotAllowed(w, "GET, POST")
		}
	case "/batch":
		only(w, r, http.MethodPost, u.batch)
	case "/aggregate":
		only(w, r, http.MethodGet, u.aggregate)
	case "/summary":
		only(w, r, http.MethodGet, u.summary)
	case "/agents":
		only(w, r, http.MethodGet, func(w http.ResponseWriter, r *http.Request) { u.groups(w, r, metering.ByAgent) })
	case "/consumers":
		only(w, r, http.MethodGet, func(w http.ResponseWriter, r *http.Request) { u.groups(w, r, metering.ByConsumer) })
	case "/stats":
		only(w, r, http.MethodGet, u.stats)
	case "/purge":
		only(w, r, http.MethodPost, u.purge)
	case "/validate":
		only(w, r, http.MethodPost, u.validate)
	case "/export":
		only(w, r, http.MethodGet, u.export)
	default:
		Error(w, http.StatusNotFound, "Not Found")
	}
}

func only(w http.ResponseWriter, r *http.Request, method string, h http.HandlerFunc) {
	if r.Method != method {
		methodNotAllowed(w, method)
		return
	}
	h(w, r)
}

type usageAPI struct {
	store *metering.Store
}

func filterFrom(q *query) metering.Filter {
	return metering.Filter{
		AgentID:    q.str("agent_id"),
		ConsumerID: q.str("consumer_id"),
		TaskID:     q.str("task_id"),
		Start:      q.time("start"),
		End:        q.time("end"),
	}
}

func (u usageAPI) list(w http.ResponseWriter, r *http.Request) {
	q := &query{v: r.URL.Query()}
	f := filterFrom(q)
	limit := q.int("limit", 100, 1, 1000)
	offset := q.int("offset", 0, 0, 1<<30)
	if q.err != nil {
		Error(w, http.StatusBadRequest, "%v", q.err)
		return
	}
	events, err := u.store.Query(f, limit, offset)
	if err != nil {
		Error(w, http.StatusInternalServerError, "reading usage: %v", err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"data": events, "count": len(events)})
}

func (u usageAPI) aggregate(w http.ResponseWriter, r *http.Request) {
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
	rows, err := u.store.Aggregate(f, g)
	if err != nil {
		Error(w, http.StatusInternalServerError, "aggregating usage: %v", err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"group_by": g, "data": rows})
}

func (u usageAPI) groups(w http.ResponseWriter, r *http.Request, by string) {
	q := &query{v: r.URL.Query()}
	f := filterFrom(q)
	if q.err != nil {
		Error(w, http.StatusBadRequest, "%v", q.err)
		return
	}
	rows, err := u.store.Aggregate(f, by)
	if err != nil {
		Error(w, http.StatusInternalServerError, "aggregating usage: %v", err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"data": rows})
}

func (u usageAPI) summary(w http.ResponseWriter, r *http.Request) {
	q := &query{v: r.URL.Query()}
	f := filterFrom(q)
	if q.err != nil {
		Error(w, http.StatusBadRequest, "%v", q.err)
		return
	}
	s, err := u.store.Summarize(f)
	if err != nil {
		Error(w, http.StatusInternalServerError, "summarizing usage: %v", err)
		return
	}
	writeJSON(w, http.StatusOK, s)
}

func (u usageAPI) stats(w http.ResponseWriter, _ *http.Request) {
	st, err := u.store.Stats()
	if err != nil {
		Error(w, http.StatusInternalServerError, "reading usage stats: %v", err)
		return
	}
	writeJSON(w, http.StatusOK, st)
}

func (u usageAPI) purge(w http.ResponseWriter, _ *http.Request) {
	n, err := u.store.Purge(time.Now())
	if err != nil {
		Error(w, http.StatusInternalServerError, "purging usage after %d removals: %v", n, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"status": "purged", "removed": n})
}

// commit stores agent-reported events in one strict write: all or none.
func (u usageAPI) commit(ctx context.Context, events []*metering.Event) error {
	return u.store.DB().Commit(ctx, storage.Strict, func(tx *storage.Tx) error {
		for _, e := range events {
			if _, err := u.store.Put(tx, e, e.EnvelopeID); err != nil {
				return err
			}
		}
		return nil
	})
}

func (u usageAPI) record(w http.ResponseWriter, r *http.Request) {
	b, ok := readBody(w, r)
	if !ok {
		return
	}
	e, err := metering.DecodeEvent(b)
	if err != nil {
		Error(w, http.StatusBadRequest, "%v", err)
		return
	}
	if err := u.commit(r.Context(), []*metering.Event{e}); err != nil {
		Error(w, http.StatusInternalServerError, "storing usage: %v", err)
		return
	}
	writeJSON(w, http.StatusCreated, map[string]any{"status": "recorded", "task_id": e.TaskID})
}

func (u usageAPI) batch(w http.ResponseWriter, r *http.Request) {
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
	if err := u.commit(r.Context(), events); err != nil {
		Error(w, http.StatusInternalServerError, "storing usage: %v", err)
		return
	}
	writeJSON(w, http.StatusCreated, map[string]any{"status": "recorded", "count": len(events), "task_ids": ids})
}

func (u usageAPI) validate(w http.ResponseWriter, r *http.Request) {
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

func (u usageAPI) export(w http.ResponseWriter, r *http.Request) {
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
	events, err := u.store.Query(f, limit, 0)
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
