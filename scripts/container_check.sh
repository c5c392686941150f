#!/usr/bin/env bash
# Proves the container image works, without a registry or a container
# runtime that can start containers (see docs/container.md):
#
#  1. builds the static binary and, with podman, the image from
#     Containerfile.local (FROM scratch only; its runtime stage is the
#     Dockerfile's, line for line);
#  2. mounts the image's root file system and runs the image's own binary
#     in it (chroot) as the image's user, with the image's environment,
#     /data bind-mounted from a temporary directory and the admin socket
#     directory from another, in front of a demo agent on 127.0.0.1:9000;
#  3. mints a token with the agent key the sidecar generated, sends one
#     task through :8080, reads /asap/status over the admin socket, runs
#     the image's HEALTHCHECK, stops the sidecar through the admin socket;
#  4. starts it again on the same /data and sees the task still counted,
#     stops it with SIGTERM, and verifies the audit log offline.
#
# Needs root (mount, chroot). Installs podman with apt-get when missing.
# ASAP_SKIP_CONTAINER=1 skips it (saying so); otherwise a machine where it
# cannot work fails it.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${ASAP_SKIP_CONTAINER:-}" = 1 ]; then
	echo "container check: SKIPPED (ASAP_SKIP_CONTAINER=1)"
	exit 0
fi

started=$SECONDS
step() { printf '\n== [%3ss] %s\n' "$((SECONDS - started))" "$*"; }
ok() { echo "   ok: $*"; }
die() {
	echo "container check FAILED: $*" >&2
	exit 1
}

VERSION=${VERSION:-v1.3.0}
AGENT=urn:asap:agent:demo
CLIENT=urn:asap:agent:client
PROXY_PORT=8080 # the image's proxy port (EXPOSE 8080); the chroot shares the host's network
AGENT_PORT=9000 # the image config's default upstream, 127.0.0.1:9000
IMAGE=localhost/asap-sidecar:check-$$

step "prerequisites"
[ "$(id -u)" = 0 ] || die "run it as root: it mounts the image and chroots into it (or set ASAP_SKIP_CONTAINER=1 to skip)"
need_pkgs=()
command -v podman >/dev/null || need_pkgs+=(podman)
command -v curl >/dev/null || need_pkgs+=(curl)
[ -f /etc/ssl/certs/ca-certificates.crt ] || need_pkgs+=(ca-certificates)
if [ ${#need_pkgs[@]} -gt 0 ]; then
	echo "   installing ${need_pkgs[*]} with apt-get"
	apt-get update -qq >/dev/null || die "apt-get update failed; install ${need_pkgs[*]} by hand, or set ASAP_SKIP_CONTAINER=1"
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_pkgs[@]}" >/dev/null ||
		die "apt-get install ${need_pkgs[*]} failed; install them by hand, or set ASAP_SKIP_CONTAINER=1"
fi
for c in podman curl chroot mount umount go; do
	command -v "$c" >/dev/null || die "$c is not installed"
done
# Fixed loopback ports: the image listens on 8080, its default upstream is
# 9000. Something already answering there would be tested instead.
for p in $PROXY_PORT $AGENT_PORT; do
	if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
		die "port 127.0.0.1:$p is in use; stop what listens there (the image's proxy port is $PROXY_PORT, its default upstream $AGENT_PORT)"
	fi
done
ok "$(podman --version), running as root, ports $PROXY_PORT and $AGENT_PORT free"

WORK=$(mktemp -d /tmp/asap-container-check.XXXXXX)
STORE=$WORK/storage
pm() { podman --root "$STORE" --runroot "$WORK/runroot" "$@"; }
ROOT=
PIDS=()
MOUNTS=()
cleanup() {
	local rc=$?
	set +e
	for pid in "${PIDS[@]}"; do
		kill -TERM "$pid" 2>/dev/null || continue
		for ((i = 0; i < 50; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
		kill -KILL "$pid" 2>/dev/null
		wait "$pid" 2>/dev/null
	done
	for ((i = ${#MOUNTS[@]} - 1; i >= 0; i--)); do
		umount "${MOUNTS[$i]}" 2>/dev/null || umount -l "${MOUNTS[$i]}"
	done
	if [ -n "$ROOT" ]; then pm image unmount "$IMAGE" >/dev/null; fi
	pm rmi -f "$IMAGE" >/dev/null 2>&1
	pm system reset --force >/dev/null 2>&1 # unmounts and empties this private store
	rm -rf "$WORK"
	if [ $rc -ne 0 ]; then echo "container check: FAILED after $((SECONDS - started))s" >&2; fi
	exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# show_log prints the end of a log file to stderr (after a failure).
show_log() { echo "--- last lines of $1:" >&2 && tail -n 30 "$1" >&2 || true; }

step "build the static binary ($VERSION; the first build on a machine compiles everything, minutes on 2 cores)"
CTX=$WORK/ctx
mkdir -p "$CTX/rootfs/etc/ssl/certs" "$CTX/rootfs/data" "$CTX/rootfs/run/asap"
CGO_ENABLED=0 go build -trimpath \
	-ldflags "-s -w -X github.com/asap-sidecar/asap-sidecar/caddymodule.Version=$VERSION" \
	-o "$CTX/rootfs/asap-caddy" ./cmd/asap-caddy
cp -r container/etc/. "$CTX/rootfs/etc/"
cp /etc/ssl/certs/ca-certificates.crt "$CTX/rootfs/etc/ssl/certs/ca-certificates.crt"
HOSTBIN=$CTX/rootfs/asap-caddy
if ldd "$HOSTBIN" >/dev/null 2>&1; then die "the binary is dynamically linked; build it with CGO_ENABLED=0"; fi
ok "$("$HOSTBIN" asap version | head -1), static, $(du -h "$HOSTBIN" | cut -f1)"

step "runtime stages of Dockerfile and Containerfile.local"
stage() { sed -n '/^# --- runtime stage/,$p' "$1"; }
[ -n "$(stage Dockerfile)" ] || die "Dockerfile has no '# --- runtime stage' marker line"
if ! diff <(stage Dockerfile) <(stage Containerfile.local); then
	die "the runtime stages differ (above); make Containerfile.local's match the Dockerfile's"
fi
ok "identical ($(stage Dockerfile | grep -c .) lines)"

step "podman build -f Containerfile.local (FROM scratch, nothing pulled)"
# docker format: the OCI format has no HEALTHCHECK.
if ! pm build --format docker --pull=never --network=none -f Containerfile.local -t "$IMAGE" "$CTX" >"$WORK/build.log" 2>&1; then
	show_log "$WORK/build.log"
	die "podman build failed (above); podman must be able to build FROM scratch here, or set ASAP_SKIP_CONTAINER=1"
fi
ok "built $IMAGE ($(pm image inspect --format '{{.Size}}' "$IMAGE") bytes)"

step "image config"
insp() { pm image inspect --format "$1" "$IMAGE"; }
user=$(insp '{{.Config.User}}')
ports=$(insp '{{range $p, $_ := .Config.ExposedPorts}}{{$p}} {{end}}')
vols=$(insp '{{range $v, $_ := .Config.Volumes}}{{$v}} {{end}}')
entry=$(insp '{{json .Config.Entrypoint}}')
cmd=$(insp '{{json .Config.Cmd}}')
mapfile -t ENV < <(insp '{{range .Config.Env}}{{println .}}{{end}}' | sed '/^$/d')
mapfile -t HEALTH < <(insp '{{range .HealthCheck.Test}}{{println .}}{{end}}' | sed '/^$/d')
[ "$user" = 65532:65532 ] || die "image user is '$user', want 65532:65532"
[ "$ports" = "8080/tcp " ] || die "image exposes '$ports', want only 8080/tcp"
[ "$vols" = "/data " ] || die "image volumes are '$vols', want /data"
[ "$entry" = '["/asap-caddy"]' ] || die "entrypoint is $entry"
[ "${HEALTH[0]:-}" = CMD ] || die "the image has no HEALTHCHECK CMD (got '${HEALTH[*]:-}'); was it built with --format docker?"
ok "user $user, exposes $ports, volume $vols"
ok "entrypoint $entry cmd $cmd"
ok "env ${ENV[*]}"
ok "healthcheck ${HEALTH[*]:1}"

step "podman image mount"
ROOT=$(pm image mount "$IMAGE") || die "podman image mount failed"
[ -x "$ROOT/asap-caddy" ] || die "no /asap-caddy in the mounted image at $ROOT"
for d in data run/asap; do
	[ "$(stat -c %u:%g "$ROOT/$d")" = 65532:65532 ] || die "/$d in the image is owned by $(stat -c %u:%g "$ROOT/$d"), want 65532:65532"
done
[ "$(stat -c %u "$ROOT/asap-caddy")" = 0 ] && [ "$(stat -c %u "$ROOT/etc/asap/Caddyfile")" = 0 ] ||
	die "the binary and the config must belong to root (the asap user must not change them)"
ok "rootfs $ROOT: $(cd "$ROOT" && find . -mindepth 1 | sort | tr '\n' ' ')"

# The volume and the socket dir (as docker run -v ...:/data and the
# container's own /run), owned by the image's user.
DATA=$WORK/data RUNDIR=$WORK/run
mkdir -p "$DATA" "$RUNDIR"
chown 65532:65532 "$DATA" "$RUNDIR"
chmod 0700 "$DATA" "$RUNDIR"
mount --bind "$DATA" "$ROOT/data" && MOUNTS+=("$ROOT/data")
mount --bind "$RUNDIR" "$ROOT/run/asap" && MOUNTS+=("$ROOT/run/asap")
SOCK=$RUNDIR/admin.sock
ok "/data <- $DATA, /run/asap <- $RUNDIR (mode 0700, 65532:65532)"

# in_image runs a command of the image as its user, with its environment.
in_image() {
	env -i "${ENV[@]}" ASAP_AGENT=$AGENT chroot --userspec=65532:65532 "$ROOT" "$@"
}

step "demo agent on 127.0.0.1:$AGENT_PORT (the host binary)"
mkdir -p "$WORK/agent-home"
cat >"$WORK/agent.Caddyfile" <<EOF
{
	admin off
}
:$AGENT_PORT {
	bind 127.0.0.1
	asap_demo_agent {
		agent $AGENT
	}
}
EOF
XDG_DATA_HOME=$WORK/agent-home XDG_CONFIG_HOME=$WORK/agent-home \
	"$HOSTBIN" run --config "$WORK/agent.Caddyfile" --adapter caddyfile >"$WORK/agent.log" 2>&1 &
PIDS+=($!)

# wait_for CMD...: retries CMD for up to 30 s.
wait_for() {
	local i
	for ((i = 0; i < 150; i++)); do
		if "$@" >/dev/null 2>&1; then return 0; fi
		sleep 0.2
	done
	return 1
}
wait_for curl -fsS "http://127.0.0.1:$AGENT_PORT/.well-known/asap/health" || {
	show_log "$WORK/agent.log"
	die "the demo agent did not answer on 127.0.0.1:$AGENT_PORT"
}
ok "answers /.well-known/asap/health"

# start_sidecar runs the image's CMD as the image would: its entrypoint
# and arguments, its user, its environment.
SIDECAR=
start_sidecar() {
	local log=$1
	# exec: env, chroot and the sidecar are then one process, $!.
	(exec env -i "${ENV[@]}" ASAP_AGENT=$AGENT chroot --userspec=65532:65532 "$ROOT" \
		/asap-caddy run --config /etc/asap/Caddyfile --adapter caddyfile >"$log" 2>&1) &
	SIDECAR=$!
	PIDS+=("$SIDECAR")
	wait_for curl -fsS --unix-socket "$SOCK" http://127.0.0.1/asap/status || {
		show_log "$log"
		die "the sidecar did not answer on its admin socket /run/asap/admin.sock"
	}
}
status() { curl -fsS --unix-socket "$SOCK" http://127.0.0.1/asap/status; }

step "start the sidecar from the image (uid 65532, chroot $ROOT)"
start_sidecar "$WORK/sidecar1.log"
procuser=$(stat -c %u:%g "/proc/$SIDECAR")
[ "$procuser" = 65532:65532 ] || die "the sidecar runs as $procuser, want 65532:65532"
[ -S "$SOCK" ] && [ "$(stat -c %u "$SOCK")" = 65532 ] || die "no admin socket owned by 65532 at /run/asap/admin.sock"
[ -f "$DATA/asap/agent.key" ] || die "the sidecar generated no agent key in /data/asap"
ok "pid $SIDECAR as $procuser; admin socket $(stat -c "%A uid %u" "$SOCK"); /data/asap: $(ls "$DATA/asap" | wc -l) files"

step "mint a token offline with the generated agent key (the image's binary)"
TOKEN=$(in_image /asap-caddy asap delegation create --key /data/asap/agent.key --issuer $AGENT \
	--delegate $CLIENT --scopes task.execute --max-tasks 10 --expires-in 1h 2>"$WORK/mint.log") || {
	show_log "$WORK/mint.log"
	die "asap delegation create failed"
}
ok "token of ${#TOKEN} bytes for $CLIENT"

step "one ASAP task through the sidecar on :$PROXY_PORT"
body='{"jsonrpc":"2.0","method":"asap.send","id":"check-1","params":{"envelope":{
 "id":"01JCONTAINERCHECK00000001","asap_version":"0.1","sender":"'$CLIENT'","recipient":"'$AGENT'",
 "payload_type":"task.request","payload":{"conversation_id":"c1","skill_id":"echo","input":{"text":"hello from the image"}}}}}'
answer=$(curl -sS "http://127.0.0.1:$PROXY_PORT/asap" -H 'Content-Type: application/json' \
	-H "X-ASAP-Delegation-Token: $TOKEN" -d "$body") || die "no answer from the sidecar on :$PROXY_PORT"
echo "$answer" | grep -q '"result"' && echo "$answer" | grep -q '"id":"check-1"' &&
	echo "$answer" | grep -q '"payload_type":"task.response"' &&
	echo "$answer" | grep -q 'hello from the image' ||
	die "the answer is not the agent's task.response: $answer"
ok "JSON-RPC result: $(echo "$answer" | head -c 160)..."
refused=$(curl -sS "http://127.0.0.1:$PROXY_PORT/asap" -H 'Content-Type: application/json' -d "${body/check-1/check-2}")
echo "$refused" | grep -q '"error"' || die "a task without a token was not refused: $refused"
ok "without a token: $(echo "$refused" | head -c 120)..."

step "/asap/status over the admin socket"
st=$(status)
echo "$st" | grep -q '"tasks_completed":1' || die "/asap/status does not count the task: $st"
echo "$st" | grep -q "\"version\":\"$VERSION\"" || die "/asap/status names another version: $st"
ok "curl --unix-socket: $(echo "$st" | grep -o '"agent":"[^"]*","storage":"[^"]*"'), tasks_completed 1"
cli=$(in_image /asap-caddy asap status --address unix//run/asap/admin.sock) || die "asap status --address unix//run/asap/admin.sock failed"
echo "$cli" | grep -q '"tasks_completed": 1' || die "asap status: $cli"
ok "asap-caddy asap status --address unix//run/asap/admin.sock (as docker exec would run it)"

step "HEALTHCHECK (the image's own command)"
if ! hc=$(in_image "${HEALTH[@]:1}" 2>&1); then
	die "the image's HEALTHCHECK failed: $hc"
fi
ok "healthcheck said: $hc"

step "graceful stop through the admin socket (POST /stop)"
curl -fsS --unix-socket "$SOCK" -X POST http://127.0.0.1/stop || die "POST /stop failed"
for ((i = 0; i < 150; i++)); do kill -0 "$SIDECAR" 2>/dev/null || break; sleep 0.2; done
kill -0 "$SIDECAR" 2>/dev/null && die "the sidecar did not exit within 30 s of POST /stop"
wait "$SIDECAR" || die "the sidecar exited with status $? after POST /stop"
ok "exited 0"
if in_image "${HEALTH[@]:1}" >/dev/null 2>&1; then die "the HEALTHCHECK passes with the sidecar stopped"; fi
ok "HEALTHCHECK fails while it is stopped"

step "restart from the image on the same /data"
start_sidecar "$WORK/sidecar2.log"
st=$(status)
echo "$st" | grep -q '"tasks_completed":1' || die "after a restart the task is gone from /asap/status: $st"
ok "tasks_completed still 1: $(echo "$st" | grep -o '"audit_entries":[0-9]*')"
kill -TERM "$SIDECAR"
wait "$SIDECAR" || die "the sidecar exited with status $? after SIGTERM"
ok "SIGTERM: exited 0"

step "the stopped sidecar's /data, offline"
owners=$(find "$DATA" -mindepth 1 -printf '%u:%g\n' | sort -u | tr '\n' ' ')
[ "$owners" = "65532:65532 " ] || die "files in /data are owned by $owners, want 65532:65532 only"
verify=$(in_image /asap-caddy asap audit verify --db /data/asap) || die "asap audit verify --db /data/asap failed: $verify"
usage=$(in_image /asap-caddy asap usage export --db /data/asap --format json) || die "asap usage export --db failed"
echo "$usage" | grep -q "\"consumer_id\":\"$CLIENT\"" || die "the usage event is not in /data: $usage"
ok "all files 65532:65532; audit verify: $verify; the usage event of $CLIENT is there"

echo
echo "container check: passed in $((SECONDS - started))s (image $IMAGE built from Containerfile.local, run from its rootfs as 65532)"
