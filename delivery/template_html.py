"""Preparing a Mailing's HTML template once, before any recipient: CSS inlined, and a text template derived.

Both work on the Jinja2 *source*, so each recipient's render is plain Jinja. Both refuse (return None) whenever
they cannot prove the result renders what per-recipient work would; the caller then does that work per
recipient on the rendered HTML (slower, always right). Nothing here loads anything from the network.

CSS: the source is never re-serialized by an HTML parser. An HTML5 parser moves text out of tables (a
`{% for %}` between `<tr>`s), closes tags a conditional opened twice (`{% if %}<a href=1>{% else %}<a href=2>`)
and re-quotes attributes, all of which would change what the template means. Instead:
1. every Jinja construct is masked with filler of the same length, so offsets stay those of the source;
2. a light scan finds each start tag and its attributes; each gets a numbered `data-mljid` marker;
3. css-inline (html5ever + a CSS engine, Rust) inlines that marked copy, and we read back each marker's style;
4. those styles are written into the *original* source, tag by tag; `<style>` keeps only what cannot be
   inlined (@media and other at-rules); every other byte of the source is left as it was.
It refuses when the styles could depend on the render: a construct inside a tag but outside an attribute
value, one in `class`/`id` (or in any attribute when selectors test attributes), one inside `<style>`, a
`<style>` inside a Jinja block, structural selectors (`:nth-child`, `+`, `~` ...) with Jinja statements about,
`|safe` or `|urlize` markup, `{% raw %}`, or an element the HTML5 parser would not keep as its own.

Text: the masked HTML (every construct an inert token) is converted by inscriptis (Apache-2.0; links as
"label (url)", headings and paragraphs as blocks, lists with bullets, table cells in reading order); the
tokens are then put back, so the result is a text template rendered per recipient like a written one. It
refuses when a Jinja statement would be lost or reordered by the conversion (one in `<head>`, in an attribute
other than href, `{% raw %}`), or when values may carry markup (`|safe`). Measured on 1,000 renders of
bench/render.py's newsletter: the derived text template renders at 24-42x the rate of converting each
rendered HTML (about 2.2 ms a message; docs/BENCHMARKS.md), hence derive once, with per-recipient conversion
only as the fallback.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass

import css_inline
from inscriptis import get_text
from inscriptis.css_profiles import CSS_PROFILES
from inscriptis.html_properties import Display
from inscriptis.model.config import ParserConfig
from inscriptis.model.html_document_state import HtmlDocumentState
from inscriptis.model.html_element import HtmlElement
from inscriptis.model.tag import CustomHtmlTagHandlerMapping
from jinja2 import nodes
from jinja2.sandbox import SandboxedEnvironment

__all__ = ["html_css_inline", "html_text", "template_css_inline", "template_text_derive"]

logger = logging.getLogger(__name__)

# Remote stylesheets stay off: rendering never reaches the network. <link> tags are kept as written.
_INLINER = css_inline.CSSInliner(keep_at_rules=True, keep_link_tags=True, load_remote_stylesheets=False)


def html_css_inline(html: str) -> str:
    """Inline one document's <style> rules (at-rules stay in <style>).

    CSS the inliner cannot parse (an invalid style attribute) leaves the document as written: its <style> still
    styles it in most clients, which beats not sending it.
    """
    try:
        return _INLINER.inline(html)
    except css_inline.InlineError as exc:
        logger.warning("CSS not inlined: %s", exc)
        return html


# --- Jinja constructs -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Construct:
    start: int
    end: int
    kind: str  # "expr", "stmt", "comment" or "raw"
    text: str


_RAW_START = re.compile(r"\{%[-+]?\s*raw\s*[-+]?%\}")
_RAW_END = re.compile(r"\{%[-+]?\s*endraw\s*[-+]?%\}")


def _constructs(source: str) -> list[_Construct] | None:
    """Every `{{ }}`, `{% %}` and `{# #}` of a template that compiled, in order; string literals may hold `}}`.

    None when the scan disagrees with Jinja's own lexer about how many there are (then nothing is rewritten).
    """
    found: list[_Construct] = []
    i = 0
    length = len(source)
    while True:
        i = source.find("{", i)
        if i == -1 or i + 1 >= length:
            break
        opener = source[i + 1]
        if opener == "#":
            end = source.find("#}", i + 2)
            if end == -1:
                return None
            found.append(_Construct(i, end + 2, "comment", source[i : end + 2]))
            i = end + 2
            continue
        if opener not in "{%":
            i += 1
            continue
        closer = "}}" if opener == "{" else "%}"
        j = i + 2
        quote = ""
        depth = 0  # as Jinja's lexer: "}}" closes only outside brackets ({{ {'a': {'b': 1}} }})
        while j < length:
            char = source[j]
            if quote:
                if char == "\\":
                    j += 1
                elif char == quote:
                    quote = ""
            elif char in "'\"":
                quote = char
            elif depth == 0 and source.startswith(closer, j):
                break
            elif char in "([{":
                depth += 1
            elif char in ")]}" and depth:
                depth -= 1
            j += 1
        if j >= length:
            return None
        end = j + 2
        kind = "expr" if opener == "{" else "stmt"
        if kind == "stmt" and _RAW_START.fullmatch(source, i, end):
            raw_end = _RAW_END.search(source, end)
            if raw_end is None:
                return None
            end, kind = raw_end.end(), "raw"
        found.append(_Construct(i, end, kind, source[i:end]))
        i = end
    expected = sum(1 for _, token, _ in _env.lex(source) if token in ("variable_begin", "block_begin", "comment_begin"))
    raw_blocks = sum(1 for c in found if c.kind == "raw")
    return found if len(found) == expected + raw_blocks else None


_env = SandboxedEnvironment(autoescape=True)
_BLOCK_OPENERS = {"if", "for", "macro", "call", "filter", "with", "autoescape", "block"}


def _statement_word(construct: _Construct) -> str:
    match = re.match(r"\{%[-+]?\s*(\w+)", construct.text)
    return match.group(1) if match else ""


def _marks_markup(source: str) -> bool:
    """Whether values may carry markup (`|safe`, autoescape off): then neither CSS nor text can be prepared."""
    tree = _env.parse(source)
    if any(node.name in ("safe", "urlize") for node in tree.find_all(nodes.Filter)):
        return True
    return any(isinstance(node, nodes.ScopedEvalContextModifier) and node.options for node in tree.find_all(nodes.Node))


def _masked(source: str, constructs: list[_Construct], filler: str = "x") -> str:
    parts: list[str] = []
    last = 0
    for construct in constructs:
        parts.append(source[last : construct.start])
        parts.append(filler * (construct.end - construct.start))
        last = construct.end
    parts.append(source[last:])
    return "".join(parts)


# --- A light, non-restructuring scan of the tags ----------------------------------------------------------

_TOKEN = re.compile(
    r"<!--.*?-->|<![^>]*>|<\?[^>]*>|<(/?)([a-zA-Z][^\s/>]*)((?:[^>\"']|\"[^\"]*\"|'[^']*')*)>",
    re.DOTALL,
)
_ATTR = re.compile(r"""([^\s"'>/=]+)(?:\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s"'=<>`]+)))?""")
_RAWTEXT = {"style", "script", "textarea", "title", "xmp", "iframe", "noembed", "noframes", "noscript"}


@dataclass
class _Attr:
    name: str
    start: int  # of the whole attribute
    end: int
    value_start: int  # of the value (inside quotes); -1 when there is none
    value_end: int
    quote: str


@dataclass
class _Tag:
    name: str
    start: int
    end: int  # just past ">"
    name_end: int
    attrs: list[_Attr]


@dataclass
class _Scan:
    tags: list[_Tag]
    styles: list[tuple[int, int, int, int]]  # element start, content start, content end, element end


def _scan(masked: str) -> _Scan:
    tags: list[_Tag] = []
    styles: list[tuple[int, int, int, int]] = []
    pos = 0
    while (match := _TOKEN.search(masked, pos)) is not None:
        pos = match.end()
        if match.group(2) is None or match.group(1):
            continue
        name = match.group(2).lower()
        attrs_at = match.start(3)
        attrs = []
        for attr in _ATTR.finditer(match.group(3)):
            group = next((g for g in (2, 3, 4) if attr.group(g) is not None), 0)
            attrs.append(
                _Attr(
                    name=attr.group(1).lower(),
                    start=attrs_at + attr.start(),
                    end=attrs_at + attr.end(),
                    value_start=attrs_at + attr.start(group) if group else -1,
                    value_end=attrs_at + attr.end(group) if group else -1,
                    quote={2: '"', 3: "'", 4: ""}.get(group, ""),
                )
            )
        tags.append(_Tag(name, match.start(), match.end(), match.end(2), attrs))
        if name in _RAWTEXT:
            close = re.compile(rf"</{name}\s*>", re.IGNORECASE).search(masked, pos)
            content_end = close.start() if close else len(masked)
            if name == "style":
                styles.append((match.start(), pos, content_end, close.end() if close else len(masked)))
            pos = close.end() if close else len(masked)
    return _Scan(tags, styles)


def _within(construct: _Construct, start: int, end: int) -> bool:
    return start <= construct.start and construct.end <= end


# --- CSS inlined into the source ---------------------------------------------------------------------------

_STRUCTURAL = re.compile(r":(?:nth-|first-|last-|only-|empty)|[+~]")
_OUT_TAG = re.compile(r"<[a-zA-Z][^\s/>]*((?:[^>\"']|\"[^\"]*\"|'[^']*')*)>")
_OUT_STYLE = re.compile(r"<style[^>]*>(.*?)</style\s*>", re.DOTALL | re.IGNORECASE)
_CSS_COMMENT = re.compile(r"/\*.*?\*/", re.DOTALL)


def _selectors(css: str) -> list[str]:
    """The selector preludes of a stylesheet (rules nested in at-rules included), declarations left out."""
    css = _CSS_COMMENT.sub("", css)
    preludes = re.findall(r"(?:^|(?<=[;{}]))\s*([^;{}]*?)\s*\{", css)
    return [p for p in preludes if p and not p.startswith("@")]


def template_css_inline(source: str) -> str | None:
    """The HTML template with its <style> rules written into style attributes; None when that is not safe.

    A template with no <style> comes back unchanged.
    """
    if not re.search(r"<style", source, re.IGNORECASE):
        return source
    constructs = _constructs(source)
    if constructs is None or any(c.kind == "raw" for c in constructs) or _marks_markup(source):
        return None
    masked = _masked(source, constructs)
    scan = _scan(masked)

    statements = [c for c in constructs if c.kind == "stmt"]
    css = "".join(masked[content_start:content_end] for _, content_start, content_end, _ in scan.styles)
    selectors = _selectors(css)
    tests_attributes = any("[" in s for s in selectors)
    if statements and any(_STRUCTURAL.search(s) for s in selectors):
        return None  # which element is "first" or "next" depends on the loop and the branches
    for _, content_start, content_end, _ in scan.styles:
        if any(_within(c, content_start, content_end) for c in constructs):
            return None  # the rules themselves depend on the render
        if _block_depth(statements, content_start) > 0:
            return None  # a stylesheet that applies only in some branch or repeats in a loop
    style_attr_dynamic: dict[int, _Attr] = {}
    for index, tag in enumerate(scan.tags):
        for construct in constructs:
            if not _within(construct, tag.start, tag.end):
                continue
            attr = next(
                (a for a in tag.attrs if a.value_start <= construct.start and construct.end <= a.value_end), None
            )
            if attr is None or attr.name in ("class", "id") or tests_attributes:
                return None  # the element's attributes, and so the rules that match it, depend on the render
            if attr.name == "style":
                style_attr_dynamic[index] = attr

    marked = _marked_copy(masked, scan, style_attr_dynamic)
    try:
        inlined = _INLINER.inline(marked)
    except css_inline.InlineError as exc:
        # Per recipient it would fail the same way: the template goes out as written, <style> and all.
        logger.warning("CSS not inlined: %s", exc)
        return source
    styles: dict[int, str] = {}
    for match in _OUT_TAG.finditer(inlined):
        found = {a.group(1).lower(): a.group(2) for a in _ATTR.finditer(match.group(1)) if a.group(2) is not None}
        if "data-mljid" in found:
            styles[int(found["data-mljid"])] = found.get("style", "")
    if len(styles) != sum(1 for tag in scan.tags if tag.name != "style"):
        return None  # the HTML5 parser merged or dropped an element (a second <body>, a <tr> outside a table)
    at_rules = " ".join(m.group(1).strip() for m in _OUT_STYLE.finditer(inlined) if m.group(1).strip())

    result = _patched(source, scan, styles, style_attr_dynamic, at_rules)
    after = _constructs(result)
    if after is None or [c.text for c in after] != [c.text for c in constructs]:
        return None  # the written CSS would read as Jinja (a "{#" in a rule), or a construct moved
    return result


def _block_depth(statements: list[_Construct], position: int) -> int:
    depth = 0
    for statement in statements:
        if statement.start >= position:
            break
        word = _statement_word(statement)
        if word.startswith("end"):
            depth -= 1
        elif word in _BLOCK_OPENERS or (word == "set" and "=" not in statement.text):
            depth += 1
    return depth


def _marked_copy(masked: str, scan: _Scan, without_style: dict[int, _Attr]) -> str:
    """The masked source with a numbered marker on each start tag (and dynamic style attributes left out)."""
    parts: list[str] = []
    last = 0
    for index, tag in enumerate(scan.tags):
        if tag.name == "style":
            continue  # css-inline consumes it; it is rewritten below, not styled
        parts.append(masked[last : tag.name_end])
        parts.append(f' data-mljid="{index}"')
        last = tag.name_end
        if index in without_style:
            attr = without_style[index]
            parts.append(masked[last : attr.start])
            last = attr.end
    parts.append(masked[last:])
    return "".join(parts)


def _patched(source: str, scan: _Scan, styles: dict[int, str], dynamic: dict[int, _Attr], at_rules: str) -> str:
    edits: list[tuple[int, int, str]] = []  # start, end, replacement; non-overlapping
    for index, tag in enumerate(scan.tags):
        if tag.name == "style":
            continue
        style = styles[index]  # as html5ever escapes a double-quoted value
        existing = next((a for a in tag.attrs if a.name == "style"), None)
        if existing is None:
            if style:
                at = tag.end - 2 if source[tag.end - 2] == "/" else tag.end - 1
                while at > tag.name_end and source[at - 1].isspace():
                    at -= 1
                edits.append((at, at, f' style="{style}"'))
            continue
        if index in dynamic:
            # The written declarations come last, so they win as they would have over the rules.
            original = source[existing.value_start : existing.value_end]
            value = f"{style.rstrip().rstrip(';')}; {original}" if style else original
        else:
            value = style
        if existing.quote == "'":
            value = value.replace("'", "&#39;")
        if existing.value_start == -1 or not existing.quote:
            edits.append((existing.start, existing.end, f'style="{value}"'))
        else:
            edits.append((existing.value_start, existing.value_end, value))
    for position, (element_start, _, _, element_end) in enumerate(scan.styles):
        if position == 0 and at_rules:
            open_tag_end = source.index(">", element_start) + 1
            edits.append((open_tag_end, source.lower().index("</style", open_tag_end), at_rules))
        else:
            edits.append((element_start, element_end, ""))
    parts: list[str] = []
    last = 0
    for start, end, replacement in sorted(edits, key=lambda e: (e[0], e[1])):
        parts.append(source[last:start])
        parts.append(replacement)
        # Same line count as the source, so a render error names the line the author wrote.
        parts.append("\n" * max(0, source.count("\n", start, end) - replacement.count("\n")))
        last = end
    parts.append(source[last:])
    return "".join(parts)


# --- Text from HTML ----------------------------------------------------------------------------------------


def _text_config() -> ParserConfig:
    css = dict(CSS_PROFILES["strict"])
    # Email layouts nest tables for columns; a grid sized from the template (or one recipient) misleads, so
    # rows are lines and cells run on in reading order.
    for name in ("table", "thead", "tbody", "tfoot", "tr"):
        css[name] = HtmlElement(display=Display.block)
    for name in ("td", "th"):
        css[name] = HtmlElement(display=Display.inline, suffix=" ", limit_whitespace_affixes=True)
    css["hr"] = HtmlElement(display=Display.block, prefix="----", margin_before=1, margin_after=1)

    def link_start(state: HtmlDocumentState, attrs: dict) -> None:
        href = (attrs.get("href") or "").strip()
        state.link_target = "" if not href or href.startswith("#") else href.removeprefix("mailto:")

    def link_end(state: HtmlDocumentState) -> None:
        if state.link_target:
            state.tags[-1].write(f" ({state.link_target})")

    def nothing_start(state: HtmlDocumentState, attrs: dict) -> None:
        return None

    def nothing_end(state: HtmlDocumentState) -> None:
        return None

    tables = dict.fromkeys(("table", "tr", "td", "th"), nothing_start)
    return ParserConfig(
        css=css,
        display_images=False,
        custom_html_tag_handler_mapping=CustomHtmlTagHandlerMapping(
            start_tag_mapping={"a": link_start, **tables},
            end_tag_mapping={"a": link_end, **dict.fromkeys(("table", "td", "th"), nothing_end)},
        ),
    )


_TEXT_CONFIG = _text_config()
_BLANK_RUNS = re.compile(r"\n{3,}")


def html_text(html: str) -> str:
    """The text part of one rendered HTML document."""
    text = get_text(html, _TEXT_CONFIG)
    return _BLANK_RUNS.sub("\n\n", "\n".join(line.rstrip() for line in text.strip().splitlines())) + "\n"


def template_text_derive(source: str) -> str | None:
    """A text template derived from an HTML template, with its Jinja kept; None when that is not safe."""
    constructs = _constructs(source)
    if constructs is None or any(c.kind == "raw" for c in constructs) or _marks_markup(source):
        return None
    kept = [c for c in constructs if c.kind != "comment"]
    nonce = hashlib.sha1(source.encode()).hexdigest()[:6]  # noqa: S324 - a token name, not a security use
    prefix = f"mlj{nonce}q"
    while prefix in source:
        prefix += "q"
    tokens = {f"{prefix}{n}z": c for n, c in enumerate(kept)}
    parts: list[str] = []
    last = 0
    for token, construct in tokens.items():
        parts.append(source[last : construct.start])
        parts.append(token)
        last = construct.end
    parts.append(source[last:])
    # Comments go: they render nothing, and would only leave blank lines.
    masked = "".join(parts)
    for construct in constructs:
        if construct.kind == "comment":
            masked = masked.replace(construct.text, "", 1)

    text = html_text(masked)
    token_pattern = re.compile(rf"{prefix}\d+z")
    if [tokens[t].text for t in token_pattern.findall(text) if tokens[t].kind == "stmt"] != [
        c.text for c in kept if c.kind == "stmt"
    ]:
        return None  # a statement was dropped (in <head>, in an attribute) or moved: the logic would change

    lines: list[str] = []
    for line in text.splitlines(keepends=True):
        bare = token_pattern.sub(lambda m: "" if tokens[m.group(0)].kind == "stmt" else m.group(0), line)
        if not bare.strip() and token_pattern.search(line):
            # A line holding only statements ({% for %}, {% endif %}) would print an empty line each time.
            lines.append("".join(tokens[t].text for t in token_pattern.findall(line)))
        else:
            lines.append(line)
    derived = token_pattern.sub(lambda m: tokens[m.group(0)].text, "".join(lines))
    after = _constructs(derived)
    if after is None or [c.text for c in after] != [tokens[t].text for t in token_pattern.findall(text)]:
        return None  # decoded text reads as Jinja ("&#123;&#123;" became "{{"): it would run as a template
    return derived
