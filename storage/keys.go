package storage

import (
	"encoding/binary"
	"errors"
)

// Space is a key space: a short prefix that keeps one feature's records
// apart from every other's inside the single database. New spaces get a new
// byte here and nowhere else, so two features can never collide.
type Space byte

// The key spaces. The byte values are part of the on-disk format.
const (
	SpaceTask      Space = 't' // per-task records, by agent then envelope id
	SpaceCounter   Space = 'c' // per-agent counters
	SpaceUsage     Space = 'u' // usage events by time
	SpaceUsageIdx  Space = 'v' // usage secondary indexes
	SpaceUsageSeen Space = 'w' // envelope ids already metered (dedup)
	SpaceDelIssued Space = 'd' // delegation tokens minted here
	SpaceDelRevoke Space = 'r' // revocations by (issuer, token id), or token id for every issuer
	SpaceDelCount  Space = 'n' // per-token task counters, by token hash
	SpaceDelSeen   Space = 'e' // delegation tokens seen in traffic, by token id
	SpaceSLA       Space = 's' // SLA buckets, snapshots, breaches
	SpaceAudit     Space = 'a' // audit entries, tree state, head
	SpaceMeta      Space = 'm' // schema version and process facts
	SpaceOutbox    Space = 'o' // fleet mode: messages waiting to be published, by sequence
	SpaceFleet     Space = 'f' // fleet collector: latest checkpoint per sidecar, ingest counters
)

// sep separates variable-length key parts. Parts must not contain it; the
// parts stored here are URNs, ids and fixed-width numbers, none of which
// can hold a NUL byte.
const sep = 0x00

// Key joins the space prefix and parts into one key.
func (s Space) Key(parts ...[]byte) []byte {
	n := 1
	for _, p := range parts {
		n += len(p) + 1
	}
	k := make([]byte, 0, n)
	k = append(k, byte(s))
	for i, p := range parts {
		if i > 0 {
			k = append(k, sep)
		}
		k = append(k, p...)
	}
	return k
}

// Prefix is Key(parts...) followed by a separator: the prefix of every key
// that has parts as its leading parts.
func (s Space) Prefix(parts ...[]byte) []byte {
	if len(parts) == 0 {
		return []byte{byte(s)}
	}
	return append(s.Key(parts...), sep)
}

// KeyString is Key for string parts.
func (s Space) KeyString(parts ...string) []byte {
	b := make([][]byte, len(parts))
	for i, p := range parts {
		b[i] = []byte(p)
	}
	return s.Key(b...)
}

// Sized joins the space prefix and parts, each preceded by its length as
// an unsigned varint. Unlike Key it takes parts of any bytes, untrusted
// strings included: the encoding is prefix-free, so no two different part
// lists give the same key, and Sized(a...) is a prefix of every
// Sized(a..., b...).
func (s Space) Sized(parts ...[]byte) []byte {
	n := 1
	for _, p := range parts {
		n += binary.MaxVarintLen64 + len(p)
	}
	k := make([]byte, 1, n)
	k[0] = byte(s)
	for _, p := range parts {
		k = binary.AppendUvarint(k, uint64(len(p)))
		k = append(k, p...)
	}
	return k
}

// SizedString is Sized for string parts.
func (s Space) SizedString(parts ...string) []byte {
	b := make([][]byte, len(parts))
	for i, p := range parts {
		b[i] = []byte(p)
	}
	return s.Sized(b...)
}

// ErrBadKey is returned by SplitSized for a key Sized did not write.
var ErrBadKey = errors.New("storage: malformed sized key")

// SplitSized reverses Sized: it returns the parts of key after its space
// byte. The parts alias key.
func SplitSized(key []byte) ([][]byte, error) {
	if len(key) == 0 {
		return nil, ErrBadKey
	}
	var parts [][]byte
	for rest := key[1:]; len(rest) > 0; {
		n, w := binary.Uvarint(rest)
		if w <= 0 || uint64(len(rest)-w) < n {
			return nil, ErrBadKey
		}
		parts = append(parts, rest[w:w+int(n)])
		rest = rest[w+int(n):]
	}
	return parts, nil
}
