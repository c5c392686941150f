// Command asap-caddy is Caddy with the standard modules plus the ASAP
// sidecar modules: the asap handler, app, admin API and subcommands, and the
// demo agent.
package main

import (
	"github.com/caddyserver/caddy/v2"
	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	_ "github.com/caddyserver/caddy/v2/modules/standard"

	_ "github.com/asap-sidecar/asap-sidecar"
	"github.com/asap-sidecar/asap-sidecar/caddymodule"
)

func main() {
	// Usage lines name the binary the operator runs ("asap-caddy asap
	// delegation list"), as the examples do, not "caddy".
	if caddy.CustomBinaryName == "" {
		caddy.CustomBinaryName = "asap-caddy"
	}
	// `asap-caddy version` names the sidecar's release; Caddy appends
	// its own version to this.
	if caddy.CustomVersion == "" {
		caddy.CustomVersion = "asap-sidecar " + caddymodule.Version + ", caddy"
	}
	caddycmd.Main()
}
