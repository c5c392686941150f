package api

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/csv"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strconv"

	"golang.org/x/mod/sumdb/note"

	"github.com/asap-sidecar/asap-sidecar/caddymodule/audit"
)

// AuditService is what the Audit API needs from the sidecar.
type AuditService interface {
	Log() *audit.Log
	// Checkpoint returns a signed checkpoint covering the current size,
	// signing a new one when the log grew.
	Checkpoint(ctx context.Context) ([]byte, error)
	// Verifiers check the sidecar's checkpoint signatures: its key and
	// the previous keys of a rotation (none: signatures are not checked).
	// Keys of the log's history they endorse count too (audit.KeyUse).
	Verifiers() []note.Verifier
}

// The audit log is append-only: no route changes or deletes an entry, so
// every audit route is GET.

func auditVerify(w http.ResponseWriter, _ *http.Request, s *Services) {
	v, err := s.Audit.Log().VerifyKeys(s.Audit.Verifiers()...)
	if err != nil {
		Error(w, http.StatusInternalServerError, "verifying: %v", err)
		return
	}
	writeJSON(w, http.StatusOK, v)
}

// auditCheckpoint answers the latest checkpoint (signing one when the log
// grew), or with ?size=N the one stored at that size, signed with the key
// of its time (see /audit/keys).
func auditCheckpoint(w http.ResponseWriter, r *http.Request, s *Services) {
	var cp []byte
	var err error
	if r.URL.Query().Has("size") {
		q := &query{v: r.URL.Query()}
		size := q.int("size", 0, 0, 1<<62)
		if q.err != nil {
			Error(w, http.StatusBadRequest, "%v", q.err)
			return
		}
		if cp, err = s.Audit.Log().StoredCheckpoint(uint64(size)); err != nil {
			Error(w, http.StatusInternalServerError, "reading the checkpoint: %v", err)
			return
		}
		if cp == nil {
			Error(w, http.StatusNotFound, "no checkpoint was signed at size %d", size)
			return
		}
	} else if cp, err = s.Audit.Checkpoint(r.Context()); err != nil {
		Error(w, http.StatusServiceUnavailable, "no checkpoint: %v", err)
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	_, _ = w.Write(cp)
}

// auditKeys lists the keys the log's checkpoints were signed with, each
// with the sizes and times it was in use.
func auditKeys(w http.ResponseWriter, _ *http.Request, s *Services) {
	keys, err := s.Audit.Log().KeyHistory()
	if err != nil {
		Error(w, http.StatusInternalServerError, "reading the key history: %v", err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"keys": keys, "count": len(keys)})
}

func auditEntry(w http.ResponseWriter, r *http.Request, s *Services) {
	id := r.PathValue("id")
	if len(id) > 64 {
		Error(w, http.StatusNotFound, "Not Found")
		return
	}
	e, err := s.Audit.Log().Get(id)
	if err != nil {
		Error(w, http.StatusInternalServerError, "reading %s: %v", id, err)
		return
	}
	if e == nil {
		Error(w, http.StatusNotFound, "Audit entry not found")
		return
	}
	writeJSON(w, http.StatusOK, e)
}

func auditFilter(q *query) audit.Filter {
	return audit.Filter{
		AgentURN:  q.str("urn"),
		TaskID:    q.str("task_id"),
		Operation: q.str("operation"),
		Start:     q.time("start"),
		End:       q.time("end"),
	}
}

func auditList(w http.ResponseWriter, r *http.Request, s *Services) {
	log := s.Audit.Log()
	q := &query{v: r.URL.Query()}
	f := auditFilter(q)
	limit := q.int("limit", 100, 0, 1000)
	offset := q.int("offset", 0, 0, 1<<30)
	if q.err != nil {
		Error(w, http.StatusBadRequest, "%v", q.err)
		return
	}
	entries, err := log.Query(f, limit, offset)
	if err != nil {
		Error(w, http.StatusInternalServerError, "reading the audit log: %v", err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"entries": entries, "count": len(entries)})
}

// auditExport streams the matching entries: json ({"entries": [...]}),
// jsonl (one entry a line) or csv. An export of the whole log carries the
// signed checkpoints it can be checked against (SPEC §6): json in a
// "checkpoints" list beside "entries"; jsonl only when asked with
// checkpoints=true, as lines marked "type":"checkpoint" after the entries,
// so that readers taking every line for an entry keep working.
func auditExport(w http.ResponseWriter, r *http.Request, s *Services) {
	log := s.Audit.Log()
	q := &query{v: r.URL.Query()}
	f := auditFilter(q)
	limit := q.int("limit", 1<<30, 1, 1<<30)
	format := q.str("format")
	if format == "" {
		format = "json"
	}
	if q.err == nil && format != "json" && format != "jsonl" && format != "csv" {
		q.err = errors.New("format must be json, jsonl or csv")
	}
	withCheckpoints := format == "json"
	if c := q.str("checkpoints"); q.err == nil && c != "" {
		if b, err := strconv.ParseBool(c); err != nil {
			q.err = errors.New("checkpoints must be true or false")
		} else {
			withCheckpoints = b && format != "csv"
		}
	}
	if q.err != nil {
		Error(w, http.StatusBadRequest, "%v", q.err)
		return
	}
	// A filtered export has gaps no checkpoint covers.
	withCheckpoints = withCheckpoints && f == (audit.Filter{})
	if withCheckpoints {
		// Sign the log as it is now (a no-op when nothing was appended
		// since the last checkpoint), so the export is covered to its end;
		// without a key there is nothing to sign and stored ones still go.
		_, _ = s.Audit.Checkpoint(r.Context())
	}
	entries, err := log.Query(f, limit, 0)
	if err != nil {
		Error(w, http.StatusInternalServerError, "reading the audit log: %v", err)
		return
	}
	var cps []audit.ExportCheckpoint
	if withCheckpoints {
		// Only those the exported entries reach: the log may have grown.
		if cps, err = log.Checkpoints(uint64(len(entries))); err != nil {
			Error(w, http.StatusInternalServerError, "reading the checkpoints: %v", err)
			return
		}
	}
	w.Header().Set("Content-Disposition", "attachment; filename=audit_export."+format)
	switch format {
	case "json":
		body := map[string]any{"entries": entries, "count": len(entries)}
		if withCheckpoints {
			body["checkpoints"] = cps
		}
		writeJSON(w, http.StatusOK, body)
	case "jsonl":
		w.Header().Set("Content-Type", "application/x-ndjson")
		bw := bufio.NewWriter(w)
		_ = WriteAuditJSONL(bw, entries, cps)
		_ = bw.Flush()
	case "csv":
		w.Header().Set("Content-Type", "text/csv; charset=utf-8")
		_ = WriteAuditCSV(w, entries)
	}
}

// WriteAuditJSONL writes an entry a line, then a line per checkpoint
// marked "type":"checkpoint".
func WriteAuditJSONL(w io.Writer, entries []audit.Entry, cps []audit.ExportCheckpoint) error {
	enc := json.NewEncoder(w)
	for i := range entries {
		if err := enc.Encode(&entries[i]); err != nil {
			return err
		}
	}
	for _, c := range cps {
		c.Type = "checkpoint"
		if err := enc.Encode(c); err != nil {
			return err
		}
	}
	return nil
}

// WriteAuditCSV writes entries as CSV with a header row; details stay the
// canonical JSON the hash covers.
func WriteAuditCSV(w interface{ Write([]byte) (int, error) }, entries []audit.Entry) error {
	cw := csv.NewWriter(w)
	if err := cw.Write([]string{"id", "seq", "timestamp", "operation", "agent_urn", "details", "prev_hash", "hash"}); err != nil {
		return err
	}
	for _, e := range entries {
		if err := cw.Write([]string{e.ID, strconv.FormatUint(e.Seq, 10), e.Timestamp, e.Operation, e.AgentURN,
			string(e.Details), e.PrevHash, e.Hash}); err != nil {
			return err
		}
	}
	cw.Flush()
	return cw.Error()
}

// proofParams reads a proof's two positions: from (required) and the tree
// size (defaulting to the log's size). It answers the error itself and
// reports whether the caller goes on; failing to read the log's size is
// the server's fault, not the caller's.
func proofParams(w http.ResponseWriter, r *http.Request, log *audit.Log, fromName, sizeName string) (from, size uint64, ok bool) {
	q := &query{v: r.URL.Query()}
	if q.str(fromName) == "" {
		Error(w, http.StatusBadRequest, "%s is required", fromName)
		return 0, 0, false
	}
	from = uint64(q.int(fromName, 0, 0, 1<<62))
	if q.str(sizeName) == "" {
		var err error
		if size, _, err = log.Size(); err != nil {
			Error(w, http.StatusInternalServerError, "reading the log size: %v", err)
			return 0, 0, false
		}
	} else {
		size = uint64(q.int(sizeName, 0, 0, 1<<62))
	}
	if q.err != nil {
		Error(w, http.StatusBadRequest, "%v", q.err)
		return 0, 0, false
	}
	return from, size, true
}

func encodeHashes(hs [][]byte) []string {
	out := make([]string, len(hs))
	for i, h := range hs {
		out[i] = base64.StdEncoding.EncodeToString(h)
	}
	return out
}

func proofError(w http.ResponseWriter, err error) {
	if errors.Is(err, audit.ErrBadRequest) {
		Error(w, http.StatusBadRequest, "%v", err)
		return
	}
	Error(w, http.StatusInternalServerError, "building the proof: %v", err)
}

func inclusionProof(w http.ResponseWriter, r *http.Request, s *Services) {
	log := s.Audit.Log()
	seq, size, ok := proofParams(w, r, log, "seq", "size")
	if !ok {
		return
	}
	leaf, hashes, err := log.InclusionProof(seq, size)
	if err != nil {
		proofError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{
		"seq": seq, "size": size, "leaf_hash": base64.StdEncoding.EncodeToString(leaf), "hashes": encodeHashes(hashes),
	})
}

func consistencyProof(w http.ResponseWriter, r *http.Request, s *Services) {
	log := s.Audit.Log()
	old, size, ok := proofParams(w, r, log, "old", "new")
	if !ok {
		return
	}
	hashes, err := log.ConsistencyProof(old, size)
	if err != nil {
		proofError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"old": old, "new": size, "hashes": encodeHashes(hashes)})
}
