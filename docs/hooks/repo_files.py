"""mkdocs hook: serve the repository files that the documentation shows or links to but that live
outside ``docs/``, at their own paths, without copying them into ``docs/``.

The screenshots (``assets/screenshots/*.png``) are written by the browser tests, the benchmark
results (``benchmarks/RESULTS.md``) by ``python -m benchmarks``, the model cards and the fixtures'
READMEs next to what they describe. Each has one home; this hook adds each to the site at its path
in the repository (``benchmarks/RESULTS.md`` becomes the page ``benchmarks/RESULTS/``), so a page
links ``benchmarks/RESULTS.md`` or shows ``assets/screenshots/app.png`` exactly as README.md at the
repository root does, and ``mkdocs build --strict`` still checks every such link.

Those Markdown files are written for GitHub, which starts a list right after a paragraph line;
Python-Markdown needs a blank line there, so the hook adds one when it renders them (the files
themselves are not changed).
"""

from __future__ import annotations

import re
from pathlib import Path

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files
from mkdocs.structure.pages import Page

# Relative to the repository root (the folder of mkdocs.yml).
REPOSITORY_FILES = (
    "assets/screenshots/*.png",
    "assets/models/MODEL_CARD.md",
    "assets/models/lesson/LESSON_CARD.md",
    "benchmarks/RESULTS.md",
    "tests/data/**/README.md",
)

_added: set[str] = set()  # the src_uri of every file added here
_LIST_ITEM = re.compile(r"(- |\* |\d+\. )")


def on_files(files: Files, config: MkDocsConfig) -> Files:
    root = Path(config.config_file_path).resolve().parent
    for pattern in REPOSITORY_FILES:
        for path in sorted(root.glob(pattern)):
            src_uri = path.relative_to(root).as_posix()
            if files.get_file_from_path(src_uri) is None:
                files.append(File.generated(config, src_uri, abs_src_path=str(path)))
                _added.add(src_uri)
    return files


def lists_after_paragraphs(markdown: str) -> str:
    """A blank line before every list that starts right under a paragraph line (outside code)."""
    lines, fenced = [], False
    for line in markdown.split("\n"):
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced and _LIST_ITEM.match(line) and lines:
            previous = lines[-1]
            if previous.strip() and not _LIST_ITEM.match(previous) and not previous[:1].isspace():
                lines.append("")
        lines.append(line)
    return "\n".join(lines)


def on_page_markdown(markdown: str, page: Page, config: MkDocsConfig, files: Files) -> str:
    return lists_after_paragraphs(markdown) if page.file.src_uri in _added else markdown
