"""MkDocs hook: the CLI and config reference pages, generated at build time so they cannot drift from the code.

* ``reference/cli.md`` from :func:`birdclef.cli.build_parser`: every verb (sub-parser), its usage line, and
  every argument with its default, choices and help, in parser order. Verbs and flags added to the parser
  appear with no edit here.
* ``reference/config.md`` from the dataclasses of ``src/birdclef/config.py``: every field of the
  :class:`~birdclef.config.Config` tree as its dotted ``--set`` key, with its type, default and docstring.
  Field docstrings (the string literal on the line below a field) are not kept at run time, so they are
  read from the source with :mod:`ast`.

The pages exist only in the built site (``make docs``); the files of the same name in ``docs/reference/`` are
placeholders for readers of the repository. ``birdclef VERB --help`` shows the same text.
The functions are importable on their own (``tests/unit/test_docs.py`` loads this file by path).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import re
import sys
import typing
from pathlib import Path
from typing import Any

SRC = Path(__file__).resolve().parents[2] / "src"
CLI_PAGE = "reference/cli.md"
CONFIG_PAGE = "reference/config.md"
USAGE_WIDTH = 100

if (SRC / "birdclef").is_dir() and str(SRC) not in sys.path:
    sys.path.insert(0, str(SRC))  # document the checked-out source, not whichever birdclef happens to be installed


# ---------------------------------------------------------------- markdown helpers


def _cell(text: str) -> str:
    """One Markdown table cell: no line breaks, pipes escaped."""
    return " ".join(str(text).split()).replace("|", "\\|")


_ROLE = re.compile(r":[a-z]+:`~?([^`]+)`")


def _rst(text: str) -> str:
    """A docstring's reStructuredText bits as Markdown: ``x`` -> `x`, :mod:`~a.b` -> `a.b`."""
    return _ROLE.sub(r"`\1`", " ".join(text.split()).replace("``", "`"))


def _code(text: str) -> str:
    """Inline code that survives backticks inside it."""
    text = str(text)
    fence = "``" if "`" in text else "`"
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


# ---------------------------------------------------------------- CLI


def subcommands(parser: argparse.ArgumentParser) -> dict[str, tuple[argparse.ArgumentParser, str]]:
    """Each verb of `parser`, in the order they were added: ``{name: (sub-parser, one-line help)}``."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
            return {name: (sub, helps.get(name, "")) for name, sub in action.choices.items()}
    return {}


def _help_text(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    if not action.help or action.help == argparse.SUPPRESS:
        return ""
    return parser._get_formatter()._expand_help(action)  # fills %(default)s and friends as --help does


def _default(action: argparse.Action) -> str:
    if action.required or isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
        return ""
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        return "off" if isinstance(action, argparse._StoreTrueAction) else "on"
    default = action.default
    if default is None or default == argparse.SUPPRESS or default == []:
        return ""
    if isinstance(default, (list, tuple)):
        return _code(" ".join(str(d) for d in default))
    return _code(default)


def _argument(action: argparse.Action) -> str:
    if not action.option_strings:  # positional
        name = action.metavar or action.dest
        return _code(name.upper() if isinstance(name, str) else name)
    metavar = ""
    if action.nargs != 0:
        metavar = action.metavar or action.dest.upper()
        if action.choices is not None and action.metavar is None:
            metavar = "{" + ",".join(map(str, action.choices)) + "}"
        if action.nargs in ("+", "*"):
            metavar = f"{metavar} ..."
    names = ", ".join(action.option_strings)
    return _code(f"{names} {metavar}".strip())


def _notes(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    notes = []
    if action.required and action.option_strings:
        notes.append("**required**")
    if action.choices is not None and action.metavar is not None:
        notes.append("one of " + ", ".join(_code(c) for c in action.choices))
    for group in parser._mutually_exclusive_groups:
        if action in group._group_actions:
            others = [a.option_strings[0] for a in group._group_actions if a is not action and a.option_strings]
            needed = "; one of them is required" if group.required else ""
            notes.append("not with " + ", ".join(_code(o) for o in others) + needed)
    if isinstance(action, argparse._AppendAction):
        notes.append("repeatable")
    return "; ".join(notes)


def verb_markdown(name: str, sub: argparse.ArgumentParser, summary: str) -> str:
    """The section of one verb: heading (anchor = the verb's name), summary, usage and an argument table."""
    formatter = sub.formatter_class(prog=sub.prog, width=USAGE_WIDTH)  # fixed width: the page must not vary by terminal
    formatter.add_usage(sub.usage, sub._actions, sub._mutually_exclusive_groups, prefix="")
    usage = formatter.format_help().strip("\n")
    lines = [f"## `birdclef {name}` {{#{name}}}", ""]
    if summary:
        lines += [summary[0].upper() + summary[1:] + ("" if summary.endswith(".") else "."), ""]
    lines += ["```text", usage, "```", ""]
    lines += ["| argument | default | description |", "| --- | --- | --- |"]
    for action in sub._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        notes = _notes(sub, action)
        text = _help_text(sub, action)
        description = f"{text} ({notes})" if text and notes else (text or notes)
        lines.append(f"| {_argument(action)} | {_cell(_default(action))} | {_cell(description)} |")
    lines.append("")
    return "\n".join(lines)


def cli_markdown(parser: argparse.ArgumentParser | None = None) -> str:
    """The whole CLI reference page for `parser` (default: ``birdclef.cli.build_parser()``)."""
    if parser is None:
        from birdclef.cli import build_parser

        parser = build_parser()
    verbs = subcommands(parser)
    lines = [
        "# CLI reference",
        "",
        "Generated from the argument parser (`birdclef.cli.build_parser()`) when the site is built, so it lists",
        "exactly what `birdclef VERB --help` prints. Every verb reports bad input in one line and exits with",
        "code 2; every `--out` is checked before the work starts. `-c FILE` and `--set KEY=VALUE` take the keys",
        "of the [config reference](config.md).",
        "",
        "| verb | what it does |",
        "| --- | --- |",
    ]
    lines += [f"| [`{name}`](#{name}) | {_cell(summary)} |" for name, (_, summary) in verbs.items()]
    lines.append("")
    lines += [verb_markdown(name, sub, summary) for name, (sub, summary) in verbs.items()]
    return "\n".join(lines)


# ---------------------------------------------------------------- config


def field_docstrings(source: str) -> dict[str, dict[str, str]]:
    """``{class name: {field name: docstring}}`` for every class in `source`: a field's docstring is the string
    literal statement right after its annotated assignment (the attribute-docstring convention)."""
    docs: dict[str, dict[str, str]] = {}
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.ClassDef):
            continue
        fields = docs.setdefault(node.name, {})
        for stmt, after in zip(node.body, node.body[1:]):
            if (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)
                    and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
                    and isinstance(after.value.value, str)):
                fields[stmt.target.id] = _rst(after.value.value)
    return docs


def _type_name(tp: Any) -> str:
    text = tp.__name__ if isinstance(tp, type) else str(tp)
    return text.replace("typing.", "").replace("NoneType", "None")


def _default_value(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _yaml_value(value: Any) -> str:
    """How a default is written in a YAML file or after ``--set key=`` (tuples as lists, None as null)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return "[" + ", ".join(_yaml_value(v) for v in value) + "]"
    return str(value)


def config_sections(root: type | None = None) -> list[tuple[str, type, list[dataclasses.Field]]]:
    """``(dotted section, dataclass, its leaf fields)`` for every dataclass in the config tree, depth first."""
    if root is None:
        from birdclef.config import Config

        root = Config
    sections: list[tuple[str, type, list[dataclasses.Field]]] = []

    def walk(prefix: str, cls: type) -> None:
        hints = typing.get_type_hints(cls)
        leaves, nested = [], []
        for f in dataclasses.fields(cls):
            tp = hints[f.name]
            if dataclasses.is_dataclass(tp):
                nested.append((f"{prefix}.{f.name}" if prefix else f.name, tp))
            else:
                leaves.append(f)
        if leaves:
            sections.append((prefix, cls, leaves))
        for name, tp in nested:
            walk(name, tp)

    walk("", root)
    return sections


def config_markdown(config_py: Path | None = None) -> str:
    """The config reference page: one table per section of the :class:`Config` tree (docstrings read from
    `config_py`, default: the source file of :mod:`birdclef.config`)."""
    if config_py is None:
        import birdclef.config

        config_py = Path(birdclef.config.__file__)
    docs = field_docstrings(config_py.read_text())
    lines = [
        "# Config reference",
        "",
        "Generated from the dataclasses of `src/birdclef/config.py` (field types, defaults and docstrings) when",
        "the site is built. A run's fully resolved config is its `config.yaml`; YAML files in `configs/` hold only",
        "overrides, and `--set section.key=value` goes on top, each value converted to the field's type (lists as",
        "`[a, b]`). An unknown key, or a value out of range, is an error naming the key.",
        "",
        "```bash",
        "birdclef train --data DATA --out runs/A -c configs/lite0.yaml --set train.epochs=3 train.folds=[0]",
        "```",
        "",
    ]
    for section, cls, fields in config_sections():
        hints = typing.get_type_hints(cls)
        lines += [f"## `{section}` {{#{section.replace('.', '-')}}}", ""]
        class_doc = (cls.__doc__ or "").strip()
        if class_doc and not class_doc.startswith(cls.__name__ + "("):  # dataclass's generated signature
            lines += [_rst(class_doc), ""]
        lines += ["| key | type | default | description |", "| --- | --- | --- | --- |"]
        for f in fields:
            default = _default_value(f)
            shown = "" if default is dataclasses.MISSING else _code(_yaml_value(default))
            doc = docs.get(cls.__name__, {}).get(f.name, "")
            lines.append(f"| `{section}.{f.name}` | {_cell(_code(_type_name(hints[f.name])))} | {_cell(shown)} "
                         f"| {_cell(doc)} |")
        lines.append("")
    return "\n".join(lines)


# ---------------------------------------------------------------- MkDocs events


def on_files(files: Any, config: Any) -> Any:
    """Put the two generated pages in the site, in place of the placeholders in docs/reference/ (which say, for
    readers of the repository, how to build them)."""
    from mkdocs.structure.files import File

    for page, render in ((CLI_PAGE, cli_markdown), (CONFIG_PAGE, config_markdown)):
        placeholder = files.get_file_from_path(page)
        if placeholder is not None:
            files.remove(placeholder)
        files.append(File.generated(config, page, content=render()))
    return files
