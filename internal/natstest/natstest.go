// Package natstest runs a real NATS server with JetStream on disk inside
// a test, on a fixed loopback port so that it can be stopped and started
// again at the same address (an outage, as the sidecars see it).
package natstest

import (
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/asap-sidecar/asap-sidecar/internal/freeport"
)

// Server is one NATS server; Stop and Start take it down and up again.
type Server struct {
	t    testing.TB
	port int
	dir  string
	s    *server.Server
}

// Start runs a JetStream server storing into a temporary directory; it
// stops when the test ends.
func Start(t testing.TB) *Server {
	t.Helper()
	n := &Server{t: t, port: freeport.Port(t), dir: t.TempDir()}
	n.Start()
	t.Cleanup(n.Stop)
	return n
}

// URL is the client URL.
func (n *Server) URL() string { return fmt.Sprintf("nats://127.0.0.1:%d", n.port) }

// Start starts the server again after Stop, with the same store.
func (n *Server) Start() {
	n.t.Helper()
	s, err := server.NewServer(&server.Options{
		Host: "127.0.0.1", Port: n.port, JetStream: true, StoreDir: n.dir,
		NoSigs: true, NoLog: true, ServerName: fmt.Sprintf("test-%d", n.port),
	})
	if err != nil {
		n.t.Fatalf("nats server: %v", err)
	}
	s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		s.Shutdown()
		n.t.Fatalf("nats server on port %d not ready after 10s", n.port)
	}
	n.s = s
}

// Wipe stops the server, deletes its store and starts it again: a NATS
// that lost its data (a pod restarted without its volume).
func (n *Server) Wipe() {
	n.t.Helper()
	n.Stop()
	if err := os.RemoveAll(n.dir); err != nil {
		n.t.Fatal(err)
	}
	n.Start()
}

// Stop shuts the server down and waits until it is gone.
func (n *Server) Stop() {
	if n.s == nil {
		return
	}
	n.s.Shutdown()
	n.s.WaitForShutdown()
	n.s = nil
}
