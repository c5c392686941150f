package audit

import (
	"encoding/json"
	"sort"
	"strconv"
	"unicode/utf8"

	"github.com/gowebpki/jcs"
)

// Canonical is the RFC 8785 (JCS) form of a JSON value.
func Canonical(raw json.RawMessage) ([]byte, error) {
	return jcs.Transform(raw)
}

// canonicalDetails is RFC 8785 for details. The sidecar's own details are
// flat maps of strings, whole numbers, booleans and string lists; those are
// written directly (every append pays for this), and anything else goes
// through encoding/json and the JCS library. Both give the same bytes.
func canonicalDetails(d map[string]any) ([]byte, error) {
	if b, ok := appendCanonicalMap(make([]byte, 0, 256), d); ok {
		return b, nil
	}
	raw, err := json.Marshal(d)
	if err != nil {
		return nil, err
	}
	return Canonical(raw)
}

func appendCanonicalMap(b []byte, d map[string]any) ([]byte, bool) {
	keys := make([]string, 0, len(d))
	for k := range d {
		for i := 0; i < len(k); i++ {
			if k[i] >= utf8.RuneSelf {
				return nil, false // JCS orders by UTF-16 units: leave it to the library
			}
		}
		keys = append(keys, k)
	}
	sort.Strings(keys)
	b = append(b, '{')
	for i, k := range keys {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendCanonicalString(b, k)
		b = append(b, ':')
		var ok bool
		if b, ok = appendCanonicalValue(b, d[k]); !ok {
			return nil, false
		}
	}
	return append(b, '}'), true
}

// maxExact is the largest integer JSON numbers (IEEE doubles) hold exactly.
const maxExact = 1 << 53

func appendCanonicalValue(b []byte, v any) ([]byte, bool) {
	switch x := v.(type) {
	case nil:
		return append(b, "null"...), true
	case bool:
		return strconv.AppendBool(b, x), true
	case string:
		if !utf8.ValidString(x) {
			return nil, false
		}
		return appendCanonicalString(b, x), true
	case int:
		return appendInt(b, int64(x))
	case int64:
		return appendInt(b, x)
	case uint64:
		if x > maxExact {
			return nil, false
		}
		return strconv.AppendUint(b, x, 10), true
	case []string:
		b = append(b, '[')
		for i, s := range x {
			if i > 0 {
				b = append(b, ',')
			}
			if !utf8.ValidString(s) {
				return nil, false
			}
			b = appendCanonicalString(b, s)
		}
		return append(b, ']'), true
	}
	return nil, false
}

func appendInt(b []byte, v int64) ([]byte, bool) {
	if v > maxExact || v < -maxExact {
		return nil, false
	}
	return strconv.AppendInt(b, v, 10), true
}

// appendCanonicalString quotes s as RFC 8785 (ECMAScript JSON.stringify)
// does: only the quote, the backslash and control characters are escaped.
func appendCanonicalString(b []byte, s string) []byte {
	const hex = "0123456789abcdef"
	b = append(b, '"')
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '"':
			b = append(b, '\\', '"')
		case c == '\\':
			b = append(b, '\\', '\\')
		case c >= 0x20:
			b = append(b, c)
		case c == '\b':
			b = append(b, '\\', 'b')
		case c == '\f':
			b = append(b, '\\', 'f')
		case c == '\n':
			b = append(b, '\\', 'n')
		case c == '\r':
			b = append(b, '\\', 'r')
		case c == '\t':
			b = append(b, '\\', 't')
		default:
			b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xF])
		}
	}
	return append(b, '"')
}
