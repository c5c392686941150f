package caddymodule

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/asap-sidecar/asap-sidecar/internal/freeport"
)

// withStderr captures what commands write beside their result.
func withStderr(t testing.TB) *bytes.Buffer {
	t.Helper()
	var buf bytes.Buffer
	old := stderr
	stderr = &buf
	t.Cleanup(func() { stderr = old })
	return &buf
}

// withClock fixes the commands' clock.
func withClock(t testing.TB, at time.Time) {
	t.Helper()
	old := now
	now = func() time.Time { return at }
	t.Cleanup(func() { now = old })
}

// The day-to-day loop of an operator against a running sidecar: create
// says the id to revoke and the limits; list shows expiry, limit, use
// and state; bad input and unknown ids fail with status 1.
func TestDelegationCommandsShowWhatAnOperatorNeeds(t *testing.T) {
	priv, _ := keys(t, t.TempDir(), "demo")
	s := newSidecar(t, "", requireOpts+"\nkey "+priv, "")
	s.start()
	addr := []string{"--address", s.adminAddr}
	errOut := withStderr(t)

	_, out, err := run(t, cmdDelegationCreate, "delegation create", append(addr, "--delegate", "urn:asap:agent:client", "--max-tasks", "1", "--expires-in", "1h")...)
	if err != nil {
		t.Fatal(err)
	}
	token := strings.TrimSpace(out)
	if strings.Count(token, ".") != 2 {
		t.Fatalf("stdout holds more than the token: %q", out)
	}
	leaf := claimsOf(t, token)
	id := leaf["jti"].(string)
	exp := time.Unix(int64(leaf["exp"].(float64)), 0).UTC().Format(time.RFC3339)
	for _, want := range []string{"minted " + id + " for urn:asap:agent:client", "scopes task.execute", "max_tasks 1", "expires " + exp, "delegation revoke " + id} {
		if !strings.Contains(errOut.String(), want) {
			t.Errorf("create's stderr lacks %q:\n%s", want, errOut.String())
		}
	}

	// --json: everything on stdout, as one object.
	_, out, err = run(t, cmdDelegationCreate, "delegation create", append(addr, "--delegate", "urn:asap:agent:other", "--scopes", "data.read", "--json")...)
	if err != nil {
		t.Fatal(err)
	}
	var m mintedToken
	if err := json.Unmarshal([]byte(out), &m); err != nil || m.ID == "" || m.Delegate != "urn:asap:agent:other" || m.Delegator != "urn:asap:agent:demo" ||
		m.MaxTasks != nil || strings.Join(m.Scopes, ",") != "data.read" || claimsOf(t, m.Token)["jti"] != m.ID || m.ExpiresAt.IsZero() {
		t.Fatalf("create --json: %v %s", err, out)
	}

	// Spend the first token's one task.
	if a := callWith(t, s.url, token, envelope("01JOPERATOR000000000000001", "echo", `{}`)); a.Error != nil {
		t.Fatalf("call: %+v", a.Error)
	}
	_, out, err = run(t, cmdDelegationList, "delegation list", append(addr, "--json")...)
	if err != nil {
		t.Fatal(err)
	}
	var rows []listedToken
	if err := json.Unmarshal([]byte(out), &rows); err != nil || len(rows) != 2 {
		t.Fatalf("list --json: %v %s", err, out)
	}
	byID := map[string]listedToken{}
	for _, r := range rows {
		byID[r.ID] = r
	}
	if r := byID[id]; r.State != "spent" || r.Used != 1 || r.MaxTasks == nil || *r.MaxTasks != 1 || r.ExpiresAt.Format(time.RFC3339) != exp {
		t.Fatalf("spent token listed as %+v", r)
	}
	if r := byID[m.ID]; r.State != "active" || r.Used != 0 || r.MaxTasks != nil {
		t.Fatalf("unused token listed as %+v", r)
	}
	_, out, _ = run(t, cmdDelegationList, "delegation list", addr...)
	if !strings.Contains(out, "EXPIRES") || !strings.Contains(out, "MAX_TASKS") || !strings.Contains(out, "USED") || !strings.Contains(out, "spent") {
		t.Fatalf("list table:\n%s", out)
	}

	// An expired token is marked so (seen from two hours on).
	withClock(t, time.Now().Add(2*time.Hour))
	_, out, _ = run(t, cmdDelegationList, "delegation list", append(addr, "--json")...)
	if !strings.Contains(out, `"state":"expired"`) {
		t.Fatalf("list two hours later: %s", out)
	}

	// Online minting refuses what offline minting refuses, before asking.
	for _, args := range [][]string{{"--delegate", "client"}, {"--delegate", "urn:asap:agent:client", "--scopes", "task.run"}} {
		code, _, err := run(t, cmdDelegationCreate, "delegation create", append(addr, args...)...)
		if code != exitFailure || err == nil || !strings.Contains(err.Error(), args[len(args)-2]) {
			t.Errorf("create %v: %d %v", args, code, err)
		}
	}
	_, out, _ = run(t, cmdDelegationList, "delegation list", append(addr, "--json", "--all")...)
	if n := strings.Count(out, `"id"`); n != 2 {
		t.Fatalf("bad input minted a token: %d listed", n)
	}

	// An unknown id is an error, status 1.
	if code, err := cmdDelegationRevoke(cmdFlags(t, "delegation revoke", append(addr, "nosuch")...)); code != exitFailure || err == nil || !strings.Contains(err.Error(), "404") {
		t.Fatalf("revoke nosuch: %d %v", code, err)
	}
}

// An admin API nobody answers on: the error says which address was
// tried, where it came from, and which flags point elsewhere.
func TestUnreachableAdminNamesTheFlags(t *testing.T) {
	port := freeport.Port(t)
	cfg := filepath.Join(t.TempDir(), "Caddyfile")
	if err := os.WriteFile(cfg, []byte("{\n\tadmin 127.0.0.1:"+strconv.Itoa(port)+"\n}\n:8080 {\n\trespond ok\n}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--address", "127.0.0.1:" + strconv.Itoa(port)}, "from --address"},
		{[]string{"--config", cfg}, "from --config " + cfg},
	} {
		_, _, err := run(t, cmdDelegationList, "delegation list", tc.args...)
		if err == nil {
			t.Fatalf("%v: no error", tc.args)
		}
		for _, want := range []string{"no sidecar answered at 127.0.0.1:" + strconv.Itoa(port), tc.want, "--address HOST:PORT", "--config FILE", "--db DIR"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("%v: %q lacks %q", tc.args, err, want)
			}
		}
	}
	if _, _, err := run(t, cmdDelegationList, "delegation list", "--config", filepath.Join(t.TempDir(), "none")); err == nil || !strings.HasPrefix(err.Error(), "--config: ") {
		t.Fatalf("missing --config file: %v", err)
	}
}

// A sidecar that answers with an error did answer: the command passes its
// message on instead of saying nobody is there.
func TestAdminErrorAnswerIsNotUnreachable(t *testing.T) {
	s, dirA, _ := startTwoStorages(t, "urn:asap:agent:twice")
	_, _, err := run(t, cmdDelegationList, "delegation list", "--address", s.adminAddr)
	if err == nil {
		t.Fatal("no error from a sidecar with two storages and no --storage")
	}
	for _, want := range []string{"the sidecar at " + s.adminAddr + " answered", "400", "name the database with ?storage=DIR", "--storage"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("%q lacks %q", err, want)
		}
	}
	if strings.Contains(err.Error(), "no sidecar answered") {
		t.Errorf("%q says nobody answered", err)
	}
	if _, _, err := run(t, cmdDelegationList, "delegation list", "--address", s.adminAddr, "--storage", dirA); err != nil {
		t.Fatalf("with --storage: %v", err)
	}
}

func TestSinceAndUntilTakeDayNames(t *testing.T) {
	withClock(t, time.Date(2026, 3, 10, 15, 4, 5, 0, time.FixedZone("CET", 3600)))
	for _, tc := range []struct {
		v     string
		until bool
		want  time.Time
	}{
		{"today", false, time.Date(2026, 3, 10, 0, 0, 0, 0, time.UTC)},
		{"Yesterday", false, time.Date(2026, 3, 9, 0, 0, 0, 0, time.UTC)},
		{"today", true, time.Date(2026, 3, 11, 0, 0, 0, 0, time.UTC).Add(-time.Nanosecond)},
		{"yesterday", true, time.Date(2026, 3, 10, 0, 0, 0, 0, time.UTC).Add(-time.Nanosecond)},
		{"2026-01-31", true, time.Date(2026, 2, 1, 0, 0, 0, 0, time.UTC).Add(-time.Nanosecond)},
		{"2026-01-01", false, time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)},
		{"2h", false, time.Date(2026, 3, 10, 12, 4, 5, 0, time.UTC)},
		{"2026-01-31T10:00:00Z", true, time.Date(2026, 1, 31, 10, 0, 0, 0, time.UTC)},
	} {
		got, err := flagTime("since", tc.v, tc.until)
		if err != nil || !got.Equal(tc.want) {
			t.Errorf("flagTime(%q, until=%t) = %v, %v; want %v", tc.v, tc.until, got, err, tc.want)
		}
	}
}

// The billing export: one CSV line per customer for a period, from a
// running sidecar and from its database once stopped.
func TestUsageExportGroupByConsumer(t *testing.T) {
	s := startSidecar(t, "", "agent urn:asap:agent:demo")
	for i, sender := range []string{"urn:asap:agent:alice", "urn:asap:agent:alice", "urn:asap:agent:bob"} {
		env := strings.Replace(envelope(fmt.Sprintf("01JBILL%019d", i), "echo", `{}`), "urn:asap:agent:client", sender, 1)
		if _, b := post(t, s.url+"/asap", rpc("r", env)); decodeAnswer(t, b).Error != nil {
			t.Fatalf("call %d: %s", i, b)
		}
	}
	today := time.Now().UTC().Format("2006-01-02")
	check := func(where, out string) {
		t.Helper()
		lines := strings.Split(strings.TrimSpace(out), "\r\n")
		if len(lines) != 3 || !strings.HasPrefix(lines[0], "consumer_id,period,total_tasks,tokens_in,tokens_out,") {
			t.Fatalf("%s: billing CSV:\n%s", where, out)
		}
		for i, who := range []string{"alice", "bob"} {
			f := strings.Split(lines[i+1], ",")
			if f[0] != "urn:asap:agent:"+who || f[1] != today+"/"+today || f[2] != []string{"2", "1"}[i] {
				t.Errorf("%s: %s's line: %s", where, who, lines[i+1])
			}
		}
	}
	args := []string{"--group-by", "consumer", "--since", "today", "--until", "today"}
	_, out, err := run(t, cmdUsageExport, "usage export", append(args, "--address", s.adminAddr)...)
	if err != nil {
		t.Fatal(err)
	}
	check("running", out)
	// Nothing yesterday.
	_, out, _ = run(t, cmdUsageExport, "usage export", "--group-by", "consumer", "--since", "yesterday", "--until", "yesterday", "--address", s.adminAddr)
	if strings.Count(out, "\r\n") != 1 {
		t.Fatalf("yesterday's export: %q", out)
	}
	if err := caddy.Stop(); err != nil {
		t.Fatal(err)
	}
	_, out, err = run(t, cmdUsageExport, "usage export", append(args, "--db", s.dir)...)
	if err != nil {
		t.Fatal(err)
	}
	check("--db", out)
}
