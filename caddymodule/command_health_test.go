package caddymodule

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// shortSocket is a unix socket path under a fresh directory, short enough
// for the kernel's limit of 108 bytes (t.TempDir() paths can pass it).
func shortSocket(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "asap")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return filepath.Join(dir, "admin.sock")
}

// The image's admin endpoint is a unix socket: status and healthcheck
// reach it by --address unix//PATH, by the path alone and by --config.
func TestStatusAndHealthcheckOverAUnixSocketAdmin(t *testing.T) {
	sock := shortSocket(t)
	s := newSidecar(t, "", "agent urn:asap:agent:demo", "")
	s.adminAddr = "unix/" + sock
	s.start()
	if a := callWith(t, s.url, "", envelope("01JHEALTH0000000000000001", "echo", `{}`)); a.Error != nil {
		t.Fatalf("task: %+v", a.Error)
	}

	cfg := filepath.Join(t.TempDir(), "Caddyfile")
	if err := os.WriteFile(cfg, []byte(s.caddyfile(s.options)), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{
		{"--address", "unix/" + sock},
		{"--address", sock},
		{"--config", cfg},
	} {
		_, out, err := run(t, cmdStatus, "status", args...)
		if err != nil {
			t.Fatalf("status %v: %v", args, err)
		}
		var st Status
		if err := json.Unmarshal([]byte(out), &st); err != nil {
			t.Fatalf("status %v: %v\n%s", args, err, out)
		}
		if len(st.Agents) != 1 || st.Agents[0].Storage != s.dir || st.Agents[0].Completed != 1 {
			t.Fatalf("status %v: %s", args, out)
		}
		if !strings.Contains(out, "\n  \"version\"") {
			t.Errorf("status %v is not indented:\n%s", args, out)
		}
	}

	said := withStderr(t)
	if code, err := cmdHealthcheck(cmdFlags(t, "healthcheck", "--address", "unix/"+sock, "--url", s.url+"/.well-known/asap/health")); code != 0 || err != nil {
		t.Fatalf("healthcheck: %d %v", code, err)
	}
	out := said.String()
	if !strings.HasPrefix(out, "ok: asap-sidecar ") || !strings.Contains(out, "answered 200") {
		t.Fatalf("healthcheck printed %q", out)
	}
	// The agent's health route through the proxy is there; a route the
	// agent does not serve is not, and says so.
	if code, err := cmdHealthcheck(cmdFlags(t, "healthcheck", "--address", sock, "--url", s.url+"/no-such-route")); code == 0 || err == nil || !strings.Contains(err.Error(), "want 2xx") {
		t.Fatalf("healthcheck of a missing route: %d %v", code, err)
	}
	if code, err := cmdHealthcheck(cmdFlags(t, "healthcheck", "--address", sock, "--timeout", "0s")); code == 0 || err == nil || !strings.Contains(err.Error(), "--timeout") {
		t.Fatalf("healthcheck --timeout 0s: %d %v", code, err)
	}
}

// No sidecar at the socket: unhealthy, naming the address and the flags.
func TestHealthcheckWithoutASidecarSaysWhere(t *testing.T) {
	sock := shortSocket(t)
	code, err := cmdHealthcheck(cmdFlags(t, "healthcheck", "--address", sock))
	if code == 0 || err == nil {
		t.Fatal("healthcheck passed without a sidecar")
	}
	for _, want := range []string{"unhealthy: ", "no sidecar answered at unix/" + sock, "unix//PATH"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("%q lacks %q", err, want)
		}
	}
	if _, _, err := run(t, cmdStatus, "status", "--address", sock); err == nil || !strings.Contains(err.Error(), "no sidecar answered") {
		t.Fatalf("status without a sidecar: %v", err)
	}
}
