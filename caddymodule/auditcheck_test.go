package caddymodule

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/transparency-dev/formats/log"
	"golang.org/x/mod/sumdb/note"

	"github.com/asap-sidecar/asap-sidecar/caddymodule/audit"
	"github.com/asap-sidecar/asap-sidecar/caddymodule/delegation"
)

// auditFixture is a real sidecar's audit log as an auditor receives it:
// a json export, a kept checkpoint and the verifier key, in dir.
type auditFixture struct {
	s          *sidecar
	dir        string
	export     string // json export (carries checkpoints)
	checkpoint string // the signed note, as GET /asap/audit/checkpoint gives it
	vkey       string
	key        ed25519.PrivateKey
	doc        map[string]json.RawMessage
	entries    []map[string]any
}

func newAuditFixture(t *testing.T) *auditFixture {
	t.Helper()
	dir := t.TempDir()
	priv, _ := keys(t, dir, "demo")
	key, err := delegation.LoadPrivateKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	s := startSidecar(t, externalDemoAgent(t), "agent urn:asap:agent:demo\nkey "+priv)
	for i := 0; i < 4; i++ {
		post(t, s.url+"/asap", rpc("r", envelope(fmt.Sprintf("01JAUDITCHK%015d", i), "echo", `{"text":"<a & b>"}`)))
	}
	f := &auditFixture{s: s, dir: dir, key: key}
	var st Status
	getJSON(t, "http://"+s.adminAddr+"/asap/status", &st)
	f.vkey = st.Agents[0].AuditKey
	f.checkpoint = f.write(t, "checkpoint.txt", f.get(t, "/asap/audit/checkpoint"))
	// More entries after the kept checkpoint: the export signs its own.
	post(t, s.url+"/asap", rpc("r", envelope("01JAUDITCHK999999999999999", "echo", `{}`)))
	raw := f.get(t, "/asap/audit/export?format=json")
	f.export = f.write(t, "export.json", raw)
	if err := json.Unmarshal(raw, &f.doc); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(f.doc["entries"], &f.entries); err != nil {
		t.Fatal(err)
	}
	return f
}

func (f *auditFixture) get(t *testing.T, path string) []byte {
	t.Helper()
	resp, err := client.Get("http://" + f.s.adminAddr + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		t.Fatalf("%s: %d %s", path, resp.StatusCode, b)
	}
	return b
}

func (f *auditFixture) write(t *testing.T, name string, b []byte) string {
	t.Helper()
	p := filepath.Join(f.dir, name)
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// exportWith writes the json export with entries (and the carried
// checkpoints, unless dropped) under name.
func (f *auditFixture) exportWith(t *testing.T, name string, entries []map[string]any, dropCheckpoints bool) string {
	t.Helper()
	doc := map[string]any{"entries": entries, "count": len(entries)}
	if !dropCheckpoints {
		doc["checkpoints"] = f.doc["checkpoints"]
	}
	b, err := json.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	return f.write(t, name, b)
}

// sign signs a checkpoint of size and root as the sidecar's origin with key.
func (f *auditFixture) sign(t *testing.T, name string, key ed25519.PrivateKey, size uint64, root []byte) string {
	t.Helper()
	s, _, err := audit.NewSigner(audit.Origin("urn:asap:agent:demo"), key)
	if err != nil {
		t.Fatal(err)
	}
	signed, err := note.Sign(&note.Note{Text: string(log.Checkpoint{Origin: s.Name(), Size: size, Hash: root}.Marshal())}, s)
	if err != nil {
		t.Fatal(err)
	}
	return f.write(t, name, signed)
}

// pythonChecker is the Python that runs the independent script, or ""
// with the reason none can here. CI sets ASAP_REQUIRE_PYTHON=1 so that
// the script's half never goes unchecked there.
func pythonChecker() (string, string) {
	why := "python3 is not installed"
	for _, name := range []string{"python3", "/usr/bin/python3"} {
		py, err := exec.LookPath(name)
		if err != nil {
			continue
		}
		out, err := exec.Command(py, "-c", "import cryptography").CombinedOutput()
		if err == nil {
			return py, ""
		}
		why = py + " lacks the cryptography package (apt-get install -y python3-cryptography): " + strings.TrimSpace(string(out))
	}
	return "", why
}

func runPython(t *testing.T, py string, args ...string) (int, string) {
	t.Helper()
	cmd := exec.Command(py, append([]string{filepath.Join("..", "scripts", "audit_check.py")}, args...)...)
	out, err := cmd.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode(), string(out)
	} else if err != nil {
		t.Fatalf("running the script: %v", err)
	}
	return 0, string(out)
}

func clone(entries []map[string]any) []map[string]any {
	b, _ := json.Marshal(entries)
	var out []map[string]any
	_ = json.Unmarshal(b, &out)
	return out
}

// TestOfflineAuditCheck runs 'asap audit check' and the independent
// Python script on one real sidecar's export and on tampered copies of
// it; both must agree on every verdict.
func TestOfflineAuditCheck(t *testing.T) {
	f := newAuditFixture(t)
	n := len(f.entries)
	var carried []audit.ExportCheckpoint
	if err := json.Unmarshal(f.doc["checkpoints"], &carried); err != nil || len(carried) == 0 || carried[len(carried)-1].Size != uint64(n) {
		t.Fatalf("the json export carries no checkpoint covering its %d entries: %v %s", n, err, f.doc["checkpoints"])
	}
	keptSize := carried[0].Size
	cp, err := audit.ParseCheckpoint(mustRead(t, f.checkpoint), mustVerifier(t, f.vkey))
	if err != nil || cp.Size >= uint64(n) {
		t.Fatalf("kept checkpoint %+v (%v), export has %d", cp, err, n)
	}

	otherKey := func() ed25519.PrivateKey { _, k, _ := ed25519.GenerateKey(rand.Reader); return k }()
	rootOf := func(entries []map[string]any) []byte {
		var a audit.Auditor
		b, _ := json.Marshal(map[string]any{"entries": entries})
		if _, err := audit.ReadExport(strings.NewReader(string(b)), a.Add); err != nil {
			t.Fatal(err)
		}
		return a.RootAt(a.Size())
	}

	edited := clone(f.entries)
	edited[2]["details"].(map[string]any)["consumer_id"] = "urn:asap:agent:someone-else"
	// An editor who also rewrites every hash after it: the chain holds, the
	// signed roots do not.
	rehashed := clone(edited)
	prev := rehashed[1]["hash"].(string)
	for _, e := range rehashed[2:] {
		raw, _ := json.Marshal(e["details"])
		canon, _ := audit.Canonical(raw)
		e["prev_hash"] = prev
		e["hash"] = audit.ChainHash(prev, e["timestamp"].(string), e["operation"].(string), canon)
		prev = e["hash"].(string)
	}
	removed := append(clone(f.entries[:3]), clone(f.entries[4:])...)
	reordered := clone(f.entries)
	reordered[3], reordered[4] = reordered[4], reordered[3]
	tamperedRoot := strings.Replace(string(mustRead(t, f.checkpoint)), base64.StdEncoding.EncodeToString(cp.Hash), base64.StdEncoding.EncodeToString(make([]byte, 32)), 1)

	cases := []struct {
		name        string
		entries     string
		checkpoints []string
		keys        []string
		want        string // in the output; "" for valid
	}{
		{"good export", f.export, []string{f.checkpoint}, []string{f.vkey}, ""},
		{"good export, carried checkpoints only", f.export, nil, []string{f.vkey}, ""},
		{"good export, several keys", f.export, []string{f.checkpoint}, []string{f.sign0(t, otherKey), f.vkey}, ""},
		{"edited entry", f.exportWith(t, "edited.json", edited, false), []string{f.checkpoint}, []string{f.vkey}, "BROKEN at seq 2: hash does not match"},
		{"edited entry, chain rewritten", f.exportWith(t, "rehashed.json", rehashed, true), []string{f.checkpoint}, []string{f.vkey}, "root does not match entries 0 to " + fmt.Sprint(keptSize-1)},
		{"removed entry", f.exportWith(t, "removed.json", removed, false), []string{f.checkpoint}, []string{f.vkey}, "BROKEN at seq 3: entry 3 is missing or out of order"},
		{"reordered entries", f.exportWith(t, "reordered.json", reordered, false), []string{f.checkpoint}, []string{f.vkey}, "BROKEN at seq 3"},
		{"truncated log", f.exportWith(t, "truncated.json", clone(f.entries[:keptSize-2]), true), []string{f.checkpoint}, []string{f.vkey}, fmt.Sprintf("signed at size %d, but the export has only %d entries (export truncated)", keptSize, keptSize-2)},
		{"truncated log, carried checkpoints kept", f.exportWith(t, "truncated2.json", clone(f.entries[:n-1]), false), nil, []string{f.vkey}, "export truncated"},
		{"checkpoint from another key", f.export, []string{f.sign(t, "other.txt", otherKey, cp.Size, cp.Hash)}, []string{f.vkey}, "other.txt"},
		{"tampered checkpoint root", f.export, []string{f.write(t, "tampered.txt", []byte(tamperedRoot))}, []string{f.vkey}, "tampered.txt"},
		{"wrong root signed with the right key", f.export, []string{f.sign(t, "wrongroot.txt", f.key, cp.Size, rootOf(f.entries[:cp.Size-1]))}, []string{f.vkey}, "wrongroot.txt: its root does not match"},
	}
	py, why := pythonChecker()
	if py == "" {
		if os.Getenv("ASAP_REQUIRE_PYTHON") != "" {
			t.Fatalf("ASAP_REQUIRE_PYTHON is set but the script cannot run: %s", why)
		}
		t.Logf("NOT running scripts/audit_check.py (the command's half still runs): %s", why)
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			args := []string{"--entries", c.entries}
			for _, cp := range c.checkpoints {
				args = append(args, "--checkpoint", cp)
			}
			for _, k := range c.keys {
				args = append(args, "--key", k)
			}
			code, out, err := run(t, cmdAuditCheck, "audit check", args...)
			if c.want == "" {
				if code != 0 || !strings.HasPrefix(out, fmt.Sprintf("valid: %d entries", n)) {
					t.Fatalf("check: %d %v\n%s", code, err, out)
				}
			} else if code != 1 || !strings.Contains(out, c.want) {
				t.Fatalf("check: %d %v\n%s\nwant %q", code, err, out, c.want)
			}
			if py == "" {
				return
			}
			pcode, pout := runPython(t, py, args...)
			if pcode != code || (c.want == "" && !strings.HasPrefix(pout, fmt.Sprintf("valid: %d entries", n))) {
				t.Fatalf("the Python script says %d:\n%s\nthe command %d:\n%s", pcode, pout, code, out)
			}
		})
	}
}

// sign0 is a verifier key of another key under the same name.
func (f *auditFixture) sign0(t *testing.T, key ed25519.PrivateKey) string {
	_, vkey, err := audit.NewSigner(audit.Origin("urn:asap:agent:demo"), key)
	if err != nil {
		t.Fatal(err)
	}
	return vkey
}

func mustRead(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func mustVerifier(t *testing.T, vkey string) note.Verifier {
	t.Helper()
	v, err := note.NewVerifier(vkey)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// TestAuditExportCarriesCheckpointsAndProofs: 'asap audit export' in jsonl
// carries checkpoints only when asked (plain jsonl stays an entry a line),
// the jsonl export checks like the json one, and check prints proofs that
// verify against the kept checkpoint.
func TestAuditExportCarriesCheckpointsAndProofs(t *testing.T) {
	f := newAuditFixture(t)
	n := len(f.entries)
	code, plain, err := run(t, cmdAuditExport, "audit export", "--format", "jsonl", "--address", f.s.adminAddr)
	if code != 0 || strings.Count(plain, "\n") != n || strings.Contains(plain, `"type":"checkpoint"`) {
		t.Fatalf("plain jsonl: %d %v, %d lines for %d entries", code, err, strings.Count(plain, "\n"), n)
	}
	code, withCps, err := run(t, cmdAuditExport, "audit export", "--format", "jsonl", "--checkpoints", "--address", f.s.adminAddr)
	lines := strings.Split(strings.TrimSpace(withCps), "\n")
	if code != 0 || len(lines) <= n || !strings.HasPrefix(lines[n], `{"type":"checkpoint","size":`) {
		t.Fatalf("jsonl --checkpoints: %d %v\n%s", code, err, withCps)
	}
	if code, _, err := run(t, cmdAuditExport, "audit export", "--format", "csv", "--checkpoints", "--address", f.s.adminAddr); code == 0 || !strings.Contains(err.Error(), "csv has no place for checkpoints") {
		t.Fatalf("csv --checkpoints: %d %v", code, err)
	}
	// A filtered export has gaps: it carries no checkpoint.
	if b := f.get(t, "/asap/audit/export?format=json&operation=task.started"); strings.Contains(string(b), `"checkpoints"`) {
		t.Fatalf("filtered export carries checkpoints: %s", b)
	}
	jsonl := f.write(t, "export.jsonl", []byte(withCps))

	cp, err := audit.ParseCheckpoint(mustRead(t, f.checkpoint), mustVerifier(t, f.vkey))
	if err != nil {
		t.Fatal(err)
	}
	code, out, err := run(t, cmdAuditCheck, "audit check", "--entries", jsonl, "--checkpoint", f.checkpoint, "--key", f.vkey,
		"--inclusion", "1", "--consistency", "3")
	if code != 0 {
		t.Fatalf("check jsonl: %d %v\n%s", code, err, out)
	}
	// The printed proofs are the sidecar's own and verify independently.
	var incl struct{ Hashes []string }
	getJSON(t, fmt.Sprintf("http://%s/asap/audit/proof/inclusion?seq=1&size=%d", f.s.adminAddr, cp.Size), &incl)
	var cons struct{ Hashes []string }
	getJSON(t, fmt.Sprintf("http://%s/asap/audit/proof/consistency?old=3&new=%d", f.s.adminAddr, cp.Size), &cons)
	for _, want := range []string{
		fmt.Sprintf("inclusion of seq 1 in size %d: leaf_hash ", cp.Size) + "",
		" hashes " + strings.Join(incl.Hashes, ",") + "\n",
		fmt.Sprintf("consistency of size 3 with size %d: hashes %s\n", cp.Size, strings.Join(cons.Hashes, ",")),
		fmt.Sprintf("valid: %d entries", n),
	} {
		if !strings.Contains(out, want) {
			t.Fatalf("check output lacks %q:\n%s", want, out)
		}
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--entries", jsonl, "--checkpoint", f.checkpoint}, "--key is required"},
		{[]string{"--entries", jsonl, "--key", "nonsense"}, "is not a note verifier key"},
		{[]string{"--checkpoint", f.checkpoint, "--key", f.vkey}, "--entries is required"},
		{[]string{"--entries", f.write(t, "bare.jsonl", []byte(plain)), "--key", f.vkey}, "no checkpoint to check the entries against"},
		{[]string{"--entries", f.write(t, "x.csv", f.get(t, "/asap/audit/export?format=csv")), "--key", f.vkey}, "csv carries no checkpoints"},
		{[]string{"--entries", jsonl, "--checkpoint", f.checkpoint, "--key", f.vkey, "--inclusion", fmt.Sprint(cp.Size)}, "--inclusion: seq"},
	} {
		if code, out, err := run(t, cmdAuditCheck, "audit check", c.args...); code != 1 || err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("check %v: %d %v\n%s\nwant %q", c.args, code, err, out, c.want)
		}
	}
}

// TestAuditExportFromStoppedSidecarChecks: 'asap audit export --db' carries
// the stored checkpoints too, and the export checks against them.
func TestAuditExportFromStoppedSidecarChecks(t *testing.T) {
	f := newAuditFixture(t)
	if err := caddy.Stop(); err != nil {
		t.Fatal(err)
	}
	for _, format := range []string{"json", "jsonl"} {
		code, out, err := run(t, cmdAuditExport, "audit export", "--db", f.s.dir, "--format", format, "--checkpoints")
		if code != 0 || !strings.Contains(out, `"note":"urn:asap:agent:demo/audit\n`) {
			t.Fatalf("export --db %s: %d %v\n%.300s", format, code, err, out)
		}
		export := f.write(t, "stopped."+format, []byte(out))
		code, out, err = run(t, cmdAuditCheck, "audit check", "--entries", export, "--checkpoint", f.checkpoint, "--key", f.vkey)
		if code != 0 || !strings.HasPrefix(out, fmt.Sprintf("valid: %d entries, ", len(f.entries))) {
			t.Fatalf("check of the --db %s export: %d %v\n%s", format, code, err, out)
		}
	}
}
