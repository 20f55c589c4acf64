"""The Debian package's sources agree with the code: the changelog's version is the package's, and the
manual pages made from the parsers and the table of keys name every option and every key."""

import argparse
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tgbackupd import __version__, cli, config, ctl, manpages
from tgbackupd.errors import UndocumentedKey

REPO = Path(__file__).parents[2]


def test_the_changelogs_top_entry_is_the_version_of_the_package():
    top = (REPO / "debian" / "changelog").read_text().splitlines()[0]
    assert re.fullmatch(r"tgbackupd \(([^)]+)\) \S+; urgency=\w+", top)
    assert top.split("(")[1].split(")")[0] == __version__


def test_every_configuration_key_has_a_description():
    undocumented = [key.dotted for key in (*config.KEYS, *config.ENTRY_FLAGS.values()) if not key.description]
    assert undocumented == []


def _options(parser) -> set[str]:
    """Every option and subcommand but --help, which no manual page lists."""
    found = {
        option
        for action in parser._actions
        if not isinstance(action, argparse._HelpAction)
        for option in action.option_strings
    }
    for action in parser._actions:
        for command in getattr(action, "choices", None) or {}:
            if isinstance(command, str) and hasattr(action.choices[command], "_actions"):
                found |= _options(action.choices[command]) | {command}
    return found


def test_the_manual_pages_name_every_option_of_their_command():
    for page, parser in ((manpages.daemon_page(), cli._parser()), (manpages.control_page(), ctl._parser())):
        text = page.replace("\\-", "-")
        missing = sorted(option for option in _options(parser) if option not in text)
        assert missing == []


def test_the_configuration_page_names_every_key_and_its_environment_variable():
    text = manpages.configuration_page().replace("\\-", "-")
    for key in config.KEYS:
        assert f"\\fB{key.name}\\fR" in text and key.env_name in text
        assert all(name in text for name in key.legacy_env)
    for flag in config.ENTRY_FLAGS:
        assert f"\\fB{flag}\\fR" in text


def test_a_key_without_a_description_stops_the_build_of_the_pages(monkeypatch, tmp_path):
    bare = config._Key("backup", "undescribed", config._integer(1, 2, "a number"), 1)
    monkeypatch.setattr(manpages, "KEYS", (*config.KEYS, bare))

    with pytest.raises(UndocumentedKey, match=r"backup\.undescribed has no description"):
        manpages.configuration_page()
    assert manpages.main([str(tmp_path)]) == 70


@pytest.mark.skipif(shutil.which("groff") is None, reason="needs groff")
def test_groff_reads_every_page_without_a_warning(tmp_path):
    for path in manpages.write(tmp_path):
        rendered = subprocess.run(
            ["groff", "-k", "-man", "-Tutf8", "-ww", "-z", str(path)],
            capture_output=True,
            text=True,
            env={"MANWIDTH": "80", "PATH": "/usr/bin:/bin"},
            timeout=60,
            check=False,
        )
        assert (rendered.returncode, rendered.stderr) == (0, ""), path.name
