"""The Japanese words ckms uses for roles and key concepts agree with docs/glossary.md (issue 16).

docs/glossary.md maps each guidance term to ckms; its section "ckms の日本語での呼び方" names the one word ckms's
own Japanese text uses per role and key concept. Checked here, by reading the real sources:

* the glossary is consistent with itself: each role's word is one of the guidance's terms listed for that
  role, each concept's word appears among the guidance terms;
* the CLI's catalog (ckms.po): an entry whose English names a role or concept says the glossary's word in
  Japanese (or keeps the English value literally), and no other role word (管理担当, 監査担当, …) appears;
* the report's Japanese term table (hardening/report.py ``TEXT["ja"]``) and the security policy's role
  names (hardening/security_policy.py ``JA_ROLE``) use only role words the glossary lists for that role.
Pure text parsing; a self-test shows a disagreeing word is caught.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from babel.messages.pofile import read_po

from hardening import report, security_policy

REPO = Path(__file__).resolve().parents[2]
GLOSSARY = REPO / "docs" / "glossary.md"
PO = REPO / "ckms_app" / "locale" / "ja" / "LC_MESSAGES" / "ckms.po"
ROLES = ("authority", "administrator", "operator", "auditor", "custodian")
# Any word that names a person's role in Japanese: a candidate the glossary must know.
_ROLE_WORD = re.compile(
    r"(?:CKMS ?|HSM ?|システム|暗号|監査)?(?:管理|利用|監査)(?:担当|者)|(?:CKMS ?|暗号|監査)?責任者|カストディアン"
)
# The English a catalog entry says when it speaks of a concept (whole words, any case).
_ENGLISH = {
    "authority": r"authority",
    "administrator": r"administrators?",
    "operator": r"operators?",
    "auditor": r"auditors?",
    "custodian": r"custodians?",
    "revocation": r"revocation|revoked? (?:a |the )?certificates?|revoked \{serial\}",
    "share": r"shares?",
    "audit trail": r"audit trail",
    "self-test": r"self-tests?",
    "error state": r"error state",
    "enrolment code": r"enrolment code",
    "secret sharing": r"secret sharing",
}


def _norm(term: str) -> str:
    """Spacing and the guidance's optional "CKMS" prefix do not matter: CKMS 利用担当 = 利用担当."""
    return re.sub(r"^CKMS", "", re.sub(r"\s+", "", term))


def _section(text: str, heading_start: str) -> str:
    start = text.index(heading_start)
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def _rows(section: str) -> list[list[str]]:
    rows = []
    for line in section.splitlines():
        if line.startswith("|") and not line.startswith("| ---"):
            rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows[1:]  # without the header row


def _terms(cell: str) -> set[str]:
    """「責任者（システムオーソリティ）、CKMS 責任者」 → {責任者, システムオーソリティ, CKMS 責任者}."""
    terms = set()
    for part in re.split(r"[、（）・]", cell):
        if part.strip():
            terms.add(_norm(part))
    return terms


def glossary_words(text: str) -> dict[str, str]:
    """The wording table: ckms role or concept (``authority``, ``revocation``, …) → its Japanese word."""
    words = {}
    for ckms, japanese, english in _rows(_section(text, "## ckms の日本語での呼び方")):
        key = re.sub(r"^role `(\w+)`$", r"\1", ckms)
        words[key if key in ROLES else english] = japanese
    return words


def glossary_role_terms(text: str) -> dict[str, set[str]]:
    """Each ckms role → the guidance's terms the Roles table lists for it (normalised: no spaces)."""
    out: dict[str, set[str]] = {role: set() for role in ROLES}
    for guidance, _english, in_ckms in _rows(_section(text, "## 役割 / Roles")):
        for role in re.findall(r"role `(\w+)`", in_ckms):
            if role in out:
                out[role] |= _terms(guidance)
    quoted = set(re.findall(r"custodian を「(.+?)」", text))  # the documents' own word for a custodian
    out["custodian"] |= {_norm(q) for q in quoted}
    return out


def disagreements(
    words: dict[str, str], role_terms: dict[str, set[str]], entries: dict[str, str]
) -> list[str]:
    """Catalog entries (English → Japanese) that do not say the glossary's words."""
    problems = []
    allowed = {_norm(words[role]) for role in ROLES}
    for english, japanese in entries.items():
        flat = _norm(japanese)
        for concept, pattern in _ENGLISH.items():
            word = words[concept]
            if re.search(rf"\b(?:{pattern})\b", english, re.IGNORECASE) and _norm(word) not in flat:
                literal = re.search(rf"\b(?:{pattern})\b", japanese, re.IGNORECASE)
                if not literal:  # an English value kept as is (e.g. a role name to type) is fine
                    problems.append(f"{english!r}: says {concept} without {word!r}: {japanese!r}")
        for found in _ROLE_WORD.findall(japanese):
            if _norm(found) not in allowed:
                problems.append(f"{english!r}: role word {found!r} is not the glossary's: {japanese!r}")
    return problems


def _catalog_entries() -> dict[str, str]:
    with open(PO, "rb") as f:
        catalog = read_po(f, locale="ja")
    return {str(m.id): str(m.string) for m in catalog if m.id and isinstance(m.id, str)}


@pytest.fixture(scope="module")
def glossary() -> str:
    return GLOSSARY.read_text(encoding="utf-8")


def test_the_glossary_names_one_word_per_role_from_the_guidance_terms(glossary: str) -> None:
    words, terms = glossary_words(glossary), glossary_role_terms(glossary)
    assert set(ROLES) <= set(words), words
    assert set(_ENGLISH) <= set(words), "every concept the test checks has a word in the glossary"
    for role in ROLES:
        assert terms[role], f"the Roles table lists no term for role `{role}`"
        assert _norm(words[role]) in terms[role], (role, words[role], terms[role])
    guidance_part = glossary.replace(_section(glossary, "## ckms の日本語での呼び方"), "")
    for concept in set(words) - set(ROLES):
        assert words[concept] in guidance_part, f"{words[concept]!r} ({concept}) is in no guidance-term row"


def test_the_cli_says_the_glossary_words(glossary: str) -> None:
    problems = disagreements(glossary_words(glossary), glossary_role_terms(glossary), _catalog_entries())
    assert not problems, "\n".join(problems)


def test_the_report_and_the_security_policy_use_glossary_role_terms(glossary: str) -> None:
    terms = glossary_role_terms(glossary)
    every_term = set().union(*terms.values())
    for role, japanese in security_policy.JA_ROLE.items():
        assert _norm(japanese) in terms[role], (
            f"security policy calls {role} {japanese!r}: not a glossary term"
        )
    for key, japanese in report.TEXT["ja"].items():
        for found in _ROLE_WORD.findall(japanese):
            assert _norm(found) in every_term, f"report term {key}: {found!r} is not in the glossary"
    assert f"「{report.TEXT['ja']['procedural']}」" in glossary  # the status the glossary cites


def test_the_catalogs_japanese_summaries_use_glossary_role_terms(glossary: str) -> None:
    """docs/guidance-items.ja.md is generated from these: each role word in them is one the glossary lists."""
    from hardening.catalog import load_catalog

    every_term = set().union(*glossary_role_terms(glossary).values())
    wrong = []
    for c in load_catalog().values():
        for name, text in (
            (c.id, c.summary_ja),
            *((f"{c.id} {s.letter})", s.summary_ja) for s in c.subitems.values()),
        ):
            wrong += [(name, found) for found in _ROLE_WORD.findall(text) if _norm(found) not in every_term]
    assert not wrong, wrong


def test_a_disagreeing_word_is_caught(glossary: str) -> None:
    words, terms = glossary_words(glossary), glossary_role_terms(glossary)
    good = {"write the trail for the auditor": "監査者のために監査証跡を書き出す"}
    assert disagreements(words, terms, good) == []
    assert disagreements(
        words, terms, {"write the trail for the auditor": "監査担当のために監査証跡を書き出す"}
    )
    assert disagreements(words, terms, {"the audit trail is broken": "監査ログが壊れています"})
    assert disagreements(words, terms, {"only an administrator may": "CKMS 管理者だけが行えます"})
    assert not disagreements(words, terms, {"only an administrator may": "管理担当だけが行えます"})
