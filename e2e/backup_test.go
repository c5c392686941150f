package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// backup from a running sidecar, restore into a new directory, and the
// restored database verifies offline with the running sidecar's key; a
// cut copy and a non-empty directory are refused.
func TestBackupRestoreCommands(t *testing.T) {
	s := newSidecar(t, externalAgent(t), "agent urn:asap:agent:demo")
	for i := 0; i < 4; i++ {
		if ok, err := call(s.url, fmt.Sprintf("01JBACKUPCLI%014d", i), "echo", `{}`); !ok {
			t.Fatal(err)
		}
	}
	if resp, err := http.Get("http://" + s.admin + "/asap/audit/checkpoint"); err != nil {
		t.Fatal(err)
	} else {
		resp.Body.Close()
	}
	vkey := auditKey(t, s.admin)
	file := filepath.Join(t.TempDir(), "asap.backup")
	_, stderr, err := cliStdin(t, "", "asap", "backup", "--address", s.admin, "-o", file)
	if err != nil || !strings.Contains(stderr, "written to "+file) {
		t.Fatalf("backup: %v: %s", err, stderr)
	}
	if st, err := os.Stat(file); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("backup file: %v %v", st, err)
	}
	if _, err := os.Stat(file + ".partial"); !os.IsNotExist(err) {
		t.Fatalf("the partial file stayed: %v", err)
	}

	// Refused: a directory with a database in it, and a cut copy.
	out, err := cli(t, "asap", "restore", "--db", s.dir, file)
	if err == nil || !strings.Contains(out, "not empty") {
		t.Fatalf("restore over the live directory: %v: %s", err, out)
	}
	b, _ := os.ReadFile(file)
	cut := filepath.Join(t.TempDir(), "cut.backup")
	if err := os.WriteFile(cut, b[:len(b)-100], 0o600); err != nil {
		t.Fatal(err)
	}
	target := filepath.Join(t.TempDir(), "restored")
	out, err = cli(t, "asap", "restore", "--db", target, cut)
	if err == nil || !strings.Contains(out, "truncated") && !strings.Contains(out, "damaged") {
		t.Fatalf("restore of a cut backup: %v: %s", err, out)
	}
	if _, err := os.Stat(target); !os.IsNotExist(err) {
		t.Fatalf("a failed restore left %s: %v", target, err)
	}

	stdout, stderr, err := cliStdin(t, string(b), "asap", "restore", "--db", target, "-")
	if err != nil || !strings.Contains(stdout, "restored") || !strings.Contains(stdout, "agent.key") {
		t.Fatalf("restore: %v: %s %s", err, stdout, stderr)
	}
	out, err = cli(t, "asap", "audit", "verify", "--db", target, "--vkey", vkey)
	if err != nil || !strings.Contains(out, "valid: 12 entries, 1 checkpoints checked") {
		t.Fatalf("verify --db of the restored directory: %v: %s", err, out)
	}
	csv, _, err := cliStdin(t, "", "asap", "usage", "export", "--db", target, "--format", "csv")
	if err != nil || strings.Count(csv, "\n") != 5 {
		t.Fatalf("usage export of the restored directory: %v: %s", err, csv)
	}

	// A stopped sidecar's directory backs up with --db, read-only, and
	// gives the same database.
	s.stop(syscall.SIGTERM)
	again := filepath.Join(t.TempDir(), "again.backup")
	if _, stderr, err := cliStdin(t, "", "asap", "backup", "--db", s.dir, "-o", again); err != nil {
		t.Fatalf("backup --db: %v: %s", err, stderr)
	}
	target2 := filepath.Join(t.TempDir(), "restored2")
	if out, err := cli(t, "asap", "restore", "--db", target2, again); err != nil {
		t.Fatalf("restore of the --db backup: %v: %s", err, out)
	}
	out, err = cli(t, "asap", "audit", "verify", "--db", target2, "--vkey", vkey)
	if err != nil || !strings.Contains(out, "valid: 12 entries, 1 checkpoints checked") {
		t.Fatalf("verify --db of the second restore: %v: %s", err, out)
	}
}

// auditKey is the running sidecar's audit_key, from /asap/status.
func auditKey(t *testing.T, admin string) string {
	t.Helper()
	var st struct {
		Agents []struct {
			AuditKey string `json:"audit_key"`
		} `json:"agents"`
	}
	resp, err := http.Get("http://" + admin + "/asap/status")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil || len(st.Agents) != 1 || st.Agents[0].AuditKey == "" {
		t.Fatalf("status: %v %+v", err, st)
	}
	return st.Agents[0].AuditKey
}
