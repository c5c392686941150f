package caddymodule

import (
	"bytes"
	"crypto/sha256"
	"sync"

	"go.uber.org/zap"

	"github.com/asap-sidecar/asap-sidecar/caddymodule/protocol"
	"github.com/asap-sidecar/asap-sidecar/storage"
)

// inFlight holds the (agent, consumer, envelope id) of calls between
// their check and the commit of their usage, with the call's digest, so
// that two different calls under one id cannot both pass while neither
// is stored yet. Retries (same digest) share the entry.
type inFlight struct {
	mu sync.Mutex
	m  map[string]*flight
}

type flight struct {
	digest [sha256.Size]byte
	n      int
}

// claim takes key for a call with digest d; false when a different call
// holds it.
func (f *inFlight) claim(key string, d [sha256.Size]byte) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.m == nil {
		f.m = map[string]*flight{}
	}
	if e, ok := f.m[key]; ok {
		if e.digest != d {
			return false
		}
		e.n++
		return true
	}
	f.m[key] = &flight{digest: d, n: 1}
	return true
}

func (f *inFlight) release(key string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if e, ok := f.m[key]; ok {
		if e.n--; e.n <= 0 {
			delete(f.m, key)
		}
	}
}

// callIdentity is a call's dedup key and digest: a retry is the same
// consumer, the same envelope id and the same envelope.
type callIdentity struct {
	key    string
	digest [sha256.Size]byte
	// claimed is whether the call holds an in-flight claim to release;
	// a retry of a stored call may go on without one.
	claimed bool
}

// refuseReusedIDs refuses (envelope_id_reused) every accepted call that
// reuses an envelope id its consumer already used for a different call,
// stored or in flight, and releases its delegation slots. It returns the
// identities it claimed, by call index; the caller releases them once
// the usage is stored.
func (h *Handler) refuseReusedIDs(d *database, req *protocol.Request, grants []grant) []callIdentity {
	if !h.metering {
		return nil
	}
	var ids []callIdentity
	meter := h.rt.usage(d)
	for i := range req.Calls {
		c := &req.Calls[i]
		env := &c.Envelope
		if c.Err != nil || env.ID == "" {
			continue
		}
		if ids == nil {
			ids = make([]callIdentity, len(req.Calls))
		}
		agent := h.agentOf(env)
		id := callIdentity{key: string(storage.SpaceUsageSeen.SizedString(agent, env.Sender, env.ID)), digest: sha256.Sum256(env.Raw)}
		id.claimed = d.calls.claim(id.key, id.digest)
		stored, ok, err := meter.Seen(agent, env.Sender, env.ID)
		if err != nil {
			h.logger.Warn("reading a dedup marker; the call goes on", zap.String("envelope_id", env.ID), zap.Error(err))
		}
		// Claim first, then read the marker: a different call stored
		// between the two cannot slip by. A claim held by a different
		// call is no reuse when this call is the one stored (a retry):
		// the other call is being refused.
		storedHere := ok && len(stored) > 0
		reused := storedHere && !bytes.Equal(stored, id.digest[:])
		if !id.claimed && !storedHere {
			reused = true
		}
		if reused && id.claimed {
			d.calls.release(id.key)
		}
		if reused {
			c.Err = protocol.NewError(protocol.CodeInvalidRequest, "envelope_id_reused",
				"envelope id "+env.ID+" was already used by this sender for a different call; give every new call a new envelope id (a retry must resend the same envelope)").WithID(c.ID)
			grants[i].release()
			grants[i] = grant{}
			continue
		}
		ids[i] = id
	}
	return ids
}

// releaseIdentities gives back what refuseReusedIDs claimed.
func releaseIdentities(d *database, ids []callIdentity) {
	for _, id := range ids {
		if id.claimed {
			d.calls.release(id.key)
		}
	}
}
