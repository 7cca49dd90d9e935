"""The docs cannot go stale silently: the module map in docs/development.md names exactly the modules and packages
under service/, and every relative link in README.md and docs/*.md points to a file (and heading) that exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
# [text](target) and ![alt](target); the target ends at whitespace or the closing parenthesis.
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
# One entry of the map: indentation, then a module (`name.py`) or a folder (`name/`), then its description.
MAP_ENTRY = re.compile(r"^(?P<indent> *)(?P<name>[A-Za-z0-9_]+(?:\.py|/))(?:\s{2,}\S.*)?$")


def module_map() -> list[str]:
    """The paths the module map names, e.g. `service/http/routes/`, `service/http/routes/batch.py`."""
    text = (ROOT / "docs/development.md").read_text(encoding="utf-8")
    section = text.split("\n## Module map\n", 1)[1]
    block = section.split("```\n", 2)[1]
    named: list[str] = []
    parents: list[tuple[int, str]] = []  # (indentation, path) of the folders above the current line
    for number, line in enumerate(block.splitlines(), 1):
        entry = MAP_ENTRY.match(line)
        assert entry, f"docs/development.md, module map line {number}: not `<name>.py|<name>/  <what>`: {line!r}"
        indent = len(entry["indent"])
        while parents and parents[-1][0] >= indent:
            parents.pop()
        path = (parents[-1][1] if parents else "") + entry["name"]
        named.append(path)
        if path.endswith("/"):
            parents.append((indent, path))
    return named


def service_tree() -> tuple[set[str], set[str]]:
    """What the map must name (every package and every module but __init__.py), and everything it may name."""
    required: set[str] = set()
    existing: set[str] = set()
    for path in (ROOT / "service").rglob("*"):
        if "__pycache__" in path.parts:
            continue
        relative = path.relative_to(ROOT).as_posix()
        if path.is_dir():
            existing.add(relative + "/")
            if (path / "__init__.py").is_file():
                required.add(relative + "/")
        elif path.suffix == ".py":
            existing.add(relative)
            if path.name != "__init__.py":
                required.add(relative)
    required.add("service/")
    existing.add("service/")
    return required, existing


def test_the_module_map_names_every_module_and_nothing_else() -> None:
    named = module_map()
    required, existing = service_tree()
    missing = sorted(required - set(named))
    extra = sorted(set(named) - existing)
    twice = sorted({path for path in named if named.count(path) > 1})
    problems = [
        *([f"missing (add a line for each): {missing}"] if missing else []),
        *([f"named but not under service/ (remove or rename): {extra}"] if extra else []),
        *([f"named more than once: {twice}"] if twice else []),
    ]
    assert not problems, "docs/development.md's module map is out of date:\n" + "\n".join(problems)


def test_the_module_map_check_reads_nested_entries() -> None:
    # A map the parser misread would pass trivially; this pins that nesting resolves to full paths.
    named = module_map()
    assert "service/main.py" in named
    assert any(path.count("/") >= 3 for path in named), "no entry read below service/<package>/<package>/"


def anchors(path: Path) -> set[str]:
    """The anchors GitHub gives a file's headings: lower case, punctuation dropped, spaces as hyphens."""
    slugs: set[str] = set()
    for heading in re.findall(r"^#{1,6} +(.+?) *$", FENCE.sub("", path.read_text(encoding="utf-8")), re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        suffix = 0
        while (candidate := slug if suffix == 0 else f"{slug}-{suffix}") in slugs:
            suffix += 1
        slugs.add(candidate)
    return slugs


def test_every_relative_link_in_the_docs_points_to_something_that_exists() -> None:
    broken: list[str] = []
    for doc in DOCS:
        for target in LINK.findall(FENCE.sub("", doc.read_text(encoding="utf-8"))):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                continue
            file_part, _, anchor = target.partition("#")
            linked = (doc.parent / file_part).resolve() if file_part else doc
            where = f"{doc.relative_to(ROOT)}: ({target})"
            if not linked.exists():
                broken.append(f"{where}: no file {linked.relative_to(ROOT) if linked.is_relative_to(ROOT) else linked}")
            elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
                broken.append(f"{where}: no heading #{anchor} in {linked.relative_to(ROOT)}")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_every_page_under_docs_is_linked_from_another_page() -> None:
    # An orphan page is as good as lost; this also shows that LINK finds the links the check above reads.
    linked: set[Path] = set()
    for doc in DOCS:
        for target in LINK.findall(FENCE.sub("", doc.read_text(encoding="utf-8"))):
            file_part = target.partition("#")[0]
            if file_part and (doc.parent / file_part).resolve() != doc:
                linked.add((doc.parent / file_part).resolve())
    orphans = [doc.relative_to(ROOT).as_posix() for doc in DOCS[1:] if doc not in linked]
    assert not orphans, f"no page links {orphans}: link them from README.md's list"
