package caddymodule

import (
	"crypto/ed25519"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/asap-sidecar/asap-sidecar/caddymodule/delegation"
	"github.com/asap-sidecar/asap-sidecar/caddymodule/protocol"
	"github.com/asap-sidecar/asap-sidecar/config"
)

func delegationInspectCommand() *cobra.Command {
	return command(cobra.Command{
		Use:   "inspect [TOKEN|-] [--trust URN=KEYFILE ...] [flags]",
		Short: "Explain a token chain link by link and check it against a trust set",
		Long: `
Decodes every link of a chain, leaf first (the token presented, then its
parent, up to the root), and prints its id, issuer, delegate, scopes,
max_tasks, times, parent and the key it binds, with a verdict for the
link: its signature checked with the key the trust set or its parent
gives, its times, and how it narrows its parent. Every link is checked on
its own, so a chain with several faults shows them all. The last line is
the verdict a sidecar trusting the same keys would give, and the exit
status is 1 when it would refuse the chain.

--trust URN=KEYFILE (repeatable; PEM or JWK public keys) is the trust
set: the issuers a sidecar is configured with and the protected agent's
own key. Without any, the chain is only decoded: signatures that need a
configured key are not checked, and the exit status is 1 only for what no
trust set can fix (an expired link, a broken chain, a forged link whose
key its parent binds).

--self is the protected agent. With --sender, the call is checked as the
sidecar checks it: addressed to --self (or --recipient), sent by the
leaf's delegate, and asking for --action. --db also checks revocation in
a stopped sidecar's database, read-only. The token is the argument, or is
read from stdin when the argument is - or missing. Nothing is sent
anywhere.`,
		Example: `  asap-caddy asap delegation inspect "$TOKEN" --trust urn:asap:agent:enterprise=/etc/asap/enterprise.pub
  asap-caddy asap delegation inspect - --trust urn:asap:agent:research=research.pub \
      --self urn:asap:agent:research --sender urn:asap:agent:client --action data.read < token.jwt
  asap-caddy asap delegation inspect "$TOKEN"     # decode only`,
		Args: cobra.MaximumNArgs(1),
	}, cmdDelegationInspect, func(fs *pflag.FlagSet) {
		fs.StringArray("trust", nil, "URN=KEYFILE of a trusted issuer (repeatable)")
		fs.String("self", "", "URN of the protected agent (the sidecar's 'agent')")
		fs.String("sender", "", "check a call sent by this URN (the envelope's sender)")
		fs.String("recipient", "", "the checked call's recipient (default: --self)")
		fs.String("action", delegation.ScopeTaskExecute, "scope the checked call needs")
		addDBFlag(fs, "also check revocation in this stopped sidecar's storage directory")
		addOutputFlag(fs)
	})
}

// maxTokenInput bounds what inspect reads from stdin: far above any
// header a sidecar accepts.
const maxTokenInput = 1 << 20

// readTokenArg is the token given as arg, or read from stdin when arg is
// "" or "-".
func readTokenArg(arg string, stdin io.Reader) (string, error) {
	if arg != "" && arg != "-" {
		return strings.TrimSpace(arg), nil
	}
	b, err := io.ReadAll(io.LimitReader(stdin, maxTokenInput+1))
	if err != nil {
		return "", fmt.Errorf("reading the token from stdin: %w", err)
	}
	if len(b) > maxTokenInput {
		return "", fmt.Errorf("the token on stdin is over %d bytes; no sidecar accepts that", maxTokenInput)
	}
	return strings.TrimSpace(string(b)), nil
}

// inspectVerifier verifies as a sidecar with the default limits and
// trusted issuers would.
func inspectVerifier(trusted map[string]ed25519.PublicKey, self string) *delegation.Verifier {
	return &delegation.Verifier{Self: self, Trusted: trusted, MaxDepth: config.DefaultChainDepth,
		MaxSize: config.DefaultTokenSize, Skew: config.DefaultClockSkew}
}

// errChainRejected makes inspect exit non-zero for a refused chain.
var errChainRejected = errors.New("the chain would be rejected")

func cmdDelegationInspect(fl caddycmd.Flags) (int, error) {
	value, err := readTokenArg(fl.Arg(0), os.Stdin)
	if err != nil {
		return exitFailure, err
	}
	trusted, err := flagTrust(fl)
	if err != nil {
		return exitFailure, err
	}
	self, recipient, sender := fl.String("self"), fl.String("recipient"), fl.String("sender")
	for _, name := range []string{"self", "recipient", "sender"} {
		if urn := fl.String(name); urn != "" && !protocol.ValidURN(urn) {
			return exitFailure, fmt.Errorf("--%s %q is not an agent URN (urn:asap:agent:name[:sub], lower case)", name, urn)
		}
	}
	if recipient == "" {
		recipient = self
	}
	if self == "" {
		self = recipient
	}
	action := fl.String("action")
	if action != delegation.ScopeAll && !knownScope(action) {
		return exitFailure, fmt.Errorf("--action: unknown scope %q; use %s or %s", action, strings.Join(config.Scopes, ", "), delegation.ScopeAll)
	}

	in := inspection{v: inspectVerifier(trusted, self), decodeOnly: len(trusted) == 0, now: time.Now()}
	in.e = in.v.Explain(value)
	if fl.String("db") != "" {
		db, err := openStoppedDB(fl, true)
		if err != nil {
			return exitFailure, err
		}
		defer db.Close()
		if in.ledger, err = delegation.OpenLedger(db); err != nil {
			return exitFailure, err
		}
		in.db = fl.String("db")
	}
	if sender != "" {
		in.call = &inspectCall{sender: sender, recipient: recipient, action: action}
	}
	return withOutput(fl, func(w io.Writer) (int, error) {
		if in.write(w) != nil {
			return exitFailure, errChainRejected
		}
		return 0, nil
	})
}

type inspectCall struct{ sender, recipient, action string }

// inspection is one run of inspect: the explanation and what else was
// asked of it.
type inspection struct {
	v *delegation.Verifier
	e *delegation.Explanation
	// decodeOnly: no trust set was given, so a missing key is not a fault.
	decodeOnly bool
	ledger     *delegation.Ledger // with --db
	db         string
	call       *inspectCall
	now        time.Time
}

// unchecked reports whether p only says that no key is configured for
// an issuer, which without a trust set is the question, not an answer.
func (in *inspection) unchecked(p *delegation.Rejection) bool {
	return in.decodeOnly && (p.Reason == "untrusted_issuer" || p.Reason == "no_key_for_issuer")
}

// write prints every link and the verdict, and returns the rejection,
// if any.
func (in *inspection) write(w io.Writer) *delegation.Rejection {
	links := in.e.Links
	var first *delegation.Rejection // the first fault a link shows, for decode-only
	for i := range links {
		if rej := in.writeLink(w, i); rej != nil && first == nil {
			first = rej
		}
	}
	rej := in.verdict(first)
	switch {
	case rej != nil:
		fmt.Fprintf(w, "REJECTED (%s): %s", rej.Reason, rej.Detail)
		if rej.JTI != "" {
			fmt.Fprintf(w, " [%s]", rej.JTI)
		}
		fmt.Fprintln(w)
	case in.decodeOnly:
		fmt.Fprintln(w, "NOT VERIFIED: decoded only; no fault found, but signatures are not checked: give the trusted issuers' keys with --trust URN=KEYFILE")
	default:
		fmt.Fprint(w, "VALID: signatures, times and attenuation check out")
		if in.call != nil {
			fmt.Fprintf(w, "; %s may ask %s for %s", in.call.sender, in.call.recipient, in.call.action)
		}
		if in.ledger != nil {
			fmt.Fprintf(w, "; no link is revoked in %s (limits are the sidecar's to check)\n", in.db)
		} else {
			fmt.Fprintln(w, " (revocation and limits are the sidecar's to check)")
		}
	}
	return rej
}

// verdict is what a sidecar would answer: Verify's rejection, then
// revocation, then the call. Without a trust set, the first fault a link
// shows stands in for Verify's (which would only say the root's issuer
// is not trusted).
func (in *inspection) verdict(firstFault *delegation.Rejection) *delegation.Rejection {
	chain, rej := in.e.Chain, in.e.Rejection
	if in.decodeOnly {
		chain, rej = nil, firstFault
		switch r := in.e.Rejection; {
		case r != nil && rej == nil && (r.Reason == "missing_token" || r.Reason == "token_too_large" || r.Reason == "chain_too_deep"):
			rej = r
		case rej == nil:
			chain = &delegation.Chain{}
			for _, l := range in.e.Links {
				chain.Links = append(chain.Links, l.Link)
			}
		}
	}
	if rej == nil && in.ledger != nil {
		rej = in.ledger.CheckRevoked(chain)
	}
	if rej == nil && in.call != nil {
		rej = in.v.CheckCall(chain, in.call.sender, in.call.recipient, in.call.action)
	}
	return rej
}

// writeLink prints link i and returns its first fault.
func (in *inspection) writeLink(w io.Writer, i int) *delegation.Rejection {
	links := in.e.Links
	r := &links[i]
	role := "link"
	switch {
	case len(links) == 1:
		role = "token"
	case i == 0:
		role = "leaf"
	case i == len(links)-1:
		role = "root"
	}
	var problems []string
	var first *delegation.Rejection
	unchecked := false
	for _, p := range r.Problems {
		if in.unchecked(p) {
			unchecked = true
			continue
		}
		problems = append(problems, p.Reason+": "+p.Detail)
		if first == nil {
			first = p
		}
	}
	l := r.Link
	if l == nil {
		fmt.Fprintf(w, "%d %s: cannot be read\n", i, role)
		writeVerdict(w, problems)
		return first
	}
	c := &l.Claims
	fmt.Fprintf(w, "%d %s %s  (alg %s)\n", i, role, c.ID, l.Alg)
	fmt.Fprintf(w, "   %s delegates to %s\n", c.Issuer, c.Audience)
	row := func(name, format string, a ...any) { fmt.Fprintf(w, "   %-11s %s\n", name, fmt.Sprintf(format, a...)) }
	row("scopes", "%s", strings.Join(c.Scopes, " "))
	if m := l.MaxTasks(); m >= 0 {
		row("max_tasks", "%d", m)
	} else {
		row("max_tasks", "none of its own")
	}
	if c.IssuedAt != nil {
		row("issued", "%s", in.when(int64(*c.IssuedAt)))
	}
	if c.NotBefore != nil {
		row("not before", "%s", in.when(int64(*c.NotBefore)))
	}
	row("expires", "%s", in.when(int64(*c.Expiry)))
	switch {
	case len(c.Proof) == 0:
		row("parent", "none: the root of its chain")
	case i+1 < len(links) && len(c.Proof) == 1 && c.Proof[0] == delegation.HashOf(links[i+1].Raw):
		row("parent", "link %d (prf names its hash)", i+1)
	default:
		row("parent", "prf %s, which is not the next link of this chain", strings.Join(c.Proof, " "))
	}
	if cnf := c.Confirmation; cnf != nil {
		if pub, err := delegation.ParsePublicJWK(cnf.JWK); err == nil {
			row("binds", "the delegate's key %s (cnf.jwk)", delegation.Thumbprint(pub))
		} else if cnf.JKT != "" {
			row("binds", "the delegate's key %s (cnf.jkt)", cnf.JKT)
		}
	}
	switch r.KeyFrom {
	case delegation.KeyTrusted:
		row("key", "the trusted key of %s: signature valid", c.Issuer)
	case delegation.KeyCnfJWK:
		row("key", "the key its parent binds (cnf.jwk): signature valid")
	case delegation.KeyCnfJKT:
		row("key", "the header jwk its parent binds (cnf.jkt): signature valid")
	default:
		if unchecked {
			row("key", "none for %s: signature not checked (give --trust %s=KEYFILE)", c.Issuer, c.Issuer)
		}
	}
	if in.ledger != nil {
		if at, revoked := in.ledger.IsRevoked(c.Issuer, c.ID); revoked {
			p := &delegation.Rejection{Class: delegation.ClassRevoked, Reason: "revoked", Detail: "revoked at " + at.UTC().Format(time.RFC3339), JTI: c.ID}
			problems = append(problems, p.Reason+": "+p.Detail)
			if first == nil {
				first = p
			}
		}
	}
	writeVerdict(w, problems)
	return first
}

func writeVerdict(w io.Writer, problems []string) {
	if len(problems) == 0 {
		fmt.Fprintf(w, "   %-11s ok\n", "verdict")
		return
	}
	fmt.Fprintf(w, "   %-11s REJECTED\n", "verdict")
	for _, p := range problems {
		fmt.Fprintf(w, "   %-11s %s\n", "", p)
	}
}

// when prints a NumericDate with how far it is from now.
func (in *inspection) when(sec int64) string {
	t := time.Unix(sec, 0).UTC()
	d := t.Sub(in.now).Round(time.Second)
	switch {
	case d == 0:
		return t.Format(time.RFC3339) + " (now)"
	case d > 0:
		return fmt.Sprintf("%s (in %s)", t.Format(time.RFC3339), d)
	}
	return fmt.Sprintf("%s (%s ago)", t.Format(time.RFC3339), -d)
}
