"""End-to-end sending throughput: real Celery workers send a whole mailing to the ESP sandbox, then
django-post-office sends the same number of messages through the same anymail backend to the same sandbox.

    createdb -h 127.0.0.1 -U postgres mailer_bench_dispatch
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/mailer_bench_dispatch REDIS_URL=redis://127.0.0.1:6379/5 \\
    CELERY_BROKER_URL=redis://127.0.0.1:6379/5 .venv/bin/python bench/dispatch.py \\
        [--messages 100000] [--provider postmark|sendgrid|amazon_ses] [--workers 2] [--pool threads|prefork]
        [--concurrency 16] [--send-threads N] [--chunk-size N] [--parallelism N] [--latency-ms 50]
        [--po-processes 2] [--po-threads 16] [--skip-mailer] [--skip-post-office] [--py-spy SECONDS]

Needs PostgreSQL and Redis (the workers share the database, the broker and the limits store) and
bench/requirements-bench.txt installed. The script migrates the database, empties its message tables and
FLUSHES the Redis database it is given (use one of its own). The sandbox runs in a child process, answers every
API call after --latency-ms, and posts no webhooks. Mailer: one Mailing of N messages, W `celery worker`
processes (each keeping MAILER_SEND_THREADS ESP calls in flight; --send-threads sets it), mailing_send_start
with the given parallelism; the clock runs from that call until no message is
queued or sending. post-office: N Emails queued with send_many, then `manage.py send_queued_mail --processes`
timed to its exit. Both counts are checked against what the sandbox received (each recipient exactly once).
Everything started here is stopped on exit, Ctrl-C included.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from delivery.sandbox import SandboxServer  # noqa: E402  (needs no Django settings)

HTML = "<html><body><h1>Hello {{ name }}</h1><p>News from {{ attributes.city }}.</p>" + "<p>Body text.</p>" * 20
TEXT = "Hello {{ name }}\nNews from {{ attributes.city }}.\n" + "Body text.\n" * 20
FROM = "Bench <bench@mailer.example>"
PO_BACKENDS = {
    "postmark": "anymail.backends.postmark.EmailBackend",
    "sendgrid": "anymail.backends.sendgrid.EmailBackend",
    "amazon_ses": "anymail.backends.amazon_ses.EmailBackend",
}
GOAL_RATE = 1000.0
GOAL_RATIO = 5.0
GOAL_RSS_MB = 250.0
VAR = ROOT / "var"


# --- the sandbox, in a child process of its own


def _sandbox_serve(conn: Connection, latency_ms: float, max_messages: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops it, also on Ctrl-C
    # No webhook_url: the sandbox posts no events (they would load the machine during the run).
    server = SandboxServer(latency_ms=latency_ms, max_messages=max_messages).start()
    conn.send(server.url)
    while True:
        command = conn.recv()
        if command == "count":
            messages = server.messages
            recipients = Counter(tuple(m.to) for m in messages)
            conn.send((len(messages), len(recipients), Counter(m.esp for m in messages)))
        elif command == "clear":
            server.clear()
            conn.send(True)
        else:
            server.stop()
            conn.send(True)
            return


class Sandbox:
    def __init__(self, latency_ms: float, max_messages: int) -> None:
        ctx = multiprocessing.get_context("fork")  # forked before Django is set up here
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_sandbox_serve, args=(child, latency_ms, max_messages), daemon=True)
        self.process.start()
        self.url: str = self.conn.recv()

    def ask(self, command: str) -> Any:
        self.conn.send(command)
        return self.conn.recv()

    def stop(self) -> None:
        if self.process.is_alive():
            try:
                self.ask("stop")
            except (OSError, EOFError):
                pass
            self.process.join(5)
            if self.process.is_alive():
                self.process.kill()


# --- process memory and CPU


def _rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _children(pid: int) -> list[int]:
    try:
        import psutil

        return [child.pid for child in psutil.Process(pid).children(recursive=True)]
    except ImportError:
        found = []
        for task in Path(f"/proc/{pid}/task").iterdir():
            found += [int(c) for c in (task / "children").read_text().split()]
        return found
    except Exception:  # noqa: BLE001 - the process ended between two samples
        return []


def _machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, from /proc/stat."""
    fields = [int(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    ticks = os.sysconf("SC_CLK_TCK")
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / ticks, sum(fields[:8]) / ticks


def _cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its reaped children, from /proc (no psutil needed)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = os.sysconf("SC_CLK_TCK")
    return sum(int(f) for f in fields[11:15]) / ticks


class Peaks:
    """Peak RSS of each process tree rooted at the given pids: the largest single process, the largest tree."""

    def __init__(self) -> None:
        self.process_mb = 0.0
        self.tree_mb = 0.0
        self.cpu: dict[int, float] = {}

    def sample(self, roots: list[int]) -> None:
        for root in roots:
            pids = [root, *_children(root)]
            sizes = [_rss_mb(pid) for pid in pids]
            self.process_mb = max(self.process_mb, *sizes)
            self.tree_mb = max(self.tree_mb, sum(sizes))
            for pid in pids:
                self.cpu[pid] = max(self.cpu.get(pid, 0.0), _cpu_seconds(pid))


# --- child processes


class Children:
    """Processes started here, each in its own session so that only this script decides when they stop."""

    def __init__(self) -> None:
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self, args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
        with open(log, "wb") as out:
            process = subprocess.Popen(
                args, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.processes.append(process)
        return process

    def stop(self, process: subprocess.Popen[bytes]) -> None:
        if process.poll() is None:
            process.terminate()  # celery: warm shutdown of the pool
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(5)
        try:
            os.killpg(process.pid, signal.SIGKILL)  # any pool child left behind in its session
        except ProcessLookupError:
            pass

    def stop_all(self) -> None:
        for process in self.processes:
            self.stop(process)
        self.processes.clear()


def _wait_for_line(log: Path, text: str, process: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in log.read_text(errors="replace"):
            return
        if process.poll() is not None:
            raise SystemExit(f"{log.name}: process exited with {process.returncode}; see {log}")
        time.sleep(0.2)
    raise SystemExit(f"{log.name}: no '{text}' within {timeout:.0f} s; see {log}")


def _middle_80(timeline: list[tuple[float, int]], total: int) -> float:
    """Messages/s between the moments 10 % and 90 % of the messages were final (interpolated)."""

    def when(count: float) -> float:
        for (t0, c0), (t1, c1) in zip(timeline, timeline[1:], strict=False):
            if c1 >= count:
                return t0 + (t1 - t0) * ((count - c0) / (c1 - c0) if c1 > c0 else 1.0)
        return timeline[-1][0]

    low, high = when(0.1 * total), when(0.9 * total)
    return 0.8 * total / (high - low) if high > low else float("nan")


# --- the two runs


def run_mailer(args: argparse.Namespace, sandbox: Sandbox, children: Children, env: dict[str, str]) -> dict[str, Any]:
    from django.db import connection

    from delivery.models import Mailing, Message, Provider
    from delivery.tasks import mailing_send_start

    provider, _ = Provider.objects.update_or_create(
        name=f"bench-dispatch-{args.provider}",
        defaults={"kind": args.provider, "max_rate": None, "daily_cap": None, "warming_plan": None, "is_enabled": True},
    )
    mailing = Mailing.objects.create(
        name="bench-dispatch", subject_template="Hello {{ name }}", html_template=HTML, text_template=TEXT,
        from_email=FROM, provider=provider,
    )  # fmt: skip
    started = time.perf_counter()
    for first in range(0, args.messages, 5000):
        Message.objects.bulk_create(
            [
                Message(mailing=mailing, to_email=f"m{i}@example.org",
                        context={"email": f"m{i}@example.org", "name": f"Person {i}", "attributes": {"city": "Oslo"}})
                for i in range(first, min(first + 5000, args.messages))
            ]
        )  # fmt: skip
    print(f"mailer: {args.messages} messages queued in {time.perf_counter() - started:.1f} s", flush=True)
    connection.close()

    workers = []
    for index in range(args.workers):
        log = VAR / f"dispatch-worker{index}.log"
        command = [
            sys.executable, "-m", "celery", "-A", "mailer_project", "worker", "--pool", args.pool,
            "--concurrency", str(args.concurrency), "-n", f"dispatch{index}@%h", "--without-gossip",
            "--without-mingle", "--without-heartbeat", "--loglevel", "INFO", "-Q", "celery",
        ]  # fmt: skip
        workers.append((children.start(command, env, log), log))
    for process, log in workers:
        _wait_for_line(log, " ready.", process, 90)
    roots = [process.pid for process, _ in workers]
    parallelism = args.parallelism or args.workers * args.concurrency
    print(f"mailer: {args.workers} workers ready ({args.pool} pool, concurrency {args.concurrency}); "
          f"starting {parallelism} sending tasks", flush=True)  # fmt: skip

    peaks = Peaks()
    peaks.sample(roots)
    cpu_before = {pid: cpu for pid, cpu in peaks.cpu.items()}
    sandbox_cpu_before = _cpu_seconds(sandbox.process.pid)
    machine_before = _machine_busy()
    open_ = Message.objects.filter(mailing=mailing, status__in=[Message.Status.QUEUED, Message.Status.SENDING])
    profiler = None
    t0 = time.perf_counter()
    mailing_send_start(mailing.pk, parallelism=parallelism)
    timeline = [(0.0, 0)]
    last_progress = t0
    next_report = 10.0
    while True:
        time.sleep(0.5)
        peaks.sample(roots)
        done = args.messages - open_.count()
        now = time.perf_counter() - t0
        if done > timeline[-1][1]:
            last_progress = time.perf_counter()
        timeline.append((now, done))
        if args.py_spy and profiler is None and done >= 0.2 * args.messages:
            profiler = _py_spy_start(roots[0], args.py_spy, children)
        if done >= args.messages:
            break
        if time.perf_counter() - last_progress > 60:
            raise SystemExit(f"mailer: no progress for 60 s at {done} of {args.messages}; see var/dispatch-worker*.log")
        if now >= next_report:
            next_report += 10
            print(f"  {now:5.0f} s  {done:7d} final  {done / now:7.0f} msg/s", flush=True)
    elapsed = time.perf_counter() - t0
    machine = [after - before for after, before in zip(_machine_busy(), machine_before, strict=True)]
    sandbox_cpu = _cpu_seconds(sandbox.process.pid) - sandbox_cpu_before
    worker_cpu = sum(cpu - cpu_before.get(pid, 0.0) for pid, cpu in peaks.cpu.items())
    if profiler is not None:
        profiler.wait()
    for process, _ in workers:
        children.stop(process)

    statuses = dict(Counter(Message.objects.filter(mailing=mailing).values_list("status", flat=True)))
    total, distinct, by_esp = sandbox.ask("count")
    return {
        "elapsed": elapsed, "rate": args.messages / elapsed, "middle": _middle_80(timeline, args.messages),
        "peaks": peaks, "statuses": statuses, "received": total, "distinct": distinct, "by_esp": dict(by_esp),
        "worker_cpu": worker_cpu, "sandbox_cpu": sandbox_cpu, "parallelism": parallelism, "machine": machine,
    }  # fmt: skip


def run_post_office(
    args: argparse.Namespace, sandbox: Sandbox, children: Children, env: dict[str, str]
) -> dict[str, Any]:  # noqa: E501
    from django.db import connection
    from jinja2 import Environment
    from post_office import mail
    from post_office.models import STATUS, Email

    # The same bodies as Mailer's: our templates rendered once per recipient, as post-office would send them.
    jinja = Environment(autoescape=True)
    html, text = jinja.from_string(HTML), jinja.from_string(TEXT)
    started = time.perf_counter()
    for first in range(0, args.messages, 5000):
        batch = []
        for i in range(first, min(first + 5000, args.messages)):
            context = {"name": f"Person {i}", "attributes": {"city": "Oslo"}}
            batch.append({
                "sender": FROM, "recipients": [f"p{i}@example.org"], "subject": f"Hello Person {i}",
                "message": text.render(context), "html_message": html.render(context),
            })  # fmt: skip
        mail.send_many(batch)
    print(f"post-office: {args.messages} emails queued in {time.perf_counter() - started:.1f} s", flush=True)
    connection.close()

    po_env = {
        **env,
        "DJANGO_SETTINGS_MODULE": "bench.settings_post_office",
        "BENCH_PO_BACKEND": PO_BACKENDS[args.provider],
        "BENCH_PO_THREADS": str(args.po_threads),
        "BENCH_PO_BATCH": str(args.po_batch),
    }
    command = [sys.executable, "manage.py", "send_queued_mail", "--processes", str(args.po_processes),
               "--lockfile", str(VAR / "dispatch-post-office"), "--log-level", "2"]  # fmt: skip
    log = VAR / "dispatch-post-office.log"
    peaks = Peaks()
    sandbox_cpu_before = _cpu_seconds(sandbox.process.pid)
    t0 = time.perf_counter()
    machine_before = _machine_busy()
    process = children.start(command, po_env, log)
    while process.poll() is None:
        peaks.sample([process.pid])
        time.sleep(0.5)
    elapsed = time.perf_counter() - t0
    machine = [after - before for after, before in zip(_machine_busy(), machine_before, strict=True)]
    sandbox_cpu = _cpu_seconds(sandbox.process.pid) - sandbox_cpu_before
    if process.returncode != 0:
        raise SystemExit(f"post-office: send_queued_mail exited with {process.returncode}; see {log}")
    statuses = dict(Counter(Email.objects.values_list("status", flat=True)))
    names = dict(enumerate(STATUS._fields))
    total, distinct, by_esp = sandbox.ask("count")
    return {
        "elapsed": elapsed, "rate": args.messages / elapsed, "peaks": peaks, "received": total,
        "distinct": distinct, "by_esp": dict(by_esp), "sandbox_cpu": sandbox_cpu, "machine": machine,
        "statuses": {names.get(k, k): v for k, v in statuses.items()},
        "sent": statuses.get(STATUS.sent, 0),
    }  # fmt: skip


# --- profile


def _py_spy_start(pid: int, seconds: int, children: Children) -> subprocess.Popen[bytes]:
    py_spy = Path(sys.executable).with_name("py-spy")
    out = VAR / "dispatch-py-spy.txt"
    # --gil: only the thread holding the GIL is sampled, so the profile shows where CPU goes, not who waits.
    command = [str(py_spy), "record", "--format", "raw", "--gil", "--subprocesses", "--rate", "200",
               "--duration", str(seconds), "--pid", str(pid), "--output", str(out)]  # fmt: skip
    print(f"  py-spy: sampling worker {pid} for {seconds} s into {out}", flush=True)
    return children.start(command, dict(os.environ), VAR / "dispatch-py-spy.log")


# Where a sample's stack is: the first part, in this order, that any of its frames names.
PROFILE_PARTS = [
    ("claim (SQL)", ("messages_claim",)),
    ("record (SQL)", ("messages_record",)),
    ("suppression, routing, health", ("route_messages", "_Health", "mailing_candidates", "Suppression")),
    ("render + headers (message_build)", ("message_build",)),
    ("rate limits / circuit (Redis)", ("rate_wait_all", "circuit_record", "provider_rate_limits")),
    ("attempt rows", ("attempts_prepare", "attempt_finish")),
    ("ESP call: anymail payload + requests + HTTP", ("send_messages", "send_batch")),
    ("backend open/close", ("provider_connection", "__enter__", "__exit__")),
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
        total += count
        frames = stack.split(";")
        leaves[frames[-1].split(" (")[0] + " (" + frames[-1].rsplit("/", 1)[-1]] += count
        for name, needles in PROFILE_PARTS:
            if any(needle in frame for frame in frames for needle in needles):
                parts[name] += count
                break
        else:
            parts["other (celery, kombu, task loop)"] += count
    if not total:
        print("py-spy: no samples")
        return
    print(f"py-spy profile of one worker, GIL-holding samples: {total}")
    for name, count in parts.most_common():
        print(f"  {100 * count / total:5.1f} %  {name}")
    print("  innermost functions:")
    for name, count in leaves.most_common(12):
        print(f"  {100 * count / total:5.1f} %  {name}")


# --- main


def _prepare(args: argparse.Namespace) -> None:
    import redis
    from django.conf import settings
    from django.core.management import call_command
    from django.db import connection

    if connection.vendor != "postgresql":
        raise SystemExit("bench/dispatch.py needs PostgreSQL: set DATABASE_URL (see the docstring)")
    if not settings.CELERY_BROKER_URL.startswith("redis://") or not os.environ.get("REDIS_URL"):
        raise SystemExit("bench/dispatch.py needs REDIS_URL and CELERY_BROKER_URL (a Redis database of its own)")
    call_command("migrate", verbosity=0)
    redis.Redis.from_url(settings.CELERY_BROKER_URL).flushdb()
    if settings.REDIS_URL != settings.CELERY_BROKER_URL:
        redis.Redis.from_url(settings.REDIS_URL).flushdb()
    with connection.cursor() as cursor:
        cursor.execute(
            "TRUNCATE delivery_sendattempt, delivery_message, delivery_mailing_providers, delivery_mailing, "
            "post_office_log, post_office_attachment_emails, post_office_email CASCADE"
        )


def _busy(machine: list[float]) -> str:
    busy, total = machine
    return f"{100 * busy / total:.0f} % busy ({busy:.0f} of {total:.0f} CPU s, all processes)" if total else "?"


def _report(args: argparse.Namespace, mailer: dict[str, Any] | None, office: dict[str, Any] | None) -> None:
    from django.conf import settings

    print()
    print(f"{args.messages} messages, provider {args.provider}, sandbox latency {args.latency_ms:g} ms per API call")
    if mailer:
        peaks: Peaks = mailer["peaks"]
        exact = mailer["received"] == args.messages == mailer["distinct"]
        print(f"Mailer ({args.workers} workers, {args.pool} pool, concurrency {args.concurrency}, "
              f"MAILER_SEND_THREADS {args.send_threads or getattr(settings, 'MAILER_SEND_THREADS', '?')}, "
              f"MAILER_CHUNK_SIZE {args.chunk_size or getattr(settings, 'MAILER_CHUNK_SIZE', '?')}, "
              f"{mailer['parallelism']} tasks): {mailer['elapsed']:.1f} s, {mailer['rate']:.0f} msg/s "
              f"(middle 80 %: {mailer['middle']:.0f} msg/s), statuses {mailer['statuses']}")  # fmt: skip
        print(f"  sandbox received {mailer['received']} ({mailer['distinct']} distinct recipients) "
              f"{'- each exactly once' if exact else '- MISMATCH'}")  # fmt: skip
        print(f"  peak RSS: {peaks.process_mb:.0f} MB largest process, {peaks.tree_mb:.0f} MB largest worker tree; "
              f"CPU: workers {mailer['worker_cpu']:.0f} s, sandbox {mailer['sandbox_cpu']:.0f} s "
              f"over {mailer['elapsed']:.0f} s wall; machine {_busy(mailer['machine'])}")  # fmt: skip
    if office:
        peaks = office["peaks"]
        exact = office["received"] == args.messages == office["distinct"]
        print(f"post-office (send_queued_mail --processes {args.po_processes}, {args.po_threads} threads each, "
              f"batch {args.po_batch}): {office['elapsed']:.1f} s, {office['rate']:.0f} msg/s, "
              f"statuses {office['statuses']}")  # fmt: skip
        print(f"  sandbox received {office['received']} ({office['distinct']} distinct recipients) "
              f"{'- each exactly once' if exact else '- MISMATCH'}; peak RSS {peaks.process_mb:.0f} MB largest "
              f"process, {peaks.tree_mb:.0f} MB tree; sandbox CPU {office['sandbox_cpu']:.0f} s; "
              f"machine {_busy(office['machine'])}")  # fmt: skip
    if mailer:
        rss_ok = mailer["peaks"].process_mb <= GOAL_RSS_MB
        line = (f"SUMMARY: Mailer {mailer['rate']:.0f} msg/s = {mailer['rate'] / GOAL_RATE:.2f} x the "
                f"{GOAL_RATE:.0f} msg/s goal ({'met' if mailer['rate'] >= GOAL_RATE else 'NOT met'}); "
                f"peak RSS {mailer['peaks'].process_mb:.0f} MB per process "
                f"({'met' if rss_ok else 'NOT met'})")  # fmt: skip
        if office:
            ratio = mailer["rate"] / office["rate"]
            line += f"; Mailer/post-office {ratio:.2f} x (goal {GOAL_RATIO:g} x: {'met' if ratio >= GOAL_RATIO else 'NOT met'})"  # noqa: E501
        print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--provider", default="postmark", choices=sorted(PO_BACKENDS))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--pool", default="threads", choices=["threads", "prefork", "gevent", "eventlet"])
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument(
        "--parallelism", type=int, default=0, help="sending tasks to start (default workers x concurrency)"
    )  # noqa: E501
    parser.add_argument(
        "--send-threads", type=int, default=0, help="MAILER_SEND_THREADS of each worker (default: settings)"
    )  # noqa: E501
    parser.add_argument(
        "--chunk-size", type=int, default=0, help="MAILER_CHUNK_SIZE of each worker (default: settings)"
    )
    parser.add_argument("--latency-ms", type=float, default=50)
    parser.add_argument("--po-processes", type=int, default=2)
    parser.add_argument("--po-threads", type=int, default=16)
    parser.add_argument("--po-batch", type=int, default=1000)
    parser.add_argument("--skip-mailer", action="store_true")
    parser.add_argument("--skip-post-office", action="store_true")
    parser.add_argument("--py-spy", type=int, default=0, metavar="SECONDS", help="profile worker 0 this long")
    args = parser.parse_args()

    VAR.mkdir(exist_ok=True)
    sandbox = Sandbox(args.latency_ms, max_messages=args.messages + 1000)
    children = Children()
    # SIGTERM ends the script the way Ctrl-C does, through the finally below.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started in the background, where it is ignored
    try:
        # The workers run as in production (DEBUG off, so no query log grows in them), all pointed at the sandbox.
        os.environ.update({
            "DEBUG": "false", "SECRET_KEY": "bench-dispatch", "WEBHOOK_SECRET": "bench:bench",
            "ESP_SANDBOX_URL": sandbox.url, "DJANGO_SETTINGS_MODULE": "bench.settings_post_office",
        })  # fmt: skip
        env = {**os.environ, "DJANGO_SETTINGS_MODULE": "mailer_project.settings", "PYTHONPATH": str(ROOT)}
        if args.send_threads:
            env["MAILER_SEND_THREADS"] = str(args.send_threads)
        if args.chunk_size:
            env["MAILER_CHUNK_SIZE"] = str(args.chunk_size)
        import django

        django.setup()
        _prepare(args)
        mailer = office = None
        if not args.skip_mailer:
            mailer = run_mailer(args, sandbox, children, env)
            sandbox.ask("clear")
        if not args.skip_post_office:
            office = run_post_office(args, sandbox, children, env)
        _report(args, mailer, office)
        if args.py_spy and (VAR / "dispatch-py-spy.txt").exists():
            profile_summary(VAR / "dispatch-py-spy.txt")
    finally:
        children.stop_all()
        sandbox.stop()


if __name__ == "__main__":
    main()
