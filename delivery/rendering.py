"""Rendering marketer-written Jinja2 at send time, in Jinja2's sandbox.

Templates are compiled once per Mailing per process (a Mailing's content is frozen, so its id is a safe cache
key) and rendered per recipient from the Message's small context. The HTML is prepared at the same moment,
once: its <style> rules are written into the template's style attributes, and when the Mailing has no text
template one is derived from the HTML with the Jinja kept (delivery/template_html.py says how, and when it
refuses and the work is done per recipient instead).

Why once (bench/render.py, 1,000 renders of a newsletter, docs/BENCHMARKS.md): inlining each rendered message
made the HTML render 2.4-5x slower; converting each rendered HTML to text ran 24-42x slower than rendering
the derived text template; together, preparing once renders a message 7.5-9.8x faster (about 0.3 ms).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from jinja2 import Template, TemplateSyntaxError, nodes
from jinja2.exceptions import SecurityError, UndefinedError
from jinja2.sandbox import SandboxedEnvironment

from delivery.exceptions import TemplateRenderFailed, TemplateSyntaxInvalid
from delivery.template_html import html_css_inline, html_text, template_css_inline, template_text_derive

__all__ = [
    "CompiledMailing",
    "RenderedMessage",
    "TemplateRenderFailed",
    "TemplateSyntaxInvalid",
    "compiled_mailing",
    "template_check",
    "template_render_preview",
]

_BLANK_RUNS = re.compile(r"\n{3,}")
_html_env = SandboxedEnvironment(autoescape=True, trim_blocks=False)
_text_env = SandboxedEnvironment(autoescape=False)


def _environment(part: str) -> SandboxedEnvironment:
    return _html_env if part == "html" else _text_env


def template_check(source: str, *, part: str) -> None:
    """Refuse source that does not compile, or that names an attribute or key starting with an underscore.

    The sandbox already blocks such access at render time, but then a campaign would go out with holes in it;
    refusing at save tells the author at once, with the line.
    """
    env = _environment(part)
    try:
        tree = env.parse(source or "")
    except TemplateSyntaxError as exc:
        raise TemplateSyntaxInvalid(
            f"Template {part}, line {exc.lineno}: {exc.message}", {"part": part, "line": exc.lineno}
        ) from exc
    for node in tree.find_all((nodes.Getattr, nodes.Getitem)):
        name = node.attr if isinstance(node, nodes.Getattr) else getattr(node.arg, "value", None)  # type: ignore[attr-defined]
        if isinstance(name, str) and name.startswith("_"):
            raise TemplateSyntaxInvalid(
                f"Template {part}, line {node.lineno}: access to '{name}' is not allowed in templates.",
                {"part": part, "line": node.lineno},
            )


@dataclass(frozen=True)
class RenderedMessage:
    subject: str
    html: str
    text: str


def _compile(env: SandboxedEnvironment, source: str, part: str) -> Template:
    try:
        return env.from_string(source)
    except TemplateSyntaxError as exc:
        raise TemplateSyntaxInvalid(
            f"Template {part}, line {exc.lineno}: {exc.message}", {"part": part, "line": exc.lineno}
        ) from exc


def _render(template: Template, context: dict[str, Any], part: str) -> str:
    try:
        return template.render(context)
    except (SecurityError, UndefinedError, TypeError, ValueError, ArithmeticError) as exc:
        # Jinja maps its frames back to template lines; the innermost one is where the render failed.
        line = None
        tb = exc.__traceback__
        while tb is not None:
            if tb.tb_frame.f_code.co_filename == "<template>":
                line = tb.tb_lineno
            tb = tb.tb_next
        where = f"{part}, line {line}" if line else part
        raise TemplateRenderFailed(
            f"Template {where} could not be rendered: {exc}", {"part": part, "line": line}
        ) from exc


class CompiledMailing:
    """A Mailing's templates, prepared once: compiled, CSS inlined into the HTML source, a text template derived.

    `text_source` is the source the text part comes from (the written text template, the one derived from the
    HTML, or the HTML itself when it is converted per recipient), so a caller can tell whether the text part
    places a given link.
    """

    def __init__(self, subject: str, html: str, text: str) -> None:
        self.subject = _compile(_text_env, subject, "subject")
        self.html: Template | None = None
        self.text: Template | None = None
        # Set when the source could not be prepared safely once: the work is then done per recipient.
        self.css_per_render = False
        self.text_per_render = False
        self.text_part = "text"
        self.text_source = text
        if html:
            _compile(_html_env, html, "html")  # errors name the author's line, not one of the inlined source
            inlined = template_css_inline(html)
            self.css_per_render = inlined is None
            self.html = _compile(_html_env, html if inlined is None else inlined, "html")
            if not text:
                self.text_part = "text (from html)"
                derived = template_text_derive(html if inlined is None else inlined)
                self.text_per_render = derived is None
                self.text_source = html if derived is None else derived
                if derived is not None:
                    self.text = _compile(_text_env, derived, self.text_part)
        if text:
            self.text = _compile(_text_env, text, "text")

    def render(self, context: dict[str, Any]) -> RenderedMessage:
        """Subject, HTML and text for one recipient; the text part is generated from the HTML when none is written.

        Raises TemplateRenderFailed naming the part and line.
        """
        subject = " ".join(_render(self.subject, context, "subject").split())
        html = _render(self.html, context, "html") if self.html else ""
        if html and self.css_per_render:
            html = html_css_inline(html)
        if self.text is not None:
            text = _render(self.text, context, self.text_part)
            if self.text_part != "text":
                # Branches and loops that render nothing leave their blank lines behind.
                text = _BLANK_RUNS.sub("\n\n", text)
        elif html and self.text_per_render:
            text = html_text(html)
        else:
            text = ""
        return RenderedMessage(subject=subject, html=html, text=text)


@lru_cache(maxsize=64)
def compiled_mailing(mailing_id: int, subject: str, html: str, text: str) -> CompiledMailing:
    """Compile once per Mailing and process; the source is part of the key so an unsaved preview cannot go stale."""
    return CompiledMailing(subject, html, text)


def template_render_preview(*, subject: str, html: str, text: str, context: dict[str, Any]) -> RenderedMessage:
    return CompiledMailing(subject, html, text).render(context)
