package caddymodule

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"time"

	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/asap-sidecar/asap-sidecar/storage"
)

func backupCommand() *cobra.Command {
	return command(cobra.Command{
		Use:   "backup -o FILE",
		Short: "Write a consistent backup of the sidecar's database",
		Long: `
Streams a consistent snapshot of the running sidecar's database through its
admin API (GET /asap/backup) while it keeps serving: every write committed
before the snapshot, none after, retention times included. With --db it
backs up a stopped sidecar's directory instead, read-only.

The file is complete only if the command exits 0: it ends with a marker
holding the snapshot's SHA-256, which the command checks as it writes
(to FILE.partial, renamed to FILE at the end, so an older backup at FILE
survives a failed one). Restore it with 'asap-caddy asap restore'.

The backup holds the database, not agent.key, the key the sidecar
generates in its storage directory when a handler sets no key: copy that
file once and keep it with the backups (it does not change).

Copying a live storage directory instead is not safe: Badger writes its
tables, value log and manifest independently, and a copy taken while it
runs can be inconsistent. Use this command, or stop the sidecar first.`,
		Example: `  asap-caddy asap backup -o /backup/asap-$(date +%F).backup
  asap-caddy asap backup --storage /var/lib/asap/research -o research.backup
  asap-caddy asap backup --db /var/lib/asap -o asap.backup`,
		Args: cobra.NoArgs,
	}, cmdBackup, func(fs *pflag.FlagSet) {
		addAdminFlags(fs)
		addDBFlag(fs, "back up this stopped sidecar's storage directory instead (read-only)")
		fs.StringP("output", "o", "", "write the backup to this file (mode 0600); - for stdout")
	})
}

func cmdBackup(fl caddycmd.Flags) (int, error) {
	name := fl.String("output")
	if name == "" {
		return exitFailure, errors.New("-o FILE is required: name the backup file (or - for stdout)")
	}
	if name == "-" && isTerminal(os.Stdout) {
		return exitFailure, errors.New("-o -: stdout is a terminal; redirect it, or give a file name")
	}
	started := time.Now()
	var info storage.BackupInfo
	err := writeAtomically(name, func(w io.Writer) error {
		if fl.String("db") != "" {
			db, err := openStoppedDB(fl, true)
			if err != nil {
				return err
			}
			defer db.Close()
			info, err = db.Backup(w)
			return err
		}
		resp, err := adminRequest(fl, http.MethodGet, "/asap/backup", nil)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		// Check the stream as it is written: an answer cut short (the
		// sidecar stopped, the connection broke) lacks the end marker.
		info, err = storage.CheckBackup(io.TeeReader(resp.Body, w))
		if err != nil {
			return fmt.Errorf("the sidecar's backup stream: %w", err)
		}
		return nil
	})
	if err != nil {
		return exitFailure, err
	}
	fmt.Fprintf(os.Stderr, "backup of %d bytes (snapshot version %d) written to %s in %s\n",
		info.Bytes, info.Version, name, time.Since(started).Round(time.Millisecond))
	return 0, nil
}

// writeAtomically runs fn with a writer to name.partial and renames it to
// name once fn succeeded and the file is synced; a failure removes the
// partial file. "-" writes to stdout.
func writeAtomically(name string, fn func(w io.Writer) error) error {
	if name == "-" {
		return fn(os.Stdout)
	}
	tmp := name + ".partial"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("-o: %w", err)
	}
	err = fn(f)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil && cerr != nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, name)
	}
	if err != nil {
		os.Remove(tmp)
		return err
	}
	return nil
}

func isTerminal(f *os.File) bool {
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

func restoreCommand() *cobra.Command {
	return command(cobra.Command{
		Use:   "restore --db DIR FILE|-",
		Short: "Load a backup into a new storage directory",
		Long: `
Loads a backup written by 'asap-caddy asap backup' into DIR, which must be
new or empty: a restore creates a database, it never merges into one. A
backup that is cut short or damaged is refused and DIR is left empty.

Then point a sidecar's storage option at DIR (or move DIR into place) and
start it: usage, delegations, revocations, per-token task counts, SLA
history and the audit log are as they were at the snapshot. Copy agent.key
from the old storage directory into DIR first unless the handlers set
key: without it the sidecar generates a new key, and the tokens it minted
and its audit checkpoints no longer verify.`,
		Example: `  asap-caddy asap restore --db /var/lib/asap-new /backup/asap-2026-05-01.backup
  ssh backup-host cat asap.backup | asap-caddy asap restore --db /var/lib/asap-new -`,
		Args: cobra.ExactArgs(1),
	}, cmdRestore, func(fs *pflag.FlagSet) {
		addDBFlag(fs, "the new (or empty) storage directory to restore into")
	})
}

func cmdRestore(fl caddycmd.Flags) (int, error) {
	dir, src := fl.String("db"), fl.Arg(0)
	if dir == "" {
		return exitFailure, errors.New("--db DIR is required: the new storage directory to restore into")
	}
	var r io.Reader = os.Stdin
	if src != "-" {
		f, err := os.Open(src)
		if err != nil {
			return exitFailure, err
		}
		defer f.Close()
		r = f
	}
	started := time.Now()
	info, err := storage.Restore(storage.Options{Dir: dir}, r)
	if err != nil {
		return exitFailure, fmt.Errorf("restoring %s into %s: %w", src, dir, err)
	}
	fmt.Printf("restored %d bytes (snapshot version %d) into %s in %s\n", info.Bytes, info.Version, dir, time.Since(started).Round(time.Millisecond))
	fmt.Printf("copy agent.key from the old storage directory into %s before starting the sidecar, unless its handlers set key\n", dir)
	return 0, nil
}
