package caddymodule

import (
	"encoding/json"
	"os"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig"
)

// The container image (Dockerfile, Containerfile.local, container/etc/):
// what scripts/container_check.sh proves of the local image holds for the
// Dockerfile's only if the runtime stages are the same, and the image's
// Caddyfile must adapt with the environment it documents.

const runtimeMarker = "# --- runtime stage"

func runtimeStage(t *testing.T, file string) string {
	t.Helper()
	b, err := os.ReadFile("../" + file)
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	i := strings.Index(s, runtimeMarker)
	if i < 0 {
		t.Fatalf("%s has no line starting %q", file, runtimeMarker)
	}
	return s[i:]
}

func TestImageRuntimeStagesAreIdentical(t *testing.T) {
	docker, local := runtimeStage(t, "Dockerfile"), runtimeStage(t, "Containerfile.local")
	if docker != local {
		t.Fatalf("the runtime stages differ; make Containerfile.local's match the Dockerfile's:\n--- Dockerfile\n%s\n--- Containerfile.local\n%s", docker, local)
	}
	for _, want := range []string{
		"FROM scratch\n", "USER 65532:65532\n", "VOLUME /data\n", "EXPOSE 8080\n",
		`"--address", "unix//run/asap/admin.sock"`,
		`ENTRYPOINT ["/asap-caddy"]`,
		`CMD ["run", "--config", "/etc/asap/Caddyfile", "--adapter", "caddyfile"]`,
	} {
		if !strings.Contains(docker, want) {
			t.Errorf("the runtime stage lacks %q", want)
		}
	}
	if strings.Count(docker, "EXPOSE") != 1 || strings.Count(docker, "FROM ") != 1 {
		t.Errorf("the runtime stage must be one FROM scratch exposing only 8080:\n%s", docker)
	}
	if b, err := os.ReadFile("../container/etc/passwd"); err != nil || !strings.Contains(string(b), "\nasap:x:65532:65532:") {
		t.Errorf("container/etc/passwd lacks the asap user 65532: %v %q", err, b)
	}
}

// adaptImageConfig adapts the image's Caddyfile with env set.
func adaptImageConfig(t *testing.T, env map[string]string) (map[string]any, error) {
	t.Helper()
	for _, k := range []string{"ASAP_AGENT", "ASAP_UPSTREAM", "ASAP_DELEGATION"} {
		t.Setenv(k, env[k])
		if env[k] == "" {
			os.Unsetenv(k)
		}
	}
	b, err := os.ReadFile("../container/etc/asap/Caddyfile")
	if err != nil {
		t.Fatal(err)
	}
	out, _, err := caddyconfig.GetAdapter("caddyfile").Adapt(b, map[string]any{"filename": "/etc/asap/Caddyfile"})
	if err != nil {
		return nil, err
	}
	var cfg map[string]any
	if err := json.Unmarshal(out, &cfg); err != nil {
		t.Fatal(err)
	}
	return cfg, nil
}

func TestImageCaddyfileTakesItsEnvironment(t *testing.T) {
	cfg, err := adaptImageConfig(t, map[string]string{"ASAP_AGENT": "urn:asap:agent:research"})
	if err != nil {
		t.Fatal(err)
	}
	js, _ := json.Marshal(cfg)
	for _, want := range []string{
		`"admin":{"listen":"unix//run/asap/admin.sock|0600"}`,
		`"listen":[":8080"]`,
		`"agent":"urn:asap:agent:research"`, `"delegation":"require"`, `"storage":"/data/asap"`,
		`"upstreams":[{"dial":"127.0.0.1:9000"}]`,
	} {
		if !strings.Contains(string(js), want) {
			t.Errorf("the image config lacks %s:\n%s", want, js)
		}
	}

	cfg, err = adaptImageConfig(t, map[string]string{"ASAP_AGENT": "urn:asap:agent:research", "ASAP_UPSTREAM": "agent:7000", "ASAP_DELEGATION": "optional"})
	if err != nil {
		t.Fatal(err)
	}
	js, _ = json.Marshal(cfg)
	if !strings.Contains(string(js), `"dial":"agent:7000"`) || !strings.Contains(string(js), `"delegation":"optional"`) {
		t.Errorf("ASAP_UPSTREAM / ASAP_DELEGATION not applied:\n%s", js)
	}

	// Without ASAP_AGENT the config load fails naming the variable.
	if _, err := adaptImageConfig(t, nil); err == nil || !strings.Contains(err.Error(), "ASAP_AGENT") {
		t.Fatalf("no ASAP_AGENT: %v", err)
	}
}
