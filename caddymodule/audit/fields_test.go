package audit

import (
	"math/rand/v2"
	"testing"
)

// Records built from Fields carry the same canonical details as records
// built from the equal map, so entry hashes do not depend on which one
// the caller used.
func TestFieldsMatchMapDetails(t *testing.T) {
	strs := []string{"", "plain", "urn:asap:agent:demo", "quote \" back \\ nl \n tab \t", "\x01\x1f ctl", "é ü 日本", "bad \xff utf8", "01JD0000000000000000000000"}
	nums := []int64{0, -1, 150, 1 << 53, -(1 << 53), 1<<53 + 1, -(1<<53 + 1)}
	// "｡" (U+FF61) sorts before "😀" (U+1F600) by bytes but after it by
	// UTF-16 units, the order JCS uses.
	keys := []string{"task_id", "envelope_id", "agent", "consumer", "status", "http_status", "duration_ms", "a", "B", "z_", "é", "tokens_in", "｡", "😀"}
	rng := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < 5000; i++ {
		var f Fields
		d := map[string]any{}
		for j := rng.IntN(9); j > 0; j-- {
			k := keys[rng.IntN(len(keys))]
			if rng.IntN(2) == 0 {
				v := strs[rng.IntN(len(strs))]
				f, d[k] = f.Str(k, v), v
			} else {
				v := nums[rng.IntN(len(nums))]
				f, d[k] = f.Int(k, v), v
			}
		}
		got := f.Record(OpTaskStarted, "urn:asap:agent:c")
		want := Record{Operation: OpTaskStarted, AgentURN: "urn:asap:agent:c", Details: d}
		wantErr := want.Prepare()
		if wantErr != nil {
			if got.Prepare() == nil {
				t.Fatalf("%v: the map fails (%v), Fields do not", d, wantErr)
			}
			continue
		}
		if err := got.Prepare(); err != nil {
			t.Fatalf("%v: %v", d, err)
		}
		if string(got.canonical) != string(want.canonical) {
			t.Fatalf("details %v:\nfields %s\nmap    %s", d, got.canonical, want.canonical)
		}
		if got.taskID() != want.taskID() {
			t.Fatalf("task %q, want %q", got.taskID(), want.taskID())
		}
	}
}
