#!/usr/bin/env python3
"""Builds the seed corpus in fuzz/corpus/ from real client sessions.

A small TCP relay on 127.0.0.1 sits between psql/pgbench and the
PostgreSQL that scripts/services.sh runs, and records every read in each
direction. The recorded bytes become the seeds (formats in fuzz/README.md).
Stripe seeds are the event fixtures in tests/fixtures/stripe/; configuration
seeds are the values of config/*.toml.

Usage: fuzz/seeds.py   (PGHOST/PGPORT/PGUSER/PGPASSWORD as for psql;
defaults 127.0.0.1:5432 postgres/postgres)
"""

import hashlib
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "fuzz" / "corpus"
PG = (os.environ.get("PGHOST", "127.0.0.1"), int(os.environ.get("PGPORT", "5432")))
USER = os.environ.get("PGUSER", "postgres")
PASSWORD = os.environ.get("PGPASSWORD", "postgres")
DB = "dynabase_fuzz_seeds"
MAX_SEED = 16 * 1024

sessions = []  # one list of (direction, bytes) per connection, in read order
lock = threading.Lock()


def pump(src, dst, direction, log):
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            with lock:
                log.append((direction, data))
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def relay(listener):
    while True:
        try:
            client, _ = listener.accept()
        except OSError:
            return
        server = socket.create_connection(PG)
        log = []
        with lock:
            sessions.append(log)
        threading.Thread(target=pump, args=(client, server, "c", log), daemon=True).start()
        threading.Thread(target=pump, args=(server, client, "s", log), daemon=True).start()


def run(port, args, stdin=None, **kw):
    env = dict(os.environ, PGHOST="127.0.0.1", PGPORT=str(port), PGUSER=USER,
               PGPASSWORD=PASSWORD, PGDATABASE=DB)
    return subprocess.run(args, input=stdin, env=env, capture_output=True, text=True, **kw)


def psql(port, sql, *extra):
    r = run(port, ["psql", "-X", "-v", "ON_ERROR_STOP=0", *extra], stdin=sql)
    return r


def capture(port):
    """The client sessions; each one is a connection through the relay."""
    psql(port, "SELECT 1;\nSELECT version();\n", "-d", f"sslmode=disable dbname={DB}")
    psql(port, """
CREATE TABLE IF NOT EXISTS seed_t (id int PRIMARY KEY, name text, payload bytea);
BEGIN;
INSERT INTO seed_t VALUES (1, 'one', '\\x00ff'), (2, 'two', NULL) ON CONFLICT DO NOTHING;
UPDATE seed_t SET name = 'uno' WHERE id = 1;
SELECT * FROM nope;
ROLLBACK;
BEGIN; SAVEPOINT a; SELECT 1/0; ROLLBACK TO a; COMMIT;
SET statement_timeout = '5s'; SHOW statement_timeout;
SELECT g, repeat('x', 40) FROM generate_series(1, 60) g;
\\copy seed_t (id, name) FROM stdin
10\tten
11\televen
\\.
\\copy (SELECT * FROM seed_t ORDER BY id) TO stdout
PREPARE p(int) AS SELECT $1 + 1; EXECUTE p(41);
DELETE FROM seed_t WHERE id >= 10;
NOTIFY seed_channel, 'hello';
""", "-d", f"sslmode=disable dbname={DB}")
    # Extended protocol: psql's \bind sends Parse/Bind/Describe/Execute/Sync.
    psql(port, "SELECT $1::int * 2, $2::text \\bind 21 'twice' \\g\n", "-d",
         f"sslmode=disable dbname={DB}")
    # The SSLRequest a default client opens with (the rest is TLS if accepted).
    psql(port, "SELECT 1;\n", "-d", f"sslmode=prefer dbname={DB}")
    # GSSENCRequest, when libpq is built with GSSAPI.
    psql(port, "SELECT 1;\n", "-d", f"sslmode=disable gssencmode=prefer dbname={DB}")
    # A cancelled query: psql sends a CancelRequest on a new connection.
    env = dict(os.environ, PGHOST="127.0.0.1", PGPORT=str(port), PGUSER=USER,
               PGPASSWORD=PASSWORD, PGDATABASE=DB, PGSSLMODE="disable")
    p = subprocess.Popen(["psql", "-X", "-c", "SELECT pg_sleep(30)"], env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.5)
    p.send_signal(signal.SIGINT)
    p.wait(timeout=20)
    # pgbench with each query mode, on a script of its own (small sessions).
    script = Path(tempfile.mkdtemp()) / "seed_pgbench.sql"
    script.write_text("\\set id random(1, 2)\nBEGIN;\nSELECT name FROM seed_t WHERE id = :id;\n"
                      "UPDATE seed_t SET name = name WHERE id = :id;\nEND;\n")
    for mode in ("simple", "extended", "prepared"):
        # -n: no vacuum, so one connection per run.
        r = run(port, ["pgbench", "-n", "-M", mode, "-t", "3", "-c", "1", "-f", str(script), DB])
        if r.returncode != 0:
            print(r.stderr, file=sys.stderr)


# The sessions capture() opens, in order.
NAMES = ["psql-select", "psql-session", "psql-bind", "psql-sslmode-prefer", "psql-gssencmode",
         "psql-cancelled", "psql-cancel"] + [
    f"pgbench-{mode}{part}" for mode in ("simple", "extended", "prepared")
    for part in ("-setup", "")]  # pgbench opens a connection of its own first


def messages(stream):
    """Offsets just past each whole tagged message."""
    at, ends = 0, []
    while at + 5 <= len(stream):
        (length,) = struct.unpack(">I", stream[at + 1:at + 5])
        if length < 4:
            break
        at += 1 + length
        if at > len(stream):
            break
        ends.append(at)
    return ends


def write(target, data, name):
    """One seed file, named by what it is and its content (so no duplicates)."""
    d = CORPUS / target
    d.mkdir(parents=True, exist_ok=True)
    data = data[:MAX_SEED]
    digest = hashlib.sha1(data).hexdigest()[:12]
    (d / f"{name}-{digest}").write_bytes(data)


def seeds_from_session(name, log):
    client = b"".join(b for d, b in log if d == "c")
    server = b"".join(b for d, b in log if d == "s")
    skip_client, skip_server = 0, 0
    if len(client) < 8:
        return
    (first_len,) = struct.unpack(">I", client[:4])
    code = struct.unpack(">I", client[4:8])[0]
    kinds = {80877103: "ssl-request", 80877104: "gssenc-request", 80877102: "cancel-request"}
    write("startup_packet", client[:first_len], kinds.get(code, "startup"))
    if code == 80877102:
        return
    if code in (80877103, 80877104):
        if server[:1] != b"N":
            return  # TLS follows
        # Refused: the client sends its StartupMessage in the clear.
        skip_client, skip_server = first_len, 1
        client, server = client[first_len:], server[1:]
        (first_len,) = struct.unpack(">I", client[:4])
        write("startup_packet", client[:first_len], "startup")
    tagged_client = client[first_len:]
    if not tagged_client:
        return
    # Scanner seeds: byte 0 says how many chunk sizes follow (0: whole).
    write("frontend_scanner", b"\x00" + tagged_client, f"{name}-whole")
    write("frontend_scanner", b"\x03\x00\x06\x1f" + tagged_client, f"{name}-cut")
    write("backend_scanner", b"\x00" + server, f"{name}-whole")
    write("backend_scanner", b"\x02\x04\x3f" + server, f"{name}-cut")
    # Relay state: the reads after authentication (the first ReadyForQuery),
    # in the order the relay saw them, as (op, length, bytes) records.
    ends = messages(server)
    first_z = next((e for e in ends if server[e - 6:e - 5] == b"Z"), None)
    if first_z is None:
        return
    first_z += skip_server
    records, c_seen, s_seen = bytearray(), -(first_len + skip_client), 0
    for d, b in log:
        if d == "c":
            start, c_seen = c_seen, c_seen + len(b)
            if s_seen < first_z:
                continue
            b = b[max(0, -start):]
            op = 0
        else:
            start, s_seen = s_seen, s_seen + len(b)
            if s_seen <= first_z:
                continue
            b = b[max(0, first_z - start):]
            op = 1
        for k in range(0, len(b), 255):
            piece = b[k:k + 255]
            records += bytes([op, len(piece)]) + piece
    if records:
        write("relay_state", bytes(records), f"{name}-reads")


def stripe_seeds():
    for fixture in sorted((ROOT / "tests" / "fixtures" / "stripe").glob("*.json")):
        body = fixture.read_bytes()
        # Mode 4: the target signs the body validly; mode 0: a header as sent.
        write("stripe_webhook", b"\x04\x00" + body, fixture.stem + "-signed")
        header = b"t=1764892800,v1=" + b"0" * 64 + b",v0=" + b"1" * 64
        write("stripe_webhook", b"\x00" + header + b"\x00" + body, fixture.stem + "-header")


def config_seeds():
    default = tomllib.loads((ROOT / "config" / "default.toml").read_text())
    tiers = tomllib.loads((ROOT / "config" / "tiers.toml").read_text())

    def walk(x, path):
        for k, v in x.items():
            if isinstance(v, dict):
                yield from walk(v, path + [k])
            else:
                yield path + [k], v

    keys = list(walk(default, [])) + list(walk(tiers, []))
    records = []
    for index, (_, value) in enumerate(keys):
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, list):
            continue
        else:
            text = str(value)
        records.append(bytes([index]) + text.encode())
    for n in range(0, len(records), 12):
        write("config_values", b"\x00".join(records[n:n + 12]), f"values-{n // 12}")
    for name in ("default.toml", "tiers.toml"):
        write("config_values", b"\xff" + (ROOT / "config" / name).read_bytes(), "overlay-" + name)
    write("config_values", b"\xff[tiers.free]\nmax_connections = 7\n\x00" + bytes([1]) + b"9000",
          "overlay-staging")


def main():
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    port = listener.getsockname()[1]
    threading.Thread(target=relay, args=(listener,), daemon=True).start()
    admin = dict(os.environ, PGHOST=PG[0], PGPORT=str(PG[1]), PGUSER=USER, PGPASSWORD=PASSWORD)
    subprocess.run(["psql", "-X", "-q", "-d", "postgres", "-c", f"DROP DATABASE IF EXISTS {DB}",
                    "-c", f"CREATE DATABASE {DB}"], env=admin, check=True, capture_output=True)
    try:
        capture(port)
        time.sleep(0.5)
    finally:
        subprocess.run(["psql", "-X", "-q", "-d", "postgres", "-c",
                        f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)"], env=admin, capture_output=True)
    with lock:
        logs = [list(log) for log in sessions]
    if len(logs) != len(NAMES):
        sys.exit(f"expected {len(NAMES)} sessions, captured {len(logs)}")
    for name, log in zip(NAMES, logs):
        seeds_from_session(name, log)
    stripe_seeds()
    config_seeds()
    for d in sorted(CORPUS.iterdir()):
        print(f"{d.name}: {len(list(d.iterdir()))} seeds")


if __name__ == "__main__":
    main()
