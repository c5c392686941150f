package caddymodule

import (
	"bytes"
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
	"strings"
	"text/tabwriter"
	"time"

	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/spf13/cobra"

	"github.com/asap-sidecar/asap-sidecar/caddymodule/api"
	"github.com/asap-sidecar/asap-sidecar/caddymodule/delegation"
	"github.com/asap-sidecar/asap-sidecar/config"
	"github.com/asap-sidecar/asap-sidecar/storage"
)

func keygenCommand() *cobra.Command {
	var out, name string
	var force bool
	cmd := &cobra.Command{
		Use:   "keygen",
		Short: "Generate an Ed25519 key pair (PEM and JWK)",
		Long: `
Writes NAME.key (PKCS#8 PEM, mode 0600), NAME.jwk (private JWK, 0600),
NAME.pub (PKIX PEM) and NAME.pub.jwk into --out. Give the private key to
the sidecar with 'key', and the public key to verifiers with 'trust'.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			key, err := delegation.GenerateKey()
			if err != nil {
				return err
			}
			pub := key.Public().(ed25519.PublicKey)
			privPEM, err := delegation.PrivatePEM(key)
			if err != nil {
				return err
			}
			pubPEM, err := delegation.PublicPEM(pub)
			if err != nil {
				return err
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
				return err
			}
			for _, f := range files {
				path := filepath.Join(out, f.name)
				flags := os.O_WRONLY | os.O_CREATE | os.O_EXCL
				if force {
					flags = os.O_WRONLY | os.O_CREATE | os.O_TRUNC
				}
				fh, err := os.OpenFile(path, flags, f.mode)
				if errors.Is(err, os.ErrExist) {
					return fmt.Errorf("%s exists; use --force to replace it", path)
				}
				if err != nil {
					return err
				}
				_, werr := fh.Write(f.data)
				if err := errors.Join(werr, fh.Close()); err != nil {
					return err
				}
				fmt.Fprintln(cmd.OutOrStdout(), "wrote", path)
			}
			fmt.Fprintln(cmd.OutOrStdout(), "thumbprint (RFC 7638):", delegation.Thumbprint(pub))
			return nil
		},
	}
	cmd.Flags().StringVar(&out, "out", ".", "directory to write the files into")
	cmd.Flags().StringVar(&name, "name", "agent", "base name of the files")
	cmd.Flags().BoolVar(&force, "force", false, "replace existing files")
	return cmd
}

// adminFlags are the flags commands use to reach a running sidecar.
type adminFlags struct{ address, configFile, adapter, storage string }

func (a *adminFlags) add(cmd *cobra.Command) {
	cmd.Flags().StringVar(&a.address, "address", "", "admin API address of the running sidecar")
	cmd.Flags().StringVar(&a.configFile, "config", "", "config file, to find the admin address in")
	cmd.Flags().StringVar(&a.adapter, "adapter", "", "adapter of --config")
	cmd.Flags().StringVar(&a.storage, "storage", "", "storage directory of the asap block to ask, when the sidecar runs several")
}

func (a *adminFlags) request(method, uri string, body []byte) (*http.Response, error) {
	addr, err := caddycmd.DetermineAdminAPIAddress(a.address, nil, a.configFile, a.adapter)
	if err != nil {
		return nil, fmt.Errorf("finding the admin API: %w", err)
	}
	if a.storage != "" {
		sep := "?"
		if strings.Contains(uri, "?") {
			sep = "&"
		}
		uri += sep + "storage=" + url.QueryEscape(a.storage)
	}
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	resp, err := caddycmd.AdminAPIRequest(addr, method, uri, nil, rd)
	if err != nil {
		return nil, fmt.Errorf("asking the sidecar at %s: %w", addr, err)
	}
	return resp, nil
}

func delegationCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "delegation", Short: "Create, list, revoke and inspect delegation tokens"}
	cmd.AddCommand(delegationCreate(), delegationRevoke(), delegationList(), delegationInspect())
	return cmd
}

func delegationCreate() *cobra.Command {
	var af adminFlags
	var delegate, scopes, expires, parent, cnf string
	var maxTasks int64
	cmd := &cobra.Command{
		Use:   "create --delegate URN [flags]",
		Short: "Mint a token signed with the agent's key (running sidecar)",
		Example: `  asap-caddy asap delegation create --delegate urn:asap:agent:client --scopes task.execute --max-tasks 100 --expires-in 24h
  asap-caddy asap delegation create --delegate urn:asap:agent:worker --parent "$TOKEN" --scopes data.read`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ttl, err := config.ParseDuration(expires)
			if err != nil {
				return fmt.Errorf("--expires-in: %w", err)
			}
			req := api.MintRequest{Delegate: delegate, Scopes: splitList(scopes), ExpiresInSeconds: int64(ttl / time.Second), Parent: parent}
			if maxTasks >= 0 {
				req.MaxTasks = &maxTasks
			}
			if cnf != "" {
				pub, err := delegation.LoadPublicKey(cnf)
				if err != nil {
					return fmt.Errorf("--cnf-key: %w", err)
				}
				req.CnfJWK = delegation.PublicJWK(pub)
			}
			body, _ := json.Marshal(req)
			resp, err := af.request(http.MethodPost, "/asap/delegations", body)
			if err != nil {
				return err
			}
			defer resp.Body.Close()
			var out struct{ Token string }
			if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
				return fmt.Errorf("reading the answer: %w", err)
			}
			fmt.Fprintln(cmd.OutOrStdout(), out.Token)
			return nil
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&delegate, "delegate", "", "URN of the agent the token delegates to (required)")
	fl.StringVar(&scopes, "scopes", delegation.ScopeTaskExecute, "comma-separated scopes: task.execute, task.cancel, data.read, data.write, *")
	fl.StringVar(&expires, "expires-in", "24h", "lifetime (max 365d)")
	fl.Int64Var(&maxTasks, "max-tasks", -1, "task limit (-1: none of its own)")
	fl.StringVar(&parent, "parent", "", "a token chain delegated to this agent, to attenuate")
	fl.StringVar(&cnf, "cnf-key", "", "the delegate's public key file (PEM or JWK), bound with cnf so it can re-delegate")
	_ = cmd.MarkFlagRequired("delegate")
	af.add(cmd)
	return cmd
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

func delegationRevoke() *cobra.Command {
	var af adminFlags
	var db string
	cmd := &cobra.Command{
		Use:   "revoke ID",
		Short: "Revoke a token id (and every descendant)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if db != "" {
				return withLedger(db, func(l *delegation.Ledger) error {
					rev, err := l.Revoke(context.Background(), args[0], time.Now())
					if err != nil {
						return err
					}
					fmt.Fprintln(cmd.OutOrStdout(), "revoked", strings.Join(rev.IDs, " "))
					for _, t := range rev.Tokens {
						fmt.Fprintf(cmd.OutOrStdout(), "  affects %s from %s (hash %s)\n", t.JTI, t.Issuer, t.Hash)
					}
					return nil
				})
			}
			resp, err := af.request(http.MethodDelete, "/asap/delegations/"+args[0], nil)
			if err != nil {
				return err
			}
			resp.Body.Close()
			fmt.Fprintln(cmd.OutOrStdout(), "revoked", args[0])
			return nil
		},
	}
	cmd.Flags().StringVar(&db, "db", "", "revoke in this stopped sidecar's storage directory")
	af.add(cmd)
	return cmd
}

func withLedger(dir string, fn func(*delegation.Ledger) error) error {
	db, err := storage.Open(storage.Options{Dir: dir})
	if err != nil {
		return fmt.Errorf("%w\n(a running sidecar holds its database: drop --db to ask it through its admin API)", err)
	}
	defer db.Close()
	l, err := delegation.OpenLedger(db)
	if err != nil {
		return err
	}
	return fn(l)
}

func delegationList() *cobra.Command {
	var af adminFlags
	var db string
	var all, asJSON bool
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List tokens minted by the sidecar",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			type row struct {
				ID        string    `json:"id"`
				Delegator string    `json:"delegator"`
				Delegate  string    `json:"delegate"`
				CreatedAt time.Time `json:"created_at"`
				Active    bool      `json:"active"`
			}
			var rows []row
			if db != "" {
				err := withLedger(db, func(l *delegation.Ledger) error {
					recs, err := l.Issued(!all)
					for _, r := range recs {
						rows = append(rows, row{r.ID, r.Delegator, r.Delegate, r.CreatedAt, r.Active(time.Now())})
					}
					return err
				})
				if err != nil {
					return err
				}
			} else {
				resp, err := af.request(http.MethodGet, fmt.Sprintf("/asap/delegations?active=%t", !all), nil)
				if err != nil {
					return err
				}
				defer resp.Body.Close()
				if err := json.NewDecoder(resp.Body).Decode(&rows); err != nil {
					return fmt.Errorf("reading the answer: %w", err)
				}
			}
			if asJSON {
				return json.NewEncoder(cmd.OutOrStdout()).Encode(rows)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tDELEGATOR\tDELEGATE\tCREATED\tACTIVE")
			for _, r := range rows {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%t\n", r.ID, r.Delegator, r.Delegate, r.CreatedAt.Format(time.RFC3339), r.Active)
			}
			return tw.Flush()
		},
	}
	cmd.Flags().BoolVar(&all, "all", false, "include revoked and expired tokens")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	cmd.Flags().StringVar(&db, "db", "", "read this stopped sidecar's storage directory")
	af.add(cmd)
	return cmd
}

func delegationInspect() *cobra.Command {
	var trust []string
	var sender, recipient, action string
	cmd := &cobra.Command{
		Use:   "inspect [TOKEN|-]",
		Short: "Decode a token chain offline, check it, and explain each link",
		Long: `
Decodes every link of a chain (leaf first), shows its claims and how it
ties to its parent, then verifies the whole chain with the keys given by
--trust URN=KEYFILE (repeatable). With --sender/--recipient/--action it
also checks a call as the sidecar would. Reads the token from stdin when
the argument is - or missing. Nothing is sent anywhere.`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			value := ""
			if len(args) == 1 && args[0] != "-" {
				value = args[0]
			} else {
				b, err := io.ReadAll(io.LimitReader(cmd.InOrStdin(), 1<<20))
				if err != nil {
					return err
				}
				value = string(b)
			}
			trusted := map[string]ed25519.PublicKey{}
			for _, t := range trust {
				urn, file, ok := strings.Cut(t, "=")
				if !ok {
					return fmt.Errorf("--trust takes URN=KEYFILE, not %q", t)
				}
				pub, err := delegation.LoadPublicKey(file)
				if err != nil {
					return fmt.Errorf("--trust %s: %w", urn, err)
				}
				trusted[urn] = pub
			}
			return inspectChain(cmd.OutOrStdout(), strings.TrimSpace(value), trusted, sender, recipient, action)
		},
	}
	cmd.Flags().StringArrayVar(&trust, "trust", nil, "URN=KEYFILE of a trusted issuer (repeatable)")
	cmd.Flags().StringVar(&sender, "sender", "", "check a call from this sender")
	cmd.Flags().StringVar(&recipient, "recipient", "", "check a call to this recipient (the guarded agent)")
	cmd.Flags().StringVar(&action, "action", delegation.ScopeTaskExecute, "scope the checked call needs")
	return cmd
}

// errChainRejected makes inspect exit non-zero for a refused chain.
var errChainRejected = errors.New("the chain would be rejected")

func inspectChain(w io.Writer, value string, trusted map[string]ed25519.PublicKey, sender, recipient, action string) error {
	parts := strings.Split(value, ",")
	for i, raw := range parts {
		raw = strings.TrimSpace(raw)
		role := "link"
		switch {
		case len(parts) == 1:
			role = "token"
		case i == 0:
			role = "leaf"
		case i == len(parts)-1:
			role = "root"
		}
		l, rej := delegation.ParseLink(raw)
		if rej != nil {
			fmt.Fprintf(w, "%d %s: cannot be read: %s (%s)\n", i, role, rej.Detail, rej.Reason)
			continue
		}
		c := &l.Claims
		fmt.Fprintf(w, "%d %s %s  alg %s\n", i, role, c.ID, l.Alg)
		fmt.Fprintf(w, "   %s delegates to %s\n", c.Issuer, c.Audience)
		fmt.Fprintf(w, "   scopes %s", strings.Join(c.Scopes, " "))
		if m := l.MaxTasks(); m >= 0 {
			fmt.Fprintf(w, "  max_tasks %d", m)
		}
		fmt.Fprintf(w, "\n   expires %s\n", time.Unix(int64(*c.Expiry), 0).UTC().Format(time.RFC3339))
		if len(c.Proof) == 1 {
			if i+1 < len(parts) && delegation.HashOf(strings.TrimSpace(parts[i+1])) == c.Proof[0] {
				fmt.Fprintf(w, "   parent: link %d (prf hash matches)\n", i+1)
			} else {
				fmt.Fprintf(w, "   parent: %s — not the next link of this chain\n", c.Proof[0])
			}
		}
		if c.Confirmation != nil {
			if len(c.Confirmation.JWK) > 0 {
				if pub, err := delegation.ParsePublicJWK(c.Confirmation.JWK); err == nil {
					fmt.Fprintf(w, "   binds the delegate's key %s (cnf.jwk)\n", delegation.Thumbprint(pub))
				}
			} else if c.Confirmation.JKT != "" {
				fmt.Fprintf(w, "   binds the delegate's key %s (cnf.jkt)\n", c.Confirmation.JKT)
			}
		}
	}
	if len(trusted) == 0 {
		fmt.Fprintln(w, "not verified: give the trusted issuers' keys with --trust URN=KEYFILE")
		return nil
	}
	v := &delegation.Verifier{Self: recipient, Trusted: trusted, MaxDepth: config.DefaultChainDepth, MaxSize: config.DefaultTokenSize, Skew: config.DefaultClockSkew}
	chain, rej := v.Verify(value)
	if rej == nil && sender != "" {
		rej = v.CheckCall(chain, sender, recipient, action)
	}
	if rej != nil {
		fmt.Fprintf(w, "REJECTED (%s): %s", rej.Reason, rej.Detail)
		if rej.JTI != "" {
			fmt.Fprintf(w, " [%s]", rej.JTI)
		}
		fmt.Fprintln(w)
		return errChainRejected
	}
	fmt.Fprintln(w, "VALID: signatures, times and attenuation check out (revocation and limits are the sidecar's to check)")
	return nil
}
