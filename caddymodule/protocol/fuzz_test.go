package protocol

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"unicode/utf8"
)

// The seed corpus is in testdata/fuzz/FuzzParseRequest.
func FuzzParseRequest(f *testing.F) {
	f.Add([]byte(call(goodEnv)))
	f.Add([]byte("[" + call(goodEnv) + ",1]"))
	f.Add([]byte(`{"jsonrpc":"2.0","method":"asap.send","params":{"envelope":{}},"id":1}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		req, err := ParseRequest(b, Limits{})
		if (req == nil) == (err == nil) {
			t.Fatalf("exactly one of request and error expected: %v %v", req, err)
		}
		if err != nil {
			if !json.Valid(err.JSON()) {
				t.Fatalf("error answer not JSON: %s", err.JSON())
			}
			// invalid_json exactly when encoding/json finds it invalid too.
			switch err.Reason {
			case "invalid_json":
				if json.Valid(b) {
					t.Fatal("valid JSON refused as invalid_json")
				}
			case "invalid_utf8", "too_deep", "empty_body":
			default:
				if !json.Valid(b) {
					t.Fatalf("invalid JSON refused as %s", err.Reason)
				}
			}
			return
		}
		if utf8.Valid(b) && !json.Valid(b) {
			t.Fatal("invalid JSON accepted")
		}
		keys := map[string]bool{}
		for i := range req.Calls {
			c := &req.Calls[i]
			if c.Err != nil {
				if !json.Valid(c.Err.JSON()) {
					t.Fatalf("call error answer not JSON: %s", c.Err.JSON())
				}
				continue
			}
			checkAccepted(t, c)
			if keys[c.Key] {
				t.Fatalf("two accepted calls with key %q", c.Key)
			}
			keys[c.Key] = true
		}
	})
}

// checkAccepted re-reads an accepted call with encoding/json's tokenizer,
// independently of the parser: exactly one member of each name at the
// request, params and envelope levels (also under case folding), and the
// envelope and id the parser reported are the ones found there.
func checkAccepted(t *testing.T, c *Call) {
	t.Helper()
	top := strictMembers(t, c.Raw, "request")
	params := strictMembers(t, top["params"], "params")
	env := strictMembers(t, params["envelope"], "envelope")
	for name, got := range map[string]string{"sender": c.Envelope.Sender, "recipient": c.Envelope.Recipient, "payload_type": c.Envelope.PayloadType, "id": c.Envelope.ID} {
		var want string
		if raw, ok := env[name]; ok {
			if err := json.Unmarshal(raw, &want); err != nil && !bytes.Equal(raw, []byte("null")) {
				t.Fatalf("envelope %s = %s: %v", name, raw, err)
			}
		}
		if got != want {
			t.Fatalf("envelope %s: parser says %q, the body says %q", name, got, want)
		}
	}
	id, ok := top["id"]
	if !ok || !bytes.Equal(id, c.ID) {
		t.Fatalf("id %s, parser says %s", id, c.ID)
	}
	var s string
	if json.Unmarshal(id, &s) == nil && !ValidID(s) {
		t.Fatalf("accepted id %q", s)
	}
	if key, ok := IDKey(id); !ok || key != c.Key {
		t.Fatalf("key %q, IDKey %q %v", c.Key, key, ok)
	}
	if !ValidID(c.Envelope.ID) || !ValidID(c.Envelope.CorrelationID) {
		t.Fatalf("accepted envelope ids %q %q", c.Envelope.ID, c.Envelope.CorrelationID)
	}
}

// strictMembers reads the JSON object raw member by member and fails on
// any two names equal under strings.EqualFold.
func strictMembers(t *testing.T, raw json.RawMessage, what string) map[string]json.RawMessage {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(raw))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		t.Fatalf("%s is not an object: %s", what, raw)
	}
	out := map[string]json.RawMessage{}
	var names []string
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		name := tok.(string)
		for _, n := range names {
			if strings.EqualFold(n, name) {
				t.Fatalf("%s has members %q and %q", what, n, name)
			}
		}
		names = append(names, name)
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			t.Fatalf("%s.%s: %v", what, name, err)
		}
		out[name] = v
	}
	return out
}
