package caddymodule

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
)

// BenchmarkRequestOverhead measures one task through real Caddy to the demo
// agent, with plain reverse_proxy and with the asap handler in front of it
// (metering off, strict and relaxed durability), in the same run. The difference per
// request is the handler's added cost. Run:
//
//	go test -run '^$' -bench RequestOverhead -benchtime 5s ./caddymodule
func BenchmarkRequestOverhead(b *testing.B) {
	caddyMu.Lock()
	defer caddyMu.Unlock()
	ports := []int{freePort(b), freePort(b), freePort(b), freePort(b), freePort(b), freePort(b)}
	dir := b.TempDir()
	cfg := fmt.Sprintf(`{
	admin 127.0.0.1:%d
	log {
		level ERROR
	}
}
:%d {
	bind 127.0.0.1
	asap_demo_agent
}
:%d {
	bind 127.0.0.1
	reverse_proxy 127.0.0.1:%d
}
:%d {
	bind 127.0.0.1
	asap {
		agent urn:asap:agent:demo
		storage %s
		durability strict
	}
	reverse_proxy 127.0.0.1:%d
}
:%d {
	bind 127.0.0.1
	asap {
		agent urn:asap:agent:demo
		storage %s
		durability relaxed
	}
	reverse_proxy 127.0.0.1:%d
}
:%d {
	bind 127.0.0.1
	asap {
		agent urn:asap:agent:demo
		storage %s
		metering off
	}
	reverse_proxy 127.0.0.1:%d
}
`, ports[0], ports[1], ports[2], ports[1], ports[3], dir, ports[1], ports[4], dir, ports[1], ports[5], dir, ports[1])
	adapted, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(cfg), nil)
	if err != nil {
		b.Fatal(err)
	}
	if err := caddy.Load(adapted, true); err != nil {
		b.Fatal(err)
	}
	defer caddy.Stop()

	tr := &http.Transport{MaxIdleConnsPerHost: 256, MaxConnsPerHost: 256}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr}
	for _, bc := range []struct {
		name string
		port int
	}{{"agent-direct", ports[1]}, {"plain-reverse_proxy", ports[2]}, {"asap-metering-off", ports[5]}, {"asap-strict", ports[3]}, {"asap-relaxed", ports[4]}} {
		b.Run(bc.name, func(b *testing.B) {
			url := fmt.Sprintf("http://127.0.0.1:%d/asap", bc.port)
			var seq atomic.Uint64
			b.SetParallelism(8)
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					id := fmt.Sprintf("01JBENCH%018d", seq.Add(1))
					resp, err := c.Post(url, "application/json", strings.NewReader(rpc("b", envelope(id, "echo", `{"text":"hello"}`))))
					if err != nil {
						b.Error(err)
						return
					}
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if resp.StatusCode != 200 {
						b.Errorf("status %d", resp.StatusCode)
						return
					}
				}
			})
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "req/s")
		})
	}
}
