package audit

import (
	"encoding/json"
	"math/rand"
	"strings"
	"testing"
)

// The direct writer and encoding/json + JCS give the same bytes.
func TestCanonicalFastPathMatchesJCS(t *testing.T) {
	rng := rand.New(rand.NewSource(7))
	alphabet := []string{"a", "Z", "0", " ", "\"", "\\", "\n", "\t", "\x01", "\x1f", "\x7f", "é", "€", "\u2028", "😀", "<", ">", "&", "/"}
	str := func() string {
		var sb strings.Builder
		for i := rng.Intn(12); i > 0; i-- {
			sb.WriteString(alphabet[rng.Intn(len(alphabet))])
		}
		return sb.String()
	}
	for i := 0; i < 3000; i++ {
		d := map[string]any{}
		for j := rng.Intn(8); j > 0; j-- {
			key := strings.Map(func(r rune) rune {
				if r < 0x20 || r > 0x7e {
					return 'k'
				}
				return r
			}, str()) + string(rune('a'+j))
			switch rng.Intn(7) {
			case 0:
				d[key] = str()
			case 1:
				d[key] = rng.Int63n(1<<53) - 1<<52
			case 2:
				d[key] = rng.Intn(2) == 0
			case 3:
				d[key] = nil
			case 4:
				d[key] = []string{str(), str()}
			case 5:
				d[key] = uint64(rng.Int63n(1 << 53))
			case 6:
				d[key] = int(rng.Int31())
			}
		}
		fast, ok := appendCanonicalMap(nil, d)
		if !ok {
			t.Fatalf("fast path refused %v", d)
		}
		raw, _ := json.Marshal(d)
		want, err := Canonical(raw)
		if err != nil {
			t.Fatal(err)
		}
		if string(fast) != string(want) {
			t.Fatalf("fast %s\n jcs %s", fast, want)
		}
	}
	// Beyond the fast path, the library answers.
	for _, d := range []map[string]any{{"é": 1}, {"f": 1.5}, {"n": map[string]any{"x": 1}}, {"big": int64(1) << 60}, {"bad": "\xff"}} {
		if _, ok := appendCanonicalMap(nil, d); ok {
			t.Fatalf("fast path took %v", d)
		}
		got, err := canonicalDetails(d)
		raw, _ := json.Marshal(d)
		want, _ := Canonical(raw)
		if err != nil || string(got) != string(want) {
			t.Fatalf("%v: %s vs %s (%v)", d, got, want, err)
		}
	}
}
