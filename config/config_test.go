package config

import (
	"encoding/json"
	"math"
	"strings"
	"testing"
	"time"
)

func TestParseDuration(t *testing.T) {
	tests := []struct {
		in   string
		want time.Duration
	}{
		{"500ms", 500 * time.Millisecond},
		{"10s", 10 * time.Second},
		{"720h", 720 * time.Hour},
		{"1h30m", 90 * time.Minute},
		{"30d", 30 * 24 * time.Hour},
		{"1.5d", 36 * time.Hour},
		{"0.5d", 12 * time.Hour},
		{"0d", 0},
		{"0", 0},
		{"  10s  ", 10 * time.Second},
		{" 2d ", 48 * time.Hour},
		{"-1s", -time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseDuration(tt.in)
			if err != nil {
				t.Fatalf("ParseDuration(%q): unexpected error %v", tt.in, err)
			}
			if got != tt.want {
				t.Errorf("ParseDuration(%q) = %v, want %v", tt.in, got, tt.want)
			}
		})
	}
}

func TestParseDurationRejectsGarbage(t *testing.T) {
	tests := []struct {
		in      string
		wantMsg string
	}{
		{"", "invalid duration"},
		{"abc", "examples: 500ms, 10s, 720h, 30d"},
		{"10", "invalid duration"},
		{"10 s", "invalid duration"},
		{"d", "invalid duration"},
		{"xd", "invalid duration"},
		{"1.2.3d", "invalid duration"},
		{"10sd", "invalid duration"},
		{"5y", "invalid duration"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseDuration(tt.in)
			if err == nil {
				t.Fatalf("ParseDuration(%q) = %v, want an error", tt.in, got)
			}
			if !strings.Contains(err.Error(), tt.wantMsg) {
				t.Errorf("ParseDuration(%q) error %q does not contain %q", tt.in, err, tt.wantMsg)
			}
			if !strings.Contains(err.Error(), tt.in) && tt.in != "" {
				t.Errorf("ParseDuration(%q) error %q does not quote the input", tt.in, err)
			}
			if got != 0 {
				t.Errorf("ParseDuration(%q) returned %v with its error, want 0", tt.in, got)
			}
		})
	}
}

// A day count too large for a time.Duration must be rejected, as
// time.ParseDuration rejects "24000000h"; it must never wrap around to a
// negative or otherwise wrong duration.
func TestParseDurationRejectsOutOfRangeDays(t *testing.T) {
	if _, err := time.ParseDuration("24000000h"); err == nil {
		t.Fatal("time.ParseDuration accepted an overflowing duration; test premise broken")
	}
	for _, in := range []string{"1000000d", "1e300d", "NaNd", "Infd", "-Infd"} {
		t.Run(in, func(t *testing.T) {
			got, err := ParseDuration(in)
			if err == nil {
				t.Fatalf("ParseDuration(%q) = %v (%d ns) with no error; the \"d\" form converts float days to time.Duration without a range/NaN check, so it overflows instead of failing like time.ParseDuration does", in, got, int64(got))
			}
		})
	}
}

func TestDurationUnmarshalJSON(t *testing.T) {
	tests := []struct {
		in   string
		want time.Duration
	}{
		{`"500ms"`, 500 * time.Millisecond},
		{`"720h"`, 720 * time.Hour},
		{`"30d"`, 30 * 24 * time.Hour},
		{`"1.5d"`, 36 * time.Hour},
		{`1000000000`, time.Second},
		{`0`, 0},
		{`-5`, -5},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			var d Duration
			if err := json.Unmarshal([]byte(tt.in), &d); err != nil {
				t.Fatalf("unmarshal %s: %v", tt.in, err)
			}
			if d.Std() != tt.want {
				t.Errorf("unmarshal %s = %v, want %v", tt.in, d.Std(), tt.want)
			}
		})
	}
}

func TestDurationUnmarshalJSONRejectsBadForms(t *testing.T) {
	tests := []struct {
		in      string
		wantMsg string
	}{
		{`"ten seconds"`, "invalid duration"},
		{`"10"`, "invalid duration"},
		{`1.5`, `duration must be a string like "10s" or integer nanoseconds`},
		{`true`, "duration must be a string"},
		{`{}`, "duration must be a string"},
		{`[1]`, "duration must be a string"},
		{`99999999999999999999`, "duration must be a string"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			var d Duration
			err := json.Unmarshal([]byte(tt.in), &d)
			if err == nil {
				t.Fatalf("unmarshal %s = %v, want an error", tt.in, d.Std())
			}
			if !strings.Contains(err.Error(), tt.wantMsg) {
				t.Errorf("unmarshal %s: error %q does not contain %q", tt.in, err, tt.wantMsg)
			}
		})
	}
}

// UnmarshalJSON called directly with a malformed quoted string reaches the
// inner json.Unmarshal error path (encoding/json never hands it such bytes).
func TestDurationUnmarshalJSONMalformedString(t *testing.T) {
	var d Duration
	if err := d.UnmarshalJSON([]byte(`"unterminated`)); err == nil {
		t.Fatal("want an error for a malformed JSON string")
	}
	var z Size
	if err := z.UnmarshalJSON([]byte(`"unterminated`)); err == nil {
		t.Fatal("want an error for a malformed JSON string")
	}
	var p Percent
	if err := p.UnmarshalJSON([]byte(`"unterminated`)); err == nil {
		t.Fatal("want an error for a malformed JSON string")
	}
}

func TestDurationMarshalJSONRoundTrip(t *testing.T) {
	tests := []struct {
		d    time.Duration
		want string
	}{
		{500 * time.Millisecond, `"500ms"`},
		{10 * time.Second, `"10s"`},
		{720 * time.Hour, `"720h0m0s"`},
		{0, `"0s"`},
		{90 * time.Minute, `"1h30m0s"`},
	}
	for _, tt := range tests {
		t.Run(tt.want, func(t *testing.T) {
			b, err := json.Marshal(Duration(tt.d))
			if err != nil {
				t.Fatal(err)
			}
			if string(b) != tt.want {
				t.Errorf("marshal %v = %s, want %s", tt.d, b, tt.want)
			}
			var back Duration
			if err := json.Unmarshal(b, &back); err != nil {
				t.Fatalf("unmarshal %s: %v", b, err)
			}
			if back.Std() != tt.d {
				t.Errorf("round trip of %v gave %v", tt.d, back.Std())
			}
		})
	}
}

func TestParseSize(t *testing.T) {
	tests := []struct {
		in   string
		want Size
	}{
		{"10MiB", 10 << 20},
		{"16KiB", 16 << 10},
		{"16 KiB", 16 << 10},
		{"1MB", 1_000_000},
		{"16KB", 16_000},
		{"1048576", 1 << 20},
		{"  1024  ", 1024},
		{"1GiB", 1 << 30},
		{"0", 0},
		{"1PiB", 1 << 50},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseSize(tt.in)
			if err != nil {
				t.Fatalf("ParseSize(%q): unexpected error %v", tt.in, err)
			}
			if got != tt.want {
				t.Errorf("ParseSize(%q) = %d, want %d", tt.in, got, tt.want)
			}
		})
	}
}

func TestParseSizeRejectsGarbage(t *testing.T) {
	for _, in := range []string{"", "garbage", "10 apples", "MiB", "-1", "2PiB", "1EiB"} {
		t.Run(in, func(t *testing.T) {
			got, err := ParseSize(in)
			if err == nil {
				t.Fatalf("ParseSize(%q) = %d, want an error", in, got)
			}
			if !strings.Contains(err.Error(), "invalid size") || !strings.Contains(err.Error(), "examples: 16KiB, 10MiB, 1048576") {
				t.Errorf("ParseSize(%q) error %q lacks the explanation", in, err)
			}
			if got != 0 {
				t.Errorf("ParseSize(%q) returned %d with its error, want 0", in, got)
			}
		})
	}
}

func TestSizeUnmarshalJSON(t *testing.T) {
	tests := []struct {
		in   string
		want Size
	}{
		{`"10MiB"`, 10 << 20},
		{`"16 KiB"`, 16 << 10},
		{`"1MB"`, 1_000_000},
		{`"4096"`, 4096},
		{`4096`, 4096},
		{`0`, 0},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			var z Size
			if err := json.Unmarshal([]byte(tt.in), &z); err != nil {
				t.Fatalf("unmarshal %s: %v", tt.in, err)
			}
			if z != tt.want {
				t.Errorf("unmarshal %s = %d, want %d", tt.in, z, tt.want)
			}
		})
	}
}

func TestSizeUnmarshalJSONRejectsBadForms(t *testing.T) {
	tests := []struct {
		in      string
		wantMsg string
	}{
		{`"lots"`, "invalid size"},
		{`1.5`, `size must be a string like "10MiB" or an integer byte count`},
		{`false`, "size must be a string"},
		{`{"n":1}`, "size must be a string"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			var z Size
			err := json.Unmarshal([]byte(tt.in), &z)
			if err == nil {
				t.Fatalf("unmarshal %s = %d, want an error", tt.in, z)
			}
			if !strings.Contains(err.Error(), tt.wantMsg) {
				t.Errorf("unmarshal %s: error %q does not contain %q", tt.in, err, tt.wantMsg)
			}
		})
	}
}

func TestParsePercent(t *testing.T) {
	tests := []struct {
		in   string
		want Percent
	}{
		{"99.5%", 99.5},
		{"1%", 1},
		{"0.5", 0.5},
		{" 2 % ", 2},
		{"100%", 100},
		{"0%", 0},
		{"99.95", 99.95},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParsePercent(tt.in)
			if err != nil {
				t.Fatalf("ParsePercent(%q): unexpected error %v", tt.in, err)
			}
			if got != tt.want {
				t.Errorf("ParsePercent(%q) = %v, want %v", tt.in, got, tt.want)
			}
		})
	}
}

func TestParsePercentRejectsGarbage(t *testing.T) {
	for _, in := range []string{"", "%", "abc", "ninety%", "99.5%%", "1,5%", "%5"} {
		t.Run(in, func(t *testing.T) {
			got, err := ParsePercent(in)
			if err == nil {
				t.Fatalf("ParsePercent(%q) = %v, want an error", in, got)
			}
			if !strings.Contains(err.Error(), "invalid percentage") || !strings.Contains(err.Error(), "example: 99.5%") {
				t.Errorf("ParsePercent(%q) error %q lacks the explanation", in, err)
			}
		})
	}
}

// "NaN" is not a percentage; if it parses, Validate must still reject it as
// an SLA figure (NaN compares false with every bound).
func TestPercentNaNIsRejected(t *testing.T) {
	for _, field := range []string{"availability", "max_error_rate"} {
		t.Run(field, func(t *testing.T) {
			p, err := ParsePercent("NaN%")
			if err != nil {
				return // rejected at parse time: fine
			}
			o := validOptions()
			if field == "availability" {
				o.SLA.Availability = &p
			} else {
				o.SLA.MaxErrorRate = &p
			}
			if o.Validate() == nil {
				t.Fatalf(`ParsePercent("NaN%%") returns NaN with no error and Options.Validate accepts sla %s = NaN, because every range comparison with NaN is false`, field)
			}
		})
	}
}

func TestPercentUnmarshalJSON(t *testing.T) {
	tests := []struct {
		in   string
		want Percent
	}{
		{`"99.5%"`, 99.5},
		{`"1%"`, 1},
		{`"0.5"`, 0.5},
		{`99.5`, 99.5},
		{`1`, 1},
		{`0`, 0},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			var p Percent
			if err := json.Unmarshal([]byte(tt.in), &p); err != nil {
				t.Fatalf("unmarshal %s: %v", tt.in, err)
			}
			if p != tt.want {
				t.Errorf("unmarshal %s = %v, want %v", tt.in, p, tt.want)
			}
		})
	}
}

func TestPercentUnmarshalJSONRejectsBadForms(t *testing.T) {
	tests := []struct {
		in      string
		wantMsg string
	}{
		{`"high"`, "invalid percentage"},
		{`true`, `percentage must be a string like "99.5%" or a number`},
		{`[99]`, "percentage must be a string"},
		{`{}`, "percentage must be a string"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			var p Percent
			err := json.Unmarshal([]byte(tt.in), &p)
			if err == nil {
				t.Fatalf("unmarshal %s = %v, want an error", tt.in, p)
			}
			if !strings.Contains(err.Error(), tt.wantMsg) {
				t.Errorf("unmarshal %s: error %q does not contain %q", tt.in, err, tt.wantMsg)
			}
		})
	}
}

func TestPercentMarshalJSONRoundTrip(t *testing.T) {
	tests := []struct {
		p    Percent
		want string
	}{
		{99.5, `"99.5%"`},
		{1, `"1%"`},
		{0, `"0%"`},
		{100, `"100%"`},
		{0.001, `"0.001%"`},
		{99.95, `"99.95%"`},
	}
	for _, tt := range tests {
		t.Run(tt.want, func(t *testing.T) {
			b, err := json.Marshal(tt.p)
			if err != nil {
				t.Fatal(err)
			}
			if string(b) != tt.want {
				t.Errorf("marshal %v = %s, want %s", float64(tt.p), b, tt.want)
			}
			var back Percent
			if err := json.Unmarshal(b, &back); err != nil {
				t.Fatalf("unmarshal %s: %v", b, err)
			}
			if back != tt.p {
				t.Errorf("round trip of %v gave %v", float64(tt.p), float64(back))
			}
		})
	}
}

// A whole Options value survives a JSON round trip, with every custom type
// in its string form on the wire.
func TestOptionsJSONRoundTrip(t *testing.T) {
	o := validOptions()
	b, err := json.Marshal(o)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"clock_skew":"30s"`, `"retention":"720h0m0s"`, `"availability":"99.5%"`, `"max_error_rate":"1%"`, `"max_body":10485760`} {
		if !strings.Contains(string(b), want) {
			t.Errorf("marshalled options %s lack %s", b, want)
		}
	}
	var back Options
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatalf("unmarshal %s: %v", b, err)
	}
	b2, err := json.Marshal(back)
	if err != nil {
		t.Fatal(err)
	}
	if string(b) != string(b2) {
		t.Errorf("round trip changed the options:\n%s\n%s", b, b2)
	}
	if err := back.Validate(); err != nil {
		t.Errorf("round-tripped options no longer valid: %v", err)
	}
}

func TestOptionsUnmarshalFromOperatorJSON(t *testing.T) {
	in := `{
		"agent": "urn:asap:agent:research",
		"retention": "30d",
		"clock_skew": 5000000000,
		"max_body": "1MiB",
		"max_token_size": 4096,
		"sla": {"availability": "99.9%", "max_error_rate": 2, "max_latency_p95": "250ms"}
	}`
	var o Options
	if err := json.Unmarshal([]byte(in), &o); err != nil {
		t.Fatal(err)
	}
	if o.Retention.Std() != 30*24*time.Hour {
		t.Errorf("retention = %v", o.Retention.Std())
	}
	if o.ClockSkew.Std() != 5*time.Second {
		t.Errorf("clock_skew = %v", o.ClockSkew.Std())
	}
	if o.MaxBody != 1<<20 || o.MaxTokenSize != 4096 {
		t.Errorf("max_body = %d, max_token_size = %d", o.MaxBody, o.MaxTokenSize)
	}
	if o.SLA == nil || o.SLA.Availability == nil || *o.SLA.Availability != 99.9 ||
		o.SLA.MaxErrorRate == nil || *o.SLA.MaxErrorRate != 2 || o.SLA.MaxLatencyP95.Std() != 250*time.Millisecond {
		t.Errorf("sla = %+v", o.SLA)
	}
}

// In JSON, a left-out asap_versions is the default, and an empty list is
// an error rather than a silent default.
func TestASAPVersionsFromJSON(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    string // the versions and default in effect
		wantErr string
	}{
		{`{}`, "2.1 2.2 / 2.2", ""},
		{`{"asap_versions": ["2.2"]}`, "2.2 / 2.2", ""},
		{`{"asap_versions": ["2.1"], "default_asap_version": "2.1"}`, "2.1 / 2.1", ""},
		{`{"asap_versions": []}`, "", "option asap_versions: the list is empty"},
		{`{"asap_versions": ["2.1"]}`, "", "option default_asap_version:"},
	} {
		var o Options
		if err := json.Unmarshal([]byte(tc.in), &o); err != nil {
			t.Fatal(err)
		}
		o.Delegation = DelegationOff
		o.ApplyDefaults()
		err := o.Validate()
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("%s: error %v, want %q", tc.in, err, tc.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", tc.in, err)
			continue
		}
		v := o.Versions()
		if got := strings.Join(v.Supported, " ") + " / " + v.Default; got != tc.want {
			t.Errorf("%s: versions %s, want %s", tc.in, got, tc.want)
		}
	}
}

func TestApplyDefaultsFillsEveryDefault(t *testing.T) {
	// The documented default values, spelled out so that a changed constant
	// is noticed.
	if DefaultDelegation != "require" || DefaultDurability != "strict" ||
		DefaultFlushInterval != time.Second || DefaultRetention != 720*time.Hour ||
		DefaultMaxBody != 10<<20 || DefaultMaxBatch != 50 || DefaultChainDepth != 8 ||
		DefaultTokenSize != 16<<10 || DefaultClockSkew != 30*time.Second ||
		DefaultInspectLimit != 4<<20 || DefaultHealthEvery != 10*time.Second ||
		DefaultMinSamples != 20 {
		t.Fatal("a default constant changed")
	}

	o := Options{Agent: "urn:asap:agent:research"}
	o.ApplyDefaults()
	checks := []struct {
		name      string
		got, want any
	}{
		{"delegation", o.Delegation, DelegationRequire},
		{"durability", o.Durability, "strict"},
		{"metering", o.Metering, "on"},
		{"audit", o.Audit, "on"},
		{"checkpoint_interval", o.CheckpointInterval.Std(), time.Minute},
		{"flush_interval", o.FlushInterval.Std(), time.Second},
		{"retention", o.Retention.Std(), 720 * time.Hour},
		{"clock_skew", o.ClockSkew.Std(), 30 * time.Second},
		{"max_body", o.MaxBody, Size(10 << 20)},
		{"max_batch", o.MaxBatch, 50},
		{"max_chain_depth", o.MaxChainDepth, 8},
		{"max_token_size", o.MaxTokenSize, Size(16 << 10)},
		{"inspect_limit", o.InspectLimit, Size(4 << 20)},
		{"storage", o.Storage, ""},
		{"agent", o.Agent, "urn:asap:agent:research"},
		{"key", o.KeyFile, ""},
		{"asap_versions", strings.Join(o.ASAPVersions, " "), "2.1 2.2"},
		{"default_asap_version", o.DefaultASAPVersion, "2.2"},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("default %s = %v, want %v", c.name, c.got, c.want)
		}
	}
	if o.SLA != nil {
		t.Errorf("ApplyDefaults created an SLA: %+v", o.SLA)
	}
	if o.Trust != nil || o.Actions != nil || o.Alerts != nil {
		t.Errorf("ApplyDefaults filled lists: trust=%v actions=%v alerts=%v", o.Trust, o.Actions, o.Alerts)
	}
	if err := o.Validate(); err != nil {
		t.Errorf("defaults do not validate: %v", err)
	}
}

// With delegation on by default, the agent it guards must be named.
func TestDefaultsNeedAnAgent(t *testing.T) {
	var o Options
	o.ApplyDefaults()
	err := o.Validate()
	if err == nil || !strings.Contains(err.Error(), "option agent: required with delegation require") {
		t.Fatalf("defaults without agent: %v", err)
	}
	o.Delegation = DelegationOff
	if err := o.Validate(); err != nil {
		t.Fatalf("delegation off needs no agent: %v", err)
	}
}

func TestApplyDefaultsFillsSLADefaultsOnlyWithSLA(t *testing.T) {
	o := Options{Agent: "urn:asap:agent:research", SLA: &SLA{}}
	o.ApplyDefaults()
	if o.SLA.HealthInterval.Std() != 10*time.Second {
		t.Errorf("sla health_interval = %v, want 10s", o.SLA.HealthInterval.Std())
	}
	if o.SLA.MinSamples != 20 {
		t.Errorf("sla min_samples = %d, want 20", o.SLA.MinSamples)
	}
	if o.SLA.Availability != nil || o.SLA.MaxErrorRate != nil || o.SLA.MaxLatencyP95 != 0 || o.SLA.SupportHours != "" {
		t.Errorf("ApplyDefaults invented SLA figures: %+v", o.SLA)
	}
	if err := o.Validate(); err != nil {
		t.Errorf("defaults with an empty SLA do not validate: %v", err)
	}

	// Set SLA values stay.
	o = Options{SLA: &SLA{HealthInterval: Duration(time.Minute), MinSamples: 5}}
	o.ApplyDefaults()
	if o.SLA.HealthInterval.Std() != time.Minute || o.SLA.MinSamples != 5 {
		t.Errorf("ApplyDefaults overwrote set SLA values: %+v", o.SLA)
	}
}

func TestApplyDefaultsLeavesSetValuesAlone(t *testing.T) {
	want := Options{
		Agent:         "urn:asap:agent:x",
		KeyFile:       "/k",
		Delegation:    DelegationOff,
		MaxChainDepth: 3,
		MaxTokenSize:  1000,
		ClockSkew:     durPtr(time.Second),
		Storage:       "/s",
		Durability:    "relaxed",
		FlushInterval: Duration(5 * time.Second),
		Retention:     Duration(time.Hour),
		MaxBody:       2048,
		MaxBatch:      7,
		InspectLimit:  4096,
	}
	got := want
	got.ApplyDefaults()
	if got.Agent != want.Agent || got.KeyFile != want.KeyFile || got.Delegation != want.Delegation ||
		got.MaxChainDepth != want.MaxChainDepth || got.MaxTokenSize != want.MaxTokenSize ||
		*got.ClockSkew != *want.ClockSkew || got.Storage != want.Storage || got.Durability != want.Durability ||
		got.FlushInterval != want.FlushInterval || got.Retention != want.Retention ||
		got.MaxBody != want.MaxBody || got.MaxBatch != want.MaxBatch || got.InspectLimit != want.InspectLimit {
		t.Errorf("ApplyDefaults changed set values:\n got  %+v\n want %+v", got, want)
	}
	if got.SLA != nil {
		t.Error("ApplyDefaults created an SLA")
	}
}

func pct(v float64) *Percent { p := Percent(v); return &p }

// validOptions is a fully populated configuration that passes Validate.
func validOptions() *Options {
	return &Options{
		Agent:              "urn:asap:agent:research",
		KeyFile:            "/etc/asap/agent.key",
		Trust:              []Trust{{Agent: "urn:asap:agent:enterprise", KeyFile: "/etc/asap/enterprise.pub"}, {Agent: "urn:asap:agent:org:team-1", KeyFile: "/k.pub"}},
		Delegation:         DelegationRequire,
		Actions:            map[string]string{"task.request": "task.execute", "state.query": "data.read", "state.restore": "data.write", "task.cancel": "task.cancel"},
		MaxChainDepth:      8,
		MaxTokenSize:       16 << 10,
		ClockSkew:          durPtr(30 * time.Second),
		Storage:            "/var/lib/asap",
		Durability:         "strict",
		Metering:           "on",
		Audit:              "on",
		CheckpointInterval: Duration(time.Minute),
		FlushInterval:      Duration(time.Second),
		Retention:          Duration(720 * time.Hour),
		SLA: &SLA{
			Availability:   pct(99.5),
			MaxLatencyP95:  Duration(500 * time.Millisecond),
			MaxErrorRate:   pct(1),
			SupportHours:   "24/7",
			HealthInterval: Duration(10 * time.Second),
			MinSamples:     20,
		},
		Alerts:             []Alert{{Webhook: "https://ops.example/alerts"}, {Webhook: "http://127.0.0.1:9000/hook"}},
		MaxBody:            10 << 20,
		MaxBatch:           50,
		InspectLimit:       4 << 20,
		ASAPVersions:       []string{"2.1", "2.2"},
		DefaultASAPVersion: "2.2",
	}
}

func TestValidateAcceptsValidConfig(t *testing.T) {
	if err := validOptions().Validate(); err != nil {
		t.Fatalf("valid options rejected: %v", err)
	}
	o := validOptions()
	o.Delegation = DelegationOff
	o.Agent = "" // with delegation off, records use the envelope's recipient
	o.SLA = nil
	o.Trust, o.Actions, o.Alerts = nil, nil, nil
	if err := o.Validate(); err != nil {
		t.Fatalf("minimal options rejected: %v", err)
	}
}

// Each case changes one option of a valid config. A case with opt == ""
// is an edge value that must still be accepted.
func TestValidateNamesEachBadOption(t *testing.T) {
	tests := []struct {
		name string
		opt  string // the option the error must name; "" = must pass
		mod  func(o *Options)
	}{
		// agent
		{"agent not a URN", "agent", func(o *Options) { o.Agent = "research" }},
		{"agent upper case", "agent", func(o *Options) { o.Agent = "urn:asap:agent:Research" }},
		{"agent three parts", "agent", func(o *Options) { o.Agent = "urn:asap:agent:a:b:c" }},
		{"agent with sub", "", func(o *Options) { o.Agent = "urn:asap:agent:a:b" }},
		// trust
		{"trust bad URN", "trust", func(o *Options) { o.Trust = []Trust{{Agent: "enterprise", KeyFile: "/k"}} }},
		{"trust no key", "trust", func(o *Options) { o.Trust = []Trust{{Agent: "urn:asap:agent:e"}} }},
		// delegation
		{"delegation unknown", "delegation", func(o *Options) { o.Delegation = "maybe" }},
		{"delegation empty", "delegation", func(o *Options) { o.Delegation = "" }},
		{"delegation case", "delegation", func(o *Options) { o.Delegation = "Require" }},
		{"delegation optional", "", func(o *Options) { o.Delegation = DelegationOptional }},
		{"delegation off", "", func(o *Options) { o.Delegation = DelegationOff }},
		// action
		{"action unknown scope", "action", func(o *Options) { o.Actions = map[string]string{"task.request": "task.run"} }},
		{"action empty type", "action", func(o *Options) { o.Actions = map[string]string{"  ": "data.read"} }},
		{"action empty scope", "action", func(o *Options) { o.Actions = map[string]string{"x": ""} }},
		// max_chain_depth 1..64
		{"max_chain_depth 0", "max_chain_depth", func(o *Options) { o.MaxChainDepth = 0 }},
		{"max_chain_depth 1", "", func(o *Options) { o.MaxChainDepth = 1 }},
		{"max_chain_depth 64", "", func(o *Options) { o.MaxChainDepth = 64 }},
		{"max_chain_depth 65", "max_chain_depth", func(o *Options) { o.MaxChainDepth = 65 }},
		{"max_chain_depth -1", "max_chain_depth", func(o *Options) { o.MaxChainDepth = -1 }},
		// max_token_size 256..1MiB
		{"max_token_size 255", "max_token_size", func(o *Options) { o.MaxTokenSize = 255 }},
		{"max_token_size 256", "", func(o *Options) { o.MaxTokenSize = 256 }},
		{"max_token_size 1MiB", "", func(o *Options) { o.MaxTokenSize = 1 << 20 }},
		{"max_token_size 1MiB+1", "max_token_size", func(o *Options) { o.MaxTokenSize = 1<<20 + 1 }},
		// clock_skew 0..10m
		{"clock_skew -1ns", "clock_skew", func(o *Options) { o.ClockSkew = durPtr(-1) }},
		{"clock_skew 0", "", func(o *Options) { o.ClockSkew = durPtr(0) }},
		{"clock_skew 10m", "", func(o *Options) { o.ClockSkew = durPtr(10 * time.Minute) }},
		{"clock_skew 10m+1ns", "clock_skew", func(o *Options) { o.ClockSkew = durPtr(10*time.Minute + 1) }},
		// durability
		{"durability unknown", "durability", func(o *Options) { o.Durability = "eventual" }},
		{"durability empty", "durability", func(o *Options) { o.Durability = "" }},
		{"durability relaxed", "", func(o *Options) { o.Durability = "relaxed" }},
		{"metering unknown", "metering", func(o *Options) { o.Metering = "maybe" }},
		{"metering off", "", func(o *Options) { o.Metering = "off" }},
		{"audit unknown", "audit", func(o *Options) { o.Audit = "sometimes" }},
		{"audit off", "", func(o *Options) { o.Audit = "off" }},
		{"checkpoint_interval too short", "checkpoint_interval", func(o *Options) { o.CheckpointInterval = Duration(time.Millisecond) }},
		{"checkpoint_interval 1s", "", func(o *Options) { o.CheckpointInterval = Duration(time.Second) }},
		{"checkpoint_interval 25h", "checkpoint_interval", func(o *Options) { o.CheckpointInterval = Duration(25 * time.Hour) }},
		// flush_interval 1ms..1m
		{"flush_interval 999us", "flush_interval", func(o *Options) { o.FlushInterval = Duration(999 * time.Microsecond) }},
		{"flush_interval 1ms", "", func(o *Options) { o.FlushInterval = Duration(time.Millisecond) }},
		{"flush_interval 1m", "", func(o *Options) { o.FlushInterval = Duration(time.Minute) }},
		{"flush_interval 1m+1ns", "flush_interval", func(o *Options) { o.FlushInterval = Duration(time.Minute + 1) }},
		{"flush_interval 0", "flush_interval", func(o *Options) { o.FlushInterval = 0 }},
		// retention >= 1m
		{"retention 59s", "retention", func(o *Options) { o.Retention = Duration(59 * time.Second) }},
		{"retention 1m", "", func(o *Options) { o.Retention = Duration(time.Minute) }},
		{"retention negative", "retention", func(o *Options) { o.Retention = Duration(-time.Hour) }},
		// max_body 1KiB..1GiB
		{"max_body 1023", "max_body", func(o *Options) { o.MaxBody = 1023 }},
		{"max_body 1024", "", func(o *Options) { o.MaxBody = 1024 }},
		{"max_body 1GiB", "", func(o *Options) { o.MaxBody = 1 << 30 }},
		{"max_body 1GiB+1", "max_body", func(o *Options) { o.MaxBody = 1<<30 + 1 }},
		// max_batch 1..1000
		{"max_batch 0", "max_batch", func(o *Options) { o.MaxBatch = 0 }},
		{"max_batch 1", "", func(o *Options) { o.MaxBatch = 1 }},
		{"max_batch 1000", "", func(o *Options) { o.MaxBatch = 1000 }},
		{"max_batch 1001", "max_batch", func(o *Options) { o.MaxBatch = 1001 }},
		// inspect_limit 1KiB..256MiB
		{"inspect_limit 1023", "inspect_limit", func(o *Options) { o.InspectLimit = 1023 }},
		{"inspect_limit 1024", "", func(o *Options) { o.InspectLimit = 1024 }},
		{"inspect_limit 256MiB", "", func(o *Options) { o.InspectLimit = 256 << 20 }},
		{"inspect_limit 256MiB+1", "inspect_limit", func(o *Options) { o.InspectLimit = 256<<20 + 1 }},
		// sla availability (0, 100]
		{"sla availability 0", "sla availability", func(o *Options) { o.SLA.Availability = pct(0) }},
		{"sla availability 0.001", "", func(o *Options) { o.SLA.Availability = pct(0.001) }},
		{"sla availability 100", "", func(o *Options) { o.SLA.Availability = pct(100) }},
		{"sla availability 100.001", "sla availability", func(o *Options) { o.SLA.Availability = pct(100.001) }},
		{"sla availability negative", "sla availability", func(o *Options) { o.SLA.Availability = pct(-1) }},
		{"sla availability unset", "", func(o *Options) { o.SLA.Availability = nil }},
		// sla max_latency_p95: 0 (unset) or >= 1ms
		{"sla max_latency_p95 -1ns", "sla max_latency_p95", func(o *Options) { o.SLA.MaxLatencyP95 = -1 }},
		{"sla max_latency_p95 0", "", func(o *Options) { o.SLA.MaxLatencyP95 = 0 }},
		{"sla max_latency_p95 999us", "sla max_latency_p95", func(o *Options) { o.SLA.MaxLatencyP95 = Duration(999 * time.Microsecond) }},
		{"sla max_latency_p95 1ns", "sla max_latency_p95", func(o *Options) { o.SLA.MaxLatencyP95 = 1 }},
		{"sla max_latency_p95 1ms", "", func(o *Options) { o.SLA.MaxLatencyP95 = Duration(time.Millisecond) }},
		// sla max_error_rate [0, 100]
		{"sla max_error_rate -0.001", "sla max_error_rate", func(o *Options) { o.SLA.MaxErrorRate = pct(-0.001) }},
		{"sla max_error_rate 0", "", func(o *Options) { o.SLA.MaxErrorRate = pct(0) }},
		{"sla max_error_rate 100", "", func(o *Options) { o.SLA.MaxErrorRate = pct(100) }},
		{"sla max_error_rate 100.5", "sla max_error_rate", func(o *Options) { o.SLA.MaxErrorRate = pct(100.5) }},
		{"sla max_error_rate unset", "", func(o *Options) { o.SLA.MaxErrorRate = nil }},
		// sla health_interval 100ms..1h
		{"sla health_interval 99ms", "sla health_interval", func(o *Options) { o.SLA.HealthInterval = Duration(99 * time.Millisecond) }},
		{"sla health_interval 100ms", "", func(o *Options) { o.SLA.HealthInterval = Duration(100 * time.Millisecond) }},
		{"sla health_interval 1h", "", func(o *Options) { o.SLA.HealthInterval = Duration(time.Hour) }},
		{"sla health_interval 1h+1ns", "sla health_interval", func(o *Options) { o.SLA.HealthInterval = Duration(time.Hour + 1) }},
		{"sla health_interval 0", "sla health_interval", func(o *Options) { o.SLA.HealthInterval = 0 }},
		// sla min_samples 1..1000000
		{"sla min_samples 0", "sla min_samples", func(o *Options) { o.SLA.MinSamples = 0 }},
		{"sla min_samples 1", "", func(o *Options) { o.SLA.MinSamples = 1 }},
		{"sla min_samples 1000000", "", func(o *Options) { o.SLA.MinSamples = 1_000_000 }},
		{"sla min_samples 1000001", "sla min_samples", func(o *Options) { o.SLA.MinSamples = 1_000_001 }},
		// alert webhook http(s) URL
		{"alert ftp", "alert", func(o *Options) { o.Alerts = []Alert{{Webhook: "ftp://ops.example/x"}} }},
		{"alert no host", "alert", func(o *Options) { o.Alerts = []Alert{{Webhook: "https://"}} }},
		{"alert relative", "alert", func(o *Options) { o.Alerts = []Alert{{Webhook: "/alerts"}} }},
		{"alert empty", "alert", func(o *Options) { o.Alerts = []Alert{{}} }},
		{"alert unparsable", "alert", func(o *Options) { o.Alerts = []Alert{{Webhook: "http://[::1"}} }},
		{"alert control char", "alert", func(o *Options) { o.Alerts = []Alert{{Webhook: "http://ops.example/\x7f"}} }},
		{"alert http", "", func(o *Options) { o.Alerts = []Alert{{Webhook: "http://ops.example"}} }},
		// asap_versions: unset is the default, empty is an error
		{"asap_versions unset", "", func(o *Options) { o.ASAPVersions = nil }},
		{"asap_versions empty", "asap_versions", func(o *Options) { o.ASAPVersions = []string{} }},
		{"asap_versions one", "", func(o *Options) { o.ASAPVersions, o.DefaultASAPVersion = []string{"2.1"}, "2.1" }},
		{"asap_versions other versions", "", func(o *Options) {
			o.ASAPVersions, o.DefaultASAPVersion = []string{"2.2", "3.0-beta"}, "3.0-beta"
		}},
		{"asap_versions with a comma", "asap_versions", func(o *Options) { o.ASAPVersions = []string{"2.1,2.2", "2.2"} }},
		{"asap_versions with a space", "asap_versions", func(o *Options) { o.ASAPVersions = []string{"2 .2", "2.2"} }},
		{"asap_versions empty entry", "asap_versions", func(o *Options) { o.ASAPVersions = []string{"", "2.2"} }},
		{"asap_versions duplicate", "asap_versions", func(o *Options) { o.ASAPVersions = []string{"2.2", "2.2"} }},
		// default_asap_version must be among them
		{"default_asap_version unset", "", func(o *Options) { o.DefaultASAPVersion = "" }},
		{"default_asap_version 2.1", "", func(o *Options) { o.DefaultASAPVersion = "2.1" }},
		{"default_asap_version not listed", "default_asap_version", func(o *Options) { o.DefaultASAPVersion = "3.0" }},
		{"default 2.2 not listed", "default_asap_version", func(o *Options) { o.ASAPVersions, o.DefaultASAPVersion = []string{"2.1"}, "" }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := validOptions()
			tt.mod(o)
			err := o.Validate()
			if tt.opt == "" {
				if err != nil {
					t.Fatalf("edge value rejected: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("bad option %s accepted", tt.opt)
			}
			msg := err.Error()
			if !strings.Contains(msg, "option "+tt.opt+":") {
				t.Errorf("error %q does not name %q", msg, "option "+tt.opt)
			}
			if !strings.HasPrefix(msg, "asap: ") {
				t.Errorf("error %q does not start with asap:", msg)
			}
			if n := strings.Count(msg, "asap: option"); n != 1 {
				t.Errorf("one bad option gave %d errors: %q", n, msg)
			}
		})
	}
}

func TestValidateErrorDetails(t *testing.T) {
	tests := []struct {
		name string
		mod  func(o *Options)
		want []string
	}{
		{"trust entry numbering", func(o *Options) {
			o.Trust = append(o.Trust, Trust{Agent: "bad", KeyFile: "/k"})
		}, []string{"option trust: entry 3:", `"bad" is not an agent URN`}},
		{"trust missing key names agent", func(o *Options) {
			o.Trust = []Trust{{Agent: "urn:asap:agent:e"}}
		}, []string{"entry 1 (urn:asap:agent:e): no public key file given"}},
		{"action lists scopes", func(o *Options) {
			o.Actions = map[string]string{"task.request": "run"}
		}, []string{`task.request: unknown scope "run"`, "task.execute, task.cancel, data.read, data.write"}},
		{"delegation lists policies", func(o *Options) { o.Delegation = "x" }, []string{"use require, optional or off"}},
		{"max_body shows value", func(o *Options) { o.MaxBody = 5 }, []string{"5 bytes is outside 1KiB..1GiB"}},
		{"clock_skew shows duration", func(o *Options) { o.ClockSkew = durPtr(11 * time.Minute) }, []string{"11m0s is outside 0..10m"}},
		{"availability shows percent", func(o *Options) { o.SLA.Availability = pct(101) }, []string{"101% is outside (0, 100]"}},
		{"alert shows URL", func(o *Options) { o.Alerts = []Alert{{Webhook: "ftp://x"}} }, []string{`webhook "ftp://x" is not an http(s) URL`}},
		{"empty asap_versions says what to do", func(o *Options) { o.ASAPVersions = []string{} }, []string{"the list is empty", "leave the option out for 2.1 2.2"}},
		{"asap_versions quotes the bad one", func(o *Options) { o.ASAPVersions = []string{"2.1", "2.2, 2.3"} }, []string{`"2.2, 2.3" is not a version`}},
		{"default_asap_version lists the choices", func(o *Options) { o.ASAPVersions, o.DefaultASAPVersion = []string{"2.1", "3.0"}, "2.2" },
			[]string{`"2.2" is not one of asap_versions (2.1 3.0)`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := validOptions()
			tt.mod(o)
			err := o.Validate()
			if err == nil {
				t.Fatal("want an error")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}
}

func TestValidateReportsAllBadOptionsAtOnce(t *testing.T) {
	o := validOptions()
	o.Agent = "nope"
	o.Trust = []Trust{{Agent: "bad"}} // two problems in one entry
	o.Delegation = "sometimes"
	o.Actions = map[string]string{"": "nope"} // two problems
	o.MaxChainDepth = 100
	o.MaxTokenSize = 1
	o.ClockSkew = durPtr(-1)
	o.Durability = "yolo"
	o.FlushInterval = 0
	o.Retention = 0
	o.MaxBody = 0
	o.MaxBatch = 0
	o.InspectLimit = 0
	o.SLA = &SLA{Availability: pct(0), MaxLatencyP95: -1, MaxErrorRate: pct(200), HealthInterval: 0, MinSamples: 0}
	o.Alerts = []Alert{{Webhook: "mailto:ops@example"}, {Webhook: "gopher://x"}}

	err := o.Validate()
	if err == nil {
		t.Fatal("want an error")
	}
	msg := err.Error()
	for _, opt := range []string{
		"agent", "trust", "delegation", "action", "max_chain_depth", "max_token_size",
		"clock_skew", "durability", "flush_interval", "retention", "max_body", "max_batch",
		"inspect_limit", "sla availability", "sla max_latency_p95", "sla max_error_rate",
		"sla health_interval", "sla min_samples", "alert",
	} {
		if !strings.Contains(msg, "asap: option "+opt+":") {
			t.Errorf("combined error does not name option %s:\n%s", opt, msg)
		}
	}
	// 1 agent + 2 trust + 1 delegation + 2 action + 9 scalar + 5 sla + 2 alerts
	if n, want := strings.Count(msg, "asap: option "), 22; n != want {
		t.Errorf("combined error holds %d problems, want %d:\n%s", n, want, msg)
	}
	if n := strings.Count(msg, "\n") + 1; n != 22 {
		t.Errorf("combined error has %d lines, want one per problem:\n%s", n, msg)
	}
}

func TestValidScope(t *testing.T) {
	for _, s := range Scopes {
		if !validScope(s) {
			t.Errorf("validScope(%q) = false", s)
		}
	}
	for _, s := range []string{"", "task", "TASK.EXECUTE", "data.delete", " data.read"} {
		if validScope(s) {
			t.Errorf("validScope(%q) = true", s)
		}
	}
}

func TestDurationStd(t *testing.T) {
	if got := Duration(math.MaxInt64).Std(); got != time.Duration(math.MaxInt64) {
		t.Errorf("Std = %v", got)
	}
}

func durPtr(d time.Duration) *Duration {
	v := Duration(d)
	return &v
}

// Each problem of a fleet block is reported once, naming the option.
func TestFleetValidation(t *testing.T) {
	for fleet, want := range map[Fleet]string{
		{}:                      "fleet nats: required",
		{NATS: "http://x:4222"}: `fleet nats: "http://x:4222" is not a NATS URL`,
		{NATS: "nats://x:4222", OnUnreachable: "maybe"}: `fleet on_unreachable: "maybe" is not a choice`,
		{NATS: "nats://x:4222", MaxBacklog: 10}:         "fleet max_backlog: 10 is out of range",
	} {
		o := Options{Agent: "urn:asap:agent:a", Fleet: &fleet}
		o.ApplyDefaults()
		err := o.Validate()
		if err == nil || strings.Count(err.Error(), "option fleet") != 1 || !strings.Contains(err.Error(), want) {
			t.Errorf("fleet %+v: %v, want one error with %q", fleet, err, want)
		}
	}
	o := Options{Agent: "urn:asap:agent:a", Fleet: &Fleet{NATS: "nats://a:4222, tls://b:4222"}}
	o.ApplyDefaults()
	if err := o.Validate(); err != nil || o.Fleet.OnUnreachable != FleetReject {
		t.Fatalf("a good fleet block: %v, on_unreachable %q", err, o.Fleet.OnUnreachable)
	}
}
