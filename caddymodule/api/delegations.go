package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"time"

	"github.com/asap-sidecar/asap-sidecar/caddymodule/delegation"
)

// DelegationService is what the Delegation API needs from the sidecar.
type DelegationService interface {
	// Mint signs a new token (attenuating req.Parent when given) and
	// records it. Errors wrapping delegation.ErrInvalidGrant are the
	// caller's fault; ErrNoSigningKey means the sidecar cannot sign.
	Mint(ctx context.Context, req MintRequest) (*delegation.Minted, error)
	List(activeOnly bool) ([]delegation.Record, error)
	// Get returns a minted token's record (nil if not minted here) and
	// its task count.
	Get(id string) (*delegation.Record, int64, error)
	// Used is a minted token's task count.
	Used(r *delegation.Record) (int64, error)
	// Revoke revokes id and what was minted under it. Unless force, an id
	// neither minted here nor seen in traffic is ErrUnknownDelegation.
	Revoke(ctx context.Context, id string, force bool) error
}

// ErrUnknownDelegation is returned by Revoke for an id the sidecar has
// neither minted nor seen, without force.
var ErrUnknownDelegation = errors.New("delegation not found")

// ErrNoSigningKey is returned by Mint when no key is available.
var ErrNoSigningKey = errors.New("no delegation key is configured for this agent")

// MintRequest is the body of POST /asap/delegations (the reference's, plus
// parent and cnf_jwk).
type MintRequest struct {
	Delegate         string          `json:"delegate"`
	Scopes           []string        `json:"scopes"`
	ExpiresInSeconds int64           `json:"expires_in_seconds"`
	MaxTasks         *int64          `json:"max_tasks"`
	Parent           string          `json:"parent,omitempty"`
	CnfJWK           json.RawMessage `json:"cnf_jwk,omitempty"`
}

type delegationSummary struct {
	ID        string    `json:"id"`
	Delegator string    `json:"delegator"`
	Delegate  string    `json:"delegate"`
	CreatedAt time.Time `json:"created_at"`
	Active    bool      `json:"active"`
}

type delegationDetail struct {
	delegationSummary
	RevokedAt  *time.Time `json:"revoked_at"`
	ExpiresAt  time.Time  `json:"expires_at"`
	Scopes     []string   `json:"scopes"`
	MaxTasks   *int64     `json:"max_tasks"`
	ParentID   string     `json:"parent_id,omitempty"`
	UsageCount int64      `json:"usage_count"`
}

// delegationID is the {id} of a delegation route, or "" when it cannot
// be one (the answer is then 404).
func delegationID(r *http.Request) string {
	if id := r.PathValue("id"); len(id) <= 256 {
		return id
	}
	return ""
}

func revokeDelegation(w http.ResponseWriter, r *http.Request, s *Services) {
	id := delegationID(r)
	if id == "" {
		Error(w, http.StatusNotFound, "Not Found")
		return
	}
	force := r.URL.Query().Get("force") == "true"
	if err := s.Delegations.Revoke(r.Context(), id, force); err != nil {
		if errors.Is(err, ErrUnknownDelegation) {
			Error(w, http.StatusNotFound, "Delegation not found: neither minted here nor seen in traffic; to revoke an id learned elsewhere, add ?force=true")
			return
		}
		Error(w, http.StatusInternalServerError, "revoking %s: %v", id, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func createDelegation(w http.ResponseWriter, r *http.Request, s *Services) {
	svc := s.Delegations
	b, ok := readBody(w, r)
	if !ok {
		return
	}
	var req MintRequest
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		Error(w, http.StatusBadRequest, "invalid delegation request: %v", err)
		return
	}
	if req.ExpiresInSeconds == 0 {
		req.ExpiresInSeconds = int64(delegation.DefaultTTL / time.Second)
	}
	m, err := svc.Mint(r.Context(), req)
	switch {
	case errors.Is(err, delegation.ErrInvalidGrant):
		Error(w, http.StatusBadRequest, "%v", err)
	case errors.Is(err, ErrNoSigningKey):
		Error(w, http.StatusServiceUnavailable, "Delegation key not configured for this agent")
	case err != nil:
		Error(w, http.StatusInternalServerError, "minting: %v", err)
	default:
		writeJSON(w, http.StatusCreated, map[string]string{"token": m.Chain})
	}
}

func listDelegations(w http.ResponseWriter, r *http.Request, s *Services) {
	svc := s.Delegations
	active := true
	switch r.URL.Query().Get("active") {
	case "", "true", "1":
	case "false", "0":
		active = false
	default:
		Error(w, http.StatusBadRequest, "active must be true or false")
		return
	}
	detail := false
	switch r.URL.Query().Get("detail") {
	case "", "false", "0":
	case "true", "1":
		detail = true
	default:
		Error(w, http.StatusBadRequest, "detail must be true or false")
		return
	}
	recs, err := svc.List(active)
	if err != nil {
		Error(w, http.StatusInternalServerError, "listing delegations: %v", err)
		return
	}
	now := time.Now()
	if detail {
		// ?detail=true: each entry as GET /delegations/{id} shows it,
		// with expiry, limit and use count (the CLI's list).
		out := make([]delegationDetail, len(recs))
		for i := range recs {
			used, err := svc.Used(&recs[i])
			if err != nil {
				Error(w, http.StatusInternalServerError, "reading the use count of %s: %v", recs[i].ID, err)
				return
			}
			out[i] = detailOf(&recs[i], used, now)
		}
		writeJSON(w, http.StatusOK, out)
		return
	}
	out := make([]delegationSummary, len(recs))
	for i, rec := range recs {
		out[i] = summary(&rec, now)
	}
	writeJSON(w, http.StatusOK, out)
}

func detailOf(rec *delegation.Record, used int64, now time.Time) delegationDetail {
	return delegationDetail{
		delegationSummary: summary(rec, now),
		RevokedAt:         rec.RevokedAt, ExpiresAt: rec.ExpiresAt, Scopes: rec.Scopes,
		MaxTasks: rec.MaxTasks, ParentID: rec.ParentID, UsageCount: used,
	}
}

func summary(r *delegation.Record, now time.Time) delegationSummary {
	return delegationSummary{ID: r.ID, Delegator: r.Delegator, Delegate: r.Delegate, CreatedAt: r.CreatedAt, Active: r.Active(now)}
}

func getDelegation(w http.ResponseWriter, r *http.Request, s *Services) {
	id, svc := delegationID(r), s.Delegations
	if id == "" {
		Error(w, http.StatusNotFound, "Not Found")
		return
	}
	rec, used, err := svc.Get(id)
	if err != nil {
		Error(w, http.StatusInternalServerError, "reading %s: %v", id, err)
		return
	}
	if rec == nil {
		Error(w, http.StatusNotFound, "Delegation token not found")
		return
	}
	writeJSON(w, http.StatusOK, detailOf(rec, used, time.Now()))
}
