"""``docs/config.md`` is generated from the config dataclasses and must be up to date."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from align.cli.app import GENERATED
from align.cli.config_docs import render

DOC = Path(__file__).resolve().parents[2] / "docs" / "config.md"


def test_config_reference_is_up_to_date():
    text = render()
    assert DOC.read_text(encoding="utf-8") == text, (
        "docs/config.md is out of date: run `python -m align.cli.config_docs > docs/config.md`"
    )


def test_config_reference_has_every_command_and_field():
    text = DOC.read_text(encoding="utf-8")
    for path, command in GENERATED:
        assert f"## `align {' '.join([*path, command.name])}`" in text
        for f in dataclasses.fields(command.config_class):
            hidden = {*getattr(command.config_class, "config_renames", {}),
                      *getattr(command.config_class, "config_hidden", ())}  # fmt: skip
            if f.init and f.name not in hidden:
                assert f"`--{f.name}`" in text or f"`--{f.name}." in text, f.name
