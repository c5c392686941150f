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
