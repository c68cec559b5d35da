"""Webhook inbox throughput: SendGrid-format POSTs of 1,000 events against gunicorn on PostgreSQL, stored in the
EspEvent inbox, then the same POSTs against the same view with a tracking receiver that does nothing.

    createdb -h 127.0.0.1 -U postgres mailer_bench_webhooks
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/mailer_bench_webhooks REDIS_URL=redis://127.0.0.1:6379/6 \\
    CELERY_BROKER_URL=redis://127.0.0.1:6379/7 .venv/bin/python bench/webhooks.py \\
        [--events 200000] [--batch 1000] [--clients 4] [--workers 2] [--messages 20000] [--rounds 1]
        [--replay] [--skip-baseline] [--py-spy SECONDS]

The script migrates the database and, each round, empties its EspEvent table and recreates the bench's Mailing
(--messages Messages, already sent); it removes the apply task requests it caused from the broker's queue (no
worker runs: only storing is measured). The bodies are built before the clock starts: a delivered / open / click /
bounce mix for the Mailing's messages, and 10 % for messages this installation never sent. Each run starts
`gunicorn` (--workers sync workers, DEBUG off, as in production) on a free local port, warms each worker up, then
--clients threads POST the bodies with basic auth; the clock runs from the first POST to the last answer.

- inbox: the project's settings. Every POST must answer 200, and the EspEvent count after must be exactly the
  events posted (each POST is acknowledged only once its events are committed).
- baseline: bench.settings_webhooks_baseline, the same URLs, views and middleware with a receiver that does
  nothing; nothing may be stored.
- --replay: after the inbox run, the same POSTs again on the same server: every one answers 200 and the count
  does not move.

Also printed: the CPU the gunicorn workers and the PostgreSQL backends of this database spent per event, and how
busy the whole machine was (other people's work included). --py-spy samples the gunicorn workers during the
inbox run and prints where their time went. Ctrl-C stops everything started here.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import queue
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
VAR = ROOT / "var"
SECRET = "bench:bench-webhooks"  # noqa: S105 (the bench server's own basic-auth secret)
MAILING_NAME = "bench-webhooks"
GOAL_RATE = 5000.0
GOAL_RATIO = 0.5
BASE_TIMESTAMP = 1_764_072_000
TRACKING_PATH = "/webhooks/sendgrid/tracking/"
DESKTOP_AGENT = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/130.0"
PHONE_AGENT = "Mozilla/5.0 (iPhone; CPU iPhone OS 18_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko)"


# --- bodies in SendGrid's Event Webhook format (custom args flattened into each event, as SendGrid sends them)


def _event(kind: str, k: int, email: str, anymail_id: str, mailer_msg: int, rng: random.Random) -> dict:
    event: dict = {
        "email": email,
        "timestamp": BASE_TIMESTAMP + k // 50,
        "smtp-id": f"<{anymail_id[:13]}.{k % 997}@ismtpd-bench>",
        "event": kind,
        "category": ["newsletter"],
        "sg_event_id": base64.urlsafe_b64encode(uuid.UUID(int=rng.getrandbits(128)).bytes).decode().rstrip("="),
        "sg_message_id": f"{anymail_id[:22]}.filter0001.{k % 100000}.0",
        "anymail_id": anymail_id,
        "mailer_msg": str(mailer_msg),
    }
    if kind == "delivered":
        event.update({"ip": "168.1.1.1", "response": "250 2.0.0 OK  1764072000 bench", "tls": 1})
    elif kind == "open":
        event.update({"ip": "66.249.84.5", "sg_machine_open": False, "useragent": DESKTOP_AGENT})
    elif kind == "click":
        event.update({"ip": "66.249.84.5", "url": f"https://mailer.example/articles/{k % 40}?utm_source=news",
                      "url_offset": {"index": k % 3, "type": "html"}, "useragent": PHONE_AGENT})  # fmt: skip
    elif kind == "bounce":
        event.update({"bounce_classification": "Invalid Address", "type": "bounce", "status": "5.1.1",
                      "reason": "550 5.1.1 The email account that you tried to reach does not exist."})  # fmt: skip
    return event


def build_bodies(*, events: int, batch: int, messages: list[tuple[int, str, str]], seed: int) -> list[bytes]:
    """`events` events in POSTs of `batch`: 90 % about `messages` (pk, address, ESP id), 10 % about unknown ones."""
    rng = random.Random(seed)
    kinds = ["delivered"] * 40 + ["open"] * 30 + ["click"] * 15 + ["bounce"] * 5
    bodies = []
    for first in range(0, events, batch):
        posted = []
        for k in range(first, min(first + batch, events)):
            if k % 10 == 9:  # a message this installation never sent
                unknown = 900_000_000 + k
                posted.append(
                    _event(
                        rng.choice(kinds), k, f"gone{k}@elsewhere.example", str(uuid.UUID(int=unknown)), unknown, rng
                    )
                )  # noqa: E501
            else:
                pk, email, anymail_id = messages[rng.randrange(len(messages))]
                posted.append(_event(rng.choice(kinds), k, email, anymail_id, pk, rng))
        bodies.append(json.dumps(posted).encode())
    return bodies


# --- processes, CPU and load


def _cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(f) for f in fields[11:13]) / os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> list[int]:
    found = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            found += [int(c) for c in (task / "children").read_text().split()]
    except OSError:
        pass
    return found


def _machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, from /proc/stat."""
    fields = [int(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    ticks = os.sysconf("SC_CLK_TCK")
    return (sum(fields[:8]) - idle) / ticks, sum(fields[:8]) / ticks


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """gunicorn in its own session, so that only this script decides when it and its workers stop.

    --preload: the application is loaded before the workers fork, so that every worker is ready when /health/
    first answers (without it, a slow worker could still be importing Django when the clock starts)."""

    def __init__(self, *, settings_module: str, workers: int, name: str) -> None:
        self.port = _free_port()
        self.log = VAR / f"bench-webhooks-{name}.log"
        path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
        env = {**os.environ, "DJANGO_SETTINGS_MODULE": settings_module, "PYTHONPATH": path}
        command = [sys.executable, "-m", "gunicorn", "mailer_project.wsgi:application", "--workers", str(workers),
                   "--bind", f"127.0.0.1:{self.port}", "--timeout", "120", "--graceful-timeout", "5", "--preload",
                   "--error-logfile", "-", "--log-level", "warning"]  # fmt: skip
        with open(self.log, "wb") as out:
            self.process = subprocess.Popen(
                command, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + 60
        while True:
            if self.process.poll() is not None:
                raise SystemExit(f"gunicorn exited with {self.process.returncode}; see {self.log}")
            try:
                status, _ = request("GET", self.port, "/health/")
                if status == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"gunicorn did not answer /health/ within 60 s; see {self.log}")
            time.sleep(0.2)

    @property
    def workers(self) -> list[int]:
        return _children(self.process.pid)

    def cpu(self) -> float:
        return sum(_cpu_seconds(pid) for pid in [self.process.pid, *self.workers])

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.process.pid, signal.SIGKILL)  # any worker left behind in its session
        except ProcessLookupError:
            pass
        self.process.wait(5)


def request(method: str, port: int, path: str, body: bytes | None = None) -> tuple[int, bytes]:
    headers = {}
    if body is not None:
        auth = base64.b64encode(SECRET.encode()).decode()
        headers = {"Content-Type": "application/json", "Authorization": f"Basic {auth}",
                   "User-Agent": "SendGrid Event API"}  # fmt: skip
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


@dataclass
class Posted:
    elapsed: float = 0.0
    statuses: Counter[int] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)


def post_all(port: int, bodies: list[bytes], clients: int) -> Posted:
    """POST every body from `clients` threads; the clock runs from the first POST to the last answer."""
    work: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
    for body in bodies:
        work.put(body)
    for _ in range(clients):
        work.put(None)
    result = Posted()
    lock = threading.Lock()

    def client() -> None:
        while (body := work.get()) is not None:
            try:
                status, answer = request("POST", port, TRACKING_PATH, body)
            except OSError as exc:
                status, answer = 0, str(exc).encode()
            with lock:
                result.statuses[status] += 1
                if status != 200 and len(result.errors) < 5:
                    result.errors.append(f"{status}: {answer[:300]!r}")

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    result.elapsed = time.perf_counter() - started
    return result


# --- the database side


def _prepare_round(messages: int) -> list[tuple[int, str, str]]:
    from django.db import connection

    from delivery.models import Mailing, Message

    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE webhooks_espevent")
    Mailing.objects.filter(name=MAILING_NAME).delete()
    mailing = Mailing.objects.create(
        name=MAILING_NAME, subject_template="News", text_template="Hello", from_email="news@mailer.example"
    )
    rows = Message.objects.bulk_create(
        [
            Message(mailing=mailing, to_email=f"r{i}@bench.example", status=Message.Status.SENT,
                    esp_message_id=str(uuid.UUID(int=i + 1)))
            for i in range(messages)
        ],
        batch_size=5000,
    )  # fmt: skip
    return [(row.pk, row.to_email, row.esp_message_id) for row in rows]


def _events_stored() -> int:
    from webhooks.models import EspEvent

    return EspEvent.objects.count()


def _backend_cpu() -> dict[int, float]:
    """CPU so far of each PostgreSQL backend connected to this database (the gunicorn workers' connections)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        return {pid: _cpu_seconds(pid) for (pid,) in cursor.fetchall()}


def _forget_apply_requests() -> None:
    """No worker runs here: drop the apply tasks the stored POSTs asked for, and the flag that throttles them."""
    from django.core.cache import cache

    from mailer_project.celery import app
    from webhooks.services import APPLY_REQUESTED_KEY

    app.control.purge()
    cache.delete(APPLY_REQUESTED_KEY)


# --- one run


@dataclass
class Run:
    name: str
    events: int
    posted: Posted
    stored: int
    server_cpu: float
    db_cpu: float
    client_cpu: float
    machine: tuple[float, float]
    load: tuple[float, float]

    @property
    def rate(self) -> float:
        return self.events / self.posted.elapsed

    @property
    def cpu_per_event(self) -> float:
        """Microseconds of CPU the server side (gunicorn workers and their PostgreSQL backends) spent per event."""
        return 1e6 * (self.server_cpu + self.db_cpu) / self.events

    def line(self) -> str:
        busy, total = self.machine
        return (
            f"{self.name:9s} {self.events} events in {self.posted.elapsed:6.1f} s = {self.rate:7.0f} events/s; "
            f"answers {dict(self.posted.statuses)}; stored {self.stored}; CPU per event: gunicorn "
            f"{1e6 * self.server_cpu / self.events:.0f} us, PostgreSQL {1e6 * self.db_cpu / self.events:.0f} us, "
            f"client {1e6 * self.client_cpu / self.events:.0f} us; machine {100 * busy / total:.0f} % busy, "
            f"load {self.load[0]:.1f} -> {self.load[1]:.1f}"
        )


def run(name: str, server: Server, bodies: list[bytes], events: int, clients: int, py_spy: int = 0) -> Run:
    stored_before = _events_stored()
    backends = _backend_cpu()
    server_cpu, client_cpu = server.cpu(), time.process_time()
    machine, load = _machine_busy(), os.getloadavg()[0]
    profiler = _py_spy_start(server, py_spy) if py_spy else None
    try:
        posted = post_all(server.port, bodies, clients)
        machine_after, load_after = _machine_busy(), os.getloadavg()[0]
        server_cpu, client_cpu = server.cpu() - server_cpu, time.process_time() - client_cpu
        db_cpu = sum(cpu - backends.get(pid, 0.0) for pid, cpu in _backend_cpu().items())
        if profiler is not None:
            profiler.wait()
    finally:
        if profiler is not None and profiler.poll() is None:
            profiler.kill()  # interrupted: py-spy would otherwise sample on alone until its --duration ends
    result = Run(
        name=name, events=events, posted=posted, stored=_events_stored() - stored_before, server_cpu=server_cpu,
        db_cpu=db_cpu, client_cpu=client_cpu, load=(load, load_after),
        machine=(machine_after[0] - machine[0], machine_after[1] - machine[1]),
    )  # fmt: skip
    print(result.line(), flush=True)
    for error in posted.errors:
        print(f"  refused: {error}")
    return result


def warm_up(server: Server, seed: int, messages: list[tuple[int, str, str]], workers: int) -> int:
    """A few small POSTs, so that each worker has its database connection and code loaded; returns events posted."""
    bodies = build_bodies(events=10 * 4 * workers, batch=10, messages=messages, seed=seed)
    posted = post_all(server.port, bodies, 2 * workers)
    if posted.statuses != Counter({200: len(bodies)}):
        raise SystemExit(f"warm-up POSTs answered {dict(posted.statuses)}: {posted.errors}; see {server.log}")
    return 10 * len(bodies)


# --- profile


def _py_spy_start(server: Server, seconds: int) -> subprocess.Popen[bytes]:
    py_spy = Path(sys.executable).with_name("py-spy")
    out = VAR / "bench-webhooks-py-spy.txt"
    command = [str(py_spy), "record", "--format", "raw", "--subprocesses", "--rate", "250", "--nonblocking",
               "--duration", str(seconds), "--pid", str(server.process.pid), "--output", str(out)]  # fmt: skip
    print(f"  py-spy: sampling the gunicorn workers for {seconds} s into {out}", flush=True)
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    time.sleep(1)  # let it attach before the clock starts
    return process


# Where a sample's stack is: the first part, in this order, that any of its frames names.
PROFILE_PARTS = [
    ("inbox: INSERT (esp_events_store)", ("esp_events_store",)),
    ("inbox: payload JSON (_payload)", ("_payload (webhooks/inbox.py",)),
    ("inbox: the rest of the row (esp_event_row)", ("esp_event_row",)),
    ("signal dispatch + receiver call", ("tracking_event_store", "esp_event_add", "send (django/dispatch")),
    ("anymail: parse (json.loads + events)", ("parse_events",)),
    ("anymail + Mailer checks: validators", ("run_validators",)),
    ("gate: JSON check (_json_problem)", ("_json_problem",)),
    ("commit", ("commit",)),
    ("request body read", ("_get_raw_body", "body (django/http/request.py", "read (django/core/handlers/wsgi")),
    ("gunicorn: waiting for a request (accept)", ("accept (gunicorn", "wait (gunicorn", "sleep (gunicorn")),
]


def profile_summary(path: Path) -> None:
    parts: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        if not any("wsgi" in frame or "gunicorn" in frame for frame in frames):
            continue  # the master process
        total += count
        leaves[frames[-1].split(" (")[0] + " (" + frames[-1].rsplit("/", 1)[-1]] += count
        for name, needles in PROFILE_PARTS:
            if any(needle in frame for frame in frames for needle in needles):
                parts[name] += count
                break
        else:
            parts["other (Django handler and middleware, gunicorn, response)"] += count
    if not total:
        print("py-spy: no samples")
        return
    print(f"py-spy profile of the gunicorn workers (samples while busy or idle): {total}")
    for name, count in parts.most_common():
        print(f"  {100 * count / total:5.1f} %  {name}")
    print("  innermost functions:")
    for name, count in leaves.most_common(15):
        print(f"  {100 * count / total:5.1f} %  {name}")


# --- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=1000, help="events per POST")
    parser.add_argument("--clients", type=int, default=4, help="client threads posting at once")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn sync workers")
    parser.add_argument("--messages", type=int, default=20_000, help="Messages of the bench's Mailing")
    parser.add_argument("--rounds", type=int, default=1, help="inbox + baseline pairs, one after the other")
    parser.add_argument("--replay", action="store_true", help="post the inbox run's bodies again")
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--py-spy", type=int, default=0, metavar="SECONDS", help="profile the inbox run's workers")
    parser.add_argument(
        "--inbox-settings",
        default="mailer_project.settings",
        help="settings module of the inbox run (to measure another way of storing under the same conditions)",
    )
    args = parser.parse_args()

    VAR.mkdir(exist_ok=True)
    # The server runs as in production: DEBUG off (no query log), its own webhook secret.
    os.environ.update({"DEBUG": "false", "SECRET_KEY": "bench-webhooks", "WEBHOOK_SECRET": SECRET,
                       "DJANGO_SETTINGS_MODULE": "mailer_project.settings", "LOG_LEVEL": "WARNING"})  # fmt: skip
    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command
    from django.db import connection

    if connection.vendor != "postgresql":
        raise SystemExit("bench/webhooks.py needs PostgreSQL: set DATABASE_URL (see the docstring)")
    if not os.environ.get("REDIS_URL") or not settings.CELERY_BROKER_URL.startswith("redis://"):
        raise SystemExit("bench/webhooks.py needs REDIS_URL and CELERY_BROKER_URL (Redis databases of its own)")
    call_command("migrate", verbosity=0)

    servers: list[Server] = []
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    signal.signal(signal.SIGINT, signal.default_int_handler)
    inbox_runs: list[Run] = []
    baseline_runs: list[Run] = []
    try:
        for round_ in range(args.rounds):
            messages = _prepare_round(args.messages)
            bodies = build_bodies(events=args.events, batch=args.batch, messages=messages, seed=round_)
            size = sum(map(len, bodies)) / len(bodies)
            print(f"round {round_ + 1}: {len(bodies)} POSTs of {args.batch} events ({size / 1024:.0f} KiB each), "
                  f"{args.clients} clients, gunicorn --workers {args.workers}", flush=True)  # fmt: skip
            connection.close()

            server = Server(settings_module=args.inbox_settings, workers=args.workers, name="inbox")
            servers.append(server)
            warm = warm_up(server, 10_000 + round_, messages, args.workers)
            inbox = run("inbox", server, bodies, args.events, args.clients, args.py_spy if round_ == 0 else 0)
            inbox_runs.append(inbox)
            if inbox.posted.statuses != Counter({200: len(bodies)}) or inbox.stored != args.events:
                print(f"  MISMATCH: expected {len(bodies)} answers 200 and {args.events} events stored", flush=True)
            if args.replay:
                replay = run("replay", server, bodies, args.events, args.clients)
                if replay.posted.statuses != Counter({200: len(bodies)}) or replay.stored != 0:
                    print("  MISMATCH: a replay must answer 200 to every POST and store nothing", flush=True)
            print(f"  ({warm} warm-up events stored before the clock started)", flush=True)
            server.stop()
            servers.remove(server)
            _forget_apply_requests()

            if not args.skip_baseline:
                server = Server(settings_module="bench.settings_webhooks_baseline", workers=args.workers,
                                name="baseline")  # fmt: skip
                servers.append(server)
                warm_up(server, 20_000 + round_, messages, args.workers)
                baseline = run("baseline", server, bodies, args.events, args.clients)
                baseline_runs.append(baseline)
                if baseline.stored != 0:
                    print("  MISMATCH: the baseline must store nothing", flush=True)
                server.stop()
                servers.remove(server)
    finally:
        for server in servers:
            server.stop()
        _forget_apply_requests()

    print()
    for index, inbox in enumerate(inbox_runs):
        line = (f"SUMMARY round {index + 1}: inbox {inbox.rate:.0f} events/s stored "
                f"({'met' if inbox.rate >= GOAL_RATE else 'NOT met'}: goal {GOAL_RATE:.0f})")  # fmt: skip
        if index < len(baseline_runs):
            baseline = baseline_runs[index]
            ratio = inbox.rate / baseline.rate
            line += (f"; baseline {baseline.rate:.0f} events/s; inbox/baseline {ratio:.2f} "
                     f"({'met' if ratio >= GOAL_RATIO else 'NOT met'}: goal {GOAL_RATIO:g}); server CPU per event "
                     f"{inbox.cpu_per_event:.0f} us vs {baseline.cpu_per_event:.0f} us "
                     f"(ratio {baseline.cpu_per_event / inbox.cpu_per_event:.2f})")  # fmt: skip
        print(line)
    if len(inbox_runs) > 1:
        rates = sorted(run.rate for run in inbox_runs)
        line = f"MEDIAN of {len(rates)} rounds: inbox {rates[len(rates) // 2]:.0f} events/s"
        if baseline_runs:
            ratios = sorted(i.rate / b.rate for i, b in zip(inbox_runs, baseline_runs, strict=False))
            line += f", inbox/baseline {ratios[len(ratios) // 2]:.2f}"
        print(line)
    if args.py_spy and (VAR / "bench-webhooks-py-spy.txt").exists():
        profile_summary(VAR / "bench-webhooks-py-spy.txt")


if __name__ == "__main__":
    main()
