package caddymodule

import (
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"

	"github.com/asap-sidecar/asap-sidecar/caddymodule/delegation"
	"github.com/asap-sidecar/asap-sidecar/caddymodule/metering"
	"github.com/asap-sidecar/asap-sidecar/caddymodule/protocol"
	"github.com/asap-sidecar/asap-sidecar/internal/freeport"
	"github.com/asap-sidecar/asap-sidecar/internal/natstest"
)

// fleetRig is n sidecars of one agent in one Caddy config, each with its
// own database and fleet membership, behind Caddy's own reverse_proxy
// load balancer, in front of one demo agent.
type fleetRig struct {
	t        testing.TB
	nats     *natstest.Server
	sidecars []string // base URLs
	dirs     []string
	lb       string
	admin    string
	keyFile  string // the agent's private key, shared by the replicas
	ports    []int
	options  string
}

func startFleetRig(t testing.TB, n int, nats *natstest.Server, options string) *fleetRig {
	t.Helper()
	caddyMu.Lock()
	t.Cleanup(caddyMu.Unlock)
	key, err := delegation.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	pemBytes, _ := delegation.PrivatePEM(key)
	dir := t.TempDir()
	r := &fleetRig{t: t, nats: nats, keyFile: filepath.Join(dir, "agent.key"), options: options}
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
	return r
}

func (r *fleetRig) caddyfile() string {
	n := len(r.sidecars)
	var b strings.Builder
	fmt.Fprintf(&b, "{\n\tadmin %s\n\tlog {\n\t\tlevel ERROR\n\t}\n}\n", r.admin)
	var upstreams []string
	for i := 0; i < n; i++ {
		fmt.Fprintf(&b, ":%d {\n\tbind 127.0.0.1\n\tasap {\n\t\tagent urn:asap:agent:demo\n\t\tkey %s\n\t\tstorage %s\n\t\t%s\n\t\tfleet {\n\t\t\tnats %s\n\t\t\tname replica-%d\n\t\t}\n\t}\n\treverse_proxy 127.0.0.1:%d\n}\n",
			r.ports[i], r.keyFile, r.dirs[i], r.options, r.nats.URL(), i, r.ports[n+1])
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
