package caddymodule

import (
	"encoding/json"
	"os"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig"
)

// The example Caddyfiles the README runs adapt without errors or
// warnings, and the fleet demo's replicas share one key and one NATS.
func TestExampleCaddyfilesAdapt(t *testing.T) {
	for _, file := range []string{"../Caddyfile.example", "../Caddyfile.fleet.example"} {
		b, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		cfg, warnings, err := caddyconfig.GetAdapter("caddyfile").Adapt(b, map[string]any{"filename": file})
		if err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		for _, w := range warnings {
			t.Errorf("%s:%d: %s", file, w.Line, w.Message)
		}
		if !strings.HasSuffix(file, "fleet.example") {
			continue
		}
		var parsed struct {
			Apps struct {
				NATS *struct {
					Listen string `json:"listen"`
				} `json:"nats_server"`
			} `json:"apps"`
		}
		if err := json.Unmarshal(cfg, &parsed); err != nil {
			t.Fatal(err)
		}
		if parsed.Apps.NATS == nil || parsed.Apps.NATS.Listen != "127.0.0.1:4222" {
			t.Fatalf("fleet example: nats_server app %+v", parsed.Apps.NATS)
		}
		s := string(cfg)
		if n := strings.Count(s, `"nats":"nats://127.0.0.1:4222"`); n != 3 {
			t.Errorf("fleet example: %d replicas join the embedded NATS, want 3", n)
		}
		if n := strings.Count(s, `"key":"./asap-fleet/agent.key"`); n != 3 {
			t.Errorf("fleet example: %d replicas use the shared key, want 3", n)
		}
		for _, name := range []string{"replica-1", "replica-2", "replica-3"} {
			if !strings.Contains(s, `"storage":"./asap-fleet/`+name+`"`) {
				t.Errorf("fleet example: no storage of its own for %s", name)
			}
		}
	}
}
