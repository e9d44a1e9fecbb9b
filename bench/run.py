#!/usr/bin/env python3
"""Weir against nginx and haproxy, interleaved, on one machine.

Every proxy and the origin run on core 0, the load generator alone on
core 1; nginx with one worker, Weir with one runtime thread, haproxy with
one thread. Each round measures every configuration once (HTTP/1.1 with
wrk, HTTP/2 cleartext with h2load); the table reports medians over rounds
and the ratio of each Weir row to the row it competes with.

`--compare-binary PATH` runs every selected Weir row a second time, in the
same rounds, against another build of weir (e.g. with a local patch), and
reports each twin's ratio to the row it copies. `--storm` runs the storms
of bench/storm.py instead (issue #13).
"""

import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WEIR = ROOT / "target" / "release" / "weir"
PLUGINS = ROOT / "plugins" / "target" / "wasm32-wasip2" / "release"
API_KEY = "demo-key"
API_KEY_SHA256 = "c48a01f49fd0f2cc404bc3cbbc80e91457a3d41bb429a695243de4c61794155c"

PORTS = {
    "origin": 18000, "origin-h2": 18100,
    "nginx": 18001, "nginx-h2": 18101,
    "haproxy": 18002, "haproxy-h2": 18102,
    "nginx-cache": 18003, "nginx-cache-h2": 18103,
    "weir": 18004,
    "weir-chain": 18005,
    "weir-chain-fresh": 18007,
    "weir-cache": 18006,
    "weir-chain-redis": 18008,
    "redis": 18009,
    "weir-chain-log": 18010,
    "weir-chain-traced": 18011,
}
WEIR_NAMES = ["weir", "weir-chain", "weir-chain-fresh", "weir-cache", "weir-chain-redis",
              "weir-chain-log", "weir-chain-traced"]
# The same Weir configurations run by --compare-binary, 50 ports up.
COMPARE = " [compare binary]"
for _name in WEIR_NAMES:
    PORTS[_name + "-cmp"] = PORTS[_name] + 50

# name, port key (h1), port key (h2), path, competes with
ROWS = [
    ("direct to origin", "origin", "origin-h2", "/13", None),
    ("nginx proxy_pass (keep-alive)", "nginx", "nginx-h2", "/13", None),
    ("haproxy", "haproxy", "haproxy-h2", "/13", None),
    ("Weir, no plugins", "weir", "weir", "/13", "nginx proxy_pass (keep-alive)"),
    ("Weir, 4-plugin chain", "weir-chain", "weir-chain", "/13", "nginx proxy_pass (keep-alive)"),
    ("Weir, 4-plugin chain, fresh instances", "weir-chain-fresh", "weir-chain-fresh", "/13",
     "nginx proxy_pass (keep-alive)"),
    # The same chain with the rate limit's kv.limit on a local redis-server
    # (one EVALSHA per request), against the memory backend (issue #18).
    ("Weir, 4-plugin chain, rate limit on Redis", "weir-chain-redis", "weir-chain-redis", "/13",
     "Weir, 4-plugin chain"),
    # What observing costs (issue #16): the chain with a JSON access-log
    # line per request, and with every request traced (server, plugin and
    # upstream-attempt spans, exported over OTLP/HTTP to the origin nginx).
    ("Weir, 4-plugin chain, access log", "weir-chain-log", "weir-chain-log", "/13",
     "Weir, 4-plugin chain"),
    ("Weir, 4-plugin chain, traced (all sampled)", "weir-chain-traced", "weir-chain-traced",
     "/13", "Weir, 4-plugin chain"),
    ("nginx proxy_cache hit", "nginx-cache", "nginx-cache-h2", "/cache.json", None),
    ("Weir cache hit", "weir-cache", "weir-cache", "/cache.json", "nginx proxy_cache hit"),
    ("direct to origin, 64 KiB", "origin", "origin-h2", "/64k", None),
    ("nginx proxy_pass, 64 KiB", "nginx", "nginx-h2", "/64k", None),
    ("Weir, no plugins, 64 KiB", "weir", "weir", "/64k", "nginx proxy_pass, 64 KiB"),
]


def write(path, text):
    path.write_text(textwrap.dedent(text))
    return path


def origin_conf(work):
    body64 = work / "64k"
    body64.write_bytes(b"x" * 65536)
    return write(work / "origin.conf", f"""
        worker_processes 1;
        pid {work}/origin.pid;
        error_log {work}/origin-error.log warn;
        events {{ worker_connections 4096; }}
        http {{
            access_log off;
            keepalive_requests 1000000;
            server {{
                listen 127.0.0.1:{PORTS['origin']};
                listen 127.0.0.1:{PORTS['origin-h2']} http2;
                location = /13 {{ default_type text/plain; return 200 "Hello, world!"; }}
                location = /64k {{ default_type application/octet-stream; alias {body64}; }}
                # The OTLP sink of the traced Weir: accept and discard.
                location = /v1/traces {{ return 200; }}
                location = /cache.json {{
                    default_type application/json;
                    add_header Cache-Control "public, max-age=3600" always;
                    return 200 '{{"cached":true}}';
                }}
            }}
        }}
    """)


def nginx_conf(work):
    origin = f"127.0.0.1:{PORTS['origin']}"
    return write(work / "nginx.conf", f"""
        worker_processes 1;
        pid {work}/nginx.pid;
        error_log {work}/nginx-error.log warn;
        events {{ worker_connections 4096; }}
        http {{
            access_log off;
            keepalive_requests 1000000;
            upstream origin {{ server {origin}; keepalive 64; }}
            proxy_cache_path {work}/nginx-cache levels=1:2 keys_zone=c:10m;
            server {{
                listen 127.0.0.1:{PORTS['nginx']};
                listen 127.0.0.1:{PORTS['nginx-h2']} http2;
                location / {{
                    proxy_pass http://origin;
                    proxy_http_version 1.1;
                    proxy_set_header Connection "";
                    proxy_set_header Host $host;
                    proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
                }}
            }}
            server {{
                listen 127.0.0.1:{PORTS['nginx-cache']};
                listen 127.0.0.1:{PORTS['nginx-cache-h2']} http2;
                location / {{
                    proxy_pass http://origin;
                    proxy_http_version 1.1;
                    proxy_set_header Connection "";
                    proxy_cache c;
                    add_header X-Cache-Status $upstream_cache_status;
                }}
            }}
        }}
    """)


def haproxy_conf(work):
    origin = f"127.0.0.1:{PORTS['origin']}"
    return write(work / "haproxy.cfg", f"""
        global
            nbthread 1
            maxconn 8000
        defaults
            mode http
            timeout connect 5s
            timeout client 30s
            timeout server 30s
            option http-keep-alive
            http-reuse always
        frontend fe
            bind 127.0.0.1:{PORTS['haproxy']}
            bind 127.0.0.1:{PORTS['haproxy-h2']} proto h2
            option forwardfor
            default_backend be
        backend be
            server origin {origin}
    """)


def weir_conf(work, name, chain, instances="pooled"):
    origin = f"127.0.0.1:{PORTS['origin']}"
    text = f"""
        default_upstream = "origin"
        chain = [{', '.join(f'"{p}"' for p in chain)}]

        [[listeners]]
        address = "127.0.0.1:{PORTS[name]}"

        [limits]
        max_connections = 100000

        [runtime]
        cache_dir = "{work}/weir-cache-dir"

        [upstreams.origin]
        endpoints = ["{origin}"]
        max_idle_per_endpoint = 256
    """
    if name.startswith("weir-cache"):
        text += """
        [cache]
        capacity_bytes = 67108864
        """
    if name.startswith("weir-chain-log"):
        text += f"""
        [access_log]
        path = "{work}/{name}-access.log"
        """
    if name.startswith("weir-chain-traced"):
        text += f"""
        [traces]
        endpoint = "http://{origin}/v1/traces"
        """
    if name.startswith("weir-chain-redis"):
        text += f"""
        [kv]
        backend = "redis"
        url = "redis://127.0.0.1:{PORTS['redis']}"
        """
    if chain:
        text += f"""
        [plugins.auth]
        file = "{PLUGINS}/auth.wasm"
        instances = "{instances}"
        [plugins.auth.config]
        methods = ["api_key"]
        api_key = {{ header = "x-api-key", keys = [{{ sha256 = "{API_KEY_SHA256}", user = "bench", tenant = "bench" }}] }}

        [plugins.ratelimit]
        file = "{PLUGINS}/rate_limit.wasm"
        instances = "{instances}"
        [plugins.ratelimit.config]
        headers_on_success = true
        [[plugins.ratelimit.config.limits]]
        name = "tenant"
        key = "property:tenant"
        requests = 30000
        window = "1s"

        [plugins.cache]
        file = "{PLUGINS}/cache_policy.wasm"
        instances = "{instances}"
        [[plugins.cache.config.rules]]
        prefix = "/"
        key_properties = ["tenant"]

        [plugins.router]
        file = "{PLUGINS}/router.wasm"
        instances = "{instances}"
        [plugins.router.config]
        default_upstream = "origin"
        [[plugins.router.config.rules]]
        name = "api"
        path_prefix = "/api"
        upstream = "origin"
        """
    return write(work / f"{name}.toml", text)


def cpu_idle_fraction(seconds=1.0):
    def snapshot():
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        return fields[3] + fields[4], sum(fields)
    idle1, total1 = snapshot()
    time.sleep(seconds)
    idle2, total2 = snapshot()
    return (idle2 - idle1) / max(1, total2 - total1)


def wrk(port, path, duration, connections):
    out = subprocess.run(
        ["taskset", "-c", "1", "wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency",
         "-H", f"x-api-key: {API_KEY}", f"http://127.0.0.1:{port}{path}"],
        capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    lat = dict(re.findall(r"^\s+(50|99)%\s+([\d.]+\w+)", out, re.M))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return rps, to_ms(lat.get("50")), to_ms(lat.get("99")), int(errors.group(1)) if errors else 0


def h2load(port, path, duration, connections):
    out = subprocess.run(
        ["taskset", "-c", "1", "h2load", "-D", str(duration), "-c", str(connections), "-m", "10",
         "-t", "1", "-H", f"x-api-key: {API_KEY}", f"http://127.0.0.1:{port}{path}"],
        capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out).group(1))
    # h2load reports min/max/mean/sd per request; no percentiles.
    mean = re.search(r"time for request:\s+\S+\s+\S+\s+(\S+)", out)
    failed = int(re.search(r"(\d+) failed", out).group(1))
    non2xx = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    errors = failed + (int(non2xx.group(3)) + int(non2xx.group(4)) if non2xx else 0)
    return rps, to_ms(mean.group(1)) if mean else None, None, errors


def to_ms(text):
    if not text:
        return None
    m = re.match(r"([\d.]+)(us|ms|s)", text)
    value, unit = float(m.group(1)), m.group(2)
    return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value


def peak_rss_mib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None


def wait_port(port, timeout=60):
    import socket
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"nothing listens on {port}")


class Pinned:
    """The processes of one benchmark, pinned to core 0 beside the origin,
    each logging into a work directory of their own; `close` stops them
    and removes it."""

    def __init__(self, prefix):
        self.work = Path(tempfile.mkdtemp(prefix=prefix))
        # nginx workers drop to www-data: let them read the 64 KiB body.
        self.work.chmod(0o755)
        self.procs = []

    def start(self, cmd, **kw):
        p = subprocess.Popen(["taskset", "-c", "0"] + cmd, stdout=subprocess.DEVNULL,
                             stderr=open(self.work / f"{len(self.procs)}.log", "w"), **kw)
        self.procs.append(p)
        return p

    def close(self):
        for p in self.procs:
            p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(self.work, ignore_errors=True)


def main():
    global PLUGINS
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=8)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--only", action="append", default=[],
                        help="measure only rows whose label contains this text, or is exactly it "
                             "with a leading '=' (repeatable; "
                             "for quick checks while optimising, not for published figures)")
    parser.add_argument("--weir-binary", type=Path, default=WEIR,
                        help="the weir to measure (default: target/release/weir)")
    parser.add_argument("--plugins-dir", type=Path, default=PLUGINS,
                        help="where the sample plugins' .wasm files are "
                             "(default: plugins/target/wasm32-wasip2/release)")
    parser.add_argument("--compare-binary", type=Path, default=None,
                        help="also run every selected Weir row with this weir binary, "
                             "interleaved in the same rounds")
    storm = parser.add_argument_group("storms (issue #13): see bench/storm.py")
    storm.add_argument("--storm", action="store_true",
                       help="measure /fast and admin /healthz beside each storm instead")
    storm.add_argument("--storm-duration", type=int, default=15,
                       help="seconds of wrk load / scraping per storm")
    storm.add_argument("--storm-quiet", type=int, default=10,
                       help="seconds each storm's process is sampled quiet first (before "
                            "each round, for the plugin storms)")
    storm.add_argument("--storm-rounds", type=int, default=3,
                       help="quiet and storm phases in turn for the two plugin storms, whose "
                            "target is a p99 ratio; the ratio pools every round's samples")
    storm.add_argument("--storm-busy-connections", type=int, default=64,
                       help="wrk connections to the spinning plugin")
    storm.add_argument("--storm-busy-max-concurrency", type=int, default=128,
                       help="the spinning plugin's max_concurrency (calls beyond it queue "
                            "100 ms, then get 503)")
    storm.add_argument("--storm-wait-idle", type=int, default=180,
                       help="seconds to wait, before each storm, for the machine to be idle")
    storm.add_argument("--storm-reloads", type=int, default=2)
    storm.add_argument("--storm-slow-rounds", type=int, default=3)
    storm.add_argument("--storm-plugin-cpu-percent", type=int, default=None,
                       help="[runtime] max_plugin_cpu_percent of the storms' Weir "
                            "(absent: Weir's default; 100 turns the share limit off)")
    storm.add_argument("--storm-only", action="append", default=[],
                       help="run only this storm: slow, busy, logs, properties, reload, metrics "
                            "(repeatable)")
    args = parser.parse_args()
    PLUGINS = args.plugins_dir.resolve()
    if args.storm:
        return run_storm(args)
    def chosen(label):
        # "=LABEL" names one row exactly; other text matches as a substring.
        return any(label == o[1:] if o.startswith("=") else o in label for o in args.only)

    rows = [r for r in ROWS if not args.only or chosen(r[0])]
    if args.compare_binary:
        rows += [(label + COMPARE, h1 + "-cmp", h2 + "-cmp", path, label)
                 for label, h1, h2, path, _ in rows if h1.startswith("weir")]

    pinned = Pinned("weir-bench-")
    work, start = pinned.work, pinned.start
    try:
        start(["nginx", "-c", str(origin_conf(work)), "-g", "daemon off;"])
        start(["nginx", "-c", str(nginx_conf(work)), "-g", "daemon off;"])
        start(["haproxy", "-f", str(haproxy_conf(work))])
        start(["redis-server", "--port", str(PORTS["redis"]), "--bind", "127.0.0.1",
               "--save", "", "--appendonly", "no"])
        # Up before the Weir that uses it: otherwise its first calls find
        # Redis unreachable and the limit open for a second.
        wait_port(PORTS["redis"])
        weirs = {}
        sample = ["auth", "ratelimit", "cache", "router"]
        binaries = [("", args.weir_binary)]
        if args.compare_binary:
            binaries.append(("-cmp", args.compare_binary))
        for suffix, binary in binaries:
            for name, chain, instances in [("weir", [], None), ("weir-chain", sample, "pooled"),
                                           ("weir-chain-fresh", sample, "fresh"),
                                           ("weir-cache", [], None),
                                           ("weir-chain-redis", sample, "pooled"),
                                           ("weir-chain-log", sample, "pooled"),
                                           ("weir-chain-traced", sample, "pooled")]:
                conf = weir_conf(work, name + suffix, chain, instances)
                weirs[name + suffix] = start(
                    [str(binary), "run", "--threads", "1", "--config", str(conf)],
                    env={**os.environ, "WEIR_LOG": "warn"})
        for key, port in PORTS.items():
            if not key.endswith("-cmp") or args.compare_binary:
                wait_port(port)
        # Warm up caches, pools and plugin instances.
        for _, h1, _, path, _ in ROWS + [r for r in rows if r[0].endswith(COMPARE)]:
            wrk(PORTS[h1], path, 1, 10)

        results = {}
        for round_no in range(1, args.rounds + 1):
            idle = cpu_idle_fraction()
            print(f"round {round_no}: machine {idle:.0%} idle before the round"
                  + ("" if idle > 0.9 else "  (WARNING: not idle; figures are suspect)"), flush=True)
            # With a compare binary, every other round runs the rows in
            # reverse, so neither build always goes first.
            ordered = rows[::-1] if args.compare_binary and round_no % 2 == 0 else rows
            for label, h1, h2, path, _ in ordered:
                r1 = wrk(PORTS[h1], path, args.duration, args.connections)
                r2 = h2load(PORTS[h2], path, args.duration, args.connections)
                results.setdefault(label, []).append((r1, r2))
                print(f"  {label:48} h1 {r1[0]:>9.0f} req/s   h2 {r2[0]:>9.0f} req/s", flush=True)

        rss = {name: peak_rss_mib(p.pid) for name, p in weirs.items()}
        table = render(results, args, rss)
        print(table)
        if args.out:
            args.out.write_text(table)
    finally:
        pinned.close()


def run_storm(args):
    sys.dont_write_bytecode = True   # no bench/__pycache__ in the checkout
    import storm
    work = Path(tempfile.mkdtemp(prefix="weir-storm-"))
    work.chmod(0o755)
    args.plugins_dir = PLUGINS
    try:
        table = storm.run_storms(args.weir_binary.resolve(), work, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(table)
    if args.out:
        args.out.write_text(table)


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(value, unit=""):
    return "–" if value is None else f"{value:,.0f}{unit}" if value >= 100 else f"{value:.2f}{unit}"


def render(results, args, rss):
    lines = [
        f"{args.rounds} rounds × {args.duration} s, {args.connections} connections; "
        "proxy + origin on core 0, load generator on core 1; medians over rounds.",
        "",
        "| configuration | h1 req/s | h1 p50 ms | h1 p99 ms | h1 errors | h2c req/s | h2c mean ms | h2c errors | ratio h1 | ratio h2c |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    med = {}
    for label, runs in results.items():
        h1 = [median([r[0][i] for r in runs]) for i in range(4)]
        h2 = [median([r[1][i] for r in runs]) for i in range(4)]
        med[label] = (h1, h2)
    order = [row[0] for row in ROWS]
    order += [label for label in med if label not in order]
    for label in order:
        rival = dict((row[0], row[4]) for row in ROWS).get(label)
        if label.endswith(COMPARE):
            rival = label[: -len(COMPARE)]
        if label not in med:
            continue
        h1, h2 = med[label]
        r1 = r2 = ""
        if label.endswith(COMPARE) and rival in med:
            # Twins ran back to back in every round: the median of the
            # per-round ratios cancels the machine's drift between rounds.
            pairs = list(zip(results[label], results[rival]))
            p1 = median([a[0][0] / b[0][0] for a, b in pairs])
            p2 = median([a[1][0] / b[1][0] for a, b in pairs])
            r1 = f"{p1:.3f}× {rival} (median of per-round ratios)"
            r2 = f"{p2:.3f}×"
        elif rival in results and rival.startswith("Weir"):
            # A Weir variant against a Weir row that ran beside it in every
            # round: per-round ratios, so the machine's drift between rounds
            # cancels out (their medians' ratio would keep it).
            pairs = list(zip(results[label], results[rival]))
            p1 = median([a[0][0] / b[0][0] for a, b in pairs])
            p2 = median([a[1][0] / b[1][0] for a, b in pairs])
            r1 = f"{p1:.2f}× {rival} (median of per-round ratios)"
            r2 = f"{p2:.2f}×"
        elif rival in med:
            r1 = f"{h1[0] / med[rival][0][0]:.2f}× {rival}"
            r2 = f"{h2[0] / med[rival][1][0]:.2f}×"
        lines.append(
            f"| {label} | {fmt(h1[0])} | {fmt(h1[1])} | {fmt(h1[2])} | {h1[3]:.0f} | "
            f"{fmt(h2[0])} | {fmt(h2[1])} | {h2[3]:.0f} | {r1} | {r2} |")
    lines.append("")
    lines.append("Peak RSS (VmHWM) of each Weir process: " + ", ".join(
        f"{k} {v:.1f} MiB" for k, v in rss.items() if v is not None))
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
