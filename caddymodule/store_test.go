package caddymodule

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"

	"github.com/asap-sidecar/asap-sidecar/config"
)

// A request that comes before the app opened the database waits for it,
// at most the time given or until the request ends; a database that
// failed to open answers with why.
func TestStoreWaitBeforeTheDatabaseOpens(t *testing.T) {
	s := &Store{dir: "/nowhere", ready: make(chan struct{})}
	if s.Opened() != nil {
		t.Fatal("Opened before the database opened")
	}
	start := time.Now()
	if _, err := s.Wait(context.Background(), 20*time.Millisecond); !errors.Is(err, ErrStoreUnavailable) {
		t.Fatalf("wait past the deadline: %v", err)
	}
	if time.Since(start) < 20*time.Millisecond {
		t.Fatal("Wait gave up before its deadline")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := s.Wait(ctx, time.Hour); !errors.Is(err, ErrStoreUnavailable) {
		t.Fatalf("wait with the request gone: %v", err)
	}
	waited := make(chan error, 1)
	go func() { _, err := s.Wait(context.Background(), time.Minute); waited <- err }()
	s.err = errors.New("disk on fire")
	close(s.ready)
	if err := <-waited; err == nil || err.Error() != "disk on fire" {
		t.Fatalf("a waiter saw %v, want the open error", err)
	}
	if _, err := s.Wait(context.Background(), time.Millisecond); err == nil {
		t.Fatal("a failed store answered without error")
	}
}

// Handlers sharing a storage directory share one Store; the first fleet
// block among them is the database's.
func TestHandlersSharingStorageShareTheFirstFleetBlock(t *testing.T) {
	a := &App{stores: map[string]*Store{}}
	f := &config.Fleet{NATS: "nats://127.0.0.1:4222"}
	s1 := a.store("/d", time.Second, nil)
	s2 := a.store("/d", time.Minute, f)
	s3 := a.store("/d", time.Minute, &config.Fleet{NATS: "nats://elsewhere:4222"})
	if s1 != s2 || s2 != s3 || s1.fleet != f || s1.flush != time.Second {
		t.Fatalf("stores %p %p %p, fleet %+v, flush %v", s1, s2, s3, s1.fleet, s1.flush)
	}
}

// A storage directory whose agent.key is not a key stops the config from
// loading, naming the file, rather than generating a new key over it.
func TestCorruptAgentKeyNamesTheFile(t *testing.T) {
	s := newSidecar(t, "", "agent urn:asap:agent:demo", "")
	if err := os.MkdirAll(s.dir, 0o700); err != nil {
		t.Fatal(err)
	}
	keyFile := filepath.Join(s.dir, agentKeyFile)
	if err := os.WriteFile(keyFile, []byte("not a key"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(s.caddyfile(s.options)), nil)
	if err != nil {
		t.Fatal(err)
	}
	err = caddy.Load(cfg, true)
	if err == nil {
		caddy.Stop()
		t.Fatal("a config over a corrupt agent.key loaded")
	}
	if !strings.Contains(err.Error(), keyFile) {
		t.Fatalf("error does not name %s: %v", keyFile, err)
	}
	if b, _ := os.ReadFile(keyFile); string(b) != "not a key" {
		t.Fatal("the corrupt key file was overwritten")
	}
}

// Without a storage option the database lives in Caddy's data directory
// (+ /asap), as documented.
func TestDefaultStorageIsCaddysDataDir(t *testing.T) {
	data := t.TempDir()
	t.Setenv("XDG_DATA_HOME", data)
	s := newSidecar(t, "", "", "")
	cf := fmt.Sprintf("{\n\tadmin %s\n\tlog {\n\t\tlevel ERROR\n\t}\n}\n:%d {\n\tbind 127.0.0.1\n\tasap {\n\t\tdelegation off\n\t}\n\trespond 204\n}\n", s.adminAddr, s.ports[0])
	cfg, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(cf), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := caddy.Load(cfg, true); err != nil {
		t.Fatal(err)
	}
	defer caddy.Stop()
	want := filepath.Join(data, "caddy", "asap")
	var st Status
	if code := getJSON(t, "http://"+s.adminAddr+"/asap/status", &st); code != 200 || len(st.Agents) != 1 || st.Agents[0].Storage != want {
		t.Fatalf("status %d %+v, want storage %s", code, st.Agents, want)
	}
	if _, err := os.Stat(filepath.Join(want, "MANIFEST")); err != nil {
		t.Fatalf("no database in %s: %v", want, err)
	}
}
