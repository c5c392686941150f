package protocol

import (
	"fmt"
	"slices"
	"strings"
)

// ASAP-Version negotiation on the HTTP JSON-RPC paths, as the reference's
// version middleware does it: the request header is a comma-separated list
// in the client's order of preference; the first token the server
// supports wins; no header (or a blank one) means the default version;
// a list with nothing supported is refused with -32000 before the call is
// looked at. Every answer names the version in the same header.

// VersionHeader carries the ASAP transport version, on requests and
// answers.
const VersionHeader = "ASAP-Version"

// The reference's transport versions.
const (
	// DefaultVersion is assumed when a request names none.
	DefaultVersion = "2.2"
)

// SupportedVersions are the versions the reference serves.
func SupportedVersions() []string { return []string{"2.1", "2.2"} }

// CodeVersionIncompatible answers a request naming no supported version.
const CodeVersionIncompatible = -32000

// Versions is what a server speaks: its supported versions and the one it
// assumes when a request names none (one of them).
type Versions struct {
	Supported []string
	Default   string
}

// DefaultVersions are the reference's.
func DefaultVersions() Versions {
	return Versions{Supported: SupportedVersions(), Default: DefaultVersion}
}

// Negotiate picks the version for a request whose VersionHeader values are
// values (all of its header lines, as http.Header.Values gives them; they
// form one list). It returns the first listed version that v supports, or
// the default when the header is absent or blank; ok is false when the
// list names no supported version.
func (v Versions) Negotiate(values []string) (version string, ok bool) {
	blank := true
	for _, line := range values {
		for tok := range strings.SplitSeq(line, ",") {
			tok = strings.TrimSpace(tok)
			if tok == "" {
				continue
			}
			blank = false
			if slices.Contains(v.Supported, tok) {
				return tok, true
			}
		}
	}
	if blank {
		return v.Default, true
	}
	return "", false
}

// Incompatible is the answer to a request whose version list (values, as
// given to Negotiate) names no supported version: -32000 with
// data.requested (the list as sent, trimmed) and data.supported (sorted,
// as the reference lists them), and id null, since the call is not read.
func (v Versions) Incompatible(values []string) *Error {
	requested := strings.TrimSpace(strings.Join(values, ", "))
	supported := slices.Sorted(slices.Values(v.Supported))
	e := NewError(CodeVersionIncompatible, "version_incompatible",
		fmt.Sprintf("no version in %s %q is supported; send one of %s (or no %s header for %s)",
			VersionHeader, truncate(requested, 64), strings.Join(supported, ", "), VersionHeader, v.Default))
	e.Extra = map[string]any{"requested": truncate(requested, 256), "supported": supported}
	return e
}

// ValidVersion reports whether s can be listed as a supported version: a
// token that can appear in the comma-separated header as is (printable
// ASCII, no comma, no white space), at most 32 bytes.
func ValidVersion(s string) bool {
	if s == "" || len(s) > 32 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; c <= ' ' || c >= 0x7f || c == ',' {
			return false
		}
	}
	return true
}
