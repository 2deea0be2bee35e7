"""Every fenced ``python`` block of README.md and docs/**/*.md runs (STYLE.md, "Tests").

The blocks of one file run in order in one namespace, in-process (importing torch, Pyro and
ArviZ costs ~6 s, paid once), with the working directory changed to pytest's ``tmp_path`` so
that an example writes only there. They start in float32, as a fresh interpreter does. Only
blocks whose info string is exactly ``python`` run; write ``text`` or ``bash`` for anything
else. Tracebacks point at the line of the Markdown file. A coverage test fails when a
registered guide or model has no page.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from guides import GUIDES
from zoo import MODELS

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]

# CommonMark fences: up to three spaces of indent, then three or more backticks or tildes.
OPENING = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})(?P<info>[^`]*)$")


def python_blocks(text: str) -> list[tuple[int, str]]:
    """The fenced blocks whose info string is exactly ``python``, as (index of the first code
    line, counted from 0, code). A block closes at a line of the same fence character, at
    least as long as the opening fence, with nothing else on it; an unclosed block runs to the
    end of the text, as in CommonMark."""
    blocks: list[tuple[int, str]] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        opening = OPENING.match(lines[i])
        if opening is None:
            i += 1
            continue
        fence, indent = opening["fence"], len(opening["indent"])
        closing = re.compile(rf"^ {{0,3}}{re.escape(fence[0])}{{{len(fence)},}}[ \t]*$")
        start = i + 1
        end = start
        while end < len(lines) and not closing.match(lines[end]):
            end += 1
        if opening["info"].strip() == "python":
            body = [_dedent(line, indent) for line in lines[start:end]]
            blocks.append((start, "\n".join(body) + "\n"))
        i = end + 1
    return blocks


def _dedent(line: str, indent: int) -> str:
    spaces = len(line) - len(line.lstrip(" "))
    return line[min(spaces, indent) :]


def _id(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def test_block_parser():
    text = "\n".join(
        [
            "Intro.",
            "```python",
            "a = 1",
            "```",
            "```text",
            "not = python",
            "```",
            "```python title",  # info string not exactly "python": shown, not run
            "b = 2",
            "```",
            "~~~~python",
            "c = [",
            "```",  # a shorter or different fence does not close the block
            "]",
            "~~~~",
            "  ```python",
            "  d = 4",
            "  ```",
        ]
    )
    assert python_blocks(text) == [(2, "a = 1\n"), (11, "c = [\n```\n]\n"), (16, "d = 4\n")]


#: Pages whose examples run a whole comparison or a network fit: the slow lane. Seconds seen
#: on 2 idle cores: README 37, amortized 18, gmm 10, comparisons 9, ppca 9, hierarchical 9.
SLOW_PAGES = {
    "README.md", "amortized.md", "gmm.md", "comparisons.md", "ppca.md", "hierarchical.md",
}  # fmt: skip


@pytest.mark.parametrize(
    "path",
    [pytest.param(p, marks=pytest.mark.slow) if p.name in SLOW_PAGES else p for p in PAGES],
    ids=_id,
)
def test_examples_run(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run the file's python blocks in order in one namespace, in a temporary folder.

    README.md is always collected; a page without python blocks passes trivially. The blocks
    start in torch's own default dtype (float32), not the tests' float64, as in a user's fresh
    interpreter: a page whose numbers are float64's must say so itself."""
    monkeypatch.chdir(tmp_path)
    torch.set_default_dtype(torch.float32)  # the autouse fixture restores it afterwards
    namespace: dict[str, object] = {"__name__": "__docs__"}
    for start, code in python_blocks(path.read_text(encoding="utf-8")):
        # Leading newlines keep the line numbers of the Markdown file in tracebacks.
        exec(compile("\n" * start + code, str(path), "exec"), namespace)


@pytest.mark.parametrize(
    ("folder", "names"), [("guides", sorted(GUIDES)), ("models", sorted(MODELS))]
)
def test_every_guide_and_model_has_a_page(folder: str, names: list[str]) -> None:
    pages = {name: DOCS / folder / f"{name}.md" for name in names}
    missing = [_id(p) for p in pages.values() if not p.is_file()]
    assert not missing, f"registered in the code but undocumented: {', '.join(missing)}"
    no_example = [_id(p) for p in pages.values() if not python_blocks(p.read_text())]
    assert not no_example, f"pages without a runnable python example: {', '.join(no_example)}"


def test_comparisons_page_exists() -> None:
    page = DOCS / "comparisons.md"
    assert page.is_file() and python_blocks(page.read_text())


IMAGE = re.compile(r"!\[[^\]]*\]\(([^)\s]+)\)")


@pytest.mark.parametrize("path", PAGES, ids=_id)
def test_images_exist(path: Path) -> None:
    """Every image a page shows is in the repository (``make docs-figures`` remakes them)."""
    text = path.read_text(encoding="utf-8")
    missing = [src for src in IMAGE.findall(text) if not (path.parent / src).is_file()]
    assert not missing, f"{_id(path)} shows images that are not there: {', '.join(missing)}"
