package caddymodule

import (
	"bufio"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
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
	"github.com/caddyserver/caddy/v2/caddyconfig"

	"github.com/asap-sidecar/asap-sidecar/caddymodule/delegation"
)

// scrape reads the admin /metrics into series → value, a series written
// as Prometheus prints it: name{label="value",...}.
func scrape(t *testing.T, admin string) map[string]float64 {
	t.Helper()
	resp, err := client.Get("http://" + admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("GET /metrics: %s: %.500s", resp.Status, b)
	}
	m := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "asap_") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("metrics line %q: %v", line, err)
		}
		m[line[:i]] = v
	}
	return m
}

// sum adds the values of every series starting with prefix.
func sum(m map[string]float64, prefix string) (total float64, n int) {
	for k, v := range m {
		if strings.HasPrefix(k, prefix) {
			total += v
			n++
		}
	}
	return total, n
}

// verifyWebhook is what a receiver does with ASAP-Signature: recompute
// the HMAC over "<t>.<body>" and compare in constant time, refusing
// timestamps older than five minutes.
func verifyWebhook(secret, header string, body []byte, now time.Time) bool {
	var ts, sig string
	for _, part := range strings.Split(header, ",") {
		k, v, _ := strings.Cut(part, "=")
		switch k {
		case "t":
			ts = v
		case "v1":
			sig = v
		}
	}
	t, err := strconv.ParseInt(ts, 10, 64)
	if err != nil || now.Sub(time.Unix(t, 0)).Abs() > 5*time.Minute {
		return false
	}
	mac := hmac.New(sha256.New, []byte(secret))
	fmt.Fprintf(mac, "%s.%s", ts, body)
	got, err := hex.DecodeString(sig)
	return err == nil && hmac.Equal(got, mac.Sum(nil))
}

type delivery struct {
	key, signature string
	body           []byte
}

func TestOperatorMetricsPresentFromStartAndMove(t *testing.T) {
	const secret = "whsec-test-3f9a"
	t.Setenv("ASAP_TEST_WEBHOOK_SECRET", secret)
	// Leftovers of earlier tests must not move the delivery counters.
	webhooks.mu.Lock()
	webhooks.queue = nil
	webhooks.mu.Unlock()

	// The receiver refuses the first delivery (so it is retried), then
	// takes only deliveries whose signature verifies.
	var mu sync.Mutex
	var refused, accepted, forged []delivery
	receiver := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		d := delivery{key: r.Header.Get("Idempotency-Key"), signature: r.Header.Get(SignatureHeader), body: body}
		mu.Lock()
		defer mu.Unlock()
		switch {
		case len(refused) == 0:
			refused = append(refused, d)
			w.WriteHeader(http.StatusServiceUnavailable)
		case !verifyWebhook(secret, d.signature, body, time.Now()):
			forged = append(forged, d)
			w.WriteHeader(http.StatusUnauthorized)
		default:
			accepted = append(accepted, d)
			w.WriteHeader(http.StatusNoContent)
		}
	}))
	defer receiver.Close()

	agent := "urn:asap:agent:metrics-" + strconv.FormatInt(time.Now().UnixNano(), 36)
	addr, _ := demoAgentServer(t)
	s := startSLASidecar(t, addr, "agent "+agent+"\ndelegation optional\ndurability strict\n"+
		"sla {\n\tmax_error_rate 1%\n\tmin_samples 5\n}\n"+
		"alert webhook "+receiver.URL+" {\n\tsecret {env.ASAP_TEST_WEBHOOK_SECRET}\n}")

	// At start: every family and every known series, new ones at 0.
	m0 := scrape(t, s.adminAddr)
	agentLabel := `{agent="` + agent + `"`
	total, n := sum(m0, "asap_rejections_total"+agentLabel)
	want := 1 // other/other
	for code := range rejectionClasses {
		want += len(rejectionReasons[code]) + 1
	}
	if n != want || total != 0 {
		t.Fatalf("asap_rejections_total at start: %d series summing to %v, want %d at 0", n, total, want)
	}
	if total, n := sum(m0, "asap_sla_open_breaches"+agentLabel); n != 8 || total != 0 {
		t.Fatalf("asap_sla_open_breaches at start: %d series summing to %v, want 8 at 0", n, total)
	}
	dir := `{dir="` + s.dir + `"`
	for _, series := range []string{
		`asap_webhook_deliveries_total{result="ok"}`, `asap_webhook_deliveries_total{result="failed"}`,
		`asap_webhook_deliveries_total{result="dropped"}`, `asap_webhook_queue_length`,
		`asap_storage_size_bytes` + dir + `,kind="lsm"}`, `asap_storage_size_bytes` + dir + `,kind="vlog"}`,
		`asap_audit_entries` + dir + `}`,
		`asap_storage_commit_group_writers_count` + dir + `}`, `asap_storage_sync_seconds_count` + dir + `}`,
	} {
		if _, ok := m0[series]; !ok {
			t.Errorf("no series %s at start", series)
		}
	}
	if t.Failed() {
		t.FailNow()
	}

	// A bad token and a bad body: exactly one rejection each, under
	// their class and reason.
	req, _ := http.NewRequest(http.MethodPost, s.url+"/asap", strings.NewReader(rpc("r", envelope("01JMETRICS0000000000000001", "echo", `{}`))))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set(delegation.Header, "not-a-token")
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	post(t, s.url+"/asap", "{")
	m1 := scrape(t, s.adminAddr)
	badToken := "asap_rejections_total" + agentLabel + `,class="delegation_malformed",reason="not_compact_jws"}`
	badJSON := "asap_rejections_total" + agentLabel + `,class="parse_error",reason="invalid_json"}`
	if m1[badToken] != 1 || m1[badJSON] != 1 {
		t.Fatalf("%s = %v, %s = %v; want 1 and 1", badToken, m1[badToken], badJSON, m1[badJSON])
	}
	if total, _ := sum(m1, "asap_rejections_total"+agentLabel); total != 2 {
		t.Fatalf("rejections total %v, want 2", total)
	}

	// Six failing tasks, strictly durable: commit groups and syncs, and
	// an error-rate breach the webhook hears about.
	for i := 0; i < 6; i++ {
		post(t, s.url+"/asap", rpc("r", envelope(fmt.Sprintf("01JMETRICSTASK%012d", i), "fail", `{}`)))
	}
	m2 := scrape(t, s.adminAddr)
	groups := `asap_storage_commit_group_writers_count` + dir + `}`
	syncs := `asap_storage_sync_seconds_count` + dir + `}`
	// Each strict task record is at least one writer in a group, made
	// durable by a sync before its answer.
	if m2[groups] < m1[groups]+1 || m2[syncs] < m1[syncs]+1 {
		t.Fatalf("commit groups %v → %v, syncs %v → %v: want both to move", m1[groups], m2[groups], m1[syncs], m2[syncs])
	}
	if w := `asap_storage_commit_group_writers_sum` + dir + `}`; m2[w]-m1[w] < 6 {
		t.Fatalf("writers in commit groups grew by %v, want at least the 6 tasks", m2[w]-m1[w])
	}
	if lsm := m2[`asap_storage_size_bytes`+dir+`,kind="lsm"}`]; lsm <= 0 {
		t.Fatalf("LSM size %v after writes", lsm)
	}
	if vlog := m2[`asap_storage_size_bytes`+dir+`,kind="vlog"}`]; vlog <= 0 {
		t.Fatalf("value log size %v after writes", vlog)
	}
	waitFor(t, func() bool {
		return scrape(t, s.adminAddr)[`asap_audit_entries`+dir+`}`] > m0[`asap_audit_entries`+dir+`}`]
	})

	// The breach: refused once, then delivered signed, under the same
	// idempotency key.
	waitFor(t, func() bool {
		mu.Lock()
		defer mu.Unlock()
		for _, d := range accepted {
			if d.key == refused[0].key {
				return true
			}
		}
		return false
	})
	mu.Lock()
	first := refused[0]
	var retry delivery
	for _, d := range accepted {
		if d.key == first.key {
			retry = d
		}
	}
	nRefused, nAccepted, nForged := len(refused), len(accepted), len(forged)
	_, _ = nRefused, nAccepted
	mu.Unlock()
	var note Notification
	if err := json.Unmarshal(retry.body, &note); err != nil || note.Method != "sla.breach" {
		t.Fatalf("delivered body %s: %v", retry.body, err)
	}
	if want := note.Params.Breach.ID + ":sla.breach"; retry.key != want || string(first.body) != string(retry.body) {
		t.Fatalf("idempotency key %q (first attempt %q), want %q; bodies equal: %v", retry.key, first.key, want, string(first.body) == string(retry.body))
	}
	if nForged != 0 {
		t.Fatalf("%d deliveries failed verification", nForged)
	}
	// A receiver with another secret, or a changed body, refuses it.
	if verifyWebhook("another-secret", retry.signature, retry.body, time.Now()) ||
		verifyWebhook(secret, retry.signature, append([]byte(" "), retry.body...), time.Now()) {
		t.Fatal("signature verified with the wrong secret or a changed body")
	}
	// The sender counts a delivery once the receiver's answer is in:
	// wait for the counters to match what the receiver saw.
	var m3 map[string]float64
	var okDelta, failedDelta float64
	deadline := time.Now().Add(10 * time.Second)
	for {
		mu.Lock()
		nRefused, nAccepted = len(refused), len(accepted)
		mu.Unlock()
		m3 = scrape(t, s.adminAddr)
		okDelta = m3[`asap_webhook_deliveries_total{result="ok"}`] - m0[`asap_webhook_deliveries_total{result="ok"}`]
		failedDelta = m3[`asap_webhook_deliveries_total{result="failed"}`] - m0[`asap_webhook_deliveries_total{result="failed"}`]
		if okDelta == float64(nAccepted) && failedDelta == float64(nRefused) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("deliveries ok +%v failed +%v; the receiver took %d and refused %d", okDelta, failedDelta, nAccepted, nRefused)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if open, _ := sum(m3, "asap_sla_open_breaches"+agentLabel); open < 1 {
		t.Fatalf("asap_sla_open_breaches sums to %v after the breach", open)
	}
}

// startTwoStorages runs one agent URN behind two sites with their own
// storage (say, one per listener), proxying to the demo agent.
func startTwoStorages(t *testing.T, agent string) (s *sidecar, dirA, dirB string) {
	t.Helper()
	s = newSidecar(t, "", "", "")
	upstream, _ := demoAgentServer(t)
	dirA, dirB = s.dir+"/a", s.dir+"/b"
	site := func(port int, dir string) string {
		return fmt.Sprintf(":%d {\n\tbind 127.0.0.1\n\tasap {\n\t\tagent %s\n\t\tstorage %s\n\t\tdelegation off\n\t}\n\treverse_proxy %s\n}\n",
			port, agent, dir, upstream)
	}
	caddyfile := fmt.Sprintf("{\n\tadmin %s\n\tlog {\n\t\tlevel ERROR\n\t}\n}\n", s.adminAddr) + site(s.ports[0], dirA) + site(s.ports[1], dirB)
	cfg, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(caddyfile), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := caddy.Load(cfg, true); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = caddy.Stop() })
	return s, dirA, dirB
}

// One agent URN in two storages has two SLA trackers: their gauges must
// be told apart by storage directory, or the registry refuses the whole
// scrape.
func TestMetricsScrapeWithOneAgentInTwoStorages(t *testing.T) {
	const agent = "urn:asap:agent:twice"
	s, dirA, dirB := startTwoStorages(t, agent)
	m := scrape(t, s.adminAddr)
	for _, dir := range []string{dirA, dirB} {
		for _, series := range []string{
			`asap_sla_latency_p95_ms{agent="` + agent + `",dir="` + dir + `",window="1h"}`,
			`asap_sla_error_rate_percent{agent="` + agent + `",dir="` + dir + `",window="24h"}`,
			`asap_sla_uptime_percent{agent="` + agent + `",dir="` + dir + `",window="1h"}`,
			`asap_sla_open_breaches{agent="` + agent + `",dir="` + dir + `",severity="critical",type="latency"}`,
		} {
			if _, ok := m[series]; !ok {
				t.Errorf("no series %s", series)
			}
		}
	}
}
