package caddymodule

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"time"

	"github.com/caddyserver/caddy/v2"
	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/spf13/cobra"

	"github.com/asap-sidecar/asap-sidecar/caddymodule/api"
	"github.com/asap-sidecar/asap-sidecar/caddymodule/metering"
	"github.com/asap-sidecar/asap-sidecar/config"
	"github.com/asap-sidecar/asap-sidecar/storage"
)

func init() {
	caddycmd.RegisterCommand(caddycmd.Command{
		Name:  "asap",
		Usage: "<command> [flags]",
		Short: "Operate the ASAP sidecar (keys, delegations, usage, audit, version)",
		Long: `
Commands for operating the ASAP sidecar. They talk to a running sidecar
through its admin API (--address, default: from --config, else
localhost:2019); with --db DIR they read a stopped sidecar's database
directly.

Run 'asap-caddy asap <command> --help' for a command's flags.`,
		CobraFunc: func(cmd *cobra.Command) {
			cmd.AddCommand(versionCommand(), usageCommand(), keygenCommand(), delegationCommand(), auditCommand())
		},
	})
}

func versionCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the sidecar and Caddy versions",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, full := caddy.Version()
			fmt.Fprintf(cmd.OutOrStdout(), "asap-sidecar %s\ncaddy %s\n", Version, full)
			return nil
		},
	}
}

func usageCommand() *cobra.Command {
	usage := &cobra.Command{Use: "usage", Short: "Usage metering: export events"}
	var format, agent, consumer, since, until, db, output string
	var af adminFlags
	var limit int
	export := &cobra.Command{
		Use:   "export",
		Short: "Export usage events as CSV or JSON",
		Long: `
Writes usage events in the Usage API's export formats: CSV with the
reference's header, or JSON {"data": [...]}. Filters: --agent, --consumer,
--since and --until (RFC 3339 time, date, or a duration back from now such
as 24h or 7d).`,
		Example: `  asap-caddy asap usage export --format csv --since 24h > usage.csv
  asap-caddy asap usage export --db /var/lib/asap --agent urn:asap:agent:research`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if format != "csv" && format != "json" {
				return fmt.Errorf("--format must be csv or json, not %q", format)
			}
			f := metering.Filter{AgentID: agent, ConsumerID: consumer}
			var err error
			if f.Start, err = flagTime("since", since); err != nil {
				return err
			}
			if f.End, err = flagTime("until", until); err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if output != "" && output != "-" {
				file, err := os.Create(output)
				if err != nil {
					return err
				}
				defer file.Close()
				out = file
			}
			if db != "" {
				return exportFromDB(out, db, f, format, limit)
			}
			return exportFromAdmin(out, &af, f, format, limit)
		},
	}
	fl := export.Flags()
	fl.StringVar(&format, "format", "csv", "csv or json")
	fl.StringVar(&agent, "agent", "", "only this agent URN")
	fl.StringVar(&consumer, "consumer", "", "only this consumer URN")
	fl.StringVar(&since, "since", "", "from this time (RFC 3339, date, or a duration back from now: 24h, 7d)")
	fl.StringVar(&until, "until", "", "up to this time (same forms as --since)")
	fl.IntVar(&limit, "limit", 100000, "at most this many events")
	af.add(export)
	fl.StringVar(&db, "db", "", "read this stopped sidecar's storage directory instead")
	fl.StringVarP(&output, "output", "o", "", "write to this file instead of stdout")
	usage.AddCommand(export)
	return usage
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

func exportFromDB(out io.Writer, dir string, f metering.Filter, format string, limit int) error {
	db, err := storage.Open(storage.Options{Dir: dir})
	if err != nil {
		return fmt.Errorf("%w\n(a running sidecar holds its database: drop --db to ask it through its admin API)", err)
	}
	defer db.Close()
	events, err := metering.New(db, 0).Query(f, limit, 0)
	if err != nil {
		return err
	}
	if format == "csv" {
		return metering.WriteCSV(out, events)
	}
	return json.NewEncoder(out).Encode(map[string]any{"data": events})
}

func exportFromAdmin(out io.Writer, af *adminFlags, f metering.Filter, format string, limit int) error {
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
	resp, err := af.request(http.MethodGet, "/asap/usage/export?"+q.Encode(), nil)
	if err != nil {
		return fmt.Errorf("%w (is it running? for a stopped one use --db)", err)
	}
	defer resp.Body.Close()
	_, err = io.Copy(out, resp.Body)
	return err
}
