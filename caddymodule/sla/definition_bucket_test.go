package sla

import (
	"strings"
	"testing"
	"time"
)

func TestBucketCopyIsIndependent(t *testing.T) {
	b := NewBucket()
	b.Completed, b.Failed, b.HealthUp, b.HealthTotal = 1, 2, 3, 4
	_ = b.Latency.Add(10)
	c := b.Copy()
	c.Completed++
	c.HealthTotal++
	for i := 0; i < 100; i++ {
		_ = c.Latency.Add(1000)
	}
	if b.Completed != 1 || b.Failed != 2 || b.HealthUp != 3 || b.HealthTotal != 4 || b.Latency.GetCount() != 1 || b.P95() > 10.2 {
		t.Fatalf("original changed by its copy: %+v p95 %v", b, b.P95())
	}
	if c.Completed != 2 || c.Failed != 2 || c.HealthTotal != 5 || c.Latency.GetCount() != 101 || c.P95() < 990 {
		t.Fatalf("copy %+v p95 %v", c, c.P95())
	}
}

func TestBucketMerge(t *testing.T) {
	a, b := NewBucket(), NewBucket()
	a.Completed, a.Failed, a.HealthUp, a.HealthTotal = 10, 1, 5, 6
	b.Completed, b.Failed, b.HealthUp, b.HealthTotal = 5, 2, 1, 4
	for i := 0; i < 90; i++ {
		_ = a.Latency.Add(10)
	}
	for i := 0; i < 10; i++ {
		_ = b.Latency.Add(500)
	}
	if err := a.Merge(b); err != nil {
		t.Fatal(err)
	}
	if a.Completed != 15 || a.Failed != 3 || a.HealthUp != 6 || a.HealthTotal != 10 || a.Latency.GetCount() != 100 {
		t.Fatalf("merged %+v", a)
	}
	// 10 % of the samples are 500 ms: the p95 is one of them.
	if p := a.P95(); p < 495 || p > 505 {
		t.Fatalf("merged p95 %v", p)
	}
	if b.Completed != 5 || b.Latency.GetCount() != 10 {
		t.Fatalf("merge changed its argument: %+v", b)
	}
	// Merging an empty bucket changes nothing.
	if err := a.Merge(NewBucket()); err != nil || a.Completed != 15 || a.Latency.GetCount() != 100 {
		t.Fatalf("merge of empty: %+v %v", a, err)
	}
}

func TestBucketEncodeDecode(t *testing.T) {
	b := NewBucket()
	b.Completed, b.Failed, b.HealthUp, b.HealthTotal = 1<<40, 2, 3, 1<<63
	c, err := DecodeBucket(b.Encode())
	if err != nil {
		t.Fatal(err)
	}
	if c.Completed != 1<<40 || c.Failed != 2 || c.HealthUp != 3 || c.HealthTotal != 1<<63 || !c.Latency.IsEmpty() || c.P95() != 0 {
		t.Fatalf("round trip of an empty sketch: %+v", c)
	}
	for _, tc := range []struct {
		name string
		data []byte
		want string
	}{
		{"nothing", nil, "sla: bucket shorter than its counters"},
		{"31 bytes", make([]byte, 31), "sla: bucket shorter than its counters"},
		{"counters without a sketch", make([]byte, 32), "sla: bucket sketch: "},
		{"garbage sketch", append(make([]byte, 32), 0xde, 0xad, 0xbe, 0xef), "sla: bucket sketch: "},
		{"truncated sketch", b.Encode()[:33], "sla: bucket sketch: "},
	} {
		if _, err := DecodeBucket(tc.data); err == nil || !strings.HasPrefix(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error starting %q", tc.name, err, tc.want)
		}
	}
}

func TestP95OfEmptyBucketIsZero(t *testing.T) {
	b := NewBucket()
	b.Completed = 5 // counted, but no latency sample
	if p := b.P95(); p != 0 {
		t.Fatalf("p95 of no sample %v", p)
	}
	if m := metricsOf(agentA, time.Time{}, time.Time{}, b); m.LatencyP95MS != 0 {
		t.Fatalf("metrics %+v", m)
	}
}

func TestFromManifestEdges(t *testing.T) {
	for _, tc := range []struct {
		manifest string
		ttl      time.Duration
	}{
		{`{}`, 300 * time.Second},
		{`{"ttl_seconds":null}`, 300 * time.Second},
		{`{"ttl_seconds":0}`, 300 * time.Second},
		{`{"ttl_seconds":-5}`, 300 * time.Second},
		{`{"ttl_seconds":1}`, time.Second},
		{`{"ttl_seconds":86400}`, 24 * time.Hour},
	} {
		d, ttl, err := FromManifest([]byte(tc.manifest))
		if err != nil || ttl != tc.ttl || !d.Empty() {
			t.Errorf("%s: ttl %v, %+v, %v; want ttl %v", tc.manifest, ttl, d, err, tc.ttl)
		}
	}
	// A fractional ttl is not an integer.
	if _, _, err := FromManifest([]byte(`{"ttl_seconds":1.5}`)); err == nil {
		t.Error("ttl_seconds 1.5 accepted")
	}

	for _, tc := range []struct {
		sla   string
		avail string // "-" for none
		p95   time.Duration
		rate  string
		hours string
		empty bool
	}{
		{`null`, "-", 0, "-", "", true},
		{`{}`, "-", 0, "-", "", true},
		{`{"availability":"100"}`, "100", 0, "-", "", false},
		{`{"availability":" 99.9 % "}`, "99.9", 0, "-", "", false},
		{`{"availability":"0.001%"}`, "0.001", 0, "-", "", false},
		{`{"max_latency_p95_ms":0}`, "-", 0, "-", "", true},
		{`{"max_latency_p95_ms":1}`, "-", time.Millisecond, "-", "", false},
		{`{"max_error_rate":"0%"}`, "-", 0, "0", "", false},
		{`{"max_error_rate":"100%"}`, "-", 0, "100", "", false},
		{`{"support_hours":"business"}`, "-", 0, "-", "business", true},
		{`{"availability":null,"max_error_rate":null}`, "-", 0, "-", "", true},
	} {
		d, _, err := FromManifest([]byte(`{"sla":` + tc.sla + `}`))
		if err != nil {
			t.Errorf("%s: %v", tc.sla, err)
			continue
		}
		str := func(p *float64) string {
			if p == nil {
				return "-"
			}
			return pyFloat(*p)
		}
		if a := strings.TrimSuffix(str(d.Availability), ".0"); a != tc.avail || d.MaxLatencyP95 != tc.p95 ||
			strings.TrimSuffix(str(d.MaxErrorRate), ".0") != tc.rate || d.SupportHours != tc.hours || d.Empty() != tc.empty {
			t.Errorf("%s: %+v (availability %s, error rate %s)", tc.sla, d, str(d.Availability), str(d.MaxErrorRate))
		}
	}
	for _, bad := range []string{
		`{"sla":{"availability":"0%"}}`, `{"sla":{"availability":"100.01%"}}`, `{"sla":{"availability":"NaN"}}`,
		`{"sla":{"availability":"Inf%"}}`, `{"sla":{"availability":""}}`, `{"sla":{"availability":99.5}}`,
		`{"sla":{"max_error_rate":"100.5%"}}`, `{"sla":{"max_error_rate":"lots"}}`, `{"sla":{"max_latency_p95_ms":"500"}}`,
		`{"sla":[]}`, `[]`,
	} {
		if d, _, err := FromManifest([]byte(bad)); err == nil {
			t.Errorf("%s accepted as %+v", bad, d)
		}
	}
}

func TestOverride(t *testing.T) {
	base := Definition{Availability: fptr(99), MaxLatencyP95: time.Second, MaxErrorRate: fptr(1), SupportHours: "24/7"}
	if got := base.Override(Definition{}); *got.Availability != 99 || got.MaxLatencyP95 != time.Second || *got.MaxErrorRate != 1 || got.SupportHours != "24/7" {
		t.Fatalf("empty override changed %+v", got)
	}
	got := base.Override(Definition{Availability: fptr(99.9), MaxLatencyP95: 200 * time.Millisecond, MaxErrorRate: fptr(0), SupportHours: "9-17"})
	if *got.Availability != 99.9 || got.MaxLatencyP95 != 200*time.Millisecond || *got.MaxErrorRate != 0 || got.SupportHours != "9-17" {
		t.Fatalf("override %+v", got)
	}
	if *base.Availability != 99 || *base.MaxErrorRate != 1 {
		t.Fatalf("override changed its receiver %+v", base)
	}
	if (Definition{SupportHours: "24/7"}).Empty() != true || (Definition{MaxErrorRate: fptr(0)}).Empty() {
		t.Fatal("Empty")
	}
}

func TestReferenceFormats(t *testing.T) {
	for v, want := range map[float64]string{
		0: "0.0%", 0.1: "0.1%", 1: "1.0%", 14.4: "14.4%", 99.5: "99.5%", 99.99: "99.99%", 100: "100.0%", 33.33: "33.33%",
	} {
		if got := Percent(v); got != want {
			t.Errorf("Percent(%v) = %q, want %q", v, got, want)
		}
	}
	for v, want := range map[float64]string{6: "6.0", 14.4: "14.4", 0.25: "0.25", 1234.5: "1234.5"} {
		if got := pyFloat(v); got != want {
			t.Errorf("pyFloat(%v) = %q, want %q", v, got, want)
		}
	}
	for d, want := range map[time.Duration]string{
		0: "0ms", 500 * time.Millisecond: "500ms", 1500 * time.Microsecond: "1ms", 2 * time.Second: "2000ms",
	} {
		if got := Millis(d); got != want {
			t.Errorf("Millis(%v) = %q, want %q", d, got, want)
		}
	}
	for v, want := range map[float64]float64{1.005: 1, 1.006: 1.01, 66.666: 66.67, 0.004: 0} {
		if got := round2(v); got != want {
			t.Errorf("round2(%v) = %v, want %v", v, got, want)
		}
	}
}

func TestPercentMatchesPythonReprForTinyValues(t *testing.T) {
	for v, want := range map[float64]string{1e-7: "1e-07%", 1e-5: "1e-05%", 0.0001: "0.0001%"} {
		if got := Percent(v); got != want {
			t.Errorf("Percent(%v) = %q, want %q", v, got, want)
		}
	}
}
