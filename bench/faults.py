"""Fault runs of the delivery engine (issue 4, "Faults"): real workers, a real broker, the sandbox as an ESP.

    python bench/faults.py kill      [--recipients 20000] [--kills 3]      # kill -9 a worker three times
    python bench/faults.py flaky     [--recipients 1000]                   # 10 % 5xx, 5 % timeouts
    python bench/faults.py failover  [--recipients 4000]                   # one provider refuses everything
    python bench/faults.py redis     [--recipients 10000]                  # the broker/limits Redis restarts
    python bench/faults.py all                                             # each of them, with its defaults

Every run uses its own PostgreSQL database (mailer_bench_faults, created and migrated on first use, flushed
at the start of each scenario; FAULTS_DATABASE_URL overrides it), Redis db 6 on 127.0.0.1:6379
(FAULTS_REDIS_URL overrides it) as cache, limits store and Celery broker (flushed at the start),
`celery -A mailer_project worker` processes (prefork),
and the ESP sandbox (`manage.py run_sandbox`) in a process of its own. The redis scenario starts a private
`redis-server` on port 6390 (no persistence) and points everything at it, so that restarting it touches no
one else's Redis. Worker and sandbox logs go to var/faults/.

The script plays the part of celery beat, faster than the production schedule so a run takes minutes: every
0.2 s it runs the pump task (delivery.tasks.mailings_pump_task, in this process: it starts sending tasks for
mailings with due messages) and every second messages_reclaim_expired (leases of dead workers).

What is counted: the sandbox keeps one record per recipient per accepted call, so a recipient it holds once
got the campaign once; none: missing; more: duplicated. The allowance is what the issue tolerates:
- kill: messages whose ESP call was in flight when its worker died. The engine writes a SendAttempt row
  before each call and its end with the chunk's outcomes, so attempts with no finished_at are exactly the
  calls of the killed workers' unrecorded chunks. The report splits them, from the times the sandbox wrote
  its answers, into calls answered after the kill (really in flight) and calls answered before it (done, not
  recorded).
- flaky: calls that timed out (the sandbox takes the message after the client has given up).
- failover, redis: nothing.
The flaky run pulls retry times forward (the engine backs off 30 s, 60 s, 120 s ...; --compress-backoff caps
the wait at that many seconds, 0 keeps the real backoff): the rule checked is about what arrives, not when.
Exit status 0 when every scenario run passed.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter, defaultdict
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
LOG_DIR = ROOT / "var" / "faults"
DATABASE_URL = os.environ.get("FAULTS_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/mailer_bench_faults")
SHARED_REDIS_URL = os.environ.get("FAULTS_REDIS_URL", "redis://127.0.0.1:6379/6")
SCENARIOS = ("kill", "flaky", "failover", "redis")

HTML = "<html><body><h1>Hello {{ name }}</h1><p>News from {{ attributes.city }}.</p>" + "<p>Body text.</p>" * 5
TEXT = "Hello {{ name }}\nNews from {{ attributes.city }}.\n" + "Body text.\n" * 5


# --- processes ---------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _stop(proc: subprocess.Popen, *, grace: float = 20.0) -> None:
    """Stop a process this script started, with its children (each has a session, hence a group, of its own)."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


class Processes:
    """The sandbox, workers and private Redis of one scenario; all stopped on exit, whatever happened."""

    def __init__(self, scenario: str, worker_env: dict[str, str]) -> None:
        self.scenario = scenario
        self.worker_env = worker_env
        self.workers: dict[int, subprocess.Popen] = {}
        self.others: list[subprocess.Popen] = []
        self.sandbox_url = ""
        LOG_DIR.mkdir(parents=True, exist_ok=True)

    def __enter__(self) -> Processes:
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in self.workers.values():
            _stop(proc)
        for proc in self.others:
            _stop(proc, grace=5)

    def _log(self, name: str):
        return (LOG_DIR / f"{self.scenario}-{name}.log").open("a")

    def sandbox_start(self, *, latency_ms: float) -> str:
        port = _free_port()
        proc = subprocess.Popen(
            [sys.executable, "manage.py", "run_sandbox", "--port", str(port), "--webhook-url", "",
             "--open-rate", "0", "--click-rate", "0", "--latency-ms", str(latency_ms), "--seed", "1"],
            cwd=ROOT, env=os.environ.copy(), stdout=self._log("sandbox"), stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        self.others.append(proc)
        self.sandbox_url = f"http://127.0.0.1:{port}"
        _poll(lambda: _http_ok(f"{self.sandbox_url}/_sandbox/health"), 30, "the sandbox to answer")
        self.worker_env["ESP_SANDBOX_URL"] = self.sandbox_url
        # This process plays beat: its reclaim asks Postmark (the sandbox) what it accepted.
        from django.conf import settings

        settings.ANYMAIL = {**settings.ANYMAIL, "POSTMARK_API_URL": f"{self.sandbox_url}/postmark/",
                            "SENDGRID_API_URL": f"{self.sandbox_url}/sendgrid/v3/"}  # fmt: skip
        return self.sandbox_url

    def worker_start(self, index: int, *, concurrency: int) -> subprocess.Popen:
        log_path = LOG_DIR / f"{self.scenario}-worker{index}.log"
        before = log_path.stat().st_size if log_path.exists() else 0
        proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "mailer_project", "worker", "-P", "prefork",
             "-c", str(concurrency), "-n", f"faults{index}-{os.getpid()}@%h", "--loglevel", "INFO",
             "--without-gossip", "--without-mingle", "--without-heartbeat"],
            cwd=ROOT, env={**os.environ, **self.worker_env}, stdout=self._log(f"worker{index}"),
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        self.workers[index] = proc

        def ready() -> bool:
            if proc.poll() is not None:
                raise SystemExit(f"worker {index} exited; see {log_path}")
            with log_path.open() as log:
                log.seek(before)
                return " ready." in log.read()

        _poll(ready, 60, f"worker {index} to be ready")
        return proc

    def worker_kill9(self, index: int) -> None:
        """kill -9 of the whole worker: the main process and its pool children at once, as an OOM kill or a
        lost machine would."""
        proc = self.workers[index]
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    def redis_start(self, port: int) -> subprocess.Popen:
        proc = subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=self._log("redis"), stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        self.others.append(proc)
        _poll(lambda: _port_open(port), 10, f"redis-server on port {port}")
        return proc


def _poll(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise SystemExit(f"timed out after {timeout:.0f} s waiting for {what}")


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:  # noqa: S310 - loopback URL built here
            return response.status == 200
    except OSError:
        return False


def _http_json(url: str, data: dict[str, Any] | None = None) -> Any:
    body = json.dumps(data).encode() if data is not None else None
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})  # noqa: S310
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - loopback URL built here
        return json.load(response)


def sandbox_configure(url: str, **options: Any) -> None:
    _http_json(f"{url}/_sandbox/config", options)


def sandbox_received(url: str) -> dict[str, list[datetime]]:
    """Recipient -> the times the sandbox answered an accepted call for them (when its answer was written back;
    the time it stored the message when no answer went out)."""
    received: dict[str, list[datetime]] = defaultdict(list)
    offset = 0
    while True:
        page = _http_json(f"{url}/_sandbox/messages?limit=1000&offset={offset}")
        for item in page["results"]:
            for address in item["to"]:
                received[address.lower()].append(datetime.fromisoformat(item.get("replied_at") or item["received_at"]))
        offset += len(page["results"])
        if not page["results"] or offset >= page["count"]:
            return received


# --- the engine's side ---------------------------------------------------------------------------------------


class Beat:
    """What celery beat does in production, on a faster clock; errors (Redis away) are counted, not raised."""

    def __init__(self, *, compress_backoff: float = 0.0) -> None:
        self.compress_backoff = compress_backoff
        self.next_pump = self.next_reclaim = 0.0
        self.errors: Counter[str] = Counter()
        self.reclaimed = 0
        self.pulled_forward = 0

    def tick(self) -> None:
        from django.db import close_old_connections
        from django.utils import timezone

        from delivery.models import Message
        from delivery.services import messages_reclaim_expired
        from delivery.tasks import mailings_pump_task

        now = time.monotonic()
        try:
            if now >= self.next_reclaim:
                self.next_reclaim = now + 1.0
                self.reclaimed += messages_reclaim_expired()
                if self.compress_backoff:
                    cap = timezone.now() + timedelta(seconds=self.compress_backoff)
                    self.pulled_forward += Message.objects.filter(
                        status=Message.Status.QUEUED, next_attempt_at__gt=cap
                    ).update(next_attempt_at=cap)
            if now >= self.next_pump:
                self.next_pump = now + 0.2
                mailings_pump_task()
        except Exception as exc:  # noqa: BLE001 - beat survives an unreachable Redis too, and says so
            self.errors[type(exc).__name__] += 1
            close_old_connections()


def _flush(redis_url: str) -> None:
    import redis
    from django.core.management import call_command

    call_command("flush", interactive=False, verbosity=0)
    redis.Redis.from_url(redis_url).flushdb()  # db 6 (or the private server): this script's own


def _mailing(scenario: str, recipients: int, providers: list) -> Any:
    from delivery.models import Message
    from delivery.services.mailings import mailing_create

    mailing = mailing_create(
        subject_template="Hello {{ name }}", html_template=HTML, text_template=TEXT,
        from_email="Bench <bench@mailer.example>", name=f"faults: {scenario}",
        provider=providers[0] if len(providers) == 1 else None,
    )  # fmt: skip
    if len(providers) > 1:
        mailing.providers.set(providers)
    Message.objects.bulk_create(
        [
            Message(mailing=mailing, to_email=f"r{i:06d}@example.org",
                    context={"email": f"r{i:06d}@example.org", "name": f"Person {i}", "attributes": {"city": "Oslo"}})
            for i in range(recipients)
        ],
        batch_size=2000,
    )  # fmt: skip
    return mailing


def _statuses(mailing_id: int) -> dict[str, int]:
    from django.db.models import Count

    from delivery.models import Message

    rows = Message.objects.filter(mailing_id=mailing_id).values_list("status").annotate(n=Count("pk"))
    return dict(rows.values_list("status", "n"))


def _pending(statuses: dict[str, int]) -> int:
    return statuses.get("queued", 0) + statuses.get("sending", 0)


def _wait_until_sent(mailing_id: int, beat: Beat, *, timeout: float, started: float, step=None) -> dict[str, int]:
    """Tick beat until no message is queued or sending (or the deadline); `step` runs each round (faults)."""
    deadline = time.monotonic() + timeout
    last_print = 0.0
    while True:
        beat.tick()
        statuses = _statuses(mailing_id)
        if step is not None:
            step(statuses)
        if time.monotonic() - last_print >= 5:
            last_print = time.monotonic()
            errors = f"  beat errors {dict(beat.errors)}" if beat.errors else ""
            print(f"  {time.monotonic() - started:6.1f} s  {statuses}{errors}", flush=True)
        if _pending(statuses) == 0 and (step is None or getattr(step, "done", True)):
            return statuses
        if time.monotonic() > deadline:
            print(f"  gave up waiting after {timeout:.0f} s", flush=True)
            return statuses
        time.sleep(0.1)


# --- the report ----------------------------------------------------------------------------------------------


def _tally(mailing_id: int, received: dict[str, list[datetime]]) -> dict[str, Any]:
    from delivery.models import Message

    addresses = list(Message.objects.filter(mailing_id=mailing_id).values_list("to_email", flat=True))
    counts = {address: len(received.get(address.lower(), [])) for address in addresses}
    ours = {address.lower() for address in addresses}
    return {
        "recipients": len(addresses),
        "once": sum(1 for n in counts.values() if n == 1),
        "missing": sorted(a for a, n in counts.items() if n == 0),
        "duplicated": sorted(a for a, n in counts.items() if n > 1),
        "extra_copies": sum(n - 1 for n in counts.values() if n > 1),
        "strangers": sum(len(times) for address, times in received.items() if address not in ours),
    }


def _print_tally(tally: dict[str, Any], statuses: dict[str, int], allowance: int, allowance_what: str) -> None:
    print(f"  recipients              {tally['recipients']}")
    print(f"  delivered exactly once  {tally['once']}")
    print(f"  missing                 {len(tally['missing'])}  {tally['missing'][:5] if tally['missing'] else ''}")
    print(f"  duplicated              {len(tally['duplicated'])} ({tally['extra_copies']} extra copies)")
    print(f"  allowance               {allowance}  ({allowance_what})")
    print(f"  message rows by status  {statuses}")
    if tally["strangers"]:
        print(f"  unknown recipients at the sandbox: {tally['strangers']}")


def _verdict(name: str, checks: list[tuple[str, bool]]) -> bool:
    passed = all(ok for _, ok in checks)
    for what, ok in checks:
        print(f"  [{'ok' if ok else 'FAILED'}] {what}")
    print(f"{name}: {'PASS' if passed else 'FAIL'}", flush=True)
    return passed


# --- scenarios -----------------------------------------------------------------------------------------------


def scenario_kill(args: argparse.Namespace, env: dict[str, str]) -> bool:
    """kill -9 of a worker `--kills` times during the send; restart it each time."""
    from django.utils import timezone

    from delivery.models import Provider, SendAttempt
    from delivery.services.reclaim import CONFIRMED_NOTE
    from delivery.tasks import mailing_send_start

    env["MAILER_LEASE_SECONDS"] = str(args.lease)
    with Processes("kill", env) as procs:
        url = procs.sandbox_start(latency_ms=args.latency_ms)
        for index in range(args.workers):
            procs.worker_start(index, concurrency=args.concurrency)
        provider = Provider.objects.create(name="faults-postmark", kind=Provider.Kind.POSTMARK)
        mailing = _mailing("kill", args.recipients, [provider])
        beat = Beat()
        thresholds = [int(args.recipients * (i + 1) / (args.kills + 1)) for i in range(args.kills)]
        kills: list[datetime] = []

        def step(statuses: dict[str, int]) -> None:
            step.done = len(kills) == len(thresholds)  # type: ignore[attr-defined]
            if step.done or statuses.get("sent", 0) < thresholds[len(kills)]:  # type: ignore[attr-defined]
                return
            victim = len(kills) % args.workers
            kills.append(timezone.now())  # taken just before: a copy the sandbox stores after it was in flight
            procs.worker_kill9(victim)
            print(f"  kill -9 worker {victim} at {statuses.get('sent', 0)} sent; restarting it", flush=True)
            procs.worker_start(victim, concurrency=args.concurrency)

        step.done = False  # type: ignore[attr-defined]
        started = time.monotonic()
        mailing_send_start(mailing.pk, parallelism=args.workers * args.concurrency)
        statuses = _wait_until_sent(mailing.pk, beat, timeout=args.timeout, started=started, step=step)
        elapsed = time.monotonic() - started
        received = sandbox_received(url)

    unfinished = list(
        SendAttempt.objects.filter(message__mailing=mailing, finished_at__isnull=True).values_list(
            "message__to_email", "started_at"
        )
    )
    tally = _tally(mailing.pk, received)
    # Split the killed workers' calls by what the sandbox saw. A recipient with an unfinished attempt and n copies
    # had n - 1 of them from killed calls (the last one is the resend that was recorded): answered after the kill
    # (in flight when the worker died) or before it (answered, but the outcome died with the worker's chunk). The
    # rest of the unfinished attempts never reached the sandbox (not yet started when the worker died).
    first_unfinished: dict[str, datetime] = {}
    for address, started_at in unfinished:
        first_unfinished[address] = min(started_at, first_unfinished.get(address, started_at))
    in_flight = answered_before = 0
    for address, started_at in first_unfinished.items():
        kill = next((k for k in kills if k >= started_at), kills[-1] if kills else started_at)
        for copy in sorted(received.get(address.lower(), []))[:-1]:
            if copy >= kill:
                in_flight += 1
            else:
                answered_before += 1
    never_arrived = len(unfinished) - in_flight - answered_before
    unfinished_addresses = {address for address, _ in unfinished}
    unexplained = [a for a in tally["duplicated"] if a not in unfinished_addresses]
    print(f"\nkill: {args.recipients} recipients, {args.workers} workers x {args.concurrency}, {len(kills)} kills "
          f"(lease {args.lease} s), {elapsed:.0f} s, {beat.reclaimed} leases reclaimed")  # fmt: skip
    _print_tally(tally, statuses, len(unfinished), "SendAttempt rows with no finished_at: the killed workers' calls")
    print(f"  of those calls: {in_flight} answered after the kill (in flight), {answered_before} answered before "
          f"it but not recorded, {never_arrived} never reached the sandbox")  # fmt: skip
    print(f"  calls in flight at the kills, as the issue counts them: {in_flight}; duplicates beyond them: "
          f"{max(tally['extra_copies'] - in_flight, 0)}")  # fmt: skip
    confirmed = SendAttempt.objects.filter(message__mailing=mailing, error=CONFIRMED_NOTE).count()
    print(f"  settled by asking the provider after the kills (recorded sent, not sent again): {confirmed}")
    return _verdict(
        "kill",
        [
            ("every recipient has the campaign", not tally["missing"]),
            ("every message row ended sent", statuses.get("sent", 0) == tally["recipients"]),
            ("duplicates within the allowance (unfinished attempts)", tally["extra_copies"] <= len(unfinished)),
            ("every duplicated recipient had an unfinished attempt", not unexplained),
            (
                "no duplicate beyond the calls in flight at the kills (issue's wording)",
                tally["extra_copies"] <= in_flight,
            ),
        ],  # fmt: skip
    )


def scenario_flaky(args: argparse.Namespace, env: dict[str, str]) -> bool:
    """The sandbox fails --fail-rate of calls with a 5xx and stalls --timeout-rate past the client's timeout."""
    from django.db.models import Q

    from delivery.models import Provider, SendAttempt
    from delivery.tasks import mailing_send_start

    env["FAULTS_ESP_TIMEOUT"] = str(args.esp_timeout)
    with Processes("flaky", env) as procs:
        url = procs.sandbox_start(latency_ms=args.latency_ms)
        sandbox_configure(url, fail_rate=args.fail_rate, fail_status=503, timeout_rate=args.timeout_rate,
                          timeout_seconds=args.esp_timeout * 2)  # fmt: skip
        for index in range(args.workers):
            procs.worker_start(index, concurrency=args.concurrency)
        providers = [
            Provider.objects.create(name="faults-postmark", kind=Provider.Kind.POSTMARK),
            Provider.objects.create(name="faults-sendgrid", kind=Provider.Kind.SENDGRID),
        ]
        mailing = _mailing("flaky", args.recipients, providers)
        beat = Beat(compress_backoff=args.compress_backoff)
        started = time.monotonic()
        mailing_send_start(mailing.pk, parallelism=args.workers * args.concurrency)
        statuses = _wait_until_sent(mailing.pk, beat, timeout=args.timeout, started=started)
        elapsed = time.monotonic() - started
        received = sandbox_received(url)

    attempts = SendAttempt.objects.filter(message__mailing=mailing)
    # The engine keeps the first line of the error ("HTTP network error: Error posting to ..."); the read
    # timeouts of the injected stalls are the only network errors of this run.
    timed_out = attempts.filter(Q(error__icontains="network error") | Q(error__icontains="timed out"))
    failed_5xx = attempts.filter(error__contains="HTTP 503").count()
    timed_out_addresses = set(timed_out.values_list("message__to_email", flat=True))
    tally = _tally(mailing.pk, received)
    unexplained = [a for a in tally["duplicated"] if a not in timed_out_addresses]
    print(f"\nflaky: {args.recipients} recipients, sandbox fails {args.fail_rate:.0%} (503) and stalls "
          f"{args.timeout_rate:.0%} (client timeout {args.esp_timeout:g} s), {elapsed:.0f} s; "
          f"{attempts.count()} calls, "
          f"{failed_5xx} answered 503, {timed_out.count()} timed out; {beat.pulled_forward} retry times pulled "
          f"forward to at most {args.compress_backoff:g} s")  # fmt: skip
    _print_tally(tally, statuses, timed_out.count(), "calls that timed out")
    return _verdict(
        "flaky",
        [
            ("every message delivered in the end", not tally["missing"]),
            ("every message row ended sent (none dead)", statuses.get("sent", 0) == tally["recipients"]),
            ("duplicates within the timed-out calls", tally["extra_copies"] <= timed_out.count()),
            ("every duplicated recipient had a timed-out call", not unexplained),
        ],
    )


def scenario_failover(args: argparse.Namespace, env: dict[str, str]) -> bool:
    """The primary (SendGrid) refuses every call with a 503 until the circuit has opened and a trial has
    failed; then it recovers. The backup (Postmark) is throttled so that sending outlasts the recovery."""
    from django.db.models import Count

    from delivery.circuit import circuit_state
    from delivery.models import Message, Provider, SendAttempt
    from delivery.tasks import mailing_send_start

    env["MAILER_CIRCUIT_FAILURES"] = os.environ["MAILER_CIRCUIT_FAILURES"] = str(args.circuit_failures)
    env["MAILER_CIRCUIT_COOLDOWN_SECONDS"] = os.environ["MAILER_CIRCUIT_COOLDOWN_SECONDS"] = str(args.cooldown)
    with Processes("failover", env) as procs:
        url = procs.sandbox_start(latency_ms=args.latency_ms)
        sandbox_configure(url, fail_next=[{"esp": "sendgrid", "status": 503, "times": 10**9}])
        for index in range(args.workers):
            procs.worker_start(index, concurrency=args.concurrency)
        primary = Provider.objects.create(name="faults-sendgrid", kind=Provider.Kind.SENDGRID, priority=10)
        backup = Provider.objects.create(
            name="faults-postmark", kind=Provider.Kind.POSTMARK, priority=20, max_rate=args.backup_rate
        )
        mailing = _mailing("failover", args.recipients, [primary, backup])
        beat = Beat()
        transitions: list[tuple[float, str]] = []
        recovered_at: list[float] = []

        def step(statuses: dict[str, int]) -> None:
            now = time.monotonic() - started
            try:
                state = circuit_state(provider_id=primary.pk)
            except Exception:  # noqa: BLE001 - a missed sample is no reason to stop the run
                return
            if not transitions or transitions[-1][1] != state:
                transitions.append((now, state))
                print(f"  {now:6.1f} s  primary circuit: {state}", flush=True)
            # Recover once the circuit has opened, half-opened and re-opened (a trial failed).
            states = [s for _, s in transitions]
            if not recovered_at and states.count("open") >= 2:
                sandbox_configure(url, fail_next=[])
                recovered_at.append(now)
                print(f"  {now:6.1f} s  primary recovers (the sandbox stops refusing)", flush=True)
            step.done = bool(recovered_at) and state == "closed"  # type: ignore[attr-defined]

        step.done = False  # type: ignore[attr-defined]
        started = time.monotonic()
        mailing_send_start(mailing.pk, parallelism=args.workers * args.concurrency)
        statuses = _wait_until_sent(mailing.pk, beat, timeout=args.timeout, started=started, step=step)
        elapsed = time.monotonic() - started
        received = sandbox_received(url)

    names = {primary.pk: "primary (sendgrid)", backup.pk: "backup (postmark)"}
    split = dict(
        Message.objects.filter(mailing=mailing, status=Message.Status.SENT)
        .values_list("provider_id")
        .annotate(n=Count("pk"))
        .values_list("provider_id", "n")
    )
    calls = (
        SendAttempt.objects.filter(message__mailing=mailing)
        .values_list("provider_id", "outcome")
        .annotate(n=Count("pk"))
        .order_by("provider_id", "outcome")
    )
    recovery = recovered_at[0] if recovered_at else None
    sent_primary_after = 0
    if recovery is not None:
        sent_primary_after = SendAttempt.objects.filter(
            message__mailing=mailing, provider=primary, outcome=SendAttempt.Outcome.SENT
        ).count()
    tally = _tally(mailing.pk, received)
    print(f"\nfailover: {args.recipients} recipients, primary refuses with 503 until recovery, backup limited to "
          f"{args.backup_rate:g}/s, circuit opens after {args.circuit_failures} failures, "
          f"cool-down {args.cooldown:g} s, "
          f"{elapsed:.0f} s")  # fmt: skip
    print("  circuit transitions of the primary: "
          + " -> ".join(f"{state} ({at:.1f} s)" for at, state in transitions))  # fmt: skip
    print("  messages sent per provider: " + ", ".join(f"{names[pk]} {n}" for pk, n in split.items()))
    print("  calls per provider and outcome: "
          + ", ".join(f"{names[pk]} {outcome} {n}" for pk, outcome, n in calls))  # fmt: skip
    _print_tally(tally, statuses, 0, "no call timed out, no worker died")
    states = [state for _, state in transitions]
    opened = "open" in states
    closed_after = recovery is not None and any(s == "closed" and at > recovery for at, s in transitions)
    return _verdict(
        "failover",
        [
            ("every recipient has the campaign", not tally["missing"]),
            ("nobody has it twice", not tally["duplicated"]),
            ("every message row ended sent", statuses.get("sent", 0) == tally["recipients"]),
            ("traffic failed over to the backup", split.get(backup.pk, 0) > 0),
            ("the primary's circuit opened", opened),
            ("the circuit closed after the primary recovered", closed_after),
            ("the primary took traffic again after its recovery", sent_primary_after > 0),
        ],
    )


def scenario_redis(args: argparse.Namespace, env: dict[str, str]) -> bool:
    """Redis (broker, cache, limits) shut down without saving mid-send, and started again empty."""
    from django.utils import timezone

    from delivery.models import Message, Provider, SendAttempt
    from delivery.tasks import mailing_send_start

    env["MAILER_LEASE_SECONDS"] = str(args.lease)
    with Processes("redis", env) as procs:
        redis_proc = procs.redis_start(args.redis_port)
        _flush(os.environ["REDIS_URL"])
        url = procs.sandbox_start(latency_ms=args.latency_ms)
        for index in range(args.workers):
            procs.worker_start(index, concurrency=args.concurrency)
        provider = Provider.objects.create(name="faults-postmark", kind=Provider.Kind.POSTMARK)
        mailing = _mailing("redis", args.recipients, [provider])
        beat = Beat()
        marks: dict[str, float] = {}
        sent_at_restart: list[int] = []
        down_wall: list[datetime] = []
        stranded: dict[str, float] = {"most": 0, "cleared": 0.0}

        def step(statuses: dict[str, int]) -> None:
            nonlocal redis_proc
            sent = statuses.get("sent", 0)
            now = time.monotonic() - started
            if "down" not in marks and sent >= args.recipients * 0.35:
                subprocess.run(["redis-cli", "-p", str(args.redis_port), "shutdown", "nosave"],
                               capture_output=True, timeout=10, check=False)  # fmt: skip
                redis_proc.wait(timeout=10)
                marks["down"] = now
                down_wall.append(timezone.now())
                print(f"  {now:6.1f} s  redis on port {args.redis_port} shut down (nosave) at {sent} sent", flush=True)
            elif "down" in marks and "up" not in marks and now - marks["down"] >= args.down_seconds:
                procs.others.remove(redis_proc)
                redis_proc = procs.redis_start(args.redis_port)
                marks["up"] = now
                sent_at_restart.append(sent)
                print(f"  {now:6.1f} s  redis started again, empty, at {sent} sent", flush=True)
            elif "up" in marks and "resumed" not in marks and sent > sent_at_restart[0]:
                marks["resumed"] = now
                print(f"  {now:6.1f} s  sending resumed ({now - marks['up']:.1f} s after the restart)", flush=True)
            if "up" in marks and not stranded["cleared"]:
                # Rows claimed before the outage and still `sending`: their chunk died with Redis, and only the
                # lease running out (reclaim) puts them back in the queue.
                stale = Message.objects.filter(
                    mailing_id=mailing.pk,
                    status=Message.Status.SENDING,
                    lease_expires_at__lte=down_wall[0] + timedelta(seconds=args.lease),
                ).count()
                stranded["most"] = max(stranded["most"], stale)
                if not stale:
                    stranded["cleared"] = now - marks["up"]
            step.done = "resumed" in marks and bool(stranded["cleared"])  # type: ignore[attr-defined]

        step.done = False  # type: ignore[attr-defined]
        started = time.monotonic()
        mailing_send_start(mailing.pk, parallelism=args.workers * args.concurrency)
        statuses = _wait_until_sent(mailing.pk, beat, timeout=args.timeout, started=started, step=step)
        elapsed = time.monotonic() - started
        received = sandbox_received(url)
        workers_alive = all(proc.poll() is None for proc in procs.workers.values())

    unfinished = SendAttempt.objects.filter(message__mailing=mailing, finished_at__isnull=True).count()
    tally = _tally(mailing.pk, received)
    print(f"\nredis: {args.recipients} recipients, private redis-server on port {args.redis_port} down for "
          f"{args.down_seconds:g} s mid-send, {elapsed:.0f} s; "
          f"beat errors while it was away: {dict(beat.errors)}")  # fmt: skip
    _print_tally(tally, statuses, 0, f"no worker died ({unfinished} unfinished attempts)")
    print(f"  claimed before the outage and left `sending` until their lease ({args.lease} s) ran out, at most: "
          f"{stranded['most']:.0f}, back in the queue {stranded['cleared']:.1f} s after the restart")  # fmt: skip
    return _verdict(
        "redis",
        [
            ("sending resumed by itself after the restart", "resumed" in marks),
            ("the workers survived", workers_alive),
            ("nothing lost", not tally["missing"] and statuses.get("sent", 0) == tally["recipients"]),
            ("nothing sent twice", not tally["duplicated"]),
        ],
    )


# --- main ----------------------------------------------------------------------------------------------------


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenario", choices=[*SCENARIOS, "all"])
    parser.add_argument("--recipients", type=int, default=None, help="default: per scenario")
    parser.add_argument("--workers", type=int, default=2, help="worker processes")
    parser.add_argument("--concurrency", type=int, default=2, help="prefork children per worker")
    parser.add_argument("--latency-ms", type=float, default=None, help="sandbox answer delay; default per scenario")
    parser.add_argument("--timeout", type=float, default=600, help="seconds to wait for the send to finish")
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--lease", type=int, default=20, help="MAILER_LEASE_SECONDS (kill, redis)")
    parser.add_argument("--fail-rate", type=float, default=0.10)
    parser.add_argument("--timeout-rate", type=float, default=0.05)
    parser.add_argument("--esp-timeout", type=float, default=1.0, help="anymail's HTTP timeout in the flaky run")
    parser.add_argument("--compress-backoff", type=float, default=1.0, help="flaky: cap retry waits (0: real)")
    parser.add_argument("--circuit-failures", type=int, default=5)
    parser.add_argument("--cooldown", type=float, default=5.0, help="circuit cool-down in the failover run")
    parser.add_argument("--backup-rate", type=float, default=100.0, help="failover: the backup's max rate")
    parser.add_argument("--redis-port", type=int, default=6390, help="the redis run's private redis-server")
    parser.add_argument("--down-seconds", type=float, default=5.0)
    args = parser.parse_args()
    defaults = {"kill": (20000, 10.0), "flaky": (1000, 5.0), "failover": (4000, 5.0), "redis": (10000, 10.0)}
    if args.scenario != "all":
        recipients, latency = defaults[args.scenario]
        args.recipients = args.recipients or recipients
        args.latency_ms = latency if args.latency_ms is None else args.latency_ms
    return args


def _run_all() -> int:
    failed = []
    for name in SCENARIOS:
        print(f"\n=== {name} ===", flush=True)
        if subprocess.run([sys.executable, __file__, name], check=False).returncode != 0:
            failed.append(name)
    print(f"\nall: {'PASS' if not failed else 'FAIL (' + ', '.join(failed) + ')'}")
    return 1 if failed else 0


def _database_create() -> None:
    name = DATABASE_URL.rsplit("/", 1)[-1]
    if DATABASE_URL.startswith("postgres"):
        subprocess.run(["createdb", "-h", "127.0.0.1", "-U", "postgres", name], capture_output=True, check=False)


def main() -> int:
    args = _arguments()
    if args.scenario == "all":
        return _run_all()
    if args.scenario == "redis":
        if _port_open(args.redis_port):
            raise SystemExit(f"port {args.redis_port} is taken: the redis run needs it for a private redis-server")
        redis_url = f"redis://127.0.0.1:{args.redis_port}/0"
    else:
        redis_url = SHARED_REDIS_URL
    # This process and the workers share the database, Redis and the limits' key prefix.
    common = {
        "DJANGO_SETTINGS_MODULE": "bench.faults_settings",
        "DATABASE_URL": DATABASE_URL,
        "REDIS_URL": redis_url,
        "CELERY_BROKER_URL": redis_url,
        "MAILER_LIMITS_KEY_PREFIX": f"faults:{args.scenario}:",
    }
    os.environ.update(common)
    sys.path.insert(0, str(ROOT))
    _database_create()
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    if args.scenario == "redis":
        call_command("flush", interactive=False, verbosity=0)  # its Redis is flushed once it has started
    else:
        _flush(redis_url)
    runner = {"kill": scenario_kill, "flaky": scenario_flaky, "failover": scenario_failover,
              "redis": scenario_redis}[args.scenario]  # fmt: skip
    return 0 if runner(args, dict(common)) else 1


if __name__ == "__main__":
    sys.exit(main())
