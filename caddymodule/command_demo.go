package caddymodule

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/asap-sidecar/asap-sidecar/caddymodule/delegation"
)

// 'asap-caddy asap demo': the narrated showcase. It starts a sidecar and
// the demo agent in this process, on free loopback ports with a
// temporary storage directory, then plays the client, the delegator and
// the operator against them (showcase.go), checking every observation.

func demoCommand() *cobra.Command {
	return command(cobra.Command{
		Use:   "demo",
		Short: "Run the narrated showcase against a sidecar and the demo agent it starts",
		Long: `
Starts a sidecar guarding the demo agent (both in this process, on free
loopback ports, with a temporary storage directory) and walks through what
the sidecar does, step by step, checking each observation:

  1. an enterprise root (its own key, trusted with 'trust') delegates to
     urn:asap:agent:research with max_tasks 5; a forged copy is refused
  2. research re-delegates a narrower token to urn:asap:agent:worker
     (a 2-link chain); a scope it lacks is refused
  3. tasks run over HTTP POST and WebSocket, and are metered
  4. the sixth task is refused: -32059 max_tasks_reached
  5. the delegator reads usage per consumer from the Usage API
  6. the worker's token is revoked; its next calls are refused (revoked)
  7. the agent slows down; a client subscribed on /asap/ws receives an
     sla.breach notification
  8. the audit log verifies, and an inclusion proof of a task entry checks
     out against the signed checkpoint, verified here

Each step ends with a line starting ✓ (passed) or ✗ (failed, with what was
expected and what was seen). The exit status is 0 only when every step
passed. Everything is removed afterwards, unless a step failed (the
directory, with the sidecar's log, is kept and named) or --keep is given.

With --keep the sidecar keeps running after the last step, until
interrupted (Ctrl-C), for you to explore with curl and the other 'asap'
commands; its Caddyfile, keys and tokens are in the printed directory.`,
		Example: `  asap-caddy asap demo
  asap-caddy asap demo --keep`,
		Args: cobra.NoArgs,
	}, cmdDemo, func(fs *pflag.FlagSet) {
		fs.Bool("keep", false, "leave the sidecar running after the showcase, until interrupted, and keep its directory")
		fs.Duration("timeout", 2*time.Minute, "give up on the whole showcase after this long")
	})
}

func cmdDemo(fl caddycmd.Flags) (int, error) {
	keep := fl.Bool("keep")
	timeout, err := fl.GetDuration("timeout")
	if err != nil || timeout <= 0 {
		return exitFailure, errors.New("--timeout must be a positive duration such as 2m")
	}
	dir, err := os.MkdirTemp("", "asap-demo-")
	if err != nil {
		return exitFailure, fmt.Errorf("making the showcase's directory: %w", err)
	}
	sc, err := startDemoSidecar(dir)
	if err != nil {
		return exitFailure, fmt.Errorf("starting the showcase's sidecar (files in %s): %w", dir, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	show := newShowcase(os.Stdout, sc)
	runErr := show.run(ctx)
	show.close()

	if keep {
		sc.printKeep(os.Stdout)
		sig, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		<-sig.Done()
		stop()
	}
	if err := caddy.Stop(); err != nil {
		fmt.Fprintf(os.Stderr, "stopping the showcase's sidecar: %v\n", err)
	}
	switch {
	case runErr != nil:
		fmt.Printf("\nThe sidecar's directory is kept for a look: %s (its log: %s)\n", dir, sc.logFile)
		return exitFailure, runErr
	case keep:
		fmt.Printf("Stopped. Its directory is kept: %s\n", dir)
	default:
		if err := os.RemoveAll(dir); err != nil {
			fmt.Fprintf(os.Stderr, "removing %s: %v\n", dir, err)
		}
	}
	return 0, nil
}

// Who is who in the showcase.
const (
	demoAgentURN  = "urn:asap:agent:demo"
	enterpriseURN = "urn:asap:agent:enterprise"
	researchURN   = "urn:asap:agent:research"
	workerURN     = "urn:asap:agent:worker"
)

// SLA settings of the showcase's sidecar. Steps 1-6 forward exactly 5
// calls (refused ones are no samples), so with 6 samples needed nothing is
// judged before the agent slows down in step 7 — a fast task stalled on a
// loaded machine cannot open the breach early — and the second slow task
// (7 samples, 2 slow) lifts the p95 over the maximum.
const (
	demoMaxP95     = 200 * time.Millisecond
	demoMinSamples = 6
)

// demoSidecar is the sidecar and demo agent the showcase runs against,
// and the keys it starts with.
type demoSidecar struct {
	dir        string
	sidecarURL string // http://127.0.0.1:port
	agentURL   string
	adminURL   string
	caddyfile  string // path of the Caddyfile it runs
	logFile    string

	enterpriseKey ed25519.PrivateKey
	researchKey   ed25519.PrivateKey
	keysDir       string
}

// startDemoSidecar writes the keys and the Caddyfile into dir and loads
// it: the sidecar on one free port, the demo agent on another, the admin
// API on a third, the log in dir/caddy.log.
func startDemoSidecar(dir string) (*demoSidecar, error) {
	sc := &demoSidecar{dir: dir, keysDir: filepath.Join(dir, "keys"), logFile: filepath.Join(dir, "caddy.log")}
	if err := os.MkdirAll(sc.keysDir, 0o700); err != nil {
		return nil, err
	}
	var err error
	if sc.enterpriseKey, err = writeDemoKey(sc.keysDir, "enterprise"); err != nil {
		return nil, err
	}
	if sc.researchKey, err = writeDemoKey(sc.keysDir, "research"); err != nil {
		return nil, err
	}
	ports, err := freeLoopbackPorts(3)
	if err != nil {
		return nil, err
	}
	sc.sidecarURL = fmt.Sprintf("http://127.0.0.1:%d", ports[0])
	sc.agentURL = fmt.Sprintf("http://127.0.0.1:%d", ports[1])
	sc.adminURL = fmt.Sprintf("http://127.0.0.1:%d", ports[2])
	text := fmt.Sprintf(`# Written by 'asap-caddy asap demo'.
{
	admin 127.0.0.1:%[3]d
	storage file_system %[4]s
	log {
		output file %[5]s
		level INFO
	}
}

# The sidecar, guarding the demo agent.
:%[1]d {
	bind 127.0.0.1
	asap {
		agent %[6]s
		delegation require
		trust %[7]s %[8]s
		storage %[9]s
		durability strict
		sla {
			max_latency_p95 %[10]s
			min_samples %[11]d
			window 1m
		}
	}
	reverse_proxy 127.0.0.1:%[2]d
}

# The demo agent (skills echo, sleep, fail).
:%[2]d {
	bind 127.0.0.1
	asap_demo_agent {
		agent %[6]s
	}
}
`, ports[0], ports[1], ports[2], filepath.Join(dir, "caddy"), sc.logFile, demoAgentURN,
		enterpriseURN, filepath.Join(sc.keysDir, "enterprise.pub"), filepath.Join(dir, "data"),
		demoMaxP95, demoMinSamples)
	sc.caddyfile = filepath.Join(dir, "Caddyfile")
	if err := os.WriteFile(sc.caddyfile, []byte(text), 0o600); err != nil {
		return nil, err
	}
	cfg, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(text), map[string]any{"filename": sc.caddyfile})
	if err != nil {
		return nil, fmt.Errorf("adapting %s: %w", sc.caddyfile, err)
	}
	// Not Caddy's autosave: the showcase must not replace the config a
	// real 'asap-caddy run --resume' would pick up.
	if cfg, err = withoutPersist(cfg); err != nil {
		return nil, err
	}
	if err := caddy.Load(cfg, true); err != nil {
		return nil, fmt.Errorf("loading %s: %w", sc.caddyfile, err)
	}
	return sc, nil
}

// withoutPersist sets admin.config.persist to false in a JSON config.
func withoutPersist(cfg []byte) ([]byte, error) {
	var c map[string]any
	if err := json.Unmarshal(cfg, &c); err != nil {
		return nil, err
	}
	admin, _ := c["admin"].(map[string]any)
	if admin == nil {
		admin = map[string]any{}
		c["admin"] = admin
	}
	admin["config"] = map[string]any{"persist": false}
	return json.Marshal(c)
}

// writeDemoKey generates a key pair and writes name.key (0600) and
// name.pub into dir, as 'asap keygen' does.
func writeDemoKey(dir, name string) (ed25519.PrivateKey, error) {
	key, err := delegation.GenerateKey()
	if err != nil {
		return nil, err
	}
	priv, err := delegation.PrivatePEM(key)
	if err != nil {
		return nil, err
	}
	pub, err := delegation.PublicPEM(key.Public().(ed25519.PublicKey))
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, name+".key"), priv, 0o600); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, name+".pub"), pub, 0o644); err != nil {
		return nil, err
	}
	return key, nil
}

// freeLoopbackPorts returns n distinct loopback ports that were free a
// moment ago; all n listeners are held until the last is picked, so the
// kernel cannot hand one out twice.
func freeLoopbackPorts(n int) ([]int, error) {
	ports := make([]int, n)
	var held []net.Listener
	defer func() {
		for _, l := range held {
			l.Close()
		}
	}()
	for i := range ports {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("picking a free loopback port: %w", err)
		}
		held = append(held, l)
		ports[i] = l.Addr().(*net.TCPAddr).Port
	}
	return ports, nil
}

// printKeep says what is left running and how to use it.
func (sc *demoSidecar) printKeep(w io.Writer) {
	admin := strings.TrimPrefix(sc.adminURL, "http://")
	fmt.Fprintf(w, `
Left running (--keep); Ctrl-C stops it.
  sidecar   %s/asap   (guards %s)
  agent     %s   (the demo agent, reachable directly only from here)
  admin     %s/asap/status
  Caddyfile %s
  keys      %s (enterprise.key signs roots the sidecar trusts)
  tokens    %s/*.chain
Try:
  curl -s %s/asap/usage/consumers
  curl -s %s/asap/audit/verify
  asap-caddy asap delegation list --address %s
  asap-caddy asap delegation inspect - --trust %s=%s < %s/worker.chain
`, sc.sidecarURL, demoAgentURN, sc.agentURL, sc.adminURL, sc.caddyfile, sc.keysDir, sc.dir,
		sc.adminURL, sc.adminURL, admin, enterpriseURN, filepath.Join(sc.keysDir, "enterprise.pub"), sc.dir)
}
