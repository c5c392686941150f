package protocol

import (
	"bytes"
	"encoding/json"
	"math"
	"strconv"
	"unicode/utf8"
)

// ValidID reports whether s may be used as an id: it must not contain a
// control character (U+0000–U+001F or U+007F). Such ids are refused
// because they end up in logs, records and keys downstream.
func ValidID(s string) bool {
	for i := 0; i < len(s); i++ {
		// Bytes of multi-byte UTF-8 sequences are all >= 0x80, so a
		// byte-wise check sees exactly the control code points.
		if c := s[i]; c < 0x20 || c == 0x7f {
			return false
		}
	}
	return true
}

// IDKey returns a canonical key for a JSON-RPC id (raw JSON), equal for
// ids that decode to the same value: a string by its decoded value
// ("\u0061" and "a" are the same id), a number by its float64 value (1,
// 1.0 and 1e0 are the same id). Strings and numbers never share a key, so
// "1" and 1 differ. ok is false for anything that is not a string or a
// finite number.
func IDKey(raw json.RawMessage) (key string, ok bool) {
	raw = bytes.Trim(raw, " \t\r\n")
	switch kind(raw) {
	case '"':
		if len(raw) >= 2 && raw[len(raw)-1] == '"' && plainString(raw[1:len(raw)-1]) {
			return "s" + string(raw[1:len(raw)-1]), true
		}
		s, ok := decodeString(raw)
		if !ok {
			return "", false
		}
		return "s" + s, true
	case '0':
		if !validNumber(raw) {
			return "", false
		}
		f, err := strconv.ParseFloat(string(raw), 64)
		if err != nil || math.IsInf(f, 0) || math.IsNaN(f) {
			return "", false
		}
		if f == 0 {
			f = 0 // -0 is 0
		}
		return "n" + strconv.FormatFloat(f, 'g', -1, 64), true
	}
	return "", false
}

// decodeString decodes raw, one JSON string value. A string without
// escapes is sliced out without the decoder.
func decodeString(raw []byte) (string, bool) {
	if len(raw) < 2 || raw[0] != '"' || raw[len(raw)-1] != '"' {
		return "", false
	}
	inner := raw[1 : len(raw)-1]
	if plainString(inner) {
		return string(inner), true
	}
	var s string
	if json.Unmarshal(raw, &s) != nil {
		return "", false
	}
	return s, true
}

// plainString reports whether inner (a string's bytes between its quotes)
// is valid JSON string content that needs no decoding: no escape, no quote,
// no raw control character, valid UTF-8.
func plainString(inner []byte) bool {
	for _, c := range inner {
		if c < 0x20 || c == '"' || c == '\\' {
			return false
		}
		if c >= 0x80 {
			return utf8.Valid(inner)
		}
	}
	return true
}

// validNumber reports whether b is exactly one JSON number.
func validNumber(b []byte) bool {
	i := 0
	if i < len(b) && b[i] == '-' {
		i++
	}
	switch {
	case i < len(b) && b[i] == '0':
		i++
	case i < len(b) && b[i] >= '1' && b[i] <= '9':
		for i < len(b) && b[i] >= '0' && b[i] <= '9' {
			i++
		}
	default:
		return false
	}
	if i < len(b) && b[i] == '.' {
		i++
		if i >= len(b) || b[i] < '0' || b[i] > '9' {
			return false
		}
		for i < len(b) && b[i] >= '0' && b[i] <= '9' {
			i++
		}
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		if i >= len(b) || b[i] < '0' || b[i] > '9' {
			return false
		}
		for i < len(b) && b[i] >= '0' && b[i] <= '9' {
			i++
		}
	}
	return i == len(b)
}
