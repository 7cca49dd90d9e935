"""Templates load once and refuse to start broken; rendering is strict, sandboxed, and escapes only HTML."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from service.intake.templates import TemplateLoadError, TemplateRenderError, load_templates

ROOT = Path(__file__).resolve().parents[2]


def write_template(folder: Path, name: str, **parts: str) -> Path:
    target = folder / name
    target.mkdir(parents=True)
    for part, source in parts.items():
        (target / part.replace("_", ".")).write_text(source, encoding="utf-8")
    return target


def test_shipped_templates_load_and_list_their_variables() -> None:
    templates = load_templates(ROOT / "config" / "templates")

    assert templates.names() == ["password-reset", "welcome"]
    welcome = templates.get("welcome")
    assert welcome is not None
    assert welcome.variables == ("email", "first_name", "login_url", "product")


def test_html_is_escaped_text_and_subject_are_not_and_one_trailing_newline_leaves_the_subject(tmp_path: Path) -> None:
    write_template(
        tmp_path, "t", subject_txt="Hi {{ name }}\n", body_txt="Text {{ name }}\n", body_html="<p>{{ name }}</p>"
    )
    rendered = load_templates(tmp_path).get("t").render({"name": "Tom & <Jerry>"})  # type: ignore[union-attr]

    assert rendered.subject == "Hi Tom & <Jerry>"
    assert rendered.text == "Text Tom & <Jerry>\n"
    assert rendered.html == "<p>Tom &amp; &lt;Jerry&gt;</p>"


def test_a_missing_variable_is_an_error_naming_it(tmp_path: Path) -> None:
    write_template(tmp_path, "t", subject_txt="Hi", body_txt="Hello {{ first_name }}")

    with pytest.raises(TemplateRenderError, match="first_name") as caught:
        load_templates(tmp_path).get("t").render({})  # type: ignore[union-attr]
    assert caught.value.part == "body.txt"


def test_the_sandbox_refuses_reaching_into_python(tmp_path: Path) -> None:
    write_template(tmp_path, "t", subject_txt="Hi", body_txt="{{ x.__class__.__mro__[1].__subclasses__() }}")

    with pytest.raises(TemplateRenderError):
        load_templates(tmp_path).get("t").render({"x": "a"})  # type: ignore[union-attr]


def test_a_syntax_error_names_the_file_and_line(tmp_path: Path) -> None:
    write_template(tmp_path, "broken", subject_txt="Hi", body_txt="line one\n{{ name }\n")

    with pytest.raises(TemplateLoadError, match=r"broken/body\.txt:2: "):
        load_templates(tmp_path)


def test_a_template_without_body_txt_is_refused(tmp_path: Path) -> None:
    write_template(tmp_path, "nobody", subject_txt="Hi", body_html="<p>hi</p>")

    with pytest.raises(TemplateLoadError, match=r"nobody/body\.txt: missing"):
        load_templates(tmp_path)


@pytest.mark.slow
def test_a_broken_template_stops_the_start_with_one_clear_line(tmp_path: Path) -> None:
    write_template(tmp_path / "templates", "welcome", subject_txt="Hi {% if %}", body_txt="x")

    result = subprocess.run(
        [sys.executable, "-c", "import service.main"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT), "TEMPLATES_DIR": str(tmp_path / "templates")},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("template error: ")
    assert "welcome/subject.txt:1: " in line
