"""The environment contract of the client matrix (tests/clients/run.sh) and
the `ok - name` / `not ok - name: reason` report, shared by the Python
programs."""

import os
import sys
import traceback


def env(name):
    value = os.environ.get(name)
    if not value:
        sys.exit(f"not ok - environment: {name} is not set (run tests/clients/run.sh)")
    return value


class Settings:
    """What run.sh passes every program."""

    def __init__(self):
        self.host = env("DYNABASE_CLIENT_HOST")
        self.port = int(env("DYNABASE_CLIENT_PORT"))
        self.role = env("DYNABASE_CLIENT_ROLE")
        self.password = env("DYNABASE_CLIENT_PASSWORD")
        self.database = env("DYNABASE_CLIENT_DATABASE")
        # The main organization (a tier with room for the ordinary checks).
        self.org = env("DYNABASE_CLIENT_ORG")
        self.statement_timeout = env("DYNABASE_CLIENT_ORG_STATEMENT_TIMEOUT")
        # The FREE organization the refusals are checked on.
        self.free_org = env("DYNABASE_CLIENT_FREE_ORG")
        self.free_connections = int(env("DYNABASE_CLIENT_FREE_CONNECTIONS"))
        self.free_statement_timeout = env("DYNABASE_CLIENT_FREE_STATEMENT_TIMEOUT")

    def user(self, org):
        return f"{self.role}.{org}"


class Report:
    def __init__(self):
        self.failed = 0

    def ok(self, name):
        print(f"ok - {name}", flush=True)

    def not_ok(self, name, reason):
        self.failed += 1
        reason = " ".join(str(reason).split())
        print(f"not ok - {name}: {reason}", flush=True)

    def run(self, name, check, *args):
        try:
            check(*args)
        except Exception as e:  # noqa: BLE001 - every failure is reported
            self.not_ok(name, f"{type(e).__name__}: {e}")
            if os.environ.get("DYNABASE_CLIENT_VERBOSE"):
                traceback.print_exc()
        else:
            self.ok(name)

    async def run_async(self, name, check, *args):
        try:
            await check(*args)
        except Exception as e:  # noqa: BLE001
            self.not_ok(name, f"{type(e).__name__}: {e}")
            if os.environ.get("DYNABASE_CLIENT_VERBOSE"):
                traceback.print_exc()
        else:
            self.ok(name)

    def exit(self):
        sys.exit(1 if self.failed else 0)


def expect(condition, what):
    if not condition:
        raise AssertionError(what)


def expect_contains(text, part, what):
    if text is None or part.lower() not in text.lower():
        raise AssertionError(f"{what}: {part!r} not in {text!r}")


def expect_connection_refusal(sqlstate, message, hint, org):
    """The proxy's FATAL 53300 (src/proxy/client_error.rs)."""
    expect(sqlstate == "53300", f"SQLSTATE {sqlstate!r}, expected 53300")
    expect_contains(message, "connection limit reached", "message")
    expect_contains(message, org, "message names the organization")
    expect_contains(message, "tier FREE", "message names the tier")
    expect_contains(hint, "upgrade to tier", "hint")


def expect_rate_refusal(sqlstate, message, detail, hint, org):
    """The proxy's ERROR 53400 (docs/rate-limits.md)."""
    expect(sqlstate == "53400", f"SQLSTATE {sqlstate!r}, expected 53400")
    expect_contains(message, "rate limit", "message")
    expect_contains(message, org, "message names the organization")
    expect_contains(message, "tier FREE", "message names the tier")
    expect_contains(detail, "retry after", "detail")
    expect_contains(hint, "upgrade to tier", "hint")
