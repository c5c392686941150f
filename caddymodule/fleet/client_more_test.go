package fleet

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nats-io/nats.go"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/asap-sidecar/asap-sidecar/internal/natstest"
)

// connectLogged is connect with a logger whose entries the test reads.
func connectLogged(t testing.TB, url string) (*Client, *observer.ObservedLogs) {
	t.Helper()
	core, logs := observer.New(zapcore.DebugLevel)
	c, err := Connect(Options{URL: url, Name: t.Name(), Logger: zap.New(core)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	waitUntil(t, c.Connected)
	return c, logs
}

// unreachable is a client whose NATS is down from the start: Connect
// returns at once and keeps trying in the background.
func unreachable(t testing.TB) (*Client, *natstest.Server) {
	t.Helper()
	n := natstest.Start(t)
	n.Stop()
	c, err := Connect(Options{URL: n.URL(), Name: t.Name()})
	if err != nil {
		t.Fatalf("connect with NATS down: %v, want a client that retries", err)
	}
	t.Cleanup(c.Close)
	return c, n
}

// A .creds file with a user JWT but no seed is refused at Connect,
// naming the file and the missing seed.
func TestConnectRefusesCredentialsWithoutASeed(t *testing.T) {
	_, jwt := userCreds(t)
	creds := filepath.Join(t.TempDir(), "jwt-only.creds")
	if err := os.WriteFile(creds, []byte("-----BEGIN NATS USER JWT-----\n"+jwt+"\n------END NATS USER JWT------\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := Connect(Options{URL: "nats://127.0.0.1:4222", Credentials: creds})
	if err == nil {
		c.Close()
		t.Fatal("connected with a credentials file that holds no seed")
	}
	if !strings.Contains(err.Error(), creds) || !strings.Contains(err.Error(), "no user NKey seed") {
		t.Fatalf("error does not name the file and the missing seed: %v", err)
	}
}

// A well-formed .creds file is handed to NATS: the client connects with
// it (this server has no accounts, so it accepts any user).
func TestConnectWithCredentials(t *testing.T) {
	n := natstest.Start(t)
	seed, jwt := userCreds(t)
	creds := filepath.Join(t.TempDir(), "user.creds")
	if err := os.WriteFile(creds, []byte("-----BEGIN NATS USER JWT-----\n"+jwt+"\n------END NATS USER JWT------\n\n-----BEGIN USER NKEY SEED-----\n"+seed+"\n------END USER NKEY SEED------\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := Connect(Options{URL: n.URL(), Credentials: creds})
	if err != nil {
		t.Fatalf("connect with a good .creds file: %v", err)
	}
	t.Cleanup(c.Close)
	waitUntil(t, c.Connected)
	ready(t, c)
}

// A URL NATS cannot parse fails Connect at once, naming the URL, rather
// than being retried in the background forever.
func TestConnectRefusesAMalformedURL(t *testing.T) {
	const bad = "nats://127.0.0.1:4222,nats://[::1"
	c, err := Connect(Options{URL: bad})
	if err == nil {
		c.Close()
		t.Fatal("connected to a malformed URL")
	}
	if !strings.Contains(err.Error(), bad) {
		t.Fatalf("error does not name the URL: %v", err)
	}
}

// While NATS has never been reached, every operation fails with
// ErrUnavailable saying it is not connected, and nothing is set up; once
// NATS starts, the same client sets the fleet up with nothing more.
func TestOperationsWaitForNATSThatStartsLater(t *testing.T) {
	c, n := unreachable(t)
	ctx := context.Background()
	notConnected := func(what string, err error) {
		t.Helper()
		if !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "not connected") {
			t.Fatalf("%s before NATS is up: %v, want ErrUnavailable: not connected", what, err)
		}
	}
	_, err := c.Take(ctx, hashA, 1, inAnHour)
	notConnected("take", err)
	notConnected("release", (&Slot{c: c, key: limitKey(hashA), expires: inAnHour}).Release(ctx))
	_, err = c.followOnce(ctx, 7, func(context.Context, Revocation, uint64) error {
		t.Error("applied a revocation with no NATS")
		return nil
	})
	notConnected("follow", err)
	if c.Ready() {
		t.Fatal("ready before NATS was ever reached")
	}
	n.Start()
	waitUntil(t, c.Connected)
	ready(t, c)
	if _, err := c.Take(ctx, hashA, 1, inAnHour); err != nil {
		t.Fatalf("take once NATS is up: %v", err)
	}
}

// Errors NATS reports asynchronously (here a slow consumer on the shared
// connection) are logged as warnings, not lost.
func TestAsyncNATSErrorsAreLogged(t *testing.T) {
	n := natstest.Start(t)
	c, logs := connectLogged(t, n.URL())
	release := make(chan struct{})
	defer close(release)
	sub, err := c.nc.Subscribe("asap.test.slow", func(*nats.Msg) { <-release })
	if err != nil {
		t.Fatal(err)
	}
	if err := sub.SetPendingLimits(1, -1); err != nil {
		t.Fatal(err)
	}
	for range 5 {
		if err := c.nc.Publish("asap.test.slow", []byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	warned := func() []observer.LoggedEntry {
		return logs.FilterMessage("fleet: NATS reported an error").FilterLevelExact(zapcore.WarnLevel).All()
	}
	waitUntil(t, func() bool { return len(warned()) > 0 })
	if e, ok := warned()[0].ContextMap()["error"].(string); !ok || !strings.Contains(e, "slow consumer") {
		t.Fatalf("logged %+v, want the slow consumer error", warned()[0].ContextMap())
	}
}
