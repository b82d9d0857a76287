"""A stand-in for a mesh's proxy in the pod: what the mesh's capture rules need.

One program for every mesh the tests model; the options say how the mesh's
own proxy behaves (it runs as the mesh's proxy user, started with setpriv):

  --outbound PORT        the outbound capture port (nat REDIRECT; the original
                         destination comes from SO_ORIGINAL_DST)
  --inbound PORT         the inbound capture port
  --inbound-tproxy       the inbound port is reached by TPROXY: the listener is
                         IP_TRANSPARENT and the original destination is the
                         accepted socket's local address
  --inbound-from ADDR    the inbound relay connects from ADDR (Envoy's
                         passthrough uses 127.0.0.6)
  --inbound-from6 ADDR   the same for IPv6 connections (Envoy: ::6)
  --ipv6                 listen on IPv6 too (a dual-stack pod): one more
                         listener a port, IPv6-only, as the mesh's proxy has
  --mark N               SO_MARK on every upstream socket (ztunnel: 0x539)
  --inbound-mark N       SO_MARK on the inbound relay's upstream sockets only
                         (Envoy's passthrough in TPROXY mode: 1337)
  --dns PORT             a DNS proxy on PORT (UDP and TCP) that knows one name
  --dns-name NAME --dns-answer IP
                         the name only the mesh knows, and its A record; any
                         other name gets NXDOMAIN

Each connection is relayed to its original destination and logged as
`LISTENER PEER -> ORIGINAL_DST: OUTCOME` (addresses as Rust prints them:
`[IPV6]:PORT` for IPv6); a destination that is one of the
stand-in's own ports is refused (a loop). DNS queries are logged as
`dns PROTO PEER NAME: OUTCOME`. The first line is `ready uid=N`.
"""
import argparse, os, socket, struct, sys, threading

SO_ORIGINAL_DST = 80
IP6T_SO_ORIGINAL_DST = 80
IP_TRANSPARENT = 19
IPV6_TRANSPARENT = 75
SO_MARK = 36

p = argparse.ArgumentParser()
p.add_argument("--outbound", type=int)
p.add_argument("--inbound", type=int)
p.add_argument("--inbound-tproxy", action="store_true")
p.add_argument("--inbound-from")
p.add_argument("--inbound-from6")
p.add_argument("--ipv6", action="store_true")
p.add_argument("--mark", type=lambda s: int(s, 0))
p.add_argument("--inbound-mark", type=lambda s: int(s, 0))
p.add_argument("--dns", type=int)
p.add_argument("--dns-name")
p.add_argument("--dns-answer")
args = p.parse_args()
own_ports = {x for x in (args.outbound, args.inbound, args.dns) if x}
lock = threading.Lock()


def log(line):
    with lock:
        print(line, flush=True)


def reset(s):
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()
    except OSError:
        pass


def pump(src, dst):
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
        dst.shutdown(socket.SHUT_WR)
    except OSError:
        reset(src)
        reset(dst)


def original_dst(conn, tproxy):
    if tproxy:
        return conn.getsockname()[:2]
    if conn.family == socket.AF_INET6:
        raw = conn.getsockopt(socket.IPPROTO_IPV6, IP6T_SO_ORIGINAL_DST, 28)
        port, ip = struct.unpack("!2xH4x16s4x", raw)
        return socket.inet_ntop(socket.AF_INET6, ip), port
    raw = conn.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    port, ip = struct.unpack("!2xH4s8x", raw)
    return socket.inet_ntoa(ip), port


def addr(a):
    return f"[{a[0]}]:{a[1]}" if ":" in a[0] else f"{a[0]}:{a[1]}"


def handle(port, conn, peer, inbound):
    tproxy = inbound and args.inbound_tproxy
    dst = original_dst(conn, tproxy)
    what = f"{port} {addr(peer)} -> {addr(dst)}"
    if dst[1] in own_ports:
        log(f"{what}: refused (loop)")
        return reset(conn)
    up = socket.socket(conn.family)
    try:
        mark = args.inbound_mark if inbound and args.inbound_mark is not None else args.mark
        if mark is not None:
            up.setsockopt(socket.SOL_SOCKET, SO_MARK, mark)
        source = args.inbound_from6 if conn.family == socket.AF_INET6 else args.inbound_from
        if inbound and source:
            up.bind((source, 0))
        up.settimeout(5)
        up.connect(dst)
        up.settimeout(None)
    except OSError as e:
        log(f"{what}: upstream failed: {e}")
        up.close()
        return reset(conn)
    log(f"{what}: relaying from {up.getsockname()[0]}")
    threading.Thread(target=pump, args=(conn, up), daemon=True).start()
    threading.Thread(target=pump, args=(up, conn), daemon=True).start()


def tcp_listener(port, transparent=False, addr="0.0.0.0"):
    v6 = ":" in addr
    ls = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if v6:
        ls.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    if transparent:
        if v6:
            ls.setsockopt(socket.IPPROTO_IPV6, IPV6_TRANSPARENT, 1)
        else:
            ls.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
    ls.bind((addr, port))
    ls.listen(128)
    return ls


def accept_loop(port, ls, inbound):
    while True:
        conn, peer = ls.accept()
        threading.Thread(target=handle, args=(port, conn, peer, inbound), daemon=True).start()


# ---- DNS ------------------------------------------------------------------

def qname(msg):
    labels, i = [], 12
    while i < len(msg) and msg[i]:
        n = msg[i]
        labels.append(msg[i + 1:i + 1 + n].decode("ascii", "replace"))
        i += 1 + n
    qtype = struct.unpack("!H", msg[i + 1:i + 3])[0] if i + 3 <= len(msg) else 0
    return ".".join(labels).lower(), qtype, i + 5


def answer(msg):
    name, qtype, end = qname(msg)
    known = name == args.dns_name.lower().rstrip(".")
    if known and qtype == 1:
        hdr = msg[:2] + struct.pack("!HHHHH", 0x8180, 1, 1, 0, 0)
        rr = struct.pack("!HHHIH", 0xC00C, 1, 1, 30, 4) + socket.inet_aton(args.dns_answer)
        return name, "answered", hdr + msg[12:end] + rr
    hdr = msg[:2] + struct.pack("!HHHHH", 0x8180 if known else 0x8183, 1, 0, 0, 0)
    return name, "answered" if known else "nxdomain", hdr + msg[12:end]


def dns_udp(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    # 127.0.0.1, as Istio's and ztunnel's DNS proxies bind it: a REDIRECT in
    # OUTPUT sends the query there, and the answer must leave from there to
    # match the query's conntrack entry and be un-NATed to the nameserver.
    s.bind(("127.0.0.1", port))
    while True:
        msg, peer = s.recvfrom(4096)
        try:
            name, outcome, reply = answer(msg)
        except Exception as e:  # a malformed query: no answer
            log(f"dns udp {peer[0]}:{peer[1]} ?: dropped ({e})")
            continue
        log(f"dns udp {peer[0]}:{peer[1]} {name}: {outcome}")
        s.sendto(reply, peer)


def dns_tcp_conn(conn, peer):
    try:
        n = struct.unpack("!H", conn.recv(2))[0]
        msg = b""
        while len(msg) < n:
            chunk = conn.recv(n - len(msg))
            if not chunk:
                break
            msg += chunk
        name, outcome, reply = answer(msg)
        log(f"dns tcp {peer[0]}:{peer[1]} {name}: {outcome}")
        conn.sendall(struct.pack("!H", len(reply)) + reply)
    except Exception as e:
        log(f"dns tcp {peer[0]}:{peer[1]} ?: dropped ({e})")
    finally:
        conn.close()


def dns_tcp(ls):
    while True:
        conn, peer = ls.accept()
        threading.Thread(target=dns_tcp_conn, args=(conn, peer), daemon=True).start()


threads = []
for any_addr in ["0.0.0.0", "::"] if args.ipv6 else ["0.0.0.0"]:
    if args.outbound:
        ls = tcp_listener(args.outbound, addr=any_addr)
        threads.append((accept_loop, (args.outbound, ls, False)))
    if args.inbound:
        ls = tcp_listener(args.inbound, transparent=args.inbound_tproxy, addr=any_addr)
        threads.append((accept_loop, (args.inbound, ls, True)))
if args.dns:
    threads.append((dns_tcp, (tcp_listener(args.dns, addr="127.0.0.1"),)))
    threads.append((dns_udp, (args.dns,)))
for target, a in threads:
    threading.Thread(target=target, args=a, daemon=True).start()
log(f"ready uid={os.getuid()}")
threading.Event().wait()
