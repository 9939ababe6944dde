"""README's commands cannot drift from the program: every `kpcodec` line names a real command
and real options, every script and module it runs exists, and the quick start installs every
extra the other lines need. The cheap lines (info of a shipped file, --help) are run."""
from __future__ import annotations

import importlib.util
import re
import shlex
from pathlib import Path

import pytest
import typer

from kpcodec.cli import app

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
GROUP = typer.main.get_command(app)


def shell_lines() -> list[str]:
    """Command lines of README's ```sh blocks (comments dropped, continuations joined)."""
    lines = []
    for block in re.findall(r"```sh\n(.*?)```", README, re.S):
        text = re.sub(r"\\\n\s*", " ", block)
        for line in text.splitlines():
            line = line.split(" # ")[0].strip()
            if line and not line.startswith("#"):
                lines.append(line)
    return lines


def segments(line: str) -> list[list[str]]:
    """The simple commands of a line (split at |, &&, ;), each as argv without env assignments."""
    out = []
    for part in re.split(r"\|\||&&|\||;", line):
        argv = shlex.split(part)
        while argv and re.fullmatch(r"[A-Z_]+=.*", argv[0]):
            argv = argv[1:]
        if argv:
            out.append(argv)
    return out


COMMANDS = [argv for line in shell_lines() for argv in segments(line)]
KPCODEC = [argv for argv in COMMANDS if argv[0] == "kpcodec"]


def test_readme_has_commands():
    assert len(KPCODEC) >= 10


def options_of(command) -> set[str]:
    return {opt for p in command.params if p.param_type_name == "option" for opt in (*p.opts, *p.secondary_opts)}


@pytest.mark.parametrize("argv", KPCODEC, ids=[" ".join(a)[:60] for a in KPCODEC])
def test_every_kpcodec_line_names_real_options(argv):
    known_global = {"--install-completion", "--show-completion", "--help", "--version"}
    if argv[1] in known_global:
        return
    assert argv[1] in GROUP.commands, f"README runs `kpcodec {argv[1]}`, which is no command"
    opts = options_of(GROUP.commands[argv[1]]) | {"--help"}
    for word in argv[2:]:
        if word.startswith("-") and word != "-":
            flag = word.split("=")[0]
            assert flag in opts, f"`kpcodec {argv[1]}` has no option {flag}"


def test_every_script_and_module_the_readme_runs_exists():
    for argv in COMMANDS:
        if argv[0].endswith(".sh") or (argv[0] == "python" and len(argv) > 1 and argv[1].endswith(".py")):
            script = argv[0] if argv[0].endswith(".sh") else argv[1]
            assert (ROOT / script).is_file(), f"README runs {script}, which is not in the repository"
        if argv[0] == "python" and len(argv) > 2 and argv[1] == "-m" and argv[2] != "pytest":
            assert importlib.util.find_spec(argv[2]) is not None, f"README runs python -m {argv[2]}"


def test_the_quick_start_installs_the_extras_the_commands_need():
    quick = README.split("## Quick start", 1)[1].split("##", 1)[0]
    install = re.search(r"pip install -e '\.\[([\w,]+)\]'", quick)
    assert install, "the quick start installs kpcodec with pip install -e '.[...]'"
    extras = set(install.group(1).split(","))
    needs = {"test"}
    for argv in KPCODEC:
        if argv[1] == "compare":
            needs |= {"eval"}  # landmark columns
            if "--plot" in argv:
                needs |= {"plot"}
    assert needs <= extras, f"README's commands need the extras {sorted(needs - extras)}"


def test_the_cheap_lines_run(runner, tmp_path):
    """`kpcodec info` of a shipped .kpc (as README shows it) and every command's --help."""
    sample = next((ROOT / "samples").glob("*.kpc"), None) or ROOT / "tests" / "golden" / "v1_3.kpc"
    for argv in KPCODEC:
        if argv[1] == "info":
            args = ["info", str(sample), *argv[3:]]
        elif argv[1] in GROUP.commands:
            args = [argv[1], "--help"]
        else:
            continue
        r = runner.invoke(app, args)
        assert r.exit_code == 0, (args, r.output)


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README, re.S)


def test_library_examples_run(tmp_path, clip, monkeypatch):
    """README's library examples run as written, on a clip of the tests with the tiny model, and the
    frame loop renders what decode writes (one frame per input frame, at the model's size)."""
    import numpy as np

    blocks = python_blocks()
    assert len(blocks) >= 3, "README shows the library API (file, encoder and frames examples)"
    monkeypatch.chdir(tmp_path)
    (tmp_path / "in.mp4").write_bytes(Path(clip).read_bytes())
    files = blocks[0].replace("keep_every=2)", "keep_every=2, model='tiny')")
    assert "model='tiny'" in files
    exec(compile(files, "README files example", "exec"), {})
    assert (tmp_path / "rec.mp4").stat().st_size > 0
    encoder = blocks[1].replace("EncodeOptions(keep_every=2)", "EncodeOptions(keep_every=2, model='tiny')")
    scope: dict = {}
    exec(compile(encoder, "README encoder example", "exec"), scope)
    assert scope["data"] == (tmp_path / "out.kpc").read_bytes()  # what encode wrote with the same options
    frames_code = blocks[2].replace("    pass", "    frames.append(frame)")
    scope = {"frames": []}
    exec(compile(frames_code, "README frames example", "exec"), scope)
    frames = scope["frames"]
    assert len(frames) == 12 and all(f.dtype == np.uint8 and f.shape[2] == 3 for f in frames)
