#!/usr/bin/env bash
# Reproducible benchmarks for countersign on loopback (see BENCHMARKS.md).
#
#   scripts/bench.sh              passthrough comparison + criterion + load harness
#   scripts/bench.sh passthrough  only the wrk comparison (direct / nginx / countersign)
#   scripts/bench.sh legacy       wrk -c1 in front of a split-write, Nagle-on keep-alive upstream
#                                 (Python http.server style): direct / nginx default / nginx with
#                                 upstream keep-alive / countersign
#
# BIN (default target/release/countersign, built here) runs another binary instead.
#
# Knobs (environment): ROUNDS (default 3), DURATION (wrk seconds, default 5), CONNS (default 32),
# WORKERS (space-separated worker counts, default "1 2"), OUT (a file the tables are written to;
# default: printed only).
#
# Everything listens on 127.0.0.1; every process started here is stopped on exit.
set -euo pipefail

cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5}
CONNS=${CONNS:-32}
WORKERS=${WORKERS:-"1 2"}
MODE=${1:-all}
BIN=${BIN:-}

WORK=$(mktemp -d)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]:-}"; do
        [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]:-}"; do
        [ -n "$pid" ] && wait "$pid" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

need() {
    local missing=()
    command -v nginx >/dev/null || missing+=(nginx-light)
    command -v wrk >/dev/null || missing+=(wrk)
    if [ ${#missing[@]} -gt 0 ]; then
        echo "installing ${missing[*]}" >&2
        local sudo=""
        [ "$(id -u)" -ne 0 ] && sudo=sudo
        $sudo apt-get update -qq
        $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" ||
            $sudo apt-get install -y -qq --no-install-recommends nginx wrk
    fi
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

wait_port() {
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.05
    done
    echo "nothing listens on $1" >&2
    return 1
}

start_nginx() { # name conf-body
    local dir="$WORK/$1"
    mkdir -p "$dir/logs"
    cat >"$dir/nginx.conf" <<EOF
worker_processes $2;
pid $dir/nginx.pid;
error_log $dir/logs/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    $3
}
EOF
    nginx -p "$dir" -c "$dir/nginx.conf" -g 'daemon off;' &
    PIDS+=($!)
}

run_wrk() { # url -> "rps p50_ms p99_ms"
    wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency "$1" | awk '
        function ms(v) { if (v ~ /us$/) return v / 1000; if (v ~ /ms$/) return v + 0; if (v ~ /s$/) return v * 1000; return v }
        /^ +50%/ { p50 = ms($2) }
        /^ +99%/ { p99 = ms($2) }
        /^Requests\/sec/ { rps = $2 }
        END { printf "%d %.3f %.3f\n", rps, p50, p99 }'
}

passthrough() { # workers
    local w=$1
    local up=$(free_port) px=$(free_port) cs=$(free_port)
    start_nginx "upstream-$w" 1 "server { listen 127.0.0.1:$up; location / { return 200 'ok'; } }"
    start_nginx "proxy-$w" "$w" "upstream up { server 127.0.0.1:$up; keepalive 64; }
    server { listen 127.0.0.1:$px; location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection \"\"; } }"
    cat >"$WORK/countersign-$w.yaml" <<EOF
listen: "127.0.0.1:$cs"
server: { threads: $w }
upstreams:
  app: { address: "127.0.0.1:$up" }
session: { kind: cookie, cookie: sid }
audit: { stdout: false, path: "$WORK/audit-$w.jsonl" }
routes:
  - { name: delete-user, match: { methods: [DELETE], path: "/api/users/{id}" }, upstream: app, risk: high }
  - { name: default, match: { path: "/{*rest}" }, upstream: app, risk: low }
EOF
    RUST_LOG=warn "$BIN" run --config "$WORK/countersign-$w.yaml" 2>"$WORK/countersign-$w.log" &
    PIDS+=($!)
    wait_port "$up"
    wait_port "$px"
    wait_port "$cs"
    # Warm up every path (connection pools, page cache).
    for port in $up $px $cs; do wrk -t1 -c"$CONNS" -d1s "http://127.0.0.1:$port/" >/dev/null; done
    local r
    for r in $(seq "$ROUNDS"); do
        for target in direct:$up nginx:$px countersign:$cs; do
            echo "$w ${target%%:*} $(run_wrk "http://127.0.0.1:${target#*:}/")" | tee -a "$WORK/passthrough.raw" >&2
        done
    done
}

passthrough_table() {
    echo "| workers | target | req/s (median) | req/s (min–max) | p50 ms | p99 ms | vs nginx (req/s) |"
    echo "|---|---|---|---|---|---|---|"
    python3 - "$WORK/passthrough.raw" <<'EOF'
import sys, statistics, collections
rows = collections.defaultdict(list)
for line in open(sys.argv[1]):
    w, name, rps, p50, p99 = line.split()
    rows[(int(w), name)].append((int(rps), float(p50), float(p99)))
for w in sorted({k[0] for k in rows}):
    ng = statistics.median(r[0] for r in rows[(w, "nginx")])
    for name in ("direct", "nginx", "countersign"):
        rs = rows[(w, name)]
        rps = statistics.median(r[0] for r in rs)
        p50 = statistics.median(r[1] for r in rs)
        p99 = statistics.median(r[2] for r in rs)
        print(f"| {w} | {name} | {rps:.0f} | {min(r[0] for r in rs)}–{max(r[0] for r in rs)} "
              f"| {p50:.3f} | {p99:.3f} | {rps / ng:.2f}× |")
EOF
}

machine() {
    echo "- date: $(date -u +%Y-%m-%dT%H:%MZ)"
    echo "- nproc: $(nproc)"
    echo "- CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
    echo "- kernel: $(uname -r); $(nginx -v 2>&1); $(rustc --version)"
    echo "- wrk -t1 -c$CONNS -d${DURATION}s --latency, $ROUNDS alternating rounds (direct, nginx, countersign), median shown"
}

legacy() {
    local up=$(free_port) plain=$(free_port) pooled=$(free_port) cs=$(free_port)
    # Head and body in two writes, TCP_NODELAY off, HTTP/1.1 keep-alive: http.server/wsgiref.
    cat >"$WORK/splitwrite.py" <<'PY'
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        body = b'{"ok":true}\n'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
PY
    python3 "$WORK/splitwrite.py" "$up" &
    PIDS+=($!)
    start_nginx legacy-plain 1 "server { listen 127.0.0.1:$plain; location / { proxy_pass http://127.0.0.1:$up; } }"
    start_nginx legacy-pooled 1 "upstream up { server 127.0.0.1:$up; keepalive 16; }
    server { listen 127.0.0.1:$pooled; location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection \"\"; } }"
    cat >"$WORK/countersign-legacy.yaml" <<EOF
listen: "127.0.0.1:$cs"
server: { threads: 1 }
upstreams:
  app: { address: "127.0.0.1:$up" }
session: { kind: cookie, cookie: sid }
audit: { stdout: false, path: "$WORK/audit-legacy.jsonl" }
routes:
  - { name: default, match: { path: "/{*rest}" }, upstream: app, risk: low }
EOF
    RUST_LOG=warn "$BIN" run --config "$WORK/countersign-legacy.yaml" 2>"$WORK/countersign-legacy.log" &
    PIDS+=($!)
    for port in $up $plain $pooled $cs; do wait_port "$port"; done
    local r
    for r in $(seq "$ROUNDS"); do
        for target in direct:$up nginx-default:$plain nginx-keepalive:$pooled countersign:$cs; do
            echo "legacy ${target%%:*} $(CONNS=1 run_wrk "http://127.0.0.1:${target#*:}/")" |
                tee -a "$WORK/legacy.raw" >&2
        done
    done
}

legacy_table() {
    echo "| target (wrk -t1 -c1) | req/s (median) | p50 ms | p99 ms |"
    echo "|---|---|---|---|"
    python3 - "$WORK/legacy.raw" <<'PY'
import sys, statistics, collections
rows = collections.defaultdict(list)
for line in open(sys.argv[1]):
    _, name, rps, p50, p99 = line.split()
    rows[name].append((int(rps), float(p50), float(p99)))
for name in ("direct", "nginx-default", "nginx-keepalive", "countersign"):
    rs = rows[name]
    print(f"| {name} | {statistics.median(r[0] for r in rs):.0f} "
          f"| {statistics.median(r[1] for r in rs):.3f} | {statistics.median(r[2] for r in rs):.3f} |")
PY
}

need
if [ -z "$BIN" ]; then
    cargo build --release --quiet
    BIN=target/release/countersign
fi
if [ "$MODE" = legacy ]; then
    {
        echo "## Machine"
        echo
        CONNS=1 machine
        echo
        echo "## Legacy upstream (split writes, Nagle on, keep-alive)"
        echo
    } >"$WORK/report.md"
    legacy
    legacy_table >>"$WORK/report.md"
    cat "$WORK/report.md"
    if [ -n "${OUT:-}" ]; then cp "$WORK/report.md" "$OUT"; fi
    exit 0
fi
{
    echo "## Machine"
    echo
    machine
    echo
    echo "## Passthrough"
    echo
} >"$WORK/report.md"
for w in $WORKERS; do passthrough "$w"; done
passthrough_table >>"$WORK/report.md"

if [ "$MODE" = all ]; then
    echo "running criterion and the load harness (cargo bench)" >&2
    cargo bench --bench proof --bench confirmation -- --noplot 2>/dev/null |
        grep -E '^[a-z_/0-9 ]+ +time:|^[a-z_/0-9]+$|time:' >"$WORK/criterion.txt" || true
    {
        echo
        echo "## Criterion (median of the [low median high] interval)"
        echo
        echo '```'
        cat "$WORK/criterion.txt"
        echo '```'
        echo
    } >>"$WORK/report.md"
    cargo bench --bench load 2>/dev/null >>"$WORK/report.md"
fi

cat "$WORK/report.md"
if [ -n "${OUT:-}" ]; then cp "$WORK/report.md" "$OUT"; fi
