#!/usr/bin/env bash
# Mutation testing (issue 10): gremlins over the domain packages and
# storage, one report per package in mutants/ (JSON) and a summary line
# each. Usage: scripts/mutants.sh [package dir ...]   (default: all)
# About 15 minutes on two cores; not part of CI.
set -euo pipefail
cd "$(dirname "$0")/.."
version=v0.6.0
gremlins=$(go env GOPATH)/bin/gremlins
if ! "$gremlins" --version 2>/dev/null | grep -q "${version#v}"; then
	go install github.com/go-gremlins/gremlins/cmd/gremlins@$version
fi
pkgs=("$@")
[ ${#pkgs[@]} -gt 0 ] || pkgs=(caddymodule/protocol caddymodule/delegation caddymodule/metering caddymodule/audit storage)
mkdir -p mutants
for p in "${pkgs[@]}"; do
	out="mutants/$(echo "$p" | tr / _).json"
	echo "== $p"
	"$gremlins" unleash --workers 2 --timeout-coefficient 5 -S lt -o "$out" "./$p" | tail -n 40
done
