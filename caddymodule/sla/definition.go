// Package sla tracks an agent's service level: latency p95 from mergeable
// quantile sketches in per-minute and per-hour buckets, error rate and
// availability over rolling windows, breach detection as samples arrive
// (with the reference's severity rules), error-budget burn-rate alerts
// (SRE workbook multi-window pairs), and the records behind the SLA API.
// It knows nothing about Caddy; alerts leave through a callback.
package sla

import (
	"encoding/json"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
)

// Definition is what the agent promises. Nil or zero fields promise
// nothing and raise no breach.
type Definition struct {
	// Availability is the promised uptime in percent (99.5).
	Availability *float64
	// MaxLatencyP95 bounds the 95th percentile of task durations.
	MaxLatencyP95 time.Duration
	// MaxErrorRate is the largest failed share of tasks, in percent.
	MaxErrorRate *float64
	SupportHours string
}

// Empty reports whether d promises nothing.
func (d Definition) Empty() bool {
	return d.Availability == nil && d.MaxLatencyP95 == 0 && d.MaxErrorRate == nil
}

// Override returns d with every field o sets replacing d's.
func (d Definition) Override(o Definition) Definition {
	if o.Availability != nil {
		d.Availability = o.Availability
	}
	if o.MaxLatencyP95 != 0 {
		d.MaxLatencyP95 = o.MaxLatencyP95
	}
	if o.MaxErrorRate != nil {
		d.MaxErrorRate = o.MaxErrorRate
	}
	if o.SupportHours != "" {
		d.SupportHours = o.SupportHours
	}
	return d
}

// manifestSLA is the manifest's sla block, as the reference writes it.
type manifestSLA struct {
	Availability    *string `json:"availability"`
	MaxLatencyP95MS *int64  `json:"max_latency_p95_ms"`
	MaxErrorRate    *string `json:"max_error_rate"`
	SupportHours    *string `json:"support_hours"`
}

// FromManifest reads the sla block of an agent manifest (and its
// ttl_seconds). A manifest without sla gives an empty Definition.
func FromManifest(manifest []byte) (Definition, time.Duration, error) {
	var m struct {
		SLA        *manifestSLA `json:"sla"`
		TTLSeconds *int64       `json:"ttl_seconds"`
	}
	if err := json.Unmarshal(manifest, &m); err != nil {
		return Definition{}, 0, fmt.Errorf("manifest is not JSON: %w", err)
	}
	ttl := 300 * time.Second
	if m.TTLSeconds != nil && *m.TTLSeconds >= 1 {
		ttl = time.Duration(*m.TTLSeconds) * time.Second
	}
	var d Definition
	if m.SLA == nil {
		return d, ttl, nil
	}
	if s := m.SLA.Availability; s != nil {
		v, err := parsePercent(*s)
		if err != nil || v <= 0 || v > 100 {
			return d, ttl, fmt.Errorf("manifest sla.availability %q is not a percentage in (0, 100]", *s)
		}
		d.Availability = &v
	}
	if p := m.SLA.MaxLatencyP95MS; p != nil {
		if *p < 0 {
			return d, ttl, fmt.Errorf("manifest sla.max_latency_p95_ms %d is negative", *p)
		}
		d.MaxLatencyP95 = time.Duration(*p) * time.Millisecond
	}
	if s := m.SLA.MaxErrorRate; s != nil {
		v, err := parsePercent(*s)
		if err != nil || v < 0 || v > 100 {
			return d, ttl, fmt.Errorf("manifest sla.max_error_rate %q is not a percentage in [0, 100]", *s)
		}
		d.MaxErrorRate = &v
	}
	if s := m.SLA.SupportHours; s != nil {
		d.SupportHours = *s
	}
	return d, ttl, nil
}

func parsePercent(s string) (float64, error) {
	v, err := strconv.ParseFloat(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(s), "%")), 64)
	if err != nil || math.IsNaN(v) || math.IsInf(v, 0) {
		return 0, fmt.Errorf("not a percentage")
	}
	return v, nil
}

// pyFloat formats v as Python's str(float) does: the shortest form, with
// at least one decimal ("1.0", "99.5"), and exponent form below 1e-4 or
// from 1e16 ("1e-05").
func pyFloat(v float64) string {
	if a := math.Abs(v); a != 0 && (a < 1e-4 || a >= 1e16) {
		return strconv.FormatFloat(v, 'e', -1, 64)
	}
	s := strconv.FormatFloat(v, 'f', -1, 64)
	if !strings.ContainsAny(s, ".eE") {
		s += ".0"
	}
	return s
}

// Percent formats a percentage as the reference does ("99.5%", "1.0%").
func Percent(v float64) string { return pyFloat(v) + "%" }

// Millis formats a latency as the reference does ("500ms").
func Millis(d time.Duration) string { return strconv.FormatInt(d.Milliseconds(), 10) + "ms" }

// round2 rounds to two decimals, as figures are reported.
func round2(v float64) float64 { return math.Round(v*100) / 100 }
