"""The taskctl commands the documentation shows parse with taskctl's own parser, so the skill
file and the READMEs cannot drift from the command line they teach."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from task_service_client.cli.app import build_parser

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "client" / "skill" / "SKILL.md", ROOT / "client" / "README.md", ROOT / "README.md"]
# A taskctl command line, possibly after environment assignments (`API_KEY=<admin key> taskctl ...`).
COMMAND_LINE = re.compile(r"""^\s*(?:[A-Z_][A-Z0-9_]*=(?:<[^>]*>|"[^"]*"|'[^']*'|\S+)\s+)*(taskctl\s.*)$""")
SHELL_OPERATORS = set("|&;<>()")


def bash_blocks(text: str) -> list[tuple[int, str]]:
    """(line number, line) of each line inside ```bash / ```sh / ```shell blocks, with
    backslash continuations joined."""
    lines: list[tuple[int, str]] = []
    fence: str | None = None
    pending = ""
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if stripped.startswith("```"):
            fence = None if fence is not None else stripped[3:].strip()
            continue
        if fence not in {"bash", "sh", "shell", "console"}:
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        lines.append((number, pending + line))
        pending = ""
    return lines


def taskctl_args(line: str) -> list[str] | None:
    """The arguments after `taskctl` on a shell line: environment prefixes, comments, pipes,
    redirections and `&` cut off. None when the line runs no taskctl."""
    match = COMMAND_LINE.match(line)
    if match is None:
        return None
    lexer = shlex.shlex(match.group(1), posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    tokens = list(lexer)
    args: list[str] = []
    for token in tokens[1:]:
        if token and set(token) <= SHELL_OPERATORS:
            break
        args.append(token)
    return args


def documented_commands() -> list[tuple[str, list[str]]]:
    found = []
    for doc in DOCS:
        for number, line in bash_blocks(doc.read_text()):
            args = taskctl_args(line)
            if args is not None:
                found.append((f"{doc.relative_to(ROOT)}:{number}: {line.strip()}", args))
    return found


COMMANDS = documented_commands()
SUBCOMMANDS = sorted(build_parser()._subparsers._group_actions[0].choices)  # type: ignore[union-attr]


def test_the_docs_show_taskctl_commands() -> None:
    where = {label.split(":")[0] for label, _ in COMMANDS}
    assert where == {"client/skill/SKILL.md", "client/README.md", "README.md"}
    assert len(COMMANDS) >= 30, [label for label, _ in COMMANDS]


def test_the_extraction_cuts_what_the_shell_would() -> None:
    assert taskctl_args("API_KEY=<admin key> taskctl register coder --skill py   # once") == [
        "register",
        "coder",
        "--skill",
        "py",
    ]
    assert taskctl_args("taskctl heartbeat --every 20 &") == ["heartbeat", "--every", "20"]
    assert taskctl_args("taskctl watch | head -1") == ["watch"]
    assert taskctl_args("""taskctl submit 7 --result '{"a": "x # y"}' > out.json""") == [
        "submit",
        "7",
        "--result",
        '{"a": "x # y"}',
    ]
    assert taskctl_args("export AGENT_NAME=x") is None


@pytest.mark.parametrize(("label", "args"), COMMANDS, ids=[label for label, _ in COMMANDS])
def test_each_documented_command_parses(label: str, args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    # `taskctl COMMAND --help` stands for every command.
    variants = [[name if a == "COMMAND" else a for a in args] for name in SUBCOMMANDS] if "COMMAND" in args else [args]
    for argv in variants:
        try:
            parsed = build_parser().parse_args(argv)
        except SystemExit as stop:
            if "--help" in argv and stop.code == 0:
                continue
            pytest.fail(f"{label}\nparsed as {argv}: {capsys.readouterr().err}")
        assert parsed.command in SUBCOMMANDS, label
