package caddymodule

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/asap-sidecar/asap-sidecar/caddymodule/demoagent"
	"github.com/asap-sidecar/asap-sidecar/caddymodule/metering"
)

// externalDemoAgent runs the demo agent outside the Caddy config, as a real
// agent process would be.
func externalDemoAgent(t testing.TB) string {
	t.Helper()
	a := &demoagent.Agent{}
	if err := a.Provision(caddy.Context{}); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _ = a.ServeHTTP(w, r, nil) }))
	t.Cleanup(srv.Close)
	return upstreamAddr(srv)
}

// 10,000 tasks at concurrency 64, 500 of them retried by the client with
// the same envelope id: exactly 10,000 events, token sums equal to what the
// agent reported, nothing counted twice.
func TestTenThousandTasksMeteredExactlyOnce(t *testing.T) {
	if underMutants {
		t.Skip("a load test: 18 s per mutant, and the exactness it shows is also tested at small scale")
	}
	s := startSidecar(t, externalDemoAgent(t), "agent urn:asap:agent:demo")
	const tasks, workers, retried = 10000, 64, 500
	type job struct{ i int }
	jobs := make(chan int)
	var wg sync.WaitGroup
	tr := &http.Transport{MaxIdleConnsPerHost: workers}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr, Timeout: time.Minute}
	var wantIn, wantOut, wantCalls int64
	for i := 0; i < tasks; i++ {
		wantIn += int64(i%7 + 1)
		wantOut += int64(i%5 + 1)
		wantCalls += int64(i % 3)
	}
	send := func(i int) error {
		id := fmt.Sprintf("01JTENK%019d", i)
		body := rpc("r", envelope(id, "echo", fmt.Sprintf(`{"tokens_in":%d,"tokens_out":%d,"api_calls":%d}`, i%7+1, i%5+1, i%3)))
		resp, err := c.Post(s.url+"/asap", "application/json", strings.NewReader(body))
		if err != nil {
			return err
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if a := decodeAnswer(t, b); a.Result == nil {
			return fmt.Errorf("task %d: %s", i, b)
		}
		return nil
	}
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range jobs {
				if err := send(i); err != nil {
					t.Error(err)
					return
				}
				if i < retried { // the client retries: same envelope again
					if err := send(i); err != nil {
						t.Error(err)
						return
					}
				}
			}
		}()
	}
	for i := 0; i < tasks; i++ {
		jobs <- i
	}
	close(jobs)
	wg.Wait()
	if t.Failed() {
		return
	}

	evs := usageEvents(t, runningDB(t)) // fails the test on any duplicate
	var in, out, calls int64
	for _, e := range evs {
		in, out, calls = in+e.TokensIn, out+e.TokensOut, calls+e.APICalls
	}
	if len(evs) != tasks || in != wantIn || out != wantOut || calls != wantCalls {
		t.Fatalf("%d events (want %d), tokens in %d/%d out %d/%d calls %d/%d", len(evs), tasks, in, wantIn, out, wantOut, calls, wantCalls)
	}
	if c := countsOf(t, "urn:asap:agent:demo"); c.Forwarded != tasks+retried {
		t.Fatalf("forwarded counter %d, want %d (retries are forwarded, not metered)", c.Forwarded, tasks+retried)
	}
	// The Usage API on the admin endpoint agrees.
	var sum metering.Summary
	if code := getJSON(t, "http://"+s.adminAddr+"/asap/usage/summary", &sum); code != 200 {
		t.Fatalf("summary: %d", code)
	}
	if sum.TotalTasks != tasks || sum.TotalTokens != wantIn+wantOut || sum.TotalAPICalls != wantCalls || sum.UniqueConsumers != 1 {
		t.Fatalf("summary = %+v", sum)
	}
}

func TestGarbageMetricsStoredAsZeroAndAnswerUntouched(t *testing.T) {
	answer := `{"jsonrpc":"2.0","result":{"envelope":{"payload_type":"task.response","payload":{"task_id":"t-g","status":"completed","metrics":{"tokens_in":-5,"tokens_out":"lots","tokens_used":3,"api_calls":1e20}}}},"id":"r1"}`
	srv := httptest.NewServer(&countingUpstream{answer: fixedAnswer(200, "application/json", answer)})
	defer srv.Close()
	s := startSidecar(t, upstreamAddr(srv), "agent urn:asap:agent:demo")
	resp, b := post(t, s.url+"/asap", rpc("r1", envelope("01JGARBAGE0000000000000001", "echo", `{}`)))
	if resp.StatusCode != 200 || string(b) != answer {
		t.Fatalf("answer changed: %d %s", resp.StatusCode, b)
	}
	ev := usageEvents(t, runningDB(t))["01JGARBAGE0000000000000001"]
	if ev.TaskID != "t-g" || ev.TokensIn != 0 || ev.TokensOut != 3 || ev.APICalls != 0 {
		t.Fatalf("event = %+v; want garbage as 0 and tokens_used standing in for tokens_out", ev)
	}
}

func TestRelaxedDurabilityStoresAsynchronously(t *testing.T) {
	s := startSidecar(t, externalDemoAgent(t), "agent urn:asap:agent:demo\ndurability relaxed\nflush_interval 10ms")
	for i := 0; i < 20; i++ {
		if _, b := post(t, s.url+"/asap", rpc("r", envelope(fmt.Sprintf("01JRELAXED%016d", i), "echo", `{}`))); decodeAnswer(t, b).Result == nil {
			t.Fatalf("answer: %s", b)
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for len(usageEvents(t, runningDB(t))) != 20 {
		if time.Now().After(deadline) {
			t.Fatalf("relaxed events: %d of 20", len(usageEvents(t, runningDB(t))))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestMeteringOffWritesNothing(t *testing.T) {
	s := startSidecar(t, externalDemoAgent(t), "agent urn:asap:agent:demo\nmetering off")
	if _, b := post(t, s.url+"/asap", rpc("r", envelope("01JOFF00000000000000000001", "echo", `{}`))); decodeAnswer(t, b).Result == nil {
		t.Fatalf("answer: %s", b)
	}
	if evs := usageEvents(t, runningDB(t)); len(evs) != 0 {
		t.Fatalf("metering off stored %d events", len(evs))
	}
	if c := countsOf(t, "urn:asap:agent:demo"); c.Forwarded != 0 {
		t.Fatalf("metering off counted %+v", c)
	}
}

const testBearer = "s3cret-credential-for-tests"

func TestUsageAPIOnAdminAndPublicMount(t *testing.T) {
	s := startSidecarWith(t, externalDemoAgent(t), "agent urn:asap:agent:demo", "asap_api {\n\t\tbearer "+testBearer+"\n\t}")
	batch := `{"events":[
		{"task_id":"t1","agent_id":"urn:asap:agent:demo","consumer_id":"urn:asap:agent:a","tokens_in":10,"tokens_out":5,"duration_ms":100,"api_calls":1,"timestamp":"2026-02-06T10:00:00Z"},
		{"task_id":"t2","agent_id":"urn:asap:agent:demo","consumer_id":"urn:asap:agent:b","tokens_in":1,"tokens_out":2,"duration_ms":50,"api_calls":0,"timestamp":"2026-02-07T10:00:00Z"}]}`
	resp, b := post(t, "http://"+s.adminAddr+"/asap/usage/batch", batch)
	if resp.StatusCode != 201 || !strings.Contains(string(b), `"count":2`) {
		t.Fatalf("admin batch: %d %s", resp.StatusCode, b)
	}
	var list struct {
		Data  []metering.Event `json:"data"`
		Count int              `json:"count"`
	}
	if code := getJSON(t, "http://"+s.adminAddr+"/asap/usage?consumer_id=urn:asap:agent:a", &list); code != 200 || list.Count != 1 || list.Data[0].TaskID != "t1" {
		t.Fatalf("admin list: %d %+v", code, list)
	}

	// Public mount: anonymous and wrong credentials get 401.
	for _, auth := range []string{"", "Bearer wrong-credential-xxxxxxxx", "Basic " + testBearer, "Bearer "} {
		req, _ := http.NewRequest(http.MethodGet, s.url+"/usage", nil)
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 401 || !strings.HasPrefix(resp.Header.Get("WWW-Authenticate"), "Bearer") || !strings.Contains(string(b), "detail") {
			t.Fatalf("auth %q: %d %s", auth, resp.StatusCode, b)
		}
	}
	req, _ := http.NewRequest(http.MethodGet, s.url+"/usage/aggregate?group_by=day", nil)
	req.Header.Set("Authorization", "Bearer "+testBearer)
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	var agg struct {
		GroupBy string               `json:"group_by"`
		Data    []metering.PeriodRow `json:"data"`
	}
	if err := json.Unmarshal(b, &agg); err != nil || resp.StatusCode != 200 || agg.GroupBy != "day" || len(agg.Data) != 2 ||
		agg.Data[0].Period != "2026-02-06" || agg.Data[0].TotalTokens != 15 || agg.Data[1].Period != "2026-02-07" {
		t.Fatalf("public aggregate: %d %s", resp.StatusCode, b)
	}
	// Other paths of the site still reach the agent.
	var manifest map[string]any
	if code := getJSON(t, s.url+"/.well-known/asap/manifest.json", &manifest); code != 200 {
		t.Fatalf("manifest through a site with asap_api: %d", code)
	}
}

func TestPublicAPIRefusesAnonymousConfig(t *testing.T) {
	cfg := ":8080 {\n\tasap_api\n\treverse_proxy 127.0.0.1:9000\n}\n"
	adapted, _, err := caddyconfigAdapt(cfg)
	if err != nil {
		t.Fatal(err)
	}
	err = caddy.Validate(mustUnmarshalConfig(t, adapted))
	if err == nil || !strings.Contains(err.Error(), "option bearer") {
		t.Fatalf("validate without bearer: %v", err)
	}
}

// scrapeCounter reads one asap_tasks_total value from the admin /metrics.
func scrapeCounter(t *testing.T, admin, consumer string) float64 {
	t.Helper()
	resp, err := client.Get("http://" + admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "asap_tasks_total{") && strings.Contains(line, `consumer="`+consumer+`"`) {
			v, err := strconv.ParseFloat(line[strings.LastIndexByte(line, ' ')+1:], 64)
			if err != nil {
				t.Fatal(err)
			}
			return v
		}
	}
	return 0
}

func TestPrometheusCountersSurviveReload(t *testing.T) {
	s := startSidecar(t, externalDemoAgent(t), "agent urn:asap:agent:demo")
	consumer := "urn:asap:agent:prom-" + strconv.FormatInt(time.Now().UnixNano(), 36)
	send := func(n, from int) {
		for i := from; i < from+n; i++ {
			env := strings.Replace(envelope(fmt.Sprintf("01JPROM%019d", i), "echo", `{}`), "urn:asap:agent:client", consumer, 1)
			if _, b := post(t, s.url+"/asap", rpc("r", env)); decodeAnswer(t, b).Result == nil {
				t.Fatalf("answer: %s", b)
			}
		}
	}
	send(3, 0)
	if got := scrapeCounter(t, s.adminAddr, consumer); got != 3 {
		t.Fatalf("asap_tasks_total = %v, want 3", got)
	}
	s.load("agent urn:asap:agent:demo\nmax_body 2MiB")
	send(2, 3)
	if got := scrapeCounter(t, s.adminAddr, consumer); got != 5 {
		t.Fatalf("after reload asap_tasks_total = %v, want 5", got)
	}
}
