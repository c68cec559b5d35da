import pytest

from delivery.exceptions import TemplateSyntaxInvalid
from delivery.rendering import template_check, template_render_preview


def test_a_syntax_error_names_the_part_and_line():
    with pytest.raises(TemplateSyntaxInvalid) as exc:
        template_check("<p>Hello</p>\n<p>{{ name </p>\n", part="html")

    assert exc.value.extra == {"part": "html", "line": 2}
    assert "html, line 2" in exc.value.message


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ cycler.__init__.__globals__ }}",
        "{{ x['__class__'] }}",
        "line one\n{{ joiner._last }}",
    ],
)
def test_reaching_for_python_internals_is_refused_at_save(source):
    with pytest.raises(TemplateSyntaxInvalid) as exc:
        template_check(source, part="text")

    assert "is not allowed in templates" in exc.value.message


def test_the_sandbox_renders_nothing_dangerous_even_without_the_save_check():
    rendered = template_render_preview(
        subject="{{ ''.__class__ }}", html="<p>{{ name }}</p>", text="", context={"name": "<b>Ann</b>"}
    )

    assert rendered.subject == ""
    assert rendered.html == "<p>&lt;b&gt;Ann&lt;/b&gt;</p>"


def test_subject_is_one_line_even_if_the_template_spans_lines():
    rendered = template_render_preview(subject="Hi\n {{ name }}\n", html="", text="x", context={"name": "Ann"})

    assert rendered.subject == "Hi Ann"
