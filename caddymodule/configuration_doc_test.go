package caddymodule

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"sort"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
)

// configDoc is the configuration reference this test holds to the code.
const configDoc = "../docs/configuration.md"

// docSection is one part of docs/configuration.md that documents a
// directive, a global option or a block inside one: a heading whose first
// code span is the block's keyword path ("## `asap`", "### `asap sla`").
type docSection struct {
	path string // as parserOptions names it: "asap sla", "(global) nats_server"
	line int
	text strings.Builder // everything up to the next heading
}

// configReference is what docs/configuration.md documents.
type configReference struct {
	sections map[string]*docSection
	// rows maps each option a table documents ("asap sla window") to its
	// line. An option table is one whose header's first cell is
	// "Caddyfile"; the first code span of a row's first cell starts with
	// the option's keyword, and the row belongs to the section above it.
	rows map[string]int
}

var docKeyword = regexp.MustCompile(`^[a-z0-9_]+$`)

// keywords are the leading keyword-shaped words of a code span:
// "alert webhook <url> { … }" → [alert webhook].
func keywords(span string) []string {
	var out []string
	for _, w := range strings.Fields(span) {
		if !docKeyword.MatchString(w) {
			break
		}
		out = append(out, w)
	}
	return out
}

// firstCodeSpan returns the text of the first `code span` in s.
func firstCodeSpan(s string) (string, bool) {
	i := strings.IndexByte(s, '`')
	if i < 0 {
		return "", false
	}
	j := strings.IndexByte(s[i+1:], '`')
	if j < 0 {
		return "", false
	}
	return s[i+1 : i+1+j], true
}

func readConfigReference(name string, opts map[string]string) (*configReference, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	ref := &configReference{sections: map[string]*docSection{}, rows: map[string]int{}}
	var cur *docSection
	inFence, inTable, optionTable := false, false, false
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		if strings.HasPrefix(strings.TrimSpace(line), "```") {
			inFence = !inFence
			continue
		}
		if inFence {
			continue
		}
		if strings.HasPrefix(line, "#") {
			inTable = false
			cur = nil
			heading := strings.TrimLeft(line, "#")
			span, ok := firstCodeSpan(heading)
			if !ok || strings.HasPrefix(line, "# ") {
				continue
			}
			path := strings.Join(keywords(span), " ")
			if _, known := opts[path]; !known {
				if _, global := opts[globalPath+" "+path]; global {
					path = globalPath + " " + path
				}
			}
			if prev := ref.sections[path]; prev != nil {
				return nil, fmt.Errorf("%s:%d: a second section for `%s` (the first is at line %d); keep one", name, n, path, prev.line)
			}
			cur = &docSection{path: path, line: n}
			ref.sections[path] = cur
			continue
		}
		if cur != nil {
			cur.text.WriteString(line)
			cur.text.WriteByte('\n')
		}
		if !strings.HasPrefix(line, "|") {
			inTable = false
			continue
		}
		first := strings.TrimSpace(firstCell(line))
		if !inTable { // the header
			inTable = true
			optionTable = first == "Caddyfile"
			continue
		}
		if !optionTable || strings.HasPrefix(first, "---") {
			continue
		}
		if cur == nil {
			return nil, fmt.Errorf("%s:%d: an option row outside any directive's or block's section", name, n)
		}
		span, ok := firstCodeSpan(first)
		kws := keywords(span)
		if !ok || len(kws) == 0 {
			return nil, fmt.Errorf("%s:%d: the first cell of an option row must start with the option in backticks (`name <value>`), got %q", name, n, first)
		}
		// "alert webhook <url>" documents "alert" and "alert webhook".
		for k := 1; k <= len(kws); k++ {
			key := cur.path + " " + strings.Join(kws[:k], " ")
			if _, dup := ref.rows[key]; dup && k == 1 {
				return nil, fmt.Errorf("%s:%d: `%s` has a row already (line %d)", name, n, key, ref.rows[key])
			}
			ref.rows[key] = n
		}
	}
	return ref, sc.Err()
}

// firstCell is the first cell of a table row; `\|` is a pipe inside it.
func firstCell(row string) string {
	row = strings.TrimPrefix(row, "|")
	for i := 0; i < len(row); i++ {
		switch row[i] {
		case '\\':
			i++
		case '|':
			return row[:i]
		}
	}
	return row
}

// parentOf is the block an option is written in ("asap sla window" →
// "asap sla"); "" for a directive or global option.
func parentOf(opt string) string {
	words := strings.Fields(opt)
	if len(words) <= 1 || (words[0] == globalPath && len(words) == 2) {
		return ""
	}
	return strings.Join(words[:len(words)-1], " ")
}

// TestConfigurationDocCoversEveryOption holds docs/configuration.md to
// the code. The Caddyfile options come from the parsers themselves (the
// same reader as TestCaddyfileAdaptGoldenCoversEveryOption): every
// directive and global option needs a section, every option a row in the
// section of its block, and every block a section of its own. The JSON
// fields come from the registered modules' structs by reflection: each
// needs a mention ("name" or `name`) in its block's section. Rows for
// options the parsers do not accept fail too, so the page cannot drift
// either way.
func TestConfigurationDocCoversEveryOption(t *testing.T) {
	opts, err := parserOptions("..")
	if err != nil {
		t.Fatal(err)
	}
	ref, err := readConfigReference(configDoc, opts)
	if err != nil {
		t.Fatal(err)
	}
	doc := filepath.ToSlash(filepath.Clean(configDoc))[3:] // docs/configuration.md
	var problems []string
	blocks := map[string]bool{}
	for o := range opts {
		if p := parentOf(o); p != "" {
			blocks[p] = true
		}
	}
	var names []string
	for o := range opts {
		names = append(names, o)
	}
	sort.Strings(names)
	for _, o := range names {
		at := opts[o]
		parent := parentOf(o)
		if parent == "" || blocks[o] {
			if ref.sections[o] == nil {
				problems = append(problems, fmt.Sprintf("`%s` (%s) has no section: add a heading whose first code span is its path, e.g. \"### `%s`\", with a table of its options",
					o, at, strings.TrimPrefix(o, globalPath+" ")))
			}
		}
		if parent == "" {
			continue
		}
		if _, ok := ref.rows[o]; ok {
			continue
		}
		kw := strings.Fields(o)[len(strings.Fields(o))-1]
		problems = append(problems, fmt.Sprintf("option `%s` (%s) is not documented: add a row \"| `%s <value>` | default | range | what it does | JSON field |\" to the table under the heading \"`%s`\"",
			o, at, kw, strings.TrimPrefix(parent, globalPath+" ")))
	}
	var rows []string
	for r := range ref.rows {
		rows = append(rows, r)
	}
	sort.Strings(rows)
	for _, r := range rows {
		if _, ok := opts[r]; ok {
			continue
		}
		if parent := parentOf(r); ref.rows[parent] == ref.rows[r] {
			continue // an argument keyword in its option's row ("alert webhook")
		}
		problems = append(problems, fmt.Sprintf("line %d documents `%s`, which no Caddyfile parser accepts: remove the row, or fix its name or section", ref.rows[r], r))
	}
	for path, s := range ref.sections {
		if _, ok := opts[path]; !ok {
			problems = append(problems, fmt.Sprintf("line %d: the section `%s` names no directive, global option or block the parsers accept", s.line, path))
		}
	}

	// JSON: the structs of the modules behind each directive and global
	// option, as Caddy builds them.
	roots := 0
	for _, o := range names {
		words := strings.Fields(o)
		var id string
		switch {
		case len(words) == 1:
			id = "http.handlers." + words[0]
		case len(words) == 2 && words[0] == globalPath:
			id = words[1]
		default:
			continue
		}
		mi, err := caddy.GetModule(id)
		if err != nil {
			problems = append(problems, fmt.Sprintf("`%s`: no module %s is registered (%v); teach this test where its JSON lives", o, id, err))
			continue
		}
		roots++
		problems = append(problems, jsonFieldsDocumented(ref, o, reflect.TypeOf(mi.New()), map[reflect.Type]bool{})...)
	}
	if roots < 4 { // asap, asap_api, asap_demo_agent, nats_server
		t.Fatalf("found the modules of %d directives and global options; is the test reading the right source?", roots)
	}
	for _, p := range problems {
		t.Errorf("%s: %s", doc, p)
	}
}

// jsonFieldsDocumented checks that every JSON field of t, and of the
// structs it holds, is mentioned in the section of its block: a nested
// struct's fields in the section named by its field ("sla" → `asap sla`,
// "alerts" → `asap alert`) when there is one, else in the parent's.
func jsonFieldsDocumented(ref *configReference, section string, t reflect.Type, seen map[reflect.Type]bool) []string {
	for t.Kind() == reflect.Pointer || t.Kind() == reflect.Slice || t.Kind() == reflect.Map {
		t = t.Elem()
	}
	if t.Kind() != reflect.Struct || seen[t] {
		return nil
	}
	seen[t] = true
	defer delete(seen, t)
	s := ref.sections[section]
	if s == nil {
		return nil // reported above
	}
	text := s.text.String()
	var problems []string
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		tag, hasTag := f.Tag.Lookup("json")
		name, _, _ := strings.Cut(tag, ",")
		if f.Anonymous && !hasTag {
			problems = append(problems, jsonFieldsDocumented(ref, section, f.Type, seen)...)
			continue
		}
		if name == "" || name == "-" {
			continue
		}
		if !strings.Contains(text, `"`+name+`"`) && !strings.Contains(text, "`"+name+"`") {
			problems = append(problems, fmt.Sprintf("the JSON field %q (%s.%s) is not mentioned under the heading \"`%s`\": give it in the JSON column of its option's row, as \"%s\": type",
				name, t.Name(), f.Name, strings.TrimPrefix(section, globalPath+" "), name))
		}
		sub := section
		for _, cand := range []string{section + " " + name, section + " " + strings.TrimSuffix(name, "s")} {
			if ref.sections[cand] != nil {
				sub = cand
				break
			}
		}
		problems = append(problems, jsonFieldsDocumented(ref, sub, f.Type, seen)...)
	}
	return problems
}
