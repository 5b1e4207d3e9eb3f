#!/usr/bin/env python3
"""Orchestrates bench/run.sh: starts the upstream, nginx and weir variants
pinned to cores, drives them with wrk (closed loop, throughput) and
`openloop` (open loop at a fixed rate, latency corrected for coordinated
omission), reads CPU time and peak RSS from /proc, and reports medians over
rounds run in alternating order."""

import argparse, json, os, re, shutil, signal, socket, statistics, subprocess, sys, tempfile, time, platform
from datetime import datetime, timezone

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REL = os.path.join(ROOT, "target", "release")
WASM = os.path.join(ROOT, "target", "wasm32-wasip2", "release")
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


def children(pid):
    try:
        out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
        return [int(x) for x in out.split()]
    except FileNotFoundError:
        return []


def pinned(core, cmd, **kw):
    return subprocess.Popen(["taskset", "-c", core] + cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kw)


def wrk(url, duration, conns, headers=()):
    cmd = ["taskset", "-c", LOAD_CORE, "wrk", "-t1", f"-c{conns}", f"-d{duration}s", "--latency"]
    for h in headers:
        cmd += ["-H", h]
    cmd.append(url)
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


def openloop(url, rate, seconds, headers=()):
    cmd = ["taskset", "-c", LOAD_CORE, os.path.join(REL, "openloop"), url, str(int(rate)), str(seconds), "32"]
    for h in headers:
        cmd += ["-H", h]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


class Target:
    """A proxy (or the bare upstream) under test."""

    def __init__(self, name, start, headers=()):
        self.name, self._start, self.headers = name, start, list(headers)
        self.proc, self.url, self.pids = None, None, []

    def start(self):
        self.proc, self.url, self.pids = self._start()
        wait_http(self.url, headers=self.headers)

    def stop(self):
        if self.proc:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.proc = None


def weir_target(name, tmp, upstream, chain_config, headers=()):
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
        p = pinned(PROXY_CORE, [os.path.join(REL, "weir"), "run", "--workers", "1", "--config", os.path.join(d, "gateway.toml")],
                   env={**os.environ, "WEIR_LOG": "warn"})
        return p, f"http://127.0.0.1:{port}/bench", [p.pid]
    return Target(name, start, headers)


def nginx_target(tmp, upstream):
    def start():
        d = tempfile.mkdtemp(dir=tmp)
        port = free_port()
        conf = os.path.join(d, "nginx.conf")
        open(conf, "w").write(f"""worker_processes 1;
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
        p = pinned(PROXY_CORE, ["nginx", "-c", conf, "-p", d])
        url = f"http://127.0.0.1:{port}/bench"
        wait_http(url)
        return p, url, [p.pid] + children(p.pid)
    return Target("nginx", start)


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
        before = cpu_ticks(pids)
        r = wrk(t.url, duration, conns, t.headers)
        after = cpu_ticks(pids)
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


def builtin_targets(tmp, up):
    """weir with each built-in plugin alone, and with the mission chain
    auth (ES256, verified-token cache) → rate limit → anomaly → transform."""
    claims = {"sub": "bench-client", "exp": int(time.time()) + 86400}
    es_pub = open(os.path.join(KEYS, "ec256.pub.pem")).read()
    hs = [f"Authorization: Bearer {jwt('HS256', claims)}"]
    es = [f"Authorization: Bearer {jwt('ES256', claims)}"]
    auth_hs = f'[plugins.auth]\nmodule = "auth.wasm"\n[plugins.auth.config.jwt]\nkeys = [{{ secret = "{HS_SECRET}" }}]\n'
    auth_es = f'[plugins.auth]\nmodule = "auth.wasm"\n[plugins.auth.config.jwt]\nkeys = [{{ pem = """\n{es_pub}""" }}]\n'
    limit = ('[plugins.limit]\nmodule = "rate_limit.wasm"\n'
             'config = { key = "header:x-auth-sub", missing = "ip", limits = [{ requests = 1000000000, window = "1s" }] }\n')
    anomaly = '[plugins.anomaly]\nmodule = "anomaly.wasm"\nconfig = { key = "header:x-auth-sub", action = "flag" }\n'
    shape = ('[plugins.shape]\nmodule = "transform.wasm"\n'
             '[plugins.shape.config.request.headers]\nset = { "x-client" = "{header.x-auth-sub}" }\n'
             '[plugins.shape.config.response.headers]\nadd = { "x-served-by" = "weir" }\n')
    return [
        weir_target("weir-auth-hs256", tmp, up, plugin_route([auth_hs], ["auth"]), hs),
        weir_target("weir-auth-es256", tmp, up, plugin_route([auth_es], ["auth"]), es),
        weir_target("weir-rate-limit", tmp, up, plugin_route([limit], ["limit"])),
        weir_target("weir-anomaly", tmp, up, plugin_route([anomaly], ["anomaly"])),
        weir_target("weir-transform", tmp, up, plugin_route([shape], ["shape"])),
        weir_target("weir-mission", tmp, up,
                    plugin_route([auth_es, limit, anomaly, shape], ["auth", "limit", "anomaly", "shape"]), es),
    ]


def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--smoke", action="store_true", help="a few seconds in all, to prove the harness works")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--connections", type=int, default=64)
    args = ap.parse_args()
    if args.smoke:
        args.rounds, args.duration = 1, 1

    tmp = tempfile.mkdtemp(prefix="weir-bench-")
    up_port = free_port()
    upstream = pinned(LOAD_CORE, [os.path.join(REL, "bench-upstream"), f"127.0.0.1:{up_port}"])
    up = f"127.0.0.1:{up_port}"
    try:
        wait_http(f"http://{up}/")
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
            summary[name] = {k: med([r.get(k) for r in runs]) for k in ("rps", "p50_us", "p99_us", "cpu_us_per_req", "peak_rss_mib", "errors")}

        rate = 0.5 * summary["nginx"]["rps"]
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
    finally:
        upstream.terminate()
        shutil.rmtree(tmp, ignore_errors=True)

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
    for name in ("weir-auth-hs256", "weir-auth-es256", "weir-rate-limit", "weir-anomaly", "weir-transform", "weir-mission"):
        ratios[f"{name} added cpu (us)"] = summary[name]["cpu_us_per_req"] - empty["cpu_us_per_req"]
    result = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}",
        "command": "bench/run.sh " + " ".join(sys.argv[1:]),
        "rounds": args.rounds, "duration_s": args.duration, "connections": args.connections,
        "targets": summary, "ratios": ratios,
    }
    os.makedirs(os.path.join(ROOT, "bench", "results"), exist_ok=True)
    name = "smoke.json" if args.smoke else "latest.json"
    json.dump(result, open(os.path.join(ROOT, "bench", "results", name), "w"), indent=2)

    def f(v, nd=0):
        return "—" if v is None else f"{v:,.{nd}f}"
    print(f"\n{result['date']} · {result['machine']} · `{result['command']}`")
    print(f"closed loop: wrk -t1 -c{args.connections} {args.duration}s × {args.rounds} rounds (medians); "
          f"open loop: {f(rate)} req/s (50% of nginx max), latency from due time\n")
    print("| target | req/s | p50 µs | p99 µs | CPU µs/req | peak RSS MiB | open p50 µs | open p99 µs | errors |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, s in summary.items():
        print(f"| {name} | {f(s['rps'])} | {f(s['p50_us'])} | {f(s['p99_us'])} | {f(s['cpu_us_per_req'], 1)} | "
              f"{f(s['peak_rss_mib'], 1)} | {f(s['open_p50_us'])} | {f(s['open_p99_us'])} | {f((s['errors'] or 0) + (s['open_errors'] or 0))} |")
    print("\n| ratio | value |\n|---|---:|")
    for k, v in ratios.items():
        print(f"| {k} | {v:.2f} |")


if __name__ == "__main__":
    main()
