package caddymodule

import (
	"bytes"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/spf13/cobra"

	"github.com/asap-sidecar/asap-sidecar/caddymodule/delegation"
	"github.com/asap-sidecar/asap-sidecar/internal/dirstate"
	"github.com/asap-sidecar/asap-sidecar/storage"
)

// The commands are tested as Caddy runs them: the registered 'asap'
// command builds its cobra tree, cobra parses the flags, and the cmdXxx
// function gets them as caddycmd.Flags.

// asapTree is the 'asap' command as Caddy builds it from its registration.
func asapTree(t testing.TB) *cobra.Command {
	t.Helper()
	c, ok := caddycmd.Commands()["asap"]
	if !ok {
		t.Fatal("no asap command registered")
	}
	cmd := &cobra.Command{Use: c.Name + " " + c.Usage, Short: c.Short, Long: c.Long}
	c.CobraFunc(cmd)
	return cmd
}

// cmdFlags parses args for the command at path ("delegation create") as
// cobra does before running it.
func cmdFlags(t testing.TB, path string, args ...string) caddycmd.Flags {
	t.Helper()
	sub, rest, err := asapTree(t).Find(strings.Fields(path))
	if err != nil || len(rest) != 0 || sub.Name() != strings.Fields(path)[len(strings.Fields(path))-1] {
		t.Fatalf("no command %q: %v %v", path, rest, err)
	}
	if err := sub.ParseFlags(args); err != nil {
		t.Fatalf("%s %v: %v", path, args, err)
	}
	if err := sub.ValidateArgs(sub.Flags().Args()); err != nil {
		t.Fatalf("%s %v: %v", path, args, err)
	}
	return caddycmd.Flags{FlagSet: sub.Flags()}
}

// run runs fn, the command at path, with args and -o into a fresh file,
// and returns its status, what it wrote and its error.
func run(t testing.TB, fn caddycmd.CommandFunc, path string, args ...string) (int, string, error) {
	t.Helper()
	out := filepath.Join(t.TempDir(), "out")
	code, err := fn(cmdFlags(t, path, append(args, "-o", out)...))
	b, rerr := os.ReadFile(out)
	if rerr != nil && !errors.Is(rerr, fs.ErrNotExist) {
		t.Fatal(rerr)
	}
	if (code == 0) != (err == nil) {
		t.Fatalf("%s: status %d with error %v", path, code, err)
	}
	return code, string(b), err
}

// keys makes an Ed25519 key pair with 'asap keygen' and returns the
// paths of the private and public PEM files.
func keys(t testing.TB, dir, name string) (priv, pub string) {
	t.Helper()
	if code, err := cmdKeygen(cmdFlags(t, "keygen", "--out", dir, "--name", name)); code != 0 || err != nil {
		t.Fatalf("keygen: %d %v", code, err)
	}
	return filepath.Join(dir, name+".key"), filepath.Join(dir, name+".pub")
}

func loadPub(t testing.TB, path string) ed25519.PublicKey {
	t.Helper()
	pub, err := delegation.LoadPublicKey(path)
	if err != nil {
		t.Fatal(err)
	}
	return pub
}

func TestEveryCommandHasHelpWithAnExample(t *testing.T) {
	var walk func(*cobra.Command)
	n := 0
	walk = func(c *cobra.Command) {
		n++
		path := strings.TrimPrefix(c.CommandPath(), asapTree(t).Name()+" ")
		if c.Short == "" || strings.TrimSpace(c.Long) == "" || c.Example == "" {
			t.Errorf("%q lacks Short, Long or Example", c.CommandPath())
		}
		if c.HasParent() && !strings.Contains(c.Example, "asap-caddy asap "+path) {
			t.Errorf("%q: the example does not show the command:\n%s", path, c.Example)
		}
		if !c.HasSubCommands() && c.RunE == nil {
			t.Errorf("%q runs nothing", path)
		}
		// --help prints the example.
		root := asapTree(t)
		var out bytes.Buffer
		root.SetOut(&out)
		args := append(strings.Fields(path), "--help")
		if !c.HasParent() {
			args = []string{"--help"}
		}
		root.SetArgs(args)
		if err := root.Execute(); err != nil {
			t.Errorf("%v: %v", args, err)
		}
		if !strings.Contains(out.String(), "Examples:\n"+c.Example) {
			t.Errorf("%v prints no example:\n%s", args, out.String())
		}
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(asapTree(t))
	if n < 13 {
		t.Fatalf("walked %d commands, want every one of asap, version, keygen, delegation {create,revoke,list,inspect}, usage export, audit {verify,export}", n)
	}
}

// claimsOf decodes a compact token's claims without checking it.
func claimsOf(t testing.TB, token string) map[string]any {
	t.Helper()
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		t.Fatalf("not a compact JWS: %q", token)
	}
	b, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

// An enterprise root mints for its agent with its key alone: no sidecar
// (the admin address is a closed port) and no database.
func TestOfflineCreateSignsWithTheGivenKey(t *testing.T) {
	dir := t.TempDir()
	priv, pub := keys(t, dir, "enterprise")
	code, out, err := run(t, cmdDelegationCreate, "delegation create",
		"--key", priv, "--delegator", "urn:asap:agent:enterprise", "--delegate", "urn:asap:agent:research",
		"--scopes", "task.execute, data.read", "--expires-in", "3600", "--max-tasks", "7", "--address", "127.0.0.1:1")
	if code != 0 {
		t.Fatalf("create: %v", err)
	}
	token := strings.TrimSpace(out)
	v := inspectVerifier(map[string]ed25519.PublicKey{"urn:asap:agent:enterprise": loadPub(t, pub)}, "")
	chain, rej := v.Verify(token)
	if rej != nil {
		t.Fatalf("the minted token does not verify with the public key: %v", rej)
	}
	l := chain.Leaf()
	c := l.Claims
	if c.Issuer != "urn:asap:agent:enterprise" || c.Audience != "urn:asap:agent:research" || strings.Join(c.Scopes, ",") != "task.execute,data.read" ||
		l.MaxTasks() != 7 || int64(*c.Expiry)-int64(*c.IssuedAt) != 3600 || !strings.HasPrefix(c.ID, "del_") || l.Alg != delegation.AlgEd25519 {
		t.Fatalf("claims %+v, max_tasks %d, alg %s", c, l.MaxTasks(), l.Alg)
	}
	if rej := v.CheckCall(chain, "urn:asap:agent:research", "urn:asap:agent:research", delegation.ScopeDataRead); rej != nil {
		t.Fatalf("the token does not grant what was asked: %v", rej)
	}
	// Another key does not verify it.
	_, other := keys(t, dir, "other")
	if _, rej := inspectVerifier(map[string]ed25519.PublicKey{"urn:asap:agent:enterprise": loadPub(t, other)}, "").Verify(token); rej == nil || rej.Reason != "bad_signature" {
		t.Fatalf("verified with another key: %v", rej)
	}
	// -o wrote a bearer credential: for its owner only.
	if st, err := os.Stat(filepath.Join(dir, "enterprise.key")); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("keygen's private key mode: %v %v", st, err)
	}
	outFile := filepath.Join(t.TempDir(), "token")
	if code, err := cmdDelegationCreate(cmdFlags(t, "delegation create", "-k", priv, "--issuer", "urn:asap:agent:enterprise", "-d", "urn:asap:agent:x", "-o", outFile)); code != 0 {
		t.Fatal(err)
	}
	if st, err := os.Stat(outFile); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("-o file: %v %v", st, err)
	}
}

// A delegate holding the root's token attenuates it offline with its own
// key, which the root bound with cnf: the sidecar needs only the root's key.
func TestOfflineCreateAttenuatesAParent(t *testing.T) {
	dir := t.TempDir()
	entKey, entPub := keys(t, dir, "enterprise")
	resKey, resPub := keys(t, dir, "research")
	_, root, err := run(t, cmdDelegationCreate, "delegation create", "--key", entKey, "--issuer", "urn:asap:agent:enterprise",
		"--delegate", "urn:asap:agent:research", "--scopes", "task.execute,data.read", "--max-tasks", "10", "--cnf-key", resPub)
	if err != nil {
		t.Fatal(err)
	}
	root = strings.TrimSpace(root)
	trust := "urn:asap:agent:enterprise=" + entPub
	// --issuer defaults to the parent's delegate.
	_, chainValue, err := run(t, cmdDelegationCreate, "delegation create", "--key", resKey, "--parent", root, "--trust", trust,
		"--delegate", "urn:asap:agent:worker", "--scopes", "data.read", "--max-tasks", "3")
	if err != nil {
		t.Fatal(err)
	}
	chainValue = strings.TrimSpace(chainValue)
	if !strings.HasSuffix(chainValue, ","+root) {
		t.Fatalf("the new token does not come with its parent chain: %s", chainValue)
	}
	v := inspectVerifier(map[string]ed25519.PublicKey{"urn:asap:agent:enterprise": loadPub(t, entPub)}, "urn:asap:agent:research")
	chain, rej := v.Verify(chainValue)
	if rej != nil {
		t.Fatalf("attenuated chain: %v", rej)
	}
	if leaf := chain.Leaf(); leaf.Claims.Issuer != "urn:asap:agent:research" || leaf.MaxTasks() != 3 {
		t.Fatalf("leaf %+v", leaf.Claims)
	}

	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"escalating a scope", []string{"--key", resKey, "--parent", root, "--trust", trust, "--delegate", "urn:asap:agent:worker", "--scopes", "data.write"}, "not granted by the parent"},
		{"more tasks than the parent", []string{"--key", resKey, "--parent", root, "--delegate", "urn:asap:agent:worker", "--max-tasks", "11"}, "exceeds the parent's 10"},
		{"a key the parent does not bind", []string{"--key", entKey, "--parent", root, "--delegate", "urn:asap:agent:worker"}, "the parent binds another key"},
		{"a parent the trust set does not verify", []string{"--key", resKey, "--parent", root, "--trust", "urn:asap:agent:enterprise=" + resPub, "--delegate", "urn:asap:agent:worker"}, "--parent does not verify"},
		{"a parent that cannot be read", []string{"--key", resKey, "--parent", "x.y", "--issuer", "urn:asap:agent:research", "--delegate", "urn:asap:agent:worker"}, "--parent: link 0 cannot be read"},
		{"an issuer the parent does not delegate to", []string{"--key", resKey, "--parent", root, "--issuer", "urn:asap:agent:other", "--delegate", "urn:asap:agent:worker"}, "cannot attenuate it"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, out, err := run(t, cmdDelegationCreate, "delegation create", tc.args...)
			if code == 0 || err == nil || !strings.Contains(err.Error(), tc.want) || out != "" {
				t.Fatalf("status %d, %v, output %q; want an error with %q and no output", code, err, out, tc.want)
			}
		})
	}
}

func TestCreateRefusesBadInputNamingTheFlag(t *testing.T) {
	dir := t.TempDir()
	priv, pub := keys(t, dir, "enterprise")
	ok := []string{"--key", priv, "--issuer", "urn:asap:agent:enterprise", "--delegate", "urn:asap:agent:research"}
	// set returns ok with flag name set to value (appended when new).
	set := func(name, value string) []string {
		args := append([]string{}, ok...)
		for i := 0; i < len(args); i += 2 {
			if args[i] == name {
				args[i+1] = value
				return args
			}
		}
		return append(args, name, value)
	}
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"no delegate", []string{"--key", priv, "--issuer", "urn:asap:agent:enterprise"}, "--delegate is required"},
		{"delegate not a URN", set("--delegate", "research"), `--delegate "research" is not an agent URN`},
		{"delegate in upper case", set("--delegate", "urn:asap:agent:Research"), "--delegate"},
		{"no issuer", []string{"--key", priv, "--delegate", "urn:asap:agent:research"}, "--issuer is required with --key"},
		{"issuer not a URN", set("--issuer", "enterprise"), `--issuer "enterprise" is not an agent URN`},
		{"unknown scope", set("--scopes", "task.execute,task.exec"), `--scopes: unknown scope "task.exec"`},
		{"no scope", set("--scopes", " , "), "--scopes must name at least one"},
		{"lifetime zero", set("--expires-in", "0"), "--expires-in must be between 1s and 365d"},
		{"lifetime over a year", set("--expires-in", "366d"), "--expires-in must be between 1s and 365d"},
		{"lifetime in seconds over a year", set("--expires-in", "31536001"), "--expires-in must be between"},
		{"lifetime not a duration", set("--expires-in", "soon"), "--expires-in: invalid duration"},
		{"negative max tasks", set("--max-tasks", "-2"), "--max-tasks must be"},
		{"no key file", set("--key", filepath.Join(dir, "none.key")), "--key: "},
		{"a public key to sign with", set("--key", pub), "--key: " + pub + " is a public key"},
		{"a cnf key that is no key", set("--cnf-key", priv+".nope"), "--cnf-key: "},
		{"trust without =", set("--trust", pub), "--trust takes URN=KEYFILE"},
		{"trust with a bad URN", set("--trust", "enterprise="+pub), `"enterprise" is not an agent URN`},
		{"a trust key file that is missing", set("--trust", "urn:asap:agent:enterprise="+filepath.Join(dir, "other.pub")), "--trust urn:asap:agent:enterprise"},
		{"issuer without key", []string{"--issuer", "urn:asap:agent:enterprise", "--delegate", "urn:asap:agent:research", "--address", "127.0.0.1:1"}, "--issuer is for offline minting with --key"},
		{"trust without key", []string{"--trust", "urn:asap:agent:enterprise=" + pub, "--delegate", "urn:asap:agent:research", "--address", "127.0.0.1:1"}, "--trust is for offline minting with --key"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, out, err := run(t, cmdDelegationCreate, "delegation create", tc.args...)
			if code == 0 || err == nil || !strings.Contains(err.Error(), tc.want) || out != "" {
				t.Fatalf("status %d, %v, output %q; want an error with %q and no output", code, err, out, tc.want)
			}
		})
	}
	// The trusted key of the issuer must be the signing key.
	keys(t, dir, "other")
	if _, _, err := run(t, cmdDelegationCreate, "delegation create", set("--trust", "urn:asap:agent:enterprise="+filepath.Join(dir, "other.pub"))...); err == nil || !strings.Contains(err.Error(), "--key is not the key --trust gives") {
		t.Fatalf("mismatched --trust: %v", err)
	}
	// Without --key, a sidecar that is not there is named.
	if _, _, err := run(t, cmdDelegationCreate, "delegation create", "--delegate", "urn:asap:agent:research", "--address", "127.0.0.1:1"); err == nil || !strings.Contains(err.Error(), "is it running?") {
		t.Fatalf("create without a sidecar: %v", err)
	}
}

// tamper replaces the claims of a chain's first token, keeping its
// signature: a forgery.
func tamper(t testing.TB, chain string, change func(map[string]any)) string {
	t.Helper()
	token, rest, _ := strings.Cut(chain, ",")
	if rest != "" {
		rest = "," + rest
	}
	c := claimsOf(t, token)
	change(c)
	b, err := json.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	parts := strings.Split(token, ".")
	return parts[0] + "." + base64.RawURLEncoding.EncodeToString(b) + "." + parts[2] + rest
}

// verdicts are the per-link verdict lines of an inspect report.
func verdicts(out string) []string {
	var v []string
	lines := strings.Split(out, "\n")
	for i, line := range lines {
		f := strings.Fields(line)
		if len(f) < 2 || f[0] != "verdict" {
			continue
		}
		if f[1] == "ok" {
			v = append(v, "ok")
			continue
		}
		var reasons []string
		for _, next := range lines[i+1:] {
			if !strings.HasPrefix(next, "               ") {
				break
			}
			reasons = append(reasons, strings.SplitN(strings.TrimSpace(next), ":", 2)[0])
		}
		v = append(v, strings.Join(reasons, "+"))
	}
	return v
}

func TestInspectShowsEachLinksVerdict(t *testing.T) {
	dir := t.TempDir()
	entKey, entPub := keys(t, dir, "enterprise")
	resKey, resPub := keys(t, dir, "research")
	ent, err := delegation.LoadPrivateKey(entKey)
	if err != nil {
		t.Fatal(err)
	}
	res, err := delegation.LoadPrivateKey(resKey)
	if err != nil {
		t.Fatal(err)
	}
	limit := int64(10)
	root, err := delegation.Mint(delegation.Grant{Issuer: "urn:asap:agent:enterprise", Delegate: "urn:asap:agent:research",
		Scopes: []string{"task.execute", "data.read"}, MaxTasks: &limit, CnfJWK: delegation.PublicJWK(res.Public().(ed25519.PublicKey))}, ent)
	if err != nil {
		t.Fatal(err)
	}
	parent, _ := delegation.ParseLink(root.Token)
	child := func(now time.Time, ttl time.Duration) string {
		m, err := delegation.Mint(delegation.Grant{Issuer: "urn:asap:agent:research", Delegate: "urn:asap:agent:worker",
			Scopes: []string{"data.read"}, TTL: ttl, Parent: &delegation.Chain{Links: []*delegation.Link{parent}}, Now: now}, res)
		if err != nil {
			t.Fatal(err)
		}
		return m.Chain
	}
	good := child(time.Now(), time.Hour)
	trust := "urn:asap:agent:enterprise=" + entPub
	// Where Verify would stop at the forged leaf, the expired root of
	// another chain shows too.
	expiredRoot, err := delegation.Mint(delegation.Grant{Issuer: "urn:asap:agent:enterprise", Delegate: "urn:asap:agent:research",
		Scopes: []string{"*"}, TTL: time.Hour, Now: time.Now().Add(-3 * time.Hour)}, ent)
	if err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		name     string
		args     []string
		verdicts []string
		last     string
	}{
		{"good chain", []string{good, "--trust", trust}, []string{"ok", "ok"}, "VALID: signatures, times and attenuation check out (revocation"},
		{"forged leaf", []string{tamper(t, good, func(c map[string]any) { c["scp"] = []string{"task.execute"} }), "--trust", trust},
			[]string{"bad_signature", "ok"}, "REJECTED (bad_signature)"},
		{"forged root", []string{tamper(t, root.Token, func(c map[string]any) { c["x-asap-constraints"] = map[string]any{"max_tasks": 1000} }), "--trust", trust},
			[]string{"bad_signature"}, "REJECTED (bad_signature)"},
		{"expired leaf", []string{child(time.Now().Add(-2*time.Hour), time.Hour), "--trust", trust}, []string{"expired", "ok"}, "REJECTED (expired)"},
		{"expired and forged", []string{tamper(t, expiredRoot.Token, func(c map[string]any) { c["aud"] = "urn:asap:agent:mallory" }), "--trust", trust},
			[]string{"bad_signature+expired"}, "REJECTED (bad_signature)"},
		{"unknown issuer", []string{good, "--trust", "urn:asap:agent:research=" + resPub}, []string{"ok", "untrusted_issuer"}, "REJECTED (untrusted_issuer)"},
		{"the call checked", []string{good, "--trust", trust, "--self", "urn:asap:agent:research", "--sender", "urn:asap:agent:worker", "--action", "data.read"},
			[]string{"ok", "ok"}, "VALID: signatures, times and attenuation check out; urn:asap:agent:worker may ask urn:asap:agent:research for data.read"},
		{"an action the chain does not grant", []string{good, "--trust", trust, "--self", "urn:asap:agent:research", "--sender", "urn:asap:agent:worker"},
			[]string{"ok", "ok"}, "REJECTED (action_not_granted)"},
		{"a sender the chain is not for", []string{good, "--trust", trust, "--sender", "urn:asap:agent:mallory", "--action", "data.read"},
			[]string{"ok", "ok"}, "REJECTED (sender_not_audience)"},
		{"a call to another agent", []string{good, "--trust", trust, "--self", "urn:asap:agent:research", "--recipient", "urn:asap:agent:other", "--sender", "urn:asap:agent:worker", "--action", "data.read"},
			[]string{"ok", "ok"}, "REJECTED (recipient_mismatch)"},
		{"decoded only", []string{good}, []string{"ok", "ok"}, "NOT VERIFIED: decoded only"},
		{"decoded only, expired", []string{child(time.Now().Add(-2*time.Hour), time.Hour)}, []string{"expired", "ok"}, "REJECTED (expired)"},
		{"decoded only, a forged link its parent binds the key of", []string{tamper(t, good, func(c map[string]any) { c["scp"] = []string{"*"} })},
			[]string{"bad_signature+scope_escalation", "ok"}, "REJECTED (bad_signature)"},
		{"a broken link", []string{"abc," + root.Token, "--trust", trust}, []string{"not_compact_jws", "ok"}, "REJECTED (not_compact_jws)"},
		{"no token", []string{" ", "--trust", trust}, nil, "REJECTED (missing_token)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, out, err := run(t, cmdDelegationInspect, "delegation inspect", tc.args...)
			if got := verdicts(out); strings.Join(got, " ") != strings.Join(tc.verdicts, " ") {
				t.Errorf("verdicts %v, want %v:\n%s", got, tc.verdicts, out)
			}
			lines := strings.Split(strings.TrimSpace(out), "\n")
			if !strings.HasPrefix(lines[len(lines)-1], tc.last) {
				t.Errorf("last line %q, want %q", lines[len(lines)-1], tc.last)
			}
			rejected := strings.HasPrefix(tc.last, "REJECTED")
			if rejected != (code != 0) || rejected != errors.Is(err, errChainRejected) {
				t.Errorf("status %d, %v; rejected: %t", code, err, rejected)
			}
		})
	}

	// Every link shows its claims.
	_, out, _ := run(t, cmdDelegationInspect, "delegation inspect", good, "--trust", trust)
	rootLink, _ := delegation.ParseLink(root.Token)
	for _, want := range []string{
		"0 leaf del_", "urn:asap:agent:research delegates to urn:asap:agent:worker", "scopes      data.read", "max_tasks   10",
		"parent      link 1 (prf names its hash)", "key         the key its parent binds (cnf.jwk): signature valid",
		"1 root " + rootLink.Claims.ID, "urn:asap:agent:enterprise delegates to urn:asap:agent:research", "scopes      task.execute data.read",
		"parent      none: the root of its chain", "binds       the delegate's key " + delegation.Thumbprint(res.Public().(ed25519.PublicKey)),
		"key         the trusted key of urn:asap:agent:enterprise: signature valid",
		"expires     " + time.Unix(int64(*rootLink.Claims.Expiry), 0).UTC().Format(time.RFC3339) + " (in ",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("report lacks %q:\n%s", want, out)
		}
	}
}

func TestInspectRefusesBadFlags(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"x", "--trust", "urn:asap:agent:a"}, "--trust takes URN=KEYFILE"},
		{[]string{"x", "--trust", "urn:asap:agent:a=/no/such.pub"}, "--trust urn:asap:agent:a: "},
		{[]string{"x", "--self", "research"}, `--self "research" is not an agent URN`},
		{[]string{"x", "--sender", "urn:asap:agent:A"}, "--sender"},
		{[]string{"x", "--action", "run"}, `--action: unknown scope "run"`},
		{[]string{"x", "--db", filepath.Join(t.TempDir(), "none")}, "holds no database"},
	} {
		code, out, err := run(t, cmdDelegationInspect, "delegation inspect", tc.args...)
		if code == 0 || err == nil || !strings.Contains(err.Error(), tc.want) || out != "" {
			t.Errorf("%v: status %d, %v, output %q; want an error with %q", tc.args, code, err, out, tc.want)
		}
	}
}

func TestReadTokenArg(t *testing.T) {
	for _, arg := range []string{"", "-"} {
		got, err := readTokenArg(arg, strings.NewReader("  a.b.c\n"))
		if err != nil || got != "a.b.c" {
			t.Errorf("readTokenArg(%q): %q %v", arg, got, err)
		}
	}
	if got, err := readTokenArg(" a.b.c ", strings.NewReader("not read")); err != nil || got != "a.b.c" {
		t.Errorf("argument: %q %v", got, err)
	}
	if _, err := readTokenArg("-", strings.NewReader(strings.Repeat("a", maxTokenInput+1))); err == nil || !strings.Contains(err.Error(), "over") {
		t.Errorf("oversized stdin: %v", err)
	}
	if got, err := readTokenArg("-", strings.NewReader(strings.Repeat("a", maxTokenInput))); err != nil || len(got) != maxTokenInput {
		t.Errorf("stdin at the limit: %d %v", len(got), err)
	}
}

// The commands against a running sidecar (through its admin API) and
// against its database once stopped (--db): the reading ones leave every
// file of the database as it was.
func TestCommandsOnRunningAndStoppedSidecar(t *testing.T) {
	keyDir := t.TempDir()
	priv, pub := keys(t, keyDir, "demo")
	s := newSidecar(t, "", requireOpts+"\nkey "+priv, "")
	s.start()
	addr := []string{"--address", s.adminAddr}

	_, token, err := run(t, cmdDelegationCreate, "delegation create", append(addr, "--delegate", "urn:asap:agent:client", "--scopes", "task.execute", "--max-tasks", "5", "--expires-in", "1h")...)
	if err != nil {
		t.Fatal(err)
	}
	token = strings.TrimSpace(token)
	if a := callWith(t, s.url, token, envelope("01JCLI0000000000000000001", "echo", `{}`)); a.Error != nil {
		t.Fatalf("the token the command minted is refused: %+v", a.Error)
	}
	leaf, _ := delegation.ParseLink(token)
	id := leaf.Claims.ID
	if _, out, err := run(t, cmdDelegationList, "delegation list", append(addr, "--json")...); err != nil || !strings.Contains(out, `"id":"`+id+`"`) || !strings.Contains(out, `"active":true`) {
		t.Fatalf("list: %v %s", err, out)
	}
	if _, out, err := run(t, cmdAuditVerify, "audit verify", addr...); err != nil || !strings.HasPrefix(out, "valid: ") {
		t.Fatalf("audit verify: %v %s", err, out)
	}
	if _, out, err := run(t, cmdUsageExport, "usage export", addr...); err != nil || !strings.Contains(out, "urn:asap:agent:client") {
		t.Fatalf("usage export: %v %s", err, out)
	}
	// An id neither minted nor seen is likely a typo: refused unless --force.
	if code, err := cmdDelegationRevoke(cmdFlags(t, "delegation revoke", append(addr, "del_unknown")...)); code == 0 || err == nil || !strings.Contains(err.Error(), "--force revokes it anyway") {
		t.Fatalf("revoke of an unknown id: %d %v", code, err)
	}
	if code, err := cmdDelegationRevoke(cmdFlags(t, "delegation revoke", append(addr, "--force", "del_unknown")...)); code != 0 {
		t.Fatalf("revoke --force: %v", err)
	}
	// A running sidecar holds its database.
	if _, _, err := run(t, cmdAuditVerify, "audit verify", "--db", s.dir); err == nil || !strings.Contains(err.Error(), "drop --db") {
		t.Fatalf("--db of a running sidecar: %v", err)
	}
	if err := caddy.Stop(); err != nil {
		t.Fatal(err)
	}

	before := dirstate.Of(t, s.dir)
	db := []string{"--db", s.dir}
	if _, out, err := run(t, cmdDelegationList, "delegation list", append(db, "--all")...); err != nil || !strings.Contains(out, id) || !strings.Contains(out, "STATE") {
		t.Fatalf("list --db: %v %s", err, out)
	}
	if _, out, err := run(t, cmdAuditVerify, "audit verify", db...); err != nil || !strings.HasPrefix(out, "valid: ") {
		t.Fatalf("audit verify --db: %v %s", err, out)
	}
	if _, out, err := run(t, cmdAuditExport, "audit export", append(db, "--format", "jsonl")...); err != nil || !strings.Contains(out, `"operation":"delegation.created"`) {
		t.Fatalf("audit export --db: %v %s", err, out)
	}
	if _, out, err := run(t, cmdUsageExport, "usage export", append(db, "--format", "json")...); err != nil || !strings.Contains(out, `"consumer_id":"urn:asap:agent:client"`) {
		t.Fatalf("usage export --db: %v %s", err, out)
	}
	trust := "urn:asap:agent:demo=" + pub
	if _, out, err := run(t, cmdDelegationInspect, "delegation inspect", append(db, token, "--trust", trust)...); err != nil || !strings.Contains(out, "no link is revoked in "+s.dir) {
		t.Fatalf("inspect --db: %v %s", err, out)
	}
	dirstate.Same(t, before, dirstate.Of(t, s.dir))

	// revoke --db writes; inspect --db then sees it.
	if code, err := cmdDelegationRevoke(cmdFlags(t, "delegation revoke", append(db, "del_other")...)); code == 0 || err == nil || !strings.Contains(err.Error(), "--force revokes it anyway") {
		t.Fatalf("revoke --db of an unknown id: %d %v", code, err)
	}
	if code, err := cmdDelegationRevoke(cmdFlags(t, "delegation revoke", append(db, id)...)); code != 0 {
		t.Fatalf("revoke --db: %v", err)
	}
	code, out, err := run(t, cmdDelegationInspect, "delegation inspect", append(db, token, "--trust", trust)...)
	if code == 0 || !errors.Is(err, errChainRejected) || strings.Join(verdicts(out), " ") != "revoked" || !strings.Contains(out, "REJECTED (revoked)") {
		t.Fatalf("inspect of a revoked token: %d %v\n%s", code, err, out)
	}
}

// A database left by a crash is not recovered by a reading command: it
// says what to do.
func TestReadingCommandsNameACrashedDatabase(t *testing.T) {
	dir := t.TempDir()
	db, err := storage.Open(storage.Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	l, err := delegation.OpenLedger(db)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.Revoke(t.Context(), "del_x", time.Now()); err != nil {
		t.Fatal(err)
	}
	crashed := t.TempDir()
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if e.Name() == "LOCK" {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(crashed, e.Name()), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	db.Close()
	before := dirstate.Of(t, crashed)
	_, _, err = run(t, cmdDelegationList, "delegation list", "--db", crashed)
	if !errors.Is(err, storage.ErrNotClosedCleanly) || !strings.Contains(err.Error(), "stop it with SIGTERM") {
		t.Fatalf("list --db of a crashed database: %v", err)
	}
	dirstate.Same(t, before, dirstate.Of(t, crashed))
}

func TestExportAndVerifyRefuseBadFlags(t *testing.T) {
	for _, tc := range []struct {
		fn   caddycmd.CommandFunc
		path string
		args []string
		want string
	}{
		{cmdUsageExport, "usage export", []string{"--format", "xml"}, "--format must be csv or json"},
		{cmdUsageExport, "usage export", []string{"--since", "last tuesday"}, "--since: "},
		{cmdUsageExport, "usage export", []string{"--since", "today", "--until", "yesterday"}, "--until (20"},
		{cmdUsageExport, "usage export", []string{"--group-by", "month"}, "--group-by must be consumer, agent, day or week"},
		{cmdUsageExport, "usage export", []string{"--limit", "0"}, "--limit must be"},
		{cmdAuditExport, "audit export", []string{"--format", "xml"}, "--format must be json, jsonl or csv"},
		{cmdAuditVerify, "audit verify", []string{"--vkey", "x"}, "--vkey goes with --db"},
		{cmdAuditVerify, "audit verify", []string{"--db", t.TempDir(), "--vkey", "not a key"}, "--vkey: "},
	} {
		code, _, err := run(t, tc.fn, tc.path, tc.args...)
		if code == 0 || err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s %v: %d %v, want %q", tc.path, tc.args, code, err, tc.want)
		}
	}
	out := t.TempDir()
	if code, err := cmdKeygen(cmdFlags(t, "keygen", "--out", out, "--name", "a/b")); code == 0 || err == nil || !strings.Contains(err.Error(), "--name must be a file name") {
		t.Errorf("keygen --name a/b: %d %v", code, err)
	}
	if ents, _ := os.ReadDir(out); len(ents) != 0 {
		t.Errorf("keygen --name a/b wrote %d files", len(ents))
	}
}

// Cobra runs the cmdXxx functions: an offline create through the tree,
// its exit status and its -o file.
func TestCommandsRunThroughCobra(t *testing.T) {
	dir := t.TempDir()
	priv, _ := keys(t, dir, "root")
	out := filepath.Join(dir, "token")
	root := asapTree(t)
	root.SetArgs([]string{"delegation", "create", "--key", priv, "--issuer", "urn:asap:agent:root", "--delegate", "urn:asap:agent:a", "-o", out})
	if err := root.Execute(); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(out); err != nil || strings.Count(string(b), ".") != 2 {
		t.Fatalf("token file: %q %v", b, err)
	}
	root = asapTree(t)
	root.SilenceUsage = true // as Caddy's root command
	root.SetArgs([]string{"delegation", "inspect", "a.b.c", "--trust", "urn:asap:agent:root=" + filepath.Join(dir, "root.pub"), "-o", out})
	root.SetErr(&bytes.Buffer{})
	if err := root.Execute(); !errors.Is(err, errChainRejected) {
		t.Fatalf("inspect of a bad token through cobra: %v", err)
	}
}

func TestInspectTimesSayHowFar(t *testing.T) {
	now := time.Unix(1_800_000_000, 400_000_000)
	in := inspection{now: now}
	for sec, want := range map[int64]string{
		now.Unix():        "2027-01-15T08:00:00Z (now)",
		now.Unix() + 90:   "2027-01-15T08:01:30Z (in 1m30s)",
		now.Unix() - 7200: "2027-01-15T06:00:00Z (2h0m0s ago)",
	} {
		if got := in.when(sec); got != want {
			t.Errorf("when(%d) = %q, want %q", sec, got, want)
		}
	}
}

// Finding the admin API from --config names what went wrong with it.
func TestAdminAddressFromABadConfig(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "Caddyfile")
	if err := os.WriteFile(bad, []byte("{\n\tadmin\n"), 0o600); err != nil { // unterminated block
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--config", filepath.Join(dir, "missing")}, "--config: "},
		{[]string{"--config", bad, "--adapter", "yaml-ish"}, `unknown config adapter "yaml-ish"`},
		{[]string{"--config", bad}, "--config " + bad},
	} {
		if _, err := adminAddress(cmdFlags(t, "status", tc.args...)); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: %v, want %q", tc.args, err, tc.want)
		}
	}
	if got := adminSource(cmdFlags(t, "status")); !strings.Contains(got, "neither --address nor --config") {
		t.Errorf("adminSource without flags: %q", got)
	}
	if got := adminSource(cmdFlags(t, "status", "--config", bad)); got != "from --config "+bad {
		t.Errorf("adminSource with --config: %q", got)
	}
}
