"""The Japanese documents stay in step with the English ones (issue 16).

For README.md/README.ja.md and every docs/X.md that has a docs/X.ja.md: the same headings (count, levels,
order; the text is translated, so only the levels are compared, position by position), byte-identical
fenced code blocks, and a link from each to the other. The pairs a Japanese operator or reviewer needs must
exist. A self-test shows that dropping a section from one language fails the comparison. Pure text parsing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"

REQUIRED = [
    "README.md",
    "docs/operations.md",
    "docs/drills.md",
    "docs/roles-and-audit.md",
    "docs/hsm-custody.md",
    "docs/lab.md",
    "docs/production.md",
    "docs/ca-daemon.md",
    "docs/architecture.md",
    "docs/guidance-items.md",  # generated, both languages: python -m hardening.catalog --markdown [--lang ja]
]

_FENCE = re.compile(r"^(`{3,}|~{3,})")
_HEADING = re.compile(r"^(#{1,6})\s+(\S.*?)\s*#*\s*$")


@dataclass(frozen=True)
class Outline:
    headings: list[tuple[int, str]]  # (level, text) outside code blocks
    code_blocks: list[str]  # each fenced block, fences included


def outline(text: str) -> Outline:
    headings: list[tuple[int, str]] = []
    blocks: list[str] = []
    fence: str | None = None
    current: list[str] = []
    for line in text.splitlines():
        stripped = line.lstrip()
        match = _FENCE.match(stripped)
        if fence is None:
            if match:
                fence, current = match.group(1), [line]
                continue
            heading = _HEADING.match(line)
            if heading:
                headings.append((len(heading.group(1)), heading.group(2)))
        else:
            current.append(line)
            if (
                match
                and stripped.rstrip() == fence[0] * len(match.group(1))
                and len(match.group(1)) >= len(fence)
            ):
                blocks.append("\n".join(current))
                fence = None
    if fence is not None:
        blocks.append("\n".join(current))  # unterminated block: still compared
    return Outline(headings, blocks)


def compare(english: str, japanese: str) -> list[str]:
    """Differences in structure between an English document and its Japanese version (empty: in step)."""
    en, ja = outline(english), outline(japanese)
    problems: list[str] = []
    if len(en.headings) != len(ja.headings):
        problems.append(f"{len(en.headings)} headings in English, {len(ja.headings)} in Japanese")
    for i, ((en_level, en_text), (ja_level, ja_text)) in enumerate(
        zip(en.headings, ja.headings, strict=False)
    ):
        if en_level != ja_level:
            problems.append(
                f"heading {i + 1}: level {en_level} {en_text!r} in English, level {ja_level} {ja_text!r} in Japanese"
            )
    if len(en.code_blocks) != len(ja.code_blocks):
        problems.append(f"{len(en.code_blocks)} code blocks in English, {len(ja.code_blocks)} in Japanese")
    for i, (en_block, ja_block) in enumerate(zip(en.code_blocks, ja.code_blocks, strict=False)):
        if en_block != ja_block:
            problems.append(f"code block {i + 1} differs:\n{en_block}\n--- vs ---\n{ja_block}")
    return problems


def japanese_of(english: Path) -> Path:
    return english.with_name(english.name[: -len(".md")] + ".ja.md")


def _pairs() -> list[tuple[Path, Path]]:
    pairs = []
    for english in [REPO / "README.md", *sorted(DOCS.glob("*.md"))]:
        if english.name.endswith(".ja.md"):
            continue
        japanese = japanese_of(english)
        if japanese.exists():
            pairs.append((english, japanese))
    return pairs


PAIRS = _pairs()


def _id(pair: tuple[Path, Path]) -> str:
    return str(pair[0].relative_to(REPO))


@pytest.mark.parametrize("pair", PAIRS, ids=_id)
def test_same_headings_and_code_blocks(pair):
    english, japanese = pair
    problems = compare(english.read_text(), japanese.read_text())
    assert not problems, f"{japanese.relative_to(REPO)} is out of step with {english.name}:\n" + "\n".join(
        problems
    )


@pytest.mark.parametrize("pair", PAIRS, ids=_id)
def test_each_links_to_the_other(pair):
    english, japanese = pair
    assert f"]({japanese.name})" in english.read_text(), f"{english.name} does not link to {japanese.name}"
    assert f"]({english.name})" in japanese.read_text(), f"{japanese.name} does not link to {english.name}"


@pytest.mark.parametrize("english", REQUIRED)
def test_required_pair_exists(english):
    japanese = japanese_of(REPO / english)
    assert japanese.exists(), f"{japanese.relative_to(REPO)} (the Japanese {english}) is missing"


def test_every_japanese_document_has_an_english_original():
    for japanese in [*DOCS.glob("*.ja.md"), *REPO.glob("*.ja.md")]:
        english = japanese.with_name(japanese.name[: -len(".ja.md")] + ".md")
        assert english.exists(), f"{japanese.relative_to(REPO)} has no English original"


# --- the generated pair: docs/guidance-items.md and .ja.md from hardening/catalog ---------------------

_REGENERATE_JA = "python -m hardening.catalog --markdown --lang ja -o docs/guidance-items.ja.md"


def test_generated_japanese_guidance_items_are_current():
    from hardening.catalog import load_catalog, render_markdown

    committed = (DOCS / "guidance-items.ja.md").read_text(encoding="utf-8")
    assert committed == render_markdown(load_catalog(), "ja"), (
        f"docs/guidance-items.ja.md is stale: run {_REGENERATE_JA}"
    )


def test_every_summary_has_a_japanese_summary():
    from hardening.catalog import load_catalog

    missing, stray = [], []
    for c in load_catalog().values():
        for name, entry in ((c.id, c), *((f"{c.id} {s.letter})", s) for s in c.subitems.values())):
            if entry.summary_en and not entry.summary_ja:
                missing.append(name)
            if entry.summary_ja and not entry.summary_en:
                stray.append(name)
    assert not missing, f"summary_en without summary_ja in hardening/catalog/*.yml: {missing}"
    assert not stray, f"summary_ja without summary_en: {stray}"


def test_a_changed_summary_makes_the_japanese_table_stale():
    import dataclasses

    from hardening.catalog import load_catalog, render_markdown

    catalog = dict(load_catalog())
    catalog["A.01"] = dataclasses.replace(catalog["A.01"], summary_ja="書き換えた概要")
    assert render_markdown(catalog, "ja") != (DOCS / "guidance-items.ja.md").read_text(encoding="utf-8")


# --- the comparison itself ------------------------------------------------------------------------------

_EN = """# Title

English: intro

## First

```sh
make lab
```

## Second

### Detail

text
"""

_JA = """# 題名

日本語の導入

## 一つ目

```sh
make lab
```

## 二つ目

### 詳細

本文
"""


def _drop_section(text: str, heading_prefix: str) -> str:
    """The text without the section whose heading line starts with heading_prefix (up to the next heading
    of the same or a higher level)."""
    out: list[str] = []
    dropping_level = 0
    for line in text.splitlines(keepends=True):
        heading = _HEADING.match(line)
        if heading and dropping_level and len(heading.group(1)) <= dropping_level:
            dropping_level = 0
        if heading and line.startswith(heading_prefix):
            dropping_level = len(heading.group(1))
        if not dropping_level:
            out.append(line)
    return "".join(out)


def test_comparison_accepts_a_faithful_translation():
    assert compare(_EN, _JA) == []


def test_comparison_ignores_hashes_inside_code_blocks():
    assert outline("```sh\n# a comment\n```\n## Real\n").headings == [(2, "Real")]


@pytest.mark.parametrize("language", ["en", "ja"])
def test_dropping_a_section_from_one_language_fails(language):
    if language == "en":
        assert compare(_drop_section(_EN, "### Detail"), _JA)
    else:
        assert compare(_EN, _drop_section(_JA, "### 詳細"))
    assert compare(_EN, _drop_section(_JA, "## 一つ目"))  # a section with a code block: both differ


def test_a_changed_level_or_code_block_fails():
    assert compare(_EN, _JA.replace("### 詳細", "## 詳細"))
    assert compare(_EN, _JA.replace("make lab", "make lab-up"))


@pytest.mark.parametrize("pair", PAIRS[:3], ids=_id)
def test_dropping_a_section_from_a_real_pair_fails(pair):
    english, japanese = pair
    ja_text = japanese.read_text()
    last = outline(ja_text).headings[-1]
    prefix = "#" * last[0] + " " + last[1]
    dropped = _drop_section(ja_text, prefix)
    assert dropped != ja_text
    assert compare(english.read_text(), dropped)
