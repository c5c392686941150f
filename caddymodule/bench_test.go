package caddymodule

import (
	"context"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"go.uber.org/zap"

	"github.com/asap-sidecar/asap-sidecar/caddymodule/api"
	"github.com/asap-sidecar/asap-sidecar/internal/freeport"
	"github.com/asap-sidecar/asap-sidecar/storage"
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
	ports := freeport.Ports(b, 7)
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
		delegation off
	}
	reverse_proxy 127.0.0.1:%d
}
:%d {
	bind 127.0.0.1
	asap {
		agent urn:asap:agent:demo
		storage %s
		durability relaxed
		delegation off
	}
	reverse_proxy 127.0.0.1:%d
}
:%d {
	bind 127.0.0.1
	asap {
		agent urn:asap:agent:demo
		storage %s
		metering off
		delegation off
	}
	reverse_proxy 127.0.0.1:%d
}
:%d {
	bind 127.0.0.1
	asap {
		agent urn:asap:agent:demo
		storage %s
		durability strict
		delegation require
	}
	reverse_proxy 127.0.0.1:%d
}
`, ports[0], ports[1], ports[2], ports[1], ports[3], dir, ports[1], ports[4], dir, ports[1], ports[5], dir, ports[1], ports[6], dir, ports[1])
	adapted, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(cfg), nil)
	if err != nil {
		b.Fatal(err)
	}
	if err := caddy.Load(adapted, true); err != nil {
		b.Fatal(err)
	}
	defer caddy.Stop()

	// A token for the all-features path, minted as the admin API would.
	app, err := runningApp()
	if err != nil {
		b.Fatal(err)
	}
	var token string
	for _, h := range app.agentList() {
		if h.Delegation == "require" {
			d, err := h.store.Wait(context.Background(), storeWait)
			if err != nil {
				b.Fatal(err)
			}
			m, err := delegationService{h, d}.Mint(context.Background(), api.MintRequest{Delegate: "urn:asap:agent:client", Scopes: []string{"task.execute"}, ExpiresInSeconds: 3600})
			if err != nil {
				b.Fatal(err)
			}
			token = m.Chain
		}
	}

	tr := &http.Transport{MaxIdleConnsPerHost: 256, MaxConnsPerHost: 256}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr}
	for _, bc := range []struct {
		name string
		port int
	}{{"agent-direct", ports[1]}, {"plain-reverse_proxy", ports[2]}, {"asap-metering-off", ports[5]}, {"asap-strict", ports[3]}, {"asap-relaxed", ports[4]}, {"asap-all-features", ports[6]}} {
		b.Run(bc.name, func(b *testing.B) {
			url := fmt.Sprintf("http://127.0.0.1:%d/asap", bc.port)
			var seq atomic.Uint64
			b.SetParallelism(8)
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					n := seq.Add(1)
					id := fmt.Sprintf("01JBENCH%018d", n)
					// Every path gets the same bytes, token included.
					req, _ := http.NewRequest(http.MethodPost, url, strings.NewReader(rpc("b", envelope(id, "echo", `{"text":"hello"}`))))
					req.Header.Set("Content-Type", "application/json")
					req.Header.Set("X-ASAP-Delegation-Token", token)
					resp, err := c.Do(req)
					if err != nil {
						b.Error(err)
						return
					}
					body, _ := io.ReadAll(resp.Body)
					resp.Body.Close()
					if resp.StatusCode != 200 || (n%512 == 1 && !strings.Contains(string(body), `"result"`)) {
						b.Errorf("not a task answer: %d %s", resp.StatusCode, body)
						return
					}
				}
			})
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "req/s")
		})
	}
}

// BenchmarkRequestWithStuckWebhook measures the request path while the
// webhook sender is stuck on a receiver that never answers and its queue
// is full, against the same path with nothing queued, in the same run:
// alerts must never slow requests.
//
//	go test -run '^$' -bench StuckWebhook ./caddymodule
func BenchmarkRequestWithStuckWebhook(b *testing.B) {
	caddyMu.Lock()
	defer caddyMu.Unlock()
	hang := make(chan struct{})
	receiver := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { <-hang }))
	defer receiver.Close()
	defer close(hang)
	ports := freeport.Ports(b, 3)
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
	asap {
		agent urn:asap:agent:demo
		storage %s
		delegation off
		alert webhook %s
	}
	reverse_proxy 127.0.0.1:%d
}
`, ports[0], ports[1], ports[2], b.TempDir(), receiver.URL, ports[1])
	adapted, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(cfg), nil)
	if err != nil {
		b.Fatal(err)
	}
	if err := caddy.Load(adapted, true); err != nil {
		b.Fatal(err)
	}
	defer caddy.Stop()
	tr := &http.Transport{MaxIdleConnsPerHost: 64}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr}
	url := fmt.Sprintf("http://127.0.0.1:%d/asap", ports[2])
	run := func(b *testing.B) {
		var seq atomic.Uint64
		b.SetParallelism(4)
		b.ResetTimer()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				id := fmt.Sprintf("01JHOOKB%018d", seq.Add(1))
				resp, err := c.Post(url, "application/json", strings.NewReader(rpc("b", envelope(id, "echo", `{}`))))
				if err != nil {
					b.Error(err)
					return
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
		})
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "req/s")
	}
	b.Run("no-alerts-queued", run)
	n := Notification{JSONRPC: "2.0", Method: "sla.breach"}
	for i := 0; i < webhookQueueMax+10; i++ {
		webhooks.enqueue(zap.NewNop(), []webhookTarget{{url: receiver.URL}}, n)
	}
	b.Run("receiver-stuck-queue-full", run)
	webhooks.mu.Lock()
	webhooks.queue = nil
	webhooks.mu.Unlock()
}

// BenchmarkDiskPerTask sends tasks through a sidecar with every feature on
// (token checked, strict, metering, audit, SLA), stops it cleanly and
// reports the database's size per task, and how many keys and bytes each
// key space holds per task. Run it with a fixed count so the figure is a
// steady state rather than the first memtable:
//
//	go test -run '^$' -bench DiskPerTask -benchtime 20000x ./caddymodule
func BenchmarkDiskPerTask(b *testing.B) {
	s := startSidecar(b, "", "agent urn:asap:agent:demo\ndelegation require\ndurability strict")
	h := runningAgent(b)
	d, err := h.store.Wait(context.Background(), storeWait)
	if err != nil {
		b.Fatal(err)
	}
	m, err := delegationService{h, d}.Mint(context.Background(), api.MintRequest{Delegate: "urn:asap:agent:client", Scopes: []string{"task.execute"}, ExpiresInSeconds: 3600})
	if err != nil {
		b.Fatal(err)
	}
	tr := &http.Transport{MaxIdleConnsPerHost: 16}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr}
	var seq atomic.Uint64
	b.SetParallelism(8)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			id := fmt.Sprintf("01JDISK%019d", seq.Add(1))
			req, _ := http.NewRequest(http.MethodPost, s.url+"/asap", strings.NewReader(rpc("d", envelope(id, "echo", `{"text":"hello"}`))))
			req.Header.Set("Content-Type", "application/json")
			req.Header.Set("X-ASAP-Delegation-Token", m.Chain)
			resp, err := c.Do(req)
			if err != nil {
				b.Error(err)
				return
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 || !strings.Contains(string(body), `"result"`) {
				b.Errorf("not a task answer: %d %s", resp.StatusCode, body)
				return
			}
		}
	})
	b.StopTimer()
	if err := caddy.Stop(); err != nil {
		b.Fatal(err)
	}
	n := float64(seq.Load())
	size, err := dirSize(s.dir)
	if err != nil {
		b.Fatal(err)
	}
	spaces, err := storage.SpaceSizes(s.dir)
	if err != nil {
		b.Fatal(err)
	}
	var keys int
	for _, sp := range spaces {
		keys += sp.Keys
		if b.N > 1 { // the probe run of one task says nothing
			fmt.Printf("  space %q: %5.2f keys/task, %5.0f key+value bytes/task, %5.0f stale bytes/task\n", byte(sp.Space), float64(sp.Keys)/n, float64(sp.Bytes)/n, float64(sp.StaleBytes)/n)
		}
	}
	b.ReportMetric(float64(size)/n, "disk-B/task")
	b.ReportMetric(float64(keys)/n, "keys/task")
}

func dirSize(dir string) (int64, error) {
	var total int64
	err := filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		total += info.Size()
		return nil
	})
	return total, err
}
