package protocol

import (
	"bytes"
	"unicode"
	"unicode/utf8"
)

// The walker below reads JSON that has already been checked to be valid:
// it finds value boundaries and object members by their exact names, and
// never decodes what it does not need.

// skipWS returns the index of the first non-whitespace byte of b at or
// after i.
func skipWS(b []byte, i int) int {
	for i < len(b) {
		switch b[i] {
		case ' ', '\t', '\n', '\r':
			i++
		default:
			return i
		}
	}
	return i
}

// stringEnd returns the index just past the string that starts at b[i].
func stringEnd(b []byte, i int) int {
	i++
	for {
		j := bytes.IndexByte(b[i:], '"')
		if j < 0 {
			return len(b)
		}
		i += j
		// The quote closes the string unless an odd number of
		// backslashes precede it. Each backslash is looked at once.
		k := i - 1
		for b[k] == '\\' {
			k--
		}
		if (i-1-k)%2 == 0 {
			return i + 1
		}
		i++
	}
}

// valueEnd returns the index just past the value that starts at b[i].
func valueEnd(b []byte, i int) int {
	switch b[i] {
	case '"':
		return stringEnd(b, i)
	case '{', '[':
		depth := 0
		for i < len(b) {
			switch b[i] {
			case '"':
				i = stringEnd(b, i)
				continue
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					return i + 1
				}
			}
			i++
		}
		return i
	default: // number or literal
		for i < len(b) {
			switch b[i] {
			case ',', '}', ']', ' ', '\t', '\n', '\r':
				return i
			}
			i++
		}
		return i
	}
}

// elements iterates over the values of a JSON array or the members of a
// JSON object, in document order.
type elements struct {
	b []byte
	i int
}

// newElements starts iterating the array or object b (b[0] is '[' or '{').
func newElements(b []byte) elements { return elements{b: b, i: skipWS(b, 1)} }

// next returns the next member's raw name (with its quotes; nil for an
// array element) and raw value.
func (it *elements) next(object bool) (name, val []byte, ok bool) {
	b, i := it.b, it.i
	if i >= len(b) || b[i] == '}' || b[i] == ']' {
		return nil, nil, false
	}
	if b[i] == ',' {
		i = skipWS(b, i+1)
	}
	if object {
		end := stringEnd(b, i)
		name = b[i:end]
		i = skipWS(b, end) // at ':'
		i = skipWS(b, i+1) // at the value
	}
	end := valueEnd(b, i)
	val = b[i:end]
	it.i = skipWS(b, end)
	return name, val, true
}

// memberName decodes a raw member name.
func memberName(raw []byte) []byte {
	inner := raw[1 : len(raw)-1]
	if bytes.IndexByte(inner, '\\') < 0 {
		return inner
	}
	s, _ := decodeString(raw)
	return []byte(s)
}

// foldDuplicate returns a name of names that is equal to an earlier one
// under Unicode simple case folding (strings.EqualFold), if any.
func foldDuplicate(names [][]byte) ([]byte, bool) {
	if len(names) <= 32 {
		for i := 1; i < len(names); i++ {
			a := names[i]
			for _, b := range names[:i] {
				// Two ASCII first bytes that differ even in case
				// settle it without the full comparison.
				if len(a) > 0 && len(b) > 0 && a[0]|b[0] < utf8.RuneSelf && lowerASCII(a[0]) != lowerASCII(b[0]) {
					continue
				}
				if bytes.EqualFold(a, b) {
					return a, true
				}
			}
		}
		return nil, false
	}
	// Many members: compare canonical forms instead of all pairs.
	seen := make(map[string]struct{}, len(names))
	for _, n := range names {
		k := foldKey(n)
		if _, dup := seen[k]; dup {
			return n, true
		}
		seen[k] = struct{}{}
	}
	return nil, false
}

func lowerASCII(c byte) byte {
	if c >= 'A' && c <= 'Z' {
		return c + 'a' - 'A'
	}
	return c
}

// foldKey maps every rune of s to the smallest rune of its simple case
// folding orbit, so two strings are strings.EqualFold exactly when their
// keys are equal.
func foldKey(s []byte) string {
	out := make([]byte, 0, len(s))
	for len(s) > 0 {
		r, n := utf8.DecodeRune(s)
		s = s[n:]
		m := r
		for f := unicode.SimpleFold(r); f != r; f = unicode.SimpleFold(f) {
			m = min(m, f)
		}
		out = utf8.AppendRune(out, m)
	}
	return string(out)
}

// validJSON reports whether b is exactly one JSON value, as json.Valid
// does. b is known to be valid UTF-8 and no deeper than the depth limit.
func validJSON(b []byte) bool {
	v := validator{b: b}
	v.ws()
	if !v.value() {
		return false
	}
	v.ws()
	return v.i == len(b)
}

type validator struct {
	b []byte
	i int
}

func (v *validator) ws() { v.i = skipWS(v.b, v.i) }

// at reports whether the next byte is c, and steps over it if so.
func (v *validator) at(c byte) bool {
	if v.i < len(v.b) && v.b[v.i] == c {
		v.i++
		return true
	}
	return false
}

func (v *validator) value() bool {
	if v.i >= len(v.b) {
		return false
	}
	switch c := v.b[v.i]; {
	case c == '{':
		v.i++
		v.ws()
		if v.at('}') {
			return true
		}
		for {
			if !v.str() {
				return false
			}
			v.ws()
			if !v.at(':') {
				return false
			}
			v.ws()
			if !v.value() {
				return false
			}
			v.ws()
			if v.at('}') {
				return true
			}
			if !v.at(',') {
				return false
			}
			v.ws()
		}
	case c == '[':
		v.i++
		v.ws()
		if v.at(']') {
			return true
		}
		for {
			if !v.value() {
				return false
			}
			v.ws()
			if v.at(']') {
				return true
			}
			if !v.at(',') {
				return false
			}
			v.ws()
		}
	case c == '"':
		return v.str()
	case c == 't':
		return v.literal("true")
	case c == 'f':
		return v.literal("false")
	case c == 'n':
		return v.literal("null")
	case c == '-' || c >= '0' && c <= '9':
		start := v.i
		for v.i < len(v.b) {
			c := v.b[v.i]
			if !(c >= '0' && c <= '9' || c == '-' || c == '+' || c == '.' || c == 'e' || c == 'E') {
				break
			}
			v.i++
		}
		// Anything of these that follows a number is invalid anyway,
		// so taking them all and checking the grammar is exact.
		return validNumber(v.b[start:v.i])
	}
	return false
}

func (v *validator) literal(lit string) bool {
	if len(v.b)-v.i >= len(lit) && string(v.b[v.i:v.i+len(lit)]) == lit {
		v.i += len(lit)
		return true
	}
	return false
}

// str steps over a string, which must come next.
func (v *validator) str() bool {
	b, i := v.b, v.i
	if i >= len(b) || b[i] != '"' {
		return false
	}
	for i++; i < len(b); {
		switch c := b[i]; {
		case c == '"':
			v.i = i + 1
			return true
		case c == '\\':
			if i+1 >= len(b) {
				return false
			}
			switch b[i+1] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				i += 2
			case 'u':
				if len(b)-i < 6 || !isHex(b[i+2]) || !isHex(b[i+3]) || !isHex(b[i+4]) || !isHex(b[i+5]) {
					return false
				}
				i += 6
			default:
				return false
			}
		case c < 0x20:
			return false
		default:
			i++
		}
	}
	return false
}

func isHex(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F'
}
