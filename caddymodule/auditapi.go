package caddymodule

import (
	"bytes"
	"context"
	"errors"
	"time"

	"go.uber.org/zap"
	"golang.org/x/mod/sumdb/note"

	"github.com/asap-sidecar/asap-sidecar/caddymodule/audit"
)

// auditKeys is a handler's checkpoint signer, the verifier key (vkey)
// clients check checkpoints with, and the verifiers of its key and of its
// previous_keys, which checkpoints signed before a rotation verify with.
type auditKeys struct {
	signer    note.Signer
	vkey      string
	verifiers []note.Verifier
	err       error
}

// auditSigner signs checkpoints as <agent>/audit with the agent's key.
func (rt *agentRuntime) auditSigner(d *database) *auditKeys {
	rt.auditKeysOnce.Do(func() {
		k := &auditKeys{}
		rt.auditKeys = k
		key := rt.signingKey(d)
		if rt.Agent == "" || key == nil {
			k.err = errors.New("checkpoints need the agent option and a key")
			return
		}
		k.signer, k.vkey, k.err = audit.NewSigner(audit.Origin(rt.Agent), key)
		vkeys := []string{k.vkey}
		for _, pub := range rt.previousKeys {
			vkey, err := note.NewEd25519VerifierKey(audit.Origin(rt.Agent), pub)
			if err != nil {
				k.err = err
			}
			vkeys = append(vkeys, vkey)
		}
		for _, vkey := range vkeys {
			if k.err != nil {
				return
			}
			var v note.Verifier
			v, k.err = note.NewVerifier(vkey)
			k.verifiers = append(k.verifiers, v)
		}
	})
	return rt.auditKeys
}

// auditService backs the Audit API with one agent's log and key.
type auditService struct {
	rt *agentRuntime
	d  *database
}

func (s auditService) Log() *audit.Log { return s.d.audit }

func (s auditService) Checkpoint(ctx context.Context) ([]byte, error) {
	k := s.rt.auditSigner(s.d)
	if k.err != nil {
		return nil, k.err
	}
	return s.d.audit.Checkpoint(ctx, k.signer)
}

func (s auditService) Verifiers() []note.Verifier {
	if k := s.rt.auditSigner(s.d); k.err == nil {
		return k.verifiers
	}
	return nil
}

// checkpointLoop signs a checkpoint on every tick while the log grows,
// until stop is closed. In fleet mode each new checkpoint also goes to
// the collector, through the outbox.
func (rt *agentRuntime) checkpointLoop(stop <-chan struct{}, tick <-chan time.Time, d *database) {
	var published []byte
	for {
		select {
		case <-stop:
			return
		case <-tick:
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			signed, err := (auditService{rt, d}).Checkpoint(ctx)
			if err != nil {
				rt.logger.Warn("signing the audit checkpoint", zap.Error(err))
			} else if d.fleet != nil && !bytes.Equal(signed, published) {
				if err := d.fleet.publishCheckpoint(ctx, d.db, rt.Agent, rt.auditSigner(d).vkey, signed); err != nil {
					rt.logger.Warn("staging the audit checkpoint for the fleet collector; the next tick tries again", zap.Error(err))
				} else {
					published = signed
				}
			}
			cancel()
		}
	}
}
