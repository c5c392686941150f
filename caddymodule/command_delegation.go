package caddymodule

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/caddyserver/caddy/v2"
	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"go.uber.org/zap"

	"github.com/asap-sidecar/asap-sidecar/caddymodule/api"
	"github.com/asap-sidecar/asap-sidecar/caddymodule/delegation"
	"github.com/asap-sidecar/asap-sidecar/caddymodule/protocol"
	"github.com/asap-sidecar/asap-sidecar/config"
)

// --- keygen -----------------------------------------------------------------

func keygenCommand() *cobra.Command {
	return command(cobra.Command{
		Use:   "keygen",
		Short: "Generate an Ed25519 key pair (PEM and JWK)",
		Long: `
Writes NAME.key (PKCS#8 PEM, mode 0600), NAME.jwk (private JWK, 0600),
NAME.pub (PKIX PEM) and NAME.pub.jwk into --out, and prints the key's
RFC 7638 thumbprint. Give the private key to the sidecar with 'key' (or to
'delegation create --key'), and the public key to verifiers with 'trust'.
Existing files are kept unless --force.`,
		Example: `  asap-caddy asap keygen --out /etc/asap --name research
  asap-caddy asap keygen --out ./keys --name enterprise --force`,
		Args: cobra.NoArgs,
	}, cmdKeygen, func(fs *pflag.FlagSet) {
		fs.String("out", ".", "directory to write the files into")
		fs.String("name", "agent", "base name of the files")
		fs.Bool("force", false, "replace existing files")
	})
}

func cmdKeygen(fl caddycmd.Flags) (int, error) {
	out, name := fl.String("out"), fl.String("name")
	if name == "" || strings.ContainsRune(name, os.PathSeparator) {
		return exitFailure, fmt.Errorf("--name must be a file name without a directory, not %q (the directory is --out)", name)
	}
	key, err := delegation.GenerateKey()
	if err != nil {
		return exitFailure, err
	}
	pub := key.Public().(ed25519.PublicKey)
	privPEM, err := delegation.PrivatePEM(key)
	if err != nil {
		return exitFailure, err
	}
	pubPEM, err := delegation.PublicPEM(pub)
	if err != nil {
		return exitFailure, err
	}
	files := []struct {
		name string
		data []byte
		mode os.FileMode
	}{
		{name + ".key", privPEM, 0o600},
		{name + ".jwk", append(delegation.PrivateJWK(key), '\n'), 0o600},
		{name + ".pub", pubPEM, 0o644},
		{name + ".pub.jwk", append(delegation.PublicJWK(pub), '\n'), 0o644},
	}
	if err := os.MkdirAll(out, 0o700); err != nil {
		return exitFailure, fmt.Errorf("--out: %w", err)
	}
	for _, f := range files {
		path := filepath.Join(out, f.name)
		flags := os.O_WRONLY | os.O_CREATE | os.O_EXCL
		if fl.Bool("force") {
			flags = os.O_WRONLY | os.O_CREATE | os.O_TRUNC
		}
		fh, err := os.OpenFile(path, flags, f.mode)
		if errors.Is(err, os.ErrExist) {
			return exitFailure, fmt.Errorf("%s exists; use --force to replace it", path)
		}
		if err != nil {
			return exitFailure, err
		}
		_, werr := fh.Write(f.data)
		if err := errors.Join(werr, fh.Close()); err != nil {
			return exitFailure, err
		}
		fmt.Println("wrote", path)
	}
	fmt.Println("thumbprint (RFC 7638):", delegation.Thumbprint(pub))
	return 0, nil
}

// --- delegation ---------------------------------------------------------------

func delegationCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "delegation",
		Short: "Create, list, revoke and inspect delegation tokens",
		Long: `
Delegation tokens authorise calls to the guarded agent: compact JWTs
signed with Ed25519, alone or as chains in which each delegate re-delegates
a narrower slice. 'create' mints one (offline with --key), 'inspect'
explains a chain and checks it against a trust set, 'list' and 'revoke'
manage the tokens a sidecar minted or saw.`,
		Example: `  asap-caddy asap delegation create --key enterprise.key --issuer urn:asap:agent:enterprise \
      --delegate urn:asap:agent:research --scopes task.execute --expires-in 30d
  asap-caddy asap delegation inspect "$TOKEN" --trust urn:asap:agent:enterprise=enterprise.pub`,
	}
	cmd.AddCommand(delegationCreateCommand(), delegationRevokeCommand(), delegationListCommand(), delegationInspectCommand())
	return cmd
}

func delegationCreateCommand() *cobra.Command {
	cmd := command(cobra.Command{
		Use:   "create --delegate URN [--key FILE --issuer URN] [flags]",
		Short: "Mint a delegation token: offline with --key, else by the running sidecar",
		Long: `
Mints a delegation token and prints it; with --parent, the new token is
followed by its parent chain, ready for the X-ASAP-Delegation-Token header.
Its id (for 'delegation revoke'), expiry, scopes and task limit go to
stderr, so stdout holds the token alone; with --json, stdout is one JSON
object holding all of them.

Offline, with --key FILE (an Ed25519 private key, PEM or JWK as 'asap
keygen' writes it) and --issuer URN (--delegator, as the reference CLI
names it), the token is signed here: no sidecar or database is involved
and nothing is recorded, so 'delegation list' will not show it. This is
how an enterprise root mints for its agents; the sidecars that verify its
tokens are given its public key with 'trust URN FILE'. With --parent,
--issuer defaults to the parent's delegate, and --trust URN=FILE (the
root's public key) checks the parent chain before attenuating it.

Without --key, the running sidecar mints with its agent key, records the
token and audits it.

--expires-in takes a duration (90m, 24h, 30d) or a number of seconds, as
the reference CLI does; at most 365d, and never past a parent's expiry.
--scopes is a comma-separated list of task.execute, task.cancel,
data.read, data.write, or * (everything).`,
		Example: `  asap-caddy asap delegation create --delegate urn:asap:agent:client --scopes task.execute --max-tasks 100 --expires-in 24h
  asap-caddy asap delegation create --key enterprise.key --issuer urn:asap:agent:enterprise \
      --delegate urn:asap:agent:research --scopes 'task.execute,data.read' --expires-in 30d -o research.jwt
  asap-caddy asap delegation create --key research.key --parent "$(cat research.jwt)" \
      --delegate urn:asap:agent:worker --scopes data.read --max-tasks 10 \
      --trust urn:asap:agent:enterprise=enterprise.pub`,
		Args: cobra.NoArgs,
	}, cmdDelegationCreate, func(fs *pflag.FlagSet) {
		fs.StringP("delegate", "d", "", "URN of the agent the token delegates to (required)")
		fs.StringP("scopes", "s", delegation.ScopeTaskExecute, "comma-separated scopes: task.execute, task.cancel, data.read, data.write, *")
		fs.String("expires-in", "24h", "lifetime: a duration (24h, 30d) or seconds; at most 365d")
		fs.Int64("max-tasks", -1, "task limit (-1: none of its own; under a limited parent, the parent's)")
		fs.String("parent", "", "a token chain delegated to the issuer, to attenuate")
		fs.String("cnf-key", "", "the delegate's public key file (PEM or JWK), bound with cnf so it can re-delegate")
		fs.StringP("key", "k", "", "sign offline with this Ed25519 private key (PEM or JWK) instead of asking the sidecar")
		fs.String("issuer", "", "with --key: URN of the signer (the delegator); also --delegator")
		fs.StringArray("trust", nil, "with --key and --parent: URN=KEYFILE of a trusted issuer, to check the parent (repeatable)")
		fs.Bool("json", false, "print the token with its id, expiry and limits as JSON")
		addAdminFlags(fs)
		addOutputFlag(fs)
	})
	// The reference CLI calls the issuer --delegator.
	cmd.Flags().SetNormalizeFunc(func(_ *pflag.FlagSet, name string) pflag.NormalizedName {
		if name == "delegator" {
			name = "issuer"
		}
		return pflag.NormalizedName(name)
	})
	return cmd
}

func cmdDelegationCreate(fl caddycmd.Flags) (int, error) {
	delegate := fl.String("delegate")
	switch {
	case delegate == "":
		return exitFailure, errors.New("--delegate is required: the URN of the agent the token is for")
	case !protocol.ValidURN(delegate):
		return exitFailure, fmt.Errorf("--delegate %q is not an agent URN (urn:asap:agent:name[:sub], lower case)", delegate)
	}
	scopes, err := flagScopes(fl.String("scopes"))
	if err != nil {
		return exitFailure, err
	}
	ttl, err := flagLifetime(fl.String("expires-in"))
	if err != nil {
		return exitFailure, err
	}
	maxTasks, err := fl.GetInt64("max-tasks")
	if err != nil || maxTasks < -1 {
		return exitFailure, errors.New("--max-tasks must be a number of tasks ≥ 0, or -1 for no limit of its own")
	}
	var limit *int64
	if maxTasks >= 0 {
		limit = &maxTasks
	}
	var cnf json.RawMessage
	if file := fl.String("cnf-key"); file != "" {
		pub, err := delegation.LoadPublicKey(file)
		if err != nil {
			return exitFailure, fmt.Errorf("--cnf-key: %w", err)
		}
		cnf = delegation.PublicJWK(pub)
	}

	var token string
	if fl.String("key") != "" {
		m, err := mintOffline(fl, delegation.Grant{Delegate: delegate, Scopes: scopes, TTL: ttl, MaxTasks: limit, CnfJWK: cnf})
		if err != nil {
			return exitFailure, err
		}
		token = m.Chain
	} else {
		for _, name := range []string{"issuer", "trust"} {
			if fl.Changed(name) {
				return exitFailure, fmt.Errorf("--%s is for offline minting with --key; a running sidecar signs as its own agent", name)
			}
		}
		req := api.MintRequest{Delegate: delegate, Scopes: scopes, ExpiresInSeconds: int64(ttl / time.Second), MaxTasks: limit, Parent: fl.String("parent"), CnfJWK: cnf}
		body, err := json.Marshal(req)
		if err != nil {
			return exitFailure, err
		}
		resp, err := adminRequest(fl, http.MethodPost, "/asap/delegations", body)
		if err != nil {
			return exitFailure, err
		}
		defer resp.Body.Close()
		var out struct{ Token string }
		if err := json.NewDecoder(resp.Body).Decode(&out); err != nil || out.Token == "" {
			return exitFailure, fmt.Errorf("reading the sidecar's answer: no token in it (%v)", err)
		}
		token = out.Token
	}
	leaf, rej := delegation.ParseLink(strings.SplitN(token, ",", 2)[0])
	if rej != nil {
		return exitFailure, fmt.Errorf("reading the minted token: %s", rej.Error())
	}
	m := mintedOf(token, leaf)
	return withOutput(fl, func(w io.Writer) (int, error) {
		if fl.Bool("json") {
			return status(json.NewEncoder(w).Encode(m))
		}
		if _, err := fmt.Fprintln(w, token); err != nil {
			return exitFailure, err
		}
		limit := "no task limit"
		if m.MaxTasks != nil {
			limit = fmt.Sprintf("max_tasks %d", *m.MaxTasks)
		}
		_, err := fmt.Fprintf(stderr, "minted %s for %s: scopes %s, %s, expires %s (in %s)\nrevoke it with: asap-caddy asap delegation revoke %s\n",
			m.ID, m.Delegate, strings.Join(m.Scopes, ","), limit, m.ExpiresAt.Format(time.RFC3339), m.ExpiresAt.Sub(now()).Round(time.Second), m.ID)
		return status(err)
	})
}

// stderr is where commands write what goes beside their result; tests
// set it.
var stderr io.Writer = os.Stderr

// mintedToken is what 'delegation create --json' prints.
type mintedToken struct {
	Token     string    `json:"token"`
	ID        string    `json:"id"`
	Delegator string    `json:"delegator"`
	Delegate  string    `json:"delegate"`
	Scopes    []string  `json:"scopes"`
	ExpiresAt time.Time `json:"expires_at"`
	MaxTasks  *int64    `json:"max_tasks"`
}

func mintedOf(token string, leaf *delegation.Link) mintedToken {
	c := leaf.Claims
	m := mintedToken{Token: token, ID: c.ID, Delegator: c.Issuer, Delegate: string(c.Audience), Scopes: c.Scopes}
	if c.Expiry != nil {
		m.ExpiresAt = time.Unix(int64(*c.Expiry), 0).UTC()
	}
	if n := leaf.MaxTasks(); n >= 0 {
		m.MaxTasks = &n
	}
	return m
}

// mintOffline signs g with --key as --issuer, attenuating --parent.
func mintOffline(fl caddycmd.Flags, g delegation.Grant) (*delegation.Minted, error) {
	file := fl.String("key")
	key, err := delegation.LoadPrivateKey(file)
	if err != nil {
		return nil, fmt.Errorf("--key: %w", err)
	}
	if st, err := os.Stat(file); err == nil && st.Mode().Perm()&0o077 != 0 {
		caddy.Log().Warn("the signing key can be read by other users; restrict it to its owner (chmod 600)",
			zap.String("key", file), zap.String("mode", st.Mode().Perm().String()))
	}
	trusted, err := flagTrust(fl)
	if err != nil {
		return nil, err
	}
	if parent := fl.String("parent"); parent != "" {
		if g.Parent, err = offlineParent(parent, trusted); err != nil {
			return nil, err
		}
	}
	g.Issuer = fl.String("issuer")
	switch {
	case g.Issuer == "" && g.Parent != nil:
		g.Issuer = string(g.Parent.Leaf().Claims.Audience)
	case g.Issuer == "":
		return nil, errors.New("--issuer is required with --key: the URN of the agent whose key signs")
	case !protocol.ValidURN(g.Issuer):
		return nil, fmt.Errorf("--issuer %q is not an agent URN (urn:asap:agent:name[:sub], lower case)", g.Issuer)
	}
	if pub, ok := trusted[g.Issuer]; ok && !pub.Equal(key.Public()) {
		return nil, fmt.Errorf("--key is not the key --trust gives for --issuer %s", g.Issuer)
	}
	m, err := delegation.Mint(g, key)
	if err != nil {
		return nil, fmt.Errorf("%w (check --delegate, --scopes, --expires-in, --max-tasks and --parent)", err)
	}
	return m, nil
}

// offlineParent reads the chain to attenuate: verified against trusted
// when a trust set is given; else only read, with a warning, since a
// token under a forged parent is refused wherever it is used.
func offlineParent(value string, trusted map[string]ed25519.PublicKey) (*delegation.Chain, error) {
	if len(trusted) > 0 {
		chain, rej := inspectVerifier(trusted, "").Verify(value)
		if rej != nil {
			return nil, fmt.Errorf("--parent does not verify with the --trust keys: %s", rej.Error())
		}
		return chain, nil
	}
	caddy.Log().Warn("--parent is not verified; give --trust URN=KEYFILE for its root issuer to check it first")
	var chain delegation.Chain
	for i, raw := range strings.Split(strings.TrimSpace(value), ",") {
		l, rej := delegation.ParseLink(strings.TrimSpace(raw))
		if rej != nil {
			return nil, fmt.Errorf("--parent: link %d cannot be read: %s", i, rej.Error())
		}
		chain.Links = append(chain.Links, l)
	}
	return &chain, nil
}

// flagScopes reads --scopes: known scope names only, so that a typo does
// not mint a token that grants nothing.
func flagScopes(v string) ([]string, error) {
	var scopes []string
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s == "" {
			continue
		}
		if s != delegation.ScopeAll && !knownScope(s) {
			return nil, fmt.Errorf("--scopes: unknown scope %q; use %s or %s", s, strings.Join(config.Scopes, ", "), delegation.ScopeAll)
		}
		scopes = append(scopes, s)
	}
	if len(scopes) == 0 {
		return nil, fmt.Errorf("--scopes must name at least one of %s, %s", strings.Join(config.Scopes, ", "), delegation.ScopeAll)
	}
	return scopes, nil
}

func knownScope(s string) bool {
	for _, k := range config.Scopes {
		if s == k {
			return true
		}
	}
	return false
}

// flagLifetime reads --expires-in: a duration, or whole seconds as the
// reference CLI takes it.
func flagLifetime(v string) (time.Duration, error) {
	v = strings.TrimSpace(v)
	bad := fmt.Errorf("--expires-in must be between 1s and 365d (31536000 seconds), not %q", v)
	n, err := strconv.ParseInt(v, 10, 64)
	if err == nil {
		if n < 1 || n > int64(delegation.MaxTTL/time.Second) {
			return 0, bad
		}
		return time.Duration(n) * time.Second, nil
	}
	d, err := config.ParseDuration(v)
	if err != nil {
		return 0, fmt.Errorf("--expires-in: %v, or a number of seconds", err)
	}
	if d < time.Second || d > delegation.MaxTTL {
		return 0, bad
	}
	return d, nil
}

// flagTrust reads the repeatable --trust URN=KEYFILE.
func flagTrust(fl caddycmd.Flags) (map[string]ed25519.PublicKey, error) {
	list, err := fl.GetStringArray("trust")
	if err != nil {
		return nil, err
	}
	trusted := make(map[string]ed25519.PublicKey, len(list))
	for _, t := range list {
		urn, file, ok := strings.Cut(t, "=")
		switch {
		case !ok || file == "":
			return nil, fmt.Errorf("--trust takes URN=KEYFILE, not %q", t)
		case !protocol.ValidURN(urn):
			return nil, fmt.Errorf("--trust %s: %q is not an agent URN (urn:asap:agent:name[:sub])", t, urn)
		}
		pub, err := delegation.LoadPublicKey(file)
		if err != nil {
			return nil, fmt.Errorf("--trust %s: %w", urn, err)
		}
		trusted[urn] = pub
	}
	return trusted, nil
}

func delegationRevokeCommand() *cobra.Command {
	return command(cobra.Command{
		Use:   "revoke ID",
		Short: "Revoke a token id (and every descendant)",
		Long: `
Revokes the token id ID (a jti, del_…) for every issuer, and with it every
token delegated under it, whoever minted it: the next request presenting
any of them is refused, also after restarts. An id the sidecar neither
minted nor saw in traffic is refused as a likely typo unless --force (for
an id learned elsewhere, such as another sidecar's audit log). Asks the
running sidecar, or with --db writes the revocation into a stopped
sidecar's database.`,
		Example: `  asap-caddy asap delegation revoke del_01JDEMO00000000000000000
  asap-caddy asap delegation revoke --db /var/lib/asap del_01JDEMO00000000000000000
  asap-caddy asap delegation revoke --force del_01JSEENELSEWHERE000000000`,
		Args: cobra.ExactArgs(1),
	}, cmdDelegationRevoke, func(fs *pflag.FlagSet) {
		fs.Bool("force", false, "revoke an id the sidecar neither minted nor saw in traffic")
		addDBFlag(fs, "revoke in this stopped sidecar's storage directory")
		addAdminFlags(fs)
	})
}

func cmdDelegationRevoke(fl caddycmd.Flags) (int, error) {
	id := strings.TrimSpace(fl.Arg(0))
	if id == "" {
		return exitFailure, errors.New("give the token id to revoke (its jti, del_…)")
	}
	force := fl.Bool("force")
	if fl.String("db") == "" {
		uri := "/asap/delegations/" + url.PathEscape(id)
		if force {
			uri += "?force=true"
		}
		resp, err := adminRequest(fl, http.MethodDelete, uri, nil)
		if err != nil {
			if strings.Contains(err.Error(), "HTTP 404") {
				err = fmt.Errorf("%w (--force revokes it anyway)", err)
			}
			return exitFailure, err
		}
		resp.Body.Close()
		fmt.Println("revoked", id)
		return 0, nil
	}
	db, err := openStoppedDB(fl, false)
	if err != nil {
		return exitFailure, err
	}
	defer db.Close()
	l, err := delegation.OpenLedger(db)
	if err != nil {
		return exitFailure, err
	}
	if !force {
		known, err := l.Known(id)
		if err != nil {
			return exitFailure, err
		}
		if !known {
			return exitFailure, fmt.Errorf("%s was neither minted by this sidecar nor seen in its traffic; --force revokes it anyway", id)
		}
	}
	rev, err := l.Revoke(context.Background(), id, time.Now())
	if err != nil {
		return exitFailure, err
	}
	fmt.Println("revoked", strings.Join(rev.IDs, " "))
	for _, t := range rev.Tokens {
		fmt.Printf("  affects %s from %s (hash %s)\n", t.JTI, t.Issuer, t.Hash)
	}
	return 0, nil
}

func delegationListCommand() *cobra.Command {
	return command(cobra.Command{
		Use:   "list",
		Short: "List tokens minted by the sidecar, with expiry, limit and use",
		Long: `
Lists the tokens the sidecar minted (not those minted offline with
--key): id, delegate, creation and expiry time, max_tasks, tasks used, and
state: active, spent (max_tasks used up), expired or revoked. Only those
neither revoked nor expired unless --all; spent ones are listed, since a
revocation of an ancestor is what ends them for good. Asks the running
sidecar, or with --db reads a stopped one's database, read-only.`,
		Example: `  asap-caddy asap delegation list
  asap-caddy asap delegation list --db /var/lib/asap --all --json -o tokens.json`,
		Args: cobra.NoArgs,
	}, cmdDelegationList, func(fs *pflag.FlagSet) {
		fs.Bool("all", false, "include revoked and expired tokens")
		fs.Bool("json", false, "print JSON")
		addDBFlag(fs, "read this stopped sidecar's storage directory")
		addAdminFlags(fs)
		addOutputFlag(fs)
	})
}

// listedToken is a row of 'delegation list'.
type listedToken struct {
	ID        string     `json:"id"`
	Delegator string     `json:"delegator"`
	Delegate  string     `json:"delegate"`
	CreatedAt time.Time  `json:"created_at"`
	Active    bool       `json:"active"`
	ExpiresAt time.Time  `json:"expires_at"`
	RevokedAt *time.Time `json:"revoked_at"`
	MaxTasks  *int64     `json:"max_tasks"`
	Used      int64      `json:"usage_count"`
	// State is revoked, expired, spent or active.
	State string `json:"state"`
}

func (r *listedToken) setState(now time.Time) {
	switch {
	case r.RevokedAt != nil:
		r.State = "revoked"
	case !now.Before(r.ExpiresAt):
		r.State = "expired"
	case r.MaxTasks != nil && r.Used >= *r.MaxTasks:
		r.State = "spent"
	default:
		r.State = "active"
	}
}

func cmdDelegationList(fl caddycmd.Flags) (int, error) {
	all := fl.Bool("all")
	rows := []listedToken{}
	t := now()
	if fl.String("db") != "" {
		db, err := openStoppedDB(fl, true)
		if err != nil {
			return exitFailure, err
		}
		defer db.Close()
		l, err := delegation.OpenLedger(db)
		if err != nil {
			return exitFailure, err
		}
		recs, err := l.Issued(!all)
		if err != nil {
			return exitFailure, err
		}
		for i := range recs {
			r := &recs[i]
			used, err := l.Used(r)
			if err != nil {
				return exitFailure, err
			}
			rows = append(rows, listedToken{ID: r.ID, Delegator: r.Delegator, Delegate: r.Delegate, CreatedAt: r.CreatedAt,
				Active: r.Active(t), ExpiresAt: r.ExpiresAt, RevokedAt: r.RevokedAt, MaxTasks: r.MaxTasks, Used: used})
		}
	} else {
		resp, err := adminRequest(fl, http.MethodGet, fmt.Sprintf("/asap/delegations?active=%t&detail=true", !all), nil)
		if err != nil {
			return exitFailure, err
		}
		defer resp.Body.Close()
		if err := json.NewDecoder(resp.Body).Decode(&rows); err != nil {
			return exitFailure, fmt.Errorf("reading the sidecar's answer: %w", err)
		}
	}
	for i := range rows {
		rows[i].setState(t)
	}
	return withOutput(fl, func(w io.Writer) (int, error) {
		if fl.Bool("json") {
			return status(json.NewEncoder(w).Encode(rows))
		}
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tDELEGATOR\tDELEGATE\tCREATED\tEXPIRES\tMAX_TASKS\tUSED\tSTATE")
		for _, r := range rows {
			limit := "-"
			if r.MaxTasks != nil {
				limit = strconv.FormatInt(*r.MaxTasks, 10)
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\n", r.ID, r.Delegator, r.Delegate, r.CreatedAt.Format(time.RFC3339),
				r.ExpiresAt.Format(time.RFC3339), limit, r.Used, r.State)
		}
		return status(tw.Flush())
	})
}
