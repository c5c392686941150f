#!/usr/bin/env bash
# Mutation testing (issue 10): gremlins over the domain packages, storage
# and the request path, one report per package in mutants/ (JSON) and a
# summary line each. Usage: scripts/mutants.sh [package dir ...]
# (default: all). "caddymodule" is the request path: the handler, body
# decoding, dedup, records, authorization, capture and the WebSocket
# proxy; the admin, API and command files of that package are left out,
# and so are its subpackages (they have their own runs).
# About 1.5 hours on two cores; not part of CI.
set -euo pipefail
cd "$(dirname "$0")/.."
version=v0.6.0
gremlins=$(go env GOPATH)/bin/gremlins
if ! "$gremlins" --version 2>/dev/null | grep -q "${version#v}"; then
	go install github.com/go-gremlins/gremlins/cmd/gremlins@$version
fi
pkgs=("$@")
[ ${#pkgs[@]} -gt 0 ] || pkgs=(caddymodule/protocol caddymodule/delegation caddymodule/metering caddymodule/audit storage caddymodule)
mkdir -p mutants
for p in "${pkgs[@]}"; do
	out="mutants/$(echo "$p" | tr / _).json"
	extra=()
	if [ "$p" = caddymodule ]; then
		extra=(--tags mutants -E '^(api|audit|delegation|demoagent|metering|protocol|sla)/')
		for f in admin alerts app auditapi caddyfile command command_audit command_delegation delegationapi metrics publicapi slaapi slaglue version; do
			extra+=(-E "^$f\.go$")
		done
	fi
	echo "== $p"
	# gremlins times each mutant against the coverage run: a cached
	# result would make that baseline near zero and every mutant time out.
	go clean -testcache
	"$gremlins" unleash --workers 2 --timeout-coefficient 5 -S lt "${extra[@]}" -o "$out" "./$p" | tail -n 60
done
