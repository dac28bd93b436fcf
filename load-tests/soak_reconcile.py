#!/usr/bin/env python3
"""Reconciliation of a load-tests/soak.sh run; prints a Markdown report.

    soak_reconcile.py --work DIR --token ADMIN --http A B --proxy A B --pg-port P --pg-sock DIR
                      --redis-port R --mongo-port M --flush-interval S ...

Exit status 1 when any check fails. Checks:

- usage: per org, the query cycles pgbench completed (successful transactions
  of every run; one `SELECT 1` per transaction, simple protocol) against
  `measured.query_cycles` of the admin usage report. Recorded may be lower
  only by what kill -9 is documented to lose (docs/usage.md: at most one
  flush interval plus a write in flight): the cycles the org's clients on
  the killed replica completed in the 2 × flush interval + 1 s before each
  kill -9. Recorded may be higher only by cycles the server finished but the
  client never saw (at most one per aborted pgbench client).
- webhooks: every event delivered, its outcome `done`, exactly one tier
  change with source `stripe:<event id>` to the event's tier, redeliveries
  answered `duplicate`.
- connection limits: no sample of pg_stat_activity shows more sessions of an
  org than its tier admits (hook orgs: FREE, their lowest tier).
- stuck sessions: none in PostgreSQL or on either replica, no unexpired
  connection lease in Redis, and the org admits its full limit again.
- every process serving: both replicas /ready 200, the services answer.
"""

import argparse
import collections
import datetime
import glob
import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request

LIMITS = {"free": 5, "starter": 10, "pro": 50, "enterprise": 500}
HOOK_ORGS_LOWEST = "free"


def get(port, path, token=None, timeout=10):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            status, text = resp.status, resp.read().decode()
    except urllib.error.HTTPError as e:
        status, text = e.code, e.read().decode(errors="replace")
    except (urllib.error.URLError, OSError) as e:
        return 0, str(e)
    try:
        return status, json.loads(text)
    except ValueError:
        return status, text


class Report:
    def __init__(self):
        self.lines = []
        self.failed = []

    def out(self, line=""):
        self.lines.append(line)

    def check(self, name, ok, detail=""):
        if not ok:
            self.failed.append(name)
        return "PASS" if ok else "**FAIL**"


def read_loops(work):
    """Per loop: org, replica, runs, and the completed transactions per second.

    Completed transactions come from pgbench's per-transaction logs (-l:
    `client_id transaction_no latency_us script_no epoch_s epoch_us [lag]`,
    one line per successful transaction). pgbench 15's summary is only a
    cross-check: on some errors it exits without one ("unexpected error
    status"), while the log still holds what completed.
    """
    loops = {}
    for d in sorted(glob.glob(os.path.join(work, "loops", "*"))):
        with open(os.path.join(d, "meta")) as f:
            org, replica, _rate = f.read().split("\t")
        runs = []
        buckets = collections.Counter()
        n = 0
        while os.path.exists(os.path.join(d, f"run-{n}.out")):
            out = open(os.path.join(d, f"run-{n}.out")).read()
            err = open(os.path.join(d, f"run-{n}.err")).read()
            m = re.search(r"number of transactions actually processed: (\d+)", out)
            logged = 0
            for path in glob.glob(os.path.join(d, f"txn-{n}.*")):
                for line in open(path):
                    f = line.split()
                    if len(f) >= 6 and f[2].isdigit():
                        logged += 1
                        buckets[int(f[4]) * 1000 + int(f[5]) // 1000] += 1
            runs.append(
                {
                    "completed": logged,
                    "summary": int(m.group(1)) if m else None,
                    "aborted": len(re.findall(r"client \d+ (?:script \d+ )?aborted", err)),
                    "err": err,
                }
            )
            n += 1
        loops[os.path.basename(d)] = {"org": org, "replica": replica, "runs": runs, "buckets": buckets}
    return loops


def read_events(work):
    events = []
    for line in open(os.path.join(work, "events.tsv")):
        ms, name, detail = (line.rstrip("\n").split("\t") + [""])[:3]
        events.append((int(ms), name, detail))
    return events


def error_kinds(err):
    """Short classification of pgbench's errors for the report."""
    kinds = collections.Counter()
    for line in err.splitlines():
        if not line.startswith("pgbench: error:") or re.search("could not create connection for|Run was aborted", line):
            continue
        for key, pattern in [
            ("connection limit (53300)", "connection limit"),
            ("rate limit (53400)", "rate limit"),
            ("database unreachable (08006)", "cannot reach database"),
            ("ended by shutdown (57P01)", "terminat"),
            ("PostgreSQL starting up / shutting down", "the database system is"),
            ("shutting down / unavailable (57P03)", "shutting down|unavailable"),
            ("connection lost", "closed the connection|backend died|server closed|lost synchron|EOF"),
            ("connection refused", "Connection refused"),
            ("pgbench exited without summary", "unexpected error status"),
        ]:
            if re.search(pattern, line):
                kinds[key] += 1
                break
        else:
            kinds["other: " + line[len("pgbench: error:"):].strip()[:80]] += 1
    return kinds


def redis_cli(port, *args):
    r = subprocess.run(["redis-cli", "-p", str(port), *args], capture_output=True, text=True, timeout=10)
    return r.stdout.strip()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--work", required=True)
    p.add_argument("--token", required=True)
    p.add_argument("--http", nargs=2, type=int, required=True)
    p.add_argument("--proxy", nargs=2, type=int, required=True)
    p.add_argument("--pg-port", type=int, required=True)
    p.add_argument("--pg-sock", required=True)
    p.add_argument("--redis-port", type=int, required=True)
    p.add_argument("--mongo-port", type=int, required=True)
    p.add_argument("--flush-interval", type=float, required=True)
    p.add_argument("--minutes", type=int, required=True)
    p.add_argument("--start-ms", type=int, required=True)
    p.add_argument("--role", required=True)
    p.add_argument("--db", required=True)
    p.add_argument("--command", required=True)
    p.add_argument("--machine", default="")
    p.add_argument("--build", default="")
    a = p.parse_args()
    work, token = a.work, a.token
    http = {"a": a.http[0], "b": a.http[1]}
    proxy = {"a": a.proxy[0], "b": a.proxy[1]}
    rep = Report()

    orgs = [line.rstrip("\n").split("\t") for line in open(os.path.join(work, "orgs.tsv"))]
    tiers = dict(orgs)
    hook_orgs = {o for o, _ in orgs if o.startswith("hook")}
    loops = read_loops(work)
    events = read_events(work)
    start_ms = a.start_ms
    stop_ms = next((ms for ms, name, _ in events if name == "load_stop"), events[-1][0])

    def rel(ms):
        s = max(0, (ms - start_ms) // 1000)
        return f"{s // 60:02d}:{s % 60:02d}"

    # -------------------------------------------------------------- faults
    fault_names = {
        "fault_redis_kill9": "Redis kill -9 (restart after 8 s)",
        "fault_ferretdb_kill9": "FerretDB kill -9 (restart after 10 s)",
        "fault_postgres_stop_immediate": "tenant PostgreSQL stop -m immediate (start after 5 s)",
        "fault_replica_a_kill9": "replica a kill -9 (restart)",
        "fault_replica_b_sigterm": "replica b SIGTERM (restart after exit)",
    }
    fault_times = collections.defaultdict(list)
    for ms, name, detail in events:
        if name in fault_names:
            fault_times[name].append(ms)
    kills = fault_times["fault_replica_a_kill9"]

    # --------------------------------------------------------------- usage
    window_ms = int(2 * a.flush_interval * 1000) + 1000
    per_org = collections.defaultdict(lambda: {"completed": 0, "aborted": 0, "runs": 0, "failed_runs": 0, "summary_diff": 0,
                                               "allow": 0, "errors": collections.Counter(), "by_replica": collections.Counter()})
    for lid, lp in loops.items():
        o = per_org[lp["org"]]
        for r in lp["runs"]:
            o["completed"] += r["completed"]
            o["by_replica"][lp["replica"]] += r["completed"]
            o["aborted"] += r["aborted"]
            o["runs"] += 1
            o["failed_runs"] += 0 if r["summary"] is not None else 1
            if r["summary"] is not None:
                o["summary_diff"] += abs(r["summary"] - r["completed"])
            o["errors"].update(error_kinds(r["err"]))
        if lp["replica"] == "a":
            for k in kills:
                o["allow"] += sum(c for t, c in lp["buckets"].items() if k - window_ms <= t <= k)
    probe = {}
    for path in glob.glob(os.path.join(work, "probe-cycles-*")):
        probe[os.path.basename(path)[len("probe-cycles-"):]] = int(open(path).read().strip())

    rep.out(f"### Usage: completed query cycles vs recorded (kill -9 window {window_ms / 1000:g} s)")
    rep.out()
    rep.out("| org | tier | pgbench runs (no summary) | cycles completed (a / b) | recorded | lost | allowed loss (kill -9 windows) | aborted clients | result |")
    rep.out("|---|---|---|---|---|---|---|---|---|")
    totals = collections.Counter()
    usage_reports = {}
    for org, tier in orgs:
        o = per_org[org]
        expected = o["completed"] + probe.get(org, 0)
        status, report = get(http["a"], f"/admin/orgs/{org}/usage", token)
        if status != 200:
            status, report = get(http["b"], f"/admin/orgs/{org}/usage", token)
        usage_reports[org] = report
        recorded = int(report["measured"]["query_cycles"]) if status == 200 else None
        if recorded is None:
            res = rep.check(f"usage {org}", False)
            lost = "?"
        else:
            lost = expected - recorded
            res = rep.check(f"usage {org}", -o["aborted"] <= lost <= o["allow"])
            totals["recorded"] += recorded
        totals["completed"] += expected
        totals["allow"] += o["allow"]
        totals["aborted"] += o["aborted"]
        rep.out(f"| {org} | {tier} | {o['runs']} ({o['failed_runs']}) | {expected} ({o['by_replica']['a']} / {o['by_replica']['b']}"
                f"{' + ' + str(probe[org]) + ' probe' if org in probe else ''}) | {recorded} | {lost} | {o['allow']} | {o['aborted']} | {res} |")
    rep.out(f"| **all** | | | {totals['completed']} | {totals['recorded']} | {totals['completed'] - totals['recorded']} | {totals['allow']} | {totals['aborted']} | |")
    rep.out()
    rep.out("Cycles completed are the transactions in pgbench's per-transaction logs; for the runs that printed a "
            "summary, its \"transactions actually processed\" differ from the logs by "
            f"{sum(o['summary_diff'] for o in per_org.values())} in all. Lost = completed − recorded; "
            "allowed: up to the cycles the org's clients on replica a completed in the kill -9 window before each "
            "kill -9, and down to −(aborted clients) (a cycle the server answered but the client never saw).")
    rep.out()
    errs = collections.Counter()
    for o in per_org.values():
        errs.update(o["errors"])
    if errs:
        rep.out("Client errors seen (pgbench stderr lines): " + ", ".join(f"{k} {v}" for k, v in errs.most_common()) + ".")
        rep.out()

    # ------------------------------------------------------------ webhooks
    sent, deliveries, outcomes = {}, collections.defaultdict(list), {}
    resets = collections.Counter()
    path = os.path.join(work, "webhooks.jsonl")
    for line in open(path) if os.path.exists(path) else []:
        r = json.loads(line)
        if r["kind"] == "sent":
            sent[r["event"]] = r
        elif r["kind"] == "delivery":
            deliveries[r["event"]].append(r)
        elif r["kind"] == "outcome":
            outcomes[r["event"]] = r["status"]
        elif r["kind"] == "reset" and r["status"] == 200:
            resets[r["org"]] += 1
    history = {}
    for org in hook_orgs:
        status, h = get(http["a"], f"/admin/orgs/{org}/tier-history", token)
        history[org] = h if status == 200 and isinstance(h, list) else []
    wh = collections.Counter()
    problems = []
    for evt, s in sent.items():
        d1 = [d for d in deliveries[evt] if d["delivery"] == 1]
        d2 = [d for d in deliveries[evt] if d["delivery"] == 2]
        wh["events"] += 1
        wh["attempts"] += len(deliveries[evt])
        wh["non_2xx"] += sum(1 for d in deliveries[evt] if not 200 <= d["status"] < 300)
        ok1 = any(200 <= d["status"] < 300 for d in d1)
        ok2 = [d for d in d2 if 200 <= d["status"] < 300]
        status, outcome = get(http["a"], f"/admin/stripe/events/{evt}", token)
        applied = [h for h in history.get(s["org"], []) if h.get("source") == f"stripe:{evt}"]
        wh["applied_once"] += len(applied) == 1
        wh["redelivered_dup"] += bool(ok2) and ok2[0].get("duplicate") is True
        state = outcome.get("status") if isinstance(outcome, dict) else None
        if not ok1:
            problems.append(f"{evt}: never accepted")
        if not ok2 or ok2[0].get("duplicate") is not True:
            problems.append(f"{evt}: redelivery not answered duplicate ({[(d['status'], d['duplicate']) for d in d2]})")
        if state != "done":
            problems.append(f"{evt}: outcome {state!r}")
        if len(applied) != 1 or str(applied[0].get("to", "")).lower() != s["tier"]:
            problems.append(f"{evt} ({s['org']} → {s['tier']}): {len(applied)} tier changes {applied}")
    stripe_sources = collections.Counter(
        h.get("source") for hs in history.values() for h in hs if str(h.get("source", "")).startswith("stripe:")
    )
    dup_sources = [src for src, n in stripe_sources.items() if n > 1]
    if dup_sources:
        problems.append(f"tier changes recorded twice: {dup_sources}")
    rep.out("### Webhooks")
    rep.out()
    rep.out(f"- events sent: {wh['events']} (each delivered, then delivered again after its outcome), "
            f"{wh['attempts']} POSTs, {wh['non_2xx']} answered non-2xx or not at all and retried; "
            f"operator resets to FREE in between: {sum(resets.values())}")
    rep.out(f"- applied exactly once (one tier change with source `stripe:<id>` to the event's tier): "
            f"{wh['applied_once']} of {wh['events']}; redeliveries answered `duplicate`: {wh['redelivered_dup']} of {wh['events']}")
    ok = not problems and wh["events"] > 0
    rep.out(f"- result: {rep.check('webhooks', ok)}" + (" — " + "; ".join(problems[:10]) if problems else ""))
    rep.out()

    # ---------------------------------------------------- connection limits
    samples = collections.defaultdict(list)
    down = 0
    path = os.path.join(work, "samples.tsv")
    for line in open(path) if os.path.exists(path) else []:
        parts = line.rstrip("\n").split("\t")
        if len(parts) != 3:
            continue
        if parts[2] == "down":
            down += 1
            continue
        samples[parts[1]].append((int(parts[0]), int(parts[2])))
    seconds = len({ms // 1000 for v in samples.values() for ms, _ in v})
    rep.out(f"### Connection limits (pg_stat_activity every second: {seconds} samples with sessions, {down} while PostgreSQL was down)")
    rep.out()
    rep.out("| org | limit | max sessions seen | samples above limit | of which also above in the next sample | result |")
    rep.out("|---|---|---|---|---|---|")
    sample_times = sorted({ms for v in samples.values() for ms, _ in v})
    next_time = dict(zip(sample_times, sample_times[1:]))
    for org, tier in orgs:
        limit = LIMITS[HOOK_ORGS_LOWEST if org in hook_orgs else tier]
        vals = samples.get(org, [])
        by_time = dict(vals)
        above = [(ms, c) for ms, c in vals if c > limit]
        sustained = [(ms, c) for ms, c in above if by_time.get(next_time.get(ms), 0) > limit]
        res = rep.check(f"connections {org}", not sustained)
        detail = ", ".join(f"{c} at {rel(ms)}" for ms, c in above[:5])
        rep.out(f"| {org} | {limit} | {max((c for _, c in vals), default=0)} | {len(above)}"
                f"{' (' + detail + ')' if detail else ''} | {len(sustained)} | {res} |")
    rep.out()
    rep.out("A session's slot is given back when the proxy closes it; its PostgreSQL backend leaves "
            "pg_stat_activity a moment later, when it has processed the close and exited. A sample taken in that "
            "moment, while the slot already serves a new session, counts both. An exceedance is therefore counted "
            "as a failure when the next sample, about a second later, still shows it (sessions admitted beyond "
            "the limit by a pgbench run that gets all its connections live for the run's 5–30 s; those of a run "
            "refused its last connection close at once and can escape this check); samples above the limit are "
            "all listed.")
    rep.out()

    # ------------------------------------------------------- stuck sessions
    rep.out("### After the clients stopped")
    rep.out()
    hung = int(open(os.path.join(work, "hung-loops")).read().strip() or 0)
    rep.out(f"- pgbench loops still running 3 min after the stop: {hung} — {rep.check('hung clients', hung == 0)}")
    r = subprocess.run(
        ["psql", "-X", "-At", "-h", a.pg_sock, "-p", str(a.pg_port), "-U", "postgres", "-d", "postgres", "-c",
         "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' AND application_name LIKE '%/%/%'"],
        capture_output=True, text=True, timeout=30,
    )
    pg_left = r.stdout.strip()
    rep.out(f"- proxy sessions left in PostgreSQL: {pg_left or r.stderr.strip()} — {rep.check('pg sessions left', pg_left == '0')}")
    left = {}
    for name in ("a", "b"):
        n = 0
        for org, _ in orgs:
            status, conns = get(http[name], f"/admin/orgs/{org}/connections", token)
            n += len(conns) if status == 200 and isinstance(conns, list) else (
                len(conns.get("connections", [])) if isinstance(conns, dict) else 1000)
        left[name] = n
    rep.out(f"- sessions listed by `GET /admin/orgs/{{id}}/connections`: a {left['a']}, b {left['b']} — "
            f"{rep.check('replica sessions left', left['a'] == 0 and left['b'] == 0)}")
    t = redis_cli(a.redis_port, "TIME").split()
    now = int(t[0]) * 1000 + int(t[1]) // 1000 if len(t) == 2 else 0
    leases = {org: int(redis_cli(a.redis_port, "ZCOUNT", f"dynabase:{{{org}}}:conns", str(now), "+inf") or 0) for org, _ in orgs}
    rep.out(f"- unexpired connection leases in Redis: {sum(leases.values())} — {rep.check('leases left', sum(leases.values()) == 0)}")
    # The full limit is admitted again (nothing holds a slot): free1 through a, starter1 through b.
    for org, name in (("free1", "a"), ("starter1", "b")):
        limit = LIMITS[tiers[org]]
        procs = [
            subprocess.Popen(
                ["psql", "-X", "-At", "-h", "127.0.0.1", "-p", str(proxy[name]), "-U", f"{a.role}.{org}", "-d", a.db,
                 "-c", "SELECT pg_sleep(3)"],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )
            for _ in range(limit)
        ]
        results = [pr.communicate(timeout=60) for pr in procs]
        admitted = sum(1 for pr in procs if pr.returncode == 0)
        errors = {e.strip().splitlines()[-1] for _, e in results if e.strip()}
        rep.out(f"- {org} ({tiers[org]}, limit {limit}) opens {limit} sessions at once through replica {name}: "
                f"{admitted} admitted — {rep.check(f'full limit {org}', admitted == limit)}"
                + (f" ({'; '.join(sorted(errors))})" if errors else ""))
    rep.out()

    # --------------------------------------------------------------- serving
    ready = {name: get(http[name], "/ready")[0] for name in ("a", "b")}
    redis_ok = redis_cli(a.redis_port, "PING") == "PONG"
    pg_ok = subprocess.run(["psql", "-X", "-At", "-h", "127.0.0.1", "-p", str(a.pg_port), "-U", "postgres", "-d",
                            "postgres", "-c", "SELECT 1"], capture_output=True, text=True).stdout.strip() == "1"
    rep.out(f"- serving: replica a /ready {ready['a']}, replica b /ready {ready['b']}, Redis "
            f"{'PONG' if redis_ok else 'down'}, PostgreSQL {'up' if pg_ok else 'down'}, FerretDB (through /ready) — "
            f"{rep.check('serving', ready['a'] == 200 and ready['b'] == 200 and redis_ok and pg_ok)}")
    panics = []
    for name in ("a", "b"):
        text = open(os.path.join(work, f"replica-{name}", "dynabase.log"), errors="replace").read()
        panics += [f"{name}: {line[:200]}" for line in text.splitlines() if "panicked" in line]
    rep.out(f"- panics in the replicas' logs: {len(panics)} — {rep.check('panics', not panics)}"
            + (" — " + "; ".join(panics[:3]) if panics else ""))
    rep.out()

    # ------------------------------------------------------------ assemble
    head = []
    head.append("## Fault soak (`load-tests/soak.sh`)")
    head.append("")
    head.append(f"{datetime.datetime.utcfromtimestamp(start_ms / 1000):%Y-%m-%d %H:%M} UTC, `{a.command}`: "
                f"load for {(stop_ms - start_ms) / 60000:.1f} min. {a.build}.")
    head.append(f"Machine: {a.machine}.")
    head.append("")
    head.append("Two replicas (a, b) on one Redis and one FerretDB (SQLite backend), all on the soak's own ports; "
                "pgbench loops (`-M simple`, one `SELECT 1` per transaction, `-R` paced, restarted after every run) "
                "through both replicas; webhook sender and pg_stat_activity sampler running throughout.")
    head.append("")
    head.append("| fault | count | at (mm:ss from the start) |")
    head.append("|---|---|---|")
    for name, label in fault_names.items():
        times = fault_times.get(name, [])
        head.append(f"| {label} | {len(times)} | {', '.join(rel(t) for t in times)} |")
    for ms, name, detail in events:
        if name in ("fault_replica_a_kill9", "replica_b_exited"):
            head.append(f"\n{rel(ms)} {name.replace('_', ' ')}: {detail}")
    missing = [label for name, label in fault_names.items() if not fault_times.get(name)]
    head.append("")
    head.append(f"Every fault injected at least once: {rep.check('all faults', not missing)}"
                + (f" (missing: {', '.join(missing)})" if missing else ""))
    head.append("")
    verdict = "PASS" if not rep.failed else f"FAIL ({', '.join(rep.failed)})"
    tail = [f"**Verdict: {verdict}**"]
    print("\n".join(head + rep.lines + tail))
    return 0 if not rep.failed else 1


if __name__ == "__main__":
    sys.exit(main())
