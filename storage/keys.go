package storage

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
	SpaceDelRevoke Space = 'r' // revoked token ids
	SpaceDelCount  Space = 'n' // per-token task counters
	SpaceSLA       Space = 's' // SLA buckets, snapshots, breaches
	SpaceAudit     Space = 'a' // audit entries, tree state, head
	SpaceMeta      Space = 'm' // schema version and process facts
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
