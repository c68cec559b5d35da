"""Rendering a newsletter per recipient: CSS inlined once per Mailing against once per recipient; the text part
from a text template derived once against converting each rendered HTML.

    python bench/render.py [--renders 1000]

(a) inline once: CompiledMailing as the engine uses it (the <style> rules already written into the template).
(b) inline per recipient: the same template, rendered, then css-inline run on each result.
(c) text derived once: the text template derived from the HTML, rendered per recipient.
(d) text per recipient: inscriptis converting each rendered HTML.
Prints renders/s of each and the ratios a/b and c/d. No database, no network.
"""

from __future__ import annotations

import argparse
import time

from django_env import ROOT  # noqa: F401  (sets Django up)

from delivery.rendering import CompiledMailing, _html_env  # noqa: E402
from delivery.template_html import html_css_inline, html_text  # noqa: E402

NEWSLETTER = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{{ subject }}</title>
<style>
  body { margin: 0; padding: 0; background: #f2f4f7; font-family: Helvetica, Arial, sans-serif; }
  .wrapper { width: 100%; background: #f2f4f7; }
  .container { width: 600px; margin: 0 auto; background: #ffffff; }
  .header { padding: 24px; background: #1f5fbf; color: #ffffff; }
  .header h1 { margin: 0; font-size: 24px; line-height: 1.3; }
  .preheader { display: none; font-size: 1px; color: #f2f4f7; }
  .content { padding: 24px; color: #222222; font-size: 16px; line-height: 1.5; }
  .content p { margin: 0 0 16px; }
  .article h2 { margin: 0 0 8px; font-size: 20px; color: #111111; }
  .article td { padding: 0 0 24px; vertical-align: top; }
  .article img { display: block; border: 0; width: 160px; }
  .btn { display: inline-block; padding: 10px 18px; background: #1f5fbf; color: #ffffff; text-decoration: none;
         border-radius: 4px; font-weight: bold; }
  .products th { text-align: left; border-bottom: 1px solid #dddddd; padding: 6px; }
  .products td { padding: 6px; border-bottom: 1px solid #eeeeee; }
  .price { text-align: right; font-family: Menlo, monospace; }
  .footer { padding: 24px; font-size: 12px; color: #5a5f69; }
  .footer a { color: #1f5fbf; }
  @media (max-width: 620px) { .container { width: 100% !important; } .article img { width: 100% !important; } }
</style></head>
<body>
<span class="preheader">{{ preheader }}</span>
<table class="wrapper" role="presentation" cellpadding="0" cellspacing="0"><tr><td>
<table class="container" role="presentation" cellpadding="0" cellspacing="0">
  <tr><td class="header"><h1>{{ brand }} weekly</h1></td></tr>
  <tr><td class="content">
    <p>Hello {{ name|default("there") }},</p>
    <p>Here is what happened in {{ attributes.city|default("your city") }} this week.</p>
    <table class="article" role="presentation">
    {% for article in articles %}
      <tr><td><img src="{{ article.image }}" alt="{{ article.title }}"></td>
          <td><h2>{{ article.title }}</h2><p>{{ article.summary }}</p>
              <a class="btn" href="{{ article.url }}?utm_source=newsletter&amp;utm_medium=email">Read more</a></td></tr>
    {% endfor %}
    </table>
    {% if offers %}
    <table class="products">
      <tr><th>Product</th><th>Price</th></tr>
      {% for offer in offers %}<tr><td>{{ offer.name }}</td>
        <td class="price">{{ "%.2f"|format(offer.price) }} EUR</td></tr>
      {% endfor %}
    </table>
    {% endif %}
    <ul>
      <li>Events near you: <a href="https://events.example.org/{{ attributes.city|lower|urlencode }}">calendar</a></li>
      <li>Your plan: {{ attributes.plan|default("free")|title }}</li>
    </ul>
  </td></tr>
  <tr><td class="footer">
    <p>You receive this because you subscribed at {{ brand }}.
    <a href="{{ preferences_url }}">Manage your subscriptions</a> &middot;
    <a href="{{ unsubscribe_url }}">Unsubscribe</a></p>
  </td></tr>
</table>
</td></tr></table>
</body></html>"""

ARTICLES = [
    {
        "title": f"Story {n}: the harbour project moves on",
        "summary": "The council approved the second phase; works start in spring and last two years. " * 2,
        "url": f"https://news.example.org/stories/{n}",
        "image": f"https://cdn.example.org/img/{n}.jpg",
    }
    for n in range(4)
]
OFFERS = [{"name": f"Product {n}", "price": 9.5 + n} for n in range(5)]


def contexts(count: int) -> list[dict]:
    return [
        {
            "email": f"person{i}@example.org",
            "name": f"Person {i}",
            "attributes": {"city": "Oslo" if i % 2 else "Bergen", "plan": "pro"},
            "brand": "Harbour News",
            "preheader": "Four stories and this week's offers",
            "articles": ARTICLES,
            "offers": OFFERS if i % 3 else [],
            "unsubscribe_url": f"https://mailer.example.org/u/{i}/token",
            "preferences_url": f"https://mailer.example.org/p/{i}",
        }
        for i in range(count)
    ]


def rate(label: str, count: int, work, repeats: int) -> float:
    """The best of `repeats` runs: the machine's noise only ever slows a run down."""
    best = 0.0
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        best = max(best, count / (time.perf_counter() - started))
    print(f"{label:<52} {best:>10,.0f} renders/s")
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--renders", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    count, repeats = args.renders, args.repeats
    people = contexts(count)

    compiled = CompiledMailing("{{ brand }} weekly for {{ name }}", NEWSLETTER, "")
    text_template = compiled.text
    if compiled.css_per_render or compiled.text_per_render or text_template is None or compiled.html is None:
        raise SystemExit("the newsletter should be prepared once; it fell back to per-recipient work")
    html_template = compiled.html
    plain = _html_env.from_string(NEWSLETTER)

    # Warm both paths once (imports, caches), then measure.
    compiled.render(people[0])
    html_text(html_css_inline(plain.render(people[0])))

    once = rate("(a) CSS inlined once per Mailing", count, lambda: [html_template.render(c) for c in people], repeats)
    each = rate(
        "(b) CSS inlined per recipient",
        count,
        lambda: [html_css_inline(plain.render(c)) for c in people],
        repeats,
    )
    derived = rate("(c) text template derived once", count, lambda: [text_template.render(c) for c in people], repeats)
    rendered = [html_template.render(c) for c in people]
    converted = rate("(d) text converted per recipient", count, lambda: [html_text(h) for h in rendered], repeats)
    engine = rate(
        "engine: CompiledMailing.render (subject, html, text)",
        count,
        lambda: [compiled.render(c) for c in people],
        repeats,
    )

    def everything_per_recipient() -> None:
        for c in people:
            html = html_css_inline(plain.render(c))
            html_text(html)

    naive = rate("all per recipient: render, inline, convert", count, everything_per_recipient, repeats)
    print(f"\nratio a/b (CSS inlined once over per recipient): {once / each:.1f}x")
    print(f"ratio c/d (derived text over per-recipient conversion): {derived / converted:.1f}x")
    print(f"ratio engine / all per recipient: {engine / naive:.1f}x")
    print(f"engine render cost per message: {1000 / engine:.3f} ms")


if __name__ == "__main__":
    main()
