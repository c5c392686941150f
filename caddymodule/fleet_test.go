package caddymodule

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/coder/websocket"
	natsgo "github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/asap-sidecar/asap-sidecar/caddymodule/audit"
	"github.com/asap-sidecar/asap-sidecar/caddymodule/delegation"
	"github.com/asap-sidecar/asap-sidecar/caddymodule/fleet"
	"github.com/asap-sidecar/asap-sidecar/caddymodule/metering"
	"github.com/asap-sidecar/asap-sidecar/caddymodule/protocol"
	"github.com/asap-sidecar/asap-sidecar/internal/freeport"
	"github.com/asap-sidecar/asap-sidecar/internal/natstest"
	"github.com/asap-sidecar/asap-sidecar/storage"
)

// fleetRig is n sidecars of one agent in one Caddy config, each with its
// own database and fleet membership, behind Caddy's own reverse_proxy
// load balancer, in front of one demo agent.
type fleetRig struct {
	t          testing.TB
	nats       *natstest.Server
	sidecars   []string // base URLs
	dirs       []string
	lb         string
	admin      string
	keyFile    string // the agent's private key, shared by the replicas
	ports      []int
	options    string
	fleetExtra string
	// agent, when set, is the sidecars' upstream instead of the demo agent.
	agent string
}

func (r *fleetRig) upstream() string {
	if r.agent != "" {
		return r.agent
	}
	return fmt.Sprintf("127.0.0.1:%d", r.ports[len(r.sidecars)+1])
}

// startFleetRig runs n sidecars with options in their asap blocks and
// fleetExtra in their fleet blocks.
func startFleetRig(t testing.TB, n int, nats *natstest.Server, options string, fleetExtra ...string) *fleetRig {
	t.Helper()
	caddyMu.Lock()
	t.Cleanup(caddyMu.Unlock)
	key, err := delegation.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	pemBytes, _ := delegation.PrivatePEM(key)
	dir := t.TempDir()
	r := &fleetRig{t: t, nats: nats, keyFile: filepath.Join(dir, "agent.key"), options: options, fleetExtra: strings.Join(fleetExtra, "\n\t\t\t")}
	if err := os.WriteFile(r.keyFile, pemBytes, 0o600); err != nil {
		t.Fatal(err)
	}
	r.ports = freeport.Ports(t, n+3) // sidecars, lb, agent, admin
	for i := 0; i < n; i++ {
		r.sidecars = append(r.sidecars, fmt.Sprintf("http://127.0.0.1:%d", r.ports[i]))
		r.dirs = append(r.dirs, filepath.Join(dir, fmt.Sprintf("db%d", i)))
	}
	r.lb = fmt.Sprintf("http://127.0.0.1:%d", r.ports[n])
	r.admin = fmt.Sprintf("127.0.0.1:%d", r.ports[n+2])
	r.load()
	t.Cleanup(func() {
		if err := caddy.Stop(); err != nil {
			t.Errorf("stopping caddy: %v", err)
		}
	})
	r.waitReady()
	return r
}

// waitReady waits until every sidecar set its fleet streams up (its
// revocation follower does at start): on a loaded machine that can take
// seconds, and a limited token meets fleet_unavailable until then.
func (r *fleetRig) waitReady() {
	r.t.Helper()
	app, err := runningApp()
	if err != nil {
		r.t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for _, dir := range r.dirs {
		d, err := app.stores[dir].Wait(context.Background(), 10*time.Second)
		if err != nil {
			r.t.Fatal(err)
		}
		for !d.fleet.client.Ready() {
			if time.Now().After(deadline) {
				r.t.Fatalf("the fleet sidecar on %s did not set its streams up within 30s", dir)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
}

func (r *fleetRig) caddyfile() string {
	n := len(r.sidecars)
	var b strings.Builder
	fmt.Fprintf(&b, "{\n\tadmin %s\n\tlog {\n\t\tlevel ERROR\n\t}\n}\n", r.admin)
	var upstreams []string
	for i := 0; i < n; i++ {
		fmt.Fprintf(&b, ":%d {\n\tbind 127.0.0.1\n\tasap {\n\t\tagent urn:asap:agent:demo\n\t\tkey %s\n\t\tstorage %s\n\t\t%s\n\t\tfleet {\n\t\t\tnats %s\n\t\t\tname replica-%d\n\t\t\t%s\n\t\t}\n\t}\n\treverse_proxy %s\n}\n",
			r.ports[i], r.keyFile, r.dirs[i], r.options, r.nats.URL(), i, r.fleetExtra, r.upstream())
		upstreams = append(upstreams, fmt.Sprintf("127.0.0.1:%d", r.ports[i]))
	}
	fmt.Fprintf(&b, ":%d {\n\tbind 127.0.0.1\n\treverse_proxy %s {\n\t\tlb_policy round_robin\n\t}\n}\n", r.ports[n], strings.Join(upstreams, " "))
	fmt.Fprintf(&b, ":%d {\n\tbind 127.0.0.1\n\tasap_demo_agent\n}\n", r.ports[n+1])
	return b.String()
}

func (r *fleetRig) load() {
	r.t.Helper()
	cfg, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(r.caddyfile()), nil)
	if err != nil {
		r.t.Fatalf("adapting: %v", err)
	}
	if err := caddy.Load(cfg, true); err != nil {
		r.t.Fatalf("loading: %v", err)
	}
	client.CloseIdleConnections()
}

// mint signs a token with the agent's key, as an operator minting offline
// would.
func (r *fleetRig) mint(maxTasks int64) *delegation.Minted {
	r.t.Helper()
	key, err := delegation.LoadPrivateKey(r.keyFile)
	if err != nil {
		r.t.Fatal(err)
	}
	g := delegation.Grant{Issuer: "urn:asap:agent:demo", Delegate: "urn:asap:agent:client", Scopes: []string{"task.execute"}, TTL: time.Hour, Now: time.Now()}
	if maxTasks >= 0 {
		g.MaxTasks = &maxTasks
	}
	m, err := delegation.Mint(g, key)
	if err != nil {
		r.t.Fatal(err)
	}
	return m
}

// With 3 replicas behind Caddy's load balancer and 64 concurrent clients,
// a token with max_tasks 20 runs exactly 20 tasks, every run.
func TestFleetMaxTasksExactAcrossReplicas(t *testing.T) {
	rig := startFleetRig(t, 3, natstest.Start(t), "")
	for round := 0; round < 3; round++ {
		token := rig.mint(20).Chain
		var mu sync.Mutex
		ok, limited := 0, 0
		var wg sync.WaitGroup
		for i := 0; i < 64; i++ {
			wg.Add(1)
			go func(i int) {
				defer wg.Done()
				a := callWith(t, rig.lb, token, envelope(fmt.Sprintf("01JFLEET%d%017d", round, i), "echo", `{}`))
				mu.Lock()
				defer mu.Unlock()
				switch {
				case a.Result != nil:
					ok++
				case a.Error != nil && a.Error.Code == protocol.CodeTokenLimitSpent && a.Error.Data["reason"] == "max_tasks_reached":
					limited++
				default:
					t.Errorf("unexpected answer: %+v", a.Error)
				}
			}(i)
		}
		wg.Wait()
		if ok != 20 || limited != 44 {
			t.Fatalf("round %d: %d passed, %d limited; want exactly 20 and 44", round, ok, limited)
		}
	}
	// Every replica ran some of them: the limit was shared, not one
	// replica's, and the replicas' own counts add up to the total.
	var total int64
	for _, dir := range rig.dirs {
		n := rig.summary(dir).TotalTasks
		if n == 0 {
			t.Errorf("replica %s ran no task: the load balancer did not spread the load", dir)
		}
		total += n
	}
	if total != 60 {
		t.Fatalf("replicas metered %d tasks in all, want 60", total)
	}
}

func (r *fleetRig) summary(dir string) metering.Summary {
	r.t.Helper()
	var sum metering.Summary
	if code := getJSON(r.t, "http://"+r.admin+"/asap/usage/summary?storage="+url.QueryEscape(dir), &sum); code != 200 {
		r.t.Fatalf("summary of %s: %d", dir, code)
	}
	return sum
}

// ledgers are the running sidecars' ledgers, by storage directory.
func (r *fleetRig) ledgers() map[string]*delegation.Ledger {
	r.t.Helper()
	app, err := runningApp()
	if err != nil {
		r.t.Fatal(err)
	}
	out := map[string]*delegation.Ledger{}
	for _, dir := range r.dirs {
		s, ok := app.stores[dir]
		if !ok {
			continue
		}
		d, err := s.Wait(context.Background(), 10*time.Second)
		if err != nil {
			r.t.Fatal(err)
		}
		out[dir] = d.ledger
	}
	return out
}

// revoke revokes jti through the admin API of the sidecar on dir.
func (r *fleetRig) revoke(dir, jti string) {
	r.t.Helper()
	req, _ := http.NewRequest(http.MethodDelete, "http://"+r.admin+"/asap/delegations/"+url.PathEscape(jti)+"?force=true&storage="+url.QueryEscape(dir), nil)
	resp, err := client.Do(req)
	if err != nil {
		r.t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		r.t.Fatalf("revoking %s at %s: %d", jti, dir, resp.StatusCode)
	}
}

// A revocation made at any of 10 sidecars is applied by all of them; the
// p99 delay over 100 revocations is at most 1 s (SPEC §11).
func TestFleetRevocationReachesEverySidecar(t *testing.T) {
	if underMutants {
		t.Skip("a propagation benchmark; the propagation itself is also tested by TestFleetRevocationCatchUpAfterRestart")
	}
	rig := startFleetRig(t, 10, natstest.Start(t), "")
	ledgers := rig.ledgers()
	const revocations = 100
	delays := make([]time.Duration, 0, revocations)
	for i := 0; i < revocations; i++ {
		jti := fmt.Sprintf("del_fleet_%03d", i)
		origin := rig.dirs[i%len(rig.dirs)]
		start := time.Now()
		rig.revoke(origin, jti)
		deadline := start.Add(10 * time.Second)
		for {
			all := true
			for _, l := range ledgers {
				if _, ok := l.IsRevoked("urn:asap:agent:demo", jti); !ok {
					all = false
					break
				}
			}
			if all {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("revocation %s made at %s not applied everywhere after 10s", jti, origin)
			}
			time.Sleep(200 * time.Microsecond)
		}
		delays = append(delays, time.Since(start))
	}
	sort.Slice(delays, func(i, j int) bool { return delays[i] < delays[j] })
	p50, p99 := delays[len(delays)/2], delays[len(delays)*99/100]
	// Reported, not asserted: timings are for the benchmark notes (SPEC
	// §11 targets p99 <= 1s), not for a pass/fail on a noisy machine.
	t.Logf("revocation visible at all 10 sidecars: p50 %v, p99 %v, max %v", p50, p99, delays[len(delays)-1])
	// And a token so revoked is refused by a sidecar that never saw the call.
	m := rig.mint(-1)
	if a := callWith(t, rig.sidecars[3], m.Chain, envelope("01JFLEETOK000000000000000001", "echo", `{}`)); a.Result == nil {
		t.Fatalf("fresh token refused: %+v", a.Error)
	}
	rig.revoke(rig.dirs[7], m.Claims.ID)
	waitFor(t, func() bool { _, ok := ledgers[rig.dirs[3]].IsRevoked("", m.Claims.ID); return ok })
	wantRejected(t, callWith(t, rig.sidecars[3], m.Chain, envelope("01JFLEETOK000000000000000002", "echo", `{}`)), protocol.CodeTokenRevoked, "revoked")
}

// A sidecar that was down while revocations were made applies them when
// it starts again, from the last sequence it applied.
func TestFleetRevocationCatchUpAfterRestart(t *testing.T) {
	nats := natstest.Start(t)
	rig := startFleetRig(t, 2, nats, "")
	m := rig.mint(-1)
	before := rig.mint(-1)
	rig.revoke(rig.dirs[0], before.Claims.ID)
	waitFor(t, func() bool { _, ok := rig.ledgers()[rig.dirs[1]].IsRevoked("", before.Claims.ID); return ok })

	// Replica 1 goes away (its database closes), replica 0 revokes.
	all := rig.sidecars
	rig.sidecars = all[:1]
	rig.load()
	rig.revoke(rig.dirs[0], m.Claims.ID)
	// Replica 1 comes back and catches up.
	rig.sidecars = all
	rig.load()
	waitFor(t, func() bool { _, ok := rig.ledgers()[rig.dirs[1]].IsRevoked("", m.Claims.ID); return ok })
	wantRejected(t, callWith(t, rig.sidecars[1], m.Chain, envelope("01JFLEETCU000000000000000001", "echo", `{}`)), protocol.CodeTokenRevoked, "revoked")
	// Its audit log says so, naming where the revocation came from.
	var found bool
	app0, _ := runningApp()
	d1, _ := app0.stores[rig.dirs[1]].Wait(context.Background(), time.Second)
	if err := d1.audit.Each(func(e *audit.Entry) bool {
		var det struct {
			JTI    string `json:"jti"`
			Origin string `json:"origin"`
		}
		if e.Operation == audit.OpDelegationRevoked && json.Unmarshal(e.Details, &det) == nil && det.JTI == m.Claims.ID && det.Origin != "" {
			found = true
		}
		return true
	}); err != nil {
		t.Fatal(err)
	}
	if !found {
		t.Fatal("replica 1's audit log has no entry for the revocation it applied from the fleet")
	}
	// It recorded the stream position with the revocation: the next start
	// resumes after it.
	app, _ := runningApp()
	d, _ := app.stores[rig.dirs[1]].Wait(context.Background(), time.Second)
	if _, applied, err := fleetState(d.db); err != nil || applied != 2 {
		t.Fatalf("replica 1 recorded sequence %d (%v), want 2", applied, err)
	}
}

// With NATS down, a token with max_tasks is refused with a retryable
// error (on_unreachable reject, the default) and one without runs as
// usual; revocations made meanwhile wait in the outbox and reach the
// other sidecar once NATS is back.
func TestFleetWithNATSDown(t *testing.T) {
	nats := natstest.Start(t)
	rig := startFleetRig(t, 2, nats, "")
	limited, open := rig.mint(5), rig.mint(-1)
	if a := callWith(t, rig.sidecars[0], limited.Chain, envelope("01JFLEETDN000000000000000001", "echo", `{}`)); a.Result == nil {
		t.Fatalf("limited token with NATS up: %+v", a.Error)
	}
	nats.Stop()
	wantRejected(t, callWith(t, rig.sidecars[0], limited.Chain, envelope("01JFLEETDN000000000000000002", "echo", `{}`)), protocol.CodeTokenLimitSpent, "fleet_unavailable")
	if a := callWith(t, rig.sidecars[1], open.Chain, envelope("01JFLEETDN000000000000000003", "echo", `{}`)); a.Result == nil {
		t.Fatalf("token without a limit with NATS down: %+v", a.Error)
	}
	rig.revoke(rig.dirs[0], open.Claims.ID)
	app, _ := runningApp()
	d0, _ := app.stores[rig.dirs[0]].Wait(context.Background(), time.Second)
	if d0.fleet.outbox.Backlog() == 0 {
		t.Fatal("the revocation is not waiting in the outbox")
	}
	nats.Start()
	waitFor(t, func() bool { _, ok := rig.ledgers()[rig.dirs[1]].IsRevoked("", open.Claims.ID); return ok })
	waitFor(t, func() bool { return d0.fleet.outbox.Backlog() == 0 })
	if a := callWith(t, rig.sidecars[0], limited.Chain, envelope("01JFLEETDN000000000000000004", "echo", `{}`)); a.Result == nil {
		t.Fatalf("limited token after NATS came back: %+v", a.Error)
	}
}

// on_unreachable local: with NATS down a limited token is counted by the
// sidecar alone, and still never beyond its max_tasks here.
func TestFleetOnUnreachableLocal(t *testing.T) {
	nats := natstest.Start(t)
	rig := startFleetRig(t, 1, nats, "", "on_unreachable local")
	m := rig.mint(2)
	nats.Stop()
	for i, want := range []bool{true, true, false} {
		a := callWith(t, rig.sidecars[0], m.Chain, envelope(fmt.Sprintf("01JFLEETLO%018d", i), "echo", `{}`))
		if want && a.Result == nil {
			t.Fatalf("call %d with NATS down, on_unreachable local: %+v", i, a.Error)
		}
		if !want {
			wantRejected(t, a, protocol.CodeTokenLimitSpent, "max_tasks_reached")
		}
	}
}

// While NATS is down the outbox fills; at max_backlog calls are refused
// (503, fleet_backlog_full) without reaching the agent, /asap/status and
// the metrics show it, and once NATS is back it drains and calls run.
func TestFleetBacklogIsBoundedAndVisible(t *testing.T) {
	if underMutants {
		t.Skip("1000 tasks to fill the outbox; the bound itself is unit-tested in package fleet")
	}
	nats := natstest.Start(t)
	rig := startFleetRig(t, 1, nats, "delegation off", "max_backlog 1000")
	// A socket opened before the outbox fills: its frames meet the bound
	// too, not only new handshakes.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ws, _, err := websocket.Dial(ctx, strings.Replace(rig.sidecars[0], "http", "ws", 1)+"/asap/ws", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.CloseNow()
	nats.Stop()
	var wg sync.WaitGroup
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := w; i < 1000; i += 8 {
				if a := callWith(t, rig.sidecars[0], "", envelope(fmt.Sprintf("01JFLEETBL%018d", i), "echo", `{}`)); a.Result == nil {
					t.Errorf("call %d: %+v", i, a.Error)
					return
				}
			}
		}(w)
	}
	wg.Wait()
	resp, b := post(t, rig.sidecars[0]+"/asap", rpc("r", envelope("01JFLEETBL999999999999999999", "echo", `{}`)))
	if a := decodeAnswer(t, b); resp.StatusCode != http.StatusServiceUnavailable || a.Error == nil || a.Error.Data["reason"] != "fleet_backlog_full" {
		t.Fatalf("call with the outbox full: %d %s", resp.StatusCode, b)
	}
	if err := ws.Write(ctx, websocket.MessageText, []byte(rpc("w", envelope("01JFLEETBL999999999999999997", "echo", `{}`)))); err != nil {
		t.Fatal(err)
	}
	if _, msg, err := ws.Read(ctx); err != nil || decodeAnswer(t, msg).Error == nil || decodeAnswer(t, msg).Error.Data["reason"] != "fleet_backlog_full" {
		t.Fatalf("a frame with the outbox full: %s %v", msg, err)
	}
	var st Status
	getJSON(t, "http://"+rig.admin+"/asap/status", &st)
	if f := st.Agents[0].Fleet; f == nil || f.Connected || f.OutboxBacklog != 1000 || f.OutboxMax != 1000 || f.Name != "replica-0" {
		t.Fatalf("fleet status %+v", f)
	}
	if st.Agents[0].Forwarded != 1000 {
		t.Fatalf("forwarded %d, want 1000: the refused call reached the agent", st.Agents[0].Forwarded)
	}
	metrics := scrape(t, rig.admin)
	dir := `{dir="` + rig.dirs[0] + `"}`
	if metrics["asap_fleet_outbox_backlog"+dir] != 1000 || metrics["asap_fleet_outbox_max"+dir] != 1000 {
		t.Errorf("outbox metrics: backlog %v, max %v", metrics["asap_fleet_outbox_backlog"+dir], metrics["asap_fleet_outbox_max"+dir])
	}
	if v, ok := metrics["asap_fleet_connected"+dir]; !ok || v != 0 {
		t.Errorf("asap_fleet_connected %v (present %v), want 0", v, ok)
	}
	nats.Start()
	waitFor(t, func() bool {
		var st Status
		getJSON(t, "http://"+rig.admin+"/asap/status", &st)
		return st.Agents[0].Fleet.OutboxBacklog == 0 && st.Agents[0].Fleet.Connected
	})
	if a := callWith(t, rig.sidecars[0], "", envelope("01JFLEETBL999999999999999998", "echo", `{}`)); a.Result == nil {
		t.Fatalf("call after the outbox drained: %+v", a.Error)
	}
}

// BenchmarkFleetLimitedToken is the latency a token with max_tasks adds
// in fleet mode: one client, tasks one at a time through one fleet
// sidecar (relaxed durability, so no fsync hides it), a limited token vs
// one without a limit (which never touches NATS), alternating. Run:
//
//	go test -run '^$' -bench FleetLimitedToken -benchtime 2000x ./caddymodule
func BenchmarkFleetLimitedToken(b *testing.B) {
	rig := startFleetRig(b, 1, natstest.Start(b), "durability relaxed")
	limited, open := rig.mint(1<<40).Chain, rig.mint(-1).Chain
	var tLimited, tOpen []time.Duration
	send := func(token string, i int) time.Duration {
		start := time.Now()
		if a := callWith(b, rig.sidecars[0], token, envelope(fmt.Sprintf("01JFLEETBN%018d", i), "echo", `{}`)); a.Result == nil {
			b.Fatalf("call: %+v", a.Error)
		}
		return time.Since(start)
	}
	for i := 0; i < 50; i++ { // warm connections, caches, streams
		send(limited, 2*i)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		tLimited = append(tLimited, send(limited, 1000+2*i))
		tOpen = append(tOpen, send(open, 1001+2*i))
	}
	b.StopTimer()
	p := func(d []time.Duration, q float64) float64 {
		sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
		return float64(d[int(float64(len(d)-1)*q)].Microseconds())
	}
	b.ReportMetric(p(tOpen, 0.5), "open-p50-µs")
	b.ReportMetric(p(tLimited, 0.5), "limited-p50-µs")
	b.ReportMetric(p(tLimited, 0.5)-p(tOpen, 0.5), "added-p50-µs")
	b.ReportMetric(p(tLimited, 0.99)-p(tOpen, 0.99), "added-p99-µs")
}

// A revocation no sidecar can apply (an id far over the claim limit, or
// not JSON), published by a buggy or hostile peer, is skipped: the
// revocations behind it still arrive.
func TestFleetPoisonRevocationDoesNotBlockTheStream(t *testing.T) {
	nats := natstest.Start(t)
	rig := startFleetRig(t, 1, nats, "")
	nc, err := natsgo.Connect(nats.URL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	publish := func(data string) {
		t.Helper()
		waitFor(t, func() bool {
			_, err := js.Publish(context.Background(), fleet.RevocationSubject, []byte(data))
			return err == nil // the sidecar creates the stream when it connects
		})
	}
	publish(`{"jti":"` + strings.Repeat("x", 100_000) + `","revoked_at":"2026-12-03T10:00:00Z","origin":"evil"}`)
	publish(`not json`)
	publish(`{"issuer":"` + strings.Repeat("i", 100_000) + `","jti":"del_x","origin":"evil"}`)
	publish(`{"jti":"del_after_the_poison","revoked_at":"2026-12-03T10:00:00Z","origin":"peer"}`)
	waitFor(t, func() bool { _, ok := rig.ledgers()[rig.dirs[0]].IsRevoked("", "del_after_the_poison"); return ok })
}

// A NATS outage under load loses no usage event and doubles none: three
// replicas behind a load balancer take tasks throughout, NATS is down for
// ASAP_FLEET_OUTAGE (default 3s; the figure is 30s, run with
// ASAP_FLEET_OUTAGE=30s), and afterwards the collector's fleet totals equal
// the sum of what each replica metered, task for task and token for token.
func TestFleetOutageUnderLoadLosesNothing(t *testing.T) {
	if underMutants {
		t.Skip("a load test with an outage; the outbox and collector are unit-tested in package fleet")
	}
	outage := 3 * time.Second
	if v := os.Getenv("ASAP_FLEET_OUTAGE"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			t.Fatalf("ASAP_FLEET_OUTAGE: %v", err)
		}
		outage = d
	}
	nats := natstest.Start(t)
	rig := startFleetRig(t, 3, nats, "delegation off\ndurability relaxed")

	cc := connectFleet(t, nats.URL())
	collector, err := fleet.NewCollector(cc, openStorage(t), fleet.CollectorOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); collector.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })

	stop := make(chan struct{})
	var sent atomic.Int64
	var wg sync.WaitGroup
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				id := fmt.Sprintf("01JOUTAGE%d%017d", w, i)
				resp, err := postRetrying(rig.lb+"/asap", id, rpc("r", envelope(id, "echo", fmt.Sprintf(`{"tokens_in":%d,"tokens_out":2}`, i%9+1))), new(atomic.Int64))
				if err != nil {
					t.Errorf("task %s: %v", id, err)
					return
				}
				if a := readAnswer(t, resp); a.Result == nil {
					t.Errorf("task %s answered %+v during the outage", id, a.Error)
					return
				}
				sent.Add(1)
			}
		}(w)
	}
	waitFor(t, func() bool { return sent.Load() >= 200 })
	nats.Stop()
	downAt := sent.Load()
	time.Sleep(outage) // the outage itself: load keeps flowing meanwhile
	during := sent.Load() - downAt
	nats.Start()
	waitFor(t, func() bool { return sent.Load() >= downAt+during+200 })
	close(stop)
	wg.Wait()
	if t.Failed() {
		return
	}
	if during == 0 {
		t.Fatal("no task ran during the outage")
	}

	// Relaxed durability: the last records may still be on their way to
	// the replicas' databases when the last answers arrive.
	var want metering.Summary
	deadline0 := time.Now().Add(10 * time.Second)
	for {
		want = metering.Summary{}
		for _, dir := range rig.dirs {
			s := rig.summary(dir)
			want.TotalTasks += s.TotalTasks
			want.TotalTokens += s.TotalTokens
		}
		if want.TotalTasks == sent.Load() {
			break
		}
		if want.TotalTasks > sent.Load() || time.Now().After(deadline0) {
			t.Fatalf("replicas metered %d tasks, clients got %d answers", want.TotalTasks, sent.Load())
		}
		time.Sleep(10 * time.Millisecond)
	}
	deadline := time.Now().Add(60 * time.Second)
	for collector.Status(context.Background()).Ingested < uint64(want.TotalTasks) {
		if time.Now().After(deadline) {
			t.Fatalf("collector ingested %d of %d after 60s", collector.Status(context.Background()).Ingested, want.TotalTasks)
		}
		time.Sleep(20 * time.Millisecond)
	}
	got, err := collector.Store().Summarize(metering.Filter{})
	if err != nil {
		t.Fatal(err)
	}
	st := collector.Status(context.Background())
	t.Logf("%d tasks, %d during a %v outage; collector: ingested %d, duplicates dropped %d", want.TotalTasks, during, outage, st.Ingested, st.Duplicates)
	if got.TotalTasks != want.TotalTasks || got.TotalTokens != want.TotalTokens || st.Ingested != uint64(want.TotalTasks) {
		t.Fatalf("collector totals %d tasks %d tokens (ingested %d); the replicas metered %d tasks %d tokens",
			got.TotalTasks, got.TotalTokens, st.Ingested, want.TotalTasks, want.TotalTokens)
	}
}

func connectFleet(t testing.TB, url string) *fleet.Client {
	t.Helper()
	c, err := fleet.Connect(fleet.Options{URL: url, Name: "collector"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

func openStorage(t testing.TB) *storage.DB {
	t.Helper()
	db, err := storage.Open(storage.Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// A credentials file that cannot be read stops the config from loading,
// with the file named, rather than leaving NATS to refuse every attempt.
func TestFleetUnreadableCredentials(t *testing.T) {
	nats := natstest.Start(t)
	missing := filepath.Join(t.TempDir(), "nats.creds")
	s := newSidecar(t, "", "agent urn:asap:agent:demo\nfleet {\nnats "+nats.URL()+"\ncredentials "+missing+"\n}", "")
	cfg, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(s.caddyfile(s.options)), nil)
	if err != nil {
		t.Fatal(err)
	}
	err = caddy.Load(cfg, true)
	if err == nil {
		caddy.Stop()
		t.Fatal("a config with an unreadable credentials file loaded")
	}
	if !strings.Contains(err.Error(), missing) || !strings.Contains(err.Error(), "fleet: credentials") {
		t.Fatalf("error does not name the file: %v", err)
	}
}

// A call the agent never answered gives its fleet-wide slot back, as a
// local one does: the count in the bucket returns to zero.
func TestFleetUnansweredCallGivesItsSlotBack(t *testing.T) {
	nats := natstest.Start(t)
	rig := startFleetRig(t, 1, nats, "")
	rig.agent = fmt.Sprintf("127.0.0.1:%d", freeport.Port(t)) // nothing listens there
	rig.load()
	m := rig.mint(1)
	for i := 0; i < 3; i++ {
		a := callWith(t, rig.sidecars[0], m.Chain, envelope(fmt.Sprintf("01JFLEETUA%018d", i), "echo", `{}`))
		if a.Error == nil || a.Error.Code != protocol.CodeConnectionError {
			t.Fatalf("call %d to a dead agent: %+v (a slot was kept for an unanswered call)", i, a.Error)
		}
	}
	c := connectFleet(t, nats.URL())
	waitFor(t, func() bool {
		n, err := c.Count(context.Background(), delegation.HashOf(m.Token))
		return err == nil && n == 0
	})
}

// The fleet-wide max_tasks holds whatever carries the calls: WebSocket
// frames on sockets spread over the replicas, mixed with POSTs, pass
// exactly max_tasks times in all.
func TestFleetMaxTasksExactOverWebSocketAndHTTP(t *testing.T) {
	rig := startFleetRig(t, 3, natstest.Start(t), "")
	token := rig.mint(20).Chain
	const sockets, frames, posts = 6, 6, 28 // 64 calls
	var mu sync.Mutex
	ok, limited := map[string]int{}, 0
	var problems []string
	tally := func(via string, a rpcAnswer) {
		mu.Lock()
		defer mu.Unlock()
		switch {
		case a.Result != nil:
			ok[via]++
		case a.Error != nil && a.Error.Code == protocol.CodeTokenLimitSpent && a.Error.Data["reason"] == "max_tasks_reached":
			limited++
		default:
			problems = append(problems, fmt.Sprintf("%s: unexpected answer %+v", via, a.Error))
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	for s := 0; s < sockets; s++ {
		// Each handshake is balanced to a replica of its own.
		conn, _, err := websocket.Dial(ctx, strings.Replace(rig.lb, "http", "ws", 1)+"/asap/ws",
			&websocket.DialOptions{HTTPHeader: http.Header{delegation.Header: {token}}})
		if err != nil {
			t.Fatalf("socket %d: %v", s, err)
		}
		defer conn.CloseNow()
		wg.Add(1)
		go func(s int) {
			defer wg.Done()
			for f := 0; f < frames; f++ {
				frame := rpc("r", envelope(fmt.Sprintf("01JFLEETWS%02d%014d", s, f), "echo", `{}`))
				if err := conn.Write(ctx, websocket.MessageText, []byte(frame)); err != nil {
					tally("websocket", rpcAnswer{})
					return
				}
				_, msg, err := conn.Read(ctx)
				var a rpcAnswer
				if err == nil {
					err = json.Unmarshal(msg, &a)
				}
				if err != nil {
					mu.Lock()
					problems = append(problems, fmt.Sprintf("socket %d frame %d: %v", s, f, err))
					mu.Unlock()
					return
				}
				tally("websocket", a)
			}
		}(s)
	}
	for i := 0; i < posts; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			req, _ := http.NewRequest(http.MethodPost, rig.lb+"/asap", strings.NewReader(rpc("r", envelope(fmt.Sprintf("01JFLEETPOST%016d", i), "echo", `{}`))))
			req.Header.Set("Content-Type", "application/json")
			req.Header.Set(delegation.Header, token)
			resp, err := client.Do(req)
			if err != nil {
				mu.Lock()
				problems = append(problems, fmt.Sprintf("post %d: %v", i, err))
				mu.Unlock()
				return
			}
			defer resp.Body.Close()
			var a rpcAnswer
			if err := json.NewDecoder(resp.Body).Decode(&a); err != nil {
				mu.Lock()
				problems = append(problems, fmt.Sprintf("post %d: %v", i, err))
				mu.Unlock()
				return
			}
			tally("post", a)
		}(i)
	}
	wg.Wait()
	for _, p := range problems {
		t.Error(p)
	}
	if passed := ok["websocket"] + ok["post"]; passed != 20 || limited != 44 {
		t.Fatalf("%d passed (%d over WebSocket, %d by POST), %d limited; want exactly 20 and 44", passed, ok["websocket"], ok["post"], limited)
	}
	var total int64
	for _, dir := range rig.dirs {
		total += rig.summary(dir).TotalTasks
	}
	if total != 20 {
		t.Fatalf("replicas metered %d tasks in all, want 20", total)
	}
}
