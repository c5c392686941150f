#!/usr/bin/env bash
# Coverage of the whole program: the unit tests and the e2e tests (which
# run the built asap-caddy binary as separate processes), merged. Prints
# the coverage of each package and the total; with -o FILE also writes
# the merged profile in `go tool cover` text form.
# Usage: scripts/coverage.sh [-o cover.out]
set -euo pipefail
cd "$(dirname "$0")/.."
out=""
if [ "${1:-}" = "-o" ]; then out=$2; fi
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
mkdir -p "$dir/unit" "$dir/e2e" "$dir/merged"
pkgs=$(go list ./... | grep -v /e2e)
# Unit tests, each package's counters for the whole module.
# A failing run prints what failed (the passing output is not needed).
quiet() { "$@" >"$dir/run.log" 2>&1 || { grep -vE '^(ok|\?) ' "$dir/run.log" >&2; return 1; }; }
quiet go test -count=1 -cover -coverpkg=github.com/asap-sidecar/asap-sidecar/... $pkgs -args -test.gocoverdir="$dir/unit"
# e2e: the binary is built with -cover and writes to ASAP_E2E_COVERDIR.
ASAP_E2E_COVERDIR="$dir/e2e" quiet go test -count=1 ./e2e
go tool covdata merge -i="$dir/unit,$dir/e2e" -o="$dir/merged"
go tool covdata textfmt -i="$dir/merged" -o="$dir/cover.out"
# covdata prints "<pkg> coverage: N% of statements" (a package without
# statements runs into the next line); keep package and figure.
pct() { go tool covdata percent -i="$1" | grep -o '[^[:space:]]*[[:space:]]*coverage: [0-9.]*%' | awk '{printf "  %-60s %s\n", $1, $3}'; }
pct "$dir/merged"
echo "e2e binary alone, the Caddy glue:"
pct "$dir/e2e" | grep 'caddymodule ' || true
printf 'total (unit + e2e): %s\n' "$(go tool cover -func="$dir/cover.out" | awk '/^total:/ {print $3}')"
if [ -n "$out" ]; then cp "$dir/cover.out" "$out"; fi
