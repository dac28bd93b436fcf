#!/usr/bin/env python3
"""Open N idle PostgreSQL connections and watch a process's memory meanwhile.

    hold_connections.py --port P --user U[,U2...] --database D -n N --pid PID [--steps K]

Each connection is a raw socket speaking just enough of the protocol: a v3
StartupMessage, then messages are read until ReadyForQuery ('Z'). Only trust
authentication is supported (AuthenticationOk). The connections are opened in K
steps; after each step (and before the first) the VmRSS of --pid is sampled
once it has settled. Then all connections are closed with Terminate and the RSS
is sampled again. Prints one JSON object on stdout.
"""

import argparse
import json
import resource
import socket
import struct
import sys
import time


def vmrss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def settled_rss(pid, wait=1.0):
    """RSS once two samples 0.25 s apart agree (at most `wait` + 3 s)."""
    time.sleep(wait)
    last = vmrss_kib(pid)
    for _ in range(12):
        time.sleep(0.25)
        now = vmrss_kib(pid)
        if now == last:
            break
        last = now
    return last


def recv_exact(sock, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("server closed the connection during startup")
        buf += chunk
    return bytes(buf)


def open_connection(host, port, user, database, app):
    sock = socket.create_connection((host, port), timeout=30)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    params = b""
    for k, v in (("user", user), ("database", database), ("application_name", app)):
        params += k.encode() + b"\0" + v.encode() + b"\0"
    params += b"\0"
    body = struct.pack("!I", 196608) + params
    sock.sendall(struct.pack("!I", len(body) + 4) + body)
    while True:
        tag = recv_exact(sock, 1)
        (length,) = struct.unpack("!I", recv_exact(sock, 4))
        payload = recv_exact(sock, length - 4)
        if tag == b"R":
            (code,) = struct.unpack("!I", payload[:4])
            if code != 0:
                raise RuntimeError(f"server asks for authentication (code {code}); use a trust role")
        elif tag == b"E":
            fields = dict(
                (f[:1].decode(), f[1:].decode(errors="replace"))
                for f in payload.split(b"\0")
                if f
            )
            raise RuntimeError(f"server error {fields.get('C')}: {fields.get('M')}")
        elif tag == b"Z":
            sock.settimeout(None)
            return sock
        # 'S' ParameterStatus, 'K' BackendKeyData, 'N' notices: ignored.


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--user", required=True, help="comma-separated: connections go round-robin over these users")
    ap.add_argument("--database", required=True)
    ap.add_argument("-n", type=int, required=True)
    ap.add_argument("--pid", type=int, required=True, help="process whose VmRSS is sampled")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--settle", type=float, default=2.0, help="seconds before each sample")
    args = ap.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = args.n + 64
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))

    users = [u for u in args.user.split(",") if u]
    samples = [{"connections": 0, "rss_kib": settled_rss(args.pid, args.settle)}]
    conns = []
    started = time.monotonic()
    bounds = [round(args.n * (i + 1) / args.steps) for i in range(args.steps)]
    for bound in bounds:
        while len(conns) < bound:
            user = users[len(conns) % len(users)]
            conns.append(open_connection(args.host, args.port, user, args.database, "idle-memory"))
        samples.append({"connections": len(conns), "rss_kib": settled_rss(args.pid, args.settle)})
    open_seconds = time.monotonic() - started

    # Every connection must still be alive and idle (nothing to read, not closed).
    for s in conns:
        s.setblocking(False)
        try:
            data = s.recv(1)
        except BlockingIOError:
            continue
        raise RuntimeError("a held connection was closed or got data: %r" % data)

    for s in conns:
        try:
            s.setblocking(True)
            s.sendall(b"X\0\0\0\4")
        finally:
            s.close()
    after_close = settled_rss(args.pid, args.settle)
    json.dump(
        {
            "n": args.n,
            "samples": samples,
            "rss_after_close_kib": after_close,
            "open_seconds": round(open_seconds, 2),
        },
        sys.stdout,
    )
    print()


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # noqa: BLE001 - report and fail
        print(f"hold_connections.py: {e}", file=sys.stderr)
        sys.exit(1)
