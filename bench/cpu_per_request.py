#!/usr/bin/env python3
"""CPU time per request of two Weir builds on the pooled sample chain.

    python3 bench/cpu_per_request.py --weir-binary target/release/weir \\
        --compare-binary /path/to/other/weir [--trials 8] [--seconds 5]

Both builds run at once, `--threads 1`, pinned with the nginx origin to
core 0 as in `bench/run.py`; wrk (HTTP/1.1) and h2load (h2c) on core 1 load
each in turn for `--seconds`, the order alternating between trials. Each
trial reads the Weir process's user + system time from /proc before and
after and divides by the requests the load generator completed. On this
shared VM req/s moves by ±30 % from one round to the next with what else
runs; the CPU a request costs moves less, so a small per-request cost
(a few %) shows here when `run.py --compare-binary` cannot tell it from
noise. Prints each trial and, per protocol, the medians and the median of
the per-trial ratios (first build ÷ second).
"""

import argparse
import os
import re
import statistics
import subprocess
from pathlib import Path

import run as R

SAMPLE = ["auth", "ratelimit", "cache", "router"]


def cpu_seconds(pid):
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load(proto, port, seconds):
    """Requests completed by `seconds` of load on `port`."""
    url = f"http://127.0.0.1:{port}/13"
    key = f"x-api-key: {R.API_KEY}"
    if proto == "h2c":
        cmd = ["h2load", "-D", str(seconds), "-c", "50", "-m", "10", "-t", "1", "-H", key, url]
        pattern = r"requests: \d+ total, \d+ started, (\d+) done"
    else:
        cmd = ["wrk", "-t1", "-c50", f"-d{seconds}s", "-H", key, url]
        pattern = r"(\d+) requests in"
    out = subprocess.run(["taskset", "-c", "1"] + cmd, capture_output=True, text=True,
                         check=True).stdout
    return int(re.search(pattern, out).group(1))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weir-binary", type=Path, required=True)
    parser.add_argument("--compare-binary", type=Path, required=True)
    parser.add_argument("--plugins-dir", type=Path, default=R.PLUGINS)
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--seconds", type=int, default=5)
    args = parser.parse_args()
    R.PLUGINS = args.plugins_dir.resolve()

    pinned = R.Pinned("weir-cpu-")
    work, start = pinned.work, pinned.start
    builds = {"first": ("weir-chain", args.weir_binary),
              "second": ("weir-chain-cmp", args.compare_binary)}
    try:
        start(["nginx", "-c", str(R.origin_conf(work)), "-g", "daemon off;"])
        pids = {}
        for name, (key, binary) in builds.items():
            conf = R.weir_conf(work, key, SAMPLE, "pooled")
            pids[name] = start([str(binary.resolve()), "run", "--threads", "1", "--config",
                                str(conf)], env={**os.environ, "WEIR_LOG": "warn"}).pid
        for key, _ in builds.values():
            R.wait_port(R.PORTS[key])
            R.wrk(R.PORTS[key], "/13", 1, 10)  # warm pools and caches
        per_request = {(name, proto): [] for name in builds for proto in ("h1", "h2c")}
        for trial in range(args.trials):
            order = list(builds) if trial % 2 == 0 else list(builds)[::-1]
            for name in order:
                port = R.PORTS[builds[name][0]]
                for proto in ("h1", "h2c"):
                    before = cpu_seconds(pids[name])
                    done = load(proto, port, args.seconds)
                    spent = cpu_seconds(pids[name]) - before
                    per_request[(name, proto)].append(spent / max(done, 1) * 1e6)
            print(f"trial {trial + 1}: " + ", ".join(
                f"{name} {proto} {v[-1]:.1f} µs" for (name, proto), v in per_request.items()),
                flush=True)
        for proto in ("h1", "h2c"):
            first, second = per_request[("first", proto)], per_request[("second", proto)]
            ratios = [a / b for a, b in zip(first, second)]
            print(f"{proto}: CPU per request, median {statistics.median(first):.1f} µs "
                  f"({args.weir_binary}) and {statistics.median(second):.1f} µs "
                  f"({args.compare_binary}); first ÷ second per trial, median "
                  f"{statistics.median(ratios):.3f} ({', '.join(f'{r:.2f}' for r in ratios)})")
    finally:
        pinned.close()


if __name__ == "__main__":
    main()
