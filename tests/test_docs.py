"""The README is part of the contract: its set-up commands exist and it documents every config key."""

import dataclasses
import re
from pathlib import Path

from mcrecall import config

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _readme_default(d) -> str:
    return f'"{d}"' if isinstance(d, str) else (str(d).lower() if isinstance(d, bool) else repr(d))


def test_every_config_key_is_documented_with_its_default():
    missing = [f"{sec}.{f.name}" for sec, cls in config._SECTION_TYPES.items()
               for f in dataclasses.fields(cls)
               if f"| `{sec}.{f.name}` | `{_readme_default(f.default)}` |" not in README]
    assert not missing, f"README's configuration table lacks or misstates {missing}"


def test_setup_commands_exist_and_ci_calls_the_test_command():
    block = README[README.index("## Set-up"):]
    commands = re.findall(r"^bash (\S+)", block, re.M)[:2]
    assert len(commands) == 2
    for c in commands:
        assert (ROOT / c).is_file(), c
    assert f"bash {commands[1]}" in (ROOT / ".ci" / "run").read_text()


def test_every_cli_command_is_documented():
    from mcrecall.cli import COMMANDS

    for name in COMMANDS:
        assert f"`mcrecall {name}" in README, name
