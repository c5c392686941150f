package protocol

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
)

func TestNegotiateVersion(t *testing.T) {
	v := DefaultVersions()
	for _, tc := range []struct {
		name   string
		values []string
		want   string
		ok     bool
	}{
		{"absent", nil, "2.2", true},
		{"blank", []string{"  "}, "2.2", true},
		{"only commas", []string{" , ,"}, "2.2", true},
		{"one supported", []string{"2.1"}, "2.1", true},
		{"first supported wins, in the client's order", []string{"2.1, 2.2"}, "2.1", true},
		{"order reversed", []string{"2.2,2.1"}, "2.2", true},
		{"unknown tokens skipped", []string{"3.0, 99.0 ,2.1"}, "2.1", true},
		{"whitespace around tokens", []string{"\t 2.2 \t"}, "2.2", true},
		{"empty tokens skipped", []string{",,2.1,"}, "2.1", true},
		{"several header lines form one list", []string{"9.9", "2.1, 2.2"}, "2.1", true},
		{"none supported", []string{"99.0"}, "", false},
		{"none supported in a list", []string{"1.0, 3.0"}, "", false},
		{"matching is exact", []string{"2.2.0, v2.2, 2.20"}, "", false},
		{"a blank line beside an unsupported one", []string{"", "99.0"}, "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := v.Negotiate(tc.values)
			if got != tc.want || ok != tc.ok {
				t.Fatalf("Negotiate(%q) = %q, %v; want %q, %v", tc.values, got, ok, tc.want, tc.ok)
			}
		})
	}

	// A configured set: the default is the configured one, and versions
	// outside the set are unsupported even when the reference has them.
	only := Versions{Supported: []string{"2.1", "3.0-beta"}, Default: "2.1"}
	if got, ok := only.Negotiate(nil); got != "2.1" || !ok {
		t.Fatalf("absent header with default 2.1: %q %v", got, ok)
	}
	if got, ok := only.Negotiate([]string{"2.2, 3.0-beta"}); got != "3.0-beta" || !ok {
		t.Fatalf("2.2, 3.0-beta: %q %v", got, ok)
	}
	if _, ok := only.Negotiate([]string{"2.2"}); ok {
		t.Fatal("2.2 negotiated though not configured")
	}
}

func TestIncompatibleVersionAnswer(t *testing.T) {
	v := Versions{Supported: []string{"2.2", "2.1"}, Default: "2.2"}
	var got struct {
		JSONRPC string `json:"jsonrpc"`
		Error   struct {
			Code    int            `json:"code"`
			Message string         `json:"message"`
			Data    map[string]any `json:"data"`
		} `json:"error"`
		ID json.RawMessage `json:"id"`
	}
	b := v.Incompatible([]string{" 99.0, 3.0 "}).JSON()
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	if got.JSONRPC != "2.0" || got.Error.Code != -32000 || got.Error.Message != "ASAP protocol version incompatible" || string(got.ID) != "null" {
		t.Fatalf("answer = %s", b)
	}
	if got.Error.Data["requested"] != "99.0, 3.0" {
		t.Fatalf("data.requested = %v", got.Error.Data["requested"])
	}
	// Sorted, as the reference lists them.
	if !reflect.DeepEqual(got.Error.Data["supported"], []any{"2.1", "2.2"}) {
		t.Fatalf("data.supported = %v", got.Error.Data["supported"])
	}
	if got.Error.Data["reason"] != "version_incompatible" || !strings.Contains(got.Error.Data["error"].(string), "2.1, 2.2") {
		t.Fatalf("data = %v", got.Error.Data)
	}
	// The configured list is not reordered in place.
	if v.Supported[0] != "2.2" {
		t.Fatalf("Incompatible sorted the configured list: %v", v.Supported)
	}

	// A huge header is not echoed whole.
	long := strings.Repeat("9", 10_000)
	e := v.Incompatible([]string{long})
	if r := e.Extra["requested"].(string); len(r) > 260 || !strings.HasPrefix(r, "999") {
		t.Fatalf("requested echo is %d bytes", len(r))
	}
}

func TestValidVersion(t *testing.T) {
	for _, s := range []string{"2.2", "2.1", "3.0-beta", "x"} {
		if !ValidVersion(s) {
			t.Errorf("%q refused", s)
		}
	}
	for _, s := range []string{"", "2.1,2.2", "2 .2", "2.2\t", "é", "\x00", strings.Repeat("1", 33)} {
		if ValidVersion(s) {
			t.Errorf("%q accepted", s)
		}
	}
}
