package caddymodule

import (
	"encoding/json"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/asap-sidecar/asap-sidecar/config"
)

// These tests only parse and adapt Caddyfiles; none of them starts Caddy.

func cfParse(t *testing.T, input string) (*Handler, error) {
	t.Helper()
	h := &Handler{}
	err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(input))
	return h, err
}

func cfMustParse(t *testing.T, input string) *Handler {
	t.Helper()
	h, err := cfParse(t, input)
	if err != nil {
		t.Fatalf("parsing:\n%s\nerror: %v", input, err)
	}
	return h
}

func TestCaddyfileParsesEveryOption(t *testing.T) {
	h := cfMustParse(t, `asap {
		agent           urn:asap:agent:research
		key             /etc/asap/agent.key
		trust           urn:asap:agent:enterprise /etc/asap/enterprise.pub
		trust           urn:asap:agent:partner:eu /etc/asap/partner.pub
		delegation      optional
		action          task.request data.read
		action          mcp.tool_call task.execute
		max_chain_depth 4
		max_token_size  32KiB
		clock_skew      45s
		storage         /var/lib/asap
		durability      relaxed
		flush_interval  250ms
		retention       30d
		sla {
			availability    99.9%
			max_latency_p95 750ms
			max_error_rate  2.5%
			support_hours   business
			health_interval 15s
			min_samples     40
		}
		alert webhook   https://ops.example/alerts
		alert webhook   http://127.0.0.1:9999/hook
		max_body        2MiB
		max_batch       25
		inspect_limit   1MB
		asap_versions   2.2 2.1
		default_asap_version 2.1
	}`)
	o := h.Options

	checks := []struct {
		name      string
		got, want any
	}{
		{"agent", o.Agent, "urn:asap:agent:research"},
		{"key", o.KeyFile, "/etc/asap/agent.key"},
		{"delegation", o.Delegation, "optional"},
		{"max_chain_depth", o.MaxChainDepth, 4},
		{"max_token_size", o.MaxTokenSize, config.Size(32 << 10)},
		{"clock_skew", o.ClockSkew.Std(), 45 * time.Second},
		{"storage", o.Storage, "/var/lib/asap"},
		{"durability", o.Durability, "relaxed"},
		{"flush_interval", o.FlushInterval.Std(), 250 * time.Millisecond},
		{"retention", o.Retention.Std(), 30 * 24 * time.Hour},
		{"max_body", o.MaxBody, config.Size(2 << 20)},
		{"max_batch", o.MaxBatch, 25},
		{"inspect_limit", o.InspectLimit, config.Size(1_000_000)},
		{"asap_versions", strings.Join(o.ASAPVersions, " "), "2.2 2.1"},
		{"default_asap_version", o.DefaultASAPVersion, "2.1"},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s = %v, want %v", c.name, c.got, c.want)
		}
	}
	wantTrust := []config.Trust{
		{Agent: "urn:asap:agent:enterprise", KeyFile: "/etc/asap/enterprise.pub"},
		{Agent: "urn:asap:agent:partner:eu", KeyFile: "/etc/asap/partner.pub"},
	}
	if !reflect.DeepEqual(o.Trust, wantTrust) {
		t.Errorf("trust = %+v, want %+v", o.Trust, wantTrust)
	}
	wantActions := map[string]string{"task.request": "data.read", "mcp.tool_call": "task.execute"}
	if !reflect.DeepEqual(o.Actions, wantActions) {
		t.Errorf("actions = %v, want %v", o.Actions, wantActions)
	}
	wantAlerts := []config.Alert{{Webhook: "https://ops.example/alerts"}, {Webhook: "http://127.0.0.1:9999/hook"}}
	if !reflect.DeepEqual(o.Alerts, wantAlerts) {
		t.Errorf("alerts = %+v, want %+v", o.Alerts, wantAlerts)
	}
	s := o.SLA
	if s == nil {
		t.Fatal("sla block not parsed")
	}
	if s.Availability == nil || *s.Availability != 99.9 {
		t.Errorf("sla availability = %v, want 99.9", s.Availability)
	}
	if s.MaxLatencyP95.Std() != 750*time.Millisecond {
		t.Errorf("sla max_latency_p95 = %v", s.MaxLatencyP95.Std())
	}
	if s.MaxErrorRate == nil || *s.MaxErrorRate != 2.5 {
		t.Errorf("sla max_error_rate = %v, want 2.5", s.MaxErrorRate)
	}
	if s.SupportHours != "business" {
		t.Errorf("sla support_hours = %q", s.SupportHours)
	}
	if s.HealthInterval.Std() != 15*time.Second {
		t.Errorf("sla health_interval = %v", s.HealthInterval.Std())
	}
	if s.MinSamples != 40 {
		t.Errorf("sla min_samples = %d", s.MinSamples)
	}

	// Everything parsed is also in range.
	o.ApplyDefaults()
	if err := o.Validate(); err != nil {
		t.Errorf("parsed options do not validate: %v", err)
	}
}

// Each option on its own lands in its field and nowhere else.
func TestCaddyfileParsesEachOptionAlone(t *testing.T) {
	tests := []struct {
		line  string
		check func(o *config.Options) bool
	}{
		{"agent urn:asap:agent:a", func(o *config.Options) bool { return o.Agent == "urn:asap:agent:a" }},
		{"key /k.pem", func(o *config.Options) bool { return o.KeyFile == "/k.pem" }},
		{"trust urn:asap:agent:t /t.pub", func(o *config.Options) bool {
			return len(o.Trust) == 1 && o.Trust[0] == config.Trust{Agent: "urn:asap:agent:t", KeyFile: "/t.pub"}
		}},
		{"delegation off", func(o *config.Options) bool { return o.Delegation == "off" }},
		{"action state.query data.read", func(o *config.Options) bool { return len(o.Actions) == 1 && o.Actions["state.query"] == "data.read" }},
		{"max_chain_depth 64", func(o *config.Options) bool { return o.MaxChainDepth == 64 }},
		{"max_token_size 1048576", func(o *config.Options) bool { return o.MaxTokenSize == 1<<20 }},
		{"clock_skew 2m", func(o *config.Options) bool { return o.ClockSkew.Std() == 2*time.Minute }},
		{`storage "/dir with spaces"`, func(o *config.Options) bool { return o.Storage == "/dir with spaces" }},
		{"durability strict", func(o *config.Options) bool { return o.Durability == "strict" }},
		{"flush_interval 1s", func(o *config.Options) bool { return o.FlushInterval.Std() == time.Second }},
		{"retention 720h", func(o *config.Options) bool { return o.Retention.Std() == 720*time.Hour }},
		{"alert webhook https://x.example/a", func(o *config.Options) bool {
			return len(o.Alerts) == 1 && o.Alerts[0].Webhook == "https://x.example/a"
		}},
		{"max_body 10MiB", func(o *config.Options) bool { return o.MaxBody == 10<<20 }},
		{"max_batch 1000", func(o *config.Options) bool { return o.MaxBatch == 1000 }},
		{"inspect_limit 16KiB", func(o *config.Options) bool { return o.InspectLimit == 16<<10 }},
		{"asap_versions 2.2 2.1", func(o *config.Options) bool { return reflect.DeepEqual(o.ASAPVersions, []string{"2.2", "2.1"}) }},
		{"default_asap_version 2.1", func(o *config.Options) bool { return o.DefaultASAPVersion == "2.1" }},
	}
	for _, tt := range tests {
		t.Run(strings.Fields(tt.line)[0], func(t *testing.T) {
			h := cfMustParse(t, "asap {\n\t"+tt.line+"\n}")
			if !tt.check(&h.Options) {
				t.Errorf("%q parsed to %+v", tt.line, h.Options)
			}
			// Nothing else was set: the options marshal to exactly one
			// field (all others are omitempty and zero).
			b, _ := json.Marshal(h.Options)
			var m map[string]any
			_ = json.Unmarshal(b, &m)
			if len(m) != 1 {
				t.Errorf("%q set %d options: %s", tt.line, len(m), b)
			}
		})
	}
}

func TestCaddyfileSLAOptionsAlone(t *testing.T) {
	tests := []struct {
		line  string
		check func(s *config.SLA) bool
	}{
		{"availability 99.5%", func(s *config.SLA) bool { return s.Availability != nil && *s.Availability == 99.5 }},
		{"availability 99", func(s *config.SLA) bool { return s.Availability != nil && *s.Availability == 99 }},
		{"max_latency_p95 500ms", func(s *config.SLA) bool { return s.MaxLatencyP95.Std() == 500*time.Millisecond }},
		{"max_error_rate 1%", func(s *config.SLA) bool { return s.MaxErrorRate != nil && *s.MaxErrorRate == 1 }},
		{"max_error_rate 0%", func(s *config.SLA) bool { return s.MaxErrorRate != nil && *s.MaxErrorRate == 0 }},
		{`support_hours "Mon-Fri 9-17"`, func(s *config.SLA) bool { return s.SupportHours == "Mon-Fri 9-17" }},
		{"health_interval 1h", func(s *config.SLA) bool { return s.HealthInterval.Std() == time.Hour }},
		{"min_samples 1", func(s *config.SLA) bool { return s.MinSamples == 1 }},
	}
	for _, tt := range tests {
		t.Run(strings.Fields(tt.line)[0], func(t *testing.T) {
			h := cfMustParse(t, "asap {\n\tsla {\n\t\t"+tt.line+"\n\t}\n}")
			if h.SLA == nil {
				t.Fatal("sla is nil")
			}
			if !tt.check(h.SLA) {
				t.Errorf("%q parsed to %+v", tt.line, *h.SLA)
			}
		})
	}
}

func TestCaddyfileEmptyForms(t *testing.T) {
	for _, in := range []string{"asap", "asap {\n}", "asap {\n\n}"} {
		h := cfMustParse(t, in)
		if !reflect.DeepEqual(h.Options, config.Options{}) {
			t.Errorf("%q set options: %+v", in, h.Options)
		}
	}
	// An empty sla block asks for SLA enforcement with defaults.
	h := cfMustParse(t, "asap {\n\tsla {\n\t}\n}")
	if h.SLA == nil || !reflect.DeepEqual(*h.SLA, config.SLA{}) {
		t.Errorf("empty sla block gave %+v", h.SLA)
	}
	h = cfMustParse(t, "asap {\n\tsla\n}")
	if h.SLA == nil {
		t.Error("bare sla gave no SLA")
	}
	// A bare sla does not swallow the next option.
	h = cfMustParse(t, "asap {\n\tsla\n\tmax_body 1MiB\n}")
	if h.SLA == nil || h.MaxBody != 1<<20 {
		t.Errorf("bare sla then max_body gave sla=%+v max_body=%d", h.SLA, h.MaxBody)
	}
	// Options after an sla block belong to asap again.
	h = cfMustParse(t, "asap {\n\tsla {\n\t\tmin_samples 3\n\t}\n\tmax_batch 9\n}")
	if h.SLA == nil || h.SLA.MinSamples != 3 || h.MaxBatch != 9 {
		t.Errorf("option after sla block: sla=%+v max_batch=%d", h.SLA, h.MaxBatch)
	}
}

func TestCaddyfileRepeatedOptions(t *testing.T) {
	h := cfMustParse(t, `asap {
		agent urn:asap:agent:first
		agent urn:asap:agent:second
		action task.request data.read
		action task.request task.execute
		asap_versions 2.1
		asap_versions 2.2 3.0
		sla {
			availability 99%
		}
		sla {
			min_samples 7
		}
	}`)
	if h.Agent != "urn:asap:agent:second" {
		t.Errorf("agent = %q, want the last one", h.Agent)
	}
	if len(h.Actions) != 1 || h.Actions["task.request"] != "task.execute" {
		t.Errorf("actions = %v, want the last mapping", h.Actions)
	}
	if !reflect.DeepEqual(h.ASAPVersions, []string{"2.1", "2.2", "3.0"}) {
		t.Errorf("asap_versions = %v, want the lines added up", h.ASAPVersions)
	}
	if h.SLA == nil || h.SLA.Availability == nil || *h.SLA.Availability != 99 || h.SLA.MinSamples != 7 {
		t.Errorf("two sla blocks did not merge: %+v", h.SLA)
	}
}

// Explicit zeros and negatives, which would read as "unset", are refused
// by the adapter itself, naming the option once.
func TestCaddyfileRefusesNonPositiveValues(t *testing.T) {
	for _, tt := range []struct{ line, opt string }{
		{"max_chain_depth -3", "max_chain_depth"},
		{"max_batch 0", "max_batch"},
		{"max_body 0", "max_body"},
		{"inspect_limit 0B", "inspect_limit"},
		{"retention 0s", "retention"},
		{"flush_interval -1s", "flush_interval"},
		{"sla {\n\t\tmin_samples -1\n\t}", "sla min_samples"},
		{"sla {\n\t\thealth_interval 0s\n\t}", "sla health_interval"},
	} {
		t.Run(tt.opt, func(t *testing.T) {
			err := (&Handler{}).UnmarshalCaddyfile(caddyfile.NewTestDispenser("asap {\n\t" + tt.line + "\n}"))
			if err == nil || !strings.Contains(err.Error(), "asap option "+tt.opt+": must be greater than 0") {
				t.Fatalf("%q: %v", tt.line, err)
			}
			if strings.Count(err.Error(), "asap option") != 1 {
				t.Fatalf("option named more than once: %v", err)
			}
		})
	}
}

// Ranges are checked by Validate; the adapter runs it too, so a value out
// of range in a Caddyfile is reported at its file:line.
func TestCaddyfileRangesCheckedByValidate(t *testing.T) {
	tests := []struct {
		line, opt string
	}{
		{"max_batch 5000", "max_batch"},
		{"max_chain_depth 65", "max_chain_depth"},
		{"max_body 1", "max_body"},
		{"delegation sometimes", "delegation"},
		{"durability eventual", "durability"},
		{"retention 1s", "retention"},
		{"agent research", "agent"},
		{"trust research /k", "trust"},
		{"action task.request run", "action"},
		{"alert webhook ftp://x", "alert"},
		{"asap_versions 2.2 2.2", "asap_versions"},
		{"default_asap_version 9.9", "default_asap_version"},
		{"sla {\n\t\tavailability 150%\n\t}", "sla availability"},
		{"sla {\n\t\tmin_samples 2000000\n\t}", "sla min_samples"},
	}
	for _, tt := range tests {
		t.Run(tt.opt, func(t *testing.T) {
			// Line 1 is "asap {": the option is on line 2, an sla
			// option on line 3.
			line := 2 + strings.Count(tt.line, "\n")/2
			err := (&Handler{}).UnmarshalCaddyfile(caddyfile.NewTestDispenser("asap {\n\t" + tt.line + "\n}"))
			if err == nil || !strings.Contains(err.Error(), "option "+tt.opt+":") || !strings.HasSuffix(err.Error(), fmt.Sprintf(", at Testfile:%d", line)) {
				t.Fatalf("%q: error %v does not name option %s at Testfile:%d", tt.line, err, tt.opt, line)
			}
			if strings.Contains(err.Error(), "option agent: required") {
				t.Errorf("%q: an option left out is reported at parse time: %v", tt.line, err)
			}
		})
	}
	// A problem of an option left out has no line: Validate reports it
	// when the config loads. (The default default_asap_version, 2.2, is
	// not listed.)
	h := cfMustParse(t, "asap {\n\tasap_versions 2.1\n}")
	h.Options.ApplyDefaults()
	if err := h.Validate(); err == nil || !strings.Contains(err.Error(), "option default_asap_version:") {
		t.Fatalf("Validate: %v", err)
	}
}

// Validate accepts clock_skew 0 (its range is 0..10m), so an operator who
// writes "clock_skew 0s" for zero tolerance must get zero, not the default.
func TestCaddyfileExplicitZeroClockSkewIsKept(t *testing.T) {
	h := cfMustParse(t, "asap {\n\tclock_skew 0s\n}")
	if h.ClockSkew == nil || *h.ClockSkew != 0 {
		t.Fatalf("clock_skew 0s parsed to %v", h.ClockSkew)
	}
	h.Options.ApplyDefaults()
	if *h.ClockSkew != 0 {
		t.Fatalf("clock_skew 0s (valid per Validate's 0..10m range) becomes %v after ApplyDefaults, which cannot tell an explicit 0 from unset", h.ClockSkew.Std())
	}
}

func TestCaddyfileErrors(t *testing.T) {
	tests := []struct {
		name  string
		input string
		want  []string // substrings of the error
	}{
		{"unknown option", "asap {\n\tdelegtion require\n}", []string{`unknown asap option "delegtion"`, "Testfile:2"}},
		{"unknown option alone", "asap {\n\tagent urn:asap:agent:a\n\tfrobnicate\n}", []string{`unknown asap option "frobnicate"`, "Testfile:3"}},
		{"unknown sla option", "asap {\n\tsla {\n\t\tuptime 99%\n\t}\n}", []string{`unknown asap sla option "uptime"`, "Testfile:3"}},
		{"sla option outside sla", "asap {\n\tmin_samples 5\n}", []string{`unknown asap option "min_samples"`}},
		{"asap option inside sla", "asap {\n\tsla {\n\t\tmax_body 1MiB\n\t}\n}", []string{`unknown asap sla option "max_body"`}},
		{"option name case", "asap {\n\tAgent urn:asap:agent:a\n}", []string{`unknown asap option "Agent"`}},
		{"first line argument", "asap urn:asap:agent:a", []string{`asap takes no arguments on its first line, got "urn:asap:agent:a"`, "put options in a block"}},
		{"first line argument with block", "asap x {\n\tagent urn:asap:agent:a\n}", []string{`got "x"`}},
		{"sla inline argument", "asap {\n\tsla strict {\n\t\tmin_samples 3\n\t}\n}", []string{`sla takes a block, not "strict"`}},

		// missing values
		{"agent missing", "asap {\n\tagent\n}", []string{"asap option agent: missing value", "Testfile:2"}},
		{"key missing", "asap {\n\tkey\n}", []string{"asap option key: missing value"}},
		{"delegation missing", "asap {\n\tdelegation\n}", []string{"asap option delegation: missing value"}},
		{"storage missing", "asap {\n\tstorage\n}", []string{"asap option storage: missing value"}},
		{"durability missing", "asap {\n\tdurability\n}", []string{"asap option durability: missing value"}},
		{"max_chain_depth missing", "asap {\n\tmax_chain_depth\n}", []string{"asap option max_chain_depth: missing value"}},
		{"max_token_size missing", "asap {\n\tmax_token_size\n}", []string{"asap option max_token_size: missing value"}},
		{"clock_skew missing", "asap {\n\tclock_skew\n}", []string{"asap option clock_skew: missing value"}},
		{"flush_interval missing", "asap {\n\tflush_interval\n}", []string{"asap option flush_interval: missing value"}},
		{"retention missing", "asap {\n\tretention\n}", []string{"asap option retention: missing value"}},
		{"max_body missing", "asap {\n\tmax_body\n}", []string{"asap option max_body: missing value"}},
		{"max_batch missing", "asap {\n\tmax_batch\n}", []string{"asap option max_batch: missing value"}},
		{"inspect_limit missing", "asap {\n\tinspect_limit\n}", []string{"asap option inspect_limit: missing value"}},
		{"asap_versions missing", "asap {\n\tasap_versions\n}", []string{"asap option asap_versions: missing value", "e.g. asap_versions 2.1 2.2"}},
		{"default_asap_version missing", "asap {\n\tdefault_asap_version\n}", []string{"asap option default_asap_version: missing value"}},
		{"default_asap_version extra", "asap {\n\tdefault_asap_version 2.1 2.2\n}", []string{`asap option default_asap_version: takes one value, got another: "2.2"`}},
		{"sla availability missing", "asap {\n\tsla {\n\t\tavailability\n\t}\n}", []string{"asap option sla availability: missing value"}},
		{"sla max_latency_p95 missing", "asap {\n\tsla {\n\t\tmax_latency_p95\n\t}\n}", []string{"asap option sla max_latency_p95: missing value"}},
		{"sla max_error_rate missing", "asap {\n\tsla {\n\t\tmax_error_rate\n\t}\n}", []string{"asap option sla max_error_rate: missing value"}},
		{"sla support_hours missing", "asap {\n\tsla {\n\t\tsupport_hours\n\t}\n}", []string{"asap option sla support_hours: missing value"}},
		{"sla health_interval missing", "asap {\n\tsla {\n\t\thealth_interval\n\t}\n}", []string{"asap option sla health_interval: missing value"}},
		{"sla min_samples missing", "asap {\n\tsla {\n\t\tmin_samples\n\t}\n}", []string{"asap option sla min_samples: missing value"}},

		// extra values
		{"agent extra", "asap {\n\tagent urn:asap:agent:a urn:asap:agent:b\n}", []string{`asap option agent: takes one value, got another: "urn:asap:agent:b"`}},
		{"delegation extra", "asap {\n\tdelegation require optional\n}", []string{`asap option delegation: takes one value, got another: "optional"`}},
		{"max_batch extra", "asap {\n\tmax_batch 5 6\n}", []string{`asap option max_batch: takes one value, got another: "6"`}},
		{"max_body extra", "asap {\n\tmax_body 10 MiB\n}", []string{`asap option max_body: takes one value, got another: "MiB"`}},
		{"retention extra", "asap {\n\tretention 30 d\n}", []string{`asap option retention: takes one value`}},
		{"sla support_hours extra", "asap {\n\tsla {\n\t\tsupport_hours 24 7\n\t}\n}", []string{`asap option sla support_hours: takes one value, got another: "7"`}},

		// non-numeric ints
		{"max_chain_depth word", "asap {\n\tmax_chain_depth eight\n}", []string{`asap option max_chain_depth: "eight" is not a whole number`}},
		{"max_batch fraction", "asap {\n\tmax_batch 1.5\n}", []string{`asap option max_batch: "1.5" is not a whole number`}},
		{"sla min_samples word", "asap {\n\tsla {\n\t\tmin_samples ten\n\t}\n}", []string{`asap option sla min_samples: "ten" is not a whole number`}},

		// bad durations
		{"clock_skew unitless", "asap {\n\tclock_skew 30\n}", []string{"asap option clock_skew: invalid duration", `"30"`}},
		{"flush_interval word", "asap {\n\tflush_interval often\n}", []string{"asap option flush_interval: invalid duration"}},
		{"retention bad days", "asap {\n\tretention xd\n}", []string{"asap option retention: invalid duration"}},
		{"sla max_latency_p95 bad", "asap {\n\tsla {\n\t\tmax_latency_p95 fast\n\t}\n}", []string{"asap option sla max_latency_p95: invalid duration"}},
		{"sla health_interval bad", "asap {\n\tsla {\n\t\thealth_interval 10\n\t}\n}", []string{"asap option sla health_interval: invalid duration"}},

		// bad sizes
		{"max_body bad", "asap {\n\tmax_body big\n}", []string{"asap option max_body: invalid size", `"big"`}},
		{"max_token_size bad", "asap {\n\tmax_token_size 16QiB\n}", []string{"asap option max_token_size: invalid size"}},
		{"inspect_limit bad", "asap {\n\tinspect_limit -1\n}", []string{"asap option inspect_limit: invalid size"}},

		// bad percents
		{"sla availability bad", "asap {\n\tsla {\n\t\tavailability high\n\t}\n}", []string{"asap option sla availability: invalid percentage", `"high"`}},
		{"sla max_error_rate bad", "asap {\n\tsla {\n\t\tmax_error_rate 1%%\n\t}\n}", []string{"asap option sla max_error_rate: invalid percentage"}},

		// multi-argument options
		{"trust one arg", "asap {\n\ttrust urn:asap:agent:e\n}", []string{"trust takes <urn> <public key file>", "Testfile:2"}},
		{"trust no arg", "asap {\n\ttrust\n}", []string{"trust takes <urn> <public key file>"}},
		{"trust three args", "asap {\n\ttrust urn:asap:agent:e /a.pub /b.pub\n}", []string{"trust takes <urn> <public key file>"}},
		{"action one arg", "asap {\n\taction task.request\n}", []string{"action takes <payload type> <scope>"}},
		{"action three args", "asap {\n\taction task.request data.read data.write\n}", []string{"action takes <payload type> <scope>"}},
		{"alert other sink", "asap {\n\talert email ops@example.com\n}", []string{`alert: unknown sink "email"; use webhook`}},
		{"alert one arg", "asap {\n\talert webhook\n}", []string{"alert takes webhook <url>"}},
		{"alert three args", "asap {\n\talert webhook https://a https://b\n}", []string{"alert takes webhook <url>"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := cfParse(t, tt.input)
			if err == nil {
				t.Fatalf("parsed without error:\n%s", tt.input)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}
}

// A parse error stops at the first problem and leaves what came before it.
func TestCaddyfileErrorStopsAtFirstProblem(t *testing.T) {
	h, err := cfParse(t, "asap {\n\tagent urn:asap:agent:a\n\tmax_batch x\n\tmax_body y\n}")
	if err == nil {
		t.Fatal("want an error")
	}
	if !strings.Contains(err.Error(), "max_batch") || strings.Contains(err.Error(), "max_body") {
		t.Errorf("error %q should name only the first bad option", err)
	}
	if h.Agent != "urn:asap:agent:a" {
		t.Errorf("agent = %q", h.Agent)
	}
}

func cfAdapt(t *testing.T, asapBlock string) ([]byte, error) {
	t.Helper()
	adapter := caddyconfig.GetAdapter("caddyfile")
	if adapter == nil {
		t.Fatal("caddyfile adapter not registered")
	}
	// reverse_proxy comes first in the text: the registered directive order
	// must still put asap in front of it.
	input := `{
	admin off
}
:8080 {
	reverse_proxy 127.0.0.1:9000
	asap {
` + asapBlock + `
	}
}
`
	out, _, err := adapter.Adapt([]byte(input), nil)
	return out, err
}

func TestAdaptCaddyfileMisspeltOptionFails(t *testing.T) {
	_, err := cfAdapt(t, "\t\tagent urn:asap:agent:demo\n\t\tdelegtion require")
	if err == nil {
		t.Fatal("a misspelt asap option adapted")
	}
	if !strings.Contains(err.Error(), `unknown asap option "delegtion"`) {
		t.Errorf("error %q does not name the misspelt option", err)
	}
	if !strings.Contains(err.Error(), "Caddyfile:8") {
		t.Errorf("error %q does not give the line", err)
	}

	_, err = cfAdapt(t, "\t\tsla {\n\t\t\tavailabilty 99%\n\t\t}")
	if err == nil || !strings.Contains(err.Error(), `unknown asap sla option "availabilty"`) {
		t.Errorf("misspelt sla option: error %v", err)
	}

	_, err = cfAdapt(t, "\t\tmax_body lots")
	if err == nil || !strings.Contains(err.Error(), "asap option max_body") {
		t.Errorf("bad size: error %v", err)
	}
}

func TestAdaptCaddyfileOrdersAsapBeforeReverseProxy(t *testing.T) {
	out, err := cfAdapt(t, `		agent urn:asap:agent:demo
		storage /tmp/asap-test-unused
		retention 30d
		max_body 10MiB
		sla {
			availability 99.5%
			min_samples 5
		}`)
	if err != nil {
		t.Fatalf("adapting: %v", err)
	}
	js := string(out)
	ai := strings.Index(js, `"handler":"asap"`)
	ri := strings.Index(js, `"handler":"reverse_proxy"`)
	if ai < 0 || ri < 0 {
		t.Fatalf("adapted JSON lacks a handler:\n%s", js)
	}
	if ai > ri {
		t.Errorf("asap comes after reverse_proxy:\n%s", js)
	}

	// The asap handler's JSON decodes back into the same options.
	h := findAsapHandler(t, out)
	if h == nil {
		t.Fatalf("no asap handler object found in:\n%s", js)
	}
	if h.Agent != "urn:asap:agent:demo" || h.Storage != "/tmp/asap-test-unused" ||
		h.Retention.Std() != 30*24*time.Hour || h.MaxBody != 10<<20 ||
		h.SLA == nil || h.SLA.Availability == nil || *h.SLA.Availability != 99.5 || h.SLA.MinSamples != 5 {
		t.Errorf("asap handler JSON decoded to %+v (sla %+v)", h.Options, h.SLA)
	}
}

// findAsapHandler walks the adapted JSON for the object with
// "handler":"asap" and decodes it as a Handler.
func findAsapHandler(t *testing.T, cfg []byte) *Handler {
	t.Helper()
	var root any
	if err := json.Unmarshal(cfg, &root); err != nil {
		t.Fatal(err)
	}
	var found map[string]any
	var walk func(v any)
	walk = func(v any) {
		if found != nil {
			return
		}
		switch x := v.(type) {
		case map[string]any:
			if x["handler"] == "asap" {
				found = x
				return
			}
			for _, e := range x {
				walk(e)
			}
		case []any:
			for _, e := range x {
				walk(e)
			}
		}
	}
	walk(root)
	if found == nil {
		return nil
	}
	b, _ := json.Marshal(found)
	var h Handler
	if err := json.Unmarshal(b, &h); err != nil {
		t.Fatalf("decoding asap handler %s: %v", b, err)
	}
	return &h
}
