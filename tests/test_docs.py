"""The man pages match the program: every option documented, pages render, versions agree.

(kpc.5's version against bitstream.FORMAT_VERSION is checked in test_bitstream.py.)
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import typer

from kpcodec import __version__

from kpcodec.media import audio
from kpcodec.bitstream.container import FORMAT_VERSION
from kpcodec.cli import app
from kpcodec.models.registry import DEFAULT_MODEL

ROOT = Path(__file__).resolve().parent.parent
MAN1 = ROOT / "man" / "kpcodec.1"
MAN5 = ROOT / "man" / "kpc.5"


def man_text(path: Path) -> str:
    """The roff source with escapes undone: \\- -> -, font changes dropped."""
    text = path.read_text()
    text = re.sub(r"\\f[BIRP]", "", text)
    return text.replace("\\-", "-").replace("\\(em", "-")


def section(text: str, title: str) -> str:
    """The body of `.SH TITLE` up to the next `.SH`."""
    m = re.search(rf"^\.SH {re.escape(title)}\n(.*?)(?=^\.SH |\Z)", text, re.M | re.S)
    assert m, f"no .SH {title} section"
    return m.group(1)


def options_of(command) -> list[str]:
    # Typer bundles its own click (typer._click), so ask the parameter, not isinstance.
    return [opt for p in command.params if p.param_type_name == "option"
            for opt in (*p.opts, *p.secondary_opts)]


def mentions(text: str, opt: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(opt)}(?![\w-])", text) is not None


GROUP = typer.main.get_command(app)


@pytest.mark.parametrize("name", sorted(GROUP.commands))
def test_every_option_of_every_command_is_in_kpcodec_1(name):
    text = man_text(MAN1)
    body = section(text, f"{name.upper()} OPTIONS")
    command = GROUP.commands[name]
    options = options_of(command)
    assert options, f"no options found for {name}"
    missing = [opt for opt in options if not mentions(body, opt)]
    assert not missing, f"kpcodec.1 does not document {name} {missing}"
    assert mentions(section(text, "SYNOPSIS"), name)


def test_global_options_and_sections():
    text = man_text(MAN1)
    body = section(text, "GLOBAL OPTIONS")
    assert all(mentions(body, opt) for opt in options_of(GROUP) + ["--help"])
    for title in ("NAME", "SYNOPSIS", "DESCRIPTION", "EXIT STATUS", "FILES", "EXAMPLES", "SEE ALSO"):
        section(text, title)
    status = section(text, "EXIT STATUS")
    for code in ("0", "1", "2", "130", "143"):
        assert re.search(rf"^\.B {code}$", status, re.M), code
    assert ".BR kpc (5)" in section(text, "SEE ALSO")


def test_documented_defaults_match_the_code():
    encode = man_text(MAN1)
    assert f"(default {audio.DEFAULT_KBPS:g})" in section(encode, "ENCODE OPTIONS")
    params = {p.name: p for p in GROUP.commands["encode"].params}
    assert params["audio_bitrate"].default == audio.DEFAULT_KBPS
    assert f"{audio.MIN_KBPS:g} to {audio.MAX_KBPS:g} kb/s" in section(encode, "ENCODE OPTIONS")
    assert f'"kpcodec {__version__}"' in MAN1.read_text().splitlines()[2]  # the .TH line


@pytest.mark.skipif(shutil.which("groff") is None, reason="groff is not installed")
@pytest.mark.parametrize("page", [MAN1, MAN5], ids=lambda p: p.name)
def test_man_page_renders_without_warnings(page):
    proc = subprocess.run(["groff", "-man", "-Tutf8", "-ww", "-z", str(page)], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    if shutil.which("man"):
        shown = subprocess.run(["man", "-l", str(page)], capture_output=True, text=True,
                               env={"MANPAGER": "cat", "PAGER": "cat", "MANWIDTH": "80", "PATH": "/usr/bin:/bin"})
        assert shown.returncode == 0 and "NAME" in shown.stdout


def test_version_names_package_format_and_model(runner):
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.stdout.strip() == (f"kpcodec {__version__} (.kpc format {FORMAT_VERSION[0]}.{FORMAT_VERSION[1]}, "
                                     f"default model {DEFAULT_MODEL})")


def test_shell_completion_script():
    # Without this variable typer ignores "bash" and detects the shell from the parent
    # processes, which fails when the tests run detached from any shell (CI, nohup).
    env = {**os.environ, "_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1"}
    proc = subprocess.run([sys.executable, "-m", "kpcodec", "--show-completion", "bash"],
                          capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "_kpcodec_completion" in proc.stdout and "complete -o default -F _kpcodec_completion kpcodec" in proc.stdout


def test_every_command_has_quiet():
    for name, command in GROUP.commands.items():
        assert {"-q", "--quiet"} <= set(options_of(command)), name
