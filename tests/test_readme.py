"""README.md opens with the commands users run; CI must run the very same test command."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands() -> list[str]:
    blocks = re.findall(r"```(?:bash|sh)?\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    lines = [line.strip() for line in blocks[0].splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def test_readme_test_command_is_what_ci_runs():
    test_command = _readme_commands()[-1]
    assert "pytest" in test_command
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert test_command in ci_lines


def test_readme_commands_start_with_set_up():
    for command in _readme_commands():
        assert command.startswith("bash launch/"), command
