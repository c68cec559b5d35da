"""Rendering marketer-written Jinja2 at send time, in Jinja2's sandbox.

Templates are compiled once per Mailing per process (a Mailing's content is frozen, so its id is a safe cache
key) and rendered per recipient from the Message's small context.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from jinja2 import TemplateSyntaxError, nodes
from jinja2.exceptions import SecurityError, UndefinedError
from jinja2.sandbox import SandboxedEnvironment

from delivery.exceptions import TemplateRenderFailed, TemplateSyntaxInvalid

__all__ = ["TemplateSyntaxInvalid", "TemplateRenderFailed", "template_check", "RenderedMessage", "compiled_mailing"]

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


class CompiledMailing:
    def __init__(self, subject: str, html: str, text: str) -> None:
        self.subject = _text_env.from_string(subject)
        self.html = _html_env.from_string(html) if html else None
        self.text = _text_env.from_string(text) if text else None

    def render(self, context: dict[str, Any]) -> RenderedMessage:
        try:
            subject = " ".join(self.subject.render(context).split())
            html = self.html.render(context) if self.html else ""
            text = self.text.render(context) if self.text else ""
        except (SecurityError, UndefinedError, TypeError, ValueError, ArithmeticError) as exc:
            raise TemplateRenderFailed(f"Template could not be rendered: {exc}") from exc
        return RenderedMessage(subject=subject, html=html, text=text)


@lru_cache(maxsize=64)
def compiled_mailing(mailing_id: int, subject: str, html: str, text: str) -> CompiledMailing:
    """Compile once per Mailing and process; the source is part of the key so an unsaved preview cannot go stale."""
    return CompiledMailing(subject, html, text)


def template_render_preview(*, subject: str, html: str, text: str, context: dict[str, Any]) -> RenderedMessage:
    return CompiledMailing(subject, html, text).render(context)
