"""The `lmcache server` command line our MP runner builds (no server started)."""

from __future__ import annotations

from pathlib import Path

import pytest

from testkit import mp_server


def test_lmcache_cli_found_beside_the_interpreter_without_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    cli = fake_bin / "lmcache"
    cli.write_text("#!/bin/sh\n")
    cli.chmod(0o755)
    monkeypatch.setattr(mp_server.sys, "executable", str(fake_bin / "python"))
    monkeypatch.setenv("PATH", "")
    assert mp_server.lmcache_executable() == str(cli)


def test_missing_cli_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(mp_server.sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="lmcache==0.5.6"):
        mp_server.lmcache_executable()


def test_server_command_carries_ports_chunk_and_shm(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mp_server, "lmcache_executable", lambda: "/x/lmcache")
    cmd = mp_server.server_command(5555, 8080, chunk_size=128, shm_name="kv0")
    assert cmd[:2] == ["/x/lmcache", "server"]

    def value(flag: str) -> str:
        return cmd[cmd.index(flag) + 1]

    assert value("--port") == "5555" and value("--http-port") == "8080"
    assert value("--chunk-size") == "128" and value("--shm-name") == "kv0"
