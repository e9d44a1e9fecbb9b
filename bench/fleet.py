#!/usr/bin/env python3
"""How exactly a fleet of Weirs shares one rate limit through Redis (issue #18).

Three `weir run` instances on one local `redis-server`, the rate-limit
sample keyed by `header:x-tenant` at 200 requests per 60 s; 600 requests
spread round-robin across the three, 30 in flight. Each run uses a fresh
tenant and prints what was allowed against what the rate permits over the
run (the burst of 200, plus one request per 300 ms of the run's length).

    bench/fleet.py --weir target/release/weir \
        --plugin target/wasm-plugins/wasm32-wasip2/release/rate_limit.wasm --runs 4

Needs `redis-server` (scripts/test.sh and bench/run.sh install it).
"""

import argparse
import http.client
import math
import os
import socket
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REQUESTS_PER_WINDOW = 200
WINDOW_SECS = 60


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on {port}")


def config(work, port, upstream, redis, plugin):
    path = work / f"weir-{port}.toml"
    path.write_text(f"""
default_upstream = "up"
chain = ["ratelimit"]

[[listeners]]
address = "127.0.0.1:{port}"

[upstreams.up]
endpoints = ["127.0.0.1:{upstream}"]

[kv]
backend = "redis"
url = "redis://127.0.0.1:{redis}"

[plugins.ratelimit]
file = "{plugin}"
[plugins.ratelimit.config]
[[plugins.ratelimit.config.limits]]
name = "fleet"
key = "header:x-tenant"
requests = {REQUESTS_PER_WINDOW}
window = "{WINDOW_SECS}s"
""")
    return path


def one(port, tenant):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/", headers={"x-tenant": tenant})
    status = conn.getresponse().status
    conn.close()
    return status


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weir", type=Path, required=True)
    parser.add_argument("--plugin", type=Path, required=True)
    parser.add_argument("--runs", type=int, default=4)
    parser.add_argument("--requests", type=int, default=600)
    parser.add_argument("--in-flight", type=int, default=30)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="weir-fleet-"))
    procs = []
    try:
        redis, upstream = free_port(), free_port()
        procs.append(subprocess.Popen(
            ["redis-server", "--port", str(redis), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no"], stdout=subprocess.DEVNULL))
        procs.append(subprocess.Popen(
            [str(args.weir), "echo", "--listen", f"127.0.0.1:{upstream}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        ports = [free_port() for _ in range(3)]
        for port in ports:
            conf = config(work, port, upstream, redis, args.plugin.resolve())
            procs.append(subprocess.Popen(
                [str(args.weir), "run", "--config", str(conf)],
                stdout=subprocess.DEVNULL, stderr=open(work / f"{port}.log", "w"),
                env={**os.environ, "WEIR_LOG": "warn"}))
        for port in [redis, upstream] + ports:
            wait_port(port)

        interval = WINDOW_SECS / REQUESTS_PER_WINDOW
        print(f"3 instances, {args.requests} requests, {args.in_flight} in flight, "
              f"{REQUESTS_PER_WINDOW} per {WINDOW_SECS} s")
        print("| run | allowed | permitted over the run | off by |")
        print("| ---: | ---: | ---: | ---: |")
        for run in range(1, args.runs + 1):
            tenant = f"run-{run}-{time.time_ns()}"
            started = time.monotonic()
            with ThreadPoolExecutor(args.in_flight) as pool:
                statuses = list(pool.map(lambda i: one(ports[i % 3], tenant),
                                         range(args.requests)))
            elapsed = time.monotonic() - started
            allowed = statuses.count(200)
            other = [s for s in statuses if s not in (200, 429)]
            if other:
                raise SystemExit(f"run {run}: unexpected statuses {sorted(set(other))}")
            permitted = REQUESTS_PER_WINDOW + math.ceil(elapsed / interval)
            off = (allowed - permitted) / permitted
            print(f"| {run} | {allowed} | {permitted} ({elapsed:.2f} s) | {off:+.1%} |",
                  flush=True)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()


if __name__ == "__main__":
    main()
