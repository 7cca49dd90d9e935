"""Mail templates: `<TEMPLATES_DIR>/<name>/subject.txt`, `body.txt` and an optional `body.html`, rendered with Jinja2.

Loaded and compiled once at start. `data` comes from clients, so rendering runs in Jinja's sandbox; a variable
the data lacks is an error (StrictUndefined), never an empty string in someone's inbox. Only the HTML body is
autoescaped: the subject and the text body are plain text, where `&amp;` would be a visible defect.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
import structlog
from jinja2 import meta
from jinja2.sandbox import SandboxedEnvironment

PARTS = ("subject.txt", "body.txt", "body.html")


class TemplateLoadError(Exception):
    """A template folder that cannot be used: a missing file, a syntax error, bad encoding."""


class TemplateRenderError(Exception):
    """Rendering failed for this data: a missing variable, a sandbox refusal, a failing filter."""

    def __init__(self, part: str, message: str) -> None:
        super().__init__(f"{part}: {message}")
        self.part = part
        self.message = message


@dataclass(frozen=True, slots=True)
class RenderedMail:
    subject: str
    text: str
    html: str | None


@dataclass(frozen=True, slots=True)
class MailTemplate:
    name: str
    subject: jinja2.Template
    text: jinja2.Template
    html: jinja2.Template | None
    variables: tuple[str, ...]

    def render(self, data: dict[str, Any]) -> RenderedMail:
        subject = self._render("subject.txt", self.subject, data)
        # An editor's newline at the end of subject.txt is not part of the subject; any other one is refused later.
        subject = subject.removesuffix("\n").removesuffix("\r")
        text = self._render("body.txt", self.text, data)
        html = self._render("body.html", self.html, data) if self.html is not None else None
        return RenderedMail(subject=subject, text=text, html=html)

    def _render(self, part: str, template: jinja2.Template, data: dict[str, Any]) -> str:
        try:
            return template.render(data)
        except jinja2.UndefinedError as exc:
            raise TemplateRenderError(part, f"missing variable: {exc.message}") from None
        except jinja2.TemplateError as exc:  # SecurityError from the sandbox, a filter's error
            raise TemplateRenderError(part, str(exc)) from None
        except (TypeError, ValueError, ArithmeticError) as exc:
            raise TemplateRenderError(part, f"{type(exc).__name__}: {exc}") from None


class Templates:
    """Every template of one folder, by name."""

    def __init__(self, templates: dict[str, MailTemplate]) -> None:
        self._templates = dict(sorted(templates.items()))

    def get(self, name: str) -> MailTemplate | None:
        return self._templates.get(name)

    def __iter__(self) -> Iterator[MailTemplate]:
        return iter(self._templates.values())

    def names(self) -> list[str]:
        return list(self._templates)


def _environment(*, autoescape: bool) -> SandboxedEnvironment:
    return SandboxedEnvironment(
        undefined=jinja2.StrictUndefined,
        autoescape=autoescape,
        keep_trailing_newline=True,
        auto_reload=False,
    )


def load_templates(folder: Path) -> Templates:
    """Compile every template under `folder`; the first broken one raises TemplateLoadError naming its file."""
    if not folder.is_dir():
        raise TemplateLoadError(f"{folder}: not a folder")
    text_env = _environment(autoescape=False)
    html_env = _environment(autoescape=True)
    found: dict[str, MailTemplate] = {}
    for entry in sorted(folder.iterdir()):
        if not entry.is_dir() or entry.name.startswith("."):
            continue
        compiled: dict[str, jinja2.Template | None] = {}
        variables: set[str] = set()
        for part in PARTS:
            path = entry / part
            if not path.is_file():
                if part == "body.html":
                    compiled[part] = None
                    continue
                raise TemplateLoadError(f"{path}: missing (a template needs subject.txt and body.txt)")
            env = html_env if part.endswith(".html") else text_env
            try:
                source = path.read_text(encoding="utf-8")
                variables |= meta.find_undeclared_variables(env.parse(source))
                compiled[part] = env.from_string(source)
            except UnicodeDecodeError as exc:
                raise TemplateLoadError(f"{path}: not UTF-8 ({exc.reason} at byte {exc.start})") from None
            except jinja2.TemplateSyntaxError as exc:
                raise TemplateLoadError(f"{path}:{exc.lineno}: {exc.message}") from None
        subject, text = compiled["subject.txt"], compiled["body.txt"]
        assert subject is not None
        assert text is not None
        found[entry.name] = MailTemplate(
            name=entry.name, subject=subject, text=text, html=compiled["body.html"], variables=tuple(sorted(variables))
        )
    return Templates(found)


def load_templates_or_exit(folder: Path) -> Templates:
    """Templates for the app's start: a broken one stops it with one line, like a bad setting does. A missing
    folder only means no templates: plain notifications still work."""
    if not folder.exists():
        structlog.get_logger("service.intake.templates").warning("templates_missing", templates_dir=str(folder))
        return Templates({})
    try:
        return load_templates(folder)
    except TemplateLoadError as exc:
        print(f"template error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
