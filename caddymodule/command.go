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
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
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
		Short: "Operate the ASAP sidecar (status, health, keys, delegations, usage, audit, backup, collect, demo, version)",
		Long: `
Commands for operating the ASAP sidecar. Most talk to a running sidecar
through its admin API (--address, default: from --config, else
localhost:2019); with --db DIR they open a stopped sidecar's database
instead (read-only, unless the command writes). 'keygen' and
'delegation create --key', 'delegation inspect' need no sidecar at all.

'demo' starts its own sidecar and shows what it does, step by step.

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
  asap-caddy asap status --address unix//run/asap/admin.sock
  asap-caddy asap delegation create --delegate urn:asap:agent:client --scopes task.execute
  asap-caddy asap audit verify --db /var/lib/asap`
	cmd.AddCommand(versionCommand(), statusCommand(), healthcheckCommand(), keygenCommand(), delegationCommand(), usageCommand(), auditCommand(), backupCommand(), restoreCommand(), collectCommand(), demoCommand())
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
	fmt.Printf("asap-sidecar %s\ncaddy %s\n", Version, CaddyVersion())
	return 0, nil
}

// --- shared flags and helpers ---------------------------------------------

// addAdminFlags adds the flags that find a running sidecar's admin API.
func addAdminFlags(fs *pflag.FlagSet) {
	fs.String("address", "", "admin API address of the running sidecar: HOST:PORT, or a unix socket as unix//PATH (or the PATH alone)")
	fs.String("config", "", "config file, to find the admin address in")
	fs.String("adapter", "", "adapter of --config")
	fs.String("storage", "", "storage directory of the asap block to ask, when the sidecar runs several")
}

// adminRequest asks the running sidecar found by the admin flags. An
// answer of 400 or more is an error carrying the sidecar's message.
func adminRequest(fl caddycmd.Flags, method, uri string, body []byte) (*http.Response, error) {
	addr, err := adminAddress(fl)
	if err != nil {
		return nil, err
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
		// Caddy says "caddy responded with error: HTTP <status>: <body>"
		// for an answer; anything else means no sidecar answered at addr.
		_, answer, answered := strings.Cut(err.Error(), "responded with error: ")
		if !answered {
			return nil, fmt.Errorf("no sidecar answered at %s (%s): %w\n(is it running? give its admin address with --address HOST:PORT (a unix socket: --address unix//PATH), "+
				"or its config with --config FILE to read the address from; for a stopped sidecar use --db DIR where the command has it)",
				addr, adminSource(fl), err)
		}
		if strings.Contains(answer, "?storage=DIR") {
			answer += "\n(the sidecar runs several asap blocks: pick one with --storage DIR)"
		}
		return nil, fmt.Errorf("the sidecar at %s answered %s", addr, answer)
	}
	return resp, nil
}

// adminSource says where the admin address came from.
func adminSource(fl caddycmd.Flags) string {
	switch {
	case fl.String("address") != "":
		return "from --address"
	case fl.String("config") != "":
		return "from --config " + fl.String("config")
	}
	return "the default; neither --address nor --config was given"
}

// adminAddress is --address, else the admin address in --config, else
// Caddy's default. The config is adapted here, quietly: Caddy's
// LoadConfig logs as if it were starting a server.
func adminAddress(fl caddycmd.Flags) (string, error) {
	file, adapter := fl.String("config"), fl.String("adapter")
	if fl.String("address") != "" || file == "" {
		return caddycmd.DetermineAdminAPIAddress(unixAddress(fl.String("address")), nil, "", "")
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return "", fmt.Errorf("--config: %w", err)
	}
	base := strings.ToLower(filepath.Base(file))
	if adapter == "" && (strings.HasPrefix(base, "caddyfile") || strings.HasSuffix(base, ".caddyfile")) {
		adapter = "caddyfile"
	}
	if adapter != "" {
		a := caddyconfig.GetAdapter(adapter)
		if a == nil {
			return "", fmt.Errorf("--adapter: unknown config adapter %q", adapter)
		}
		if b, _, err = a.Adapt(b, map[string]any{"filename": file}); err != nil {
			return "", fmt.Errorf("--config %s: %w", file, err)
		}
	}
	addr, err := caddycmd.DetermineAdminAPIAddress("", b, file, adapter)
	if err != nil {
		return "", fmt.Errorf("--config %s: %w (or give the admin address with --address)", file, err)
	}
	return addr, nil
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

// now is the commands' clock; tests set it.
var now = time.Now

// flagTime reads a time flag: absolute, a duration back from now, or
// today / yesterday (UTC days, as usage periods are). until says the
// flag ends a span: a day given by name or as a bare date then means
// through the end of that day, so --since yesterday --until yesterday is
// all of yesterday.
func flagTime(name, v string, until bool) (time.Time, error) {
	v = strings.TrimSpace(v)
	if v == "" {
		return time.Time{}, nil
	}
	dayOf := func(day time.Time) time.Time {
		if until {
			return day.Add(24*time.Hour - time.Nanosecond)
		}
		return day
	}
	today := now().UTC().Truncate(24 * time.Hour)
	switch strings.ToLower(v) {
	case "today":
		return dayOf(today), nil
	case "yesterday":
		return dayOf(today.Add(-24 * time.Hour)), nil
	}
	if d, err := config.ParseDuration(v); err == nil {
		return now().Add(-d).UTC(), nil
	}
	if day, err := time.Parse("2006-01-02", v); err == nil {
		return dayOf(day), nil
	}
	t, err := api.ParseTime(v)
	if err != nil {
		return time.Time{}, fmt.Errorf("--%s: %v, a duration back from now such as 24h, or today or yesterday", name, err)
	}
	return t, nil
}

// --- usage ------------------------------------------------------------------

func usageCommand() *cobra.Command {
	usage := &cobra.Command{
		Use:   "usage",
		Short: "Usage metering: export events or per-customer totals",
		Long: `
Reads the usage events the sidecar metered, from a running sidecar or, with
--db, from a stopped one's database.`,
		Example: `  asap-caddy asap usage export --format csv --since 24h -o usage.csv
  asap-caddy asap usage export --group-by consumer --since 2026-01-01 --until 2026-01-31 -o billing.csv`,
	}
	usage.AddCommand(command(cobra.Command{
		Use:   "export",
		Short: "Export usage events, or totals per consumer for billing, as CSV or JSON",
		Long: `
Writes usage events in the Usage API's export formats: CSV with the
reference's header, or JSON {"data": [...]}. Filters: --agent, --consumer,
--since and --until (RFC 3339 time; a date; today or yesterday; or a
duration back from now such as 24h or 7d). Days are UTC, and a day given
to --until counts whole: --since 2026-01-01 --until 2026-01-31 is all of
January. With --db it reads a stopped sidecar's database, read-only.

With --group-by consumer it writes one line per customer instead — the
billing export: consumer_id, period (the span covered, e.g.
2026-01-01/2026-01-31), total_tasks, tokens_in, tokens_out, total_tokens,
total_api_calls, total_duration_ms, avg_tokens_per_task. --group-by agent,
day and week total the same way.`,
		Example: `  asap-caddy asap usage export --format csv --since 24h > usage.csv
  asap-caddy asap usage export --db /var/lib/asap --agent urn:asap:agent:research -o usage.csv
  asap-caddy asap usage export --group-by consumer --since yesterday --until yesterday -o billing.csv`,
		Args: cobra.NoArgs,
	}, cmdUsageExport, func(fs *pflag.FlagSet) {
		fs.String("format", "csv", "csv or json")
		fs.String("agent", "", "only this agent URN")
		fs.String("consumer", "", "only this consumer URN")
		fs.String("since", "", "from this time (RFC 3339, date, or a duration back from now: 24h, 7d)")
		fs.String("until", "", "up to this time (same forms as --since)")
		fs.Int("limit", 100000, "at most this many events")
		fs.String("group-by", "", "total per consumer (billing), agent, day or week instead of listing events")
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
	if f.Start, err = flagTime("since", fl.String("since"), false); err != nil {
		return exitFailure, err
	}
	if f.End, err = flagTime("until", fl.String("until"), true); err != nil {
		return exitFailure, err
	}
	if !f.Start.IsZero() && !f.End.IsZero() && f.End.Before(f.Start) {
		return exitFailure, fmt.Errorf("--until (%s) is before --since (%s)", f.End.Format(time.RFC3339), f.Start.Format(time.RFC3339))
	}
	groupBy := fl.String("group-by")
	if groupBy != "" && !metering.ValidGroupBy(groupBy) {
		return exitFailure, fmt.Errorf("--group-by must be consumer, agent, day or week, not %q", groupBy)
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
		if groupBy != "" {
			rows, err := metering.New(db, 0).Aggregate(f, groupBy)
			if err != nil {
				return exitFailure, err
			}
			return withOutput(fl, func(w io.Writer) (int, error) {
				if format == "csv" {
					return status(metering.WriteAggregateCSV(w, rows))
				}
				return status(json.NewEncoder(w).Encode(map[string]any{"group_by": groupBy, "data": rows}))
			})
		}
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
	path := "/asap/usage/export?"
	if groupBy != "" {
		q.Del("limit")
		q.Set("group_by", groupBy)
		path = "/asap/usage/aggregate?"
	}
	resp, err := adminRequest(fl, http.MethodGet, path+q.Encode(), nil)
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
