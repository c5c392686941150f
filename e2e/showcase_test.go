package e2e

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

// demoCommand is 'asap-caddy asap demo' with its temporary directory
// under tmp, so the test can see what it leaves behind.
func demoCommand(ctx context.Context, t *testing.T, tmp string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, binary, append([]string{"asap", "demo"}, args...)...)
	cmd.Env = append(os.Environ(), "TMPDIR="+tmp, "XDG_DATA_HOME="+t.TempDir(), "XDG_CONFIG_HOME="+t.TempDir())
	return cmd
}

// checkShowcaseOutput fails unless every step printed ✓ and none ✗.
func checkShowcaseOutput(t *testing.T, out string) {
	t.Helper()
	for i := 1; i <= 8; i++ {
		if !regexp.MustCompile(fmt.Sprintf(`(?m)^✓ %d/8 \S`, i)).MatchString(out) {
			t.Errorf("step %d/8 did not print a ✓ line", i)
		}
	}
	if strings.Contains(out, "✗") || !strings.Contains(out, "All 8 steps passed.") {
		t.Errorf("the showcase did not report every step passed")
	}
}

// The whole showcase, as a newcomer runs it: one command, exit 0, every
// step passed, nothing left behind.
func TestShowcaseCommand(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Second)
	defer cancel()
	tmp := t.TempDir()
	start := time.Now()
	out, err := demoCommand(ctx, t, tmp).Output()
	t.Logf("asap demo took %v; its output:\n%s", time.Since(start).Round(time.Millisecond), out)
	if err != nil {
		t.Fatalf("asap demo failed: %v", err)
	}
	checkShowcaseOutput(t, string(out))
	left, err := os.ReadDir(tmp)
	if err != nil {
		t.Fatal(err)
	}
	if len(left) != 0 {
		t.Errorf("asap demo left %d files in its temporary directory, e.g. %s", len(left), left[0].Name())
	}
}

// With --keep the sidecar stays up after the last step, answering on its
// admin API, until interrupted; its directory is kept.
func TestShowcaseKeep(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Second)
	defer cancel()
	tmp := t.TempDir()
	cmd := demoCommand(ctx, t, tmp, "--keep")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// Read until the command says what it left running.
	var out strings.Builder
	lines := bufio.NewScanner(stdout)
	admin := ""
	for admin == "" && lines.Scan() {
		line := lines.Text()
		out.WriteString(line + "\n")
		if f := strings.Fields(line); len(f) == 2 && f[0] == "admin" && strings.HasSuffix(f[1], "/asap/status") && strings.Contains(out.String(), "Left running") {
			admin = f[1]
		}
	}
	if admin == "" {
		_ = cmd.Process.Kill()
		t.Fatalf("asap demo --keep never said it was left running:\n%s", out.String())
	}
	checkShowcaseOutput(t, out.String())
	resp, err := http.Get(admin)
	if err != nil {
		t.Fatalf("the kept sidecar's admin API: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: HTTP %d", admin, resp.StatusCode)
	}
	if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	rest, _ := io.ReadAll(stdout)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("asap demo --keep after SIGINT: %v\n%s", err, rest)
	}
	if !strings.Contains(string(rest), "Stopped. Its directory is kept") {
		t.Errorf("no word on stopping after SIGINT:\n%s", rest)
	}
	if left, _ := os.ReadDir(tmp); len(left) != 1 {
		t.Errorf("--keep should keep the showcase's directory; %d entries in TMPDIR", len(left))
	}
}
