"""`hopscope serve` settings: one table drives flags, HOPSCOPE_* twins, --help and docs/configuration.md."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from hopscope.analytics.schema import DERIVED_TABLES, Table
from hopscope.collector.settings import SETTINGS, SettingsError, add_setting_arguments, resolve_settings

DOCS = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"


def test_flag_beats_environment_beats_default() -> None:
    settings = resolve_settings({"grpc_port": "5000"}, {"HOPSCOPE_GRPC_PORT": "6000", "HOPSCOPE_HTTP_PORT": "7000"})
    assert (settings.grpc_port, settings.http_port, settings.api_port) == (5000, 7000, 8080)
    assert settings.db == "./hopscope.duckdb" and settings.host == "127.0.0.1" and settings.max_message_mib == 16


@pytest.mark.parametrize(("arguments", "environ", "named"), [
    ({"grpc_port": "70000"}, {}, "--grpc-port"),
    ({"api_port": "eighty"}, {}, "--api-port"),
    ({}, {"HOPSCOPE_MAX_MESSAGE_MIB": "0"}, "HOPSCOPE_MAX_MESSAGE_MIB"),
    ({}, {"HOPSCOPE_WORKERS": "-1"}, "HOPSCOPE_WORKERS"),
    ({"partition": "5s"}, {}, "--partition"),
    ({"partition": "2d"}, {}, "--partition"),
    ({}, {"HOPSCOPE_RETENTION": "a week"}, "HOPSCOPE_RETENTION"),
    ({"late_span_grace": "-1m"}, {}, "--late-span-grace"),
    ({}, {"HOPSCOPE_SPOOL_QUARANTINE": "maybe"}, "HOPSCOPE_SPOOL_QUARANTINE"),
])
def test_a_bad_value_names_its_flag_or_variable(arguments: dict, environ: dict, named: str) -> None:
    with pytest.raises(SettingsError, match=named):
        resolve_settings(arguments, environ)


def test_durations_read_as_a_person_writes_them() -> None:
    settings = resolve_settings({"partition": "10s", "late_span_grace": "90m"}, {"HOPSCOPE_RETENTION": "7d"})
    assert (settings.partition, settings.late_span_grace, settings.retention) == (10, 5400, 7 * 86400)
    defaults = resolve_settings({}, {})
    assert (defaults.partition, defaults.late_span_grace, defaults.retention) == (3600, 300, 604800)


def test_a_switch_is_on_as_a_bare_flag_or_a_yes_in_its_variable() -> None:
    parser = argparse.ArgumentParser()
    add_setting_arguments(parser)
    assert resolve_settings(vars(parser.parse_args(["--spool-quarantine"])), {}).spool_quarantine is True
    assert resolve_settings(vars(parser.parse_args([])), {"HOPSCOPE_SPOOL_QUARANTINE": "yes"}).spool_quarantine is True
    assert resolve_settings(vars(parser.parse_args(["--spool-quarantine", "false"])),
                            {"HOPSCOPE_SPOOL_QUARANTINE": "1"}).spool_quarantine is False
    assert resolve_settings({}, {}).spool_quarantine is False


def test_serve_exits_2_on_a_bad_setting_before_touching_anything(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "hopscope", "serve", "--db", str(tmp_path / "x.duckdb"),
                             "--http-port", "99999"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "--http-port" in result.stderr
    assert not (tmp_path / "x.duckdb").exists()


def test_help_explains_every_setting_and_its_environment_twin() -> None:
    result = subprocess.run([sys.executable, "-m", "hopscope", "serve", "--help"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    for setting in SETTINGS:
        assert setting.flag in text and setting.env in text


def test_configuration_doc_lists_every_setting_with_its_default() -> None:
    doc = DOCS.read_text()
    for setting in SETTINGS:
        assert f"`{setting.flag}`" in doc and f"`{setting.env}`" in doc, setting.name


def test_schema_doc_lists_every_column() -> None:
    from hopscope.collector.schema import columns_markdown

    assert columns_markdown() in (DOCS.parent / "schema.md").read_text()


def test_configuration_doc_table_is_generated_from_the_settings() -> None:
    from hopscope.collector.settings import settings_markdown

    assert settings_markdown() in DOCS.read_text()


@pytest.mark.parametrize("table", DERIVED_TABLES, ids=lambda table: table.name)
def test_sql_doc_shows_every_derived_table_as_declared(table: Table) -> None:
    """docs/sql.md's column tables are analytics/schema.py's declarations, word for word."""
    assert table.markdown() in (DOCS.parent / "sql.md").read_text()


def test_derived_tables_are_created_as_declared(tmp_path: Path) -> None:
    import duckdb

    from hopscope.analytics.schema import create_derived
    from hopscope.collector.schema import SCHEMA_STATEMENTS

    db = duckdb.connect(str(tmp_path / "x.duckdb"))
    for statement in SCHEMA_STATEMENTS:
        db.execute(statement)
    create_derived(db)
    for table in DERIVED_TABLES:
        columns = db.execute("SELECT column_name, data_type FROM information_schema.columns WHERE table_name = ? "
                             "ORDER BY ordinal_position", [table.name]).fetchall()
        assert columns == [(name, sql.removesuffix(" NOT NULL")) for name, sql, _ in table.columns], table.name
