package caddymodule

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/oklog/ulid/v2"
	"go.uber.org/zap"

	"github.com/asap-sidecar/asap-sidecar/caddymodule/audit"
	"github.com/asap-sidecar/asap-sidecar/caddymodule/delegation"
	"github.com/asap-sidecar/asap-sidecar/caddymodule/fleet"
	"github.com/asap-sidecar/asap-sidecar/caddymodule/metering"
	"github.com/asap-sidecar/asap-sidecar/config"
	"github.com/asap-sidecar/asap-sidecar/storage"
)

// fleetLink is one database's membership in a fleet (SPEC §12): its NATS
// connection, its outbox and its revocation follower. It lives as long as
// the database, so a reload keeps the connection and the follower's place.
type fleetLink struct {
	client *fleet.Client
	outbox *fleet.Outbox
	// origin is this database's id in the fleet, generated once and kept
	// in it: revocations it published come back and are skipped by it.
	origin string
	name   string
	opts   config.Fleet
	logger *zap.Logger
	cancel context.CancelFunc
	loops  sync.WaitGroup
	// lastLocalWarn rate-limits the on_unreachable local warning.
	lastLocalWarn atomic.Int64
	// applied is the last revocation sequence applied.
	applied atomic.Uint64
	// auditAgent is the agent whose audit log records revocations
	// applied from the fleet ("" when no handler on the database audits).
	auditAgent atomic.Pointer[string]
}

var (
	fleetOriginKey  = storage.SpaceMeta.KeyString("fleet", "origin")
	fleetAppliedKey = storage.SpaceMeta.KeyString("fleet", "revocations_applied")
)

// startFleet joins d to the fleet opts names. NATS need not be up: the
// client connects in the background.
func startFleet(d *database, opts config.Fleet, logger *zap.Logger) (*fleetLink, error) {
	logger = logger.Named("fleet")
	origin, applied, err := fleetState(d.db)
	if err != nil {
		return nil, err
	}
	name := opts.Name
	if name == "" {
		name, _ = os.Hostname()
	}
	client, err := fleet.Connect(fleet.Options{URL: opts.NATS, Credentials: opts.Credentials, Name: "asap-sidecar " + name, Logger: logger})
	if err != nil {
		return nil, err
	}
	outbox, err := fleet.OpenOutbox(d.db, opts.MaxBacklog, logger)
	if err != nil {
		client.Close()
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	f := &fleetLink{client: client, outbox: outbox, origin: origin, name: name, opts: opts, logger: logger, cancel: cancel}
	f.applied.Store(applied)
	f.loops.Add(2)
	go func() {
		defer f.loops.Done()
		outbox.Run(ctx, client)
	}()
	go func() {
		defer f.loops.Done()
		client.FollowRevocations(ctx, applied, func(ctx context.Context, r fleet.Revocation, seq uint64) error {
			return f.apply(ctx, d, r, seq)
		})
	}()
	logger.Info("joined the fleet", zap.String("nats", opts.NATS), zap.String("name", name), zap.String("origin", origin),
		zap.Uint64("revocations_applied", applied), zap.Int64("outbox_backlog", outbox.Backlog()))
	return f, nil
}

// fleetState reads this database's fleet id (making one the first time)
// and the last revocation sequence it applied.
func fleetState(db *storage.DB) (origin string, applied uint64, err error) {
	err = db.View(func(r *storage.Reader) error {
		if b, err := r.Get(fleetOriginKey); err == nil {
			origin = string(b)
		} else if !errors.Is(err, storage.ErrNotFound) {
			return err
		}
		b, err := r.Get(fleetAppliedKey)
		switch {
		case errors.Is(err, storage.ErrNotFound):
			return nil // nothing applied yet
		case err != nil:
			return err
		}
		applied, err = storage.DecodeUint64(b)
		return err
	})
	if err != nil || origin != "" {
		return origin, applied, err
	}
	origin = ulid.Make().String()
	err = db.Commit(context.Background(), storage.Strict, func(tx *storage.Tx) error {
		tx.Set(fleetOriginKey, []byte(origin))
		return nil
	})
	return origin, applied, err
}

// stop ends the loops and the connection; messages not yet published stay
// in the outbox for the next start.
func (f *fleetLink) stop() {
	f.cancel()
	f.loops.Wait()
	f.client.Close()
}

// apply applies a revocation from the stream to d's ledger, recording seq
// in the same transaction. Its own revocations (already applied when they
// were made) and unreadable messages only advance seq.
func (f *fleetLink) apply(ctx context.Context, d *database, r fleet.Revocation, seq uint64) error {
	record := func(tx *storage.Tx, _ *delegation.Revocation) error {
		tx.Set(fleetAppliedKey, storage.EncodeUint64(seq))
		return nil
	}
	if r.JTI == "" || r.Origin == f.origin {
		err := d.db.Commit(ctx, storage.Strict, func(tx *storage.Tx) error { return record(tx, nil) })
		if err == nil {
			f.applied.Store(seq)
		}
		return err
	}
	at := r.RevokedAt
	if at.IsZero() {
		at = time.Now()
	}
	audited := func(tx *storage.Tx, rev *delegation.Revocation) error {
		agent := f.auditAgent.Load()
		if agent == nil || *agent == "" {
			return nil
		}
		details := revocationDetails(rev)
		details["origin"] = r.Origin
		details["fleet_seq"] = seq
		return d.audit.Stage(tx, time.Now(), audit.Record{Operation: audit.OpDelegationRevoked, AgentURN: *agent, Details: details})
	}
	var err error
	if r.Issuer == "" {
		_, err = d.ledger.Revoke(ctx, r.JTI, at, record, audited)
	} else {
		_, err = d.ledger.RevokeFrom(ctx, r.Issuer, r.JTI, at, record, audited)
	}
	if errors.Is(err, delegation.ErrBadRevocation) {
		// No sidecar can apply it, now or later: note it and go on, or
		// it would hold up every revocation behind it.
		f.logger.Error("skipping a fleet revocation that cannot be applied", zap.Uint64("seq", seq),
			zap.String("origin", r.Origin), zap.Int("jti_bytes", len(r.JTI)), zap.Error(err))
		r.JTI = ""
		return f.apply(ctx, d, r, seq)
	}
	if err != nil {
		return fmt.Errorf("revoking %s from %s: %w", r.JTI, r.Origin, err)
	}
	f.applied.Store(seq)
	f.logger.Info("applied a fleet revocation", zap.String("jti", r.JTI), zap.String("issuer", r.Issuer),
		zap.String("origin", r.Origin), zap.Uint64("seq", seq))
	return nil
}

// publishRevocation stages r in the outbox inside the revocation's own
// transaction: it reaches the fleet once NATS acknowledges it, however
// long NATS is away.
func (f *fleetLink) publishRevocation(tx *storage.Tx, r *delegation.Revocation) error {
	m, err := fleet.Revocation{Issuer: r.Issuer, JTI: r.JTI, RevokedAt: r.At, Origin: f.origin}.Message()
	if err != nil {
		return err
	}
	return f.outbox.Stage(tx, m)
}

// publishUsage stages a metered task's usage for the collector, in the
// task's own transaction.
func (f *fleetLink) publishUsage(tx *storage.Tx, e *metering.Event, dedup string) error {
	m, err := fleet.Usage{Origin: f.origin, Name: f.name, Event: *e, Dedup: dedup}.Message()
	if err != nil {
		return err
	}
	return f.outbox.Stage(tx, m)
}

// takeFleetSlots counts the call against the max_tasks of every limited
// link of chain across the fleet, all or none. Chains without a limit, and
// sidecars outside fleet mode, never reach NATS here. While NATS is
// unreachable, limited tokens are refused (on_unreachable reject) or
// counted here alone (local).
func (h *Handler) takeFleetSlots(ctx context.Context, d *database, chain *delegation.Chain) ([]*fleet.Slot, *delegation.Rejection) {
	f := d.fleet
	if f == nil {
		return nil, nil
	}
	var slots []*fleet.Slot
	for _, link := range chain.Links {
		max := link.MaxTasks()
		if max < 0 {
			continue
		}
		slot, err := f.client.Take(ctx, link.Hash, max, time.Unix(int64(*link.Claims.Expiry), 0))
		if err == nil {
			slots = append(slots, slot)
			continue
		}
		if errors.Is(err, fleet.ErrSpent) {
			releaseSlots(slots)
			return nil, &delegation.Rejection{Class: delegation.ClassLimit, Reason: "max_tasks_reached", JTI: link.Claims.ID,
				Detail: fmt.Sprintf("token %s allows %d tasks and all are used across the fleet", link.Claims.ID, max)}
		}
		if f.opts.OnUnreachable == config.FleetLocal {
			f.warnLocal(err)
			continue // counted by this sidecar's ledger alone
		}
		releaseSlots(slots)
		return nil, &delegation.Rejection{Class: delegation.ClassLimit, Reason: "fleet_unavailable", JTI: link.Claims.ID,
			Detail: "token " + link.Claims.ID + " has max_tasks, counted across the fleet, and the fleet's NATS cannot be reached; retry later"}
	}
	return slots, nil
}

// warnLocal logs, at most once a minute, that limits are counted locally.
func (f *fleetLink) warnLocal(err error) {
	now := time.Now().UnixNano()
	last := f.lastLocalWarn.Load()
	if now-last < int64(time.Minute) || !f.lastLocalWarn.CompareAndSwap(last, now) {
		return
	}
	f.logger.Warn("fleet NATS unreachable: max_tasks counted by this sidecar alone (on_unreachable local)", zap.Error(err))
}

// releaseSlots gives fleet slots back before the failed call is
// answered, so a client retrying at once finds its slot free (one round
// trip to NATS, on a call that failed anyway).
func releaseSlots(slots []*fleet.Slot) {
	if len(slots) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, s := range slots {
		_ = s.Release(ctx) // unreachable: the slot stays counted, which errs on the safe side
	}
}

// FleetStatus is a database's fleet membership in GET /asap/status.
type FleetStatus struct {
	Name      string `json:"name"`
	Origin    string `json:"origin"`
	NATS      string `json:"nats"`
	Connected bool   `json:"connected"`
	// OutboxBacklog is how many messages wait for NATS; at
	// OutboxMax calls are refused until it drains.
	OutboxBacklog      int64  `json:"outbox_backlog"`
	OutboxMax          int64  `json:"outbox_max"`
	RevocationsApplied uint64 `json:"revocations_applied_seq"`
	OnUnreachable      string `json:"on_unreachable"`
}

func (f *fleetLink) status() *FleetStatus {
	return &FleetStatus{Name: f.name, Origin: f.origin, NATS: f.opts.NATS, Connected: f.client.Connected(),
		OutboxBacklog: f.outbox.Backlog(), OutboxMax: f.outbox.Max(), RevocationsApplied: f.applied.Load(),
		OnUnreachable: f.opts.OnUnreachable}
}

// errBacklogFull is why a call is refused while the outbox is full.
var errBacklogFull = errors.New("the fleet outbox is full: NATS has been unreachable too long")

// publishCheckpoint stages a signed audit checkpoint of agent for the
// collector and wakes the outbox. vkey is the note verifier key it
// verifies with. SignedAt is when this process first announced it.
func (f *fleetLink) publishCheckpoint(ctx context.Context, db *storage.DB, agent, vkey string, signed []byte) error {
	size, err := checkpointSize(signed)
	if err != nil {
		return err
	}
	m, err := fleet.Checkpoint{Origin: f.origin, Name: f.name, Agent: agent, Size: size, Checkpoint: string(signed),
		SignedAt: time.Now().UTC(), PublicKey: vkey}.Message()
	if err != nil {
		return err
	}
	if err := db.Commit(ctx, storage.Strict, func(tx *storage.Tx) error { return f.outbox.Stage(tx, m) }); err != nil {
		return err
	}
	f.outbox.Notify()
	return nil
}

// checkpointSize reads the tree size of a signed checkpoint note: its
// second line (origin, size, root hash, then the signatures).
func checkpointSize(signed []byte) (uint64, error) {
	lines := strings.SplitN(string(signed), "\n", 3)
	if len(lines) < 3 {
		return 0, errors.New("checkpoint note has no size line")
	}
	size, err := strconv.ParseUint(lines[1], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("checkpoint note size line %q: %w", lines[1], err)
	}
	return size, nil
}
