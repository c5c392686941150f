package caddymodule

// Version is the sidecar's version; release builds set it with
// -ldflags "-X github.com/asap-sidecar/asap-sidecar/caddymodule.Version=v1.2.3".
var Version = "0.1.0-dev"
