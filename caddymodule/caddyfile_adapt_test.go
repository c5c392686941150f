package caddymodule

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddytest"

	_ "github.com/asap-sidecar/asap-sidecar/caddymodule/demoagent"
)

// goldenDir holds the Caddyfile → JSON golden files, in Caddy's own format
// (caddytest/integration/caddyfile_adapt): a Caddyfile, a line of ten
// dashes, then either the JSON it adapts to or, for a Caddyfile that must
// be refused, a piece of the error. They pin the mapping and document the
// JSON config: every option the parsers accept appears in at least one of
// them (TestCaddyfileAdaptGoldenCoversEveryOption).
//
// To add one: write the Caddyfile, adapt it with `asap-caddy adapt
// --config Caddyfile --pretty`, check that the JSON says what the option
// means, and paste it below the dashes.
const goldenDir = "testdata/caddyfile_adapt"

const goldenExt = ".caddyfiletest"

type goldenFile struct {
	name      string
	caddyfile string
	expected  string // JSON, or a piece of the expected error
}

func (g goldenFile) isJSON() bool { return strings.HasPrefix(g.expected, "{") }

func readGoldenFiles(t *testing.T) []goldenFile {
	t.Helper()
	entries, err := os.ReadDir(goldenDir)
	if err != nil {
		t.Fatalf("reading %s: %v", goldenDir, err)
	}
	var out []goldenFile
	for _, e := range entries {
		if e.IsDir() {
			continue
		}
		// A misnamed file would silently never run.
		if !strings.HasSuffix(e.Name(), goldenExt) {
			t.Errorf("%s/%s: golden files end in %s", goldenDir, e.Name(), goldenExt)
			continue
		}
		b, err := os.ReadFile(filepath.Join(goldenDir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		text := strings.ReplaceAll(string(b), "\r\n", "\n")
		cf, exp, ok := strings.Cut(text, "----------")
		if !ok {
			t.Errorf("%s: no ---------- line between the Caddyfile and the expected JSON", e.Name())
			continue
		}
		g := goldenFile{
			name: e.Name(),
			// As caddytest's own runner: the formatter wants one final newline.
			caddyfile: strings.TrimSpace(cf) + "\n",
			expected:  strings.TrimSpace(exp),
		}
		if g.expected == "" {
			t.Errorf("%s: nothing after the ---------- line", e.Name())
			continue
		}
		out = append(out, g)
	}
	if len(out) == 0 {
		t.Fatalf("no golden files in %s", goldenDir)
	}
	return out
}

// TestCaddyfileAdaptGolden adapts every golden Caddyfile and compares the
// result with its JSON (or its error), one subtest per file.
func TestCaddyfileAdaptGolden(t *testing.T) {
	for _, g := range readGoldenFiles(t) {
		t.Run(strings.TrimSuffix(g.name, goldenExt), func(t *testing.T) {
			if !g.isJSON() {
				_, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(g.caddyfile), nil)
				if err == nil {
					t.Fatalf("%s adapted; want an error containing %q", g.name, g.expected)
				}
				if !strings.Contains(err.Error(), g.expected) {
					t.Fatalf("%s: error %q does not contain %q", g.name, err, g.expected)
				}
				return
			}
			if !caddytest.CompareAdapt(t, g.name, g.caddyfile, "caddyfile", g.expected) {
				// CompareAdapt printed the diff (- expected, + adapted).
				t.Errorf("%s: the Caddyfile no longer adapts to the JSON in the file", g.name)
			}
			checkJSONConfigRoundTrip(t, g.expected)
		})
	}
}

// checkJSONConfigRoundTrip loads each of our handlers and apps in the
// expected JSON the way Caddy loads a JSON config (unknown fields
// refused) and marshals it back: the golden JSON is valid JSON config,
// and what the adapter writes reads back unchanged.
func checkJSONConfigRoundTrip(t *testing.T, expected string) {
	t.Helper()
	var root any
	if err := json.Unmarshal([]byte(expected), &root); err != nil {
		t.Fatalf("expected JSON does not parse: %v", err)
	}
	seen := 0
	check := func(id string, cfg map[string]any) {
		info, err := caddy.GetModule(id)
		if err != nil || !ourModule(info.New()) {
			return
		}
		seen++
		raw, _ := json.Marshal(cfg)
		mod := info.New()
		if err := caddy.StrictUnmarshalJSON(raw, mod); err != nil {
			t.Errorf("%s: the JSON does not load as config: %v\n%s", id, err, raw)
			return
		}
		back, err := json.Marshal(mod)
		if err != nil {
			t.Errorf("%s: marshalling back: %v", id, err)
			return
		}
		var got map[string]any
		_ = json.Unmarshal(back, &got)
		if !reflect.DeepEqual(got, cfg) {
			t.Errorf("%s: JSON config does not read back unchanged:\n in: %s\nout: %s", id, raw, back)
		}
	}
	if apps, ok := root.(map[string]any)["apps"].(map[string]any); ok {
		for name, v := range apps {
			if cfg, ok := v.(map[string]any); ok {
				check(name, cfg)
			}
		}
	}
	walkJSONObjects(root, func(obj map[string]any) {
		name, ok := obj["handler"].(string)
		if !ok {
			return
		}
		// Caddy takes the module name out before decoding the rest.
		cfg := map[string]any{}
		for k, v := range obj {
			if k != "handler" {
				cfg[k] = v
			}
		}
		check("http.handlers."+name, cfg)
	})
	if seen == 0 {
		t.Errorf("no asap module in the expected JSON; a golden file here should pin one of ours")
	}
}

// ourModule tells this module's handlers from Caddy's.
func ourModule(m caddy.Module) bool {
	return strings.HasPrefix(reflect.TypeOf(m).Elem().PkgPath(), "github.com/asap-sidecar/asap-sidecar/")
}

func walkJSONObjects(v any, fn func(map[string]any)) {
	switch x := v.(type) {
	case map[string]any:
		fn(x)
		for _, e := range x {
			walkJSONObjects(e, fn)
		}
	case []any:
		for _, e := range x {
			walkJSONObjects(e, fn)
		}
	}
}

// TestCaddyfileAdaptGoldenCoversEveryOption fails when a keyword a
// Caddyfile parser of this module accepts (read from the parsers' own
// switch statements, see caddyfile_options_test.go) appears in no golden
// file that adapts to JSON.
func TestCaddyfileAdaptGoldenCoversEveryOption(t *testing.T) {
	opts, err := parserOptions("..")
	if err != nil {
		t.Fatalf("reading the Caddyfile parsers: %v", err)
	}
	// Anchors: if the reader stopped seeing the parsers, every option
	// would vanish and the test would pass vacuously.
	for _, want := range []string{"asap agent", "asap sla window", "asap alert", "asap_api bearer", "asap_demo_agent ttl_seconds"} {
		if _, ok := opts[want]; !ok {
			t.Errorf("the parser reader no longer finds option %q; fix caddyfile_options_test.go", want)
		}
	}

	covered := map[string]string{}
	for _, g := range readGoldenFiles(t) {
		if !g.isJSON() {
			continue // a refused Caddyfile pins no mapping
		}
		paths, err := goldenOptionPaths(g.name, g.caddyfile)
		if err != nil {
			t.Errorf("%s: %v", g.name, err)
			continue
		}
		for p := range paths {
			if _, ok := covered[p]; !ok {
				covered[p] = g.name
			}
		}
	}
	for _, missing := range uncovered(opts, covered) {
		t.Errorf("Caddyfile option %q (parsed at %s) is in no golden file: add %s/<feature>%s using it, with the JSON it adapts to",
			missing, opts[missing], "caddymodule/"+goldenDir, goldenExt)
	}
}
