"""`make run`: the whole of Mailer on one machine, on embedded defaults.

Prepares the database (migrate, periodic tasks, an admin login, demo data), then runs the web server, a
Celery worker, Celery beat and the ESP sandbox side by side, with their output prefixed. Ctrl-C stops all.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WEB_PORT = int(os.environ.get("PORT", "8000"))
SANDBOX_PORT = int(os.environ.get("SANDBOX_PORT", "8025"))


def _environment() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("DEBUG", "true")
    env.setdefault("DJANGO_SETTINGS_MODULE", "mailer_project.settings")
    env.setdefault("ESP_SANDBOX_URL", f"http://127.0.0.1:{SANDBOX_PORT}")
    env.setdefault("MAILER_BASE_URL", f"http://127.0.0.1:{WEB_PORT}")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def _manage(env: dict[str, str], *args: str) -> str:
    result = subprocess.run(  # noqa: S603 - our own interpreter and manage.py, fixed arguments
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        sys.stderr.write(result.stdout + result.stderr)
        raise SystemExit(f"manage.py {' '.join(args)} failed (exit {result.returncode}).")
    return result.stdout.strip()


def _pipe(name: str, process: subprocess.Popen[str]) -> None:
    for line in process.stdout or ():
        sys.stdout.write(f"{name:>8} | {line}")


def main() -> None:
    env = _environment()
    for port, what in ((WEB_PORT, "web (PORT)"), (SANDBOX_PORT, "sandbox (SANDBOX_PORT)")):
        if not _port_free(port):
            raise SystemExit(f"Port {port} for the {what} is taken; stop what uses it or set another port.")

    print("Preparing the database ...", flush=True)
    _manage(env, "migrate", "--no-input", "-v", "0")
    _manage(env, "sync_periodic_tasks")
    login = _manage(env, "ensure_admin")
    print(_manage(env, "seed_demo"), flush=True)

    python, celery = sys.executable, [sys.executable, "-m", "celery", "-A", "mailer_project"]
    commands = {
        "web": [python, "manage.py", "runserver", f"127.0.0.1:{WEB_PORT}", "--noreload"],
        "worker": [*celery, "worker", "-l", "info", "-c", "2", "--without-gossip", "--without-mingle"],
        "beat": [*celery, "beat", "-l", "info", "-S", "django", "--pidfile="],
        "sandbox": [python, "manage.py", "run_sandbox", "--port", str(SANDBOX_PORT),
                    "--webhook-url", f"http://127.0.0.1:{WEB_PORT}"],
    }  # fmt: skip
    processes: dict[str, subprocess.Popen[str]] = {}
    for name, command in commands.items():
        processes[name] = subprocess.Popen(  # noqa: S603 - fixed commands built above
            command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True,
        )  # fmt: skip
        threading.Thread(target=_pipe, args=(name, processes[name]), daemon=True).start()

    print(
        "\n"
        f"  Mailer is running.\n"
        f"  Admin:        http://127.0.0.1:{WEB_PORT}/admin/   ({login.removeprefix('Admin login: ')})\n"
        f"  ESP sandbox:  http://127.0.0.1:{SANDBOX_PORT}/   (every message sent lands here)\n"
        f"  Try it:       Campaigns -> 'Demo campaign' -> action 'Send now'.\n"
        f"  Ctrl-C stops everything.\n",
        flush=True,
    )
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        while not stopping:
            for name, process in processes.items():
                if process.poll() is not None:
                    print(f"{name} stopped (exit {process.returncode}); stopping the rest.", flush=True)
                    stopping = True
                    break
            time.sleep(0.5)
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.terminate()  # the main process only: Celery shuts its pool down warmly
        deadline = time.monotonic() + 15
        for process in processes.values():
            try:
                process.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
        print("All stopped.", flush=True)


if __name__ == "__main__":
    main()
