package audit

import "unicode/utf8"

// Fields are flat details (strings and whole numbers) built without a
// map. The request path writes up to three records per task; building a
// map for each and canonicalizing it through interfaces was most of what
// accounting a task cost. The bytes are the same as for the equal map
// (TestFieldsMatchMapDetails).
type Fields []field

type field struct {
	key string
	s   string
	n   int64
	num bool
}

// Str adds a string member.
func (f Fields) Str(key, v string) Fields { return append(f, field{key: key, s: v}) }

// Int adds a whole-number member.
func (f Fields) Int(key string, v int64) Fields { return append(f, field{key: key, n: v, num: true}) }

// Record is the record of op by agent with f as its details, prepared.
// A later member replaces an earlier one of the same name, as in a map.
func (f Fields) Record(op, agent string) Record {
	r := Record{Operation: op, AgentURN: agent}
	// Member order by name; insertion sort, as there are a dozen at most.
	// Stable, so that of equal names the last added stays last.
	var buf [16]int
	order := buf[:0]
	size := 2
	for i := range f {
		order = append(order, i)
		size += len(f[i].key) + len(f[i].s) + 24
	}
	for i := 1; i < len(order); i++ {
		for j := i; j > 0 && f[order[j-1]].key > f[order[j]].key; j-- {
			order[j-1], order[j] = order[j], order[j-1]
		}
	}
	b := make([]byte, 0, size)
	b = append(b, '{')
	for i, at := range order {
		m := &f[at]
		if i+1 < len(order) && f[order[i+1]].key == m.key {
			continue
		}
		if m.key == "task_id" && !m.num {
			r.task = m.s
		}
		if !canonicalASCII(m.key) || (!m.num && !utf8.ValidString(m.s)) || (m.num && (m.n > maxExact || m.n < -maxExact)) {
			// Beyond the fast writer (JCS orders non-ASCII names by
			// UTF-16 units; invalid UTF-8 and huge numbers are replaced
			// or rejected by encoding/json): take the map path.
			return f.mapRecord(op, agent)
		}
		if len(b) > 1 {
			b = append(b, ',')
		}
		b = appendCanonicalString(b, m.key)
		b = append(b, ':')
		if m.num {
			b, _ = appendInt(b, m.n)
		} else {
			b = appendCanonicalString(b, m.s)
		}
	}
	r.canonical = append(b, '}')
	return r
}

func (f Fields) mapRecord(op, agent string) Record {
	d := make(map[string]any, len(f))
	for _, m := range f {
		if m.num {
			d[m.key] = m.n
		} else {
			d[m.key] = m.s
		}
	}
	r := Record{Operation: op, AgentURN: agent, Details: d}
	_ = r.Prepare() // any error surfaces again in Append
	return r
}

func canonicalASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= utf8.RuneSelf {
			return false
		}
	}
	return true
}
