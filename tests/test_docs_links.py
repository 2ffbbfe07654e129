"""The documentation stays honest: every relative link resolves, and README.md stays a front door.

Checked files: README.md, docs/*.md and egs2/snac24k/README.md. A relative link must name a file or
directory inside the repository; a ``#anchor`` on a Markdown target (or on the page itself) must be
the GitHub slug of one of its headings. Links inside code (fenced blocks, inline code) are not links.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, Iterator, List, Set, Tuple

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO / "egs2" / "snac24k" / "README.md"]
README_MAX_LINES = 250
COMMANDS_WITHIN = 40

_FENCE = re.compile(r"^\s*(```|~~~)")
_INLINE_CODE = re.compile(r"(`+)(.+?)\1")
# [text](target) and ![alt](target), target optionally in <...> and followed by a "title"
_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_REFERENCE = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+\"[^\"]*\")?\s*$")  # [label]: target
_HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")  # http:, https:, mailto:, ...


def prose_lines(text: str) -> Iterator[Tuple[int, str]]:
    """(line number, line) outside fenced code blocks."""
    fence = None
    for number, line in enumerate(text.splitlines(), 1):
        match = _FENCE.match(line)
        if match:
            if fence is None:
                fence = match.group(1)
            elif match.group(1) == fence:
                fence = None
            continue
        if fence is None:
            yield number, line


def links(text: str) -> List[Tuple[int, str]]:
    """(line number, target) of every link in ``text``, code excluded."""
    found = []
    for number, line in prose_lines(text):
        line = _INLINE_CODE.sub("code", line)
        found += [(number, m.group(1)) for m in _LINK.finditer(line)]
        ref = _REFERENCE.match(line)
        if ref:
            found.append((number, ref.group(1)))
    return found


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: its rendered text, lower-cased, without punctuation, spaces
    turned into hyphens (github-slugger's rule; ``\\w`` keeps letters, digits and underscores)."""
    text = _LINK.sub(lambda m: re.match(r"!?\[(.*)\]", m.group(0)).group(1), heading)
    text = re.sub(r"<[^>]+>", "", text)       # inline HTML
    text = text.replace("`", "")
    text = re.sub(r"(\*+)(.+?)\1", r"\2", text)  # emphasis markers
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> Set[str]:
    """Every heading anchor of a Markdown file, duplicates numbered as GitHub does (-1, -2, ...)."""
    seen: Dict[str, int] = {}
    result = set()
    for _, line in prose_lines(path.read_text(encoding="utf-8")):
        match = _HEADING.match(line)
        if not match:
            continue
        slug = github_slug(match.group(2))
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        result.add(slug if count == 0 else f"{slug}-{count}")
    return result


def broken_links(page: Path, root: Path = REPO) -> Tuple[int, List[str]]:
    """(number of relative links checked, a message per broken one) for one Markdown file."""
    checked, broken = 0, []
    for number, target in links(page.read_text(encoding="utf-8")):
        if _SCHEME.match(target) or target.startswith("//"):
            continue  # an absolute URL: not checked (no network in tests)
        checked += 1
        where = f"{page.relative_to(root)}:{number}: ({target})"
        path_part, _, anchor = target.partition("#")
        dest = (page.parent / path_part).resolve() if path_part else page
        if not dest.exists():
            broken.append(f"{where} names {path_part}, which does not exist")
            continue
        if root.resolve() not in (dest, *dest.parents):
            broken.append(f"{where} points outside the repository")
            continue
        if anchor:
            if dest.is_dir() or dest.suffix.lower() != ".md":
                broken.append(f"{where}: #{anchor} on a target that is not a Markdown file")
            elif anchor not in anchors(dest):
                broken.append(f"{where}: no heading of {dest.relative_to(root.resolve())} has the anchor #{anchor}")
    return checked, broken


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(page):
    assert page.is_file(), f"{page.relative_to(REPO)} is missing"
    checked, broken = broken_links(page)
    assert not broken, "broken links (fix the target or the heading):\n" + "\n".join(broken)
    if page.name == "README.md" and page.parent == REPO:
        assert checked >= 10, f"README.md: only {checked} relative links found; the docs map is gone?"


def test_readme_is_a_front_door():
    lines = (REPO / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, (
        f"README.md has {len(lines)} lines (at most {README_MAX_LINES}): move detail into docs/")
    head = lines[:COMMANDS_WITHIN]
    for command in ("make demo", "make test"):
        assert any(line.startswith(command) for line in head), (
            f"README.md: the command line `{command}` is not within its first {COMMANDS_WITHIN} lines")
    assert len(list((REPO / "docs").glob("*.md"))) >= 5


def test_every_docs_page_is_in_the_readme_map():
    readme = REPO / "README.md"
    linked = {(readme.parent / target.partition("#")[0]).resolve()
              for _, target in links(readme.read_text(encoding="utf-8")) if not _SCHEME.match(target)}
    orphans = [p.name for p in sorted((REPO / "docs").glob("*.md")) if p.resolve() not in linked]
    assert not orphans, f"docs pages not linked from README.md's documentation map: {orphans}"


def test_checker_finds_broken_links_and_anchors(tmp_path):
    root = tmp_path / "repo"
    (root / "docs").mkdir(parents=True)
    (root / "docs" / "guide.md").write_text(
        "# The guide\n\n## Step `one`: go!\n\n## Step `one`: go!\n\n```\n# not a heading\n```\n")
    page = root / "README.md"
    page.write_text(
        "# Top\n\n"
        "[ok](docs/guide.md) [ok](docs/guide.md#the-guide) [ok](docs/guide.md#step-one-go-1) [ok](#top)\n"
        "[ok](docs/) ![ok](docs/guide.md \"title\") [web](https://example.org/x#y)\n"
        "`[code](missing.md)`\n\n```\n[code](missing.md)\n```\n"
        "[bad](docs/missing.md) [bad](docs/guide.md#not-a-heading) [bad](#nowhere)\n"
        "[bad](docs/guide.md#step-one-go-2) [bad](docs#x) [bad](../outside.md)\n")
    (tmp_path / "outside.md").write_text("# outside\n")
    checked, broken = broken_links(page, root=root)
    assert checked == 12
    assert [b.split(" (", 1)[1].split(")")[0] for b in broken] == [
        "docs/missing.md", "docs/guide.md#not-a-heading", "#nowhere", "docs/guide.md#step-one-go-2",
        "docs#x", "../outside.md"]


@pytest.mark.parametrize("heading, slug", [
    ("Command line: `espnet-snac`", "command-line-espnet-snac"),
    ("Recipe egs2/snac24k", "recipe-egs2snac24k"),
    ("Our trainer (`SNACGANTrainer`)", "our-trainer-snacgantrainer"),
    ("Scoring: `python -m espnet_snac.bin.score`", "scoring-python--m-espnet_snacbinscore"),
    ("Speech LM on SNAC tokens (recipe stage 8)", "speech-lm-on-snac-tokens-recipe-stage-8"),
    ("**Bold** and [a link](x.md)", "bold-and-a-link"),
])
def test_github_slug(heading, slug):
    assert github_slug(heading) == slug
