# Shared by the bench scripts: a scratch directory removed on exit, the
# built binary, and the demo agent running as its own process.
# Set before sourcing: agent_port. Defines: root, work, start_agent, wait_up.
# The agent is the same binary as the sidecar.
root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT

command -v wrk >/dev/null || { echo "wrk is not installed: apt-get install wrk" >&2; exit 1; }
# ASAP_CADDY runs a binary built elsewhere (another commit, for a before
# and after); by default this checkout is built.
if [ -n "${ASAP_CADDY:-}" ]; then
	cp "$ASAP_CADDY" "$work/asap-caddy"
else
	go build -o "$work/asap-caddy" "$root/cmd/asap-caddy"
fi

start_agent() {
	cat > "$work/agent.Caddyfile" <<CF
{
	admin off
	log {
		level ERROR
	}
}
:$agent_port {
	bind 127.0.0.1
	asap_demo_agent
}
CF
	"$work/asap-caddy" run --config "$work/agent.Caddyfile" >"$work/agent.log" 2>&1 &
}

# wait_up ADMIN: until the sidecar's admin API and the agent answer.
wait_up() {
	for _ in $(seq 100); do
		curl -sf "$1/asap/status" >/dev/null && curl -sf "localhost:$agent_port/.well-known/asap/health" >/dev/null && return
		sleep 0.1
	done
	echo "the sidecar or the agent did not start; see $work/*.log" >&2
	exit 1
}
