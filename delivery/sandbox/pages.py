"""The inspection pages: the HTML message list and detail page, and the messages JSON listing."""

from __future__ import annotations

import html
import json
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote

from .http import Reply, json_reply
from .messages import SandboxMessage

PAGE_SIZE = 50

Query = dict[str, list[str]]
Finder = Callable[[Query], list[SandboxMessage]]


def html_reply(status: int, page: str) -> Reply:
    # Message HTML is shown only inside a sandboxed srcdoc iframe; the CSP keeps scripts and remote loads off.
    csp = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; frame-src 'self'"
    return status, page.encode(), {"Content-Type": "text/html; charset=utf-8", "Content-Security-Policy": csp}


def messages_json(query: Query, find: Finder) -> Reply:
    try:
        limit = min(max(int(query.get("limit", ["100"])[0]), 0), 1000)
        offset = max(int(query.get("offset", ["0"])[0]), 0)
    except ValueError:
        return json_reply(400, {"error": "limit and offset must be integers"})
    found = find(query)
    results = [msg.as_dict() for msg in found[offset : offset + limit]]
    return json_reply(200, {"count": len(found), "limit": limit, "offset": offset, "results": results})


# --- HTML


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _page(title: str, body: str) -> str:
    style = (
        "body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}table{border-collapse:collapse}"
        "td,th{border:1px solid #ddd;padding:3px 6px;text-align:left;vertical-align:top}"
        "th{background:#f4f4f4}"
        "pre{background:#f8f8f8;padding:8px;white-space:pre-wrap}"
        "iframe{width:100%;height:480px;border:1px solid #ccc}"
    )
    head = f"<meta charset='utf-8'><title>{_e(title)}</title><style>{style}</style>"
    return f"<!doctype html><html><head>{head}</head><body>{body}</body></html>"


def index_page(query: Query, find: Finder) -> str:
    found = find(query)
    found.reverse()
    pages = max(1, -(-len(found) // PAGE_SIZE))
    try:
        page = min(max(int(query.get("page", ["1"])[0]), 1), pages)
    except ValueError:
        page = 1
    rows = "".join(
        "<tr><td><a href='/_sandbox/messages/{id}'>{id}</a></td><td>{at}</td><td>{esp}</td><td>{frm}</td>"
        "<td>{to}</td><td>{subject}</td><td>{events}</td></tr>".format(
            id=msg.id,
            at=_e(msg.received_at.strftime("%H:%M:%S.%f")[:-3]),
            esp=_e(msg.esp),
            frm=_e(msg.from_email),
            to=_e(", ".join(msg.to)),
            subject=_e(msg.subject),
            events=_e(", ".join(msg.events)),
        )
        for msg in found[(page - 1) * PAGE_SIZE : page * PAGE_SIZE]
    )
    keep = "".join(f"&amp;{k}={_e(quote(query[k][0]))}" for k in ("esp", "to") if query.get(k))
    nav = []
    if page > 1:
        nav.append(f"<a href='/?page={page - 1}{keep}'>&larr; newer</a>")
    nav.append(f"page {page} of {pages}")
    if page < pages:
        nav.append(f"<a href='/?page={page + 1}{keep}'>older &rarr;</a>")
    body = (
        f"<h1>ESP sandbox</h1><p>{len(found)} message(s). JSON: "
        "<a href='/_sandbox/messages'>messages</a>, <a href='/_sandbox/config'>config</a>, "
        "<a href='/_sandbox/webhooks'>webhook posts</a>.</p>"
        "<table><tr><th>#</th><th>received</th><th>ESP</th><th>from</th><th>to</th><th>subject</th>"
        f"<th>events</th></tr>{rows}</table><p>{' &middot; '.join(nav)}</p>"
    )
    return _page("ESP sandbox", body)


def detail_page(msg: SandboxMessage) -> str:
    def table(rows: Mapping[str, Any]) -> str:
        cells = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows.items())
        return f"<table>{cells}</table>"

    summary = {
        "ESP": msg.esp,
        "ESP message id": msg.esp_message_id,
        "from": msg.from_email,
        "to": ", ".join(msg.to),
        "all recipients": ", ".join(msg.destination),
        "subject": msg.subject,
        "received": msg.received_at.isoformat(),
        "events": ", ".join(msg.events),
        "tags": ", ".join(msg.tags),
        "metadata": json.dumps(msg.metadata),
    }
    parts = [
        f"<p><a href='/'>&larr; all messages</a> &middot; <a href='/_sandbox/messages/{msg.id}.json'>JSON</a></p>",
        f"<h1>Message {msg.id}: {_e(msg.subject)}</h1>",
        table(summary),
        "<h2>Headers</h2>",
        table(msg.headers),
    ]
    if msg.text is not None:
        parts.append(f"<h2>Text</h2><pre>{_e(msg.text)}</pre>")
    if msg.html is not None:
        parts.append(f'<h2>HTML</h2><iframe sandbox srcdoc="{_e(msg.html)}"></iframe>')
    return _page(f"Message {msg.id}", "".join(parts))
