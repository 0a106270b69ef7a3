"""`serve` in this process with its admin listener, stopped by a real SIGTERM to itself; and
the JSON log writer the daemon installs."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import signal
from pathlib import Path

import aiohttp
import pytest

from devkit.dovecot import Dovecot, free_port
from popbridge.cli import commands as cli
from popbridge.config import load_config
from tests.test_cli import write_config

pytestmark = pytest.mark.dovecot


async def test_serve_runs_the_admin_listener_and_drains_on_sigterm(
    dovecot: Dovecot, tmp_path: Path
) -> None:
    admin_port = free_port()
    path = write_config(
        tmp_path / "c.toml", dovecot, pop_port=free_port(),
        extra=f'[store]\ntype = "memory"\n[admin]\nenabled = true\nport = {admin_port}',
    )  # fmt: skip
    serving = asyncio.create_task(cli.serve(load_config(path)))
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(200):
                try:
                    async with http.get(f"http://127.0.0.1:{admin_port}/healthz") as response:
                        if response.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    pass
                await asyncio.sleep(0.05)
        await asyncio.sleep(0.1)  # the signal handlers go in right after the admin listener
        os.kill(os.getpid(), signal.SIGTERM)
        assert await asyncio.wait_for(serving, 30) == 0
    finally:
        serving.cancel()
        gc.unfreeze()


def test_check_describes_the_admin_listener(
    dovecot: Dovecot, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    token = tmp_path / "token"
    token.write_text("t0ken-for-the-check-9d8e7f\n")
    admin = f'[admin]\nenabled = true\nport = 9999\ntoken_file = "{token}"'
    path = write_config(tmp_path / "c.toml", dovecot, extra=f'[store]\ntype = "memory"\n{admin}')
    assert cli.main(["check", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "admin http://127.0.0.1:9999/ (bearer token required but for /healthz)" in out
    assert "t0ken" not in out


def test_json_logs_through_the_writer_thread(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])
    monkeypatch.setattr(root, "level", root.level)
    with cli.logging_to_stderr("INFO", "json"):
        logging.getLogger("popbridge.test").info("queued line %d", 7)
    line = json.loads(capsys.readouterr().err)
    assert line["event"] == "queued line 7" and line["logger"] == "popbridge.test"
