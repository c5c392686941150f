package caddymodule

import "github.com/caddyserver/caddy/v2"

// Version is the sidecar's version; release builds may set it with
// -ldflags "-X github.com/asap-sidecar/asap-sidecar/caddymodule.Version=v1.2.3".
var Version = "v1.3.0"

// caddyVersion is the version of the Caddy the sidecar is built on, read
// before main can set caddy.CustomVersion to the sidecar's own.
var caddyVersion = func() string {
	_, full := caddy.Version()
	return full
}()

// CaddyVersion is the version of the Caddy the sidecar is built on.
func CaddyVersion() string { return caddyVersion }
