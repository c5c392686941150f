package audit

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
)

// chainOf builds n chained entries as an export holds them.
func chainOf(n int) []Entry {
	out := make([]Entry, n)
	prev := ""
	for i := range out {
		details := json.RawMessage(fmt.Sprintf(`{"n":%d,"s":"<&>"}`, i))
		ts := fmt.Sprintf("2026-11-26T01:02:%02d.000004Z", i)
		h := ChainHash(prev, ts, OpTaskStarted, details)
		out[i] = Entry{Seq: uint64(i), Timestamp: ts, Operation: OpTaskStarted, Details: details, PrevHash: prev, Hash: h}
		prev = h
	}
	return out
}

// ReadExport takes json in any key order and layout (as jq rewrites it)
// and jsonl with checkpoint lines anywhere.
func TestReadExportFormats(t *testing.T) {
	entries := chainOf(5)
	eb, _ := json.MarshalIndent(entries, "  ", "  ")
	cps := `[{"size":3,"note":"a"},{"size":5,"note":"b"}]`
	var lines []string
	for i, e := range entries {
		b, _ := json.Marshal(e)
		lines = append(lines, string(b))
		if i == 2 {
			lines = append(lines, `{"type":"checkpoint","size":3,"note":"a"}`)
		}
	}
	lines = append(lines, `{"type":"checkpoint","size":5,"note":"b"}`)
	for name, export := range map[string]string{
		"json, entries first": "{\n  \"entries\": " + string(eb) + ",\n  \"count\": 5,\n  \"checkpoints\": " + cps + "\n}\n",
		"json, as the API":    `{"checkpoints":` + cps + `,"count":5,"entries":` + string(eb) + `}`,
		"jsonl":               strings.Join(lines, "\n") + "\n",
	} {
		var a Auditor
		got, err := ReadExport(strings.NewReader(export), a.Add)
		if err != nil || a.Size() != 5 || len(got) != 2 || got[0].Size != 3 || got[1].Note != "b" {
			t.Errorf("%s: %v, %d entries, checkpoints %+v", name, err, a.Size(), got)
		}
	}
	for name, export := range map[string]string{
		"empty": "  \n",
		"csv":   "id,seq,timestamp\n",
	} {
		if _, err := ReadExport(strings.NewReader(export), (&Auditor{}).Add); err == nil {
			t.Errorf("%s: read without error", name)
		}
	}
	// A broken entry stops the read with its seq.
	entries[1].Timestamp = "2026-11-26T01:02:01.000005Z"
	b, _ := json.Marshal(map[string]any{"entries": entries})
	var bad *BadEntry
	if _, err := ReadExport(strings.NewReader(string(b)), (&Auditor{}).Add); !errors.As(err, &bad) || bad.Seq != 1 {
		t.Fatalf("edited timestamp: %v", err)
	}
}
