package metering

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"reflect"
	"testing"
)

// decodedMetrics is ParseMetrics as it read metrics before the scanner:
// json.Unmarshal into a map, then each field into a float64. The scanner
// must give the same Metrics, problems included, for every input.
func decodedMetrics(raw json.RawMessage) Metrics {
	var m Metrics
	if len(raw) == 0 {
		return m
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(raw, &fields); err != nil {
		m.Problems = append(m.Problems, "metrics is not an object")
		return m
	}
	read := func(name string) int64 {
		v, ok := fields[name]
		if !ok || bytes.Equal(v, []byte("null")) {
			return 0
		}
		var f float64
		if err := json.Unmarshal(v, &f); err != nil || f < 0 || f > MaxMetric || f != math.Trunc(f) {
			m.Problems = append(m.Problems, fmt.Sprintf("%s=%s", name, truncate(string(v), 32)))
			return 0
		}
		return int64(f)
	}
	m.TokensIn = read("tokens_in")
	m.TokensOut = read("tokens_out")
	if used := read("tokens_used"); m.TokensOut == 0 {
		m.TokensOut = used
	}
	m.APICalls = read("api_calls")
	return m
}

var metricsSeeds = []string{
	`{"tokens_in":3,"tokens_out":5,"api_calls":1}`,
	`{"tokens_in":3,"tokens_in":7}`,
	`{"TOKENS_IN":3,"tokens_out":0,"tokens_used":9}`,
	`{"tokens_in":-1,"tokens_out":1.5,"api_calls":"2","tokens_used":true}`,
	`{"tokens_in":1e3,"tokens_out":1E+2,"api_calls":0.0}`,
	`{"tokens_in":1e400,"tokens_out":01,"api_calls":-0}`,
	`{"tokens_in":null,"tokens_out":[1],"api_calls":{"a":1}}`,
	`{"tok\u0065ns_in":4}`,
	`{"tokens_in":9007199254740993}`,
	`{"tokens_in":3,}`,
	`[1]`,
	`"x"`,
	`{}`,
	` {"tokens_in" : 2 } `,
	"{\"tokens_in\":2,\"\xff\":1}",
	`{"a":[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]],"tokens_in":5}`,
}

func TestParseMetricsMatchesDecoder(t *testing.T) {
	for _, s := range metricsSeeds {
		checkMetrics(t, []byte(s))
	}
}

func FuzzParseMetricsMatchesDecoder(f *testing.F) {
	for _, s := range metricsSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) { checkMetrics(t, b) })
}

func checkMetrics(t *testing.T, b []byte) {
	t.Helper()
	got, want := ParseMetrics(b), decodedMetrics(b)
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("%q:\nscanner %+v\ndecoder %+v", b, got, want)
	}
}

// BenchmarkParseMetrics reads a task's metrics with the scanner (the
// production path) and with a map decode, in the same run.
//
//	go test -run '^$' -bench ParseMetrics ./caddymodule/metering
func BenchmarkParseMetrics(b *testing.B) {
	raw := json.RawMessage(`{"tokens_in":3,"tokens_out":5,"api_calls":1,"model":"demo"}`)
	for _, p := range []struct {
		name  string
		parse func(json.RawMessage) Metrics
	}{{"scan", ParseMetrics}, {"map-decode", decodedMetrics}} {
		b.Run(p.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if m := p.parse(raw); m.TokensOut != 5 {
					b.Fatal(m)
				}
			}
		})
	}
}
