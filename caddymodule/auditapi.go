package caddymodule

import (
	"context"
	"errors"
	"time"

	"go.uber.org/zap"
	"golang.org/x/mod/sumdb/note"

	"github.com/asap-sidecar/asap-sidecar/caddymodule/audit"
)

// auditKeys is a handler's checkpoint signer and the verifier key (vkey)
// clients check checkpoints with.
type auditKeys struct {
	signer   note.Signer
	verifier note.Verifier
	vkey     string
	err      error
}

// auditSigner signs checkpoints as <agent>/audit with the agent's key.
func (h *Handler) auditSigner(d *database) *auditKeys {
	h.auditKeysOnce.Do(func() {
		k := &auditKeys{}
		h.auditKeys = k
		key := h.signingKey(d)
		if h.Agent == "" || key == nil {
			k.err = errors.New("checkpoints need the agent option and a key")
			return
		}
		k.signer, k.vkey, k.err = audit.NewSigner(audit.Origin(h.Agent), key)
		if k.err == nil {
			k.verifier, k.err = note.NewVerifier(k.vkey)
		}
	})
	return h.auditKeys
}

// auditService backs the Audit API with one handler's log and key.
type auditService struct {
	h *Handler
	d *database
}

func (s auditService) Log() *audit.Log { return s.d.audit }

func (s auditService) Checkpoint(ctx context.Context) ([]byte, error) {
	k := s.h.auditSigner(s.d)
	if k.err != nil {
		return nil, k.err
	}
	return s.d.audit.Checkpoint(ctx, k.signer)
}

func (s auditService) Verifier() note.Verifier {
	if k := s.h.auditSigner(s.d); k.err == nil {
		return k.verifier
	}
	return nil
}

// checkpointLoop signs a checkpoint on every tick while the log grows,
// until stop is closed.
func (h *Handler) checkpointLoop(stop <-chan struct{}, tick <-chan time.Time, d *database) {
	for {
		select {
		case <-stop:
			return
		case <-tick:
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			if _, err := (auditService{h, d}).Checkpoint(ctx); err != nil {
				h.logger.Warn("signing the audit checkpoint", zap.Error(err))
			}
			cancel()
		}
	}
}
