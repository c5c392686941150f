#!/usr/bin/env bash
# Load benchmark: the sidecar (strict and relaxed) against plain
# reverse_proxy, same agent, same machine, same run. Needs wrk
# (apt-get install wrk). Usage: bench/load.sh [seconds] [connections]
set -euo pipefail
secs=${1:-10}
conns=${2:-64}
agent_port=19000
. "$(dirname "$0")/common.sh"
start_agent

cat > "$work/sidecar.Caddyfile" <<CF
{
	admin 127.0.0.1:12019
	log {
		level ERROR
	}
}
:18080 {
	bind 127.0.0.1
	asap {
		agent urn:asap:agent:demo
		storage $work/data1
		durability strict
		delegation off
	}
	reverse_proxy 127.0.0.1:19000
}
:18084 {
	bind 127.0.0.1
	asap {
		agent urn:asap:agent:demo
		storage $work/data2
		durability strict
		delegation require
	}
	reverse_proxy 127.0.0.1:19000
}
:18081 {
	bind 127.0.0.1
	asap {
		agent urn:asap:agent:demo
		storage $work/data3
		durability relaxed
		delegation off
	}
	reverse_proxy 127.0.0.1:19000
}
:18082 {
	bind 127.0.0.1
	reverse_proxy 127.0.0.1:19000
}
:18083 {
	bind 127.0.0.1
	asap {
		agent urn:asap:agent:demo
		storage $work/data4
		metering off
		delegation off
	}
	reverse_proxy 127.0.0.1:19000
}
CF
"$work/asap-caddy" run --config "$work/sidecar.Caddyfile" >"$work/sidecar.log" 2>&1 &
wait_up localhost:12019

# Each sidecar path has its own database, so one run's compactions do not
# land on the next one's syncs.
run() { # name port [connections]
	local c=${3:-$conns} t=2
	[ "$c" -lt 2 ] && t=1
	wrk -t$t -c"$c" -d"${secs}s" --latency -s "$root/bench/task.lua" "http://127.0.0.1:$2" > "$work/$1.txt"
	local rps p50 p99
	rps=$(awk '/Requests\/sec/ {print $2}' "$work/$1.txt")
	p50=$(awk '$1=="50%" {print $2}' "$work/$1.txt")
	p99=$(awk '$1=="99%" {print $2}' "$work/$1.txt")
	printf '%-22s %10s req/s   p50 %-9s p99 %-9s\n' "$1" "$rps" "$p50" "$p99"
	echo "$rps" > "$work/$1.rps"
}
echo "wrk: ${secs}s, $conns connections, echo task through each path"
# Every run sends the same request bytes, token included; only the
# all-features sidecar checks it.
export ASAP_TOKEN
ASAP_TOKEN=$("$work/asap-caddy" asap delegation create --address 127.0.0.1:12019 --storage "$work/data2" --delegate urn:asap:agent:client --expires-in 1h)
run warmup 18082 >/dev/null
run plain_reverse_proxy 18082
run asap_metering_off 18083
run asap_strict 18080
run asap_all_features 18084
run asap_relaxed 18081
echo "latency at one connection (no queueing):"
run plain_1conn 18082 1
run strict_1conn 18080 1
run relaxed_1conn 18081 1
run all_features_1conn 18084 1
awk -v p="$(cat "$work/plain_reverse_proxy.rps")" -v s="$(cat "$work/asap_strict.rps")" -v r="$(cat "$work/asap_relaxed.rps")" -v o="$(cat "$work/asap_metering_off.rps")" \
	-v a="$(cat "$work/asap_all_features.rps")" \
	'BEGIN { printf "vs plain: metering-off %.2f  strict %.2f  relaxed %.2f  all features (token+strict) %.2f   vs metering-off: strict %.2f  relaxed %.2f\n", o/p, s/p, r/p, a/p, s/o, r/o }'
curl -s "localhost:12019/asap/status?storage=$work/data2" | tr -d '\n' | head -c 400; echo
