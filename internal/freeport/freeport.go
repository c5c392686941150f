// Package freeport picks loopback TCP ports for tests that start real
// listeners on fixed addresses (Caddy configs, child processes).
package freeport

import (
	"net"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Ports returns n distinct ports that were free a moment ago. All n
// listeners are held open until the last is picked: picked one by one,
// the kernel may hand the same port out twice (about 4 in 10,000 triples
// here), and two sites on one port make Caddy refuse the config.
func Ports(t testing.TB, n int) []int {
	t.Helper()
	ports := make([]int, n)
	held := make([]net.Listener, 0, n)
	defer func() {
		for _, l := range held {
			l.Close()
		}
	}()
	for i := range ports {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("picking a free port: %v", err)
		}
		held = append(held, l)
		ports[i] = l.Addr().(*net.TCPAddr).Port
	}
	return ports
}

// Port returns one port that was free a moment ago.
func Port(t testing.TB) int {
	t.Helper()
	return Ports(t, 1)[0]
}

// WaitListeners waits until at most want sockets listen on port, as
// /proc/net/tcp tells; it fails the test after 10 seconds. Caddy returns
// from a reload once the old servers have begun shutting down, not once
// their SO_REUSEPORT sockets are closed: a connection the kernel hands to
// an old socket in between is reset. Tests that reload and then connect
// wait here first. Where /proc/net/tcp cannot be read it returns at once.
func WaitListeners(t testing.TB, port, want int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		n, err := listening(port)
		if err != nil || n <= want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("port %d: still %d listening sockets after 10s, want %d", port, n, want)
		}
		time.Sleep(time.Millisecond)
	}
}

// listening counts the sockets in state LISTEN on port.
func listening(port int) (int, error) {
	n := 0
	for _, file := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		b, err := os.ReadFile(file)
		if err != nil {
			if file == "/proc/net/tcp6" {
				continue
			}
			return 0, err
		}
		lines := strings.Split(string(b), "\n")
		for _, line := range lines[1:] {
			f := strings.Fields(line)
			if len(f) < 4 || f[3] != "0A" { // 0A is TCP_LISTEN
				continue
			}
			_, hexPort, ok := strings.Cut(f[1], ":")
			if !ok {
				continue
			}
			if p, err := strconv.ParseUint(hexPort, 16, 16); err == nil && int(p) == port {
				n++
			}
		}
	}
	return n, nil
}
