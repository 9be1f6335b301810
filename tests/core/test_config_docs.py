"""docs/configuration.md is what `python -m handler.cli.config_docs` writes now, with a row for every setting."""

from __future__ import annotations

from pathlib import Path

import pytest

from handler.cli import config_docs
from handler.core.settings import Settings

PAGE = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
REGENERATE = "regenerate it: `make docs` (or `.venv/bin/python -m handler.cli.config_docs --write`)"


def missing_rows(page: str) -> list[str]:
    """The settings that have no row of their own in `page`."""
    rows = {line.split("|")[1].strip() for line in page.splitlines() if line.startswith("| `")}
    return [name for name in Settings.model_fields if f"`{name}`" not in rows]


def test_the_page_is_what_the_generator_writes_now() -> None:
    assert PAGE.read_text(encoding="utf-8") == config_docs.render(), f"{PAGE} is stale; {REGENERATE}"


def test_every_setting_has_a_row_in_the_page() -> None:
    assert missing_rows(PAGE.read_text(encoding="utf-8")) == [], REGENERATE


def test_every_setting_has_a_description() -> None:
    """An empty description is an empty cell: write one with `Field(description=...)` in handler/core/settings.py."""
    assert [name for name, field in Settings.model_fields.items() if not (field.description or "").strip()] == []


def test_a_row_left_out_is_found() -> None:
    page = config_docs.render()
    without = "\n".join(line for line in page.splitlines() if not line.startswith("| `n_ctx` |"))
    assert missing_rows(page) == []
    assert missing_rows(without) == ["n_ctx"]
    assert missing_rows(page.replace("| `n_ctx` |", "| `n_ctx_old` |")) == ["n_ctx"]


def test_a_page_that_differs_is_not_what_the_generator_writes() -> None:
    page = config_docs.render()
    assert page.replace("Context window in tokens.", "Context window.") != config_docs.render()


def test_a_row_holds_the_fields_type_bounds_default_variable_and_description() -> None:
    rows = {line.split(" | ")[0]: line for line in config_docs.render().splitlines() if line.startswith("| `")}
    assert rows["| `n_parallel`"] == (
        "| `n_parallel` | int (>= 1, <= 256) | `8` | `CHAT_N_PARALLEL` | "
        + Settings.model_fields["n_parallel"].description
        + " |"
    )
    assert "`2048`; config.yaml: `4096`" in rows["| `n_ctx`"]  # the shipped file's value beside the default
    assert "`auto` \\| `emf` \\| `prometheus` \\| `off`" in rows["| `metrics`"]  # escaped for the table


def test_the_command_prints_or_writes_the_page(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert config_docs.main([]) == 0
    assert capsys.readouterr().out == config_docs.render()
    target = tmp_path / "docs" / "configuration.md"
    assert config_docs.main([str(target)]) == 0
    assert target.read_text(encoding="utf-8") == config_docs.render()
