#!/usr/bin/env python3
"""Webhook traffic for load-tests/soak.sh: signed Stripe events that change tiers.

    soak_webhooks.py --work DIR --secret WHSEC --token ADMIN --http PORT_A PORT_B --orgs ORG...

Until DIR/stop exists, for each org in turn: an operator resets it to FREE
(PUT /admin/orgs/{id}/tier), then a `customer.subscription.updated` event
moves it to STARTER and another to PRO. Each event has a new id and is
delivered like Stripe delivers: signed at the delivery time, POSTed to one
replica and again (to the other one, when it answers) until a 2xx; once the
event is `done`, the same event id is delivered a second time, which must
change nothing. Every attempt is appended to DIR/webhooks.jsonl; the
reconciliation (soak_reconcile.py) checks each event's effect is there once.
"""

import argparse
import hashlib
import hmac
import json
import os
import sys
import time
import urllib.error
import urllib.request

PRICES = {"starter": "price_soak_starter", "pro": "price_soak_pro"}
FIXTURE_PATH = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "stripe", "customer.subscription.updated.json"
)
with open(FIXTURE_PATH) as f:
    FIXTURE = json.load(f)


def now_ms():
    return int(time.time() * 1000)


def request(port, method, path, body=None, headers=None, timeout=10):
    """(status, parsed JSON or text); status 0 when nothing answered."""
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=body.encode() if isinstance(body, str) else body,
        method=method,
        headers=headers or {},
    )
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


class Sender:
    def __init__(self, args):
        self.args = args
        self.stop_file = os.path.join(args.work, "stop")
        self.log = open(os.path.join(args.work, "webhooks.jsonl"), "a", buffering=1)
        self.turn = 0
        self.seq = 0
        self.run_id = format(int(time.time()), "x")

    def stopped(self):
        return os.path.exists(self.stop_file)

    def record(self, **fields):
        fields["at"] = now_ms()
        self.log.write(json.dumps(fields) + "\n")

    def ports(self):
        """Both replicas, starting with a different one each call."""
        self.turn += 1
        a, b = self.args.http
        return (a, b) if self.turn % 2 else (b, a)

    def admin(self, method, path, body=None):
        headers = {"Authorization": f"Bearer {self.args.token}", "Content-Type": "application/json"}
        status, answer = 0, None
        for port in self.ports():
            status, answer = request(port, method, path, json.dumps(body) if body else None, headers)
            if status:
                break
        return status, answer

    def reset(self, org):
        """Operator sets FREE, retried until the store takes it."""
        deadline = time.time() + 300
        while time.time() < deadline:
            status, answer = self.admin("PUT", f"/admin/orgs/{org}/tier", {"tier": "free", "reason": "soak reset"})
            self.record(kind="reset", org=org, status=status)
            if status == 200:
                return True
            time.sleep(2)
        return False

    def event_body(self, event_id, org, tier):
        """The fixture tests use (shaped like Stripe's own), for this org and price."""
        e = json.loads(json.dumps(FIXTURE))
        e["id"] = event_id
        e["created"] = int(time.time())
        o = e["data"]["object"]
        o["id"] = f"sub_soak_{org}"
        o["customer"] = f"cus_soak_{org}"
        o["status"] = "active"
        o["metadata"] = {"dynabase_org": org}
        item = o["items"]["data"][0]
        item["subscription"] = o["id"]
        item["price"]["id"] = PRICES[tier]
        item["price"]["lookup_key"] = None
        item["plan"]["id"] = PRICES[tier]
        return json.dumps(e)

    def deliver(self, event_id, body, delivery):
        """POSTs until a 2xx, signing each attempt at its own time."""
        deadline = time.time() + 600
        while time.time() < deadline:
            for port in self.ports():
                t = int(time.time())
                sig = hmac.new(self.args.secret.encode(), f"{t}.{body}".encode(), hashlib.sha256).hexdigest()
                status, answer = request(
                    port,
                    "POST",
                    "/webhooks/stripe",
                    body,
                    {"Content-Type": "application/json", "Stripe-Signature": f"t={t},v1={sig}"},
                )
                duplicate = answer.get("duplicate") if isinstance(answer, dict) else None
                self.record(kind="delivery", event=event_id, delivery=delivery, port=port, status=status, duplicate=duplicate)
                if 200 <= status < 300:
                    return duplicate
                if status:
                    break  # answered (e.g. 503 while the store is down): retry later like Stripe
            time.sleep(2)
        return None

    def wait_done(self, event_id):
        deadline = time.time() + 300
        status_seen = None
        while time.time() < deadline:
            status, answer = self.admin("GET", f"/admin/stripe/events/{event_id}")
            if status == 200 and isinstance(answer, dict):
                status_seen = answer.get("status")
                if status_seen in ("done", "ignored"):
                    break
            time.sleep(1)
        self.record(kind="outcome", event=event_id, status=status_seen)
        return status_seen

    def event(self, org, tier, previous):
        self.seq += 1
        event_id = f"evt_soak_{self.run_id}_{self.seq:05d}"
        body = self.event_body(event_id, org, tier)
        self.record(kind="sent", event=event_id, org=org, tier=tier, previous=previous)
        self.deliver(event_id, body, 1)
        self.wait_done(event_id)
        # Stripe delivers at least once: the same event again changes nothing.
        self.deliver(event_id, body, 2)

    def run(self):
        while not self.stopped():
            for org in self.args.orgs:
                if self.stopped():
                    break
                if not self.reset(org):
                    continue
                self.event(org, "starter", "free")
                self.event(org, "pro", "starter")
                time.sleep(1)
        self.log.close()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--work", required=True)
    p.add_argument("--secret", required=True)
    p.add_argument("--token", required=True)
    p.add_argument("--http", nargs=2, type=int, required=True)
    p.add_argument("--orgs", nargs="+", required=True)
    Sender(p.parse_args()).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
