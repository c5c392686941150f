// Package asapsidecar registers every asap-sidecar Caddy module, so that one
// import (or `xcaddy build --with github.com/asap-sidecar/asap-sidecar`)
// brings in the asap handler, app, admin API, subcommands and demo agent.
package asapsidecar

import (
	_ "github.com/asap-sidecar/asap-sidecar/caddymodule"
	_ "github.com/asap-sidecar/asap-sidecar/caddymodule/demoagent"
)
