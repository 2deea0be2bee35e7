"""Every ``zoo`` command of README.md runs as written (issue 9: "the README's commands run as
written", each finishing in minutes on 2 cores with the preset it shows).

The commands are taken from the README's fenced code blocks (a trailing backslash joins
lines, ``#`` starts a comment) and run in-process through ``comparisons.cli.main`` (importing
torch, Pyro and ArviZ costs ~6 s, paid once), in order, from an empty working folder: default
out-dirs land there, ``zoo report DIR`` finds the folder an earlier command wrote, and the
user's CSV of the README (``my.csv``) is written there first. Each must exit 0 and, except
``zoo list``, announce an ``index.html`` that exists. The runs are the slow lane; a fast test
fails when the README gains a command this file cannot run (a CSV it does not supply, a
``zoo report`` of a folder no earlier command writes, a flag the parser rejects).

Wall and CPU times are printed, not asserted: speed is measured, never timed in tests.
"""

from __future__ import annotations

import re
import shlex
import time
from pathlib import Path

import numpy as np
import pytest

from comparisons.cli import build_parser, main
from zoo import get_model

README = Path(__file__).resolve().parent.parent / "README.md"

FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")


def _my_csv() -> str:
    """The user's CSV of the README's example: columns a, b and a response y = 1 + 2a - b."""
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(2, 60))
    y = 1.0 + 2.0 * a - b + rng.normal(scale=0.5, size=60)
    rows = "".join(f"{u:.4f},{v:.4f},{w:.4f}\n" for u, v, w in zip(a, b, y))
    return "a,b,y\n" + rows


#: Files that README commands name (``--data FILE``), made by the test in the working folder.
FILES = {"my.csv": _my_csv}


def readme_commands(text: str) -> list[list[str]]:
    """The ``zoo`` commands in the fenced code blocks of ``text``, as argument lists."""
    commands: list[list[str]] = []
    inside, fence, pending = False, "", ""
    for line in text.splitlines():
        opening = FENCE.match(line)
        if opening and (not inside or opening[1][0] == fence[0] and len(opening[1]) >= len(fence)):
            inside, fence, pending = not inside, opening[1], ""
            continue
        if not inside:
            continue
        pending += line.strip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        argv = shlex.split(pending, comments=True)
        pending = ""
        if argv and argv[0] == "zoo":
            commands.append(argv)
    return commands


COMMANDS = readme_commands(README.read_text())


def _out_dir(argv: list[str]) -> Path | None:
    """Where a compare or fit command writes (its --out-dir, else the CLI's default); None for
    commands that write no report."""
    args = build_parser().parse_args(argv[1:])
    if args.command not in ("compare", "fit", "calibrate"):
        return None
    if args.out_dir is not None:
        return args.out_dir
    dataset = args.dataset or get_model(args.model).default_dataset
    stem = Path(str(args.data)).stem if args.data is not None else dataset
    if args.command == "calibrate":
        return Path("reports") / f"calibrate-{args.model}-{stem}"
    suffix = f"-{args.method}" if args.command == "fit" else ""
    if args.num_components is not None and re.search(r"[,-]", args.num_components[1:]):
        suffix = "-k"
    return Path("reports") / f"{args.model}-{stem}{suffix}"


def test_readme_has_commands_and_the_test_can_run_each():
    """Fails when the README gains a command the slow test below cannot run as written."""
    assert len(COMMANDS) >= 5, "no zoo commands found in README.md's code blocks"
    written: list[Path] = []
    for argv in COMMANDS:
        text = shlex.join(argv)
        args = build_parser().parse_args(argv[1:])  # a bad flag exits 2 here
        data = getattr(args, "data", None)
        assert data is None or str(data) in FILES, (
            f"`{text}` reads {data}, which tests/test_readme.py does not make: add it to FILES"
        )
        if args.command == "report":
            assert Path(args.dir) in written, (
                f"`{text}` re-renders a folder no earlier README command writes"
            )
        out = _out_dir(argv)
        if out is not None:
            written.append(out)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """One empty working folder for all the README's commands, with the files they read;
    the names of the commands that ran there."""
    root = tmp_path_factory.mktemp("readme")
    for name, make in FILES.items():
        (root / name).write_text(make())
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        yield {"root": root, "ran": set()}


def _run(argv: list[str], capsys) -> tuple[int, str, str, str]:
    """Exit status, stdout, stderr and the wall and CPU seconds the command took."""
    start, cpu = time.perf_counter(), time.process_time()
    try:
        code = main(argv[1:])
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    seconds = f"{time.perf_counter() - start:7.1f} s wall {time.process_time() - cpu:7.1f} s CPU"
    out, err = capsys.readouterr()
    return code, out, err, seconds


@pytest.mark.slow
@pytest.mark.parametrize("argv", COMMANDS, ids=[shlex.join(c[1:]) for c in COMMANDS])
def test_readme_command_runs_as_written(argv, workspace, capsys):
    text = shlex.join(argv)
    args = build_parser().parse_args(argv[1:])
    if args.command == "report":  # needs the folder an earlier command writes
        for earlier in COMMANDS[: COMMANDS.index(argv)]:
            if _out_dir(earlier) == Path(args.dir) and shlex.join(earlier) not in workspace["ran"]:
                code, _, err, _ = _run(earlier, capsys)
                assert code == 0, f"`{shlex.join(earlier)}` exited {code}: {err}"
                workspace["ran"].add(shlex.join(earlier))
    code, out, err, seconds = _run(argv, capsys)
    workspace["ran"].add(text)
    with capsys.disabled():
        print(f"\n{seconds}  {text}")
    assert code == 0, f"`{text}` exited {code}: {err}"
    assert "Traceback" not in err
    if args.command == "list":
        assert "models:" in out
        return
    announced = out.splitlines()[-1].removeprefix("report: ")
    assert Path(announced).is_file() and announced.endswith("index.html"), out
    out_dir = _out_dir(argv) or Path(args.dir)
    assert Path(announced) == out_dir / "index.html"
    if args.command != "report":
        assert (out_dir / "results.json").is_file()
