#!/usr/bin/env python3
"""Storms beside a fast route (issue #13): `bench/run.py --storm`.

One release `weir run --threads 2` per storm (`--threads 1` for the reload),
nothing pinned. Beside every storm two samplers, each in a process of its
own, send sequential keep-alive GETs (one every `SAMPLE_EVERY_S`, or at once
when the previous one took longer): `/fast` on the proxy listener (a
plugin-free request to an nginx origin) and `/healthz` on the admin
listener. Each process is first measured quiet (its own baseline, same
config, nothing beside), then with its storm; the ratios compare the two.
The two plugin storms, whose target is a p99 ratio, alternate quiet and
storm phases `--storm-rounds` times (3) and pool each kind's samples: a
p99 of one 5 s quiet phase is the tenth-slowest of ~1,000 samples, and on
this shared VM the quiet latency moves by 2x within the hour, so a single
quiet phase minutes before the storm made the ratio swing either side of
2x between back-to-back runs. Each round's own ratio is reported too.

In the plugin storms (busy loop, log flood, properties, metrics flood) the storm's
`hostile` plugin runs only on a `storm` route (prefix `/boom`); `/fast` is
served by a `fast` route (prefix `/`) with an empty chain, so it never
calls a plugin (`hostile` also keeps its `trigger_prefix = "/boom"`). The
busy loop keeps `max_concurrency = 128` (`--storm-busy-max-concurrency`),
above its 64 connections, so that all 64 `/boom` calls spin at once, as in
the runs before routes (with the default 32, half of them would queue
100 ms and get 503: a lighter storm). After each plugin storm the harness
reads `/metrics` and reports requests per route and `hostile` calls, which
shows where `/fast` went.

The samplers are closed-loop: a stall of N ms shows as one sample of N ms,
not as the N / interval requests an open-loop client would have sent, so
p99 under a storm is a lower bound; the longest stall (max) is exact.
"""

import http.client
import json
import math
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

PORTS = {"origin": 18300, "weir": 18301, "admin": 18302}
TOKEN = "bench-admin-token"
SAMPLE_EVERY_S = 0.005
BIG_BYTES = 2 << 20          # the cacheable body of the slow-reader storm
BIG_RATE = "2m"              # nginx limit_rate: the origin sends it in ~1 s
SLOW_READ_BYTES_PER_S = 1024
LOG_DRAIN_BYTES_PER_S = 8_000_000
METRIC_SERIES = 10_000


# ---------------------------------------------------------------- helpers

def write(path, text):
    path.write_text(textwrap.dedent(text))
    return path


def wait_port(port, timeout=180, proc=None):
    """Until `port` accepts; `proc`, if given, must not exit meanwhile."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            if proc is not None and proc.poll() is not None:
                raise SystemExit(f"exited with {proc.returncode} before listening on {port}")
            time.sleep(0.1)
    raise SystemExit(f"nothing listens on {port}")


def cpu_idle_fraction(seconds=1.0):
    def snapshot():
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        return fields[3] + fields[4], sum(fields)
    idle1, total1 = snapshot()
    time.sleep(seconds)
    idle2, total2 = snapshot()
    return (idle2 - idle1) / max(1, total2 - total1)


def wait_idle(patience_s):
    """The machine is shared: wait (up to `patience_s`) until it is ≥ 90 %
    idle, and say how idle it was."""
    deadline = time.time() + patience_s
    idle = cpu_idle_fraction()
    while idle < 0.9 and time.time() < deadline:
        idle = cpu_idle_fraction(2.0)
    return idle


def cpu_snapshot():
    """(machine busy ticks, total ticks, ticks of this process tree): what
    the rest of the machine used during a storm is the difference."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    total = sum(fields)
    busy = total - fields[3] - fields[4]
    parent, ticks = {}, {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                rest = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # Fields after the name: state ppid ... utime(12) stime cutime cstime.
        parent[int(entry)] = int(rest[1])
        ticks[int(entry)] = sum(int(x) for x in rest[11:15])
    mine, frontier = 0, [os.getpid()]
    while frontier:
        pid = frontier.pop()
        mine += ticks.get(pid, 0)
        frontier += [child for child, p in parent.items() if p == pid]
    return busy, total, mine


def foreign_share(before, after):
    """Share of the machine's CPU used by processes outside this benchmark."""
    busy, total, mine = (b - a for a, b in zip(before, after))
    return max(0.0, (busy - mine) / max(1, total))


def percentile(values, q):
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def get(port, path, headers=None, timeout=30):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def sampler(port, path, headers, stop, out):
    """Child process: sequential keep-alive GETs until `stop` is set; sends
    back [(start, latency_ms, ok)] with `time.monotonic()` starts (the
    clock is system-wide, so the parent can cut the samples into phases)."""
    samples = []
    conn = None
    next_at = time.monotonic()
    while not stop.is_set():
        if conn is None:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        start = time.monotonic()
        ok = False
        try:
            conn.request("GET", path, headers=headers)
            response = conn.getresponse()
            response.read()
            ok = response.status == 200
            if response.will_close:
                conn.close()
                conn = None
        except (OSError, http.client.HTTPException):
            conn.close()
            conn = None
        end = time.monotonic()
        samples.append((start, (end - start) * 1000, ok))
        next_at = max(next_at + SAMPLE_EVERY_S, end)
        time.sleep(max(0.0, next_at - time.monotonic()))
    out.send(samples)
    out.close()


class Samplers:
    """The `/fast` and `/healthz` samplers, started and stopped together."""

    def __init__(self):
        ctx = multiprocessing.get_context("fork")
        self.stop = ctx.Event()
        self.children = {}
        for name, port, path in [("fast", PORTS["weir"], "/fast"),
                                 ("healthz", PORTS["admin"], "/healthz")]:
            parent, child = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=sampler, args=(port, path, {}, self.stop, child),
                               daemon=True)
            proc.start()
            self.children[name] = (proc, parent)

    def finish(self):
        self.stop.set()
        samples = {}
        for name, (proc, pipe) in self.children.items():
            samples[name] = pipe.recv()
            proc.join(timeout=10)
        return samples


def phase(samples, windows):
    """Latency stats of the samples overlapping any of `windows`, a list of
    (start, end)."""
    inside = [s for s in samples
              if any(s[0] <= end and s[0] + s[1] / 1000 >= start for start, end in windows)]
    lat = [s[1] for s in inside]
    return {
        "n": len(lat),
        "errors": sum(1 for s in inside if not s[2]),
        "p50": percentile(lat, 0.50),
        "p99": percentile(lat, 0.99),
        "max": max(lat) if lat else None,
    }


def written_bytes(pid):
    """What process `pid` has written so far (its stderr, for the log flood)."""
    with open(f"/proc/{pid}/io") as f:
        for line in f:
            if line.startswith("wchar:"):
                return int(line.split()[1])
    return 0


def settle(pid, still_s=1.0, patience_s=60):
    """Wait until `pid` has written nothing for `still_s`: after a log flood,
    Weir's log queue drains for a while, and that is not quiet."""
    deadline = time.monotonic() + patience_s
    last = written_bytes(pid)
    while time.monotonic() < deadline:
        time.sleep(still_s)
        now = written_bytes(pid)
        if now == last:
            return
        last = now


def wrk(port, path, duration, connections):
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--timeout", "10s",
         f"http://127.0.0.1:{port}{path}"],
        capture_output=True, text=True, check=True).stdout
    rps = float(out.split("Requests/sec:")[1].split()[0])
    non2xx = int(out.split("Non-2xx or 3xx responses:")[1].split()[0]) \
        if "Non-2xx" in out else 0
    return {"rps": rps, "non2xx": non2xx}


def with_nonce(component: bytes, nonce: bytes) -> bytes:
    """The component with a custom section appended: the same code, a new
    hash, so wasmtime's compilation cache cannot serve it."""
    def leb(n):
        out = bytearray()
        while True:
            byte, n = n & 0x7F, n >> 7
            out.append(byte | (0x80 if n else 0))
            if not n:
                return bytes(out)
    name = b"weir-bench-nonce"
    content = leb(len(name)) + name + nonce
    return component + b"\x00" + leb(len(content)) + content


def largest_component():
    """The largest sample `plugins/build-foreign.sh` built: a JavaScript or
    Python one, megabytes of language runtime to compile. Not a Rust
    sample: those are a few hundred KB, and some refuse to load without a
    config of their own."""
    foreign = ROOT / "target" / "foreign-plugins"
    candidates = sorted(foreign.glob("*.wasm")) if foreign.is_dir() else []
    if not candidates:
        raise SystemExit(f"the reload storm compiles a JavaScript or Python sample, and "
                         f"{foreign} has none: run `plugins/build-foreign.sh {foreign}` "
                         f"(`bench/run.sh --storm` does)")
    return max(candidates, key=lambda p: p.stat().st_size)


# ---------------------------------------------------------------- configs

def origin_conf(work):
    (work / "big").write_bytes(b"x" * BIG_BYTES)
    return write(work / "storm-origin.conf", f"""
        worker_processes 1;
        pid {work}/storm-origin.pid;
        error_log {work}/storm-origin-error.log warn;
        events {{ worker_connections 4096; }}
        http {{
            access_log off;
            keepalive_requests 1000000;
            server {{
                listen 127.0.0.1:{PORTS['origin']};
                location = /big {{
                    default_type application/octet-stream;
                    alias {work}/big;
                    limit_rate {BIG_RATE};
                    add_header Cache-Control "public, max-age=3600" always;
                }}
                location / {{ default_type text/plain; return 200 "Hello, world!"; }}
            }}
        }}
    """)


# `[runtime]` lines every storm's Weir gets (`--storm-plugin-cpu-percent`).
RUNTIME_EXTRA = ""


def weir_conf(work, name, chain="", plugins="", extra="", routes=""):
    (work / "admin.token").write_text(TOKEN)
    cache_dir = work / f"{name}-compile-cache"   # fresh: no compile is a cache hit
    text = textwrap.dedent(f"""
        default_upstream = "origin"
        chain = [{chain}]

        [[listeners]]
        address = "127.0.0.1:{PORTS['weir']}"

        [admin]
        address = "127.0.0.1:{PORTS['admin']}"
        token_file = "admin.token"

        [limits]
        max_connections = 100000

        [runtime]
        cache_dir = "{cache_dir}"
        reload_check_ms = 0
        {RUNTIME_EXTRA}

        [upstreams.origin]
        endpoints = ["127.0.0.1:{PORTS['origin']}"]
        max_idle_per_endpoint = 256
    """) + textwrap.dedent(extra) + textwrap.dedent(routes) + textwrap.dedent(plugins)
    path = work / f"{name}.toml"
    path.write_text(text)
    return path


# The plugin storms: the storm's plugin on `/boom` only, `/fast` on a route
# with no plugin (the top-level chain, for requests neither matches, is []).
STORM_ROUTES = """
    [[routes]]
    name = "storm"
    prefix = "/boom"
    chain = ["hostile"]

    [[routes]]
    name = "fast"
    prefix = "/"
    chain = []
"""


def route_counts(auth=None):
    """Requests served per route and `hostile` calls so far, from `/metrics`."""
    _, _, body = get(PORTS["admin"], "/metrics",
                     auth or {"Authorization": f"Bearer {TOKEN}"})
    out = {}
    for line in body.decode().splitlines():
        if line.startswith("weir_request_duration_seconds_count{"):
            route = line.split('route="', 1)[1].split('"', 1)[0]
            out[f"requests route={route}"] = int(float(line.rsplit(" ", 1)[1]))
        elif line.startswith("weir_plugin_call_duration_seconds_count{") \
                and 'plugin="hostile"' in line:
            out["hostile calls"] = out.get("hostile calls", 0) + int(float(line.rsplit(" ", 1)[1]))
    return out


def hostile(plugins_dir, mode, settings, plugin_config=""):
    return f"""
        [plugins.hostile]
        file = "{plugins_dir}/hostile.wasm"
        {settings}
        [plugins.hostile.config]
        mode = "{mode}"
        trigger_prefix = "/boom"
        {plugin_config}
    """


# ---------------------------------------------------------------- storms

class Weir:
    """One `weir run`, up once both its listeners answer."""

    def __init__(self, binary, conf, threads, work, env=None, stderr=None):
        self.log = work / f"{conf.stem}.log"
        self.stderr = stderr
        self.proc = subprocess.Popen(
            [str(binary), "run", "--threads", str(threads), "--config", str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=stderr if stderr is not None else open(self.log, "w"),
            env={**os.environ, "WEIR_LOG": "warn", **(env or {})})
        try:
            wait_port(PORTS["weir"], proc=self.proc)
            wait_port(PORTS["admin"], proc=self.proc)
        except SystemExit as e:
            self.proc.kill()
            tail = self.log.read_text()[-2000:] if stderr is None else "(stderr piped)"
            raise SystemExit(f"weir ({conf.name}): {e}\n{tail}") from None

    def warm(self):
        for _ in range(200):
            get(PORTS["weir"], "/fast")
            get(PORTS["admin"], "/healthz")

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def measure(weir, quiet_s, storm, rounds=1):
    """A quiet phase, then `storm()` (returns (windows, notes)), `rounds`
    times in turn; per-phase stats over all rounds, and of the first round
    alone (`quiet 1`, `storm 1`). Alternating lets every round's quiet
    phase see the machine as its storm does: on this shared VM the quiet
    latency itself moves by 2x within the hour."""
    weir.warm()
    samplers = Samplers()
    cpu_before = cpu_snapshot()
    quiet, windows, notes = [], {}, []
    for i in range(rounds):
        settle(weir.proc.pid)
        t0 = time.monotonic()
        time.sleep(quiet_s)
        quiet.append((t0, time.monotonic()))
        spans, note = storm()
        notes.append(note)
        for label, span in spans.items():
            windows.setdefault(label, []).append(span)
        time.sleep(0.5)
    foreign = foreign_share(cpu_before, cpu_snapshot())
    samples = samplers.finish()
    result = {"notes": notes[0] if rounds == 1 else {"rounds": notes},
              "foreign_cpu": foreign, "rounds": rounds}
    for name, s in samples.items():
        result[name] = {"quiet": phase(s, quiet)}
        for label, spans in windows.items():
            result[name][label] = phase(s, spans)
        if rounds > 1:
            for i, (q, w) in enumerate(zip(quiet, windows["storm"]), 1):
                result[name][f"quiet {i}"] = phase(s, [q])
                result[name][f"storm {i}"] = phase(s, [w])
    return result


def storm_baseline_and_slow_reader(binary, work, args):
    conf = weir_conf(work, "slow-reader", extra="""
        [cache]
        capacity_bytes = 67108864
        max_entry_bytes = 16777216
    """)
    weir = Weir(binary, conf, 2, work)
    try:
        def storm():
            # What the origin alone takes to send the body (the fill's pace).
            t = time.monotonic()
            status, _, body = get(PORTS["origin"], "/big?direct")
            direct_s = time.monotonic() - t
            assert status == 200 and len(body) == BIG_BYTES
            start = time.monotonic()
            rounds = []
            for i in range(args.storm_slow_rounds):
                rounds.append(slow_reader_round(f"/big?round={i}"))
            notes = {"origin_alone_s": direct_s, "rounds": rounds}
            return {"storm": (start, time.monotonic())}, notes
        return measure(weir, args.storm_quiet, storm)
    finally:
        weir.stop()


def slow_reader_round(path):
    """A client reading `path` at 1 KB/s leads the fill; 0.3 s later a second
    client fetches the same URL. Returns the second client's latency."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", PORTS["weir"]))
    host = f"127.0.0.1:{PORTS['weir']}"
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    read = [0]
    done = threading.Event()

    def slow():
        sock.settimeout(1)
        while not done.is_set():
            try:
                chunk = sock.recv(SLOW_READ_BYTES_PER_S)
            except socket.timeout:
                continue
            if not chunk:
                return
            read[0] += len(chunk)
            time.sleep(len(chunk) / SLOW_READ_BYTES_PER_S)

    reader = threading.Thread(target=slow, daemon=True)
    reader.start()
    time.sleep(0.3)
    t = time.monotonic()
    status, headers, body = get(PORTS["weir"], path, {"Host": host}, timeout=120)
    second_s = time.monotonic() - t
    slow_read_then = read[0]
    time.sleep(2)   # the slow reader goes on beside the samplers
    done.set()
    reader.join()
    sock.close()
    return {"second_s": second_s, "status": status, "bytes": len(body),
            "cache_status": headers.get("cache-status", headers.get("Cache-Status")),
            "slow_reader_bytes": slow_read_then}


def storm_busy_plugin(binary, work, args):
    conf = weir_conf(work, "busy-plugin", "", hostile(
        args.plugins_dir, "loop",
        f"timeout_ms = 50\nmax_concurrency = {args.storm_busy_max_concurrency}"),
        routes=STORM_ROUTES)
    weir = Weir(binary, conf, 2, work)
    try:
        def storm():
            start = time.monotonic()
            load = wrk(PORTS["weir"], "/boom", args.storm_duration, args.storm_busy_connections)
            return {"storm": (start, time.monotonic())}, {"wrk": load}
        result = measure(weir, args.storm_quiet, storm, args.storm_rounds)
        result["notes"]["metrics"] = route_counts()
        return result
    finally:
        weir.stop()


def storm_log_flood(binary, work, args):
    conf = weir_conf(work, "log-flood", "", hostile(
        args.plugins_dir, "log-flood",
        "timeout_ms = 5000\nlog_lines_per_second = 100000\nlog_burst = 100000",
        "count = 200\nsize = 4000"), routes=STORM_ROUTES)
    drained = work / "log-drained.json"
    weir = Weir(binary, conf, 2, work, stderr=subprocess.PIPE)
    drain = subprocess.Popen([sys.executable, __file__, "drain", str(LOG_DRAIN_BYTES_PER_S),
                              str(drained)], stdin=weir.proc.stderr)
    weir.proc.stderr.close()
    try:
        def storm():
            start = time.monotonic()
            load = wrk(PORTS["weir"], "/boom", args.storm_duration, 2)
            return {"storm": (start, time.monotonic())}, {"wrk": load}
        result = measure(weir, args.storm_quiet, storm, args.storm_rounds)
        result["notes"]["metrics"] = route_counts()
    finally:
        weir.stop()
        drain.wait(timeout=60)
    result["notes"]["stderr"] = json.loads(drained.read_text())
    return result


def storm_reload(binary, work, args):
    big = largest_component()
    original = big.read_bytes()
    live = work / "big.wasm"
    live.write_bytes(with_nonce(original, b"0"))
    conf = weir_conf(work, "reload", '"big"', f"""
        [plugins.big]
        file = "{live}"
        instances = "pooled"
        timeout_ms = 5000
    """)
    weir = Weir(binary, conf, 1, work, env={"WEIR_LOG": "warn,weir::cli=info"})
    try:
        def storm():
            windows, durations = {}, []
            for i in range(1, args.storm_reloads + 1):
                live.write_bytes(with_nonce(original, str(time.time()).encode()))
                before = weir.log.read_text().count("reloaded on SIGHUP")
                start = time.monotonic()
                weir.proc.send_signal(signal.SIGHUP)
                while weir.log.read_text().count("reloaded on SIGHUP") == before:
                    if "reload refused" in weir.log.read_text():
                        raise SystemExit(f"reload refused: see {weir.log}")
                    time.sleep(0.005)
                end = time.monotonic()
                windows[f"reload {i}"] = (start, end)
                durations.append(end - start)
                time.sleep(2)
            windows["storm"] = (min(a for a, _ in windows.values()),
                                max(b for _, b in windows.values()))
            return windows, {"component": f"{big.name} ({len(original) / 1e6:.1f} MB)",
                             "reload_s": durations}
        return measure(weir, args.storm_quiet, storm)
    finally:
        weir.stop()


def storm_properties(binary, work, args):
    """The issue's 60k-properties row: a plugin answering every `/boom`
    request with 60,000 properties (the host refuses the answer, past
    `max_properties`, before merging any), 2 connections."""
    conf = weir_conf(work, "properties", "", hostile(
        args.plugins_dir, "properties", "", "count = 60000\nsize = 1"), routes=STORM_ROUTES)
    weir = Weir(binary, conf, 2, work)
    try:
        def storm():
            start = time.monotonic()
            load = wrk(PORTS["weir"], "/boom", args.storm_duration, 2)
            return {"storm": (start, time.monotonic())}, {"wrk": load}
        result = measure(weir, args.storm_quiet, storm)
        result["notes"]["metrics"] = route_counts()
        return result
    finally:
        weir.stop()


def storm_metrics_scrape(binary, work, args):
    # No `max_concurrency` here: `/boom` is called one request at a time,
    # before the storm, and `/fast` calls no plugin.
    conf = weir_conf(work, "metrics", "", hostile(
        args.plugins_dir, "metrics-flood", "", "series_per_request = 200"),
        extra=f"""
        [metrics]
        max_series_per_plugin = {METRIC_SERIES + 50}
    """, routes=STORM_ROUTES)
    weir = Weir(binary, conf, 2, work)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    try:
        for i in range(METRIC_SERIES // 200 + 2):
            get(PORTS["weir"], f"/boom/{i}")
        _, _, body = get(PORTS["admin"], "/metrics", auth)
        plugin_lines = sum(1 for line in body.decode().splitlines()
                           if line and not line.startswith("#") and 'plugin="hostile"' in line)

        def storm():
            start = time.monotonic()
            scrapes = []
            conn = http.client.HTTPConnection("127.0.0.1", PORTS["admin"], timeout=60)
            while time.monotonic() - start < args.storm_duration:
                t = time.monotonic()
                conn.request("GET", "/metrics", headers=auth)
                response = conn.getresponse()
                size = len(response.read())
                scrapes.append((time.monotonic() - t) * 1000)
            conn.close()
            return {"storm": (start, time.monotonic())}, {
                "plugin_series_lines": plugin_lines, "bytes": size,
                "scrapes": len(scrapes), "scrape_p50_ms": percentile(scrapes, 0.5),
                "scrape_max_ms": max(scrapes)}
        result = measure(weir, args.storm_quiet, storm)
        result["notes"]["metrics"] = route_counts(auth)
        return result
    finally:
        weir.stop()


# ---------------------------------------------------------------- report

ROWS = [
    # key, label, target kind
    ("baseline", "nothing (baseline; plugin-free config with `[cache]`)", None),
    ("busy", "a plugin spinning to its deadline (`loop`, `timeout_ms = 50`), {busy} connections",
     "p99"),
    ("logs", "a plugin logging heavily (200 × 4 KB lines per request), stderr drained at "
             "8 MB/s, 2 connections", "p99"),
    ("properties", "a plugin answering with 60,000 properties, 2 connections", "stall"),
    ("reload", "reload compiling the largest component, `--threads 1`", "stall"),
    ("metrics", "`/metrics` scraped in a loop, ~10k plugin series", "stall"),
    ("slow", "a client reading a cacheable 2 MiB URL at 1 KB/s while a second fetches it",
     "slow"),
]


def run_storms(binary, work, args):
    global RUNTIME_EXTRA
    if not Path(binary).exists():
        raise SystemExit(f"no weir binary at {binary}")
    if args.storm_plugin_cpu_percent is not None:
        RUNTIME_EXTRA = f"max_plugin_cpu_percent = {args.storm_plugin_cpu_percent}"
    
    nginx = subprocess.Popen(["nginx", "-c", str(origin_conf(work)), "-g", "daemon off;"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(PORTS["origin"])
    results = {}
    try:
        for key, fn in [("slow", storm_baseline_and_slow_reader), ("busy", storm_busy_plugin),
                        ("logs", storm_log_flood), ("properties", storm_properties),
                        ("reload", storm_reload),
                        ("metrics", storm_metrics_scrape)]:
            if args.storm_only and key not in args.storm_only:
                continue
            idle = wait_idle(args.storm_wait_idle)
            print(f"storm: {key}: machine {idle:.0%} idle before it"
                  + ("" if idle >= 0.9 else "  (WARNING: not idle; figures are suspect)"),
                  flush=True)
            results[key] = fn(binary, work, args)
            results[key]["idle_before"] = idle
            print(json.dumps(results[key], indent=1, default=str), flush=True)
    finally:
        nginx.send_signal(signal.SIGTERM)
        nginx.wait(timeout=10)
    if "slow" in results:
        results["baseline"] = results["slow"]
    return render(results, args)


def ms(value):
    if value is None:
        return "–"
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def verdict(kind, r):
    fast, health = r["fast"], r["healthz"]
    if kind == "p99":
        worst = max(fast["storm"]["p99"] / fast["quiet"]["p99"],
                    health["storm"]["p99"] / health["quiet"]["p99"])
        return f"{'yes' if worst <= 2 else '**no**'} (worst p99 {worst:.1f}× quiet; target ≤ 2×)"
    if kind == "stall":
        worst = max(fast["storm"]["max"], health["storm"]["max"])
        return f"{'yes' if worst <= 100 else '**no**'} (longest stall {ms(worst)} ms; target ≤ 100)"
    if kind == "slow":
        second = max(x["second_s"] for x in r["notes"]["rounds"])
        alone = r["notes"]["origin_alone_s"]
        ok = second <= 2 * alone + 0.5
        return (f"{'yes' if ok else '**no**'} (second client {second:.2f} s; the origin alone "
                f"takes {alone:.2f} s; the slow reader would need "
                f"{BIG_BYTES / SLOW_READ_BYTES_PER_S / 3600:.1f} h)")
    return ""


def render(results, args):
    lines = [
        f"Storms beside a fast route: quiet {args.storm_quiet} s then storm; `/fast` and "
        f"`/healthz` sampled sequentially (keep-alive, one request per "
        f"{SAMPLE_EVERY_S * 1000:.0f} ms or back to back); ratios are storm ÷ the same "
        "process quiet.",
        "",
        "| what ran beside them | `/fast` p50 ms | `/fast` p99 ms | `/fast` max ms | "
        "`/fast` p99 ÷ quiet | `/healthz` p50 ms | `/healthz` p99 ms | `/healthz` max ms | "
        "`/healthz` p99 ÷ quiet | errors | target met? |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for key, label, kind in ROWS:
        if key not in results:
            continue
        r = results[key]
        ph = "quiet" if key == "baseline" else "storm"
        f, h = r["fast"][ph], r["healthz"][ph]
        fr = "" if key == "baseline" else f"{f['p99'] / r['fast']['quiet']['p99']:.1f}×"
        hr = "" if key == "baseline" else f"{h['p99'] / r['healthz']['quiet']['p99']:.1f}×"
        label = label.format(busy=args.storm_busy_connections)
        lines.append(
            f"| {label} | {ms(f['p50'])} | {ms(f['p99'])} | {ms(f['max'])} | {fr} | "
            f"{ms(h['p50'])} | {ms(h['p99'])} | {ms(h['max'])} | {hr} | "
            f"{f['errors'] + h['errors']} | {verdict(kind, r) if kind else ''} |")
    for key, _, kind in ROWS:
        r = results.get(key)
        if kind == "p99" and r and r.get("rounds", 1) > 1:
            def ratio(name, storm, quiet):
                return r[name][storm]["p99"] / r[name][quiet]["p99"]
            lines.append("")
            lines.append(
                f"{key}: {r['rounds']} rounds of quiet {args.storm_quiet} s then storm "
                f"{args.storm_duration} s, in turn; the ratios above pool every round's "
                f"samples (`/fast`: n = {r['fast']['quiet']['n']} quiet, "
                f"{r['fast']['storm']['n']} storm). Each round alone, `/fast` / `/healthz` "
                f"p99 ÷ its own quiet phase: " + ", ".join(
                    f"{ratio('fast', f'storm {i}', f'quiet {i}'):.1f}× / "
                    f"{ratio('healthz', f'storm {i}', f'quiet {i}'):.1f}×"
                    for i in range(1, r["rounds"] + 1)))
    lines.append("")
    lines.append("Machine idle before each storm, and the share of its CPU other processes "
                 "(not this benchmark) used while it ran: " + ", ".join(
                     f"{key} {results[key]['idle_before']:.0%} / {results[key]['foreign_cpu']:.0%}"
                     for key, _, _ in ROWS if key in results and key != "baseline"))
    lines.append("")
    lines.append("Quiet phase of each storm's own process (`/fast` p50 / p99, `/healthz` p50 / "
                 "p99, ms): " + "; ".join(
                     f"{key} {ms(results[key]['fast']['quiet']['p50'])} / "
                     f"{ms(results[key]['fast']['quiet']['p99'])}, "
                     f"{ms(results[key]['healthz']['quiet']['p50'])} / "
                     f"{ms(results[key]['healthz']['quiet']['p99'])}"
                     for key, _, _ in ROWS if key in results and key != "baseline"))
    for key in ("busy", "logs", "reload", "metrics", "slow"):
        if key in results:
            lines.append("")
            lines.append(f"{key}: " + json.dumps(results[key]["notes"], default=str))
            for name in ("fast", "healthz"):
                extra = {k: v for k, v in results[key][name].items() if k.startswith("reload ")}
                if extra:
                    lines.append(f"  {name} per reload: " + ", ".join(
                        f"{k}: n {v['n']}, max {ms(v['max'])} ms" for k, v in extra.items()))
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- drain

def drain(rate, out):
    """Read stdin (weir's stderr) at no more than `rate` bytes/s until EOF."""
    total = 0
    started = time.monotonic()
    fd = sys.stdin.fileno()
    while True:
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        total += len(chunk)
        time.sleep(len(chunk) / rate)
    Path(out).write_text(json.dumps({"bytes_read": total,
                                     "seconds": time.monotonic() - started,
                                     "rate_limit_bytes_per_s": rate}))


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "drain":
        drain(int(sys.argv[2]), sys.argv[3])
    else:
        sys.exit("run through bench/run.py --storm")
