package caddymodule

import (
	"context"
	"fmt"
	"time"

	"github.com/asap-sidecar/asap-sidecar/caddymodule/api"
	"github.com/asap-sidecar/asap-sidecar/caddymodule/audit"
	"github.com/asap-sidecar/asap-sidecar/caddymodule/delegation"
	"github.com/asap-sidecar/asap-sidecar/storage"
)

// delegationService backs the Delegation API with one agent's key and
// verifier, and its database's ledger.
type delegationService struct {
	rt *agentRuntime
	db *database
}

func (s delegationService) Mint(ctx context.Context, req api.MintRequest) (*delegation.Minted, error) {
	rt, db := s.rt, s.db
	key := rt.signingKey(db)
	if key == nil || rt.Agent == "" {
		return nil, api.ErrNoSigningKey
	}
	g := delegation.Grant{
		Issuer:   rt.Agent,
		Delegate: req.Delegate,
		Scopes:   req.Scopes,
		TTL:      time.Duration(req.ExpiresInSeconds) * time.Second,
		MaxTasks: req.MaxTasks,
		CnfJWK:   req.CnfJWK,
	}
	if req.ExpiresInSeconds < 1 || req.ExpiresInSeconds > int64(delegation.MaxTTL/time.Second) {
		return nil, fmt.Errorf("%w: expires_in_seconds must be within 1..%d", delegation.ErrInvalidGrant, int64(delegation.MaxTTL/time.Second))
	}
	if req.Parent != "" {
		chain, rej := rt.verifierFor(db).Verify(req.Parent)
		if rej == nil {
			rej = db.ledger.CheckRevoked(chain)
		}
		if rej != nil {
			return nil, fmt.Errorf("%w: parent: %s", delegation.ErrInvalidGrant, rej.Error())
		}
		g.Parent = chain
	}
	m, err := delegation.Mint(g, key)
	if err != nil {
		return nil, err
	}
	created := func(tx *storage.Tx, r *delegation.Record) error {
		if !rt.audit {
			return nil
		}
		d := map[string]any{"jti": r.ID, "delegator": r.Delegator, "delegate": r.Delegate, "scopes": r.Scopes,
			"expires_at": r.ExpiresAt.Format(time.RFC3339)}
		if r.MaxTasks != nil {
			d["max_tasks"] = *r.MaxTasks
		}
		if r.ParentID != "" {
			d["parent_id"] = r.ParentID
		}
		return db.audit.Stage(tx, time.Now(), audit.Record{Operation: audit.OpDelegationCreated, AgentURN: rt.Agent, Details: d})
	}
	if _, err := db.ledger.RecordIssued(ctx, m, created); err != nil {
		return nil, fmt.Errorf("recording the token: %w", err)
	}
	return m, nil
}

func (s delegationService) List(activeOnly bool) ([]delegation.Record, error) {
	return s.db.ledger.Issued(activeOnly)
}

func (s delegationService) Get(id string) (*delegation.Record, int64, error) {
	rec, err := s.db.ledger.Get(id)
	if err != nil || rec == nil {
		return nil, 0, err
	}
	used, err := s.db.ledger.Used(rec)
	return rec, used, err
}

func (s delegationService) Used(r *delegation.Record) (int64, error) { return s.db.ledger.Used(r) }

func (s delegationService) Revoke(ctx context.Context, id string, force bool) error {
	rt, db := s.rt, s.db
	if !force {
		known, err := db.ledger.Known(id)
		if err != nil {
			return err
		}
		if !known {
			return api.ErrUnknownDelegation
		}
	}
	revoked := func(tx *storage.Tx, r *delegation.Revocation) error {
		if db.fleet != nil {
			if err := db.fleet.publishRevocation(tx, r); err != nil {
				return err
			}
		}
		if !rt.audit {
			return nil
		}
		return db.audit.Stage(tx, time.Now(), audit.Record{Operation: audit.OpDelegationRevoked, AgentURN: rt.Agent,
			Details: revocationDetails(r)})
	}
	_, err := db.ledger.Revoke(ctx, id, time.Now(), revoked)
	if err == nil && db.fleet != nil {
		db.fleet.outbox.Notify()
	}
	return err
}

// revocationDetails is the audit entry of a revocation: the id (and its
// issuer, when only one issuer's id was revoked), the ids it cascaded to,
// and the tokens known to be affected, minted here or seen in traffic.
func revocationDetails(r *delegation.Revocation) map[string]any {
	tokens := make([]any, len(r.Tokens))
	for i, t := range r.Tokens {
		tokens[i] = map[string]any{"issuer": t.Issuer, "jti": t.JTI, "hash": t.Hash}
	}
	d := map[string]any{"jti": r.JTI, "revoked": r.IDs, "tokens": tokens}
	if r.Issuer != "" {
		d["issuer"] = r.Issuer
	}
	return d
}
