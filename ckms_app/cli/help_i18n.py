"""The command line's help and argparse's own words in the person's language.

Two kinds of text, each from its catalog:

* ckms's help texts (``help=`` of options and subcommands, descriptions) are written in English where the
  parser is built and translated once it is built: :func:`translate_parser` walks the parser tree and
  replaces each text with its ``msgctxt "help"`` entry of ``ckms.po``. A module that adds commands needs
  to know nothing about languages, and the test lists every help text from the built parser itself, so a
  new option without a Japanese entry fails there.
* argparse's own words ("usage: ", "options", "the following arguments are required: %s", …) are marked
  by the standard library with the module-level ``_``/``ngettext`` of :mod:`argparse`, which read the
  process-wide default gettext domain. :func:`argparse_language` points those two names at the
  ``argparse`` domain of our locale directory (``locale/ja/LC_MESSAGES/argparse.po``; its msgids are the
  running Python's, ``tests/unit/test_i18n_cli.py`` checks they are all there) while the parser is built
  and used, and puts argparse's own back afterwards.

Help is printed while the arguments are parsed, so the language must be known before the parser exists:
:func:`lang_asked` reads ``--lang`` from the raw arguments first. English needs none of this: with
``en`` every function here leaves argparse and the parser exactly as they are.
"""

from __future__ import annotations

import argparse
import contextlib
import gettext
from collections.abc import Iterator, Sequence

from ckms_app.i18n import DEFAULT, LOCALE_DIR, catalog

ARGPARSE_DOMAIN = "argparse"  # our catalog of the standard library's argparse messages
HELP_CONTEXT = "help"  # msgctxt of ckms's help texts in ckms.po


def lang_asked(argv: Sequence[str]) -> str | None:
    """The value of the last ``--lang X`` or ``--lang=X`` before a ``--`` (None: not given).

    Read by hand, before any parser exists; the real parser validates the value again afterwards.
    """
    value: str | None = None
    args = iter(argv)
    for arg in args:
        if arg == "--":
            break
        if arg == "--lang":
            value = next(args, None)
        elif arg.startswith("--lang="):
            value = arg.partition("=")[2]
    return value


def argparse_catalog(lang: str) -> gettext.NullTranslations:
    """Our translation of argparse's own messages into ``lang`` (English: argparse's text unchanged)."""
    if lang == DEFAULT:
        return gettext.NullTranslations()
    return gettext.translation(ARGPARSE_DOMAIN, LOCALE_DIR, languages=[lang], fallback=True)


@contextlib.contextmanager
def argparse_language(lang: str) -> Iterator[None]:
    """Within the block, argparse says its own words (usage, section titles, errors) in ``lang``.

    argparse looks ``_`` and ``ngettext`` up in its module globals when it needs a message, so replacing
    them for the block is enough; they are restored even when parsing exits (``--help``, a usage error).
    """
    if lang == DEFAULT:
        yield
        return
    translations = argparse_catalog(lang)
    names = vars(argparse)  # the module's globals, where argparse's functions look the two up
    saved = names["_"], names["ngettext"]
    names["_"], names["ngettext"] = translations.gettext, translations.ngettext
    try:
        yield
    finally:
        names["_"], names["ngettext"] = saved


def parsers(root: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    """``root`` and every subcommand's parser below it, depth first."""
    pending = [root]
    while pending:
        parser = pending.pop()
        yield parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                pending.extend(reversed(list(action.choices.values())))


def _helped(parser: argparse.ArgumentParser) -> Iterator[argparse.Action]:
    """The actions of ``parser`` whose help is shown: options, positionals and the subcommands' entries."""
    for action in parser._actions:
        yield action
        if isinstance(action, argparse._SubParsersAction):
            yield from action._get_subactions()


def help_texts(root: argparse.ArgumentParser) -> set[str]:
    """Every help text and description a person can see in ``root``'s help, as the parser holds it."""
    texts: set[str] = set()
    for parser in parsers(root):
        texts.update(text for text in (parser.description, parser.epilog) if text)
        texts.update(
            action.help for action in _helped(parser) if action.help and action.help != argparse.SUPPRESS
        )
    return texts


def translate_parser(root: argparse.ArgumentParser, lang: str) -> None:
    """Replace every help text and description of ``root``'s tree by its ``lang`` entry (``help`` context).

    A text the catalog lacks stays English; ``%(default)s`` and the like are expanded after translation,
    so a translation keeps them.
    """
    if lang == DEFAULT:
        return
    translations = catalog(lang)

    def translate(text: str | None) -> str | None:
        return translations.pgettext(HELP_CONTEXT, text) if text else text

    for parser in parsers(root):
        parser.description = translate(parser.description)
        parser.epilog = translate(parser.epilog)
        for action in _helped(parser):
            if action.help and action.help != argparse.SUPPRESS:
                action.help = translate(action.help)
