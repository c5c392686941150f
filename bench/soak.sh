#!/usr/bin/env bash
# Soak: every feature on (strict metering, audit with checkpoints,
# delegation, SLA) under sustained wrk load; prints the sidecar's RSS every
# 30 s so growth shows: anonymous memory (heap, stacks, Badger's buffers)
# and file-backed pages (Badger's mmapped tables and value log, which the
# kernel reclaims under pressure). Needs wrk. Usage: bench/soak.sh [seconds] [connections]
set -euo pipefail
secs=${1:-600}
conns=${2:-64}
agent_port=19100
. "$(dirname "$0")/common.sh"
start_agent

cat > "$work/sidecar.Caddyfile" <<CF
{
	admin 127.0.0.1:12119
	log {
		level ERROR
	}
}
:18180 {
	bind 127.0.0.1
	asap {
		agent urn:asap:agent:demo
		storage $work/data
		durability strict
		delegation require
	}
	reverse_proxy 127.0.0.1:19100
}
CF
"$work/asap-caddy" run --config "$work/sidecar.Caddyfile" >"$work/sidecar.log" 2>&1 &
pid=$!
wait_up localhost:12119
export ASAP_TOKEN
ASAP_TOKEN=$("$work/asap-caddy" asap delegation create --address 127.0.0.1:12119 --delegate urn:asap:agent:client --expires-in 1h)
wrk -t2 -c"$conns" -d"${secs}s" -s "$root/bench/task.lua" http://127.0.0.1:18180 > "$work/wrk.txt" &
wrkpid=$!
rss() { awk '/RssAnon|RssFile/ {printf "%s ", $2} END {print ""}' /proc/$pid/status; }
echo "elapsed_s anon_kib file_kib"
t=0
while kill -0 "$wrkpid" 2>/dev/null; do
	echo "$t $(rss)"
	sleep 30
	t=$((t + 30))
done
wait "$wrkpid" || true
grep -E "requests in|Requests/sec|Non-2xx" "$work/wrk.txt"
echo "after the run (anon_kib file_kib): $(rss)"
echo "database on disk: $(du -sh "$work/data" | cut -f1)"
"$work/asap-caddy" asap audit verify --address 127.0.0.1:12119
