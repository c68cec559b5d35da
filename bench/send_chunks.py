"""Sending engine overhead: Mailer's chunked send against bare anymail, same backend, same sandbox, same run.

    python bench/send_chunks.py [--messages 2000] [--provider postmark|sendgrid|amazon_ses] [--latency-ms 0]

Baseline: anymail's backend sending the same number of pre-built messages over one reused connection, one
API call per message (the engine's call pattern), with no database. Engine: a Mailing with that many
queued Messages, sent by mailing_send_chunk until nothing is left (claim, suppression check, render,
headers, ESP call, record). Prints both rates and the engine's cost per message over the baseline.
Uses DATABASE_URL if set, else var/bench.sqlite3 (migrated on first use). Both run in this one process, with
the sandbox on a thread of it, so the ratio is what to compare between machines.
"""

from __future__ import annotations

import argparse
import time

from django.conf import settings  # noqa: E402
from django.core.mail import EmailMultiAlternatives  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django_env import ROOT  # noqa: E402,F401  (sets Django up)

from delivery.models import Mailing, Message, Provider  # noqa: E402
from delivery.providers import provider_connection  # noqa: E402
from delivery.sandbox import SandboxServer  # noqa: E402
from delivery.sandbox.anymail_settings import anymail_settings_for  # noqa: E402
from delivery.services import mailing_send_chunk  # noqa: E402

HTML = "<html><body><h1>Hello {{ name }}</h1><p>News from {{ attributes.city }}.</p>" + "<p>Body text.</p>" * 20
TEXT = "Hello {{ name }}\nNews from {{ attributes.city }}.\n" + "Body text.\n" * 20


def _point_at(server: SandboxServer) -> None:
    settings.ANYMAIL = anymail_settings_for(server, settings.ANYMAIL)


def baseline(provider: Provider, count: int) -> float:
    messages = []
    for i in range(count):
        email = EmailMultiAlternatives(
            subject=f"Hello Person {i}", body=TEXT, from_email="bench@mailer.example", to=[f"base{i}@example.org"]
        )
        email.attach_alternative(HTML, "text/html")
        email.metadata = {"mailer_msg": str(i)}
        messages.append(email)
    backend = provider_connection(provider)
    started = time.perf_counter()
    with backend:
        for email in messages:
            backend.send_messages([email])
    return count / (time.perf_counter() - started)


def engine(provider: Provider, count: int) -> tuple[float, Mailing]:
    mailing = Mailing.objects.create(
        name="bench", subject_template="Hello {{ name }}", html_template=HTML, text_template=TEXT,
        from_email="Bench <bench@mailer.example>", provider=provider,
    )  # fmt: skip
    Message.objects.bulk_create(
        [
            Message(mailing=mailing, to_email=f"eng{i}@example.org",
                    context={"email": f"eng{i}@example.org", "name": f"Person {i}", "attributes": {"city": "Oslo"}})
            for i in range(count)
        ],
        batch_size=1000,
    )  # fmt: skip
    started = time.perf_counter()
    sent = 0
    while True:
        result = mailing_send_chunk(mailing_id=mailing.pk)
        if result.claimed == 0:
            break
        sent += result.sent
    elapsed = time.perf_counter() - started
    if sent != count:
        raise SystemExit(f"engine sent {sent} of {count} messages")
    return count / elapsed, mailing


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--provider", default="postmark", choices=["postmark", "sendgrid", "amazon_ses"])
    parser.add_argument("--latency-ms", type=float, default=0)
    args = parser.parse_args()

    call_command("migrate", verbosity=0)
    provider, _ = Provider.objects.get_or_create(name=f"bench-{args.provider}", defaults={"kind": args.provider})
    with SandboxServer(latency_ms=args.latency_ms, max_messages=4 * args.messages) as server:
        _point_at(server)
        base_rate = baseline(provider, args.messages)
        engine_rate, mailing = engine(provider, args.messages)
        received = len(server.messages)
    Message.objects.filter(mailing=mailing).delete()
    mailing.delete()

    overhead_ms = (1 / engine_rate - 1 / base_rate) * 1000
    print(f"database: {settings.DATABASES['default']['ENGINE'].rsplit('.', 1)[1]}, provider: {args.provider}, "
          f"messages: {args.messages}, sandbox latency: {args.latency_ms:g} ms, received: {received}")  # fmt: skip
    print(f"bare anymail (baseline):  {base_rate:8.0f} messages/s")
    print(f"Mailer engine:            {engine_rate:8.0f} messages/s")
    print(f"ratio engine/baseline:    {engine_rate / base_rate:8.2f}")
    print(f"engine cost per message:  {overhead_ms:8.2f} ms over the baseline (claim, render, record)")


if __name__ == "__main__":
    main()
