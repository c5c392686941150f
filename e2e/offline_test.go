package e2e

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// cliStdin is cli with stdin, and stdout apart from stderr (Caddy's log).
func cliStdin(t testing.TB, stdin string, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary, args...)
	cmd.Env = append(os.Environ(), "XDG_DATA_HOME="+t.TempDir(), "XDG_CONFIG_HOME="+t.TempDir())
	cmd.Stdin = strings.NewReader(stdin)
	var out, errOut strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err = cmd.Run()
	return out.String(), errOut.String(), err
}

// An enterprise root mints offline for its agent, which attenuates it
// offline for a client; inspect explains the chain, and a sidecar that
// trusts only the root's public key accepts it.
func TestOfflineCreateInspectAndUse(t *testing.T) {
	keys := t.TempDir()
	for _, name := range []string{"enterprise", "research"} {
		if out, err := cli(t, "asap", "keygen", "--out", keys, "--name", name); err != nil {
			t.Fatalf("keygen: %v: %s", err, out)
		}
	}
	key := func(name string) string { return filepath.Join(keys, name) }
	rootFile := filepath.Join(t.TempDir(), "research.jwt")
	// No sidecar runs: the admin address is a closed port.
	if out, err := cli(t, "asap", "delegation", "create", "--address", "127.0.0.1:1",
		"--key", key("enterprise.key"), "--delegator", "urn:asap:agent:enterprise", "--delegate", "urn:asap:agent:research",
		"--scopes", "task.execute,data.read", "--expires-in", "3600", "--max-tasks", "10", "--cnf-key", key("research.pub"), "-o", rootFile); err != nil {
		t.Fatalf("offline create: %v: %s", err, out)
	}
	st, err := os.Stat(rootFile)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("token file: %v %v", st, err)
	}
	root, _ := os.ReadFile(rootFile)
	trustRoot := "urn:asap:agent:enterprise=" + key("enterprise.pub")
	chain, stderr, err := cliStdin(t, "", "asap", "delegation", "create", "--address", "127.0.0.1:1",
		"--key", key("research.key"), "--parent", strings.TrimSpace(string(root)), "--trust", trustRoot,
		"--delegate", "urn:asap:agent:client", "--scopes", "task.execute", "--max-tasks", "2")
	chain = strings.TrimSpace(chain)
	if err != nil || strings.Count(chain, ",") != 1 {
		t.Fatalf("offline attenuation: %v: %q %s", err, chain, stderr)
	}

	// The chain from stdin, checked as the sidecar below will check a call.
	out, stderr, err := cliStdin(t, chain+"\n", "asap", "delegation", "inspect", "-", "--trust", trustRoot,
		"--self", "urn:asap:agent:demo", "--sender", "urn:asap:agent:client")
	if err != nil || strings.Count(out, "verdict     ok") != 2 || !strings.Contains(out, "VALID") ||
		!strings.Contains(out, "urn:asap:agent:research delegates to urn:asap:agent:client") ||
		!strings.Contains(out, "key         the key its parent binds (cnf.jwk): signature valid") {
		t.Fatalf("inspect: %v\n%s%s", err, out, stderr)
	}
	// Against a trust set without the root's issuer: exit 1, and the
	// root's verdict says why.
	out, _, err = cliStdin(t, "", "asap", "delegation", "inspect", chain, "--trust", "urn:asap:agent:research="+key("research.pub"))
	if err == nil || !strings.Contains(out, "untrusted_issuer: issuer urn:asap:agent:enterprise is not trusted here") ||
		!strings.Contains(out, "REJECTED (untrusted_issuer)") {
		t.Fatalf("inspect against another trust set: %v\n%s", err, out)
	}
	if exit, ok := err.(*exec.ExitError); !ok || exit.ExitCode() != 1 {
		t.Fatalf("exit status of a rejected chain: %v", err)
	}

	s := newSidecar(t, externalAgent(t), "agent urn:asap:agent:demo\ndelegation require\ntrust urn:asap:agent:enterprise "+key("enterprise.pub"))
	for i, id := range []string{"01JOFFLINE0000000000000001", "01JOFFLINE0000000000000002"} {
		if ok, err := callWithToken(s.url, id, chain); !ok {
			t.Fatalf("call %d with the offline chain: %v", i, err)
		}
	}
	// max_tasks 2 was minted into the leaf: the third call is refused.
	if ok, _ := callWithToken(s.url, "01JOFFLINE0000000000000003", chain); ok {
		t.Fatal("a third call passed a max_tasks 2 leaf")
	}
}
