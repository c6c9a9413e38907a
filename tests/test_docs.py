"""README.md and docs/: every relative link and image resolves (anchors included), figures stay small, and the
README stays a front door."""
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md"] + sorted((REPO / "docs").glob("*.md"))
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped (not - and _), spaces to hyphens."""
    text = re.sub(r"[`*]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(page: Path) -> set:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)  # no headings inside code blocks
    return {_slug(m.group(1)) for m in re.finditer(r"^#+\s+(.*)$", text, flags=re.M)}


def _links(page: Path):
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    text = re.sub(r"`[^`\n]*`", "", text)  # inline code is not a link
    return [m.group(1) for m in LINK.finditer(text)]


def test_slugs_follow_github():
    assert _slug("What a run trains on (`training_set.py`)") == "what-a-run-trains-on-training_setpy"
    assert _slug("Resume, reproducibility, threads") == "resume-reproducibility-threads"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_and_image_resolves(page):
    broken = []
    for target in _links(page):
        if re.match(r"^[a-z]+:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(target)
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(target)
    assert not broken, f"{page.name}: {broken}"


def test_pages_link_the_docs_and_figures_are_small():
    assert len(PAGES) > 5 and all(p.stat().st_size > 0 for p in PAGES)
    readme_links = set(_links(REPO / "README.md"))
    assert {f"docs/{p.name}" for p in PAGES[1:]} <= readme_links  # the README is the way in to every page
    figures = list((REPO / "docs" / "figures").glob("*.png"))
    assert figures and all(f.stat().st_size < 300_000 for f in figures)
    assert len((REPO / "README.md").read_text().splitlines()) <= 300
