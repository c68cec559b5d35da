"""What happens to each accepted message: SES's mailbox simulator rules, then drawn opens and clicks."""

from __future__ import annotations

import html
import random
import re

from .config import Config
from .messages import SandboxMessage
from .vocabulary import AMAZON_SES, BOUNCED, CLICKED, COMPLAINED, DELIVERED, OPENED

SES_SIMULATOR_DOMAIN = "simulator.amazonses.com"
SIMULATED_MAILBOXES = {"bounce", "complaint", "suppressionlist"}
DEFAULT_CLICK_URL = "https://example.com/"

_LINK_RE = re.compile(r"""href\s*=\s*["'](https?://[^"'\s>]+)["']""", re.IGNORECASE)


def _links(html_body: str | None) -> list[str]:
    return [html.unescape(link) for link in _LINK_RE.findall(html_body or "")]


def _simulated_mailbox(address: str, domains: tuple[str, ...]) -> str | None:
    local, _, domain = address.lower().rpartition("@")
    if domain != SES_SIMULATOR_DOMAIN and domain not in domains:
        return None
    local = local.split("+", 1)[0]  # like SES's simulator, bounce+label@ still bounces
    return local if local in SIMULATED_MAILBOXES else None


def plan_events(
    messages: list[SandboxMessage], cfg: Config, shared_rng: random.Random
) -> list[tuple[SandboxMessage, str, dict]]:
    """Decide each recipient's fate (caller holds the lock) and record it on the message.

    Address rules act like SES's mailbox simulator. Opens and clicks are drawn per message, from a
    generator seeded by (seed, sandbox id) when a seed is set, so a rerun gives the same outcome whatever
    the thread interleaving. SES can't tell which recipient opened, so it reports one open per SES
    message, for all of its recipients; anymail then expands it to every destination.
    """
    planned: list[tuple[SandboxMessage, str, dict]] = []
    complaints: list[SandboxMessage] = []
    groups: dict[str, list[SandboxMessage]] = {}
    for msg in messages:
        rule = _simulated_mailbox(msg.to[0], cfg.simulate_domains)
        if rule in ("bounce", "suppressionlist"):
            planned.append((msg, BOUNCED, {"suppressed": rule == "suppressionlist"}))
            msg.events.append(BOUNCED)
            continue
        planned.append((msg, DELIVERED, {}))
        msg.events.append(DELIVERED)
        if rule == "complaint":
            complaints.append(msg)
        key = f"ses:{msg.esp_message_id}" if msg.esp == AMAZON_SES else f"id:{msg.id}"
        groups.setdefault(key, []).append(msg)
    for group in groups.values():
        first = group[0]
        rng = random.Random(f"{cfg.seed}:{first.id}") if cfg.seed is not None else shared_rng
        opened, clicked = rng.random() < cfg.open_rate, rng.random() < cfg.click_rate
        links = _links(first.html)
        url = rng.choice(links) if links else DEFAULT_CLICK_URL
        if opened:
            planned.append((first, OPENED, {}))
            for msg in group:
                msg.events.append(OPENED)
        if clicked:
            planned.append((first, CLICKED, {"url": url}))
            for msg in group:
                msg.events.append(CLICKED)
    for msg in complaints:
        planned.append((msg, COMPLAINED, {}))
        msg.events.append(COMPLAINED)
    return planned
