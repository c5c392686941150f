package caddymodule

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/asap-sidecar/asap-sidecar/caddymodule/audit"
	"github.com/asap-sidecar/asap-sidecar/caddymodule/delegation"
	"github.com/asap-sidecar/asap-sidecar/caddymodule/metering"
	"github.com/asap-sidecar/asap-sidecar/caddymodule/protocol"
	"github.com/asap-sidecar/asap-sidecar/storage"
)

// loadGen sends tasks with one token until stopped. sent counts tasks
// before they go out, answered the ones answered with a result.
type loadGen struct {
	sent, answered atomic.Int64
	stop           chan struct{}
	halted         sync.Once
	wg             sync.WaitGroup
	mu             sync.Mutex
	waiters        map[int64]chan struct{}
}

// after is closed once n tasks more than now are answered.
func (g *loadGen) after(n int64) <-chan struct{} {
	g.mu.Lock()
	defer g.mu.Unlock()
	ch := make(chan struct{})
	g.waiters[g.answered.Load()+n] = ch
	return ch
}

func startLoad(t *testing.T, url, token string) *loadGen {
	g := &loadGen{stop: make(chan struct{}), waiters: map[int64]chan struct{}{}}
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		for i := 0; ; i++ {
			select {
			case <-g.stop:
				return
			default:
			}
			g.sent.Add(1)
			req, _ := http.NewRequest(http.MethodPost, url+"/asap", strings.NewReader(rpc("l", envelope(fmt.Sprintf("01JLOAD%019d", i), "echo", `{"tokens_in":2,"tokens_out":3}`))))
			req.Header.Set("Content-Type", "application/json")
			req.Header.Set(delegation.Header, token)
			resp, err := client.Do(req)
			if err != nil {
				t.Error(err)
				return
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if !bytes.Contains(b, []byte(`"result"`)) {
				t.Errorf("load task %d: %s", i, b)
				return
			}
			g.mu.Lock()
			if ch, ok := g.waiters[g.answered.Add(1)]; ok {
				close(ch)
			}
			g.mu.Unlock()
		}
	}()
	return g
}

func (g *loadGen) halt() {
	g.halted.Do(func() { close(g.stop) })
	g.wg.Wait()
}

// auditHashes is every audit entry's hash, in seq order.
func auditHashes(t *testing.T, db *storage.DB) []string {
	t.Helper()
	var out []string
	if err := audit.New(db).Each(func(e *audit.Entry) bool { out = append(out, e.Hash); return true }); err != nil {
		t.Fatal(err)
	}
	return out
}

func within2[T any](t *testing.T, ch <-chan T, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(30 * time.Second):
		t.Fatalf("no %s within 30s", what)
	}
}

// A backup taken through the admin API while tasks flow restores into a
// sidecar that has exactly the snapshot: the usage the backup holds (read
// offline from the restored directory) is what the restored sidecar
// answers, and lies between the tasks answered before the backup began
// and those sent before it ended; the audit log verifies and is a prefix
// of the live one; the revoked token stays revoked, the limited token's
// count and the SLA breach are kept.
func TestBackupUnderLoadRestoresIntoAWorkingSidecar(t *testing.T) {
	s := startSidecar(t, "", requireOpts+"\nsla {\n\tmax_error_rate 10%\n\tmin_samples 5\n}")
	admin := "http://" + s.adminAddr

	limited := mintViaAdmin(t, s, `{"delegate":"urn:asap:agent:client","scopes":["task.execute"],"max_tasks":5}`)
	for i := 0; i < 3; i++ {
		if a := callWith(t, s.url, limited, envelope(fmt.Sprintf("01JLIMIT%018d", i), "echo", `{}`)); a.Result == nil {
			t.Fatalf("limited task %d: %+v", i, a.Error)
		}
	}
	revoked := mintViaAdmin(t, s, `{"delegate":"urn:asap:agent:client","scopes":["task.execute"]}`)
	if a := callWith(t, s.url, revoked, envelope("01JREVOKED0000000000000001", "echo", `{}`)); a.Result == nil {
		t.Fatalf("task before revocation: %+v", a.Error)
	}
	leaf, _ := delegation.ParseLink(revoked)
	req, _ := http.NewRequest(http.MethodDelete, admin+"/asap/delegations/"+leaf.Claims.ID, nil)
	if resp, err := client.Do(req); err != nil || resp.StatusCode != http.StatusNoContent {
		t.Fatalf("revoke: %v %v", resp, err)
	}
	// Failing tasks breach the 10% error-rate SLA.
	failing := mintViaAdmin(t, s, `{"delegate":"urn:asap:agent:client","scopes":["task.execute"]}`)
	for i := 0; i < 5; i++ {
		callWith(t, s.url, failing, envelope(fmt.Sprintf("01JFAIL%019d", i), "fail", `{}`))
	}
	var breaches struct{ Count int }
	for deadline := time.Now().Add(10 * time.Second); breaches.Count == 0; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("no SLA breach within 10s")
		}
		getJSON(t, admin+"/asap/sla/breaches?agent_id=urn:asap:agent:demo", &breaches)
	}

	if resp, _ := post(t, admin+"/asap/backup", ""); resp.StatusCode != http.StatusMethodNotAllowed {
		t.Fatalf("POST /asap/backup: %d, want 405", resp.StatusCode)
	}
	load := startLoad(t, s.url, mintViaAdmin(t, s, `{"delegate":"urn:asap:agent:client","scopes":["task.execute"]}`))
	t.Cleanup(load.halt)
	within2(t, load.after(30), "30 load tasks")
	answeredBefore := load.answered.Load()
	resp, err := http.Get(admin + "/asap/backup")
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/octet-stream" ||
		!strings.Contains(resp.Header.Get("Content-Disposition"), `filename="asap-`) {
		t.Fatalf("backup answer %d %v", resp.StatusCode, resp.Header)
	}
	file := filepath.Join(t.TempDir(), "asap.backup")
	f, err := os.Create(file)
	if err != nil {
		t.Fatal(err)
	}
	_, err = io.Copy(f, resp.Body)
	resp.Body.Close()
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	sentAfter := load.sent.Load()
	// Let the live sidecar move on past the snapshot.
	within2(t, load.after(20), "20 more load tasks")
	load.halt()
	liveEvents := usageEvents(t, runningDB(t))
	liveLog := auditHashes(t, runningDB(t))

	// The restore, as an operator does it: a new directory, the backup,
	// and the generated agent key copied beside it.
	restored := filepath.Join(t.TempDir(), "restored")
	rf, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := storage.Restore(storage.Options{Dir: restored}, rf); err != nil {
		t.Fatal(err)
	}
	rf.Close()
	key, err := os.ReadFile(filepath.Join(s.dir, agentKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(restored, agentKeyFile), key, 0o600); err != nil {
		t.Fatal(err)
	}

	// The snapshot's own figures, read offline.
	ro, err := storage.Open(storage.Options{Dir: restored, ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	offline, err := metering.New(ro, 0).Summarize(metering.Filter{})
	if err != nil {
		t.Fatal(err)
	}
	loadInBackup := 0
	for id := range usageEvents(t, ro) {
		if strings.HasPrefix(id, "01JLOAD") {
			loadInBackup++
		}
	}
	offlineSize, _, err := audit.New(ro).Size()
	if err != nil {
		t.Fatal(err)
	}
	ro.Close()
	if int64(loadInBackup) < answeredBefore || int64(loadInBackup) > sentAfter {
		t.Fatalf("the backup holds %d load tasks: not between %d answered before it began and %d sent before it ended", loadInBackup, answeredBefore, sentAfter)
	}

	if err := caddy.Stop(); err != nil {
		t.Fatal(err)
	}
	s.dir = restored
	s.load(s.options)

	var summary metering.Summary
	if code := getJSON(t, admin+"/asap/usage/summary", &summary); code != 200 || summary != offline {
		t.Fatalf("restored sidecar's summary %d %+v, the backup's %+v", code, summary, offline)
	}
	if int(summary.TotalTasks) >= len(liveEvents) {
		t.Fatalf("the live sidecar went on to %d events, the backup has %d: not a snapshot taken under load?", len(liveEvents), summary.TotalTasks)
	}
	for id, e := range usageEvents(t, runningDB(t)) {
		if live, ok := liveEvents[id]; !ok || live != e {
			t.Fatalf("restored event %s = %+v, live %+v", id, e, live)
		}
	}
	var verdict audit.Verdict
	// The restored sidecar appends too (its SLA tracker resolves the
	// breach once the window is clean): the backup's log is a prefix.
	if code := getJSON(t, admin+"/asap/audit/verify", &verdict); code != 200 || !verdict.Valid || verdict.Size < offlineSize {
		t.Fatalf("restored audit verify %d %+v (backup's log: %d entries)", code, verdict, offlineSize)
	}
	for i, h := range auditHashes(t, runningDB(t))[:offlineSize] {
		if h != liveLog[i] {
			t.Fatalf("restored audit entry %d differs from the live one", i)
		}
	}
	getJSON(t, admin+"/asap/sla/breaches?agent_id=urn:asap:agent:demo", &breaches)
	if breaches.Count == 0 {
		t.Error("the SLA breach was not restored")
	}

	wantRejected(t, callWith(t, s.url, revoked, envelope("01JREVOKED0000000000000002", "echo", `{}`)), protocol.CodeTokenRevoked, "revoked")
	for i := 3; i < 5; i++ {
		if a := callWith(t, s.url, limited, envelope(fmt.Sprintf("01JLIMIT%018d", i), "echo", `{}`)); a.Result == nil {
			t.Fatalf("limited task %d after restore: %+v", i, a.Error)
		}
	}
	if a := callWith(t, s.url, limited, envelope("01JLIMIT000000000000000005", "echo", `{}`)); a.Error == nil || a.Error.Code != protocol.CodeTokenLimitSpent {
		t.Fatalf("the sixth task of a 5-task token after restore: %+v", a)
	}
}

// The commands name what is missing or wrong before touching anything.
func TestBackupAndRestoreCommandsRefuseBadInput(t *testing.T) {
	if _, err := cmdBackup(cmdFlags(t, "backup", "--address", "127.0.0.1:1")); err == nil || !strings.Contains(err.Error(), "-o FILE is required") {
		t.Errorf("backup without -o: %v", err)
	}
	if _, err := cmdRestore(cmdFlags(t, "restore", "x.backup")); err == nil || !strings.Contains(err.Error(), "--db DIR is required") {
		t.Errorf("restore without --db: %v", err)
	}
	dir := t.TempDir()
	if _, err := cmdRestore(cmdFlags(t, "restore", "--db", dir, filepath.Join(dir, "missing.backup"))); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("restore of a missing file: %v", err)
	}
	notBackup := filepath.Join(t.TempDir(), "notes.txt")
	os.WriteFile(notBackup, []byte("just some text, not a backup at all"), 0o600)
	target := filepath.Join(t.TempDir(), "new")
	if _, err := cmdRestore(cmdFlags(t, "restore", "--db", target, notBackup)); !errors.Is(err, storage.ErrBadBackup) {
		t.Errorf("restore of another file: %v", err)
	}
	if _, err := os.Stat(target); !os.IsNotExist(err) {
		t.Errorf("the refused restore created %s", target)
	}
	// With no sidecar and no --db, the backup fails and leaves no file.
	out := filepath.Join(t.TempDir(), "b.backup")
	if _, err := cmdBackup(cmdFlags(t, "backup", "--address", "127.0.0.1:1", "-o", out)); err == nil {
		t.Error("backup with no sidecar succeeded")
	}
	if entries, _ := os.ReadDir(filepath.Dir(out)); len(entries) != 0 {
		t.Errorf("a failed backup left %s", entries[0].Name())
	}
}
