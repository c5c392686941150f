package caddymodule

import (
	"crypto/ed25519"
	"net/http"
	"time"

	"go.uber.org/zap"

	"github.com/asap-sidecar/asap-sidecar/caddymodule/audit"
	"github.com/asap-sidecar/asap-sidecar/caddymodule/delegation"
	"github.com/asap-sidecar/asap-sidecar/caddymodule/fleet"
	"github.com/asap-sidecar/asap-sidecar/caddymodule/protocol"
	"github.com/asap-sidecar/asap-sidecar/config"
	"github.com/asap-sidecar/asap-sidecar/storage"
)

// defaultActions is SPEC §3's mapping from payload types to the scope they
// need. Types not listed (and not mapped with the action option) need "*".
var defaultActions = map[protocol.PayloadType]string{
	protocol.TypeTaskRequest:      delegation.ScopeTaskExecute,
	protocol.TypeTaskUpdate:       delegation.ScopeTaskExecute,
	protocol.TypeMCPToolCall:      delegation.ScopeTaskExecute,
	protocol.TypeMessageSend:      delegation.ScopeTaskExecute,
	protocol.TypeTaskCancel:       delegation.ScopeTaskCancel,
	protocol.TypeStateQuery:       delegation.ScopeDataRead,
	protocol.TypeMCPResourceFetch: delegation.ScopeDataRead,
	protocol.TypeStateRestore:     delegation.ScopeDataWrite,
	protocol.TypeArtifactNotify:   delegation.ScopeDataWrite,
}

// actionsOf is SPEC §3's payload type → scope mapping with the action
// options applied.
func actionsOf(opts map[string]string) map[protocol.PayloadType]string {
	actions := make(map[protocol.PayloadType]string, len(defaultActions)+len(opts))
	for t, s := range defaultActions {
		actions[t] = s
	}
	for t, s := range opts {
		actions[protocol.NormalizeType(t)] = s
	}
	return actions
}

// signingKey is the key delegations are minted with: the key option, or
// the key generated beside the database.
func (rt *agentRuntime) signingKey(d *database) ed25519.PrivateKey {
	if rt.signKey != nil {
		return rt.signKey
	}
	return d.agentKey
}

// verifierFor is the verifier with the generated agent key trusted for
// the protected agent when no key option names one. The agent's own key
// is its Trusted key; trust lines and previous_keys for its URN sit
// beside it (AlsoTrusted), so they never reject the tokens it mints.
func (rt *agentRuntime) verifierFor(d *database) *delegation.Verifier {
	rt.verifierOnce.Do(func() {
		if rt.signKey == nil && rt.Agent != "" && d.agentKey != nil {
			rt.verifier.Trusted[rt.Agent] = d.agentKey.Public().(ed25519.PublicKey)
		}
	})
	return rt.verifier
}

// grant is what authorization gave one call.
type grant struct {
	chain       *delegation.Chain
	reservation *delegation.Reservation
	// slots are the call's fleet-wide max_tasks counts (fleet mode).
	slots []*fleet.Slot
}

// release gives back the call's slots, here and in the fleet: the agent
// never answered, or the call was refused after authorization.
func (g grant) release() {
	g.reservation.Release()
	releaseSlots(g.slots)
}

// authorize applies the delegation policy to every call of req: rejected
// calls get their error set (and are not forwarded); accepted ones get
// their slots reserved. It returns the grants by call index.
func (h *Handler) authorize(r *http.Request, d *database, req *protocol.Request) []grant {
	grants := make([]grant, len(req.Calls))
	if h.Delegation == config.DelegationOff {
		return grants
	}
	value := r.Header.Get(delegation.Header)
	if value == "" && h.Delegation == config.DelegationOptional {
		return grants
	}
	v := h.rt.verifierFor(d)
	chain, rej := v.Verify(value)
	if rej == nil {
		rej = d.ledger.CheckRevoked(chain)
	}
	now := time.Now()
	var rejected []audit.Record
	defer func() { h.auditRejections(d, rejected) }()
	for i := range req.Calls {
		c := &req.Calls[i]
		if c.Err != nil {
			continue
		}
		callRej := rej
		if callRej == nil {
			env := &c.Envelope
			callRej = v.CheckCall(chain, env.Sender, env.Recipient, h.action(env.Type()))
		}
		if callRej == nil {
			var res *delegation.Reservation
			if res, callRej = d.ledger.Reserve(chain, now); callRej == nil {
				var slots []*fleet.Slot
				if slots, callRej = h.takeFleetSlots(r.Context(), d, chain); callRej == nil {
					grants[i] = grant{chain: chain, reservation: res, slots: slots}
					continue
				}
				res.Release()
			}
		}
		c.Err = delegationError(callRej).WithID(c.ID)
		h.logger.Info("delegation rejected",
			zap.String("reason", callRej.Reason), zap.String("jti", callRej.JTI),
			zap.String("sender", c.Envelope.Sender), zap.String("envelope_id", c.Envelope.ID))
		rejected = append(rejected, rejectionRecord(callRej, &c.Envelope, h.Agent))
	}
	return grants
}

// rejectionRecord is the audit entry of a refused call. It names the rule
// and the token id, never the token itself.
func rejectionRecord(rej *delegation.Rejection, env *protocol.Envelope, agent string) audit.Record {
	d := map[string]any{
		"reason": rej.Reason, "code": classCodes[rej.Class], "agent": agent,
		"envelope_id": env.ID, "consumer": env.Sender, "payload_type": env.Type().String(),
	}
	if rej.JTI != "" {
		d["jti"] = rej.JTI
	}
	return audit.Record{Operation: audit.OpDelegationRejected, AgentURN: env.Sender, Details: d}
}

// auditRejections appends rejected calls to the audit log without making
// the caller wait: a flood of bad tokens must not slow good traffic.
func (h *Handler) auditRejections(d *database, recs []audit.Record) {
	if len(recs) == 0 || !h.audit {
		return
	}
	now := time.Now()
	d.db.Submit(storage.Relaxed, func(tx *storage.Tx) error {
		return d.audit.Stage(tx, now, recs...)
	})
}

// authorizeUpgrade checks the chain presented when a WebSocket opens: the
// frames that follow are not inspected, so the connection itself must be
// delegated (signatures, times, attenuation, revocation, and task.execute
// granted). Per-message audience checks and task limits do not apply to
// WebSocket traffic.
func (h *Handler) authorizeUpgrade(r *http.Request, db *database) *delegation.Rejection {
	value := r.Header.Get(delegation.Header)
	if value == "" && h.Delegation == config.DelegationOptional {
		return nil
	}
	chain, rej := h.rt.verifierFor(db).Verify(value)
	if rej == nil {
		rej = db.ledger.CheckRevoked(chain)
	}
	if rej == nil && !chain.Grants(delegation.ScopeTaskExecute) {
		rej = &delegation.Rejection{Class: delegation.ClassScope, Reason: "action_not_granted", Detail: "a WebSocket connection needs a chain granting task.execute"}
	}
	if rej != nil {
		h.logger.Info("delegation rejected", zap.String("reason", rej.Reason), zap.String("jti", rej.JTI), zap.String("path", r.URL.Path))
		details := map[string]any{"reason": rej.Reason, "code": classCodes[rej.Class], "agent": h.Agent, "path": r.URL.Path}
		if rej.JTI != "" {
			details["jti"] = rej.JTI
		}
		h.auditRejections(db, []audit.Record{{Operation: audit.OpDelegationRejected, AgentURN: h.Agent, Details: details}})
	}
	return rej
}

func (h *Handler) action(t protocol.PayloadType) string {
	if s, ok := h.actions[t]; ok {
		return s
	}
	return delegation.ScopeAll
}

var classCodes = map[delegation.Class]int{
	delegation.ClassMalformed: protocol.CodeTokenMalformed,
	delegation.ClassSignature: protocol.CodeTokenSignature,
	delegation.ClassTime:      protocol.CodeTokenTime,
	delegation.ClassRevoked:   protocol.CodeTokenRevoked,
	delegation.ClassScope:     protocol.CodeTokenScope,
	delegation.ClassAudience:  protocol.CodeTokenAudience,
	delegation.ClassLimit:     protocol.CodeTokenLimitSpent,
}

func delegationError(r *delegation.Rejection) *protocol.Error {
	e := protocol.NewError(classCodes[r.Class], r.Reason, r.Detail)
	if r.JTI != "" {
		e.Extra = map[string]any{"jti": r.JTI}
	}
	return e
}

// releaseUnanswered gives back the slots of calls the agent never
// answered.
func releaseUnanswered(grants []grant) {
	for _, g := range grants {
		g.release()
	}
}
