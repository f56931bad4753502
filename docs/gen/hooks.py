"""MkDocs hooks: pages whose content is generated from the code at build time.

A page holds a marker comment; ``on_page_markdown`` replaces it:

- ``<!-- geors:cli-reference -->``  every command's ``--help``, walked from the click group
  ``geors.cli.main:main`` (``cli_reference``);
- ``<!-- geors:models -->``  the table of ``geors models list --json`` and the
  metadata of ``geors models info NAME --json`` (``model_zoo``);
- ``<!-- geors:messages -->``  every error and warning message in ``geors/`` (``messages``).

``on_config`` adds the per-model pages (detector.md, segmenter.md, masks.md)
to the navigation when they exist, so a page another engineer has not written
yet does not break the strict build.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import cli_reference  # noqa: E402
import messages_page  # noqa: E402
import model_zoo  # noqa: E402

MARKERS = {
    "<!-- geors:cli-reference -->": cli_reference.markdown,
    "<!-- geors:models -->": model_zoo.markdown,
    "<!-- geors:messages -->": messages_page.markdown,
}

OPTIONAL_PAGES = {"detector.md": "Detector (R2-CNN)", "segmenter.md": "Segmenter (C2FNet)",
                  "masks.md": "Masks (SAM, GrabCut, watershed)"}
OPTIONAL_SECTION = "Models in depth"


def on_config(config, **kwargs):
    docs = Path(config["docs_dir"])
    for section in config["nav"] or []:
        if isinstance(section, dict) and OPTIONAL_SECTION in section:
            pages = [p for p in section[OPTIONAL_SECTION] if not (isinstance(p, dict) and
                                                                  list(p.values())[0] in OPTIONAL_PAGES)]
            for page, title in OPTIONAL_PAGES.items():
                if (docs / page).exists():
                    pages.append({title: page})
            section[OPTIONAL_SECTION] = pages
    return config


README_SECTION = re.compile(r"<!-- geors:readme-section (.+?) -->")


README = Path(__file__).resolve().parents[2] / "README.md"


def readme_section(heading: str, readme: Path = README) -> str:
    """The text under the README heading that starts with ``heading``, up to its first code block or the
    next heading, without a last paragraph that announces the code block (figures are stated once, in the
    README, and copied here when the site is built)."""
    lines = readme.read_text(encoding="utf-8").splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("#") and
                  line.lstrip("#").strip().startswith(heading)), None)
    if start is None:
        raise ValueError(f"README.md has no heading starting with {heading!r}")
    body: list[str] = []
    for line in lines[start + 1:]:
        if line.startswith("#") or line.startswith("```"):
            break
        body.append(line)
    paragraphs = "\n".join(body).strip().split("\n\n")
    if paragraphs and paragraphs[-1].rstrip().endswith(":"):  # "... Reproduce and evaluate:" -> cut that sentence
        last = paragraphs.pop()
        cut = last.rstrip().rfind(". ")
        if cut > 0:
            paragraphs.append(last[:cut + 1])
    if not paragraphs or not paragraphs[0]:
        raise ValueError(f"README.md section {heading!r} is empty")
    return "\n\n".join(paragraphs)


def on_page_markdown(markdown: str, page, config, files, **kwargs) -> str:
    for marker, generate in MARKERS.items():
        if marker in markdown:
            markdown = markdown.replace(marker, generate())
    markdown = README_SECTION.sub(lambda m: readme_section(m.group(1)), markdown)
    docs = Path(config["docs_dir"])
    for optional in OPTIONAL_PAGES:
        if not (docs / optional).exists():  # link text stays, the link goes until the page exists
            markdown = re.sub(r"\[([^\]]+)\]\(" + re.escape(optional) + r"(#[^)]*)?\)", r"\1", markdown)
    return markdown
