"""CSS inlined into the template source once per Mailing, and a text template derived from the HTML once.

No database: rendering is pure. The inliner and the HTML-to-text converter are real; where a test counts their
calls it wraps the real ones.
"""

import socket
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

import delivery.template_html as template_html
from delivery.exceptions import TemplateRenderFailed, TemplateSyntaxInvalid
from delivery.rendering import CompiledMailing, _html_env, compiled_mailing, template_render_preview
from delivery.template_html import html_css_inline, html_text, template_css_inline, template_text_derive

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))


@pytest.fixture
def calls(monkeypatch):
    """Counts of css-inline and inscriptis runs, through the real ones."""
    counts = {"inline": 0, "text": 0}
    real_inliner, real_get_text = template_html._INLINER, template_html.get_text

    class CountingInliner:
        def inline(self, html):
            counts["inline"] += 1
            return real_inliner.inline(html)

    def counting_get_text(html, config):
        counts["text"] += 1
        return real_get_text(html, config)

    monkeypatch.setattr(template_html, "_INLINER", CountingInliner())
    monkeypatch.setattr(template_html, "get_text", counting_get_text)
    return counts


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("rendering tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


# --- CSS into the source ----------------------------------------------------------------------------------


def test_a_loop_between_table_rows_stays_where_it_was_written():
    source = (
        "<style>td { padding: 4px } .name { color: red }</style><table>\n"
        "{% for row in rows %}\n"
        '<tr><td class="name">{{ row.name }}</td><td>{{ row.price }}</td></tr>\n'
        "{% endfor %}\n"
        "</table>"
    )

    inlined = template_css_inline(source)

    assert inlined == (
        "\n<table>\n"
        "{% for row in rows %}\n"
        '<tr><td class="name" style="padding: 4px;color: red;">{{ row.name }}</td>'
        '<td style="padding: 4px;">{{ row.price }}</td></tr>\n'
        "{% endfor %}\n"
        "</table>"
    ).removeprefix("\n")
    rendered = CompiledMailing("s", source, "x").render(
        {"rows": [{"name": "A", "price": 1}, {"name": "B", "price": 2}]}
    )
    assert rendered.html == (
        "<table>\n\n"
        '<tr><td class="name" style="padding: 4px;color: red;">A</td><td style="padding: 4px;">1</td></tr>\n\n'
        '<tr><td class="name" style="padding: 4px;color: red;">B</td><td style="padding: 4px;">2</td></tr>\n\n'
        "</table>"
    )


def test_a_conditional_that_opens_a_row_two_ways_keeps_both_branches_and_styles_each():
    source = (
        "<style>tr { color: red } .vip { font-weight: bold }</style>"
        '<table>{% if vip %}<tr class="vip">{% else %}<tr>{% endif %}<td>x</td></tr></table>'
    )

    inlined = template_css_inline(source)

    # An HTML5 parser would close the first <tr> at the second; the source is not re-serialized, so both stay.
    assert inlined == (
        '<table>{% if vip %}<tr class="vip" style="color: red;font-weight: bold;">'
        '{% else %}<tr style="color: red;">{% endif %}<td>x</td></tr></table>'
    )


def test_expressions_in_href_src_and_style_attributes_survive_byte_for_byte():
    source = (
        "<style>a { color: blue } img { border: 0 }</style>"
        '<a href="{{ url|default("https://x.test/?a=\\"b\\"") }}&amp;id={{ id }}">{{ \'}}\' ~ label }}</a>'
        "<img src='{{ base }}/logo.png' style=\"width: {{ w }}px\"/>"
    )

    inlined = template_css_inline(source)

    assert inlined == (
        '<a href="{{ url|default("https://x.test/?a=\\"b\\"") }}&amp;id={{ id }}" style="color: blue;">'
        "{{ '}}' ~ label }}</a>"
        # The written declarations follow the rules', so they win as they did before inlining.
        "<img src='{{ base }}/logo.png' style=\"border: 0; width: {{ w }}px\"/>"
    )
    rendered = CompiledMailing("s", source, "t").render({"id": 7, "label": "go", "base": "https://cdn", "w": 80})
    assert rendered.html == (
        '<a href="https://x.test/?a=&#34;b&#34;&amp;id=7" style="color: blue;">}}go</a>'
        "<img src='https://cdn/logo.png' style=\"border: 0; width: 80px\"/>"
    )


def test_brackets_and_quotes_inside_expressions_do_not_end_them():
    source = (
        "<style>p { margin: 0 }</style>"
        "<p title=\"{{ {'a': {'b': '}}'}}['a']['b'] }}\">{{ '{% not a tag %}' }}{{ x|replace('\"', '%}') }}</p>"
    )

    inlined = template_css_inline(source)

    assert inlined == (
        "<p title=\"{{ {'a': {'b': '}}'}}['a']['b'] }}\" style=\"margin: 0;\">"
        "{{ '{% not a tag %}' }}{{ x|replace('\"', '%}') }}</p>"
    )
    assert CompiledMailing("s", source, "t").render({"x": 'say "hi"'}).html == (
        '<p title="}}" style="margin: 0;">{% not a tag %}say %}hi%}</p>'
    )


def test_css_the_inliner_cannot_parse_leaves_the_template_as_written_and_sends():
    source = '<style>p { margin: 0 }</style><p style="not css">{{ x }}</p>'

    assert template_css_inline(source) == source
    assert CompiledMailing("s", source, "t").render({"x": 1}).html == source.replace("{{ x }}", "1")


def test_a_template_without_style_is_left_as_it_is_and_never_parsed(calls):
    source = '<p>Hello {{ name }}, <a href="{{ url }}">here</a></p>'

    assert template_css_inline(source) == source
    assert calls["inline"] == 0


def test_media_queries_stay_in_a_style_block_and_line_numbers_do_not_move():
    source = (
        "<html><head><style>\n"
        "p { margin: 0 }\n"
        "@media (max-width: 600px) { p { margin: 4px } }\n"
        "</style></head><body><p>{{ x }}</p></body></html>"
    )

    inlined = template_css_inline(source)

    assert inlined == (
        "<html><head><style>@media (max-width: 600px) { p { margin: 4px } }\n\n\n</style></head>"
        '<body><p style="margin: 0;">{{ x }}</p></body></html>'
    )
    assert inlined.count("\n") == source.count("\n")


@pytest.mark.parametrize(
    ("why", "source"),
    [
        ("class from the render", '<style>.a { color: red }</style><p class="{{ c }}">x</p>'),
        ("id from the render", '<style>#a { color: red }</style><p id="{{ c }}">x</p>'),
        ("attribute selectors", '<style>a[href^="mailto"] { color: red }</style><a href="{{ u }}">x</a>'),
        (
            "structural selector",
            "<style>tr:nth-child(2n) { color: red }</style><table>{% for r in rows %}<tr><td>x{% endfor %}",
        ),
        ("sibling selector", "<style>p + p { margin: 0 }</style>{% for p in ps %}<p>{{ p }}</p>{% endfor %}"),
        ("attributes from the render", '<style>a { color: red }</style><a href="x"{% if y %} target="_b"{% endif %}>'),
        ("markup from values", "<style>a { color: red }</style><p>{{ body|safe }}</p>"),
        ("a conditional stylesheet", "{% if x %}<style>a { color: red }</style>{% endif %}<a>x</a>"),
        ("rules from the render", "<style>a { color: {{ c }} }</style><a>x</a>"),
        ("an element the parser drops", "<style>tr { color: red }</style><tr><td>x</td></tr>"),
        ("raw block", "<style>a { color: red }</style>{% raw %}<a>{{ x }}</a>{% endraw %}"),
    ],
)
def test_what_could_depend_on_the_render_is_inlined_per_recipient_instead(why, source, calls):
    assert template_css_inline(source) is None, why

    compiled = CompiledMailing("s", source, "t")
    context = {"c": "a", "u": "mailto:a@b", "rows": [1, 2], "ps": ["a", "b"], "y": True, "body": "<a>b</a>", "x": 1}
    before = calls["inline"]
    rendered = [compiled.render(context).html for _ in range(3)]

    assert compiled.css_per_render is True
    assert calls["inline"] == before + 3
    assert rendered[0] == html_css_inline(compiled.html.render(context))  # type: ignore[union-attr]


def test_remote_stylesheets_are_not_fetched(no_network):
    source = (
        '<link rel="stylesheet" href="https://cdn.example.org/x.css">'
        '<style>@import url("https://cdn.example.org/y.css"); p { color: red }</style><p>x</p>'
    )

    inlined = template_css_inline(source)

    # The @import stays as written, for the reader's mail client to decide; nothing is fetched here.
    assert inlined == (
        '<link rel="stylesheet" href="https://cdn.example.org/x.css">'
        '<style>@import url("https://cdn.example.org/y.css");</style><p style="color: red;">x</p>'
    )


class _Styles(HTMLParser):
    """(tag, style) of every element in document order, tbody aside (the HTML5 parser adds it)."""

    def __init__(self, html):
        super().__init__()
        self.found = []
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        if tag not in ("tbody", "style"):  # the HTML5 parser adds tbody; css-inline moves the kept <style>
            style = (dict(attrs).get("style") or "").replace(" ", "").rstrip(";")
            self.found.append((tag, style))


def test_the_newsletter_inlined_once_styles_every_element_as_inlining_each_message_would(calls):
    from render import NEWSLETTER, contexts

    compiled = CompiledMailing("s", NEWSLETTER, "")
    plain = _html_env.from_string(NEWSLETTER)

    for context in contexts(3):
        once = compiled.render(context).html
        per_recipient = html_css_inline(plain.render(context))

        assert compiled.css_per_render is False
        assert _Styles(once).found == _Styles(per_recipient).found


# --- Compiled and prepared once -------------------------------------------------------------------------


def test_a_mailing_is_compiled_inlined_and_converted_once_however_many_recipients(calls, no_network):
    from render import NEWSLETTER, contexts

    compiled_mailing.cache_clear()
    people = contexts(200)

    results = [compiled_mailing(41, "Hi {{ name }}", NEWSLETTER, "").render(c) for c in people]

    assert compiled_mailing.cache_info().misses == 1
    assert calls == {"inline": 1, "text": 1}
    assert results[0].subject == "Hi Person 0"
    assert results[1].subject == "Hi Person 1"
    assert "Hello Person 1," in results[1].text
    assert "Unsubscribe (https://mailer.example.org/u/1/token)" in results[1].text


# --- Text from the HTML -----------------------------------------------------------------------------------


TEXT_SOURCE = """<html><head><title>{{ subject }}</title><style>.hidden { display: none }</style></head><body>
<span class="hidden">Preheader for {{ name }}</span>
<h1>News for {{ name }}</h1>
<p>Read <a href="{{ url }}?a=1&amp;b=2">the story</a> today.</p>
{# a note for the author #}
<ul>
{% for item in items %}
  <li>{{ item }}</li>
{% endfor %}
</ul>
{% if vip %}<p>Thanks for being a member.</p>{% endif %}
<p>Write to <a href="mailto:help@example.org">us</a>. <a href="#top">Top</a></p>
</body></html>"""


def test_a_text_template_is_derived_with_links_structure_and_jinja_kept():
    derived = template_text_derive(template_css_inline(TEXT_SOURCE))

    assert derived == (
        "News for {{ name }}\n"
        "\n"
        "Read the story ({{ url }}?a=1&b=2) today.\n"
        "\n"
        "{% for item in items %}  * {{ item }}\n"
        "{% endfor %}{% if vip %}\n"
        "Thanks for being a member.\n"
        "\n"
        "{% endif %}\n"
        "Write to us (help@example.org). Top\n"
    )


def test_the_derived_text_is_rendered_per_recipient():
    compiled = CompiledMailing("s", TEXT_SOURCE, "")

    ann = compiled.render({"name": "Ann", "url": "https://x.test/s", "items": ["a", "b"], "vip": True})
    bob = compiled.render({"name": "Bob <b>", "url": "https://x.test/t", "items": [], "vip": False})

    assert compiled.text_per_render is False
    assert ann.text == (
        "News for Ann\n\nRead the story (https://x.test/s?a=1&b=2) today.\n\n"
        "  * a\n  * b\n\nThanks for being a member.\n\nWrite to us (help@example.org). Top"
    )
    # Text is not HTML: values go in as they are, not entity-escaped.
    assert bob.text == (
        "News for Bob <b>\n\nRead the story (https://x.test/t?a=1&b=2) today.\n\nWrite to us (help@example.org). Top"
    )
    assert "Bob &lt;b&gt;" in bob.html


def test_a_written_text_template_is_used_as_it_is(calls):
    compiled = CompiledMailing("s", TEXT_SOURCE, "Hi {{ name }}")

    assert compiled.render({"name": "Ann"}).text == "Hi Ann"
    assert compiled.text_source == "Hi {{ name }}"
    assert calls["text"] == 0


@pytest.mark.parametrize(
    "source",
    [
        "<p>{{ body|safe }}</p>",
        "<style>{% if x %}p { color: red }{% endif %}</style><p>b</p>",
        '<p class="{% if x %}a{% endif %}">b</p>',
        "<p>&#123;&#123; x }}</p>",
    ],
)
def test_when_a_text_template_cannot_be_derived_each_rendered_html_is_converted(source, calls):
    compiled = CompiledMailing("s", source, "")
    context = {"body": "<b>bold</b> and <a href='https://x.test'>a link</a>", "x": True}

    rendered = compiled.render(context)

    assert compiled.text_per_render is True
    assert compiled.text_source == source
    assert rendered.text == html_text(rendered.html)
    assert calls["text"] >= 1


def test_a_converted_text_part_keeps_links():
    rendered = template_render_preview(
        subject="s", html="<p>{{ body|safe }}</p>", text="", context={"body": '<a href="https://x.test">x</a>'}
    )

    assert rendered.text == "x (https://x.test)\n"


# --- Errors name the part and the line --------------------------------------------------------------------


def test_a_render_error_names_the_part_and_the_line_the_author_wrote():
    source = "<style>\np { color: red }\n</style>\n<p>fine</p>\n<p>{{ 1 / zero }}</p>\n"

    with pytest.raises(TemplateRenderFailed) as exc:
        CompiledMailing("s", source, "t").render({"zero": 0})

    assert exc.value.extra == {"part": "html", "line": 5}
    assert exc.value.message.startswith("Template html, line 5 could not be rendered:")


def test_a_render_error_in_the_subject_names_the_subject():
    with pytest.raises(TemplateRenderFailed) as exc:
        CompiledMailing("Hi {{ name.upper(1, 2, 3) }}", "", "t").render({"name": "Ann"})

    assert exc.value.extra == {"part": "subject", "line": 1}


def test_a_syntax_error_at_compile_names_the_part_and_line():
    with pytest.raises(TemplateSyntaxInvalid) as exc:
        CompiledMailing("s", "<style>p{color:red}</style>\n<p>{% if x %}</p>\n", "")

    assert exc.value.extra == {"part": "html", "line": 2}
