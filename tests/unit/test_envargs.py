"""launcher.envargs: flags from PS_* variables; every flag error names the variable a value came from."""

from __future__ import annotations

import pytest

from launcher import admin_cli, launch_cli, server_cli, worker_cli
from launcher.envargs import EnvArgumentParser


def refused(parser, argv, capsys) -> str:
    """The error line of a usage error (which must exit 2)."""
    with pytest.raises(SystemExit) as stopped:
        parser.parse_args(argv)
    assert stopped.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


def test_a_bad_value_from_a_variable_names_the_variable(capsys):
    line = refused(server_cli.build_parser(environ={"PS_MODE": "fast"}), [], capsys)
    assert line == "ps-server: error: argument --mode: invalid choice: 'fast' (choose from 'async', 'sync', 'ssp') " \
                   "(from PS_MODE='fast')"
    line = refused(server_cli.build_parser(environ={"PS_PORT": "50o51"}), [], capsys)
    assert line.endswith("argument --port: invalid int value: '50o51' (from PS_PORT='50o51')")
    # the command line wins: the variable's value is never converted
    assert server_cli.build_parser(environ={"PS_PORT": "50o51"}).parse_args(["--port", "7"]).port == 7
    line = refused(server_cli.build_parser(environ={}), ["--mode", "fast"], capsys)
    assert "PS_MODE" not in line                          # not from the environment


def test_an_error_found_after_parsing_names_the_variables_of_the_flags_it_names(capsys):
    parser = server_cli.build_parser(environ={"PS_PORT": "70000", "PS_MODE": "sync"})
    args = parser.parse_args([])
    with pytest.raises(ValueError) as bad:
        server_cli.config_from_args(args)
    with pytest.raises(SystemExit):
        parser.error(str(bad.value))
    assert capsys.readouterr().err.strip().endswith(
        "port must be in [0, 65535], got 70000 (from the environment: PS_PORT='70000')")  # not PS_MODE
    parser = server_cli.build_parser(environ={"PS_METRICS_PORT": "9100"})
    parser.parse_args(["--port", "9100"])
    with pytest.raises(SystemExit):
        parser.error("metrics-port must be in [0, 65535] and not the gRPC port, got 9100")
    assert capsys.readouterr().err.strip().endswith("(from the environment: PS_METRICS_PORT='9100')")
    parser = EnvArgumentParser(prog="p", environ={"PS_VERBOSE": "1"})
    parser.add_argument("--verbose", action="store_true")
    assert parser.parse_args([]).verbose
    with pytest.raises(SystemExit):
        parser.error("--verbose needs --quiet off")
    assert capsys.readouterr().err.strip().endswith("(from the environment: PS_VERBOSE='1')")


def test_ps_servers_is_an_address_list_and_ps_launch_counts_with_ps_num_servers(capsys):
    addresses = {"PS_SERVERS": "10.0.0.1:50051,10.0.0.2:50051"}
    assert launch_cli.build_parser(environ=addresses).parse_args([]).num_servers == 2   # the default, untouched
    assert launch_cli.build_parser(environ={"PS_NUM_SERVERS": "3"}).parse_args([]).num_servers == 3
    assert launch_cli.build_parser(environ={}).parse_args(["--servers", "4"]).num_servers == 4   # DESIGN.md's flag
    assert launch_cli.build_parser(environ={}).parse_args(["--num-servers", "5"]).num_servers == 5
    assert worker_cli.build_parser(environ=addresses).parse_args([]).servers == addresses["PS_SERVERS"]
    line = refused(worker_cli.build_parser(environ={"PS_SERVERS": "2"}), [], capsys)
    assert line.startswith("ps-worker: error: argument --servers: '2' is not HOST:PORT")
    assert line.endswith("(from PS_SERVERS='2')")
    line = refused(admin_cli.build_parser(environ={"PS_SERVERS": "h:1,h"}), ["status"], capsys)
    assert "argument --servers: 'h' is not HOST:PORT" in line and line.endswith("(from PS_SERVERS='h:1,h')")
    assert admin_cli.build_parser(environ={}).parse_args(["status", "--servers", "unix:/tmp/s, [::1]:5"]).servers \
        == "unix:/tmp/s,[::1]:5"
