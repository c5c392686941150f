package caddymodule

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"

	"github.com/spf13/cobra"
	"golang.org/x/mod/sumdb/note"

	"github.com/asap-sidecar/asap-sidecar/caddymodule/api"
	"github.com/asap-sidecar/asap-sidecar/caddymodule/audit"
	"github.com/asap-sidecar/asap-sidecar/storage"
)

func auditCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "audit", Short: "Verify and export the audit log"}
	cmd.AddCommand(auditVerify(), auditExport())
	return cmd
}

// errLogBroken makes verify exit non-zero.
var errLogBroken = errors.New("the audit log does not verify")

func auditVerify() *cobra.Command {
	var af adminFlags
	var db, vkey string
	cmd := &cobra.Command{
		Use:   "verify",
		Short: "Recompute the audit log's hash chain, Merkle tree and checkpoints",
		Long: `
Recomputes every entry's hash and link, the Merkle tree, and every stored
checkpoint, and names the first seq that breaks. Exits 1 when the log does
not verify. Asks the running sidecar, or reads a stopped one's database
with --db (give --vkey, the audit_key of /asap/status, to check checkpoint
signatures too).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var v audit.Verdict
			if db != "" {
				var verifier note.Verifier
				if vkey != "" {
					var err error
					if verifier, err = note.NewVerifier(vkey); err != nil {
						return fmt.Errorf("--vkey: %w", err)
					}
				}
				dbh, err := storage.Open(storage.Options{Dir: db})
				if err != nil {
					return fmt.Errorf("%w\n(a running sidecar holds its database: drop --db to ask it through its admin API)", err)
				}
				defer dbh.Close()
				if v, err = audit.New(dbh).Verify(verifier); err != nil {
					return err
				}
			} else {
				resp, err := af.request(http.MethodGet, "/asap/audit/verify", nil)
				if err != nil {
					return err
				}
				defer resp.Body.Close()
				if err := json.NewDecoder(resp.Body).Decode(&v); err != nil {
					return fmt.Errorf("reading the answer: %w", err)
				}
			}
			if v.Valid {
				fmt.Fprintf(cmd.OutOrStdout(), "valid: %d entries, %d checkpoints checked\n", v.Size, v.Checkpoints)
				return nil
			}
			seq, reason := uint64(0), ""
			if v.FirstBadSeq != nil {
				seq = *v.FirstBadSeq
			}
			if v.Reason != nil {
				reason = *v.Reason
			}
			fmt.Fprintf(cmd.OutOrStdout(), "BROKEN at seq %d: %s\n", seq, reason)
			return errLogBroken
		},
	}
	cmd.Flags().StringVar(&db, "db", "", "verify this stopped sidecar's storage directory")
	cmd.Flags().StringVar(&vkey, "vkey", "", "note verifier key of the checkpoints (with --db)")
	af.add(cmd)
	return cmd
}

func auditExport() *cobra.Command {
	var af adminFlags
	var db, format, output string
	cmd := &cobra.Command{
		Use:   "export",
		Short: "Export the audit log as json, jsonl or csv",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if format != "json" && format != "jsonl" && format != "csv" {
				return fmt.Errorf("--format must be json, jsonl or csv, not %q", format)
			}
			out := cmd.OutOrStdout()
			if output != "" && output != "-" {
				f, err := os.Create(output)
				if err != nil {
					return err
				}
				defer f.Close()
				out = f
			}
			if db == "" {
				resp, err := af.request(http.MethodGet, "/asap/audit/export?format="+url.QueryEscape(format), nil)
				if err != nil {
					return err
				}
				defer resp.Body.Close()
				_, err = io.Copy(out, resp.Body)
				return err
			}
			dbh, err := storage.Open(storage.Options{Dir: db})
			if err != nil {
				return fmt.Errorf("%w\n(a running sidecar holds its database: drop --db to ask it through its admin API)", err)
			}
			defer dbh.Close()
			var entries []audit.Entry
			if err := audit.New(dbh).Each(func(e *audit.Entry) bool { entries = append(entries, *e); return true }); err != nil {
				return err
			}
			switch format {
			case "csv":
				return api.WriteAuditCSV(out, entries)
			case "jsonl":
				enc := json.NewEncoder(out)
				for i := range entries {
					if err := enc.Encode(&entries[i]); err != nil {
						return err
					}
				}
				return nil
			}
			return json.NewEncoder(out).Encode(map[string]any{"entries": entries, "count": len(entries)})
		},
	}
	cmd.Flags().StringVar(&format, "format", "jsonl", "json, jsonl or csv")
	cmd.Flags().StringVar(&db, "db", "", "read this stopped sidecar's storage directory")
	cmd.Flags().StringVarP(&output, "output", "o", "", "write to this file instead of stdout")
	af.add(cmd)
	return cmd
}
