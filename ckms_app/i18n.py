"""Which language a person reads ckms in, and the message catalogs (stdlib :mod:`gettext`) that say it.

English is the source text and the default: every message is written in English in the code and used
as its own catalog key, so with no other language asked for, the text is exactly what the code says.
Japanese comes from ``locale/ja/LC_MESSAGES/ckms.mo``, compiled from ``ckms.po`` beside it with
``pybabel compile -d ckms_app/locale -D ckms`` (``tests/unit/test_i18n.py`` fails when the two differ).

Where the language comes from:

* the CLI: ``--lang``, else the POSIX locale variables ``LC_ALL``, ``LC_MESSAGES``, ``LANG`` (the first
  one set decides; ``ja…`` is Japanese, anything else English): :func:`resolve_language`;
* the daemon: the request's ``Accept-Language`` (RFC 9110 §12.5.4): :func:`accept_language`. The daemon's
  own logs and the audit trail stay English.

The CLI's ``--help``, usage and usage errors come from the same catalog (context ``help``) and from our
catalog of argparse's own words: :mod:`ckms_app.cli.help_i18n`.

Errors keep their English machine ``code``; only the sentence for people is translated
(:func:`localise_error`). A sentence the catalog knows word for word (context ``error-message``) is
translated whole; any other gets the catalog's sentence for its code (context ``error``) followed by the
English detail, so nothing the English message says (a serial, a path, a parser's reason) is lost.
"""

from __future__ import annotations

import gettext
import os
from collections.abc import Callable, Mapping
from pathlib import Path

DOMAIN = "ckms"
LOCALE_DIR = Path(__file__).resolve().parent / "locale"
LANGUAGES = ("en", "ja")
DEFAULT = "en"
ERROR_CONTEXT = "error"  # msgctxt of the sentence for an error code
MESSAGE_CONTEXT = "error-message"  # msgctxt of a whole English error sentence translated word for word
GENERIC_CODE = "*"  # the sentence for a code the catalog does not know
_LOCALE_VARIABLES = ("LC_ALL", "LC_MESSAGES", "LANG")
_MAX_ACCEPT_LANGUAGE = 1024  # characters of an Accept-Language header looked at


def language_of(tag: str) -> str:
    """``ja``, ``ja_JP.UTF-8``, ``ja-JP`` → ``ja``; anything else (``C``, ``en_US``, ``fr``) → ``en``."""
    return "ja" if tag.strip().lower().startswith("ja") else DEFAULT


def resolve_language(lang: str | None = None, environ: Mapping[str, str] | None = None) -> str:
    """``lang`` if given, else the first of ``LC_ALL``, ``LC_MESSAGES``, ``LANG`` that is set."""
    if lang:
        return language_of(lang)
    env = os.environ if environ is None else environ
    for name in _LOCALE_VARIABLES:
        value = env.get(name)
        if value:
            return language_of(value)
    return DEFAULT


def catalog(lang: str) -> gettext.NullTranslations:
    """The catalog of a resolved language: English is the identity; gettext caches the parsed file."""
    if lang == DEFAULT:
        return gettext.NullTranslations()
    return gettext.translation(DOMAIN, LOCALE_DIR, languages=[lang], fallback=True)


def translator(lang: str | None = None) -> Callable[[str], str]:
    """``_`` for ``--lang`` (``None``: from the locale variables): ``_("English text")`` → the text to print."""
    return catalog(resolve_language(lang)).gettext


def accept_language(header: str | None) -> str:
    """The supported language an ``Accept-Language`` header prefers (highest q, first on a tie); ``en``
    when it names none of them. ``*`` and unknown tags choose nothing."""
    best, best_q = DEFAULT, 0.0
    for part in (header or "")[:_MAX_ACCEPT_LANGUAGE].split(","):
        tag, _, params = part.partition(";")
        primary = tag.strip().lower().split("-")[0]
        if primary not in LANGUAGES:
            continue
        q = 1.0
        for param in params.split(";"):
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = min(float(value), 1.0)
                except ValueError:
                    q = 0.0
        if q > best_q:
            best, best_q = primary, q
    return best


def localise_error(code: str, message: str, lang: str) -> str:
    """The sentence for people of an error with machine ``code`` and English ``message``, in ``lang``."""
    if lang == DEFAULT:
        return message
    translations = catalog(lang)
    whole = translations.pgettext(MESSAGE_CONTEXT, message)
    if whole != message:
        return whole
    summary = translations.pgettext(ERROR_CONTEXT, code)
    if summary == code:
        summary = translations.pgettext(ERROR_CONTEXT, GENERIC_CODE)
    if summary == GENERIC_CODE:  # no catalog at all: English
        return message
    return translations.gettext("{summary} (detail: {message})").format(summary=summary, message=message)
