package caddymodule

import (
	"fmt"

	"github.com/caddyserver/caddy/v2"
	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/spf13/cobra"
)

func init() {
	caddycmd.RegisterCommand(caddycmd.Command{
		Name:  "asap",
		Usage: "<command> [flags]",
		Short: "Operate the ASAP sidecar (version, keys, delegations, usage, audit)",
		Long: `
Commands for operating the ASAP sidecar. They talk to a running sidecar
through its admin API (--address, default localhost:2019).

Run 'asap-caddy asap <command> --help' for a command's flags.`,
		CobraFunc: func(cmd *cobra.Command) {
			cmd.AddCommand(&cobra.Command{
				Use:   "version",
				Short: "Print the sidecar and Caddy versions",
				Args:  cobra.NoArgs,
				RunE: func(cmd *cobra.Command, _ []string) error {
					_, full := caddy.Version()
					fmt.Fprintf(cmd.OutOrStdout(), "asap-sidecar %s\ncaddy %s\n", Version, full)
					return nil
				},
			})
		},
	})
}
