package caddymodule

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// BenchmarkWebSocketThroughput measures asap.send echo round trips over
// WebSocket: straight to the demo agent's /asap/ws, through Caddy's plain
// reverse_proxy (uninspected pass-through, the baseline), and
// through the sidecar (metering and audit on, delegation off), with strict
// and with relaxed durability, on one socket and on 8 sockets in
// parallel. ns/op is per round trip; the sidecar's throughput as a ratio
// of plain reverse_proxy's is logged at the end. Run:
//
//	go test -run NONE -bench WebSocketThroughput -benchtime 3s -v ./caddymodule/
func BenchmarkWebSocketThroughput(b *testing.B) {
	s := newSidecar(b, "", "agent urn:asap:agent:demo", "")
	// /plain/asap/ws is not an ASAP path for the asap handler: it passes
	// it on, and this route strips /plain on the way to the agent.
	s.siteExtra = fmt.Sprintf("handle_path /plain/* {\n\t\treverse_proxy 127.0.0.1:%d\n\t}", s.ports[1])
	s.start()
	var seq atomic.Int64
	targets := []struct{ name, url string }{
		{"direct", strings.Replace(s.agentURL, "http", "ws", 1) + "/asap/ws"},
		{"plain-reverse_proxy", strings.Replace(s.url, "http", "ws", 1) + "/plain/asap/ws"},
		{"sidecar", strings.Replace(s.url, "http", "ws", 1) + "/asap/ws"},
	}
	perOp := map[string]float64{} // ns per round trip, by sub-benchmark
	defer func() {
		for _, d := range []string{"strict", "relaxed"} {
			for _, sfx := range []string{"", "-8sockets"} {
				if p, a := perOp[d+"/plain-reverse_proxy"+sfx], perOp[d+"/sidecar"+sfx]; p > 0 && a > 0 {
					b.Logf("%s%s: sidecar throughput / plain reverse_proxy = %.2f", d, sfx, p/a)
				}
			}
		}
	}()
	for _, durability := range []string{"strict", "relaxed"} {
		s.load("agent urn:asap:agent:demo\ndurability " + durability)
		for _, sockets := range []int{1, 8} {
			for _, tg := range targets {
				name := durability + "/" + tg.name
				if sockets > 1 {
					name = fmt.Sprintf("%s-%dsockets", name, sockets)
				}
				b.Run(name, func(b *testing.B) {
					conns := make([]*websocket.Conn, sockets)
					for i := range conns {
						ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
						c, _, err := websocket.Dial(ctx, tg.url, nil)
						cancel()
						if err != nil {
							b.Fatalf("dial %s: %v", tg.url, err)
						}
						defer c.CloseNow()
						conns[i] = c
					}
					var left atomic.Int64
					left.Store(int64(b.N))
					var failed atomic.Value
					var wg sync.WaitGroup
					b.ResetTimer()
					for _, c := range conns {
						wg.Add(1)
						go func() {
							defer wg.Done()
							for left.Add(-1) >= 0 {
								if err := wsEcho(c, seq.Add(1)); err != nil {
									failed.CompareAndSwap(nil, err)
									return
								}
							}
						}()
					}
					wg.Wait()
					b.StopTimer()
					perOp[name] = float64(b.Elapsed().Nanoseconds()) / float64(b.N)
					if err, _ := failed.Load().(error); err != nil {
						b.Fatal(err)
					}
					for _, c := range conns {
						c.Close(websocket.StatusNormalClosure, "")
					}
				})
			}
		}
	}
}

// wsEcho does one asap.send echo round trip with a fresh envelope id, so
// that every call is a new task for the meter.
func wsEcho(c *websocket.Conn, n int64) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	rid := fmt.Sprintf("b%d", n)
	frame := rpc(rid, envelope(fmt.Sprintf("01JWSBENCH%016d", n), "echo", `{"text":"hello"}`))
	if err := c.Write(ctx, websocket.MessageText, []byte(frame)); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	_, msg, err := c.Read(ctx)
	if err != nil {
		return fmt.Errorf("read: %w", err)
	}
	if !strings.Contains(string(msg), `"id":"`+rid+`"`) || strings.Contains(string(msg), `"error"`) {
		return fmt.Errorf("answer to %s: %.200s", rid, msg)
	}
	return nil
}
