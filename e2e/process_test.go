// Package e2e runs the built asap-caddy binary as separate processes, the
// way operators run it: CLI commands, reloads, validation beside a running
// sidecar, kill -9 and graceful shutdown.
package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/asap-sidecar/asap-sidecar/caddymodule/demoagent"
	"github.com/asap-sidecar/asap-sidecar/internal/freeport"
)

var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "asap-e2e-")
	if err != nil {
		panic(err)
	}
	binary = filepath.Join(dir, "asap-caddy")
	_, here, _, _ := runtime.Caller(0)
	args := []string{"build", "-o", binary}
	if cover := os.Getenv("ASAP_E2E_COVERDIR"); cover != "" {
		// scripts/coverage.sh: a -cover binary writes its counters to
		// GOCOVERDIR when it exits, to be merged with the unit tests'.
		args = append(args, "-cover", "-coverpkg=github.com/asap-sidecar/asap-sidecar/...")
		os.Setenv("GOCOVERDIR", cover)
	}
	build := exec.Command("go", append(args, "./cmd/asap-caddy")...)
	build.Dir = filepath.Join(filepath.Dir(here), "..")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building asap-caddy:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// cli runs an asap-caddy command and returns its combined output.
func cli(t testing.TB, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary, args...)
	cmd.Env = append(os.Environ(), "XDG_DATA_HOME="+t.TempDir(), "XDG_CONFIG_HOME="+t.TempDir())
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// externalAgent runs the demo agent outside the sidecar process, as a real
// agent would be.
func externalAgent(t testing.TB) string {
	t.Helper()
	a := &demoagent.Agent{}
	if err := a.Provision(caddy.Context{}); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _ = a.ServeHTTP(w, r, nil) }))
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://")
}

// countingAgent is externalAgent that counts the calls reaching it.
func countingAgent(t testing.TB) (string, *atomic.Int64) {
	t.Helper()
	a := &demoagent.Agent{}
	if err := a.Provision(caddy.Context{}); err != nil {
		t.Fatal(err)
	}
	var n atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost {
			n.Add(1)
		}
		_ = a.ServeHTTP(w, r, nil)
	}))
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://"), &n
}

// waitUntil polls cond, failing the test after 30 s.
func waitUntil(t testing.TB, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not reached within 30s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

type sidecar struct {
	t       testing.TB
	cmd     *exec.Cmd
	url     string
	admin   string
	dir     string
	file    string
	port    int
	log     *syncBuffer
	exited  chan struct{}
	options string
	up      string
}

func (s *sidecar) caddyfile(options string) string {
	if !strings.Contains(options, "delegation ") {
		options += "\ndelegation off"
	}
	return fmt.Sprintf(`{
	admin %s
}
:%d {
	bind 127.0.0.1
	asap {
		storage %s
		%s
	}
	reverse_proxy %s
}
`, s.admin, s.port, s.dir, strings.ReplaceAll(options, "\n", "\n\t\t"), s.up)
}

// writeConfig writes the Caddyfile the process runs and reloads from.
func (s *sidecar) writeConfig(options string) {
	s.t.Helper()
	s.options = options
	if err := os.WriteFile(s.file, []byte(s.caddyfile(options)), 0o600); err != nil {
		s.t.Fatal(err)
	}
}

func newSidecar(t testing.TB, upstream, options string) *sidecar {
	t.Helper()
	root := t.TempDir()
	s := &sidecar{t: t, dir: filepath.Join(root, "data"), file: filepath.Join(root, "Caddyfile"), up: upstream}
	ports := freeport.Ports(t, 2)
	s.port = ports[0]
	s.url = fmt.Sprintf("http://127.0.0.1:%d", s.port)
	s.admin = fmt.Sprintf("127.0.0.1:%d", ports[1])
	s.writeConfig(options)
	s.start()
	t.Cleanup(func() { s.stop(syscall.SIGKILL) })
	return s
}

func (s *sidecar) start() {
	s.t.Helper()
	s.log = new(syncBuffer)
	s.cmd = exec.Command(binary, "run", "--config", s.file, "--adapter", "caddyfile")
	s.cmd.Stdout, s.cmd.Stderr = s.log, s.log
	s.cmd.Env = append(os.Environ(), "XDG_DATA_HOME="+filepath.Dir(s.dir), "XDG_CONFIG_HOME="+filepath.Dir(s.dir))
	if err := s.cmd.Start(); err != nil {
		s.t.Fatal(err)
	}
	s.exited = make(chan struct{})
	go func() { _ = s.cmd.Wait(); close(s.exited) }()
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get("http://" + s.admin + "/asap/status")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
		}
		select {
		case <-s.exited:
			s.t.Fatalf("sidecar exited at start:\n%s", s.log)
		default:
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("sidecar not up after 30s:\n%s", s.log)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// stop signals the process and waits for it to exit.
func (s *sidecar) stop(sig syscall.Signal) {
	if s.cmd == nil || s.cmd.Process == nil {
		return
	}
	select {
	case <-s.exited:
		return
	default:
	}
	_ = s.cmd.Process.Signal(sig)
	select {
	case <-s.exited:
	case <-time.After(30 * time.Second):
		_ = s.cmd.Process.Kill()
		<-s.exited
	}
}

// syncBuffer collects a process's output while the test reads it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

type status struct {
	Agents []struct {
		Agent           string    `json:"agent"`
		StorageOpenedAt time.Time `json:"storage_opened_at"`
		Forwarded       uint64    `json:"tasks_forwarded"`
		Completed       uint64    `json:"tasks_completed"`
	} `json:"agents"`
}

func (s *sidecar) status() status {
	s.t.Helper()
	resp, err := http.Get("http://" + s.admin + "/asap/status")
	if err != nil {
		s.t.Fatal(err)
	}
	defer resp.Body.Close()
	var st status
	b, _ := io.ReadAll(resp.Body)
	if err := json.Unmarshal(b, &st); err != nil || len(st.Agents) != 1 {
		s.t.Fatalf("status: %v: %s", err, b)
	}
	return st
}

func envelope(id, skill, input string) string {
	return fmt.Sprintf(`{"jsonrpc":"2.0","method":"asap.send","id":%q,"params":{"envelope":{"id":%q,"asap_version":"0.1","sender":"urn:asap:agent:client","recipient":"urn:asap:agent:demo","payload_type":"task.request","payload":{"conversation_id":"c","skill_id":%q,"input":%s}}}}`, id, id, skill, input)
}

var client = &http.Client{Timeout: 30 * time.Second}

// call sends one task like the reference client (idempotency key, retry of
// a call whose connection failed before any answer) and reports whether a
// task.response came back.
func call(url, id, skill, input string) (bool, error) {
	var lastErr error
	for attempt := 0; attempt < 4; attempt++ {
		if attempt > 0 {
			time.Sleep(time.Duration(attempt) * 20 * time.Millisecond)
		}
		req, _ := http.NewRequest(http.MethodPost, url+"/asap", strings.NewReader(envelope(id, skill, input)))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("X-Idempotency-Key", id)
		resp, err := client.Do(req)
		if err != nil {
			lastErr = err
			continue
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			return false, err
		}
		var a struct {
			Result *struct {
				Envelope struct {
					PayloadType string `json:"payload_type"`
				} `json:"envelope"`
			} `json:"result"`
		}
		if json.Unmarshal(b, &a) != nil || a.Result == nil || a.Result.Envelope.PayloadType != "task.response" {
			return false, fmt.Errorf("HTTP %d: %s", resp.StatusCode, b)
		}
		return true, nil
	}
	return false, lastErr
}
