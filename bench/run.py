#!/usr/bin/env python3
"""Orchestrates bench/run.sh: starts the upstream, nginx and weir variants
pinned to cores, drives them with wrk (closed loop, throughput) and
`openloop` (open loop at a fixed rate, latency corrected for coordinated
omission), reads CPU time and peak RSS from /proc, and reports medians over
rounds run in alternating order. Then three scenarios: a reload storm under
load, memory with 100 routes x 10 plugins, and start-up time (cold and warm
compile cache)."""

import argparse, json, os, re, shutil, signal, socket, statistics, subprocess, sys, tempfile, threading, time, platform
import urllib.request
from datetime import datetime, timezone

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The build's folder: cargo's CARGO_TARGET_DIR when set, as run.sh builds there.
TARGET = os.environ.get("CARGO_TARGET_DIR") or os.path.join(ROOT, "target")
REL = os.path.join(TARGET, "release")
WASM = os.path.join(TARGET, "wasm32-wasip2", "release")
CLK = os.sysconf("SC_CLK_TCK")
LOAD_CORE, PROXY_CORE = "0", "1"


def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p


def wait_http(url, timeout=30.0, headers=()):
    import urllib.request
    req = urllib.request.Request(url, headers=dict(h.split(": ", 1) for h in headers))
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(req, timeout=1) as r:
                if r.status == 200:
                    return
        except Exception:
            time.sleep(0.02)
    raise RuntimeError(f"{url} did not answer 200 within {timeout}s")


def cpu_ticks(pids):
    total = 0
    for pid in pids:
        try:
            fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime + stime
        except FileNotFoundError:
            pass
    return total


def peak_rss_kib(pids):
    best = 0
    for pid in pids:
        try:
            for line in open(f"/proc/{pid}/status"):
                if line.startswith("VmHWM:"):
                    best = max(best, int(line.split()[1]))
        except FileNotFoundError:
            pass
    return best


def rollup_kib(pid, key):
    """A field of /proc/PID/smaps_rollup (e.g. `Pss`), in KiB; 0 if unreadable."""
    try:
        for line in open(f"/proc/{pid}/smaps_rollup"):
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (FileNotFoundError, PermissionError):
        pass
    return 0


def children(pid):
    try:
        out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
        return [int(x) for x in out.split()]
    except FileNotFoundError:
        return []


def pinned(core, cmd, **kw):
    return subprocess.Popen(["taskset", "-c", core] + cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kw)


def wrk(url, duration, conns, headers=(), script=None, script_args=()):
    cmd = ["taskset", "-c", LOAD_CORE, "wrk", "-t1", f"-c{conns}", f"-d{duration}s", "--latency"]
    for h in headers:
        cmd += ["-H", h]
    if script:
        cmd += ["-s", script]
    cmd.append(url)
    if script_args:
        cmd += ["--"] + [str(a) for a in script_args]
    out = subprocess.run(cmd, capture_output=True, text=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = (int(non2xx.group(1)) if non2xx else 0) + (sum(int(x) for x in sock.groups()) if sock else 0)
    lat = {}
    for q in ("50", "99"):
        m = re.search(rf"\s{q}%\s+([\d.]+)(us|ms|s)", out)
        v = float(m.group(1)); unit = m.group(2)
        lat[q] = v * {"us": 1, "ms": 1000, "s": 1e6}[unit]
    return {"rps": rps, "requests": total, "errors": errors, "p50_us": lat["50"], "p99_us": lat["99"]}


def openloop(url, rate, seconds, headers=(), timeout=None):
    cmd = ["taskset", "-c", LOAD_CORE, os.path.join(REL, "openloop"), url, str(int(rate)), str(seconds), "32"]
    for h in headers:
        cmd += ["-H", h]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=timeout).stdout
    return json.loads(out.strip().splitlines()[-1])


class Target:
    """A proxy (or the bare upstream) under test."""

    def __init__(self, name, start, headers=()):
        self.name, self._start, self.headers = name, start, list(headers)
        self.proc, self.url, self.pids, self.metrics = None, None, [], None

    def start(self):
        started = self._start()
        self.proc, self.url, self.pids = started[:3]
        self.metrics = started[3] if len(started) > 3 else None
        wait_http(self.url, headers=self.headers)

    def stop(self):
        if self.proc:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.proc = None


def weir_target(name, tmp, upstream, chain_config, headers=(), workers=("--workers", "1"), cores=None, binary=None):
    def start():
        d = tempfile.mkdtemp(dir=tmp)
        port, admin = free_port(), free_port()
        cfg = f"""[server]
listen = "127.0.0.1:{port}"
admin_listen = "127.0.0.1:{admin}"
plugins_dir = "{WASM}"
watch = false
[upstreams.up]
targets = ["{upstream}"]
connect_timeout = "1s"
{chain_config}
"""
        open(os.path.join(d, "gateway.toml"), "w").write(cfg)
        p = pinned(cores or PROXY_CORE, [binary or os.path.join(REL, "weir"), "run", *workers, "--config", os.path.join(d, "gateway.toml")],
                   env={**os.environ, "WEIR_LOG": "warn", "WEIR_COUNT_HOST_CALLS": "1" if COUNT_HOST_CALLS else "0"})
        return p, f"http://127.0.0.1:{port}/bench", [p.pid], f"http://127.0.0.1:{admin}/metrics"
    return Target(name, start, headers)


# Set by --host-calls: count the plugins' host calls per request (a call
# hook on every crossing, so not while CPU is measured for the table).
COUNT_HOST_CALLS = False


def host_calls(metrics_url):
    """Calls plugins made into the host so far (weir_plugin_host_calls_total, all plugins)."""
    text = urllib.request.urlopen(metrics_url, timeout=5).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("weir_plugin_host_calls_total{"))


def nginx_target(tmp, upstream, workers=1, cores=None, name="nginx"):
    def start():
        d = tempfile.mkdtemp(dir=tmp)
        port = free_port()
        conf = os.path.join(d, "nginx.conf")
        open(conf, "w").write(f"""worker_processes {workers};
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; fastcgi_temp_path {d}/fcgi;
  uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;
  keepalive_requests 1000000;
  upstream up {{ server {upstream}; keepalive 256; keepalive_requests 1000000; }}
  server {{
    listen 127.0.0.1:{port};
    location / {{ proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; }}
  }}
}}
""")
        p = pinned(cores or PROXY_CORE, ["nginx", "-c", conf, "-p", d])
        url = f"http://127.0.0.1:{port}/bench"
        wait_http(url)
        return p, url, [p.pid] + children(p.pid)
    return Target(name, start)


def chain(n, isolation="pool"):
    out = []
    names = []
    for i in range(n):
        out.append(f'[plugins.h{i}]\nmodule = "add_header.wasm"\nconfig = {{ name = "x-bench-{i}", value = "v" }}\nisolation = "{isolation}"\n')
        names.append(f'"h{i}"')
    out.append(f'[[routes]]\nname = "bench"\nupstream = "up"\nchain = [{", ".join(names)}]\n')
    return "\n".join(out)


def measure(t, duration, conns):
    t.start()
    try:
        # Warm up connections, pools and caches.
        wrk(t.url, 1, conns, t.headers)
        pids = t.pids if t.name != "direct" else []
        calls_before = host_calls(t.metrics) if t.metrics and COUNT_HOST_CALLS else None
        before = cpu_ticks(pids)
        r = wrk(t.url, duration, conns, t.headers)
        after = cpu_ticks(pids)
        if calls_before is not None:
            r["host_calls_per_req"] = (host_calls(t.metrics) - calls_before) / max(r["requests"], 1)
        if pids:
            r["cpu_us_per_req"] = (after - before) / CLK * 1e6 / max(r["requests"], 1)
            r["peak_rss_mib"] = peak_rss_kib(pids) / 1024
        return r
    finally:
        t.stop()


def measure_openloop(t, rate, seconds):
    t.start()
    try:
        openloop(t.url, rate, 1, t.headers)
        return openloop(t.url, rate, seconds, t.headers)
    finally:
        t.stop()


# ---- the built-in plugins -------------------------------------------------

KEYS = os.path.join(ROOT, "plugins", "auth", "tests", "keys")
HS_SECRET = "bench-secret-0123456789abcdef-0123456789"


def b64url(b):
    import base64
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def jwt(alg, claims):
    """A compact JWS: HS256 with HS_SECRET, or ES256 with the auth plugin's test key (openssl signs)."""
    import hashlib, hmac
    head = b64url(json.dumps({"alg": alg, "typ": "JWT"}).encode())
    body = b64url(json.dumps(claims).encode())
    signing_input = f"{head}.{body}".encode()
    if alg == "HS256":
        sig = hmac.new(HS_SECRET.encode(), signing_input, hashlib.sha256).digest()
    else:
        der = subprocess.run(["openssl", "dgst", "-sha256", "-sign", os.path.join(KEYS, "ec256.key")],
                             input=signing_input, capture_output=True, check=True).stdout
        sig = der_to_raw(der)
    return f"{head}.{body}.{b64url(sig)}"


def der_to_raw(der):
    """An ECDSA DER signature (SEQUENCE of two INTEGERs) as JOSE's 64-byte r||s."""
    assert der[0] == 0x30
    i = 2 if der[1] < 0x80 else 2 + (der[1] & 0x7F)
    out = b""
    for _ in range(2):
        assert der[i] == 0x02
        n = der[i + 1]
        out += der[i + 2:i + 2 + n].lstrip(b"\0").rjust(32, b"\0")
        i += 2 + n
    return out


def plugin_route(plugins, names):
    """Named plugin sections and the bench route running them in order."""
    chain = ", ".join(f'"{n}"' for n in names)
    return "\n".join(plugins) + f'\n[[routes]]\nname = "bench"\nupstream = "up"\nchain = [{chain}]\n'


def builtin_plugins():
    """The built-in plugins' sections, by name, and the Authorization headers
    (HS256 and ES256 tokens) the auth sections accept."""
    claims = {"sub": "bench-client", "exp": int(time.time()) + 86400}
    es_pub = open(os.path.join(KEYS, "ec256.pub.pem")).read()
    headers = {"hs": [f"Authorization: Bearer {jwt('HS256', claims)}"],
               "es": [f"Authorization: Bearer {jwt('ES256', claims)}"]}
    sections = {
        "auth_hs": f'[plugins.auth]\nmodule = "auth.wasm"\n[plugins.auth.config.jwt]\nkeys = [{{ secret = "{HS_SECRET}" }}]\n',
        "auth_es": f'[plugins.auth]\nmodule = "auth.wasm"\n[plugins.auth.config.jwt]\nkeys = [{{ pem = """\n{es_pub}""" }}]\n',
        "limit": ('[plugins.limit]\nmodule = "rate_limit.wasm"\n'
                  'config = { key = "header:x-auth-sub", missing = "ip", limits = [{ requests = 1000000000, window = "1s" }] }\n'),
        "anomaly": '[plugins.anomaly]\nmodule = "anomaly.wasm"\nconfig = { key = "header:x-auth-sub", action = "flag" }\n',
        "auth_jwks": ('[plugins.auth]\nmodule = "auth.wasm"\noutbound = ["idp"]\nlimits = { deadline = "1s" }\n'
                      '[plugins.auth.config.jwt]\njwks_upstream = "idp"\n'),
        "ext_authz": ('[plugins.authz]\nmodule = "ext_authz.wasm"\noutbound = ["authz"]\nlimits = { deadline = "1s" }\n'
                      'config = { upstream = "authz", upstream_headers = ["x-user-id"] }\n'),
        "shape": ('[plugins.shape]\nmodule = "transform.wasm"\n'
                  '[plugins.shape.config.request.headers]\nset = { "x-client" = "{header.x-auth-sub}" }\n'
                  '[plugins.shape.config.response.headers]\nadd = { "x-served-by" = "weir" }\n'),
    }
    return sections, headers


# The identity provider of `weir-auth-jwks`: a static file server holding
# the auth plugin's test key set at /.well-known/jwks.json (set in main).
IDP = None


def start_idp(tmp):
    """A static JWKS server on loopback; its process and address."""
    global IDP
    root = os.path.join(tmp, "idp")
    os.makedirs(os.path.join(root, ".well-known"))
    shutil.copy(os.path.join(KEYS, "jwks.json"), os.path.join(root, ".well-known", "jwks.json"))
    port = free_port()
    proc = pinned(LOAD_CORE, [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "--directory", root, str(port)])
    IDP = f"127.0.0.1:{port}"
    wait_http(f"http://{IDP}/.well-known/jwks.json")
    return proc


# The routes `bench/callgrind.sh --route NAME` counts: a built-in plugin
# alone, or the mission chain (no outbound calls: callgrind runs one process).
CALLGRIND_ROUTES = {
    "auth-hs256": (["auth_hs"], ["auth"], "hs"),
    "auth-es256": (["auth_es"], ["auth"], "es"),
    "rate-limit": (["limit"], ["limit"], None),
    "anomaly": (["anomaly"], ["anomaly"], None),
    "transform": (["shape"], ["shape"], None),
    "mission": (["auth_es", "limit", "anomaly", "shape"], ["auth", "limit", "anomaly", "shape"], "es"),
}


def route_config(name):
    """A `CALLGRIND_ROUTES` route as JSON: its TOML (plugins and the bench
    route on upstream `up`) and the request headers it needs."""
    p, h = builtin_plugins()
    sections, names, token = CALLGRIND_ROUTES[name]
    return json.dumps({"toml": plugin_route([p[s] for s in sections], names), "headers": h[token] if token else []})


def builtin_targets(tmp, up):
    """weir with each built-in plugin alone, and with the mission chain
    auth (ES256, verified-token cache) → rate limit → anomaly → transform."""
    p, h = builtin_plugins()
    mission = [p["auth_es"], p["limit"], p["anomaly"], p["shape"]]
    return [
        weir_target("weir-auth-hs256", tmp, up, plugin_route([p["auth_hs"]], ["auth"]), h["hs"]),
        weir_target("weir-auth-es256", tmp, up, plugin_route([p["auth_es"]], ["auth"]), h["es"]),
        # The same token, its key fetched from an identity provider's JWKS
        # URL (a static file server, IDP) on first need, then cached.
        weir_target("weir-auth-jwks", tmp, up, f'[upstreams.idp]\ntargets = ["{IDP}"]\n'
                    + plugin_route([p["auth_jwks"]], ["auth"]), h["es"]),
        weir_target("weir-rate-limit", tmp, up, plugin_route([p["limit"]], ["limit"])),
        weir_target("weir-anomaly", tmp, up, plugin_route([p["anomaly"]], ["anomaly"])),
        weir_target("weir-transform", tmp, up, plugin_route([p["shape"]], ["shape"])),
        weir_target("weir-mission", tmp, up, plugin_route(mission, ["auth", "limit", "anomaly", "shape"]), h["es"]),
        # ext_authz asking the upstream itself (any path answers 200): the
        # gateway's cost of one outbound call per request.
        weir_target("weir-ext-authz", tmp, up, f'[upstreams.authz]\ntargets = ["{up}"]\n'
                    + plugin_route([p["ext_authz"]], ["authz"]), h["hs"]),
    ]


def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


# ---- the main table ---------------------------------------------------------

def run_table(args, tmp, up):
    """Every target closed loop (wrk) then open loop (openloop), rounds in
    alternating order. Returns the per-target medians and the open-loop rate."""
    direct = Target("direct", lambda: (None, f"http://{up}/bench", []))
    targets = [
        direct,
        nginx_target(tmp, up),
        weir_target("weir-empty", tmp, up, chain(0)),
        weir_target("weir-empty-access-log", tmp, up, '[access_log]\ntarget = "access.log"\n' + chain(0)),
        weir_target("weir-1-plugin", tmp, up, chain(1)),
        weir_target("weir-4-plugins", tmp, up, chain(4)),
        weir_target("weir-1-plugin-isolated", tmp, up, chain(1, "request")),
    ] + builtin_targets(tmp, up)
    closed = {t.name: [] for t in targets}
    for rnd in range(args.rounds):
        order = targets if rnd % 2 == 0 else list(reversed(targets))
        for t in order:
            r = measure(t, args.duration, args.connections)
            closed[t.name].append(r)
            print(f"round {rnd + 1} {t.name}: {r['rps']:.0f} req/s", file=sys.stderr)
    summary = {}
    for name, runs in closed.items():
        summary[name] = {k: med([r.get(k) for r in runs])
                         for k in ("rps", "p50_us", "p99_us", "cpu_us_per_req", "peak_rss_mib", "errors", "host_calls_per_req")}

    # Half of what both nginx and weir's empty chain sustain, so the two
    # are compared on latency, not on queueing. Targets whose own maximum
    # is below it (the slower plugin chains) queue: their open-loop
    # figures are marked in the table.
    rate = 0.5 * min(summary["nginx"]["rps"], summary["weir-empty"]["rps"])
    seconds = 2 if args.smoke else max(5, args.duration // 2)
    for rnd in range(args.rounds):
        order = targets if rnd % 2 == 0 else list(reversed(targets))
        for t in order:
            r = measure_openloop(t, rate, seconds)
            summary[t.name].setdefault("open", []).append(r)
    for name in summary:
        runs = summary[name].pop("open")
        summary[name]["fixed_rate"] = rate
        summary[name]["open_p50_us"] = med([r["p50_us"] for r in runs])
        summary[name]["open_p99_us"] = med([r["p99_us"] for r in runs])
        summary[name]["open_errors"] = med([r["errors"] for r in runs])
    return summary, rate


def table_ratios(summary):
    """The ratios printed under the main table."""
    ng, empty, direct_s = summary["nginx"], summary["weir-empty"], summary["direct"]
    ratios = {
        "weir_empty/nginx rps": empty["rps"] / ng["rps"],
        "weir_empty/direct rps": empty["rps"] / direct_s["rps"],
        "weir_1/weir_empty rps": summary["weir-1-plugin"]["rps"] / empty["rps"],
        "weir_4/weir_empty rps": summary["weir-4-plugins"]["rps"] / empty["rps"],
        "weir_empty/nginx open p99": empty["open_p99_us"] / ng["open_p99_us"],
        "weir_empty - nginx open p50 (us)": empty["open_p50_us"] - ng["open_p50_us"],
        "per plugin added cpu (us, 4-plugin chain)": (summary["weir-4-plugins"]["cpu_us_per_req"] - empty["cpu_us_per_req"]) / 4,
        "isolated plugin added cpu (us)": summary["weir-1-plugin-isolated"]["cpu_us_per_req"] - empty["cpu_us_per_req"],
        "weir_mission/weir_empty rps": summary["weir-mission"]["rps"] / empty["rps"],
        "access log on/off rps": summary["weir-empty-access-log"]["rps"] / empty["rps"],
        "access log added cpu (us)": summary["weir-empty-access-log"]["cpu_us_per_req"] - empty["cpu_us_per_req"],
    }
    for name in ("weir-auth-hs256", "weir-auth-es256", "weir-auth-jwks", "weir-rate-limit", "weir-anomaly", "weir-transform", "weir-mission",
                 "weir-ext-authz"):
        ratios[f"{name} added cpu (us)"] = summary[name]["cpu_us_per_req"] - empty["cpu_us_per_req"]
    return ratios


def fmt(v, nd=0):
    return "—" if v is None else f"{v:,.{nd}f}"


def print_table(args, summary, ratios, rate):
    print(f"closed loop: wrk -t1 -c{args.connections} {args.duration}s × {args.rounds} rounds (medians); "
          f"open loop: {fmt(rate)} req/s (50% of the lower of nginx's and weir-empty's max), "
          f"latency from due time (from send time when the connection was idle; * = rate above the target's max)\n")
    print("| target | req/s | p50 µs | p99 µs | CPU µs/req | peak RSS MiB | open p50 µs | open p99 µs | errors | host calls/req |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, s in summary.items():
        star = "*" if s["rps"] is not None and s["rps"] < rate else ""
        print(f"| {name} | {fmt(s['rps'])} | {fmt(s['p50_us'])} | {fmt(s['p99_us'])} | {fmt(s['cpu_us_per_req'], 1)} | "
              f"{fmt(s['peak_rss_mib'], 1)} | {fmt(s['open_p50_us'])}{star} | {fmt(s['open_p99_us'])}{star} | "
              f"{fmt((s['errors'] or 0) + (s['open_errors'] or 0))} | {fmt(s.get('host_calls_per_req'), 1)} |")
    print("\n| ratio | value |\n|---|---:|")
    for k, v in ratios.items():
        print(f"| {k} | {v:.2f} |")


# ---- scenarios: shared pieces -------------------------------------------------

class ScenarioError(Exception):
    """A scenario could not run at all (a process did not start or died)."""


def write_atomic(path, data):
    """Replace `path` by a rename, so a watcher never sees a partial file."""
    tmp = os.path.join(os.path.dirname(path), "." + os.path.basename(path) + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
    os.replace(tmp, path)


def leb128(n):
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | 0x80 if n else b)
        if not n:
            return bytes(out)


def wasm_variant(module, tag):
    """`module` with a custom section appended: the same plugin, other bytes
    (another sha256), as a rebuild would give."""
    name = b"weir-bench-variant"
    content = leb128(len(name)) + name + tag.encode()
    return module + b"\x00" + leb128(len(content)) + content


class Weir:
    """A weir process (one worker, pinned to the proxy core) serving
    `folder`/gateway.toml, its log in `folder`/weir.log."""

    def __init__(self, folder):
        self.folder, self.proc = folder, None
        self.config = os.path.join(folder, "gateway.toml")

    def spawn(self):
        log = open(os.path.join(self.folder, "weir.log"), "ab")
        try:
            self.proc = subprocess.Popen(
                ["taskset", "-c", PROXY_CORE, os.path.join(REL, "weir"), "run", "--workers", "1", "--config", self.config],
                stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "WEIR_LOG": "warn"})
        except OSError as e:
            raise ScenarioError(f"cannot spawn weir: {e}") from e
        finally:
            log.close()
        return self.proc

    def log_tail(self, lines=5):
        try:
            return " | ".join(open(os.path.join(self.folder, "weir.log"), errors="replace").read().strip().splitlines()[-lines:])
        except OSError:
            return ""

    def wait(self, url, timeout=60.0, headers=()):
        """Until `url` answers 200; ScenarioError as soon as weir exits, or
        if it never answers."""
        deadline = time.time() + timeout
        while True:
            if self.proc.poll() is not None:
                raise ScenarioError(f"weir exited with {self.proc.returncode}; log: {self.log_tail()}")
            try:
                return wait_http(url, 1.0, headers)
            except RuntimeError:
                if time.time() > deadline:
                    raise ScenarioError(f"weir did not answer {url} within {timeout:.0f}s; log: {self.log_tail()}")

    def rss_kib(self, field="VmRSS"):
        for line in open(f"/proc/{self.proc.pid}/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1])
        return None

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


def get_json(url):
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


def scenario_openloop(url, rate, seconds, headers=()):
    """openloop with a deadline; its crash or hang means the scenario could not run."""
    try:
        return openloop(url, rate, seconds, headers, timeout=seconds + 60)
    except subprocess.TimeoutExpired as e:
        raise ScenarioError(f"openloop did not finish within {seconds + 60}s (requests hung)") from e
    except subprocess.CalledProcessError as e:
        first = (e.stderr or "").strip().splitlines()[:1]
        raise ScenarioError(f"openloop failed: {first[0] if first else f'exit {e.returncode}'}") from e


def gateway_head(port, admin, upstream, runtime="", watch=False, plugins_dir=WASM):
    """[server], [runtime] and the upstream `up` of a scenario's gateway.toml."""
    return f"""[server]
listen = "127.0.0.1:{port}"
admin_listen = "127.0.0.1:{admin}"
plugins_dir = "{plugins_dir}"
watch = {"true" if watch else "false"}
[runtime]
{runtime}
[upstreams.up]
targets = ["{upstream}"]
connect_timeout = "1s"
"""


# ---- scenario (a): reload storm ------------------------------------------------

def storm_config(port, admin, upstream, folder, value):
    """One route, one add_header plugin whose header value is `value`."""
    return (gateway_head(port, admin, upstream, f'compile_cache = "{folder}/cache"', watch=True,
                         plugins_dir=f"{folder}/plugins")
            + f'[plugins.h]\nmodule = "add_header.wasm"\nconfig = {{ name = "x-reload", value = "{value}" }}\n'
            + '[[routes]]\nname = "bench"\nupstream = "up"\nchain = ["h"]\n')


class Storm(threading.Thread):
    """Every `period` seconds: gateway.toml rewritten with a new header value,
    and add_header.wasm replaced by the other of two builds, each by rename.
    Runs pinned to the load core."""

    def __init__(self, folder, render, modules, period):
        super().__init__(daemon=True)
        self.folder, self.render, self.modules, self.period = folder, render, modules, period
        self.halt, self.error = threading.Event(), None
        self.configs = self.swaps = 0

    def run(self):
        try:
            os.sched_setaffinity(0, {int(LOAD_CORE)})  # this thread only
            due = time.monotonic()
            while not self.halt.is_set():
                n = self.configs + 1
                write_atomic(os.path.join(self.folder, "gateway.toml"), self.render(f"v{n}"))
                write_atomic(os.path.join(self.folder, "plugins", "add_header.wasm"), self.modules[n % 2])
                self.configs, self.swaps = n, self.swaps + 1
                due += self.period
                self.halt.wait(max(0.0, due - time.monotonic()))
        except Exception as e:  # reported by stop()
            self.error = e

    def stop(self):
        self.halt.set()
        self.join()
        if self.error:
            raise ScenarioError(f"storm writer failed: {self.error}")


def storm_counts(storm):
    """(configs written, modules swapped) so far; zeros without a storm."""
    return (storm.configs, storm.swaps) if storm else (0, 0)


def storm_round(folder, upstream, rate, seconds, period=None):
    """One weir from a fresh config, measured by openloop for `seconds`
    (after a 1 s warm-up), with a storm every `period` seconds or none."""
    port, admin = free_port(), free_port()
    render = lambda value: storm_config(port, admin, upstream, folder, value)
    base = open(os.path.join(WASM, "add_header.wasm"), "rb").read()
    modules = [wasm_variant(base, "a"), wasm_variant(base, "b")]
    write_atomic(os.path.join(folder, "plugins", "add_header.wasm"), modules[0])
    write_atomic(os.path.join(folder, "gateway.toml"), render("v0"))
    w, storm = Weir(folder), None
    url, status_url = f"http://127.0.0.1:{port}/bench", f"http://127.0.0.1:{admin}/admin/status"
    try:
        w.spawn()
        w.wait(url)
        if period:
            storm = Storm(folder, render, modules, period)
            storm.start()
        warm = scenario_openloop(url, rate, 1)
        before, written = get_json(status_url), storm_counts(storm)
        r = scenario_openloop(url, rate, seconds)
        after = get_json(status_url)
        written = [b - a for a, b in zip(written, storm_counts(storm))]
        if storm:
            storm.stop()
            storm = None
        if w.proc.poll() is not None:
            raise ScenarioError(f"weir exited with {w.proc.returncode} during the run; log: {w.log_tail()}")
    finally:
        if storm:
            storm.halt.set()
            storm.join()
        w.stop()
    return {
        "p50_us": r["p50_us"], "p99_us": r["p99_us"], "p999_us": r["p999_us"], "max_us": r["max_us"],
        "sent": r["sent"] + warm["sent"], "failed": (r["sent"] - r["ok"]) + (warm["sent"] - warm["ok"]),
        "reloads_published": after["reloads"]["succeeded"] - before["reloads"]["succeeded"],
        "reloads_rejected": after["reloads"]["failed"] - before["reloads"]["failed"],
        "generations": after["generation"] - before["generation"],
        "configs_written": written[0], "modules_swapped": written[1],
        "last_reload_error": after.get("last_reload_error"),
    }


def scenario_reload_storm(tmp, upstream, rate, seconds, rounds, period=0.1):
    """(a) p50/p99 at a fixed rate with the config and module replaced every
    `period` seconds, against the same gateway left alone; rounds alternate
    the order."""
    folder = tempfile.mkdtemp(prefix="storm-", dir=tmp)
    runs = {"quiet": [], "storm": []}
    try:
        os.makedirs(os.path.join(folder, "plugins"))
        for rnd in range(rounds):
            for mode in (("quiet", "storm") if rnd % 2 == 0 else ("storm", "quiet")):
                r = storm_round(folder, upstream, rate, seconds, period if mode == "storm" else None)
                runs[mode].append(r)
                print(f"reload storm round {rnd + 1} {mode}: p50 {r['p50_us']} µs, p99 {r['p99_us']} µs, "
                      f"failed {r['failed']}, reloads {r['reloads_published']}/{r['reloads_rejected']}", file=sys.stderr)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    out = {"rate": rate, "seconds": seconds, "rounds": rounds, "period_ms": period * 1000, "runs": runs}
    for mode, rs in runs.items():
        out[mode] = {
            "p50_us": med([r["p50_us"] for r in rs]), "p99_us": med([r["p99_us"] for r in rs]),
            "sent": sum(r["sent"] for r in rs), "failed": sum(r["failed"] for r in rs),
            "reloads_published": sum(r["reloads_published"] for r in rs),
            "reloads_rejected": sum(r["reloads_rejected"] for r in rs),
            "configs_written": sum(r["configs_written"] for r in rs),
            "modules_swapped": sum(r["modules_swapped"] for r in rs),
        }
    out["p99_ratio"] = out["storm"]["p99_us"] / out["quiet"]["p99_us"]
    out["p50_ratio"] = out["storm"]["p50_us"] / out["quiet"]["p50_us"]
    return out


def print_reload_storm(s):
    print(f"\n**Reload storm** · one `add_header` plugin, `watch = true`; every {s['period_ms']:.0f} ms gateway.toml "
          f"rewritten (new header value) and the .wasm replaced by the other of two builds, both by rename · "
          f"openloop {fmt(s['rate'])} req/s, {s['seconds']} s × {s['rounds']} rounds (medians, order alternating); "
          f"requests and failed (non-2xx or transport errors) include the 1 s warm-up\n")
    print("| run | p50 µs | p99 µs | requests | failed | configs written | modules swapped | reloads published | reloads rejected |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for mode, label in (("quiet", "no reloads"), ("storm", "reload storm")):
        m = s[mode]
        print(f"| {label} | {fmt(m['p50_us'])} | {fmt(m['p99_us'])} | {fmt(m['sent'])} | {fmt(m['failed'])} | "
              f"{fmt(m['configs_written'])} | {fmt(m['modules_swapped'])} | {fmt(m['reloads_published'])} | "
              f"{fmt(m['reloads_rejected'])} |")
    print(f"| storm / no reloads | {s['p50_ratio']:.2f}× | {s['p99_ratio']:.2f}× (target ≤ 1.2×) | | "
          f"{'0 ✓' if s['storm']['failed'] + s['quiet']['failed'] == 0 else 'FAILED REQUESTS'} | | | | |")


# ---- scenario (b): memory -------------------------------------------------------

def memory_config(port, admin, upstream, folder, routes, per_route, max_instances):
    """`routes` routes /r0 ... each with its own chain of `per_route`
    add_header instances."""
    out = [gateway_head(port, admin, upstream,
                        f'compile_cache = "{folder}/cache"\nmax_instances = {max_instances}')]
    for r in range(routes):
        for i in range(per_route):
            out.append(f'[plugins.r{r}-h{i}]\nmodule = "add_header.wasm"\n'
                       f'config = {{ name = "x-r{r}-h{i}", value = "v" }}\n')
    for r in range(routes):
        names = ", ".join(f'"r{r}-h{i}"' for i in range(per_route))
        out.append(f'[[routes]]\nname = "r{r}"\npath_prefix = "/r{r}"\nupstream = "up"\nchain = [{names}]\n')
    return "\n".join(out)


def scenario_memory(tmp, upstream, seconds, conns=256, routes=100, per_route=10):
    """(b) RSS with routes × per_route plugin instances, before and under
    load spread over every route."""
    instances = routes * per_route
    # One initialised instance per plugin at load; a quarter more slots for
    # instances created when a call finds its plugin's pool empty.
    max_instances = instances + instances // 4
    folder = tempfile.mkdtemp(prefix="memory-", dir=tmp)
    port, admin = free_port(), free_port()
    w = Weir(folder)
    try:
        open(w.config, "w").write(memory_config(port, admin, upstream, folder, routes, per_route, max_instances))
        started = time.perf_counter()
        w.spawn()
        w.wait(f"http://127.0.0.1:{admin}/readyz", timeout=120)
        ready_s = time.perf_counter() - started
        rss_start = w.rss_kib("VmRSS")
        r = wrk(f"http://127.0.0.1:{port}/", seconds, conns,
                script=os.path.join(ROOT, "bench", "spread_routes.lua"), script_args=[routes])
        if w.proc.poll() is not None:
            raise ScenarioError(f"weir exited with {w.proc.returncode} under load; log: {w.log_tail()}")
        peak, rss_end = peak_rss_kib([w.proc.pid]), w.rss_kib("VmRSS")
        pss_end, shmem_end = rollup_kib(w.proc.pid, "Pss"), w.rss_kib("RssShmem")
        status = get_json(f"http://127.0.0.1:{admin}/admin/status")
    finally:
        w.stop()
        shutil.rmtree(folder, ignore_errors=True)
    print(f"memory: {rss_start / 1024:.1f} MiB after start, peak {peak / 1024:.1f} MiB, {r['rps']:.0f} req/s", file=sys.stderr)
    return {
        "routes": len(status["routes"]), "plugin_instances": len(status["plugins"]), "max_instances": max_instances,
        "connections": conns, "seconds": seconds, "ready_s": ready_s,
        "rss_after_start_mib": rss_start / 1024, "rss_after_load_mib": rss_end / 1024, "peak_rss_mib": peak / 1024,
        "pss_after_load_mib": pss_end / 1024, "rss_shmem_after_load_mib": shmem_end / 1024,
        "rps": r["rps"], "requests": r["requests"], "errors": r["errors"], "p50_us": r["p50_us"], "p99_us": r["p99_us"],
    }


def print_memory(s):
    print(f"\n**Memory** · {s['routes']} routes × 10 `add_header` instances ({s['plugin_instances']} named plugins, "
          f"`max_instances = {s['max_instances']}`) · wrk -c{s['connections']} {s['seconds']} s over every route\n")
    print("| ready s | RSS after start MiB | peak RSS MiB | RSS after load MiB | of which shared CoW MiB | PSS after load MiB | req/s | p99 µs | errors | target |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    print(f"| {fmt(s['ready_s'], 2)} | {fmt(s['rss_after_start_mib'], 1)} | {fmt(s['peak_rss_mib'], 1)} | "
          f"{fmt(s['rss_after_load_mib'], 1)} | {fmt(s.get('rss_shmem_after_load_mib'), 1)} | "
          f"{fmt(s.get('pss_after_load_mib'), 1)} | {fmt(s['rps'])} | {fmt(s['p99_us'])} | {fmt(s['errors'])} | "
          f"peak ≤ 128 MiB: {'met' if s['peak_rss_mib'] <= 128 else 'missed'} |")
    print("\nRSS counts a page once per mapping: the plugins' copy-on-write memory images (`RssShmem`) are "
          "the same few pages mapped into every instance. PSS (from `smaps_rollup`) counts each page once.")


# ---- scenario (c): start-up -------------------------------------------------------

def first_200(port, headers, w, started, timeout=60.0):
    """Poll the proxy port every ~1 ms with a raw HTTP/1.1 request until it
    answers 200. Returns (ms to the first accepted connection, ms to the
    first 200), both from `started`."""
    req = ("GET /bench HTTP/1.1\r\nHost: 127.0.0.1\r\n" + "".join(h + "\r\n" for h in headers)
           + "Connection: close\r\n\r\n").encode()
    connected = None
    while True:
        now = time.perf_counter()
        if now - started > timeout:
            raise ScenarioError(f"no 200 within {timeout}s; log: {w.log_tail()}")
        if w.proc.poll() is not None:
            raise ScenarioError(f"weir exited with {w.proc.returncode}; log: {w.log_tail()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
                connected = connected or (time.perf_counter() - started) * 1000
                s.sendall(req)
                head = b""
                while b"\r\n" not in head:
                    chunk = s.recv(256)
                    if not chunk:
                        break
                    head += chunk
            if head.startswith(b"HTTP/1.1 200"):
                return connected, (time.perf_counter() - started) * 1000
        except OSError:
            pass
        time.sleep(0.001)


def startup_once(folder, config_text, port, headers):
    """Spawn weir and time it to the first proxied 200; stop it."""
    w = Weir(folder)
    open(w.config, "w").write(config_text)
    try:
        started = time.perf_counter()
        w.spawn()
        connected_ms, ok_ms = first_200(port, headers, w, started)
    finally:
        w.stop()
    return {"connected_ms": connected_ms, "first_200_ms": ok_ms}


def scenario_startup(tmp, upstream, runs):
    """(c) spawn to first 200 through auth (HS256) → rate limit → anomaly →
    transform: cold (fresh compile cache folder), then warm (same folder)."""
    sections, headers = builtin_plugins()
    chain_text = plugin_route([sections[k] for k in ("auth_hs", "limit", "anomaly", "shape")],
                              ["auth", "limit", "anomaly", "shape"])
    out = {"cold": [], "warm": []}
    for i in range(runs):
        folder = tempfile.mkdtemp(prefix="startup-", dir=tmp)
        try:
            port, admin = free_port(), free_port()
            cfg = gateway_head(port, admin, upstream, f'compile_cache = "{folder}/cache"') + chain_text
            for kind in ("cold", "warm"):
                r = startup_once(folder, cfg, port, headers["hs"])
                out[kind].append(r)
                print(f"start-up {i + 1} {kind}: first 200 after {r['first_200_ms']:.0f} ms", file=sys.stderr)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    summary = {"runs": runs, "chain": ["auth (HS256)", "rate_limit", "anomaly", "transform"], "all": out}
    for kind in ("cold", "warm"):
        summary[kind] = {k: med([r[k] for r in out[kind]]) for k in ("connected_ms", "first_200_ms")}
    return summary


def print_startup(s):
    print(f"\n**Start-up** · `weir run` spawned to the first proxied 200 through auth (HS256) → rate limit → "
          f"anomaly → transform, polled every ~1 ms · median of {s['runs']}; cold = empty compile cache folder, "
          f"warm = the same folder again\n")
    print("| start | listening ms | first 200 ms | runs (ms) | target |")
    print("|---|---:|---:|---|---|")
    for kind in ("cold", "warm"):
        m = s[kind]
        runs = ", ".join(fmt(r["first_200_ms"]) for r in s["all"][kind])
        target = f"≤ 300 ms: {'met' if m['first_200_ms'] <= 300 else 'missed'}" if kind == "warm" else ""
        print(f"| {kind} | {fmt(m['connected_ms'])} | {fmt(m['first_200_ms'])} | {runs} | {target} |")


def scenario_workers(tmp, upstream, seconds, rounds, conns):
    """Two workers each: nginx `worker_processes 2`, weir `--workers 2`
    (one work-stealing runtime of two threads) and weir `--workers 2
    --reuse-port` (two single-threaded event loops with a listener each),
    on both cores. The load generator and the upstream share those cores,
    so the figures compare the three with each other, not with the
    one-core table."""
    both = "0,1"
    targets = [
        nginx_target(tmp, upstream, workers=2, cores=both, name="nginx-2"),
        weir_target("weir-2-threads", tmp, upstream, chain(0), workers=("--workers", "2"), cores=both),
        weir_target("weir-2-reuse-port", tmp, upstream, chain(0), workers=("--workers", "2", "--reuse-port"), cores=both),
    ]
    runs = {t.name: [] for t in targets}
    for rnd in range(rounds):
        for t in (targets if rnd % 2 == 0 else list(reversed(targets))):
            runs[t.name].append(measure(t, seconds, conns))
    out = {}
    for name, rs in runs.items():
        out[name] = {k: med([r.get(k) for r in rs]) for k in ("rps", "p50_us", "p99_us", "cpu_us_per_req")}
    return out


def print_workers(s):
    ng = s["nginx-2"]
    print("\n**Two workers** (nginx `worker_processes 2`; weir `--workers 2`, threads or `--reuse-port` event loops; "
          "both cores shared with the load generator)\n")
    print("| target | req/s | × nginx-2 | p50 µs | p99 µs | CPU µs/req |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, r in s.items():
        print(f"| {name} | {fmt(r['rps'])} | {r['rps'] / ng['rps']:.2f} | {fmt(r['p50_us'])} | {fmt(r['p99_us'])} | "
              f"{r['cpu_us_per_req']:.1f} |")


# ---- scenario (e): protocol translation -----------------------------------------

def start_orders_server():
    """tests/grpc/orders.py (grpcio, shop.v1.Orders) on the load core: (process, port)."""
    # Its stdin stays open: the server stops when it reaches EOF.
    p = subprocess.Popen(["taskset", "-c", LOAD_CORE, sys.executable, os.path.join(ROOT, "tests", "grpc", "orders.py"),
                          "server"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = p.stdout.readline()
    if not line.startswith("PORT "):
        p.kill()
        raise ScenarioError("tests/grpc/orders.py did not start (needs grpcio and grpcio-tools)")
    return p, int(line.split()[1])


def h2calls(url, seconds, body_file, headers, conns=8, streams=8):
    cmd = ["taskset", "-c", LOAD_CORE, os.path.join(REL, "h2calls"), url, str(seconds), str(conns), str(streams), body_file]
    for h in headers:
        cmd += ["-H", h]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=seconds + 30).stdout
    return json.loads(out.strip().splitlines()[-1])


def scenario_transcode(tmp, seconds, rounds):
    """The same gRPC method (`shop.v1.Orders/Ping`, a real grpcio server)
    called through one weir route two ways, by the same HTTP/2 client:
    as gRPC (passed through) and as a JSON POST (transcoded both ways). The
    gateway's CPU per call, the difference being what transcoding costs."""
    folder = tempfile.mkdtemp(dir=tmp)
    protos = os.path.join(ROOT, "transcode", "tests", "protos")
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", "-I", protos, "--include_imports",
                    f"--descriptor_set_out={os.path.join(folder, 'shop.pb')}", "shop/v1/shop.proto"], check=True)
    # PingRequest { message: "hello" }: field 1, length 5.
    grpc_body = os.path.join(folder, "ping.grpc")
    payload = b"\x0a\x05hello"
    open(grpc_body, "wb").write(b"\x00" + len(payload).to_bytes(4, "big") + payload)
    json_body = os.path.join(folder, "ping.json")
    open(json_body, "w").write('{"message": "hello"}')
    server, port = start_orders_server()
    try:
        gw_port, admin = free_port(), free_port()
        config = f"""[server]
listen = "127.0.0.1:{gw_port}"
admin_listen = "127.0.0.1:{admin}"
plugins_dir = "{WASM}"
watch = false
[upstreams.shop]
targets = ["127.0.0.1:{port}"]
protocol = "h2"
[[routes]]
name = "shop"
path_prefix = "/"
upstream = "shop"
grpc_transcode = {{ descriptors = "shop.pb", services = ["shop.v1.Orders"] }}
"""
        open(os.path.join(folder, "gateway.toml"), "w").write(config)
        w = pinned(PROXY_CORE, [os.path.join(REL, "weir"), "run", "--workers", "1", "--config",
                                os.path.join(folder, "gateway.toml")], env={**os.environ, "WEIR_LOG": "warn"})
        try:
            url = f"http://127.0.0.1:{gw_port}/shop.v1.Orders/Ping"
            wait_http(f"http://127.0.0.1:{admin}/admin/status")
            kinds = {
                "grpc-pass-through": (grpc_body, ["content-type: application/grpc", "te: trailers"]),
                "json-transcoded": (json_body, ["content-type: application/json"]),
            }
            runs = {k: [] for k in kinds}
            for rnd in range(rounds):
                for kind in (list(kinds) if rnd % 2 == 0 else list(reversed(kinds))):
                    body, headers = kinds[kind]
                    h2calls(url, 1, body, headers)  # warm up
                    before = cpu_ticks([w.pid])
                    r = h2calls(url, seconds, body, headers)
                    r["cpu_us_per_req"] = (cpu_ticks([w.pid]) - before) / CLK * 1e6 / max(r["requests"], 1)
                    runs[kind].append(r)
        finally:
            w.terminate()
            w.wait()
    finally:
        server.terminate()
        server.wait()
    out = {k: {m: med([r[m] for r in rs]) for m in ("rps", "cpu_us_per_req", "errors")} for k, rs in runs.items()}
    out["added_cpu_us"] = out["json-transcoded"]["cpu_us_per_req"] - out["grpc-pass-through"]["cpu_us_per_req"]
    return out


def print_transcode(s):
    print("\n**Protocol translation** (`shop.v1.Orders/Ping` on a grpcio server, HTTP/2 client `h2calls`, "
          "8 connections × 8 streams; the upstream is the bottleneck, so compare CPU, not req/s)\n")
    print("| call | req/s | CPU µs/req | errors |")
    print("|---|---:|---:|---:|")
    for name in ("grpc-pass-through", "json-transcoded"):
        r = s[name]
        print(f"| {name} | {fmt(r['rps'])} | {r['cpu_us_per_req']:.1f} | {fmt(r['errors'])} |")
    print(f"\nadded CPU per transcoded call: {s['added_cpu_us']:.1f} µs")


SCENARIOS = ("reload_storm", "memory", "startup", "workers")
# Run only when asked for (`--scenario transcode`): they need more than the
# harness installs (Python grpcio and grpcio-tools, as scripts/test.sh does).
OPTIONAL_SCENARIOS = ("transcode",)


def run_scenarios(args, tmp, up, weir_empty_rps):
    """The selected scenarios, each on its own; one that cannot run is
    recorded as {"error": ...} and the others still run."""
    smoke = args.smoke
    storm_rate = 0.5 * weir_empty_rps if weir_empty_rps else 5000
    jobs = {
        "reload_storm": lambda: scenario_reload_storm(tmp, up, storm_rate, 3 if smoke else 30, 1 if smoke else args.rounds,
                                                      args.storm_period_ms / 1000),
        "memory": lambda: scenario_memory(tmp, up, 2 if smoke else 10),
        "startup": lambda: scenario_startup(tmp, up, 1 if smoke else 3),
        "workers": lambda: scenario_workers(tmp, up, 2 if smoke else args.duration, 1 if smoke else args.rounds,
                                            args.connections),
        "transcode": lambda: scenario_transcode(tmp, 2 if smoke else args.duration, 1 if smoke else args.rounds),
    }
    out = {}
    for name in args.scenario or SCENARIOS:
        print(f"scenario {name}...", file=sys.stderr)
        try:
            out[name] = jobs[name]()
        except (ScenarioError, OSError, RuntimeError, subprocess.SubprocessError) as e:
            print(f"scenario {name} could not run: {e}", file=sys.stderr)
            out[name] = {"error": str(e)}
    return out


def print_scenarios(scenarios):
    printers = {"reload_storm": print_reload_storm, "memory": print_memory, "startup": print_startup,
                "workers": print_workers, "transcode": print_transcode}
    for name, s in scenarios.items():
        if "error" in s:
            print(f"\n**{name}** · could not run: {s['error']}")
        else:
            printers[name](s)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--smoke", action="store_true", help="a few seconds in all, to prove the harness works")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--connections", type=int, default=64)
    part = ap.add_mutually_exclusive_group()
    part.add_argument("--scenarios-only", action="store_true", help="skip the main table, run only the scenarios")
    part.add_argument("--no-scenarios", action="store_true", help="run only the main table")
    ap.add_argument("--scenario", action="append", choices=SCENARIOS + OPTIONAL_SCENARIOS,
                    help="run this scenario (repeatable; default: all but the optional `transcode`)")
    ap.add_argument("--host-calls", action="store_true",
                    help="count the plugins' host calls per request (adds a hook to every host call: CPU figures are then not comparable)")
    ap.add_argument("--storm-period-ms", type=int, default=100,
                    help="reload storm: time between rewrites (the watcher's debounce is 100 ms)")
    ap.add_argument("--route-config", choices=sorted(CALLGRIND_ROUTES),
                    help="print a built-in plugin route's config as JSON and exit (for bench/callgrind.sh)")
    args = ap.parse_args()
    if args.route_config:
        print(route_config(args.route_config))
        return
    global COUNT_HOST_CALLS
    COUNT_HOST_CALLS = args.host_calls
    if args.smoke:
        args.rounds, args.duration = 1, 1

    tmp = tempfile.mkdtemp(prefix="weir-bench-")
    up_port = free_port()
    upstream = pinned(LOAD_CORE, [os.path.join(REL, "bench-upstream"), f"127.0.0.1:{up_port}"])
    up = f"127.0.0.1:{up_port}"
    summary, ratios, rate, scenarios = None, None, None, None
    idp = None
    try:
        wait_http(f"http://{up}/")
        idp = start_idp(tmp)
        if not args.scenarios_only:
            summary, rate = run_table(args, tmp, up)
            ratios = table_ratios(summary)
        if not args.no_scenarios:
            scenarios = run_scenarios(args, tmp, up, summary["weir-empty"]["rps"] if summary else None)
    finally:
        for proc in (upstream, idp):
            if proc:
                proc.terminate()
                proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)

    result = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}",
        "command": "bench/run.sh " + " ".join(sys.argv[1:]),
        "rounds": args.rounds, "duration_s": args.duration, "connections": args.connections,
    }
    if summary is not None:
        result.update(targets=summary, ratios=ratios)
    if scenarios is not None:
        result["scenarios"] = scenarios
    os.makedirs(os.path.join(ROOT, "bench", "results"), exist_ok=True)
    # A partial run (development) must not replace a complete run's file.
    partial = args.scenarios_only or args.no_scenarios or bool(args.scenario)
    name = ("smoke" if args.smoke else "latest") + ("-partial" if partial else "") + ".json"
    json.dump(result, open(os.path.join(ROOT, "bench", "results", name), "w"), indent=2)

    print(f"\n{result['date']} · {result['machine']} · `{result['command']}`")
    if summary is not None:
        print_table(args, summary, ratios, rate)
    if scenarios is not None:
        print_scenarios(scenarios)
    failed = [n for n, s in (scenarios or {}).items() if "error" in s]
    if failed:
        print(f"\nscenarios that could not run: {', '.join(failed)}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
