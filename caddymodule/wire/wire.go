// Package wire holds the forms the sidecar's answers share with clients
// written for the reference implementation.
package wire

import "time"

// Time is t as the APIs give it: UTC, in whole microseconds, so that its
// JSON form has at most 6 fractional digits (Python's
// datetime.fromisoformat before 3.11, and older pydantic, refuse 9).
func Time(t time.Time) time.Time { return t.UTC().Truncate(time.Microsecond) }
