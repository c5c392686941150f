package caddymodule

import (
	"time"

	"github.com/oklog/ulid/v2"
	"go.uber.org/zap"

	"github.com/asap-sidecar/asap-sidecar/caddymodule/delegation"
	"github.com/asap-sidecar/asap-sidecar/caddymodule/metering"
	"github.com/asap-sidecar/asap-sidecar/caddymodule/protocol"
	"github.com/asap-sidecar/asap-sidecar/storage"
)

// callRecord is what the sidecar writes for one forwarded call.
type callRecord struct {
	agent  string
	failed bool
	// count says whether the outcome counters move (metering on).
	count bool
	// reservation is the call's delegation slots, persisted with the task.
	reservation *delegation.Reservation
	// event is the usage event; nil when the agent never answered
	// (unreachable, timed out, cut off), which is not usage.
	event *metering.Event
	// dedup is the envelope id: a retry of it is not metered twice.
	dedup string
}

// account builds one record per forwarded call of req that has anything
// to write: metering's event and counters, or the delegation counts.
func (h *Handler) account(req *protocol.Request, grants []grant, out outcome, elapsed time.Duration) []callRecord {
	now := time.Now().UTC()
	recs := make([]callRecord, 0, len(req.Calls))
	for i, c := range req.Calls {
		if c.Err != nil {
			continue
		}
		g := grants[i]
		if !h.metering && (g.reservation == nil || out.noAnswer) {
			continue
		}
		env := &c.Envelope
		rec := callRecord{agent: h.Agent, dedup: env.ID, count: h.metering}
		if !out.noAnswer {
			rec.reservation = g.reservation
		}
		if rec.agent == "" {
			rec.agent = env.Recipient
		}
		rep, answered := replyFor(req, c.ID, out.replies)
		rec.failed = out.failAll || (answered && rep.Failed())
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
			TaskID:      rep.TaskID,
			AgentID:     rec.agent,
			ConsumerID:  env.Sender,
			TokensIn:    m.TokensIn,
			TokensOut:   m.TokensOut,
			APICalls:    m.APICalls,
			DurationMS:  elapsed.Milliseconds(),
			Timestamp:   now,
			Status:      rep.Status,
			PayloadType: env.Type().String(),
			EnvelopeID:  env.ID,
		}
		if g.chain != nil {
			ev.DelegationID = g.chain.Leaf().Claims.ID
			ev.RootIssuer = g.chain.Root().Claims.Issuer
		}
		switch {
		case ev.Status != "":
		case rec.failed:
			ev.Status = protocol.StatusFailed
		default:
			ev.Status = protocol.StatusCompleted
		}
		if ev.TaskID == "" {
			// Calls that are not tasks (and agents that name none) are
			// metered under their envelope id.
			ev.TaskID = env.ID
		}
		if ev.TaskID == "" {
			ev.TaskID = "anon_" + ulid.Make().String()
		}
		rec.event = ev
		recs = append(recs, rec)
	}
	return recs
}

// persist hands the records to the commit pipeline. Counters always move;
// with metering off no event is kept. Prometheus sees an event once its
// write is done, and a deduplicated retry never.
func (h *Handler) persist(db *storage.DB, recs []callRecord) *storage.Pending {
	meter := metering.New(db, h.Retention.Std())
	recorded := make([]bool, len(recs))
	now := time.Now()
	write := func(tx *storage.Tx) error {
		clear(recorded) // the pipeline may run this more than once
		for i := range recs {
			if res := recs[i].reservation; res != nil {
				if err := res.Stage(tx, now); err != nil {
					return err
				}
			}
			if !recs[i].count {
				continue
			}
			if err := metering.CountOutcome(tx, recs[i].agent, recs[i].failed); err != nil {
				return err
			}
			if recs[i].event == nil {
				continue
			}
			ok, err := meter.Put(tx, recs[i].event, recs[i].dedup)
			if err != nil {
				return err
			}
			recorded[i] = ok
		}
		return nil
	}
	then := func(err error) {
		for i := range recs {
			recs[i].reservation.Finish()
		}
		if err != nil {
			return
		}
		for i := range recs {
			if recorded[i] {
				observe(recs[i].event)
			}
		}
	}
	return db.SubmitThen(h.durability, write, then)
}
