package caddymodule

import (
	"context"
	"time"

	"github.com/asap-sidecar/asap-sidecar/caddymodule/protocol"
)

// exchange is one request's calls on their way through the sidecar,
// whatever carried them (a POST body, a batch, WebSocket frames): what
// the admission checks granted each call, and, once the agent answered,
// each call's result, worked out once for the SLA sample, the records
// and the answer alike.
type exchange struct {
	db     *database
	req    *protocol.Request
	grants []grant        // by call index: delegation chain and slots
	ids    []callIdentity // by call index: envelope-id claims (metering on)

	started time.Time
	elapsed time.Duration
	out     outcome
	results []callResult // by call index, set by settle

	// recorded: the records (and with them the id claims) were handed to
	// the commit pipeline, which releases the claims once they are stored.
	recorded bool
}

// callResult is what the agent's answer means for one forwarded call.
type callResult struct {
	reply  protocol.Reply
	failed bool
}

// settle takes the agent's answer (or its absence) and works out every
// forwarded call's result.
func (x *exchange) settle(out outcome) {
	x.out = out
	x.results = make([]callResult, len(x.req.Calls))
	for i := range x.req.Calls {
		c := &x.req.Calls[i]
		if c.Err != nil {
			continue
		}
		rep, answered := replyFor(x.req, c, out.replies)
		x.results[i] = callResult{
			reply: rep,
			// Failed: the agent was not reached or answered 5xx or
			// garbage, left the call unanswered (in an answer small
			// enough to read whole), or answered a JSON-RPC error or a
			// failed task.
			failed: out.failAll || (!answered && !out.truncated) || rep.Failed(),
		}
	}
}

// release gives back the id claims of an exchange whose records were
// never handed over (refused, or nothing to record).
func (x *exchange) release() {
	if !x.recorded {
		releaseIdentities(x.db, x.ids)
	}
}

// record is the accounting step every transport shares: the SLA sample,
// the slots of calls the agent never answered given back, then one
// record per call (usage, counters, audit, delegation counts) handed to
// the commit pipeline. With strict durability it waits, within ctx, until
// the records are on disk.
func (h *Handler) record(ctx context.Context, x *exchange) error {
	if x.out.noAnswer {
		releaseUnanswered(x.grants)
	}
	h.observe(x)
	recs := h.account(x)
	if len(recs) == 0 {
		return nil
	}
	x.recorded = true
	return h.persist(ctx, x.db, recs, x.ids)
}
