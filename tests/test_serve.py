"""Serving a store over HTTP with xpublish, read back by a real HTTP client."""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from phasearray.catalog import open_store
from phasearray.errors import EngineUnavailableError

SHIPPED_ZIP = (
    Path(__file__).resolve().parents[1]
    / "catalog"
    / "quick-tiny"
    / "quick-tiny.zarr.zip"
)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def served():
    for module in ("xpublish", "xpublish_zarr", "uvicorn"):
        pytest.importorskip(module, reason="the 'serve' extra is not installed")
    import uvicorn

    from phasearray.serve import make_app

    port = _free_port()
    config = uvicorn.Config(
        make_app(SHIPPED_ZIP), host="127.0.0.1", port=port, log_level="warning"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            pytest.fail("the test server did not start within 15 s")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/zarr"
    server.should_exit = True
    thread.join(timeout=10)


def test_metadata_over_http(served):
    with urllib.request.urlopen(f"{served}/zarr.json", timeout=10) as response:
        assert response.status == 200
        root = json.load(response)
    local = open_store(SHIPPED_ZIP)

    assert root["zarr_format"] == 3
    assert root["node_type"] == "group"
    assert root["attributes"]["pipeline"] == local.attrs["pipeline"]
    arrays = root["consolidated_metadata"]["metadata"]
    assert arrays["W2"]["shape"] == list(local["W2"].shape)
    local.close()


def test_xarray_reads_the_served_store(served):
    pytest.importorskip("aiohttp", reason="fsspec's HTTP backend needs aiohttp")
    remote = open_store(served)
    local = open_store(SHIPPED_ZIP)

    assert remote.attrs["pipeline_fingerprint"] == local.attrs["pipeline_fingerprint"]
    for name in ("W2", "eigenvalues", "train_loss", "done", "teacher_W2"):
        np.testing.assert_array_equal(remote[name].values, local[name].values)
    xr.testing.assert_identical(remote["T"], local["T"])
    remote.close()
    local.close()


def test_missing_extra_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "xpublish", None)
    from phasearray.serve import make_app

    with pytest.raises(EngineUnavailableError, match=r"phasearray\[serve\]"):
        make_app(SHIPPED_ZIP)


_SERVE_CODE = {
    "function": "from phasearray.serve import serve; serve({zip!r}, port={port})",
    "command": (
        "import argparse; from phasearray.cli_catalog import register; "
        "p = argparse.ArgumentParser(); register(p.add_subparsers()); "
        "a = p.parse_args(['serve', {zip!r}, '--port', '{port}']); a.handler(a)"
    ),
}


@pytest.mark.parametrize("how", ["function", "command"])
def test_serve_runs_until_stopped(how):
    for module in ("xpublish", "xpublish_zarr", "uvicorn"):
        pytest.importorskip(module, reason="the 'serve' extra is not installed")
    import subprocess

    port = _free_port()
    code = _SERVE_CODE[how].format(zip=str(SHIPPED_ZIP), port=port)
    process = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        root = _poll_json(f"http://127.0.0.1:{port}/zarr/zarr.json", process)
        assert root["attributes"]["schema_version"] == "1"
    finally:
        process.terminate()
        out, _ = process.communicate(timeout=10)
    if how == "command":
        assert f"at http://127.0.0.1:{port}/zarr" in out.decode()


def _poll_json(url: str, process, seconds: float = 20.0) -> dict:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(
                f"server exited early: {process.stderr.read().decode()[-2000:]}"
            )
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return json.load(response)
        except OSError:
            time.sleep(0.1)
    pytest.fail(f"no answer from {url} within {seconds} s")
