package e2e

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/dgraph-io/badger/v4"

	"github.com/asap-sidecar/asap-sidecar/caddymodule"
	"github.com/asap-sidecar/asap-sidecar/caddymodule/audit"
	"github.com/asap-sidecar/asap-sidecar/caddymodule/metering"
	"github.com/asap-sidecar/asap-sidecar/storage"
)

func TestListModulesShowsSidecarModules(t *testing.T) {
	out, err := cli(t, "list-modules")
	if err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	for _, m := range []string{"http.handlers.asap", "admin.api.asap", "http.handlers.asap_demo_agent"} {
		if !strings.Contains(out, m+"\n") {
			t.Errorf("list-modules lacks %s", m)
		}
	}
	found := false
	for _, line := range strings.Split(out, "\n") {
		if strings.TrimSpace(line) == "asap" {
			found = true
		}
	}
	if !found {
		t.Error("list-modules lacks the asap app")
	}
}

func TestVersionCommand(t *testing.T) {
	out, err := cli(t, "asap", "version")
	if err != nil || !strings.HasPrefix(out, "asap-sidecar "+caddymodule.Version+"\n") || !strings.Contains(out, "caddy v2.11") {
		t.Fatalf("%v: %q", err, out)
	}
	// Caddy's own version command names the sidecar's release first.
	out, err = cli(t, "version")
	if err != nil || !strings.HasPrefix(out, "asap-sidecar "+caddymodule.Version+", caddy v2.11") {
		t.Fatalf("asap-caddy version: %v: %q", err, out)
	}
	out, _ = cli(t, "asap", "--help")
	if !strings.Contains(out, "version") {
		t.Fatalf("asap --help does not list version: %s", out)
	}
	// Usage lines name the binary, as the examples do.
	out, _ = cli(t, "asap", "delegation", "list", "--help")
	if !strings.Contains(out, "Usage:\n  asap-caddy asap delegation list [flags]") {
		t.Fatalf("usage line: %s", out)
	}
}

func writeFile(t *testing.T, body string) string {
	t.Helper()
	f := filepath.Join(t.TempDir(), "Caddyfile")
	if err := os.WriteFile(f, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return f
}

func TestAdaptAndValidateNameTheBadOption(t *testing.T) {
	misspelt := writeFile(t, ":8080 {\n\tasap {\n\t\tdelegtion require\n\t}\n\treverse_proxy 127.0.0.1:9000\n}\n")
	out, err := cli(t, "adapt", "--config", misspelt)
	if err == nil || !strings.Contains(out, "unknown asap option") || !strings.Contains(out, "delegtion") {
		t.Fatalf("adapt of a misspelt option: %v: %s", err, out)
	}
	badValue := writeFile(t, ":8080 {\n\tasap {\n\t\tdurability fast\n\t\tsla {\n\t\t\tavailability 120%\n\t\t}\n\t}\n\treverse_proxy 127.0.0.1:9000\n}\n")
	out, err = cli(t, "validate", "--config", badValue)
	if err == nil || !strings.Contains(out, "option durability") || !strings.Contains(out, "option sla availability") {
		t.Fatalf("validate of bad values: %v: %s", err, out)
	}
	badForm := writeFile(t, ":8080 {\n\tasap {\n\t\tmax_body lots\n\t}\n\treverse_proxy 127.0.0.1:9000\n}\n")
	out, err = cli(t, "adapt", "--config", badForm)
	if err == nil || !strings.Contains(out, "max_body") {
		t.Fatalf("adapt of a bad size: %v: %s", err, out)
	}
}

func TestValidateBesideRunningSidecar(t *testing.T) {
	s := newSidecar(t, externalAgent(t), "agent urn:asap:agent:demo")
	if ok, err := call(s.url, "01JVALID000000000000000001", "echo", `{}`); !ok {
		t.Fatal(err)
	}
	// The storage directory is locked by the running sidecar; validating
	// the same config must neither need nor take that lock.
	out, err := cli(t, "validate", "--config", s.file, "--adapter", "caddyfile")
	if err != nil || !strings.Contains(out, "Valid configuration") {
		t.Fatalf("validate beside a running sidecar: %v: %s", err, out)
	}
	if ok, err := call(s.url, "01JVALID000000000000000002", "echo", `{}`); !ok {
		t.Fatalf("sidecar harmed by validate: %v", err)
	}
}

func TestCLIReloadUnderTraffic(t *testing.T) {
	s := newSidecar(t, externalAgent(t), "agent urn:asap:agent:demo")
	opened := s.status().Agents[0].StorageOpenedAt

	var ok atomic.Int64
	var failures []string
	var mu sync.Mutex
	stop := make(chan struct{})
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
				id := fmt.Sprintf("01JCLIRELOAD%02d%012d", w, i)
				if good, err := call(s.url, id, "echo", `{}`); !good {
					mu.Lock()
					failures = append(failures, fmt.Sprintf("%s: %v", id, err))
					mu.Unlock()
					continue
				}
				ok.Add(1)
			}
		}(w)
	}
	// Each reload happens while calls flow: wait for answers between them.
	flowing := func() {
		before := ok.Load()
		waitUntil(t, func() bool { return ok.Load() >= before+20 })
	}
	for i := 0; i < 5; i++ {
		flowing()
		s.writeConfig(fmt.Sprintf("agent urn:asap:agent:demo\nmax_body %dKiB", 2048+i))
		if out, err := cli(t, "reload", "--config", s.file, "--adapter", "caddyfile", "--address", s.admin); err != nil {
			t.Fatalf("reload %d: %v: %s", i, err, out)
		}
	}
	flowing()
	close(stop)
	wg.Wait()

	if len(failures) > 0 {
		t.Fatalf("%d calls failed during reloads, first: %s", len(failures), failures[0])
	}
	st := s.status().Agents[0]
	if !st.StorageOpenedAt.Equal(opened) {
		t.Fatalf("storage reopened by reload: %v → %v", opened, st.StorageOpenedAt)
	}
	if st.Forwarded != uint64(ok.Load()) || ok.Load() == 0 {
		t.Fatalf("%d calls answered, %d recorded", ok.Load(), st.Forwarded)
	}
	if strings.Contains(s.log.String(), "Cannot acquire directory lock") {
		t.Fatal("a reload tried to lock the database again")
	}
}

// After kill -9 at any moment, the database opens and, with strict
// durability, every answer a client received has its record.
func TestKill9KeepsEveryAnsweredRecord(t *testing.T) {
	s := newSidecar(t, externalAgent(t), "agent urn:asap:agent:demo\ndurability strict")
	var mu sync.Mutex
	var answered []string
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for w := 0; w < 16; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				id := fmt.Sprintf("01JKILL%02d%017d", w, i)
				if good, _ := call(s.url, id, "echo", `{}`); good {
					mu.Lock()
					answered = append(answered, id)
					mu.Unlock()
				}
			}
		}(w)
	}
	// Kill mid-traffic, once a good number of answers are out.
	waitUntil(t, func() bool { mu.Lock(); defer mu.Unlock(); return len(answered) >= 50 })
	s.stop(syscall.SIGKILL)
	close(stop)
	wg.Wait()
	if len(answered) == 0 {
		t.Fatal("no call was answered before the kill")
	}

	db, err := storage.Open(storage.Options{Dir: s.dir})
	if err != nil {
		t.Fatalf("database does not open after kill -9: %v", err)
	}
	stored := map[string]bool{}
	if err := metering.New(db, 0).Each(metering.Filter{}, func(e *metering.Event) bool { stored[e.EnvelopeID] = true; return true }); err != nil {
		t.Fatal(err)
	}
	missing := 0
	for _, id := range answered {
		if !stored[id] {
			missing++
		}
	}
	counts, err := metering.CountsOf(db, "urn:asap:agent:demo")
	verdict, verr := audit.New(db).Verify(nil)
	db.Close()
	if verr != nil || !verdict.Valid || verdict.Size < 3*uint64(len(answered)) {
		t.Fatalf("audit log after kill -9: %+v %v (want valid, ≥ %d entries)", verdict, verr, 3*len(answered))
	}
	if err != nil || missing > 0 || counts.Forwarded < uint64(len(answered)) {
		t.Fatalf("%d of %d answered calls have no record after kill -9 (counts %+v, %v)", missing, len(answered), counts, err)
	}

	// And the sidecar starts again on it.
	s.start()
	if got := s.status().Agents[0].Forwarded; got < uint64(len(answered)) {
		t.Fatalf("after restart %d forwarded, want ≥ %d", got, len(answered))
	}
}

func TestSIGTERMFinishesInFlightCalls(t *testing.T) {
	agent, arrived := countingAgent(t)
	s := newSidecar(t, agent, "agent urn:asap:agent:demo")
	var wg sync.WaitGroup
	errs := make(chan error, 5)
	for i := 0; i < 5; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			id := fmt.Sprintf("01JTERM%019d", i)
			if good, err := call(s.url, id, "sleep", `{"ms":500}`); !good {
				errs <- fmt.Errorf("%s: %v", id, err)
			}
		}(i)
	}
	// All five reached the agent, which sleeps 500 ms on each.
	waitUntil(t, func() bool { return arrived.Load() == 5 })
	s.stop(syscall.SIGTERM)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("in-flight call lost on SIGTERM: %v", err)
	}
	db, err := storage.Open(storage.Options{Dir: s.dir})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if c, _ := metering.CountsOf(db, "urn:asap:agent:demo"); c.Forwarded != 5 {
		t.Fatalf("after graceful stop %d records, want 5", c.Forwarded)
	}
}

func TestUsageExportCommand(t *testing.T) {
	s := newSidecar(t, externalAgent(t), "agent urn:asap:agent:demo")
	for i := 0; i < 3; i++ {
		if ok, err := call(s.url, fmt.Sprintf("01JEXPORT%017d", i), "echo", `{"tokens_in":4,"tokens_out":2}`); !ok {
			t.Fatal(err)
		}
	}
	out, err := cli(t, "asap", "usage", "export", "--format", "csv", "--address", s.admin, "--since", "1h")
	if err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	lines := strings.Split(strings.TrimRight(out, "\r\n"), "\r\n")
	if len(lines) != 4 || lines[0] != "task_id,agent_id,consumer_id,tokens_in,tokens_out,duration_ms,api_calls,timestamp" ||
		!strings.Contains(lines[1], ",urn:asap:agent:demo,urn:asap:agent:client,4,2,") || !strings.HasSuffix(lines[1], "+00:00") {
		t.Fatalf("csv export:\n%s", out)
	}
	// --storage picks the asap block; an unknown one is refused naming
	// the configured directories.
	out, err = cli(t, "asap", "usage", "export", "--format", "json", "--address", s.admin, "--storage", s.dir)
	if err != nil || strings.Count(out, `"task_id"`) != 3 {
		t.Fatalf("export --storage: %v: %s", err, out)
	}
	out, err = cli(t, "asap", "usage", "export", "--address", s.admin, "--storage", "/no/such/dir")
	if err == nil || !strings.Contains(out, "name the database with ?storage=DIR") || !strings.Contains(out, s.dir) {
		t.Fatalf("export --storage unknown: %v: %s", err, out)
	}
	// --db on a running sidecar's directory fails clearly.
	out, err = cli(t, "asap", "usage", "export", "--db", s.dir)
	if err == nil || !strings.Contains(out, "drop --db") {
		t.Fatalf("--db on a running sidecar: %v: %s", err, out)
	}
	s.stop(syscall.SIGTERM)
	out, err = cli(t, "asap", "usage", "export", "--db", s.dir, "--format", "json", "--agent", "urn:asap:agent:demo")
	if err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	var doc struct {
		Data []struct {
			TaskID   string `json:"task_id"`
			TokensIn int64  `json:"tokens_in"`
		} `json:"data"`
	}
	if err := json.Unmarshal([]byte(out), &doc); err != nil || len(doc.Data) != 3 || doc.Data[0].TokensIn != 4 {
		t.Fatalf("json export from --db: %v: %s", err, out)
	}
	if out, err := cli(t, "asap", "usage", "export", "--format", "xml", "--db", s.dir); err == nil || !strings.Contains(out, "--format must be csv or json") {
		t.Fatalf("bad format: %v: %s", err, out)
	}
}

func TestKeygenAndDelegationCommands(t *testing.T) {
	keys := t.TempDir()
	out, err := cli(t, "asap", "keygen", "--out", keys, "--name", "demo")
	if err != nil || !strings.Contains(out, "thumbprint") {
		t.Fatalf("keygen: %v: %s", err, out)
	}
	for name, mode := range map[string]os.FileMode{"demo.key": 0o600, "demo.jwk": 0o600, "demo.pub": 0o644, "demo.pub.jwk": 0o644} {
		st, err := os.Stat(filepath.Join(keys, name))
		if err != nil || st.Mode().Perm() != mode {
			t.Fatalf("%s: %v %v", name, err, st)
		}
	}
	if out, err := cli(t, "asap", "keygen", "--out", keys, "--name", "demo"); err == nil || !strings.Contains(out, "--force") {
		t.Fatalf("keygen overwrote a key: %v %s", err, out)
	}

	s := newSidecar(t, externalAgent(t), "agent urn:asap:agent:demo\ndelegation require\nkey "+filepath.Join(keys, "demo.key"))
	token, summary, err := cliStdin(t, "", "asap", "delegation", "create", "--address", s.admin, "--delegate", "urn:asap:agent:client", "--scopes", "task.execute", "--max-tasks", "10", "--expires-in", "1h")
	token = strings.TrimSpace(token)
	if err != nil || strings.Count(token, ".") != 2 {
		t.Fatalf("create: %v: %s %s", err, token, summary)
	}
	// stdout is the token alone; the id to revoke it by and its limits
	// are on stderr.
	if !strings.Contains(summary, "max_tasks 10") || !strings.Contains(summary, "asap-caddy asap delegation revoke del_") {
		t.Fatalf("create's summary: %s", summary)
	}
	if ok, err := callWithToken(s.url, "01JCLITOKEN000000000000001", token); !ok {
		t.Fatalf("minted token refused: %v", err)
	}
	out, err = cli(t, "asap", "delegation", "list", "--address", s.admin)
	if err != nil || !strings.Contains(out, "urn:asap:agent:client") || !strings.Contains(out, "MAX_TASKS") || !strings.Contains(out, "active") {
		t.Fatalf("list: %v: %s", err, out)
	}
	// The admin address from --config, without Caddy's own log lines.
	stdout, stderr, err := cliStdin(t, "", "asap", "delegation", "list", "--config", s.file)
	if err != nil || !strings.Contains(stdout, "urn:asap:agent:client") || stderr != "" {
		t.Fatalf("list --config: %v: %s\nstderr: %s", err, stdout, stderr)
	}
	// An unknown id is an error.
	if out, err := cli(t, "asap", "delegation", "revoke", "--address", s.admin, "del_nosuch"); err == nil || !strings.Contains(out, "--force") {
		t.Fatalf("revoke of an unknown id: %v: %s", err, out)
	}
	pub := filepath.Join(keys, "demo.pub")
	out, err = cli(t, "asap", "delegation", "inspect", token, "--trust", "urn:asap:agent:demo="+pub, "--sender", "urn:asap:agent:client", "--recipient", "urn:asap:agent:demo")
	if err != nil || !strings.Contains(out, "VALID") || !strings.Contains(out, "urn:asap:agent:demo delegates to urn:asap:agent:client") {
		t.Fatalf("inspect: %v: %s", err, out)
	}
	out, err = cli(t, "asap", "delegation", "inspect", token, "--trust", "urn:asap:agent:demo="+pub, "--sender", "urn:asap:agent:mallory")
	if err == nil || !strings.Contains(out, "REJECTED (sender_not_audience)") {
		t.Fatalf("inspect of a wrong sender: %v: %s", err, out)
	}
	id := strings.Fields(strings.Split(out, "\n")[0])[2]
	if out, err := cli(t, "asap", "delegation", "revoke", "--address", s.admin, id); err != nil {
		t.Fatalf("revoke: %v: %s", err, out)
	}
	if ok, _ := callWithToken(s.url, "01JCLITOKEN000000000000002", token); ok {
		t.Fatal("revoked token still accepted")
	}
	s.stop(syscall.SIGTERM)
	out, err = cli(t, "asap", "delegation", "list", "--db", s.dir, "--all", "--json")
	if err != nil || !strings.Contains(out, `"active":false`) || !strings.Contains(out, id) {
		t.Fatalf("list --db: %v: %s", err, out)
	}
}

func callWithToken(url, id, token string) (bool, error) {
	req, _ := http.NewRequest(http.MethodPost, url+"/asap", strings.NewReader(envelope(id, "echo", `{}`)))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-ASAP-Delegation-Token", token)
	resp, err := client.Do(req)
	if err != nil {
		return false, err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if !strings.Contains(string(b), `"result"`) {
		return false, fmt.Errorf("%s", b)
	}
	return true, nil
}

func TestAuditCommands(t *testing.T) {
	s := newSidecar(t, externalAgent(t), "agent urn:asap:agent:demo")
	for i := 0; i < 4; i++ {
		if ok, err := call(s.url, fmt.Sprintf("01JAUDITCLI%015d", i), "echo", `{}`); !ok {
			t.Fatal(err)
		}
	}
	out, err := cli(t, "asap", "audit", "verify", "--address", s.admin)
	if err != nil || !strings.Contains(out, "valid: 12 entries") {
		t.Fatalf("verify: %v: %s", err, out)
	}
	out, err = cli(t, "asap", "audit", "export", "--address", s.admin, "--format", "jsonl")
	if err != nil || strings.Count(out, "\n") != 12 || !strings.Contains(out, `"operation":"usage.recorded"`) {
		t.Fatalf("export: %v: %s", err, out)
	}
	var st struct {
		Agents []struct {
			AuditKey string `json:"audit_key"`
		} `json:"agents"`
	}
	resp, err := http.Get("http://" + s.admin + "/asap/status")
	if err != nil {
		t.Fatal(err)
	}
	json.NewDecoder(resp.Body).Decode(&st)
	resp.Body.Close()
	if _, err := http.Get("http://" + s.admin + "/asap/audit/checkpoint"); err != nil {
		t.Fatal(err)
	}
	s.stop(syscall.SIGTERM)

	out, err = cli(t, "asap", "audit", "verify", "--db", s.dir, "--vkey", st.Agents[0].AuditKey)
	if err != nil || !strings.Contains(out, "valid: 12 entries, 1 checkpoints checked") {
		t.Fatalf("verify --db: %v: %s", err, out)
	}
	// Edit one entry's details behind the sidecar's back.
	bdb, err := badger.Open(badger.DefaultOptions(s.dir).WithLogger(nil))
	if err != nil {
		t.Fatal(err)
	}
	// Entry 5 is the last of the block holding seq 3 to 5 (one block per
	// call): the block is the last key at or before seq 5, and its last
	// consumer is entry 5's. The replacement keeps the length, so the
	// block still reads.
	err = bdb.Update(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Reverse: true, Prefix: []byte("ae\x00")})
		it.Seek(append([]byte("ae\x00"), 0, 0, 0, 0, 0, 0, 0, 5))
		if !it.Valid() {
			it.Close()
			return errors.New("no block at or before seq 5")
		}
		key := it.Item().KeyCopy(nil)
		v, err := it.Item().ValueCopy(nil)
		it.Close()
		if err != nil {
			return err
		}
		raw, err := audit.DecompressBlock(v)
		if err != nil {
			return err
		}
		i := bytes.LastIndex(raw, []byte(`"consumer":"urn:asap:agent:client"`))
		if i < 0 {
			return errors.New("no consumer in the block")
		}
		copy(raw[i:], `"consumer":"urn:asap:agent:forged"`)
		return txn.Set(key, audit.CompressBlock(raw))
	})
	bdb.Close()
	if err != nil {
		t.Fatal(err)
	}
	out, err = cli(t, "asap", "audit", "verify", "--db", s.dir)
	if err == nil || !strings.Contains(out, "BROKEN at seq 5") {
		t.Fatalf("verify of a tampered log: %v: %s", err, out)
	}
}
