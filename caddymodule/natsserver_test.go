package caddymodule

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/asap-sidecar/asap-sidecar/internal/freeport"
)

// natsCaddy runs Caddy configs made of the nats_server global option
// alone. It holds the Caddy lock for the test and stops Caddy at its end.
type natsCaddy struct{ t *testing.T }

func newNATSCaddy(t *testing.T) *natsCaddy {
	t.Helper()
	caddyMu.Lock()
	t.Cleanup(caddyMu.Unlock)
	t.Cleanup(func() {
		if err := caddy.Stop(); err != nil {
			t.Errorf("stopping caddy: %v", err)
		}
	})
	return &natsCaddy{t: t}
}

func natsCaddyfile(listen, store string) string {
	return fmt.Sprintf(`{
	admin off
	log {
		level ERROR
	}
	nats_server {
		listen %s
		store %s
		name asap-nats-test
	}
}
`, listen, store)
}

// load adapts and loads the config, as POST /load does; a reload with an
// unchanged config still runs (force), as `caddy reload --force`.
func (c *natsCaddy) load(listen, store string) error {
	c.t.Helper()
	cfg, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(natsCaddyfile(listen, store)), nil)
	if err != nil {
		c.t.Fatalf("adapting: %v", err)
	}
	return caddy.Load(cfg, true)
}

func (c *natsCaddy) mustLoad(listen, store string) {
	c.t.Helper()
	if err := c.load(listen, store); err != nil {
		c.t.Fatalf("loading nats_server on %s: %v", listen, err)
	}
}

// natsClient is a connection that records its disconnects.
type natsClient struct {
	nc           *nats.Conn
	js           jetstream.JetStream
	disconnected chan error
}

func connectNATS(t *testing.T, listen string) *natsClient {
	t.Helper()
	c := &natsClient{disconnected: make(chan error, 16)}
	nc, err := nats.Connect("nats://"+listen, nats.Name("natsserver_test"),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) { c.disconnected <- err }))
	if err != nil {
		t.Fatalf("connecting to %s: %v", listen, err)
	}
	t.Cleanup(nc.Close)
	c.nc = nc
	if c.js, err = jetstream.New(nc); err != nil {
		t.Fatal(err)
	}
	return c
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// checkMsg reads message seq of the stream and compares its data.
func (c *natsClient) checkMsg(t *testing.T, stream string, seq uint64, want string) {
	t.Helper()
	s, err := c.js.Stream(testCtx(t), stream)
	if err != nil {
		t.Fatalf("stream %s: %v", stream, err)
	}
	m, err := s.GetMsg(testCtx(t), seq)
	if err != nil {
		t.Fatalf("stream %s message %d: %v", stream, seq, err)
	}
	if string(m.Data) != want {
		t.Fatalf("stream %s message %d = %q, want %q", stream, seq, m.Data, want)
	}
}

func (c *natsClient) publish(t *testing.T, subject, data string) uint64 {
	t.Helper()
	ack, err := c.js.Publish(testCtx(t), subject, []byte(data))
	if err != nil {
		t.Fatalf("publishing to %s: %v", subject, err)
	}
	return ack.Sequence
}

// noDisconnect fails if the connection ever dropped. A dropped
// connection counts a reconnect before traffic flows again, so after a
// round trip the count is settled; the handler's channel is checked too.
func (c *natsClient) noDisconnect(t *testing.T, serverID string) {
	t.Helper()
	if err := c.nc.FlushTimeout(10 * time.Second); err != nil {
		t.Fatalf("round trip: %v", err)
	}
	if n := c.nc.Stats().Reconnects; n != 0 {
		t.Fatalf("the client reconnected %d times; the server was restarted", n)
	}
	if id := c.nc.ConnectedServerId(); id != serverID {
		t.Fatalf("connected to server %s, was %s: the server was restarted", id, serverID)
	}
	select {
	case err := <-c.disconnected:
		t.Fatalf("the client was disconnected: %v", err)
	default:
	}
}

func (c *natsClient) waitDisconnect(t *testing.T) {
	t.Helper()
	select {
	case <-c.disconnected:
	case <-time.After(10 * time.Second):
		t.Fatal("the client connected to the old server was not disconnected within 10s")
	}
}

func TestNATSServerJetStreamSurvivesReloadAndRestart(t *testing.T) {
	c := newNATSCaddy(t)
	listen := fmt.Sprintf("127.0.0.1:%d", freeport.Port(t))
	store := t.TempDir()
	c.mustLoad(listen, store)

	cl := connectNATS(t, listen)
	if _, err := cl.js.CreateStream(testCtx(t), jetstream.StreamConfig{
		Name: "REVOCATIONS", Subjects: []string{"asap.revoked.>"}, Storage: jetstream.FileStorage,
	}); err != nil {
		t.Fatalf("creating a stream: %v", err)
	}
	seq := cl.publish(t, "asap.revoked.t1", "first")
	cl.checkMsg(t, "REVOCATIONS", seq, "first")
	serverID := cl.nc.ConnectedServerId()

	// A reload of the same config keeps the server and the connection.
	c.mustLoad(listen, store)
	cl.noDisconnect(t, serverID)
	seq2 := cl.publish(t, "asap.revoked.t2", "second")
	cl.checkMsg(t, "REVOCATIONS", seq2, "second")
	cl.noDisconnect(t, serverID)

	// A stop and start is a new server on the same file store.
	cl.nc.Close()
	if err := caddy.Stop(); err != nil {
		t.Fatalf("stopping: %v", err)
	}
	c.mustLoad(listen, store)
	again := connectNATS(t, listen)
	if again.nc.ConnectedServerId() == serverID {
		t.Fatalf("still server %s after a stop and start", serverID)
	}
	again.checkMsg(t, "REVOCATIONS", seq, "first")
	again.checkMsg(t, "REVOCATIONS", seq2, "second")
}

func TestNATSServerChangedListenStartsANewServer(t *testing.T) {
	c := newNATSCaddy(t)
	ports := freeport.Ports(t, 2)
	oldAddr := fmt.Sprintf("127.0.0.1:%d", ports[0])
	newAddr := fmt.Sprintf("127.0.0.1:%d", ports[1])
	oldStore := t.TempDir()
	c.mustLoad(oldAddr, oldStore)
	old := connectNATS(t, oldAddr)
	serverID := old.nc.ConnectedServerId()

	// The same store under a new address would be two servers writing
	// one JetStream store while the old config still runs: refused, and
	// the old config keeps serving.
	err := c.load(newAddr, oldStore)
	if err == nil || !strings.Contains(err.Error(), oldStore) || !strings.Contains(err.Error(), "change store together with listen") {
		t.Fatalf("reload moving only listen: error %v; want one naming the store %s and what to do", err, oldStore)
	}
	old.noDisconnect(t, serverID)

	c.mustLoad(newAddr, filepath.Join(t.TempDir(), "nats"))
	// The old server is shut down once the old config is cleaned up,
	// which Load waits for: its port is free now.
	old.waitDisconnect(t)
	l, err := net.Listen("tcp", oldAddr)
	if err != nil {
		t.Fatalf("the old address %s is still taken after the reload: %v", oldAddr, err)
	}
	l.Close()
	cl := connectNATS(t, newAddr)
	if _, err := cl.js.AccountInfo(testCtx(t)); err != nil {
		t.Fatalf("JetStream on the new server: %v", err)
	}
}

func TestNATSServerPortInUseFailsStart(t *testing.T) {
	c := newNATSCaddy(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	store := t.TempDir()
	err = c.load(addr, store)
	if err == nil || !strings.Contains(err.Error(), addr) {
		t.Fatalf("loading with %s taken: error %v; want one naming the address", addr, err)
	}
	// Nothing is left behind: with the port free the same config starts.
	l.Close()
	c.mustLoad(addr, store)
	connectNATS(t, addr)
}

func TestNATSServerClientURL(t *testing.T) {
	for listen, want := range map[string]string{
		"127.0.0.1:4222": "nats://127.0.0.1:4222",
		"[::1]:4333":     "nats://[::1]:4333",
		"0.0.0.0:4222":   "nats://127.0.0.1:4222",
		":4222":          "nats://127.0.0.1:4222",
	} {
		a := &NATSServerApp{Listen: listen}
		if err := a.Validate(); err != nil {
			t.Fatalf("%s: %v", listen, err)
		}
		if got := a.ClientURL(); got != want {
			t.Errorf("listen %s: ClientURL %s, want %s", listen, got, want)
		}
	}
	for host, want := range map[string]bool{"127.0.0.1": true, "::1": true, "localhost": true, "": false, "0.0.0.0": false, "10.0.0.1": false} {
		if got := loopbackHost(host); got != want {
			t.Errorf("loopbackHost(%q) = %v, want %v", host, got, want)
		}
	}
}

func TestNATSServerJSONConfigIsValidated(t *testing.T) {
	for _, tc := range []struct{ listen, want string }{
		{"127.0.0.1", "option listen"},
		{"127.0.0.1:0", "option listen"},
		{"127.0.0.1:http", "option listen"},
	} {
		a := &NATSServerApp{Listen: tc.listen}
		if err := a.Validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("listen %q: error %v, want one containing %q", tc.listen, err, tc.want)
		}
	}
	if err := (&NATSServerApp{Listen: DefaultNATSListen, MaxStore: -1}).Validate(); err == nil || !strings.Contains(err.Error(), "max_store") {
		t.Errorf("negative max_store: error %v, want one naming max_store", err)
	}
}

// Operators are warned when the server listens beyond loopback (it has no
// authentication) and when a reload changes what only a restart applies.
func TestNATSServerWarnings(t *testing.T) {
	newNATSCaddy(t)
	logFile := filepath.Join(t.TempDir(), "caddy.log")
	store := t.TempDir()
	port := freeport.Port(t)
	load := func(name string) {
		t.Helper()
		cf := fmt.Sprintf("{\n\tadmin off\n\tlog {\n\t\toutput file %s\n\t\tformat json\n\t\tlevel WARN\n\t}\n\tnats_server {\n\t\tlisten 0.0.0.0:%d\n\t\tstore %s\n\t\tname %s\n\t}\n}\n", logFile, port, store, name)
		cfg, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(cf), nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := caddy.Load(cfg, true); err != nil {
			t.Fatalf("loading: %v", err)
		}
	}
	load("first")
	load("second")

	b, err := os.ReadFile(logFile)
	if err != nil {
		t.Fatal(err)
	}
	log := string(b)
	for _, want := range []string{"listens beyond loopback and has no authentication", "apply when the server starts anew", `"running_name":"first"`} {
		if !strings.Contains(log, want) {
			t.Errorf("the log lacks %q:\n%s", want, log)
		}
	}
}

// The NATS server's log lands in Caddy's at matching levels; fatal errors
// are logged as errors (Caddy owns the process) and the first is kept for
// Start to report.
func TestNATSLoggerLevels(t *testing.T) {
	core, logs := observer.New(zap.DebugLevel)
	n := &natsLogger{l: zap.New(core)}
	n.Noticef("notice %d", 1)
	n.Warnf("warn %d", 2)
	n.Errorf("error %d", 3)
	n.Debugf("debug %d", 4)
	n.Tracef("trace %d", 5)
	n.Fatalf("fatal %d", 6)
	n.Fatalf("fatal %d", 7)
	want := []struct {
		level zapcore.Level
		msg   string
	}{{zap.InfoLevel, "notice 1"}, {zap.WarnLevel, "warn 2"}, {zap.ErrorLevel, "error 3"}, {zap.DebugLevel, "debug 4"},
		{zap.DebugLevel, "trace 5"}, {zap.ErrorLevel, "fatal 6"}, {zap.ErrorLevel, "fatal 7"}}
	got := logs.All()
	if len(got) != len(want) {
		t.Fatalf("%d entries, want %d", len(got), len(want))
	}
	for i, w := range want {
		if got[i].Level != w.level || got[i].Message != w.msg {
			t.Errorf("entry %d: %s %q, want %s %q", i, got[i].Level, got[i].Message, w.level, w.msg)
		}
	}
	if n.fatal() != "fatal 6" {
		t.Fatalf("first fatal %q", n.fatal())
	}
	// Levels the logger drops are not even formatted.
	quiet := &natsLogger{l: zap.New(zapcore.NewNopCore())}
	quiet.Debugf("%v", panicOnFormat{})
}

type panicOnFormat struct{}

func (panicOnFormat) String() string { panic("formatted a dropped log line") }
