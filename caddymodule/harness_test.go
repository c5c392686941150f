package caddymodule

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	_ "github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	_ "github.com/caddyserver/caddy/v2/modules/standard"

	_ "github.com/asap-sidecar/asap-sidecar/caddymodule/demoagent"
	"github.com/asap-sidecar/asap-sidecar/caddymodule/metering"
	"github.com/asap-sidecar/asap-sidecar/internal/freeport"
	"github.com/asap-sidecar/asap-sidecar/storage"
)

// The tests in this package run real Caddy in-process (caddy.Load, as
// POST /load does) with the real modules, real listeners and Badger on
// disk. Caddy's config is process-global, so they do not run in parallel.

var caddyMu sync.Mutex

// sidecar is a running Caddy config: the asap handler in front of an
// upstream, plus the demo agent on its own port.
type sidecar struct {
	t         testing.TB
	url       string // sidecar site
	agentURL  string // demo agent site
	adminAddr string
	dir       string
	ports     [3]int
	upstream  string
	options   string
	// siteExtra is more directives for the sidecar's site block.
	siteExtra string
	// logFile, when set, receives Caddy's log (warnings and up, as
	// JSON) instead of dropping everything below ERROR.
	logFile string
}

// startSidecar runs a config whose asap block holds options (one per
// line), proxying to upstream ("" for the demo agent).
func startSidecar(t testing.TB, upstream, options string) *sidecar {
	t.Helper()
	return startSidecarWith(t, upstream, options, "")
}

// startSidecarWith is startSidecar with more directives in the site.
func startSidecarWith(t testing.TB, upstream, options, siteExtra string) *sidecar {
	t.Helper()
	s := newSidecar(t, upstream, options, siteExtra)
	s.start()
	return s
}

// newSidecar takes the Caddy lock and picks the ports; start runs it.
func newSidecar(t testing.TB, upstream, options, siteExtra string) *sidecar {
	t.Helper()
	caddyMu.Lock()
	t.Cleanup(caddyMu.Unlock)
	s := &sidecar{t: t, dir: t.TempDir(), upstream: upstream, options: options, siteExtra: siteExtra}
	copy(s.ports[:], freeport.Ports(t, 3))
	s.url = fmt.Sprintf("http://127.0.0.1:%d", s.ports[0])
	s.agentURL = fmt.Sprintf("http://127.0.0.1:%d", s.ports[1])
	s.adminAddr = fmt.Sprintf("127.0.0.1:%d", s.ports[2])
	return s
}

func (s *sidecar) start() {
	s.t.Helper()
	s.load(s.options)
	s.t.Cleanup(func() {
		if err := caddy.Stop(); err != nil {
			s.t.Errorf("stopping caddy: %v", err)
		}
	})
}

// caddyfile is the config under test. Tests that are not about
// delegation run with it off; the ones that are say so in options.
func (s *sidecar) caddyfile(options string) string {
	if !strings.Contains(options, "delegation ") {
		options += "\ndelegation off"
	}
	up := s.upstream
	if up == "" {
		up = fmt.Sprintf("127.0.0.1:%d", s.ports[1])
	}
	logBlock := "level ERROR"
	if s.logFile != "" {
		logBlock = "output file " + s.logFile + "\n\t\tformat json\n\t\tlevel WARN"
	}
	return fmt.Sprintf(`{
	admin %s
	log {
		%s
	}
}
:%d {
	bind 127.0.0.1
	asap {
		storage %s
		%s
	}
	%s
	reverse_proxy %s
}
:%d {
	bind 127.0.0.1
	asap_demo_agent
}
`, s.adminAddr, logBlock, s.ports[0], s.dir, strings.ReplaceAll(options, "\n", "\n\t\t"), s.siteExtra, up, s.ports[1])
}

// load (re)loads the config with new asap options, as POST /load does.
func (s *sidecar) load(options string) {
	s.t.Helper()
	cfg, warnings, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(s.caddyfile(options)), nil)
	if err != nil {
		s.t.Fatalf("adapting Caddyfile: %v", err)
	}
	for _, w := range warnings {
		s.t.Logf("adapter warning: %s", w.Message)
	}
	if err := caddy.Load(cfg, true); err != nil {
		s.t.Fatalf("loading config: %v", err)
	}
	// Kept-alive connections to the old servers are being closed: a POST
	// sent on one would be reset, and POSTs are not retried. New
	// connections wait for the old sockets to close (see WaitListeners).
	client.CloseIdleConnections()
	for _, port := range s.ports[:2] {
		freeport.WaitListeners(s.t, port, 1)
	}
	s.options = options
}

var client = &http.Client{Timeout: 30 * time.Second}

func post(t testing.TB, url, body string) (*http.Response, []byte) {
	t.Helper()
	resp, err := client.Post(url, "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatalf("POST %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("reading answer: %v", err)
	}
	return resp, b
}

func getJSON(t testing.TB, url string, into any) int {
	t.Helper()
	resp, err := client.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if into != nil && resp.StatusCode < 300 {
		if err := json.Unmarshal(b, into); err != nil {
			t.Fatalf("GET %s: %v in %s", url, err, b)
		}
	}
	return resp.StatusCode
}

// envelope builds a task.request envelope.
func envelope(id, skill string, input string) string {
	idField := ""
	if id != "" {
		idField = fmt.Sprintf(`"id":%q,`, id)
	}
	return fmt.Sprintf(`{%s"asap_version":"0.1","timestamp":"2026-11-26T01:00:00Z","sender":"urn:asap:agent:client","recipient":"urn:asap:agent:demo","payload_type":"task.request","payload":{"conversation_id":"c1","skill_id":%q,"input":%s}}`, idField, skill, input)
}

func rpc(rpcID, env string) string {
	return fmt.Sprintf(`{"jsonrpc":"2.0","method":"asap.send","params":{"envelope":%s},"id":%q}`, env, rpcID)
}

// rpcError is the error part of a JSON-RPC answer.
type rpcError struct {
	Code int            `json:"code"`
	Data map[string]any `json:"data"`
}

type rpcAnswer struct {
	ID     json.RawMessage `json:"id"`
	Error  *rpcError       `json:"error"`
	Result *struct {
		Envelope struct {
			PayloadType   string `json:"payload_type"`
			CorrelationID string `json:"correlation_id"`
			Payload       struct {
				TaskID  string         `json:"task_id"`
				Status  string         `json:"status"`
				Metrics map[string]any `json:"metrics"`
			} `json:"payload"`
		} `json:"envelope"`
	} `json:"result"`
}

func decodeAnswer(t testing.TB, b []byte) rpcAnswer {
	t.Helper()
	var a rpcAnswer
	if err := json.Unmarshal(b, &a); err != nil {
		t.Fatalf("answer is not JSON-RPC: %v: %s", err, b)
	}
	return a
}

// countingUpstream is an agent stand-in that counts what reaches it and
// answers with a fixed body.
type countingUpstream struct {
	mu     sync.Mutex
	hits   int
	bodies [][]byte
	answer func(w http.ResponseWriter, r *http.Request, body []byte)
}

func (u *countingUpstream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	if r.Method == http.MethodGet && r.Header.Get("Via") != "" && strings.HasPrefix(r.URL.Path, "/.well-known/asap/") {
		// The sidecar's own SLA probes (health, manifest) come on a
		// timer; counting them would make the counts depend on timing.
		u.answer(w, r, body)
		return
	}
	u.mu.Lock()
	u.hits++
	u.bodies = append(u.bodies, body)
	u.mu.Unlock()
	u.answer(w, r, body)
}

func (u *countingUpstream) count() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.hits
}

func (u *countingUpstream) last() []byte {
	u.mu.Lock()
	defer u.mu.Unlock()
	if len(u.bodies) == 0 {
		return nil
	}
	return u.bodies[len(u.bodies)-1]
}

func fixedAnswer(status int, contentType, body string) func(http.ResponseWriter, *http.Request, []byte) {
	return func(w http.ResponseWriter, _ *http.Request, _ []byte) {
		if contentType != "" {
			w.Header().Set("Content-Type", contentType)
		}
		w.WriteHeader(status)
		_, _ = io.Copy(w, bytes.NewReader([]byte(body)))
	}
}

// runningAgent is the agent runtime of the running config's one asap
// handler.
func runningAgent(t testing.TB) *agentRuntime {
	t.Helper()
	app, err := runningApp()
	if err != nil {
		t.Fatal(err)
	}
	agents := app.agentList()
	if len(agents) != 1 {
		t.Fatalf("%d asap handlers running, want 1", len(agents))
	}
	return agents[0]
}

func stringsReader(s string) io.Reader { return strings.NewReader(s) }

func readAnswer(t testing.TB, resp *http.Response) rpcAnswer {
	t.Helper()
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("reading answer: %v", err)
	}
	return decodeAnswer(t, b)
}

func caddyconfigAdapt(caddyfile string) ([]byte, []caddyconfig.Warning, error) {
	return caddyconfig.GetAdapter("caddyfile").Adapt([]byte(caddyfile), nil)
}

func mustUnmarshalConfig(t testing.TB, b []byte) *caddy.Config {
	t.Helper()
	var cfg caddy.Config
	if err := json.Unmarshal(b, &cfg); err != nil {
		t.Fatal(err)
	}
	return &cfg
}

// runningDatabase is the running handler's open database.
func runningDatabase(t testing.TB) *database {
	t.Helper()
	d, err := runningAgent(t).store.Wait(context.Background(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// runningDB is the running handler's storage.
func runningDB(t testing.TB) *storage.DB { return runningDatabase(t).db }

// usageEvents returns every stored usage event, by envelope id.
func usageEvents(t testing.TB, db *storage.DB) map[string]metering.Event {
	t.Helper()
	out := map[string]metering.Event{}
	err := metering.New(db, 0).Each(metering.Filter{}, func(e *metering.Event) bool {
		if _, dup := out[e.EnvelopeID]; dup && e.EnvelopeID != "" {
			t.Errorf("two usage events for envelope %s", e.EnvelopeID)
		}
		out[e.EnvelopeID] = *e
		return true
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func countsOf(t testing.TB, agent string) metering.Counts {
	t.Helper()
	c, err := metering.CountsOf(runningDB(t), agent)
	if err != nil {
		t.Fatal(err)
	}
	return c
}
