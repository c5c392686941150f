package protocol

import "testing"

// benchCall is a typical single asap.send call of about 600 bytes.
const benchCall = `{"jsonrpc":"2.0","method":"asap.send","params":{"envelope":{"id":"01J9Z3K8Q4W6X2M5N7P0R1S3T4","asap_version":"0.1","timestamp":"2026-11-26T01:00:00.123Z","sender":"urn:asap:agent:client-frontend","recipient":"urn:asap:agent:research:summaries","payload_type":"task.request","payload":{"conversation_id":"conv_01J9Z3K8Q4W6X2M5N7P0R1S3T4","skill_id":"summarise","input":{"text":"Summarise the attached quarterly report in three bullet points, keeping numbers exact.","lang":"en","max_words":120},"config":{"timeout_seconds":30}},"correlation_id":"","trace_id":"trace-4bf92f3577b34da6a3ce929d0e0e4736","requires_ack":false,"extensions":{"priority":"normal"}}},"id":"req-01J9Z3K8Q4"}`

func BenchmarkParseRequest(b *testing.B) {
	body := []byte(benchCall)
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for b.Loop() {
		req, err := ParseRequest(body, Limits{})
		if err != nil || req.Calls[0].Err != nil {
			b.Fatal(err, req.Calls[0].Err)
		}
	}
}

// BenchmarkParseResponse reads a task answer as the demo agent sends it,
// with the scanner (the production path) and with encoding/json (the
// fallback), in the same run.
//
//	go test -run '^$' -bench ParseResponse ./caddymodule/protocol
func BenchmarkParseResponse(b *testing.B) {
	body := []byte(`{"jsonrpc":"2.0","result":{"envelope":{"id":"01JD0000000000000000000000","asap_version":"2.2","sender":"urn:asap:agent:demo","recipient":"urn:asap:agent:client","payload_type":"task.response","payload":{"task_id":"task_01JD0000000000000000000000","status":"completed","result":{"text":"hello"},"metrics":{"tokens_in":3,"tokens_out":5,"api_calls":1}},"correlation_id":"01JD0000000000000000000000","timestamp":"2026-12-03T10:00:00.000000Z"}},"id":"b"}`)
	for _, p := range []struct {
		name  string
		parse func([]byte) ([]Reply, error)
	}{{"scan", ParseResponse}, {"encoding-json", decodeResponse}} {
		b.Run(p.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if rs, err := p.parse(body); err != nil || rs[0].TaskID == "" {
					b.Fatal(rs, err)
				}
			}
		})
	}
}
