"""A stand-in for Envoy in an Istio sidecar: what its iptables capture needs.

Listens on 15001 (outbound capture) and 15006 (inbound capture), reads each
connection's original destination (SO_ORIGINAL_DST), logs one line per
connection and relays to that destination: outbound from the pod address,
inbound from 127.0.0.6 as Envoy's inbound passthrough does (Istio's
ISTIO_OUTPUT lets 127.0.0.6 through). A destination on 15001/15006 itself
is dropped, like Istio's virtualOutbound/virtualInbound blackhole chains.
With --registry CIDR, outbound to other destinations is dropped, like
outboundTrafficPolicy REGISTRY_ONLY.
Log lines: `LISTENER PEER -> ORIGINAL_DST: OUTCOME`.
"""
import ipaddress, socket, struct, sys, threading

SO_ORIGINAL_DST = 80
registry = None
if len(sys.argv) > 2 and sys.argv[1] == "--registry":
    registry = ipaddress.ip_network(sys.argv[2])
lock = threading.Lock()

def log(line):
    with lock:
        print(line, flush=True)

def pump(src, dst):
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
        dst.shutdown(socket.SHUT_WR)
    except OSError:
        for s in (src, dst):
            # RST, not FIN: the peer learns the connection failed.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

def reset(conn):
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()

def handle(listener_port, conn, peer):
    raw = conn.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    port, ip = struct.unpack("!2xH4s8x", raw)
    dst = (socket.inet_ntoa(ip), port)
    what = f"{listener_port} {peer[0]}:{peer[1]} -> {dst[0]}:{dst[1]}"
    if port in (15001, 15006):
        log(f"{what}: blackhole (loop)")
        return reset(conn)
    if listener_port == 15001 and registry and ipaddress.ip_address(dst[0]) not in registry:
        log(f"{what}: blackhole (not in registry)")
        return reset(conn)
    up = socket.socket()
    try:
        if listener_port == 15006:
            up.bind(("127.0.0.6", 0))
        up.settimeout(5)
        up.connect(dst)
        up.settimeout(None)
    except OSError as e:
        log(f"{what}: upstream failed: {e}")
        up.close()
        return reset(conn)
    log(f"{what}: relaying")
    threading.Thread(target=pump, args=(conn, up), daemon=True).start()
    threading.Thread(target=pump, args=(up, conn), daemon=True).start()

def serve(port):
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("0.0.0.0", port))
    ls.listen(128)
    return ls

def accept_loop(port, ls):
    while True:
        conn, peer = ls.accept()
        threading.Thread(target=handle, args=(port, conn, peer), daemon=True).start()

listeners = [(p, serve(p)) for p in (15001, 15006)]
log(f"ready uid={__import__('os').getuid()}")
for p, ls in listeners[1:]:
    threading.Thread(target=accept_loop, args=(p, ls), daemon=True).start()
accept_loop(*listeners[0])
