package caddymodule

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"

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
		Short: "Verify and export the audit log",
		Long: `
The audit log is a hash chain and a Merkle tree with signed checkpoints.
'verify' recomputes all of it; 'export' writes the entries out. Both ask
the running sidecar, or with --db read a stopped one's database,
read-only.`,
		Example: `  asap-caddy asap audit verify
  asap-caddy asap audit export --format jsonl -o audit.jsonl`,
	}
	cmd.AddCommand(auditVerifyCommand(), auditExportCommand())
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
the default), one JSON document {"entries": [...], "count": n}, or CSV.
Each entry carries its hash and prev_hash, so the export can be checked
without the sidecar.`,
		Example: `  asap-caddy asap audit export --format jsonl -o audit.jsonl
  asap-caddy asap audit export --db /var/lib/asap --format csv > audit.csv`,
		Args: cobra.NoArgs,
	}, cmdAuditExport, func(fs *pflag.FlagSet) {
		fs.String("format", "jsonl", "json, jsonl or csv")
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
	if fl.String("db") == "" {
		resp, err := adminRequest(fl, http.MethodGet, "/asap/audit/export?format="+url.QueryEscape(format), nil)
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
	var entries []audit.Entry
	if err := audit.New(db).Each(func(e *audit.Entry) bool { entries = append(entries, *e); return true }); err != nil {
		return exitFailure, err
	}
	return withOutput(fl, func(w io.Writer) (int, error) {
		switch format {
		case "csv":
			return status(api.WriteAuditCSV(w, entries))
		case "jsonl":
			enc := json.NewEncoder(w)
			for i := range entries {
				if err := enc.Encode(&entries[i]); err != nil {
					return status(err)
				}
			}
			return 0, nil
		}
		if entries == nil {
			entries = []audit.Entry{}
		}
		return status(json.NewEncoder(w).Encode(map[string]any{"entries": entries, "count": len(entries)}))
	})
}
