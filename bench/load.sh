#!/usr/bin/env bash
# Load benchmark: the sidecar against plain reverse_proxy, same agent, same
# machine, same run. Paths:
#   plain        reverse_proxy alone
#   off          asap with metering, audit and delegation off (parse + capture)
#   relaxed_all  every feature (token checked, metering, audit, SLA), relaxed
#   strict_all   every feature, strict
# each at 16 and 64 connections, then at one connection (added latency).
# Reports tasks/s, p50/p99, the ratio to plain, the sidecar's CPU time per
# task on each path, and the bytes on disk per task of the strict_all
# database after a clean stop. Needs wrk (apt-get install wrk).
# Usage: bench/load.sh [seconds]
#   LOAD_CONNS="16 64"  the concurrent runs ("" for none)
#   LOAD_ONE_SECS=60    a longer one-connection run, e.g. for p99 over a
#                       minute of compactions (default: seconds)
set -euo pipefail
secs=${1:-10}
one_secs=${LOAD_ONE_SECS:-$secs}
conns=${LOAD_CONNS-16 64}
agent_port=19000
. "$(dirname "$0")/common.sh"
start_agent

site() { # port storage-dir options...
	local port=$1 dir=$2
	shift 2
	printf ':%s {\n\tbind 127.0.0.1\n\tasap {\n\t\tagent urn:asap:agent:demo\n\t\tstorage %s\n' "$port" "$dir"
	for o in "$@"; do printf '\t\t%s\n' "$o"; done
	printf '\t}\n\treverse_proxy 127.0.0.1:%s\n}\n' "$agent_port"
}
{
	printf '{\n\tadmin 127.0.0.1:12019\n\tlog {\n\t\tlevel ERROR\n\t}\n}\n'
	printf ':18082 {\n\tbind 127.0.0.1\n\treverse_proxy 127.0.0.1:%s\n}\n' "$agent_port"
	site 18083 "$work/data_off" "metering off" "audit off" "delegation off"
	site 18081 "$work/data_relaxed" "durability relaxed" "delegation require"
	site 18084 "$work/data_strict" "durability strict" "delegation require"
} >"$work/sidecar.Caddyfile"
"$work/asap-caddy" run --config "$work/sidecar.Caddyfile" >"$work/sidecar.log" 2>&1 &
sidecar=$!
wait_up localhost:12019

# CPU seconds (user + system) the sidecar process has used so far.
cpu() { awk -v hz="$(getconf CLK_TCK)" '{ printf "%.3f", ($14 + $15) / hz }' "/proc/$sidecar/stat"; }

# Each sidecar path has its own database, so one run's compactions do not
# land on the next one's syncs.
run() { # name port connections [seconds]
	local c=$3 t=2 d=${4:-$secs} before after
	[ "$c" -lt 2 ] && t=1
	ASAP_TOKEN=${token[$2]:-}
	# One task first: a path that refuses the task would look fast.
	curl -sf -H 'Content-Type: application/json' -H "X-ASAP-Delegation-Token: $ASAP_TOKEN" \
		-d '{"jsonrpc":"2.0","method":"asap.send","id":"c","params":{"envelope":{"id":"01JCHECK'"$2$c"'","asap_version":"0.1","sender":"urn:asap:agent:client","recipient":"urn:asap:agent:demo","payload_type":"task.request","payload":{"conversation_id":"c","skill_id":"echo","input":{"text":"hello"}}}}}' \
		"http://127.0.0.1:$2/asap" | grep -q '"result"' || { echo "$1: the path does not answer tasks" >&2; exit 1; }
	before=$(cpu)
	wrk -t$t -c"$c" -d"${d}s" --latency -s "$root/bench/task.lua" "http://127.0.0.1:$2" >"$work/$1.txt"
	after=$(cpu)
	local rps p50 p99 n
	rps=$(awk '/Requests\/sec/ {print $2}' "$work/$1.txt")
	n=$(awk '/requests in/ {print $1}' "$work/$1.txt")
	p50=$(awk '$1=="50%" {print $2}' "$work/$1.txt")
	p99=$(awk '$1=="99%" {print $2}' "$work/$1.txt")
	echo "$rps" >"$work/$1.rps"
	echo "$n" >"$work/$1.n"
	awk -v a="$before" -v b="$after" -v n="$n" 'BEGIN { printf "%.1f", (b - a) / n * 1e6 }' >"$work/$1.cpu"
	printf '%-18s %10s tasks/s   p50 %-9s p99 %-9s sidecar CPU %6s us/task\n' "$1" "$rps" "$p50" "$p99" "$(cat "$work/$1.cpu")"
}
ratio() { awk -v a="$(cat "$work/$1.rps")" -v b="$(cat "$work/$2.rps")" 'BEGIN { printf "%.2f", a / b }'; }

# Every run sends a token of the same size; only the *_all sidecars check
# it, each against its own key.
export ASAP_TOKEN
declare -A token
for p in 18081:data_relaxed 18084:data_strict 18082:data_strict 18083:data_strict; do
	token[${p%%:*}]=$("$work/asap-caddy" asap delegation create --address 127.0.0.1:12019 --storage "$work/${p##*:}" --delegate urn:asap:agent:client --expires-in 24h)
done
echo "wrk: ${secs}s per run, echo task through each path"
run warmup 18082 16 >/dev/null
for c in $conns; do
	for p in plain:18082 off:18083 relaxed_all:18081 strict_all:18084; do
		run "${p%%:*}_$c" "${p##*:}" "$c"
	done
	echo "  vs plain at $c: off $(ratio off_$c plain_$c)  relaxed_all $(ratio relaxed_all_$c plain_$c)  strict_all $(ratio strict_all_$c plain_$c)   CPU/task strict_all vs plain $(awk -v a="$(cat "$work/strict_all_$c.cpu")" -v b="$(cat "$work/plain_$c.cpu")" 'BEGIN { printf "%.2f", a / b }')"
done
echo "one connection (added latency, no queueing):"
for p in plain:18082 relaxed_all:18081 strict_all:18084; do
	run "${p%%:*}_1" "${p##*:}" 1 "$one_secs"
done
# wrk's latency (e.g. 472.00us, 1.06ms, 2.00s) in microseconds.
us() { awk -v q="$2" '$1==q { v=$2; f=1; if (v ~ /ms$/) f=1000; else if (v ~ /[0-9]s$/) f=1000000; sub(/[a-z]+$/, "", v); printf "%.0f", v*f }' "$work/$1.txt"; }
for p in relaxed_all strict_all; do
	echo "  added by $p: p50 +$(( $(us ${p}_1 50%) - $(us plain_1 50%) ))us  p99 +$(( $(us ${p}_1 99%) - $(us plain_1 99%) ))us"
done

# Bytes per task: stop cleanly (Badger flushes its memtables), then weigh
# the strict_all database against the tasks it recorded.
tasks=$(curl -s localhost:12019/asap/status | python3 -c 'import json,sys; print(sum(a["tasks_forwarded"] for a in json.load(sys.stdin)["agents"] if a["storage"].endswith("/data_strict")))')
kill -TERM "$sidecar"
wait "$sidecar" 2>/dev/null || true
bytes=$(du -sb "$work/data_strict" | cut -f1)
awk -v b="$bytes" -v n="$tasks" 'BEGIN { printf "disk: %d bytes for %d tasks = %.0f bytes/task (strict_all, after a clean stop)\n", b, n, b / n }'
