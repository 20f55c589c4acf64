"""The manual pages, made from what they describe so that they cannot drift from the code: tgbackupd(8) and
tgbackupctl(1) from the argument parsers (options, subcommands, exit status), tgbackupd.toml(5) from the
table of configuration keys that validates the file. The package build runs
`python3 -m tgbackupd.manpages DIRECTORY`; anyone else may too."""

import argparse
import re
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from . import __version__, cli, ctl
from .config import DEFAULT_CONFIG_PATH, ENTRY_FLAGS, KEYS, entry_keys
from .errors import TgbackupdError, UndocumentedKey
from .formats import Format

# An exit status line of an epilog: `  78  the configuration is invalid`, continued by deeper indented lines.
_EXIT_ENTRY = re.compile(r"^  (\d+(?:, \d+)*)\s+(.*)$")
SEE_ALSO = ("tgbackupd(8)", "tgbackupctl(1)", "tgbackupd.toml(5)", "pg_dump(1)", "psql(1)", "age(1)")


def roff(text: str) -> str:
    """Text as roff prints it: backslashes and hyphens escaped, a leading dot or quote defused."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\\&" + text if text[:1] in (".", "'") else text


def _bold(text: str) -> str:
    return f"\\fB{roff(text)}\\fR"


def _italic(text: str) -> str:
    return f"\\fI{roff(text)}\\fR"


def _header(name: str, section: int, title: str) -> list[str]:
    # No date: the page must be the same for the same source, whenever it is built.
    # No hyphenation: names such as TGBACKUPD_DAEMON_SOCKET are typed as they are shown.
    return [f'.TH {name.upper()} {section} "" "tgbackupd {__version__}" "{title}"', ".nh"]


def _see_also(own: str) -> list[str]:
    pages = [page for page in SEE_ALSO if page != own]
    return [
        ".SH SEE ALSO",
        ",\n".join(_bold(page[: page.index("(")]) + page[page.index("(") :] for page in pages),
    ]


def _option_label(action: argparse.Action) -> str:
    """`--config PATH`, `--json`, `SOURCE`, in bold and italics."""
    if not action.option_strings:
        return _italic(str(action.metavar or action.dest))
    names = ", ".join(_bold(option) for option in action.option_strings)
    if action.nargs == 0:
        return names
    metavar = _italic(str(action.metavar or action.dest.upper()))
    return f"{names} [{metavar}]" if action.nargs == "?" else f"{names} {metavar}"


def _documented(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """The parser's options and arguments, in their order; help and subcommands are told apart. (argparse
    has no public way to walk a parser: its `_actions` are what argparse-manpage reads too.)"""
    return [
        action
        for action in parser._actions
        if action.help != argparse.SUPPRESS
        and not isinstance(action, argparse._HelpAction | argparse._SubParsersAction)
    ]


def _options(parser: argparse.ArgumentParser) -> list[str]:
    lines = []
    for action in _documented(parser):
        lines += [".TP", _option_label(action), roff((action.help or "").replace("%%", "%"))]
    return lines


def _synopsis(prog: str, parser: argparse.ArgumentParser, tail: str = "") -> list[str]:
    """`.SY tgbackupctl` then the words: the subcommand (`tgbackupctl restore`) in bold, each option."""
    command, *subcommand = prog.split()
    words = [_bold(word) for word in subcommand]
    for action in _documented(parser):
        label = _option_label(action)
        words.append(label if not action.option_strings and action.nargs is None else f"[{label}]")
    return [".SY " + command, *words, *([tail] if tail else []), ".YS"]


def _epilog(epilog: str) -> list[str]:
    """The epilog as sections: `exit status:` with one tagged paragraph a status, the rest as paragraphs."""
    lines: list[str] = []
    for block in epilog.strip().split("\n\n"):
        rows = block.splitlines()
        if rows[0].strip() == "exit status:":
            lines.append(".SH EXIT STATUS")
            for row in rows[1:]:
                entry = _EXIT_ENTRY.match(row)
                if entry:
                    lines += [".TP", _bold(entry[1]), roff(entry[2])]
                else:
                    lines.append(roff(row.strip()))
        else:
            lines += [
                ".SH NOTES" if ".SH NOTES" not in lines else ".PP",
                *(roff(row.strip()) for row in rows),
            ]
    return lines


def _name(prog: str, description: str) -> list[str]:
    summary = description.rstrip(".")
    return [".SH NAME", f"{prog} \\- {roff(summary[0].lower() + summary[1:])}"]


def daemon_page() -> str:
    parser = cli._parser()
    lines = [
        *_header("tgbackupd", 8, "System Administration"),
        *_name("tgbackupd", parser.description or ""),
        ".SH SYNOPSIS",
        *_synopsis("tgbackupd", parser),
        ".SH DESCRIPTION",
        roff(parser.description or ""),
        "Without an option it runs as a daemon (under systemd: tgbackupd.service), makes the backups at "
        "their time and answers tgbackupctl on its control socket.",
        ".SH OPTIONS",
        *_options(parser),
        *_epilog(parser.epilog or ""),
        ".SH FILES",
        ".TP",
        _bold(str(DEFAULT_CONFIG_PATH)),
        "the configuration, described in " + _bold("tgbackupd.toml") + "(5)",
        ".TP",
        _bold("/var/lib/tgbackupd/backups"),
        "the backups kept locally and the state store",
        *_see_also("tgbackupd(8)"),
    ]
    return "\n".join(lines) + "\n"


def control_page() -> str:
    parser = ctl._parser()
    commands = next(action for action in parser._actions if isinstance(action, argparse._SubParsersAction))
    summaries = {choice.dest: choice.help for choice in commands._choices_actions}
    lines = [
        *_header("tgbackupctl", 1, "User Commands"),
        *_name("tgbackupctl", parser.description or ""),
        ".SH SYNOPSIS",
        *_synopsis("tgbackupctl", parser, _italic("COMMAND") + " [" + _italic("OPTIONS") + "]"),
        ".SH DESCRIPTION",
        roff(parser.description or ""),
        ".SH OPTIONS",
        *_options(parser),
        ".SH COMMANDS",
    ]
    for name, command in commands.choices.items():
        lines += [".SS " + roff(name), roff(summaries.get(name) or "")]
        if command.description:
            lines += [".PP", roff(command.description)]
        lines += [".PP", *_synopsis(f"tgbackupctl {name}", command), *_options(command)]
    lines += [*_epilog(parser.epilog or ""), *_see_also("tgbackupctl(1)")]
    return "\n".join(lines) + "\n"


def _default(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, tuple):
        return "[" + ", ".join(f'"{item}"' for item in value) + "]"
    return f'"{value.name if isinstance(value, Format) else value}"'


def _key(key: Any, environment: bool = True) -> list[str]:
    if not key.description:
        raise UndocumentedKey(
            f"the configuration key {key.dotted} has no description: give it one in config.py's KEYS "
            "(the manual page tgbackupd.toml(5) is made from it)"
        )
    lines = [".TP", _bold(key.name), roff(key.description)]
    default = _default(key.default)
    if default is not None:
        lines += [".br", "Default: " + _bold(default) + "."]
    if environment:
        names = [key.env_name, *key.legacy_env]
        lines += [".br", "Environment: " + ", ".join(_bold(name) for name in names) + "."]
    if key.secret:
        lines += [".br", "A secret: never shown in logs, errors or --check-config."]
    return lines


def _sections(keys: Iterable[Any]) -> dict[str, list[Any]]:
    sections: dict[str, list[Any]] = {}
    for key in keys:
        sections.setdefault(key.section, []).append(key)
    return sections


def configuration_page() -> str:
    lines = [
        *_header("tgbackupd.toml", 5, "File Formats"),
        ".SH NAME",
        "tgbackupd.toml \\- the configuration of tgbackupd",
        ".SH SYNOPSIS",
        _bold(str(DEFAULT_CONFIG_PATH)),
        ".SH DESCRIPTION",
        roff(
            f"tgbackupd and tgbackupctl read {DEFAULT_CONFIG_PATH} (or --config PATH, or TGBACKUPD_CONFIG), "
            "a TOML file of the sections below. Every key is optional. Environment variables win over the "
            "file: each key is TGBACKUPD_<SECTION>_<KEY> (a list: its items separated by commas), and the "
            "names of the original setup guide and of libpq work as they are. Every problem of the file and "
            "the environment is reported at once; check the result with tgbackupd --check-config."
        ),
    ]
    for section, keys in _sections(KEYS).items():
        lines += [".SH " + roff(f"[{section}]"), *(line for key in keys for line in _key(key))]
    entry = ", ".join(entry_keys())
    lines += [
        ".SH [[databases]]",
        roff(
            "Several databases: one [[databases]] entry each, backed up one after the other at the scheduled "
            "time, each its own series of backups, one failing without stopping the others. Without any "
            f"entry, [database] is the one database. An entry may set these keys: {entry}; what it does not "
            "set it inherits from [database] and [backup] and their environment variables (entries have no "
            "environment variables of their own), except that an entry with its own url or host does not "
            "inherit the password. An entry also takes:"
        ),
        *(line for key in ENTRY_FLAGS.values() for line in _key(key, environment=False)),
        ".SH EXAMPLE",
        ".EX",
        "[telegram]",
        "chat_id = \\-100123456789",
        'bot_token_file = "/etc/tgbackupd/telegram\\-bot\\-token"',
        "",
        "[database]",
        'url = "postgresql://app@localhost:5432/app"',
        "",
        "[backup]",
        "hour = 3",
        "keep = 7",
        ".EE",
        *_see_also("tgbackupd.toml(5)"),
    ]
    return "\n".join(lines) + "\n"


PAGES = {
    "tgbackupd.8": daemon_page,
    "tgbackupctl.1": control_page,
    "tgbackupd.toml.5": configuration_page,
}


def write(directory: Path) -> list[Path]:
    """Write every page into `directory`; return their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, page in PAGES.items():
        path = directory / name
        path.write_text(page(), encoding="utf-8")
        written.append(path)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m tgbackupd.manpages", description=__doc__)
    parser.add_argument("directory", type=Path, help="where to write tgbackupd.8, tgbackupctl.1, ...")
    args = parser.parse_args(argv)
    try:
        for path in write(args.directory):
            print(path)
    except TgbackupdError as error:
        print(f"tgbackupd.manpages: {error}", file=sys.stderr)
        return error.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
