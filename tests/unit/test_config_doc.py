"""docs/configuration.md is generated from the parsers and must match them."""

import argparse

from launcher import config_doc
from tests.compose_file import ROOT, console_scripts


def test_the_committed_configuration_doc_is_regenerated_identically():
    committed = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert committed == config_doc.render(), "docs/configuration.md is stale: run python -m launcher.config_doc"


def test_every_command_and_every_flag_with_its_variable_is_documented():
    text = config_doc.render()
    assert {cmd for cmd, _ in config_doc.COMMANDS} == set(console_scripts())
    for command, module in config_doc.COMMANDS:
        parser = __import__(module, fromlist=["build_parser"]).build_parser(environ={})
        for title, sub in config_doc._parsers(command, parser):
            assert f"## {title}\n" in text
            for action in sub._actions:
                if action.option_strings and not isinstance(action, argparse._HelpAction):
                    assert f"`{sub.env_vars[action.dest]}`" in text, (title, action.dest)
    assert "## `ps-admin shutdown` (also `stop`)\n" in text and "## `ps-admin status`\n" in text


def test_check_mode_reports_a_stale_file(tmp_path, capsys):
    stale = tmp_path / "configuration.md"
    stale.write_text("old\n")
    assert config_doc.main(["--check", "-o", str(stale)]) == 1
    assert config_doc.main(["-o", str(stale)]) == 0
    assert config_doc.main(["--check", "-o", str(stale)]) == 0
