package config

import (
	"encoding/json"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/dustin/go-humanize"
)

// Duration is a time.Duration that reads from JSON as a string ("720h",
// "30d", "500ms") or as integer nanoseconds, and writes as a string.
type Duration time.Duration

// ParseDuration is time.ParseDuration plus a "d" (24h) unit, as operators
// write retention periods in days.
func ParseDuration(s string) (time.Duration, error) {
	s = strings.TrimSpace(s)
	if days, ok := strings.CutSuffix(s, "d"); ok {
		n, err := strconv.ParseFloat(days, 64)
		// Beyond ±106751 days a time.Duration overflows.
		if err != nil || math.IsNaN(n) || math.Abs(n) > float64(math.MaxInt64/int64(24*time.Hour)) {
			return 0, fmt.Errorf("invalid duration %q (examples: 500ms, 10s, 720h, 30d)", s)
		}
		return time.Duration(n * float64(24*time.Hour)), nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("invalid duration %q (examples: 500ms, 10s, 720h, 30d)", s)
	}
	return d, nil
}

// UnmarshalJSON implements json.Unmarshaler.
func (d *Duration) UnmarshalJSON(b []byte) error {
	if len(b) > 0 && b[0] == '"' {
		var s string
		if err := json.Unmarshal(b, &s); err != nil {
			return err
		}
		v, err := ParseDuration(s)
		if err != nil {
			return err
		}
		*d = Duration(v)
		return nil
	}
	var n int64
	if err := json.Unmarshal(b, &n); err != nil {
		return fmt.Errorf("duration must be a string like \"10s\" or integer nanoseconds")
	}
	*d = Duration(n)
	return nil
}

// MarshalJSON implements json.Marshaler.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

// Std is the time.Duration.
func (d Duration) Std() time.Duration { return time.Duration(d) }

// Size is a byte count that reads from JSON as a string ("10MiB", "16KB")
// or an integer.
type Size int64

// ParseSize reads "10MiB", "16 KiB", "1MB" or a plain byte count.
func ParseSize(s string) (Size, error) {
	n, err := humanize.ParseBytes(strings.TrimSpace(s))
	if err != nil || n > 1<<50 {
		return 0, fmt.Errorf("invalid size %q (examples: 16KiB, 10MiB, 1048576)", s)
	}
	return Size(n), nil
}

// UnmarshalJSON implements json.Unmarshaler.
func (z *Size) UnmarshalJSON(b []byte) error {
	if len(b) > 0 && b[0] == '"' {
		var s string
		if err := json.Unmarshal(b, &s); err != nil {
			return err
		}
		v, err := ParseSize(s)
		if err != nil {
			return err
		}
		*z = v
		return nil
	}
	var n int64
	if err := json.Unmarshal(b, &n); err != nil {
		return fmt.Errorf("size must be a string like \"10MiB\" or an integer byte count")
	}
	*z = Size(n)
	return nil
}

// Percent is a percentage written "99.5%" (the % is optional), stored as
// the number (99.5).
type Percent float64

// ParsePercent reads "99.5%", "1%" or "0.5".
func ParsePercent(s string) (Percent, error) {
	t := strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(s), "%"))
	v, err := strconv.ParseFloat(t, 64)
	if err != nil || math.IsNaN(v) || math.IsInf(v, 0) {
		return 0, fmt.Errorf("invalid percentage %q (example: 99.5%%)", s)
	}
	return Percent(v), nil
}

// UnmarshalJSON implements json.Unmarshaler.
func (p *Percent) UnmarshalJSON(b []byte) error {
	if len(b) > 0 && b[0] == '"' {
		var s string
		if err := json.Unmarshal(b, &s); err != nil {
			return err
		}
		v, err := ParsePercent(s)
		if err != nil {
			return err
		}
		*p = v
		return nil
	}
	var f float64
	if err := json.Unmarshal(b, &f); err != nil {
		return fmt.Errorf("percentage must be a string like \"99.5%%\" or a number")
	}
	*p = Percent(f)
	return nil
}

// MarshalJSON writes the "99.5%" form.
func (p Percent) MarshalJSON() ([]byte, error) {
	return json.Marshal(strconv.FormatFloat(float64(p), 'f', -1, 64) + "%")
}
