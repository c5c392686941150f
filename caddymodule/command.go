package caddymodule

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/asap-sidecar/asap-sidecar/caddymodule/api"
	"github.com/asap-sidecar/asap-sidecar/caddymodule/metering"
	"github.com/asap-sidecar/asap-sidecar/config"
	"github.com/asap-sidecar/asap-sidecar/storage"
)

// The 'asap-caddy asap …' commands, written as Caddy writes its own
// (modules/caddypki/command.go): each command's work is a named
// cmdXxx(caddycmd.Flags) (int, error) function, wired to cobra with
// caddycmd.WrapCommandFuncForCobra, which logs a returned error and turns
// the status into the exit code.

func init() {
	caddycmd.RegisterCommand(caddycmd.Command{
		Name:  "asap",
		Usage: "<command> [flags]",
		Short: "Operate the ASAP sidecar (keys, delegations, usage, audit, backup, version)",
		Long: `
Commands for operating the ASAP sidecar. Most talk to a running sidecar
through its admin API (--address, default: from --config, else
localhost:2019); with --db DIR they open a stopped sidecar's database
instead (read-only, unless the command writes). 'keygen' and
'delegation create --key', 'delegation inspect' need no sidecar at all.

Run 'asap-caddy asap <command> --help' for a command's flags and
examples.`,
		CobraFunc: asapCommands,
	})
}

// exitFailure is the status of a command that failed, as Caddy's own
// commands exit on any failure.
const exitFailure = caddy.ExitCodeFailedStartup

// asapCommands builds the command tree under 'asap-caddy asap'.
func asapCommands(cmd *cobra.Command) {
	cmd.Example = `  asap-caddy asap keygen --out /etc/asap --name research
  asap-caddy asap delegation create --delegate urn:asap:agent:client --scopes task.execute
  asap-caddy asap audit verify --db /var/lib/asap`
	cmd.AddCommand(versionCommand(), keygenCommand(), delegationCommand(), usageCommand(), auditCommand(), backupCommand(), restoreCommand())
}

// command is a cobra command whose work is fn; flags, when given, adds
// its flags.
func command(c cobra.Command, fn caddycmd.CommandFunc, flags func(*pflag.FlagSet)) *cobra.Command {
	cmd := &c
	if flags != nil {
		flags(cmd.Flags())
	}
	cmd.RunE = caddycmd.WrapCommandFuncForCobra(fn)
	return cmd
}

func versionCommand() *cobra.Command {
	return command(cobra.Command{
		Use:   "version",
		Short: "Print the sidecar and Caddy versions",
		Long: `
Prints the asap-sidecar version and the version of the Caddy it is built
on, one per line.`,
		Example: `  asap-caddy asap version`,
		Args:    cobra.NoArgs,
	}, cmdVersion, nil)
}

func cmdVersion(caddycmd.Flags) (int, error) {
	_, full := caddy.Version()
	fmt.Printf("asap-sidecar %s\ncaddy %s\n", Version, full)
	return 0, nil
}

// --- shared flags and helpers ---------------------------------------------

// addAdminFlags adds the flags that find a running sidecar's admin API.
func addAdminFlags(fs *pflag.FlagSet) {
	fs.String("address", "", "admin API address of the running sidecar")
	fs.String("config", "", "config file, to find the admin address in")
	fs.String("adapter", "", "adapter of --config")
	fs.String("storage", "", "storage directory of the asap block to ask, when the sidecar runs several")
}

// adminRequest asks the running sidecar found by the admin flags. An
// answer of 400 or more is an error carrying the sidecar's message.
func adminRequest(fl caddycmd.Flags, method, uri string, body []byte) (*http.Response, error) {
	addr, err := caddycmd.DetermineAdminAPIAddress(fl.String("address"), nil, fl.String("config"), fl.String("adapter"))
	if err != nil {
		return nil, fmt.Errorf("finding the admin API: %w", err)
	}
	if dir := fl.String("storage"); dir != "" {
		sep := "?"
		if strings.Contains(uri, "?") {
			sep = "&"
		}
		uri += sep + "storage=" + url.QueryEscape(dir)
	}
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	resp, err := caddycmd.AdminAPIRequest(addr, method, uri, nil, rd)
	if err != nil {
		hint := ""
		// Caddy's "HTTP <status>: <message>" is an answer; anything
		// else means no sidecar answered.
		if !strings.HasPrefix(err.Error(), "HTTP ") {
			hint = " (is it running? for a stopped one use --db where the command has it)"
		}
		return nil, fmt.Errorf("asking the sidecar at %s: %w%s", addr, err, hint)
	}
	return resp, nil
}

// addDBFlag adds --db, the storage directory of a stopped sidecar.
func addDBFlag(fs *pflag.FlagSet, usage string) {
	fs.String("db", "", usage)
}

// openStoppedDB opens the database of the stopped sidecar named by --db.
// Commands that only read open it readOnly: then no file in the
// directory changes, and the open fails rather than recover a database
// left by a crash.
func openStoppedDB(fl caddycmd.Flags, readOnly bool) (*storage.DB, error) {
	dir := fl.String("db")
	db, err := storage.Open(storage.Options{Dir: dir, ReadOnly: readOnly})
	switch {
	case errors.Is(err, storage.ErrNotClosedCleanly):
		return nil, fmt.Errorf("--db %s: %w\n(the sidecar did not stop cleanly; start it on this directory once and stop it with SIGTERM, then run this command again)", dir, err)
	case err != nil:
		return nil, fmt.Errorf("--db %s: %w\n(a running sidecar holds its database: drop --db to ask it through its admin API)", dir, err)
	}
	return db, nil
}

// addOutputFlag adds -o/--output.
func addOutputFlag(fs *pflag.FlagSet) {
	fs.StringP("output", "o", "", "write the result to this file (mode 0600) instead of stdout")
}

// output is where a command writes its result: the file named by
// -o/--output, or stdout when it is empty or "-". Close reports a write
// the file system refused late.
type output struct {
	io.Writer
	file *os.File
}

func openOutput(fl caddycmd.Flags) (*output, error) {
	name := fl.String("output")
	if name == "" || name == "-" {
		return &output{Writer: os.Stdout}, nil
	}
	// Results can be tokens or audit records: not for other users.
	f, err := os.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("-o: %w", err)
	}
	return &output{Writer: f, file: f}, nil
}

func (o *output) Close() error {
	if o.file == nil {
		return nil
	}
	if err := o.file.Close(); err != nil {
		return fmt.Errorf("-o: %w", err)
	}
	return nil
}

// withOutput runs fn with the command's output and closes it, returning
// fn's status and error, or the close error.
func withOutput(fl caddycmd.Flags, fn func(w io.Writer) (int, error)) (int, error) {
	out, err := openOutput(fl)
	if err != nil {
		return exitFailure, err
	}
	status, err := fn(out)
	if cerr := out.Close(); err == nil && cerr != nil {
		return exitFailure, cerr
	}
	return status, err
}

// flagTime reads a time flag: absolute, or a duration back from now.
func flagTime(name, v string) (time.Time, error) {
	if v == "" {
		return time.Time{}, nil
	}
	if d, err := config.ParseDuration(v); err == nil {
		return time.Now().Add(-d).UTC(), nil
	}
	t, err := api.ParseTime(v)
	if err != nil {
		return time.Time{}, fmt.Errorf("--%s: %v, or a duration such as 24h", name, err)
	}
	return t, nil
}

// --- usage ------------------------------------------------------------------

func usageCommand() *cobra.Command {
	usage := &cobra.Command{
		Use:   "usage",
		Short: "Usage metering: export events",
		Long: `
Reads the usage events the sidecar metered, from a running sidecar or, with
--db, from a stopped one's database.`,
		Example: `  asap-caddy asap usage export --format csv --since 24h -o usage.csv`,
	}
	usage.AddCommand(command(cobra.Command{
		Use:   "export",
		Short: "Export usage events as CSV or JSON",
		Long: `
Writes usage events in the Usage API's export formats: CSV with the
reference's header, or JSON {"data": [...]}. Filters: --agent, --consumer,
--since and --until (RFC 3339 time, date, or a duration back from now such
as 24h or 7d). With --db it reads a stopped sidecar's database, read-only.`,
		Example: `  asap-caddy asap usage export --format csv --since 24h > usage.csv
  asap-caddy asap usage export --db /var/lib/asap --agent urn:asap:agent:research -o usage.csv`,
		Args: cobra.NoArgs,
	}, cmdUsageExport, func(fs *pflag.FlagSet) {
		fs.String("format", "csv", "csv or json")
		fs.String("agent", "", "only this agent URN")
		fs.String("consumer", "", "only this consumer URN")
		fs.String("since", "", "from this time (RFC 3339, date, or a duration back from now: 24h, 7d)")
		fs.String("until", "", "up to this time (same forms as --since)")
		fs.Int("limit", 100000, "at most this many events")
		addAdminFlags(fs)
		addDBFlag(fs, "read this stopped sidecar's storage directory instead")
		addOutputFlag(fs)
	}))
	return usage
}

func cmdUsageExport(fl caddycmd.Flags) (int, error) {
	format := fl.String("format")
	if format != "csv" && format != "json" {
		return exitFailure, fmt.Errorf("--format must be csv or json, not %q", format)
	}
	f := metering.Filter{AgentID: fl.String("agent"), ConsumerID: fl.String("consumer")}
	var err error
	if f.Start, err = flagTime("since", fl.String("since")); err != nil {
		return exitFailure, err
	}
	if f.End, err = flagTime("until", fl.String("until")); err != nil {
		return exitFailure, err
	}
	limit, err := fl.GetInt("limit")
	if err != nil || limit < 1 {
		return exitFailure, fmt.Errorf("--limit must be a positive number of events")
	}
	if fl.String("db") != "" {
		db, err := openStoppedDB(fl, true)
		if err != nil {
			return exitFailure, err
		}
		defer db.Close()
		events, err := metering.New(db, 0).Query(f, limit, 0)
		if err != nil {
			return exitFailure, err
		}
		return withOutput(fl, func(w io.Writer) (int, error) {
			if format == "csv" {
				return status(metering.WriteCSV(w, events))
			}
			return status(json.NewEncoder(w).Encode(map[string]any{"data": events}))
		})
	}
	q := url.Values{"export_format": {format}, "limit": {strconv.Itoa(limit)}}
	if f.AgentID != "" {
		q.Set("agent_id", f.AgentID)
	}
	if f.ConsumerID != "" {
		q.Set("consumer_id", f.ConsumerID)
	}
	if !f.Start.IsZero() {
		q.Set("start", f.Start.Format(time.RFC3339Nano))
	}
	if !f.End.IsZero() {
		q.Set("end", f.End.Format(time.RFC3339Nano))
	}
	resp, err := adminRequest(fl, http.MethodGet, "/asap/usage/export?"+q.Encode(), nil)
	if err != nil {
		return exitFailure, err
	}
	defer resp.Body.Close()
	return withOutput(fl, func(w io.Writer) (int, error) {
		_, err := io.Copy(w, resp.Body)
		return status(err)
	})
}

// status is the exit status for err.
func status(err error) (int, error) {
	if err != nil {
		return exitFailure, err
	}
	return 0, nil
}
