package storage

import (
	"bytes"
	"strings"
	"testing"
)

// Sized keys never collide, whatever bytes the parts hold: NUL, the
// length bytes themselves, empty parts.
func TestSizedKeysAreUnambiguous(t *testing.T) {
	lists := [][]string{
		{"a", "b"}, {"a\x00b"}, {"a\x00", "b"}, {"a", "\x00b"}, {"", "a", "b"}, {"a", "b", ""},
		{"ab"}, {"\x01a", "b"}, {"\x01a\x01b"}, {"a\x01b"}, {}, {""}, {"", ""},
		{strings.Repeat("x", 200), "y"}, {strings.Repeat("x", 199), "xy"},
		{"urn:asap:agent:a", "del_1"}, {"urn:asap:agent:a\x00del_1"}, {"urn:asap:agent:a", "del_1", ""},
	}
	seen := map[string][]string{}
	for _, parts := range lists {
		k := string(SpaceDelRevoke.SizedString(parts...))
		if prev, ok := seen[k]; ok {
			t.Fatalf("%q and %q share the key %q", prev, parts, k)
		}
		seen[k] = parts
		got, err := SplitSized([]byte(k))
		if err != nil {
			t.Fatalf("SplitSized(%q): %v", k, err)
		}
		if len(got) != len(parts) {
			t.Fatalf("SplitSized(%q) = %q, want %q", k, got, parts)
		}
		for i := range parts {
			if string(got[i]) != parts[i] {
				t.Fatalf("SplitSized(%q) = %q, want %q", k, got, parts)
			}
		}
	}
	// Leading parts are a prefix, and only of keys that have them.
	pre := SpaceDelSeen.SizedString("del_1")
	if !bytes.HasPrefix(SpaceDelSeen.SizedString("del_1", "iss", "h"), pre) {
		t.Error("leading parts are not a prefix")
	}
	if bytes.HasPrefix(SpaceDelSeen.SizedString("del_10", "iss"), pre) {
		t.Error("del_10 falls under the prefix of del_1")
	}
	for _, bad := range [][]byte{nil, {byte(SpaceDelRevoke), 5, 'a'}, {byte(SpaceDelRevoke), 0x80}} {
		if _, err := SplitSized(bad); err == nil {
			t.Errorf("SplitSized(%q) accepted", bad)
		}
	}
}
