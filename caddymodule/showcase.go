package caddymodule

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/coder/websocket"
	"github.com/oklog/ulid/v2"
	"github.com/transparency-dev/formats/log"
	"github.com/transparency-dev/merkle/proof"
	"github.com/transparency-dev/merkle/rfc6962"
	"golang.org/x/mod/sumdb/note"

	"github.com/asap-sidecar/asap-sidecar/caddymodule/delegation"
)

// The showcase's client side: it plays the enterprise, the research agent
// (the delegator and a client), its worker sub-agent and the operator,
// over the sidecar's public surfaces only — the ASAP endpoint (HTTP and
// WebSocket) and the admin API. Every step checks what it observed and
// fails with what it expected and what it saw.

// demoStep is one step of the showcase: run prints what it does and
// returns the one-line conclusion of a pass, or what went wrong.
type demoStep struct {
	title string
	run   func(ctx context.Context) (string, error)
}

// runDemoSteps runs steps in order, printing each with ✓ or ✗, and stops
// at the first that fails: later steps build on it.
func runDemoSteps(ctx context.Context, w io.Writer, steps []demoStep) error {
	n := len(steps)
	for i, st := range steps {
		fmt.Fprintf(w, "\n── %d/%d %s\n", i+1, n, st.title)
		why, err := st.run(ctx)
		if ctx.Err() != nil {
			if err == nil {
				err = ctx.Err()
			}
			err = fmt.Errorf("the showcase ran out of time (--timeout): %w", err)
		}
		if err != nil {
			fmt.Fprintf(w, "✗ %d/%d %v\n", i+1, n, err)
			fmt.Fprintf(w, "\nShowcase FAILED at step %d of %d: %s.\n", i+1, n, st.title)
			return fmt.Errorf("showcase step %d/%d (%s): %w", i+1, n, st.title, err)
		}
		fmt.Fprintf(w, "✓ %d/%d %s\n", i+1, n, why)
	}
	fmt.Fprintf(w, "\nAll %d steps passed.\n", n)
	return nil
}

// showcase holds what the steps hand on to each other.
type showcase struct {
	out    io.Writer
	sc     *demoSidecar
	client *http.Client

	researchChain, researchID string // enterprise → research
	workerChain, workerID     string // enterprise → research → worker
	workerWS                  *websocket.Conn
	sockets                   []*websocket.Conn
	// transport of each envelope id sent, for the usage listing
	sent map[string]string
}

func newShowcase(out io.Writer, sc *demoSidecar) *showcase {
	return &showcase{out: out, sc: sc, client: &http.Client{Timeout: 30 * time.Second}, sent: map[string]string{}}
}

// close closes the sockets the steps opened.
func (s *showcase) close() {
	for _, c := range s.sockets {
		c.Close(websocket.StatusNormalClosure, "showcase over")
	}
}

func (s *showcase) run(ctx context.Context) error {
	fmt.Fprintf(s.out, `ASAP sidecar showcase
   sidecar  %s/asap  guarding %s (delegation required)
   agent    %s       the demo agent (skills echo, sleep, fail)
   admin    %s/asap/status
   files    %s (Caddyfile, keys, tokens, data, caddy.log)
`, s.sc.sidecarURL, demoAgentURN, s.sc.agentURL, s.sc.adminURL, s.sc.dir)
	return runDemoSteps(ctx, s.out, []demoStep{
		{"An enterprise root delegates to the research agent (max_tasks 5)", s.stepRoot},
		{"The research agent re-delegates a narrower token to its worker", s.stepAttenuate},
		{"Tasks run over HTTP POST and WebSocket, and are metered", s.stepTasks},
		{"The sixth task is refused", s.stepLimit},
		{"The delegator reads usage", s.stepUsage},
		{"The worker's token is revoked", s.stepRevoke},
		{"The agent slows down: a subscriber gets an SLA breach", s.stepSLA},
		{"The audit log verifies, with an inclusion proof checked here", s.stepAudit},
	})
}

func (s *showcase) say(format string, a ...any) {
	fmt.Fprintf(s.out, "   "+format+"\n", a...)
}

// --- the steps ----------------------------------------------------------------

func (s *showcase) stepRoot(ctx context.Context) (string, error) {
	pubFile := filepath.Join(s.sc.keysDir, "enterprise.pub")
	s.say("the enterprise's key pair was generated in %s; the sidecar trusts its public half:", s.sc.keysDir)
	s.say("    trust %s %s", enterpriseURN, pubFile)
	five := int64(5)
	grant := delegation.Grant{
		Issuer: enterpriseURN, Delegate: researchURN, Scopes: []string{"task.execute", "task.cancel"},
		TTL: time.Hour, MaxTasks: &five,
		// Binding research's key lets it re-delegate with no
		// configuration on the sidecar (step 2).
		CnfJWK: delegation.PublicJWK(s.sc.researchKey.Public().(ed25519.PublicKey)),
	}
	m, err := delegation.Mint(grant, s.sc.enterpriseKey)
	if err != nil {
		return "", fmt.Errorf("minting the enterprise's token: %w", err)
	}
	s.researchChain, s.researchID = m.Chain, m.Claims.ID
	s.saveToken("research.chain", m.Chain)
	s.say("enterprise minted %s: %s → %s, scopes %s, max_tasks 5, expires in 1h, bound to research's key (cnf)",
		m.Claims.ID, enterpriseURN, researchURN, strings.Join(m.Claims.Scopes, ","))

	rogue, err := delegation.GenerateKey()
	if err != nil {
		return "", err
	}
	forged, err := delegation.Mint(grant, rogue)
	if err != nil {
		return "", fmt.Errorf("minting the forged token: %w", err)
	}
	status, a, err := s.post(ctx, forged.Chain, s.task(researchURN, "echo", echoInput("forged", 1, 1)))
	if err != nil {
		return "", err
	}
	s.say("a forgery (the same claims, signed by another key) sent as research → HTTP %d, %s", status, a)
	if err := a.refused(-32054, "bad_signature"); err != nil {
		return "", fmt.Errorf("the forged token: %w", err)
	}
	sum, err := s.usageSummary(ctx)
	if err != nil {
		return "", err
	}
	if sum.TotalTasks != 0 {
		return "", fmt.Errorf("the forgery was refused, yet the Usage API counts %d tasks, expected 0", sum.TotalTasks)
	}
	return "the sidecar accepts chains rooted in the enterprise's key; a forgery is refused and never reaches the agent", nil
}

func (s *showcase) stepAttenuate(ctx context.Context) (string, error) {
	trusted := map[string]ed25519.PublicKey{enterpriseURN: s.sc.enterpriseKey.Public().(ed25519.PublicKey)}
	parent, err := offlineParent(s.researchChain, trusted)
	if err != nil {
		return "", fmt.Errorf("research checking its own token: %w", err)
	}
	three := int64(3)
	m, err := delegation.Mint(delegation.Grant{
		Issuer: researchURN, Delegate: workerURN, Scopes: []string{"task.execute"},
		TTL: 10 * time.Minute, MaxTasks: &three, Parent: parent,
	}, s.sc.researchKey)
	if err != nil {
		return "", fmt.Errorf("research minting the worker's token: %w", err)
	}
	s.workerChain, s.workerID = m.Chain, m.Claims.ID
	s.saveToken("worker.chain", m.Chain)
	links := strings.Count(m.Chain, ",") + 1
	s.say("research minted %s: %s → %s, scopes task.execute (no task.cancel), max_tasks 3, expires in 10m (its own: 1h)",
		m.Claims.ID, researchURN, workerURN)
	s.say("the worker sends a chain of %d links, leaf first: worker's token, then research's (prf names it by hash)", links)
	if links != 2 {
		return "", fmt.Errorf("the worker's chain has %d links, expected 2", links)
	}
	if pexp := parent.Leaf().Claims.Expiry; m.Claims.Expiry == nil || pexp == nil || *m.Claims.Expiry >= *pexp {
		return "", errors.New("the worker's token does not expire before research's")
	}
	status, a, err := s.post(ctx, s.workerChain, s.envelope(workerURN, "task.cancel", map[string]any{"task_id": "task_" + ulid.Make().String()}))
	if err != nil {
		return "", err
	}
	s.say("the worker tries task.cancel, which research kept for itself → HTTP %d, %s", status, a)
	if err := a.refused(-32057, "action_not_granted"); err != nil {
		return "", fmt.Errorf("task.cancel with the worker's chain: %w", err)
	}
	return "the worker holds a 2-link chain narrower than its parent, and the sidecar enforces the narrowing", nil
}

// The figures the demo agent reports for the showcase's tasks (it takes
// them from the input), so the usage can be checked exactly.
const (
	researchTokensIn, researchTokensOut = 100, 40
	workerTokensIn, workerTokensOut     = 50, 20
)

func (s *showcase) stepTasks(ctx context.Context) (string, error) {
	want := map[string][2]int64{} // envelope id → tokens in, out
	for i := 1; i <= 2; i++ {
		env := s.task(researchURN, "echo", echoInput(fmt.Sprintf("research task %d", i), researchTokensIn, researchTokensOut))
		status, a, err := s.post(ctx, s.researchChain, env)
		if err != nil {
			return "", err
		}
		s.say("research  POST /asap    echo → HTTP %d, %s", status, a)
		if err := a.completed(); err != nil {
			return "", fmt.Errorf("research's task %d: %w", i, err)
		}
		want[env["id"].(string)] = [2]int64{researchTokensIn, researchTokensOut}
	}
	conn, err := s.dialWS(ctx, s.workerChain)
	if err != nil {
		return "", fmt.Errorf("the worker opening /asap/ws: %w", err)
	}
	s.workerWS = conn
	s.say("worker    opened a WebSocket on /asap/ws with its chain (checked at the handshake and again on every frame)")
	for i := 1; i <= 2; i++ {
		env := s.task(workerURN, "echo", echoInput(fmt.Sprintf("worker task %d", i), workerTokensIn, workerTokensOut))
		a, err := s.wsCall(ctx, conn, env)
		if err != nil {
			return "", err
		}
		s.say("worker    WS /asap/ws    echo → %s", a)
		if err := a.completed(); err != nil {
			return "", fmt.Errorf("the worker's WebSocket task %d: %w", i, err)
		}
		s.sent[env["id"].(string)] = "WebSocket"
		want[env["id"].(string)] = [2]int64{workerTokensIn, workerTokensOut}
	}
	env := s.task(workerURN, "echo", echoInput("worker task 3", workerTokensIn, workerTokensOut))
	status, a, err := s.post(ctx, s.workerChain, env)
	if err != nil {
		return "", err
	}
	s.say("worker    POST /asap    echo → HTTP %d, %s", status, a)
	if err := a.completed(); err != nil {
		return "", fmt.Errorf("the worker's HTTP task: %w", err)
	}
	want[env["id"].(string)] = [2]int64{workerTokensIn, workerTokensOut}

	var usage struct {
		Data []struct {
			ConsumerID   string `json:"consumer_id"`
			EnvelopeID   string `json:"envelope_id"`
			TokensIn     int64  `json:"tokens_in"`
			TokensOut    int64  `json:"tokens_out"`
			DelegationID string `json:"delegation_id"`
			RootIssuer   string `json:"root_issuer"`
		} `json:"data"`
	}
	if err := s.admin(ctx, http.MethodGet, "/asap/usage?limit=100", http.StatusOK, &usage); err != nil {
		return "", err
	}
	s.say("GET /asap/usage → %d events:", len(usage.Data))
	var in, out int64
	for _, e := range usage.Data {
		transport := s.sent[e.EnvelopeID]
		if transport == "" {
			transport = "HTTP"
		}
		s.say("    %-24s %-9s tokens in %3d, out %3d  (token %s, root %s)", e.ConsumerID, transport, e.TokensIn, e.TokensOut, e.DelegationID, e.RootIssuer)
		w, ok := want[e.EnvelopeID]
		if !ok {
			return "", fmt.Errorf("the Usage API lists envelope %q, which no showcase task sent", e.EnvelopeID)
		}
		if e.TokensIn != w[0] || e.TokensOut != w[1] {
			return "", fmt.Errorf("envelope %s was metered at %d in / %d out, but the agent reported %d / %d", e.EnvelopeID, e.TokensIn, e.TokensOut, w[0], w[1])
		}
		if e.RootIssuer != enterpriseURN {
			return "", fmt.Errorf("envelope %s was metered under root issuer %q, expected %s", e.EnvelopeID, e.RootIssuer, enterpriseURN)
		}
		delete(want, e.EnvelopeID)
		in, out = in+e.TokensIn, out+e.TokensOut
	}
	if len(want) > 0 {
		return "", fmt.Errorf("%d of the 5 tasks are missing from the Usage API", len(want))
	}
	return fmt.Sprintf("5 tasks ran (3 over HTTP, 2 over WebSocket), each metered with what the agent reported: %d tokens in, %d out", in, out), nil
}

func (s *showcase) stepLimit(ctx context.Context) (string, error) {
	status, a, err := s.post(ctx, s.researchChain, s.task(researchURN, "echo", echoInput("research task 6", researchTokensIn, researchTokensOut)))
	if err != nil {
		return "", err
	}
	s.say("research  POST /asap    echo (the sixth task under the root) → HTTP %d, %s", status, a)
	if err := a.refused(-32059, "max_tasks_reached"); err != nil {
		return "", fmt.Errorf("the sixth task: %w", err)
	}
	return "max_tasks 5 on the root counts the whole chain (2 by research + 3 by the worker): the sixth is refused before the agent", nil
}

// usageSummaryAnswer is /asap/usage/summary.
type usageSummaryAnswer struct {
	TotalTasks      int64 `json:"total_tasks"`
	TotalTokens     int64 `json:"total_tokens"`
	UniqueConsumers int   `json:"unique_consumers"`
}

func (s *showcase) usageSummary(ctx context.Context) (usageSummaryAnswer, error) {
	var sum usageSummaryAnswer
	err := s.admin(ctx, http.MethodGet, "/asap/usage/summary", http.StatusOK, &sum)
	return sum, err
}

func (s *showcase) stepUsage(ctx context.Context) (string, error) {
	var consumers struct {
		Data []struct {
			ConsumerID  string `json:"consumer_id"`
			TotalTasks  int64  `json:"total_tasks"`
			TotalTokens int64  `json:"total_tokens"`
		} `json:"data"`
	}
	if err := s.admin(ctx, http.MethodGet, "/asap/usage/consumers", http.StatusOK, &consumers); err != nil {
		return "", err
	}
	want := map[string][2]int64{
		researchURN: {2, 2 * (researchTokensIn + researchTokensOut)},
		workerURN:   {3, 3 * (workerTokensIn + workerTokensOut)},
	}
	s.say("GET /asap/usage/consumers:")
	for _, c := range consumers.Data {
		s.say("    %-24s %d tasks, %d tokens", c.ConsumerID, c.TotalTasks, c.TotalTokens)
		w, ok := want[c.ConsumerID]
		if !ok {
			return "", fmt.Errorf("unexpected consumer %q in the Usage API", c.ConsumerID)
		}
		if c.TotalTasks != w[0] || c.TotalTokens != w[1] {
			return "", fmt.Errorf("%s: %d tasks and %d tokens, expected %d and %d", c.ConsumerID, c.TotalTasks, c.TotalTokens, w[0], w[1])
		}
		delete(want, c.ConsumerID)
	}
	if len(want) > 0 {
		return "", fmt.Errorf("consumers missing from the Usage API: %v", consumerNames(want))
	}
	sum, err := s.usageSummary(ctx)
	if err != nil {
		return "", err
	}
	s.say("GET /asap/usage/summary: %d tasks, %d tokens, %d consumers", sum.TotalTasks, sum.TotalTokens, sum.UniqueConsumers)
	total := int64(2*(researchTokensIn+researchTokensOut) + 3*(workerTokensIn+workerTokensOut))
	if sum.TotalTasks != 5 || sum.TotalTokens != total || sum.UniqueConsumers != 2 {
		return "", fmt.Errorf("the summary says %d tasks, %d tokens, %d consumers; expected 5, %d, 2", sum.TotalTasks, sum.TotalTokens, sum.UniqueConsumers, total)
	}
	return fmt.Sprintf("the delegator sees 5 tasks and %d tokens, per consumer; the refused calls cost nothing", total), nil
}

func consumerNames(m map[string][2]int64) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

func (s *showcase) stepRevoke(ctx context.Context) (string, error) {
	if err := s.admin(ctx, http.MethodDelete, "/asap/delegations/"+s.workerID+"?force=true", http.StatusNoContent, nil); err != nil {
		return "", err
	}
	s.say("DELETE /asap/delegations/%s?force=true → 204", s.workerID)
	status, a, err := s.post(ctx, s.workerChain, s.task(workerURN, "echo", echoInput("after revocation", 1, 1)))
	if err != nil {
		return "", err
	}
	s.say("worker    POST /asap    echo → HTTP %d, %s", status, a)
	if err := a.refused(-32056, "revoked"); err != nil {
		return "", fmt.Errorf("the worker's call after revocation: %w", err)
	}
	if a.Error.Data.JTI != s.workerID {
		return "", fmt.Errorf("the refusal names link %q, expected the revoked %s", a.Error.Data.JTI, s.workerID)
	}
	a, err = s.wsCall(ctx, s.workerWS, s.task(workerURN, "echo", echoInput("after revocation, on the open socket", 1, 1)))
	if err != nil {
		return "", err
	}
	s.say("worker    WS /asap/ws    echo on the socket opened before → %s", a)
	if err := a.refused(-32056, "revoked"); err != nil {
		return "", fmt.Errorf("the worker's frame after revocation: %w", err)
	}
	status, a, err = s.post(ctx, s.researchChain, s.task(researchURN, "echo", echoInput("parent after revocation", 1, 1)))
	if err != nil {
		return "", err
	}
	s.say("research  POST /asap    echo → HTTP %d, %s (its own token is not revoked, only spent)", status, a)
	if err := a.refused(-32059, "max_tasks_reached"); err != nil {
		return "", fmt.Errorf("research's call after the worker's revocation: %w", err)
	}
	return "the revocation applies at once, on HTTP and on an already open socket, and only to the worker's link", nil
}

func (s *showcase) stepSLA(ctx context.Context) (string, error) {
	// A fresh token for this step: the root's five tasks are spent.
	// This one the sidecar signs itself, with the agent's key.
	var minted struct {
		Token string `json:"token"`
	}
	body := fmt.Sprintf(`{"delegate":%q,"scopes":["task.execute"],"expires_in_seconds":600,"max_tasks":20}`, researchURN)
	if err := s.adminBody(ctx, http.MethodPost, "/asap/delegations", body, http.StatusCreated, &minted); err != nil {
		return "", err
	}
	s.say("POST /asap/delegations → 201: a token for research (max_tasks 20) signed by the sidecar with the agent's key")
	var open struct {
		Count int `json:"count"`
	}
	if err := s.admin(ctx, http.MethodGet, "/asap/sla/breaches?agent_id="+demoAgentURN, http.StatusOK, &open); err != nil {
		return "", err
	}
	if open.Count != 0 {
		return "", fmt.Errorf("%d SLA breaches were already recorded before the agent slowed down, expected none", open.Count)
	}

	conn, err := s.dialWS(ctx, minted.Token)
	if err != nil {
		return "", fmt.Errorf("the subscriber opening /asap/ws: %w", err)
	}
	reply, err := wsRoundTrip(ctx, conn, []byte(`{"jsonrpc":"2.0","method":"sla.subscribe","id":1}`))
	if err != nil {
		return "", fmt.Errorf("sla.subscribe: %w", err)
	}
	var sub struct {
		Result struct {
			Subscribed bool `json:"subscribed"`
		} `json:"result"`
	}
	if json.Unmarshal(reply, &sub) != nil || !sub.Result.Subscribed {
		return "", fmt.Errorf("sla.subscribe was answered %s, expected {\"subscribed\":true}", reply)
	}
	s.say("subscriber WS /asap/ws  sla.subscribe → %s", reply)

	type breach struct {
		ID         string `json:"id"`
		AgentID    string `json:"agent_id"`
		BreachType string `json:"breach_type"`
		Threshold  string `json:"threshold"`
		Actual     string `json:"actual"`
		Severity   string `json:"severity"`
	}
	breaches := make(chan breach, 1)
	readErr := make(chan error, 1)
	go func() {
		for {
			_, msg, err := conn.Read(ctx)
			if err != nil {
				readErr <- err
				return
			}
			var n struct {
				Method string `json:"method"`
				Params struct {
					Breach breach `json:"breach"`
				} `json:"params"`
			}
			if json.Unmarshal(msg, &n) == nil && n.Method == "sla.breach" && n.Params.Breach.BreachType == "latency" {
				breaches <- n.Params.Breach
				return
			}
		}
	}()

	const slowMS, maxSlow = 500, 10
	s.say("the agent slows down: tasks now take %dms (the demo agent's sleep skill); the SLA's max_latency_p95 is %s, judged on a 1m window once %d samples are in",
		slowMS, demoMaxP95, demoMinSamples)
	var got breach
	sent := 0
wait:
	for {
		select {
		case got = <-breaches:
			break wait
		case err := <-readErr:
			return "", fmt.Errorf("the subscriber's socket closed before any sla.breach: %w", err)
		default:
		}
		if sent == maxSlow {
			deadline := time.NewTimer(10 * time.Second)
			defer deadline.Stop()
			select {
			case got = <-breaches:
				break wait
			case err := <-readErr:
				return "", fmt.Errorf("the subscriber's socket closed before any sla.breach: %w", err)
			case <-deadline.C:
				return "", fmt.Errorf("no sla.breach reached the subscriber within 10s of the last of %d tasks of %dms (max_latency_p95 %s)", sent, slowMS, demoMaxP95)
			}
		}
		start := time.Now()
		env := s.task(researchURN, "sleep", map[string]any{"ms": slowMS, "tokens_in": 10, "tokens_out": 5})
		status, a, err := s.post(ctx, minted.Token, env)
		if err != nil {
			return "", err
		}
		sent++
		s.say("research  POST /asap    sleep → HTTP %d, %s in %s", status, a, time.Since(start).Round(time.Millisecond))
		if err := a.completed(); err != nil {
			return "", fmt.Errorf("slow task %d: %w", sent, err)
		}
	}
	s.say("subscriber ← sla.breach %s: %s p95 %s over %s, severity %s", got.ID, got.BreachType, got.Actual, got.Threshold, got.Severity)
	if got.AgentID != demoAgentURN || got.Threshold != demoMaxP95.String() {
		return "", fmt.Errorf("the breach is for %s with threshold %s, expected %s and %s", got.AgentID, got.Threshold, demoAgentURN, demoMaxP95)
	}
	var listed struct {
		Data []breach `json:"data"`
	}
	if err := s.admin(ctx, http.MethodGet, "/asap/sla/breaches?agent_id="+demoAgentURN, http.StatusOK, &listed); err != nil {
		return "", err
	}
	found := false
	for _, b := range listed.Data {
		found = found || b.ID == got.ID
	}
	if !found {
		return "", fmt.Errorf("GET /asap/sla/breaches does not list breach %s", got.ID)
	}
	s.say("GET /asap/sla/breaches lists %s", got.ID)
	return fmt.Sprintf("the slow tasks (%d sent by then) lifted the p95 over %s, and the subscriber was pushed a %s breach, no polling", sent, demoMaxP95, got.Severity), nil
}

func (s *showcase) stepAudit(ctx context.Context) (string, error) {
	var verify struct {
		Valid       bool   `json:"valid"`
		Size        uint64 `json:"size"`
		FirstBadSeq *int64 `json:"first_bad_seq"`
		Reason      string `json:"reason"`
	}
	if err := s.admin(ctx, http.MethodGet, "/asap/audit/verify", http.StatusOK, &verify); err != nil {
		return "", err
	}
	s.say("GET /asap/audit/verify → valid %v, %d entries", verify.Valid, verify.Size)
	if !verify.Valid {
		return "", fmt.Errorf("the audit log does not verify: %s (first bad seq %v)", verify.Reason, verify.FirstBadSeq)
	}

	var status struct {
		Agents []struct {
			Agent    string `json:"agent"`
			AuditKey string `json:"audit_key"`
		} `json:"agents"`
	}
	if err := s.admin(ctx, http.MethodGet, "/asap/status", http.StatusOK, &status); err != nil {
		return "", err
	}
	vkey := ""
	for _, a := range status.Agents {
		if a.Agent == demoAgentURN {
			vkey = a.AuditKey
		}
	}
	if vkey == "" {
		return "", fmt.Errorf("/asap/status gives no audit_key for %s", demoAgentURN)
	}
	s.say("GET /asap/status → audit_key %s", vkey)
	verifier, err := note.NewVerifier(vkey)
	if err != nil {
		return "", fmt.Errorf("the audit_key is not a note verifier key: %w", err)
	}
	signed, err := s.adminRaw(ctx, "/asap/audit/checkpoint")
	if err != nil {
		return "", err
	}
	cp, _, _, err := log.ParseCheckpoint(signed, demoAgentURN+"/audit", verifier)
	if err != nil {
		return "", fmt.Errorf("the checkpoint does not verify with the audit_key: %w", err)
	}
	s.say("GET /asap/audit/checkpoint → signature verified here; tree size %d, root %s", cp.Size, base64.StdEncoding.EncodeToString(cp.Hash))

	var list struct {
		Entries []struct {
			Seq       uint64          `json:"seq"`
			Timestamp string          `json:"timestamp"`
			Operation string          `json:"operation"`
			AgentURN  string          `json:"agent_urn"`
			Details   json.RawMessage `json:"details"`
			PrevHash  string          `json:"prev_hash"`
			Hash      string          `json:"hash"`
		} `json:"entries"`
	}
	if err := s.admin(ctx, http.MethodGet, "/asap/audit?operation=task.completed&urn="+workerURN+"&limit=1", http.StatusOK, &list); err != nil {
		return "", err
	}
	if len(list.Entries) == 0 {
		return "", errors.New("GET /asap/audit lists no task.completed entry for the worker")
	}
	e := list.Entries[0]
	s.say("GET /asap/audit?operation=task.completed&urn=%s → seq %d: %s", workerURN, e.Seq, e.Details)
	sum := sha256.Sum256([]byte(e.PrevHash + "|" + e.Timestamp + "|" + e.Operation + "|" + string(e.Details)))
	if hex.EncodeToString(sum[:]) != e.Hash {
		return "", fmt.Errorf("entry %d's hash does not follow from its fields: recomputed %x, stored %s", e.Seq, sum, e.Hash)
	}
	leafData, err := hex.DecodeString(e.Hash)
	if err != nil {
		return "", fmt.Errorf("entry %d's hash %q is not hex", e.Seq, e.Hash)
	}
	if e.Seq >= cp.Size {
		return "", fmt.Errorf("entry %d is not below the checkpoint's size %d", e.Seq, cp.Size)
	}
	var incl struct {
		LeafHash string   `json:"leaf_hash"`
		Hashes   [][]byte `json:"hashes"`
	}
	if err := s.admin(ctx, http.MethodGet, fmt.Sprintf("/asap/audit/proof/inclusion?seq=%d&size=%d", e.Seq, cp.Size), http.StatusOK, &incl); err != nil {
		return "", err
	}
	leaf := rfc6962.DefaultHasher.HashLeaf(leafData)
	if incl.LeafHash != base64.StdEncoding.EncodeToString(leaf) {
		return "", fmt.Errorf("the proof's leaf_hash %s is not the RFC 6962 leaf hash of entry %d's hash", incl.LeafHash, e.Seq)
	}
	if err := proof.VerifyInclusion(rfc6962.DefaultHasher, e.Seq, cp.Size, leaf, incl.Hashes, cp.Hash); err != nil {
		return "", fmt.Errorf("the inclusion proof of entry %d does not check out against the checkpoint: %w", e.Seq, err)
	}
	s.say("GET /asap/audit/proof/inclusion?seq=%d&size=%d → %d hashes; verified here against the checkpoint's root", e.Seq, cp.Size, len(incl.Hashes))
	// The check is not a formality: the same proof fails for an entry
	// whose content was changed by one byte.
	tampered := bytes.Clone(leafData)
	tampered[0] ^= 1
	if proof.VerifyInclusion(rfc6962.DefaultHasher, e.Seq, cp.Size, rfc6962.DefaultHasher.HashLeaf(tampered), incl.Hashes, cp.Hash) == nil {
		return "", errors.New("the inclusion proof also verifies for a tampered entry: it proves nothing")
	}
	s.say("the same proof for the entry with one bit changed → rejected, as it must be")
	var breaches struct {
		Count int `json:"count"`
	}
	if err := s.admin(ctx, http.MethodGet, "/asap/audit?operation=sla.breach", http.StatusOK, &breaches); err != nil {
		return "", err
	}
	s.say("GET /asap/audit?operation=sla.breach → %d entry (step 7's breach is in the log too)", breaches.Count)
	if breaches.Count != 1 {
		return "", fmt.Errorf("the audit log holds %d sla.breach entries, expected the 1 of step 7", breaches.Count)
	}
	return fmt.Sprintf("the log's %d entries chain up, and the worker's task is provably in the tree the agent's key signed", verify.Size), nil
}

// --- talking to the sidecar -----------------------------------------------------

// envelope is an ASAP envelope from sender to the demo agent.
func (s *showcase) envelope(sender, payloadType string, payload any) map[string]any {
	return map[string]any{
		"id": ulid.Make().String(), "asap_version": "0.1",
		"sender": sender, "recipient": demoAgentURN,
		"payload_type": payloadType, "payload": payload,
	}
}

// task is a task.request for skill with input.
func (s *showcase) task(sender, skill string, input map[string]any) map[string]any {
	return s.envelope(sender, "task.request", map[string]any{
		"conversation_id": "showcase", "skill_id": skill, "input": input,
	})
}

// echoInput is the input of an echo task; the demo agent reports the
// token figures it is given.
func echoInput(text string, in, out int) map[string]any {
	return map[string]any{"text": text, "tokens_in": in, "tokens_out": out}
}

func rpcCall(env map[string]any) []byte {
	b, _ := json.Marshal(map[string]any{"jsonrpc": "2.0", "method": "asap.send", "id": env["id"], "params": map[string]any{"envelope": env}})
	return b
}

// demoAnswer is the part of a JSON-RPC answer the showcase checks.
type demoAnswer struct {
	Result *struct {
		Envelope struct {
			PayloadType string `json:"payload_type"`
			Payload     struct {
				TaskID string `json:"task_id"`
				Status string `json:"status"`
			} `json:"payload"`
		} `json:"envelope"`
	} `json:"result"`
	Error *struct {
		Code    int    `json:"code"`
		Message string `json:"message"`
		Data    struct {
			Reason string `json:"reason"`
			Error  string `json:"error"`
			JTI    string `json:"jti"`
		} `json:"data"`
	} `json:"error"`
}

func (a demoAnswer) String() string {
	switch {
	case a.Error != nil:
		return fmt.Sprintf("%d %s", a.Error.Code, a.Error.Data.Reason)
	case a.Result != nil:
		p := a.Result.Envelope.Payload
		return fmt.Sprintf("%s %s", a.Result.Envelope.PayloadType, p.Status)
	}
	return "neither result nor error"
}

// completed checks a task ran: a task.response with status completed.
func (a demoAnswer) completed() error {
	if a.Error != nil {
		return fmt.Errorf("expected a completed task, got error %d %s: %s", a.Error.Code, a.Error.Data.Reason, a.Error.Data.Error)
	}
	if a.Result == nil || a.Result.Envelope.PayloadType != "task.response" || a.Result.Envelope.Payload.Status != "completed" {
		return fmt.Errorf("expected a task.response with status completed, got %s", a)
	}
	return nil
}

// refused checks the call was refused with code and reason.
func (a demoAnswer) refused(code int, reason string) error {
	if a.Error == nil {
		return fmt.Errorf("expected a refusal %d %s, got %s: it was let through", code, reason, a)
	}
	if a.Error.Code != code || a.Error.Data.Reason != reason {
		return fmt.Errorf("expected a refusal %d %s, got %d %s (%s)", code, reason, a.Error.Code, a.Error.Data.Reason, a.Error.Data.Error)
	}
	return nil
}

// post sends env to POST /asap with the delegation chain.
func (s *showcase) post(ctx context.Context, chain string, env map[string]any) (int, demoAnswer, error) {
	var a demoAnswer
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.sc.sidecarURL+"/asap", bytes.NewReader(rpcCall(env)))
	if err != nil {
		return 0, a, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set(delegation.Header, chain)
	resp, err := s.client.Do(req)
	if err != nil {
		return 0, a, fmt.Errorf("POST %s/asap: %w", s.sc.sidecarURL, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, a, fmt.Errorf("POST /asap: reading the answer: %w", err)
	}
	if err := json.Unmarshal(body, &a); err != nil {
		return 0, a, fmt.Errorf("POST /asap answered HTTP %d with something other than JSON-RPC: %.200s", resp.StatusCode, body)
	}
	return resp.StatusCode, a, nil
}

// dialWS opens /asap/ws on the sidecar with the delegation chain.
func (s *showcase) dialWS(ctx context.Context, chain string) (*websocket.Conn, error) {
	url := "ws" + strings.TrimPrefix(s.sc.sidecarURL, "http") + "/asap/ws"
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	conn, resp, err := websocket.Dial(dctx, url, &websocket.DialOptions{HTTPHeader: http.Header{delegation.Header: {chain}}})
	if err != nil {
		if resp != nil {
			return nil, fmt.Errorf("%s: HTTP %d: %w", url, resp.StatusCode, err)
		}
		return nil, fmt.Errorf("%s: %w", url, err)
	}
	s.sockets = append(s.sockets, conn)
	return conn, nil
}

// wsRoundTrip sends one frame and reads the next.
func wsRoundTrip(ctx context.Context, conn *websocket.Conn, frame []byte) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	if err := conn.Write(ctx, websocket.MessageText, frame); err != nil {
		return nil, fmt.Errorf("sending a WebSocket frame: %w", err)
	}
	_, msg, err := conn.Read(ctx)
	if err != nil {
		return nil, fmt.Errorf("reading the answer on the WebSocket: %w", err)
	}
	return msg, nil
}

// wsCall sends env as one frame and reads its answer.
func (s *showcase) wsCall(ctx context.Context, conn *websocket.Conn, env map[string]any) (demoAnswer, error) {
	var a demoAnswer
	msg, err := wsRoundTrip(ctx, conn, rpcCall(env))
	if err != nil {
		return a, err
	}
	if err := json.Unmarshal(msg, &a); err != nil {
		return a, fmt.Errorf("the WebSocket answer is not JSON-RPC: %.200s", msg)
	}
	return a, nil
}

// admin calls the admin API, checks the status and decodes the JSON
// answer into out (unless nil).
func (s *showcase) admin(ctx context.Context, method, path string, want int, out any) error {
	return s.adminBody(ctx, method, path, "", want, out)
}

func (s *showcase) adminBody(ctx context.Context, method, path, body string, want int, out any) error {
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, s.sc.adminURL+path, rd)
	if err != nil {
		return err
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := s.client.Do(req)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return fmt.Errorf("%s %s: reading the answer: %w", method, path, err)
	}
	if resp.StatusCode != want {
		return fmt.Errorf("%s %s answered HTTP %d, expected %d: %.300s", method, path, resp.StatusCode, want, b)
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			return fmt.Errorf("%s %s: the answer is not the JSON expected (%v): %.300s", method, path, err, b)
		}
	}
	return nil
}

// adminRaw GETs path from the admin API and returns the body of a 200.
func (s *showcase) adminRaw(ctx context.Context, path string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.sc.adminURL+path, nil)
	if err != nil {
		return nil, err
	}
	resp, err := s.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("GET %s: %w", path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("GET %s: reading the answer: %w", path, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s answered HTTP %d, expected 200: %.300s", path, resp.StatusCode, b)
	}
	return b, nil
}

// saveToken writes a token chain into the showcase's directory, for
// --keep users to try with curl.
func (s *showcase) saveToken(name, chain string) {
	if err := os.WriteFile(filepath.Join(s.sc.dir, name), []byte(chain+"\n"), 0o600); err != nil {
		s.say("(could not save %s: %v)", name, err)
	}
}
