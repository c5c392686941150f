package caddymodule

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"sort"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"github.com/asap-sidecar/asap-sidecar/internal/natstest"
)

// The Grafana dashboard and the Prometheus rules shipped in deploy/ must
// only name metrics the sidecar exposes: a renamed metric would otherwise
// leave a panel empty and an alert silent, which nobody notices until it
// should have fired.

const (
	dashboardFile = "../deploy/grafana/asap-sidecar.json"
	alertsFile    = "../deploy/prometheus/asap-alerts.yaml"
)

type ruleFile struct {
	Groups []struct {
		Name  string `yaml:"name"`
		Rules []struct {
			Record      string            `yaml:"record"`
			Alert       string            `yaml:"alert"`
			Expr        string            `yaml:"expr"`
			For         string            `yaml:"for"`
			Labels      map[string]string `yaml:"labels"`
			Annotations map[string]string `yaml:"annotations"`
		} `yaml:"rules"`
	} `yaml:"groups"`
}

type dashboard struct {
	SchemaVersion int `json:"schemaVersion"`
	Templating    struct {
		List []struct {
			Name       string          `json:"name"`
			Type       string          `json:"type"`
			Query      json.RawMessage `json:"query"`
			Definition string          `json:"definition"`
		} `json:"list"`
	} `json:"templating"`
	Panels []struct {
		Type       string `json:"type"`
		Title      string `json:"title"`
		Datasource *struct {
			Type string `json:"type"`
			UID  string `json:"uid"`
		} `json:"datasource"`
		Targets []struct {
			Expr string `json:"expr"`
		} `json:"targets"`
	} `json:"panels"`
}

// promStrings are PromQL string literals: their contents (label values,
// regexps) are not metric names.
var promStrings = regexp.MustCompile("\"(?:[^\"\\\\]|\\\\.)*\"|'(?:[^'\\\\]|\\\\.)*'|`[^`]*`")

// promIdent is a PromQL identifier: metric names (which may hold colons,
// as recording rules' do), functions, keywords, label names.
var promIdent = regexp.MustCompile(`[A-Za-z_:][A-Za-z0-9_:]*`)

// metricRefs is every identifier in expr that names an asap metric (or a
// recorded series, with a colon); where is added to each for the message.
func metricRefs(expr string, where string, into map[string][]string) {
	expr = promStrings.ReplaceAllString(expr, `""`)
	for _, loc := range promIdent.FindAllStringIndex(expr, -1) {
		if loc[0] > 0 && expr[loc[0]-1] == '$' { // a Grafana variable
			continue
		}
		id := expr[loc[0]:loc[1]]
		if strings.HasPrefix(id, "asap_") || strings.HasPrefix(id, "asap:") {
			into[id] = append(into[id], where)
		}
	}
}

func readRules(t *testing.T) ruleFile {
	t.Helper()
	b, err := os.ReadFile(alertsFile)
	if err != nil {
		t.Fatal(err)
	}
	var rf ruleFile
	dec := yaml.NewDecoder(strings.NewReader(string(b)))
	dec.KnownFields(true)
	if err := dec.Decode(&rf); err != nil {
		t.Fatalf("%s: %v", alertsFile, err)
	}
	return rf
}

func readDashboard(t *testing.T) dashboard {
	t.Helper()
	b, err := os.ReadFile(dashboardFile)
	if err != nil {
		t.Fatal(err)
	}
	var d dashboard
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("%s: %v", dashboardFile, err)
	}
	return d
}

// TestAlertRulesAreWellFormed checks the rule file without a sidecar:
// it parses, alerts carry a severity and a summary, and every recorded
// series an expression uses is recorded in the file.
func TestAlertRulesAreWellFormed(t *testing.T) {
	rf := readRules(t)
	recorded := map[string]bool{}
	alerts := map[string]bool{}
	for _, g := range rf.Groups {
		for _, r := range g.Rules {
			switch {
			case r.Record != "" && r.Alert != "":
				t.Errorf("group %s: a rule both records %s and alerts %s", g.Name, r.Record, r.Alert)
			case r.Record != "":
				if recorded[r.Record] {
					t.Errorf("%s is recorded twice", r.Record)
				}
				recorded[r.Record] = true
			case r.Alert != "":
				if alerts[r.Alert] {
					t.Errorf("alert %s is defined twice", r.Alert)
				}
				alerts[r.Alert] = true
				if s := r.Labels["severity"]; s != "critical" && s != "warning" {
					t.Errorf("alert %s: labels.severity %q, want critical or warning", r.Alert, s)
				}
				if strings.TrimSpace(r.Annotations["summary"]) == "" {
					t.Errorf("alert %s has no annotations.summary", r.Alert)
				}
			default:
				t.Errorf("group %s: a rule with neither record nor alert", g.Name)
			}
			if strings.TrimSpace(r.Expr) == "" {
				t.Errorf("rule %s%s has no expr", r.Record, r.Alert)
			}
		}
	}
	if len(alerts) == 0 {
		t.Fatal("no alerts in " + alertsFile)
	}
	for _, g := range rf.Groups {
		for _, r := range g.Rules {
			refs := map[string][]string{}
			metricRefs(r.Expr, r.Record+r.Alert, refs)
			for name := range refs {
				if strings.Contains(name, ":") && !recorded[name] {
					t.Errorf("rule %s%s uses %s, which no rule in the file records", r.Record, r.Alert, name)
				}
			}
		}
	}
	// The burn-rate pairs of the SRE workbook, as Sloth and Pyrra write
	// them: each long window with its short one, at its factor.
	burn := ""
	for _, g := range rf.Groups {
		for _, r := range g.Rules {
			if r.Alert != "" {
				burn += strings.Join(strings.Fields(r.Expr), " ") + "\n"
			}
		}
	}
	for _, pair := range [][3]string{{"1h", "5m", "14.4"}, {"6h", "30m", "6"}, {"1d", "2h", "3"}, {"3d", "6h", "1"}} {
		long := fmt.Sprintf("asap:task_error:ratio_rate%s > (%s * ", pair[0], pair[2])
		short := fmt.Sprintf("asap:task_error:ratio_rate%s > (%s * ", pair[1], pair[2])
		if !strings.Contains(burn, long+"0.005) and "+short) {
			t.Errorf("no burn-rate alert on %s and %s at %sx", pair[0], pair[1], pair[2])
		}
	}
}

// exposedFamilies scrapes the admin endpoint's /metrics and returns each
// asap family with its type.
func exposedFamilies(t *testing.T, admin string) map[string]string {
	t.Helper()
	resp, err := client.Get("http://" + admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	fams := map[string]string{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 4 && f[0] == "#" && f[1] == "TYPE" && strings.HasPrefix(f[2], "asap_") {
			fams[f[2]] = f[3]
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return fams
}

// exposes says whether a scrape with families has series named name:
// a family of its own, or a histogram's _bucket, _sum or _count (a
// summary's _sum or _count). A histogram's bare name has no series.
func exposes(families map[string]string, name string) (bool, string) {
	if typ, ok := families[name]; ok {
		if typ == "histogram" || typ == "summary" {
			return false, fmt.Sprintf("%s is a %s: use %s_bucket, _sum or _count", name, typ, name)
		}
		return true, ""
	}
	for _, suffix := range []string{"_bucket", "_sum", "_count"} {
		base, ok := strings.CutSuffix(name, suffix)
		if !ok {
			continue
		}
		switch families[base] {
		case "histogram":
			return true, ""
		case "summary":
			if suffix != "_bucket" {
				return true, ""
			}
		}
	}
	return false, "the sidecar exposes no such metric"
}

// TestDashboardAndAlertMetricsExist runs a sidecar with SLA tracking and
// fleet mode, gives every metric a reason to appear, and checks that each
// metric the dashboard and the rules name is in its /metrics.
func TestDashboardAndAlertMetricsExist(t *testing.T) {
	nats := natstest.Start(t)
	s := startSidecar(t, "", "agent urn:asap:agent:demo\ndelegation optional\ndurability strict\n"+
		"sla {\n\tmax_error_rate 1%\n\tmax_latency_p95 500ms\n\tmin_samples 5\n}\n"+
		"fleet {\n\tnats "+nats.URL()+"\n\tname dashboards-test\n}")

	// A completed task, a failed one and a refused call.
	post(t, s.url+"/asap", rpc("ok", envelope("01JDASHBOARDS0000000000001", "echo", `{"text":"hi"}`)))
	post(t, s.url+"/asap", rpc("bad", envelope("01JDASHBOARDS0000000000002", "fail", `{}`)))
	post(t, s.url+"/asap", "{")
	// Task counters move once the task's record is committed, which may
	// be just after its answer.
	var fams map[string]string
	waitFor(t, func() bool {
		fams = exposedFamilies(t, s.adminAddr)
		return fams["asap_tasks_total"] != "" && fams["asap_task_duration_seconds"] != ""
	})

	refs := map[string][]string{} // metric → where it is used
	d := readDashboard(t)
	for _, p := range d.Panels {
		for _, tg := range p.Targets {
			metricRefs(tg.Expr, "dashboard panel "+p.Title, refs)
		}
	}
	for _, v := range d.Templating.List {
		var q struct {
			Query string `json:"query"`
		}
		if json.Unmarshal(v.Query, &q) != nil {
			_ = json.Unmarshal(v.Query, &q.Query) // a plain string query
		}
		metricRefs(q.Query, "dashboard variable "+v.Name, refs)
		metricRefs(v.Definition, "dashboard variable "+v.Name, refs)
	}
	rf := readRules(t)
	recorded := map[string]bool{}
	for _, g := range rf.Groups {
		for _, r := range g.Rules {
			if r.Record != "" {
				recorded[r.Record] = true
			}
		}
	}
	for _, g := range rf.Groups {
		for _, r := range g.Rules {
			metricRefs(r.Expr, "rule "+r.Record+r.Alert, refs)
		}
	}

	names := make([]string, 0, len(refs))
	for n := range refs {
		names = append(names, n)
	}
	sort.Strings(names)
	checked := 0
	for _, name := range names {
		if recorded[name] {
			continue
		}
		checked++
		if ok, why := exposes(fams, name); !ok {
			where := refs[name]
			sort.Strings(where)
			t.Errorf("%s (used in %s): %s", name, strings.Join(compact(where), "; "), why)
		}
	}
	if checked < 10 {
		t.Fatalf("only %d metric names found in the dashboard and rules: is the extraction broken?", checked)
	}
	t.Logf("%d metric names checked against %d exposed asap families", checked, len(fams))
}

// compact drops repeated neighbours of a sorted list.
func compact(s []string) []string {
	out := s[:0]
	for i, v := range s {
		if i == 0 || v != s[i-1] {
			out = append(out, v)
		}
	}
	return out
}

// TestDashboardIsImportable checks what Grafana needs to import the
// dashboard on any Prometheus: a datasource variable that every panel
// uses, the agent variable, and a PromQL expression in every target.
func TestDashboardIsImportable(t *testing.T) {
	d := readDashboard(t)
	if d.SchemaVersion < 36 {
		t.Errorf("schemaVersion %d: panels with datasource variables need 36 or later", d.SchemaVersion)
	}
	vars := map[string]string{}
	for _, v := range d.Templating.List {
		vars[v.Name] = v.Type
		if v.Name == "datasource" {
			var q string
			if json.Unmarshal(v.Query, &q) != nil || q != "prometheus" {
				t.Errorf("variable datasource: query %s, want \"prometheus\"", v.Query)
			}
		}
	}
	if vars["datasource"] != "datasource" {
		t.Error(`no variable "datasource" of type datasource`)
	}
	if vars["agent"] != "query" {
		t.Error(`no variable "agent" of type query`)
	}
	targets := 0
	for _, p := range d.Panels {
		if p.Type == "row" {
			continue
		}
		if p.Datasource == nil || p.Datasource.UID != "${datasource}" {
			t.Errorf("panel %q does not use the datasource variable", p.Title)
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			targets++
			if strings.TrimSpace(tg.Expr) == "" {
				t.Errorf("panel %q has an empty query", p.Title)
			}
		}
	}
	if targets == 0 {
		t.Fatal("no queries in the dashboard")
	}
}

// The alert rules pass Prometheus's own checks and their unit tests
// (deploy/prometheus/asap-alerts.test.yaml: each alert fires on the
// series that should fire it, and stays quiet otherwise). promtool comes
// with Prometheus (Debian: apt-get install prometheus); CI sets
// ASAP_REQUIRE_PROMTOOL=1 so that these never go unchecked there.
func TestAlertRulesPassPromtool(t *testing.T) {
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		if os.Getenv("ASAP_REQUIRE_PROMTOOL") != "" {
			t.Fatal("ASAP_REQUIRE_PROMTOOL is set but promtool is not installed")
		}
		t.Skip("promtool is not installed (apt-get install prometheus)")
	}
	for _, args := range [][]string{
		{"check", "rules", "asap-alerts.yaml"},
		{"test", "rules", "asap-alerts.test.yaml"},
	} {
		cmd := exec.Command(promtool, args...)
		cmd.Dir = "../deploy/prometheus"
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
}
