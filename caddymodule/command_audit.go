package caddymodule

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"

	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"golang.org/x/mod/sumdb/note"

	"github.com/asap-sidecar/asap-sidecar/caddymodule/api"
	"github.com/asap-sidecar/asap-sidecar/caddymodule/audit"
)

func auditCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "audit",
		Short: "Verify, export and check the audit log",
		Long: `
The audit log is a hash chain and a Merkle tree with signed checkpoints.
'verify' recomputes all of it; 'export' writes the entries out. Both ask
the running sidecar, or with --db read a stopped one's database,
read-only. 'check' verifies an export against signed checkpoints with no
sidecar and no database, as an auditor would.`,
		Example: `  asap-caddy asap audit verify
  asap-caddy asap audit export --format jsonl -o audit.jsonl
  asap-caddy asap audit check --entries audit.json --checkpoint cp.txt --key "$AUDIT_KEY"`,
	}
	cmd.AddCommand(auditVerifyCommand(), auditExportCommand(), auditCheckCommand())
	return cmd
}

// errLogBroken makes verify exit non-zero.
var errLogBroken = errors.New("the audit log does not verify")

func auditVerifyCommand() *cobra.Command {
	return command(cobra.Command{
		Use:   "verify",
		Short: "Recompute the audit log's hash chain, Merkle tree and checkpoints",
		Long: `
Recomputes every entry's hash and link, the Merkle tree, and every stored
checkpoint, and names the first seq that breaks. Exits 1 when the log does
not verify. Asks the running sidecar, or reads a stopped one's database
with --db, read-only (give --vkey, the audit_key of /asap/status, to check
checkpoint signatures too).`,
		Example: `  asap-caddy asap audit verify
  asap-caddy asap audit verify --db /var/lib/asap --vkey "$AUDIT_KEY"`,
		Args: cobra.NoArgs,
	}, cmdAuditVerify, func(fs *pflag.FlagSet) {
		addDBFlag(fs, "verify this stopped sidecar's storage directory")
		fs.String("vkey", "", "note verifier key of the checkpoints (with --db)")
		addAdminFlags(fs)
		addOutputFlag(fs)
	})
}

func cmdAuditVerify(fl caddycmd.Flags) (int, error) {
	var v audit.Verdict
	if fl.String("db") != "" {
		var verifier note.Verifier
		if vkey := fl.String("vkey"); vkey != "" {
			var err error
			if verifier, err = note.NewVerifier(vkey); err != nil {
				return exitFailure, fmt.Errorf("--vkey: %w", err)
			}
		}
		db, err := openStoppedDB(fl, true)
		if err != nil {
			return exitFailure, err
		}
		defer db.Close()
		if v, err = audit.New(db).Verify(verifier); err != nil {
			return exitFailure, err
		}
	} else {
		if fl.String("vkey") != "" {
			return exitFailure, errors.New("--vkey goes with --db: the running sidecar checks its checkpoints with its own key")
		}
		resp, err := adminRequest(fl, http.MethodGet, "/asap/audit/verify", nil)
		if err != nil {
			return exitFailure, err
		}
		defer resp.Body.Close()
		if err := json.NewDecoder(resp.Body).Decode(&v); err != nil {
			return exitFailure, fmt.Errorf("reading the sidecar's answer: %w", err)
		}
	}
	return withOutput(fl, func(w io.Writer) (int, error) {
		if v.Valid {
			_, err := fmt.Fprintf(w, "valid: %d entries, %d checkpoints checked\n", v.Size, v.Checkpoints)
			return status(err)
		}
		seq, reason := uint64(0), ""
		if v.FirstBadSeq != nil {
			seq = *v.FirstBadSeq
		}
		if v.Reason != nil {
			reason = *v.Reason
		}
		fmt.Fprintf(w, "BROKEN at seq %d: %s\n", seq, reason)
		return exitFailure, errLogBroken
	})
}

func auditExportCommand() *cobra.Command {
	return command(cobra.Command{
		Use:   "export",
		Short: "Export the audit log as json, jsonl or csv",
		Long: `
Writes every audit entry, in seq order, as JSON Lines (one entry a line,
the default), one JSON document {"entries": [...], "count": n,
"checkpoints": [...]}, or CSV. Each entry carries its hash and prev_hash,
and a json export the signed checkpoints ({"size", "note"}), so it can be
checked without the sidecar ('asap audit check'). --checkpoints adds them
to jsonl too, as lines {"type":"checkpoint","size","note"} after the
entries. A running sidecar signs a checkpoint of the log as exported
first.`,
		Example: `  asap-caddy asap audit export --format json -o audit.json
  asap-caddy asap audit export --format jsonl --checkpoints -o audit.jsonl
  asap-caddy asap audit export --db /var/lib/asap --format csv > audit.csv`,
		Args: cobra.NoArgs,
	}, cmdAuditExport, func(fs *pflag.FlagSet) {
		fs.String("format", "jsonl", "json, jsonl or csv")
		fs.Bool("checkpoints", false, "jsonl: add the signed checkpoints as lines after the entries (json always has them)")
		addDBFlag(fs, "read this stopped sidecar's storage directory")
		addAdminFlags(fs)
		addOutputFlag(fs)
	})
}

func cmdAuditExport(fl caddycmd.Flags) (int, error) {
	format := fl.String("format")
	if format != "json" && format != "jsonl" && format != "csv" {
		return exitFailure, fmt.Errorf("--format must be json, jsonl or csv, not %q", format)
	}
	withCheckpoints := format == "json" || (format == "jsonl" && fl.Bool("checkpoints"))
	if fl.Bool("checkpoints") && format == "csv" {
		return exitFailure, errors.New("--checkpoints: csv has no place for checkpoints; use --format json or jsonl")
	}
	if fl.String("db") == "" {
		path := "/asap/audit/export?format=" + url.QueryEscape(format)
		if format == "jsonl" && withCheckpoints {
			path += "&checkpoints=true"
		}
		resp, err := adminRequest(fl, http.MethodGet, path, nil)
		if err != nil {
			return exitFailure, err
		}
		defer resp.Body.Close()
		return withOutput(fl, func(w io.Writer) (int, error) {
			_, err := io.Copy(w, resp.Body)
			return status(err)
		})
	}
	db, err := openStoppedDB(fl, true)
	if err != nil {
		return exitFailure, err
	}
	defer db.Close()
	log := audit.New(db)
	var entries []audit.Entry
	if err := log.Each(func(e *audit.Entry) bool { entries = append(entries, *e); return true }); err != nil {
		return exitFailure, err
	}
	var cps []audit.ExportCheckpoint
	if withCheckpoints {
		if cps, err = log.Checkpoints(uint64(len(entries))); err != nil {
			return exitFailure, err
		}
	}
	return withOutput(fl, func(w io.Writer) (int, error) {
		switch format {
		case "csv":
			return status(api.WriteAuditCSV(w, entries))
		case "jsonl":
			return status(api.WriteAuditJSONL(w, entries, cps))
		}
		if entries == nil {
			entries = []audit.Entry{}
		}
		return status(json.NewEncoder(w).Encode(map[string]any{"entries": entries, "count": len(entries), "checkpoints": cps}))
	})
}

func auditCheckCommand() *cobra.Command {
	return command(cobra.Command{
		Use:   "check",
		Short: "Check an exported audit log against signed checkpoints, offline",
		Long: `
Verifies an export (json, or jsonl with --checkpoints) with no sidecar and
no database: recomputes every entry's hash and its link to the entry
before, builds the RFC 6962 tree, and checks every checkpoint — each
--checkpoint file (a signed note, as GET /asap/audit/checkpoint gives it)
and each one the export carries — for a signature by one of the --key
verifier keys (the audit_key of /asap/status; repeat --key for keys used
before a rotation) and for a root equal to the tree's at its size. A
checkpoint larger than the export means the export was truncated.

--inclusion SEQ and --consistency OLD print the RFC 6962 proofs (base64)
for the largest checkpoint, verified against its root.

Exits 0 with a one-line summary, or 1 naming the first bad seq or the
failing checkpoint.`,
		Example: `  asap-caddy asap audit check --entries audit.json --checkpoint cp.txt --key "$AUDIT_KEY"
  asap-caddy asap audit check --entries audit.jsonl --checkpoint cp.txt --key "$AUDIT_KEY" --inclusion 42 --consistency 100`,
		Args: cobra.NoArgs,
	}, cmdAuditCheck, func(fs *pflag.FlagSet) {
		fs.String("entries", "", "the export: json, or jsonl ('-' for stdin)")
		fs.StringArray("checkpoint", nil, "a signed checkpoint file (repeatable)")
		fs.StringArray("key", nil, "a note verifier key, as /asap/status shows audit_key (repeatable)")
		fs.Int("inclusion", -1, "print the inclusion proof of this seq in the largest checkpoint")
		fs.Int("consistency", -1, "print the consistency proof from this size to the largest checkpoint")
		addOutputFlag(fs)
	})
}

// errCheckFailed makes check exit non-zero.
var errCheckFailed = errors.New("the export does not check")

func cmdAuditCheck(fl caddycmd.Flags) (int, error) {
	keys, _ := fl.GetStringArray("key")
	if len(keys) == 0 {
		return exitFailure, errors.New("--key is required: the note verifier key of the checkpoints (audit_key in /asap/status)")
	}
	var verifiers []note.Verifier
	for _, k := range keys {
		v, err := note.NewVerifier(k)
		if err != nil {
			return exitFailure, fmt.Errorf("--key %q is not a note verifier key (name+hash+base64): %w", k, err)
		}
		verifiers = append(verifiers, v)
	}
	if fl.String("entries") == "" {
		return exitFailure, errors.New("--entries is required: a json or jsonl export ('asap audit export')")
	}
	var cps []audit.NamedCheckpoint
	files, _ := fl.GetStringArray("checkpoint")
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return exitFailure, fmt.Errorf("--checkpoint: %w", err)
		}
		cps = append(cps, audit.NamedCheckpoint{Name: f, Note: b})
	}
	in := io.Reader(os.Stdin)
	if name := fl.String("entries"); name != "-" {
		f, err := os.Open(name)
		if err != nil {
			return exitFailure, fmt.Errorf("--entries: %w", err)
		}
		defer f.Close()
		in = f
	}
	var a audit.Auditor
	carried, err := audit.ReadExport(in, a.Add)
	var bad *audit.BadEntry
	if errors.As(err, &bad) {
		return withOutput(fl, func(w io.Writer) (int, error) {
			fmt.Fprintf(w, "BROKEN at seq %d: %s\n", bad.Seq, bad.Reason)
			return exitFailure, errCheckFailed
		})
	} else if err != nil {
		return exitFailure, fmt.Errorf("--entries: %w", err)
	}
	ownFiles := len(cps) // the auditor's own come first: proofs use the largest of them
	for _, c := range carried {
		cps = append(cps, audit.NamedCheckpoint{Name: fmt.Sprintf("carried in the export at size %d", c.Size), Note: []byte(c.Note)})
	}
	if len(cps) == 0 {
		return exitFailure, errors.New("no checkpoint to check the entries against: give --checkpoint FILE (GET /asap/audit/checkpoint) or an export that carries them")
	}
	parsed, err := a.CheckCheckpoints(cps, verifiers)
	if err != nil {
		return withOutput(fl, func(w io.Writer) (int, error) {
			fmt.Fprintf(w, "BROKEN: %v\n", err)
			return exitFailure, errCheckFailed
		})
	}
	// Proofs go against the largest checkpoint the auditor gave, else the
	// largest the export carries.
	pick := parsed
	if ownFiles > 0 {
		pick = parsed[:ownFiles]
	}
	top := pick[0]
	for _, c := range pick {
		if c.Size > top.Size {
			top = c
		}
	}
	return withOutput(fl, func(w io.Writer) (int, error) {
		if seq := fl.Int("inclusion"); seq >= 0 {
			leaf, hashes, err := a.InclusionProof(uint64(seq), top.Size, top.Hash)
			if err != nil {
				return exitFailure, fmt.Errorf("--inclusion: %w", err)
			}
			fmt.Fprintf(w, "inclusion of seq %d in size %d: leaf_hash %s hashes %s\n", seq, top.Size, b64(leaf), strings.Join(b64s(hashes), ","))
		}
		if old := fl.Int("consistency"); old >= 0 {
			hashes, err := a.ConsistencyProof(uint64(old), top.Size, top.Hash)
			if err != nil {
				return exitFailure, fmt.Errorf("--consistency: %w", err)
			}
			fmt.Fprintf(w, "consistency of size %d with size %d: hashes %s\n", old, top.Size, strings.Join(b64s(hashes), ","))
		}
		_, err := fmt.Fprintf(w, "valid: %d entries, %d checkpoints checked, largest at size %d (root %s)\n", a.Size(), len(parsed), top.Size, b64(top.Hash))
		return status(err)
	})
}

func b64(b []byte) string { return base64.StdEncoding.EncodeToString(b) }

func b64s(bs [][]byte) []string {
	out := make([]string, len(bs))
	for i, b := range bs {
		out[i] = b64(b)
	}
	return out
}
