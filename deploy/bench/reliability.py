#!/usr/bin/env python3
"""Driver of the reliability scorecard (deploy/bench/reliability.sh runs it).

One pod sandbox (deploy/local/pod-sandbox.sh) with vmpod as PID 1 and the
test guest, plus a namespace on the pod's bridge (a second "guest" that
opens thousands of egress connections), stand-ins for sidecars in the pod
and for the metadata service in the cluster. Each check adds one row:
test | result | figure | pass/fail. The helpers that hold many sockets run
as subprocesses of this file in the namespace they need (`helper ...`).

Standard library only (python3 3.11).
"""

import argparse
import asyncio
import json
import os
import random
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse

POD_IP = "10.89.0.2"
CLUSTER_IP = "10.89.0.1"
GATEWAY = "10.0.1.1"
GUEST_IP = "10.0.1.2"
# The namespace on the bridge: a second guest, as far as the firewall knows.
BRIDGED_IP = "10.0.1.50"
METADATA_IP = "169.254.169.254"
ECHO_PORT = 7000
HEALTH_PORT = 8181
INGRESS_PORT = 9080
# Sidecar stand-ins listening on every pod address: one the config opens to
# the guest (network.guest_access) and one it does not, and a UDP one.
LISTED_PORT = 15021
UNLISTED_PORT = 15000
UDP_SIDECAR_PORT = 15053
KEEPALIVE = (3, 1, 3)  # time, interval, probes (s, s, n)
NOFILE_WANTED = 40000
# vmpod starts with the caller's soft limit and raises it itself (issue 16).
NOFILE_SOFT_AT_START = resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def log(msg):
    print(f"reliability: {msg}", file=sys.stderr, flush=True)


def sh(argv, check=True, timeout=60, **kw):
    r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({r.returncode}): {r.stdout}{r.stderr}")
    return r


def raise_nofile(n=NOFILE_WANTED):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max(hard, n)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def pct(values, p):
    if not values:
        return float("nan")
    v = sorted(values)
    return v[min(len(v) - 1, int(round(p / 100 * (len(v) - 1))))]


# ---------------------------------------------------------------- helpers
# Each runs in a namespace (`ip netns exec NS python3 reliability.py helper
# KIND ...`) and talks JSON lines on stdin/stdout.


async def helper_echo(bind, port):
    raise_nofile()

    async def serve(r, w):
        try:
            while data := await r.read(65536):
                w.write(data)
                await w.drain()
        except OSError:
            pass
        finally:
            w.close()

    server = await asyncio.start_server(serve, bind, port, backlog=4096)
    print(json.dumps({"listening": port}), flush=True)
    async with server:
        await server.serve_forever()


async def helper_udp_echo(bind, port):
    loop = asyncio.get_running_loop()

    class P(asyncio.DatagramProtocol):
        def connection_made(self, t):
            self.t = t

        def datagram_received(self, data, addr):
            self.t.sendto(data, addr)

    await loop.create_datagram_endpoint(P, local_addr=(bind, port))
    print(json.dumps({"listening": port}), flush=True)
    await asyncio.Event().wait()


async def exchange(r, w, payload, timeout):
    w.write(payload)
    await w.drain()
    got = await asyncio.wait_for(r.readexactly(len(payload)), timeout)
    return got == payload


async def helper_client(host, port):
    """Holds connections through the egress relay; commands on stdin."""
    raise_nofile()
    held = []
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    def reply(obj):
        print(json.dumps(obj), flush=True)

    async def open_one(sem, failures):
        async with sem:
            try:
                r, w = await asyncio.wait_for(asyncio.open_connection(host, port), 20)
                if await exchange(r, w, b"hi\n", 20):
                    held.append((r, w))
                    return
                w.close()
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError) as e:
                failures.append(type(e).__name__ + ": " + str(e))

    async def storm_one(sem, out):
        async with sem:
            t = time.monotonic()
            try:
                r, w = await asyncio.wait_for(asyncio.open_connection(host, port), 10)
            except (OSError, asyncio.TimeoutError) as e:
                out.append(("refused", time.monotonic() - t, type(e).__name__))
                return
            try:
                w.write(b"storm\n")
                await w.drain()
                data = await asyncio.wait_for(r.read(6), 10)
                kind = "relayed" if data else "closed"
            except (ConnectionResetError, BrokenPipeError):
                kind = "refused"
            except asyncio.TimeoutError:
                kind = "hung"
            except OSError as e:
                kind = "refused" if e.errno in (104, 32) else f"error {e}"
            out.append((kind, time.monotonic() - t, ""))
            w.close()

    while line := await reader.readline():
        cmd = line.decode().split()
        if not cmd:
            continue
        if cmd[0] == "open":
            n, failures = int(cmd[1]), []
            sem = asyncio.Semaphore(256)
            t = time.monotonic()
            await asyncio.gather(*(open_one(sem, failures) for _ in range(n)))
            reply({"held": len(held), "failed": len(failures), "why": failures[:3],
                   "secs": time.monotonic() - t})
        elif cmd[0] == "storm":
            n, out = int(cmd[1]), []
            sem = asyncio.Semaphore(512)
            await asyncio.gather(*(storm_one(sem, out) for _ in range(n)))
            kinds = {}
            for k, _, _ in out:
                kinds[k] = kinds.get(k, 0) + 1
            lat = [d for k, d, _ in out if k == "refused"]
            reply({"kinds": kinds, "p50": pct(lat, 50), "p99": pct(lat, 99),
                   "max": max(lat) if lat else None})
        elif cmd[0] == "check":
            k = min(int(cmd[1]), len(held))
            ok = 0
            for r, w in random.sample(held, k):
                try:
                    ok += await exchange(r, w, b"still here\n", 10)
                except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError):
                    pass
            reply({"checked": k, "ok": ok})
        elif cmd[0] == "close":
            for _, w in held:
                w.close()
            n = len(held)
            held.clear()
            await asyncio.sleep(0.5)
            reply({"closed": n})
        elif cmd[0] == "abandon":
            # The peer vanishes: its sockets stay open here, every packet is
            # dropped by the caller's nft rules, so no FIN and no RST leave.
            reply({"abandoned": len(held)})
        elif cmd[0] == "quit":
            break


async def helper_slowloris(duration, per_target, targets):
    """Connections that send one byte a second and reconnect when cut."""
    raise_nofile()
    stop = time.monotonic() + duration
    stats = {t: {"opened": 0, "cut": 0, "failed": 0} for t in targets}

    async def one(target):
        host, port = target.rsplit(":", 1)
        s = stats[target]
        while time.monotonic() < stop:
            try:
                r, w = await asyncio.wait_for(asyncio.open_connection(host, int(port)), 5)
            except (OSError, asyncio.TimeoutError):
                s["failed"] += 1
                await asyncio.sleep(0.5)
                continue
            s["opened"] += 1
            try:
                for b in b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-a: " + b"a" * 100000:
                    if time.monotonic() >= stop:
                        break
                    w.write(bytes([b]))
                    await w.drain()
                    try:
                        if await asyncio.wait_for(r.read(1), 1.0) == b"":
                            s["cut"] += 1
                            break
                    except asyncio.TimeoutError:
                        pass
            except OSError:
                s["cut"] += 1
            w.close()
            await asyncio.sleep(0.2)

    await asyncio.gather(*(one(t) for t in targets for _ in range(per_target)))
    print(json.dumps(stats), flush=True)


def helper_main(args):
    kind, rest = args[0], args[1:]
    if kind == "echo":
        asyncio.run(helper_echo(rest[0], int(rest[1])))
    elif kind == "udp-echo":
        asyncio.run(helper_udp_echo(rest[0], int(rest[1])))
    elif kind == "client":
        asyncio.run(helper_client(rest[0], int(rest[1])))
    elif kind == "slowloris":
        asyncio.run(helper_slowloris(float(rest[0]), int(rest[1]), rest[2:]))
    elif kind == "udp-probe":
        print(json.dumps(udp_probe(rest[0], int(rest[1]), rest[2] if len(rest) > 2 else "")))
    else:
        sys.exit(f"unknown helper {kind}")


def udp_probe(ip, port, kind):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(3)
    s.connect((ip, port))
    if kind == "dns":
        payload = bytes.fromhex("abcd01000001000000000000") + b"\x07example\x03com\x00\x00\x01\x00\x01"
    else:
        payload = b"probe"
    try:
        s.send(payload)
        s.recv(512)
        return "answered"
    except ConnectionRefusedError:
        return "refused (ICMP port unreachable)"
    except socket.timeout:
        return "no answer"
    except OSError as e:
        if e.errno == 113:
            return "refused (ICMP host unreachable / prohibited)"
        return f"error {e}"


# ---------------------------------------------------------------- the pod


class Pod:
    def __init__(self, repo, vmpod, logs, config_text):
        self.repo, self.vmpod, self.logs = repo, vmpod, logs
        self.sandbox = os.path.join(repo, "deploy/local/pod-sandbox.sh")
        self.name = f"rel{os.getpid() % 100000}"
        self.pod, self.cl, self.br = f"{self.name}-pod", f"{self.name}-cl", f"{self.name}-br"
        self.state = tempfile.mkdtemp(prefix="vmpod-reliability-")
        os.chmod(self.state, 0o755)
        self.config = os.path.join(self.state, "vm.yaml")
        with open(self.config, "w") as f:
            f.write(config_text)
        shutil.copy(self.config, os.path.join(logs, "vm.yaml"))
        self.log_path = os.path.join(logs, "vmpod.log")
        self.proc = None
        self.helpers = []

    def create(self):
        sh([self.sandbox, "create", self.name])

    def start(self):
        env = dict(os.environ, RUST_LOG="info")
        env.setdefault("VMPOD_GUEST_IMAGES", os.path.join(self.repo, "target/test-guest"))
        self.logf = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [self.sandbox, "exec", self.name, os.path.join(self.state, "root"),
             self.vmpod, "run", "--config", self.config],
            stdin=subprocess.DEVNULL, stdout=self.logf, stderr=subprocess.STDOUT, env=env,
            preexec_fn=lambda: resource.setrlimit(
                resource.RLIMIT_NOFILE,
                (NOFILE_SOFT_AT_START, resource.getrlimit(resource.RLIMIT_NOFILE)[1])))

    def pid1(self):
        if not self.proc:
            return None
        p = self.proc.pid
        try:
            kids = open(f"/proc/{p}/task/{p}/children").read().split()
        except OSError:
            return None
        return int(kids[0]) if kids else None

    def descendants(self):
        root = self.pid1()
        out, todo = [], [root] if root else []
        while todo:
            pid = todo.pop()
            try:
                tasks = os.listdir(f"/proc/{pid}/task")
            except OSError:
                continue
            for t in tasks:
                try:
                    kids = [int(k) for k in open(f"/proc/{pid}/task/{t}/children").read().split()]
                except OSError:
                    continue
                out += kids
                todo += kids
        return out

    def find(self, comm_prefix):
        for pid in self.descendants():
            try:
                if open(f"/proc/{pid}/comm").read().strip().startswith(comm_prefix):
                    return pid
            except OSError:
                pass
        return None

    def text(self):
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def log_size(self):
        return os.path.getsize(self.log_path)

    def logged_since(self, offset, needle):
        """Whether vmpod logged `needle` after byte `offset` of its log."""
        with open(self.log_path, "rb") as f:
            f.seek(offset)
            return needle.encode() in f.read()

    def netns(self, ns, argv, **kw):
        return sh(["ip", "netns", "exec", ns] + argv, **kw)

    def in_pod(self, argv, **kw):
        return self.netns(self.pod, argv, **kw)

    def spawn(self, ns, argv, **kw):
        p = subprocess.Popen(["ip", "netns", "exec", ns] + argv, **kw)
        self.helpers.append(p)
        return p

    def helper(self, ns, *args, stdin=None):
        p = self.spawn(ns, [sys.executable, os.path.abspath(__file__), "helper", *map(str, args)],
                       stdin=stdin, stdout=subprocess.PIPE, text=True, bufsize=1)
        return p

    def curl(self, ns, url, timeout=3):
        r = self.netns(ns, ["curl", "-s", "-m", str(timeout), "-o", "/dev/null", "-w", "%{http_code}", url],
                       check=False, timeout=timeout + 5)
        return r.stdout.strip()

    def ingress_ok(self):
        return self.curl(self.cl, f"http://{POD_IP}:{INGRESS_PORT}/") == "200"

    def ready(self):
        return self.curl(self.cl, f"http://{POD_IP}:{HEALTH_PORT}/readyz") == "200"

    def metrics(self):
        r = self.netns(self.cl, ["curl", "-s", "-m", "3", f"http://{POD_IP}:{HEALTH_PORT}/metrics"],
                       check=False, timeout=10)
        return r.stdout

    def metric(self, name, labels=""):
        total = 0.0
        for line in self.metrics().splitlines():
            if line.startswith(name) and (not labels or all(l in line for l in labels.split(","))):
                m = re.match(r"^([A-Za-z_:][A-Za-z0-9_:]*)(\{[^}]*\})? (\S+)", line)
                if m and m.group(1) == name:
                    total += float(m.group(3))
        return total

    def vmpod_pid(self):
        """The vmpod process that holds the listeners: PID 1 keeps only the
        reaping to itself and runs the supervisor as its child."""
        root = self.pid1()
        for pid in self.descendants():
            try:
                if open(f"/proc/{pid}/comm").read().strip() == "vmpod":
                    return pid
            except OSError:
                pass
        return root

    def fds_rss(self):
        pid = self.vmpod_pid()
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        rss = 0
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) // 1024
        return fds, rss

    def guest_fetch(self, url, timeout=5):
        """The guest itself fetches url (its /cgi-bin/fetch): (status, text)."""
        q = urllib.parse.quote(url, safe="")
        r = self.netns(self.pod, ["curl", "-s", "-m", str(timeout + 10), "-w", "\n%{http_code}",
                                  f"http://{GUEST_IP}:{INGRESS_PORT}/cgi-bin/fetch?url={q}&timeout={timeout}"],
                       check=False, timeout=timeout + 20)
        body, _, code = r.stdout.rpartition("\n")
        return code.strip(), body

    def bridged_ns(self):
        """A namespace on virbr0 at BRIDGED_IP, as a second guest would be."""
        sh(["ip", "netns", "add", self.br])
        mtu = self.in_pod(["cat", "/sys/class/net/virbr0/mtu"]).stdout.strip()
        self.in_pod(["ip", "link", "add", "relbr0", "mtu", mtu, "type", "veth", "peer", "name", "eth0",
                     "netns", self.br])
        self.in_pod(["ip", "link", "set", "relbr0", "master", "virbr0", "up"])
        b = ["ip", "-n", self.br]
        sh(b + ["link", "set", "lo", "up"])
        sh(b + ["link", "set", "eth0", "mtu", mtu, "up"])
        sh(b + ["addr", "add", f"{BRIDGED_IP}/24", "dev", "eth0"])
        sh(b + ["route", "add", "default", "via", GATEWAY])

    def teardown(self):
        for p in self.helpers:
            if p.poll() is None:
                p.kill()
        for p in self.helpers:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                pass
        if self.proc and self.proc.poll() is None:
            # unshare --kill-child takes the whole pid namespace down with it.
            self.proc.kill()
            self.proc.wait()
        sh([self.sandbox, "destroy", self.name], check=False)
        sh(["ip", "netns", "del", self.br], check=False)
        shutil.rmtree(self.state, ignore_errors=True)


def wait_for(what, timeout, check, every=0.1):
    deadline = time.monotonic() + timeout
    while True:
        v = check()
        if v:
            return v
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


# ---------------------------------------------------------------- the card


class Card:
    def __init__(self):
        self.rows = []

    def add(self, test, result, figure, ok):
        self.rows.append((test, result, figure, bool(ok)))
        log(f"{'PASS' if ok else 'FAIL'} {test}: {result} ({figure})")

    def run(self, test, fn):
        """Runs a check; an exception is a failed row, not the end of the run."""
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - every failure becomes a row
            self.add(test, f"error: {str(e).splitlines()[0][:160] if str(e) else type(e).__name__}",
                     "-", False)

    def markdown(self, title):
        out = [title, "", "| test | result | figure | pass/fail |", "| --- | --- | --- | --- |"]
        esc = lambda s: str(s).replace("|", "\\|").replace("\n", " ")
        for t, r, f, ok in self.rows:
            out.append(f"| {esc(t)} | {esc(r)} | {esc(f)} | {'pass' if ok else '**FAIL**'} |")
        passed = sum(ok for *_, ok in self.rows)
        out += ["", f"{passed}/{len(self.rows)} lines pass."]
        return "\n".join(out)


def relay_capacity():
    """Connections the egress relay can hold under the hard fd limit: 10,000
    (its default max_connections) when two fds each fit beside vmpod's own;
    fewer where the hard limit cannot be raised."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard == resource.RLIM_INFINITY:
        return 10000
    return min(10000, (hard - 400) // 2)


def scorecard_config(repo, capacity):
    text = open(os.path.join(repo, "domains/example.yaml")).read()
    t, i, p = KEEPALIVE
    limit = f"    max_connections: {capacity}\n" if capacity < 10000 else ""
    edits = [
        ("  mtu: auto\n", f"  mtu: auto\n  guest_access: [{LISTED_PORT}]\n"),
        ("    listen_port: 9401\n",
         f"    listen_port: 9401\n    keepalive: {{time: {t}s, interval: {i}s, probes: {p}}}\n{limit}"),
        # The kills below are repeated on purpose: the default (give up
        # after 5 deaths in 5 minutes) would end the run, by design.
        ("  shutdown_grace: 30s\n", "  shutdown_grace: 30s\n  daemon_max_restarts: 40\n"),
    ]
    for old, new in edits:
        if old not in text:
            raise SystemExit(f"domains/example.yaml has no {old!r} to edit")
        text = text.replace(old, new, 1)
    return text


# ---------------------------------------------------------------- checks


def check_boot(card, pod):
    t = time.monotonic()
    wait_for("/readyz 200", 240, pod.ready, every=0.5)
    wait_for("ingress", 60, pod.ingress_ok, every=0.5)
    card.add("boot: /readyz 200 and ingress from the cluster", "ready",
             f"{time.monotonic() - t:.1f} s from start", True)


def guest_probe(pod, ip, port):
    code, body = pod.guest_fetch(f"http://{ip}:{port}/")
    if code == "200":
        return "answered"
    low = body.lower()
    if "refused" in low:
        return "refused"
    if "timed out" in low:
        return "no answer"
    if code == "502":
        # Connected, but no HTTP came back (e.g. the DNS forwarder's TCP port).
        return "connected"
    return f"fetch failed ({code})"


def pod_listeners(pod, proto):
    """(address, port) of every socket listening in the pod, loopback excluded."""
    out = pod.in_pod(["ss", "-Hn" + ("tl" if proto == "tcp" else "ul")]).stdout
    found = set()
    for line in out.splitlines():
        f = line.split()
        local = f[3] if proto == "tcp" else f[3]
        addr, _, port = local.rpartition(":")
        addr = addr.strip("[]").split("%")[0]
        if addr.startswith("127.") or addr == "::1" or not port.isdigit():
            continue
        found.add((addr, int(port)))
    return sorted(found, key=lambda a: (a[1], a[0]))


def check_guest_matrix(card, pod):
    tcp = pod_listeners(pod, "tcp")
    ports = sorted({p for _, p in tcp})
    for ip in (GATEWAY, POD_IP):
        for port in ports:
            if port == LISTED_PORT:
                want = ("answered",)
                why = "in network.guest_access"
            elif port == 53 and ip == GATEWAY:
                want = ("connected", "answered", "no answer")
                why = "vmpod's DNS forwarder: not refused"
            else:
                want = ("refused",)
                why = "pod-local, not in guest_access"
            got = guest_probe(pod, ip, port)
            card.add(f"guest → {ip}:{port}/tcp", got, f"expected {' or '.join(want)} ({why})",
                     got in want)
    # The metadata stand-in answers the pod itself; the guest is refused.
    ctl = pod.curl(pod.pod, f"http://{METADATA_IP}/", 3)
    got = guest_probe(pod, METADATA_IP, 80)
    card.add(f"guest → {METADATA_IP}:80/tcp (metadata)", got,
             f"expected refused (network.egress.deny); the pod itself gets HTTP {ctl}",
             got == "refused" and ctl == "200")
    udp = pod_listeners(pod, "udp")
    for ip in (GATEWAY, POD_IP):
        for port in sorted({p for _, p in udp}):
            if port == 53 and ip == GATEWAY:
                kind, want, why = "dns", ("answered", "no answer"), "vmpod's DNS forwarder: not refused"
            elif port == 67 and ip == GATEWAY:
                kind, want, why = "", ("answered", "no answer"), "vmpod's DHCP server: not refused"
            else:
                kind, want, why = "", ("refused (ICMP port unreachable)",), "pod-local, not in guest_access"
            r = pod.netns(pod.br, [sys.executable, os.path.abspath(__file__), "helper", "udp-probe",
                                   ip, str(port), kind], check=False, timeout=20)
            got = json.loads(r.stdout) if r.stdout.strip() else f"error {r.stderr.strip()[:80]}"
            card.add(f"bridged guest → {ip}:{port}/udp", got, f"expected {' or '.join(want)} ({why})",
                     got in want)
    r = pod.netns(pod.br, [sys.executable, os.path.abspath(__file__), "helper", "udp-probe",
                           METADATA_IP, "53", "dns"], check=False, timeout=20)
    got = json.loads(r.stdout) if r.stdout.strip() else "error"
    card.add(f"bridged guest → {METADATA_IP}:53/udp (metadata)", got,
             "expected refused (ICMP prohibited)", got.startswith("refused (ICMP host"))


def check_slowloris(card, pod, duration, per_target):
    listening = pod.in_pod(["ss", "-Htlnp"]).stdout
    vmpod_pid = pod.vmpod_pid()
    targets_cl, targets_pod = [], []
    for line in listening.splitlines():
        if f"pid={vmpod_pid}," not in line:
            continue
        local = line.split()[3]
        addr, _, port = local.rpartition(":")
        addr = addr.strip("[]")
        if addr in ("0.0.0.0", "*", "::", POD_IP):
            targets_cl.append(f"{POD_IP}:{port}")
        elif addr.startswith("127.") or ":" in addr:
            continue
        else:
            targets_pod.append(f"{addr}:{port}")
    targets_cl, targets_pod = sorted(set(targets_cl)), sorted(set(targets_pod))
    attackers = []
    if targets_cl:
        attackers.append(pod.helper(pod.cl, "slowloris", duration, per_target, *targets_cl))
    if targets_pod:
        attackers.append(pod.helper(pod.pod, "slowloris", duration, per_target, *targets_pod))
    time.sleep(2)  # the connections are open
    lat, failed, n = [], 0, 0
    end = time.monotonic() + duration - 3
    while time.monotonic() < end:
        for path in ("healthz", "readyz"):
            t = time.monotonic()
            code = pod.curl(pod.cl, f"http://{POD_IP}:{HEALTH_PORT}/{path}", 1)
            n += 1
            if code == "200":
                lat.append(time.monotonic() - t)
            else:
                failed += 1
        time.sleep(0.3)
    stats = {}
    for a in attackers:
        out, _ = a.communicate(timeout=duration + 60)
        stats.update(json.loads(out))
    opened = sum(s["opened"] for s in stats.values())
    cut = sum(s["cut"] for s in stats.values())
    ports = ", ".join(t.rsplit(":", 1)[1] + ("(gw)" if t.startswith(GATEWAY) else "") for t in sorted(stats))
    card.add(f"slowloris: {per_target} per port on every vmpod port ({ports}) for {duration:.0f} s",
             f"{n - failed}/{n} probes 200",
             f"{opened} attack connections opened, {cut} cut by vmpod; probe p50 {pct(lat, 50)*1000:.0f} ms, "
             f"max {max(lat, default=0)*1000:.0f} ms (curl incl.)",
             failed == 0 and n > 0 and opened > 0 and bool(stats))


class Client:
    def __init__(self, pod):
        self.p = pod.helper(pod.br, "client", CLUSTER_IP, ECHO_PORT, stdin=subprocess.PIPE)

    def cmd(self, line, timeout=600):
        self.p.stdin.write(line + "\n")
        self.p.stdin.flush()
        # A reply per command; a dead helper is an error, not a hang.
        import select
        r, _, _ = select.select([self.p.stdout], [], [], timeout)
        if not r:
            raise TimeoutError(f"client: no reply to {line!r} in {timeout} s")
        out = self.p.stdout.readline()
        if not out:
            raise RuntimeError(f"client helper died on {line!r}")
        return json.loads(out)

    def quit(self):
        try:
            self.p.stdin.write("quit\n")
            self.p.stdin.flush()
            self.p.wait(10)
        except (OSError, subprocess.TimeoutExpired):
            self.p.kill()


def active(pod):
    return pod.metric("vmpod_relay_connections_active", 'relay="egress"')


def settle(pod, baseline_fds, timeout):
    """Waits until vmpod's fds are back to baseline; the fds, or None."""
    try:
        return wait_for("fds back to baseline", timeout,
                        lambda: (pod.fds_rss()[0] <= baseline_fds + 2) and pod.fds_rss(), every=0.5)
    except TimeoutError:
        return None


def quiet_fds(pod, timeout=30):
    """vmpod's fd count once it stops moving (an earlier check's connections
    may still be closing): two readings 2 s apart that agree."""
    deadline = time.monotonic() + timeout
    last = pod.fds_rss()[0]
    while time.monotonic() < deadline:
        time.sleep(2)
        now = pod.fds_rss()[0]
        if now == last:
            break
        last = now
    return pod.fds_rss()


def check_connections(card, pod, n, storm):
    why = "" if n == 10000 else (f" (max_connections {n}: 10,000 need 20,000 fds, over the hard "
                                 f"limit {resource.getrlimit(resource.RLIMIT_NOFILE)[1]})")
    fds0, rss0 = quiet_fds(pod)
    limit = int(open(f"/proc/{pod.vmpod_pid()}/limits").read().split("Max open files")[1].split()[0])
    c = Client(pod)
    try:
        r = c.cmd(f"open {n}")
        fds1, rss1 = pod.fds_rss()
        act = active(pod)
        card.add(f"{n:,} concurrent relayed connections (egress, bridged guest → cluster echo){why}",
                 f"{r['held']:,} held, {r['failed']} failed" + (f" ({r['why'][0]})" if r["why"] else ""),
                 f"opened in {r['secs']:.1f} s; vmpod fds {fds0} → {fds1} (soft limit {limit}), "
                 f"RSS {rss0} → {rss1} MiB, active {act:.0f}",
                 r["held"] == n and act >= n)
        refused0 = pod.metric("vmpod_relay_connections_refused_total", 'relay="egress"')
        t = time.monotonic()
        s = c.cmd(f"storm {storm}")
        refused = pod.metric("vmpod_relay_connections_refused_total", 'relay="egress"') - refused0
        chk = c.cmd("check 500")
        kinds = s["kinds"]
        card.add(f"storm: {storm:,} more connections past max_connections ({n:,})",
                 ", ".join(f"{v} {k}" for k, v in sorted(kinds.items())),
                 f"refusal latency p50 {s['p50']*1000:.1f} ms, p99 {s['p99']*1000:.1f} ms, max "
                 f"{(s['max'] or 0)*1000:.1f} ms; vmpod counted {refused:.0f} refused; storm took "
                 f"{time.monotonic() - t:.1f} s",
                 kinds.get("refused", 0) == storm and refused >= storm)
        card.add("storm: held connections keep working", f"{chk['ok']}/{chk['checked']} exchanged",
                 "500 random held connections, after the storm", chk["ok"] == chk["checked"] == min(500, n))
        fdsp, rssp = pod.fds_rss()
        c.cmd("close")
        t = time.monotonic()
        back = settle(pod, fds0, 60)
        time.sleep(2)
        fds2, rss2 = pod.fds_rss()
        act2 = active(pod)
        rss_ok = rss2 <= rss0 + 32
        card.add(f"{n:,} connections closed: fds and RSS back to baseline",
                 f"fds {fds2} (baseline {fds0}), RSS {rss2} MiB (baseline {rss0}, peak {max(rss1, rssp)})",
                 f"fds back in {time.monotonic() - t:.1f} s; active {act2:.0f}; bound: fds ≤ baseline + 2, "
                 f"RSS ≤ baseline + 32 MiB",
                 back is not None and fds2 <= fds0 + 2 and rss_ok and act2 == 0)
    finally:
        c.quit()


def check_keepalive(card, pod, n):
    t_, i_, p_ = KEEPALIVE
    fds0, _ = quiet_fds(pod)
    c = Client(pod)
    try:
        r = c.cmd(f"open {n}")
        if r["held"] != n:
            raise RuntimeError(f"only {r['held']} of {n} connections opened")
        fds1, _ = pod.fds_rss()
        # Every packet to and from the bridged namespace dropped: its peers
        # vanish without a FIN or a RST.
        rules = ("table inet vanish {\n"
                 " chain i { type filter hook input priority -300; policy drop; }\n"
                 " chain o { type filter hook output priority -300; policy drop; }\n}\n")
        sh(["ip", "netns", "exec", pod.br, "nft", "-f", "-"], input=rules)
        t = time.monotonic()
        c.cmd("abandon")
        bound = t_ + i_ * p_
        back = settle(pod, fds0, bound * 4 + 10)
        took = time.monotonic() - t
        act = active(pod)
        card.add(f"half-open: {n} peers vanish without a FIN (keepalive {t_}s/{i_}s×{p_})",
                 f"freed in {took:.1f} s" if back else f"not freed after {took:.0f} s",
                 f"vmpod fds {fds0} → {fds1} → {pod.fds_rss()[0]}; active {act:.0f}; kernel bound "
                 f"{bound} s, allowed {bound * 4 + 10} s (the idle timeout is 1 h)",
                 back is not None and act == 0)
    finally:
        sh(["ip", "netns", "exec", pod.br, "nft", "delete table inet vanish"], check=False)
        try:
            c.cmd("close", timeout=60)
        except (OSError, RuntimeError, TimeoutError):
            pass
        c.quit()


REMOVALS = [
    ("nft flush ruleset", ["nft", "flush", "ruleset"], "repaired table inet vmpod", "table"),
    ("ip rule flush", ["ip", "rule", "flush"], "repaired rule ", "rule"),
    ("bridge down", ["ip", "link", "set", "virbr0", "down"],
     "repaired bridge virbr0: found link down", "bridge"),
    ("bridge address removed", ["ip", "addr", "del", "10.0.1.1/24", "dev", "virbr0"],
     "repaired bridge virbr0: found address 10.0.1.1/24 missing", "bridge"),
    ("bridge MTU changed", ["ip", "link", "set", "virbr0", "mtu", "1280"],
     "repaired bridge virbr0: found MTU 1280", "bridge"),
    ("ip_forward=0", ["sysctl", "-qw", "net.ipv4.ip_forward=0"],
     "repaired sysctl net.ipv4.ip_forward", "sysctl"),
    ("route deleted", ["ip", "route", "flush", "table", "4000"], "repaired route ", "route"),
]


def tap(pod):
    out = pod.in_pod(["ip", "-o", "link", "show", "master", "virbr0"]).stdout
    for line in out.splitlines():
        name = line.split(": ")[1].split("@")[0]
        if name != "relbr0":
            return name
    return None


def check_removal(card, pod, what, argv, line, piece, restart=False):
    m0 = pod.metric("vmpod_repairs_total", f'piece="{piece}"')
    offset = pod.log_size()
    t = time.monotonic()
    pod.in_pod(argv)
    wait_for(f"`{line}`", 60, lambda: pod.logged_since(offset, line), every=0.02)
    repaired = time.monotonic() - t
    wait_for("ingress", 240 if restart else 60, pod.ingress_ok, every=0.2)
    reachable = time.monotonic() - t
    if restart:
        wait_for("/readyz 200", 240, pod.ready, every=0.5)
    m1 = pod.metric("vmpod_repairs_total", f'piece="{piece}"')
    card.add(f"removal: {what}", f"repaired in {repaired:.2f} s",
             f"`{line.strip()}…` logged, vmpod_repairs_total{{piece=\"{piece}\"}} +{m1 - m0:.0f}; "
             f"ingress again after {reachable:.2f} s", m1 > m0)


def check_tap(card, pod):
    old = tap(pod)
    check_removal(card, pod, f"tap deleted ({old})", ["ip", "link", "del", old],
                  f"repaired tap {old}: found the tap deleted", "tap", restart=True)


def check_kills(card, pod, reps):
    results = {"libvirtd": [], "virtlogd": [], "qemu": []}
    bad = {k: [] for k in results}
    for i in range(reps):
        for name in ("libvirtd", "virtlogd", "qemu"):
            comm = "qemu-system" if name == "qemu" else name
            old = pod.find(comm)
            qemu = pod.find("qemu-system")
            if old is None:
                bad[name].append(f"#{i + 1}: not running before the kill")
                continue
            t = time.monotonic()
            os.kill(old, signal.SIGKILL)
            try:
                new = wait_for(f"a new {name}", 120,
                               lambda: (p := pod.find(comm)) and p != old and p, every=0.1)
                wait_for("ingress", 240 if name == "qemu" else 60, pod.ingress_ok, every=0.2)
                if name == "qemu":
                    wait_for("/readyz 200", 120, pod.ready, every=0.5)
                else:
                    # The guest never stopped: the same qemu, and libvirt
                    # (through vmpod's restarted daemons) still sees it.
                    if pod.find("qemu-system") != qemu:
                        bad[name].append(f"#{i + 1}: qemu changed")
                    wait_for("virsh domstate running", 60, lambda: "running" in sh(
                        ["nsenter", "-t", str(pod.pid1()), "-m", "-p", "-n", "--", "virsh", "-c",
                         "qemu:///system", "domstate", "example"], check=False, timeout=30).stdout,
                        every=0.5)
                results[name].append(time.monotonic() - t)
            except TimeoutError as e:
                bad[name].append(f"#{i + 1}: {e}")
    for name, times in results.items():
        what = "guest restarted, ingress and /readyz back" if name == "qemu" else \
            "restarted; same qemu, domain running, ingress answers"
        card.add(f"kill -9 {name} ×{reps}", f"{len(times)}/{reps} recovered" +
                 (f"; {bad[name][0]}" if bad[name] else ""),
                 f"{what}: median {statistics.median(times):.1f} s, max {max(times):.1f} s" if times else what,
                 len(times) == reps and not bad[name])


def check_fuzz(card, repo, seconds, seed, logs):
    env = dict(os.environ, VMPOD_FUZZ_SECONDS=str(seconds), VMPOD_FUZZ_SEED=f"{seed:x}")
    t = time.monotonic()
    r = subprocess.run(["cargo", "test", "--quiet", "--lib", "fuzz", "--", "--nocapture",
                        "--test-threads", "2"], cwd=repo, env=env, capture_output=True, text=True,
                       timeout=seconds * 6 + 600)
    with open(os.path.join(logs, "fuzz.log"), "w") as f:
        f.write(r.stdout + r.stderr)
    out = r.stdout + r.stderr
    names = {"config": "config parser", "dhcp": "DHCP", "dhcpv6": "DHCPv6", "ra": "RA",
             "dns": "DNS messages", "resolv.conf": "resolv.conf"}
    # (cargo's --quiet progress dots may precede a line: no ^ anchor.)
    counts = dict(re.findall(r"\b(config|dhcpv6|dhcp|ra|dns|resolv\.conf) fuzz \(VMPOD_FUZZ_SEED=[0-9a-f]+\): (\d+)",
                             out))
    panics = out.count("panicked at")
    summary = re.findall(r"test result: .*", out)
    ok = r.returncode == 0 and panics == 0 and len(counts) == len(names)
    card.add(f"fuzz: config, DHCP, DHCPv6, RA, DNS, resolv.conf parsers ({seconds:g} s each)",
             f"{panics} panics" + ("" if r.returncode == 0 else f", cargo test exit {r.returncode}"),
             f"VMPOD_FUZZ_SEED={seed:x}; " + ", ".join(f"{names[k]} {int(v):,}" for k, v in counts.items())
             + f" inputs; {time.monotonic() - t:.0f} s" + (f"; {summary[-1]}" if summary else ""),
             ok)


# ---------------------------------------------------------------- main


class OutOfTime(BaseException):
    """SIGTERM from the watchdog: not an ordinary failure, ends the run."""


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "helper":
        return helper_main(sys.argv[2:])
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--vmpod", required=True)
    ap.add_argument("--repo", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--nofile", default="")
    a = ap.parse_args()
    logs = os.path.join(a.out, "reliability-logs")
    shutil.rmtree(logs, ignore_errors=True)
    os.makedirs(logs)
    raise_nofile()
    reps = 3 if a.quick else 10
    seed = int.from_bytes(os.urandom(8), "little")
    card = Card()
    started = time.time()
    load0 = open("/proc/loadavg").read().split()[:3]

    def on_term(*_):
        raise OutOfTime()

    signal.signal(signal.SIGTERM, on_term)
    capacity = relay_capacity()
    pod = Pod(a.repo, a.vmpod, logs, scorecard_config(a.repo, capacity))
    try:
        pod.create()
        sh(["ip", "-n", pod.cl, "addr", "add", f"{METADATA_IP}/32", "dev", "eth0"])
        www = os.path.join(pod.state, "www")
        os.makedirs(www)
        open(os.path.join(www, "index.html"), "w").write("stand-in\n")
        for ns, ip, port in ((pod.cl, METADATA_IP, 80), (pod.pod, "0.0.0.0", LISTED_PORT),
                             (pod.pod, "0.0.0.0", UNLISTED_PORT)):
            pod.spawn(ns, [sys.executable, "-m", "http.server", "--bind", ip, str(port), "--directory", www],
                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        pod.helper(pod.pod, "udp-echo", "0.0.0.0", UDP_SIDECAR_PORT)
        echo = pod.helper(pod.cl, "echo", CLUSTER_IP, ECHO_PORT)
        echo.stdout.readline()
        pod.start()
        card.run("boot", lambda: check_boot(card, pod))
        if not card.rows[-1][3]:
            raise RuntimeError("vmpod did not come up; see reliability-logs/vmpod.log")
        pod.bridged_ns()
        card.run("guest-as-attacker matrix", lambda: check_guest_matrix(card, pod))
        card.run("slowloris", lambda: check_slowloris(card, pod, 15 if a.quick else 30, 128 if a.quick else 256))
        card.run("10,000 connections", lambda: check_connections(card, pod, capacity, 1000 if a.quick else 2000))
        card.run("half-open peers", lambda: check_keepalive(card, pod, 200 if a.quick else 500))
        for what, argv, line, piece in REMOVALS:
            card.run(f"removal: {what}", lambda: check_removal(card, pod, what, argv, line, piece))
        card.run("removal: tap deleted", lambda: check_tap(card, pod))
        card.run("kills", lambda: check_kills(card, pod, reps))
    except OutOfTime:
        card.add("watchdog", "TOTAL_TIMEOUT reached", "the checks after this line did not run", False)
    except Exception as e:  # noqa: BLE001
        card.add("scorecard", f"aborted: {e}", "see reliability-logs/", False)
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        pod.teardown()
    if not any(t == "watchdog" for t, *_ in card.rows):
        try:
            signal.signal(signal.SIGTERM, on_term)
            card.run("fuzz", lambda: check_fuzz(card, a.repo, 10 if a.quick else 60, seed, logs))
        except OutOfTime:
            card.add("watchdog", "TOTAL_TIMEOUT reached", "during the fuzz run", False)
    load1 = open("/proc/loadavg").read().split()[:3]
    commit = sh(["git", "-C", a.repo, "rev-parse", "--short", "HEAD"], check=False).stdout.strip()
    title = (f"### Reliability scorecard{' (--quick)' if a.quick else ''}: "
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(started))}, commit {commit}, "
             f"{os.cpu_count()} cores, load {' '.join(load0)} → {' '.join(load1)}, "
             f"{time.time() - started:.0f} s{', ' + a.nofile if a.nofile else ''}")
    md = card.markdown(title)
    with open(os.path.join(a.out, "reliability.md"), "w") as f:
        f.write(md + "\n")
    print(md, flush=True)
    return 0 if card.rows and all(ok for *_, ok in card.rows) else 1


if __name__ == "__main__":
    sys.exit(main())
