package caddymodule

import (
	"context"
	"time"

	"github.com/oklog/ulid/v2"
	"go.uber.org/zap"

	"github.com/asap-sidecar/asap-sidecar/caddymodule/audit"
	"github.com/asap-sidecar/asap-sidecar/caddymodule/delegation"
	"github.com/asap-sidecar/asap-sidecar/caddymodule/metering"
	"github.com/asap-sidecar/asap-sidecar/caddymodule/protocol"
	"github.com/asap-sidecar/asap-sidecar/storage"
)

// callRecord is what the sidecar writes for one forwarded call, all in the
// task's one transaction.
type callRecord struct {
	agent  string
	failed bool
	// reservation is the call's delegation slots, persisted with the task.
	reservation *delegation.Reservation
	// event is the usage event (metering on); nil when the agent never
	// answered (unreachable, timed out, cut off), which is not usage.
	event *metering.Event
	// dedup is the envelope id: a retry of it is not metered twice;
	// digest tells a retry from another call under the same id.
	dedup  string
	digest []byte
	// trail is the call's audit entries (audit on): task.started and
	// task.completed or task.failed; usage is added once the event is
	// known to be new.
	trail []audit.Record
	usage *audit.Record
}

// account builds one record per forwarded call of the exchange that has
// anything to write: usage and counters, audit entries, or delegation
// counts.
func (h *Handler) account(x *exchange) []callRecord {
	req, out, started, elapsed := x.req, x.out, x.started, x.elapsed
	// Microseconds: every timestamp the APIs answer parses in any Python.
	now := time.Now().UTC().Truncate(time.Microsecond)
	recs := make([]callRecord, 0, len(req.Calls))
	for i, c := range req.Calls {
		if c.Err != nil {
			continue
		}
		g := x.grants[i]
		if !h.metering && !h.audit && (g.reservation == nil || out.noAnswer) {
			continue
		}
		env := &c.Envelope
		rec := callRecord{agent: h.agentOf(env), dedup: env.ID}
		if x.ids != nil {
			rec.digest = x.ids[i].digest[:]
		}
		if !out.noAnswer {
			rec.reservation = g.reservation
		}
		rep := x.results[i].reply
		rec.failed = x.results[i].failed
		// A failed call is failed whatever status its payload claims, so
		// the event and the outcome counters agree.
		status := rep.Status
		switch {
		case rec.failed:
			status = protocol.StatusFailed
		case status == "":
			status = protocol.StatusCompleted
		}
		taskID := rep.TaskID
		if taskID == "" {
			// Calls that are not tasks (and agents that name none) are
			// recorded under their envelope id.
			taskID = env.ID
		}
		if taskID == "" {
			taskID = "anon_" + ulid.Make().String()
		}
		if h.audit {
			rec.trail = h.taskTrail(env, g, rec, out, rep, taskID, status, started, elapsed)
		}
		if out.noAnswer || !h.metering {
			recs = append(recs, rec)
			continue
		}
		m := metering.ParseMetrics(rep.Metrics)
		if len(m.Problems) > 0 {
			h.logger.Warn("agent reported unusable metrics; counted as 0",
				zap.String("agent", rec.agent), zap.String("envelope_id", env.ID), zap.Strings("values", m.Problems))
		}
		ev := &metering.Event{
			TaskID:      taskID,
			AgentID:     rec.agent,
			ConsumerID:  env.Sender,
			TokensIn:    m.TokensIn,
			TokensOut:   m.TokensOut,
			APICalls:    m.APICalls,
			DurationMS:  elapsed.Milliseconds(),
			Timestamp:   now,
			Status:      status,
			PayloadType: env.Type().String(),
			EnvelopeID:  env.ID,
		}
		if g.chain != nil {
			ev.DelegationID = g.chain.Leaf().Claims.ID
			ev.RootIssuer = g.chain.Root().Claims.Issuer
		}
		rec.event = ev
		if h.audit {
			u := usageRecord(ev)
			rec.usage = &u
		}
		recs = append(recs, rec)
	}
	return recs
}

// agentOf is the protected agent a call is recorded for: the configured
// agent, else the envelope's recipient.
func (h *Handler) agentOf(env *protocol.Envelope) string {
	if h.Agent != "" {
		return h.Agent
	}
	return env.Recipient
}

// taskTrail is a call's task.started and task.completed/task.failed
// entries. The acting agent (agent_urn) is the sender, as in the
// reference; the protected agent is in the details.
func (h *Handler) taskTrail(env *protocol.Envelope, g grant, rec callRecord, out outcome, rep protocol.Reply,
	taskID, status string, started time.Time, elapsed time.Duration) []audit.Record {
	base := make(audit.Fields, 0, 12).
		Str("task_id", taskID).
		Str("envelope_id", env.ID).
		Str("agent", rec.agent).
		Str("consumer", env.Sender).
		Str("payload_type", env.Type().String())
	if g.chain != nil {
		base = base.Str("delegation_id", g.chain.Leaf().Claims.ID).Str("root_issuer", g.chain.Root().Claims.Issuer)
	}
	startedFields := base.Str("started_at", started.UTC().Format(audit.TimeFormat))
	finished := append(make(audit.Fields, 0, 12), base...).
		Str("status", status).
		Int("http_status", int64(out.httpCode)).
		Int("duration_ms", elapsed.Milliseconds())
	op := audit.OpTaskCompleted
	if rec.failed {
		op = audit.OpTaskFailed
		if out.noAnswer {
			finished = finished.Int("http_status", int64(out.status)).Str("reason", "agent did not answer")
		}
		if rep.ErrorCode != 0 {
			finished = finished.Int("error_code", int64(rep.ErrorCode))
		}
	}
	return []audit.Record{
		startedFields.Record(audit.OpTaskStarted, env.Sender),
		finished.Record(op, env.Sender),
	}
}

func usageRecord(e *metering.Event) audit.Record {
	d := make(audit.Fields, 0, 10).
		Str("envelope_id", e.EnvelopeID).Str("task_id", e.TaskID).Str("agent", e.AgentID).Str("consumer", e.ConsumerID).
		Int("tokens_in", e.TokensIn).Int("tokens_out", e.TokensOut).Int("api_calls", e.APICalls).Int("duration_ms", e.DurationMS)
	if e.DelegationID != "" {
		d = d.Str("delegation_id", e.DelegationID).Str("root_issuer", e.RootIssuer)
	}
	return d.Record(audit.OpUsageRecorded, e.ConsumerID)
}

// persist hands the records to the commit pipeline: delegation counts,
// outcome counters, usage events and audit entries go in one transaction.
// Strict: it returns once they are on disk, with the outcome. Relaxed: it
// returns at once, and the client does not wait for the commit.
// Prometheus sees an event once its write is done, and a deduplicated
// retry never.
func (h *Handler) persist(ctx context.Context, d *database, recs []callRecord, ids []callIdentity) error {
	meter := h.rt.usage(d)
	log := d.audit
	recorded := make([]bool, len(recs))
	now := time.Now()
	write := func(tx *storage.Tx) error {
		clear(recorded) // the pipeline may run this more than once
		var trail []audit.Record
		for i := range recs {
			r := &recs[i]
			if r.reservation != nil {
				if err := r.reservation.Stage(tx, now); err != nil {
					return err
				}
			}
			trail = append(trail, r.trail...)
			if !h.metering {
				continue
			}
			if err := metering.CountOutcome(tx, r.agent, r.failed); err != nil {
				return err
			}
			if r.event == nil {
				continue
			}
			ok, err := meter.PutCall(tx, r.event, r.dedup, r.digest)
			if err != nil {
				return err
			}
			recorded[i] = ok
			if ok && r.usage != nil {
				trail = append(trail, *r.usage)
			}
			if ok && d.fleet != nil {
				if err := d.fleet.publishUsage(tx, r.event, r.dedup); err != nil {
					return err
				}
			}
		}
		if len(trail) > 0 {
			if err := log.Stage(tx, now, trail...); err != nil {
				return err
			}
		}
		return nil
	}
	then := func(err error) {
		for i := range recs {
			recs[i].reservation.Finish()
		}
		releaseIdentities(d, ids)
		if err != nil {
			return
		}
		if d.fleet != nil {
			d.fleet.outbox.Notify()
		}
		for i := range recs {
			if recorded[i] {
				observe(recs[i].event)
			}
		}
	}
	if h.durability == storage.Strict {
		return d.db.CommitThen(ctx, storage.Strict, write, then)
	}
	d.db.SubmitThen(h.durability, write, then)
	return nil
}
