"""Serving a store over HTTP as Zarr v3, with xpublish.

The store is opened lazily (nothing is computed up front) and published by
xpublish with the ``xpublish-zarr`` plugin: ``/zarr/zarr.json`` holds the
consolidated metadata and ``/zarr/VAR/c/i/j/…`` one encoded chunk each, so
any Zarr v3 client reads it::

    xr.open_zarr("http://127.0.0.1:9000/zarr", consolidated=True, zarr_format=3)

(over HTTP this needs ``fsspec`` with ``aiohttp``). The packages come with the
optional extra ``serve`` and are imported only when serving.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from .catalog import open_store
from .errors import EngineUnavailableError

__all__ = ["ZARR_PREFIX", "make_app", "run_app", "serve"]

logger = logging.getLogger(__name__)

ZARR_PREFIX = "/zarr"
_EXTRA = "pip install 'phasearray[serve]' (xpublish, xpublish-zarr, uvicorn)"


def _xpublish() -> tuple[Any, Any]:
    try:
        import xpublish
        from xpublish_zarr import ZarrPlugin
    except ImportError as error:
        raise EngineUnavailableError(
            f"serving needs the optional packages of the 'serve' extra ({error.name} "
            f"is missing): {_EXTRA}"
        ) from None
    return xpublish, ZarrPlugin


def make_app(store: str | Path) -> Any:
    """The ASGI application that serves ``store`` as Zarr v3 under ``/zarr``.

    Parameters
    ----------
    store : path
        A store folder or a zipped store (see :func:`phasearray.catalog.open_store`).

    Returns
    -------
    fastapi.FastAPI

    Raises
    ------
    EngineUnavailableError
        xpublish or xpublish-zarr is not installed.
    """
    xpublish, ZarrPlugin = _xpublish()
    ds = open_store(store)
    rest = xpublish.SingleDatasetRest(ds, plugins={"zarr": ZarrPlugin()})
    return rest.app


def serve(store: str | Path, host: str = "127.0.0.1", port: int = 9000) -> None:
    """Serve ``store`` over HTTP until interrupted (blocking).

    Parameters
    ----------
    store : path
        A store folder or a zipped store.
    host : str
        Interface to bind; the default is reachable from this machine only.
    port : int
        TCP port.

    Examples
    --------
    >>> serve("runs/quick.zarr", port=9000)  # doctest: +SKIP
    """
    logger.info("serving %s at http://%s:%d%s", store, host, port, ZARR_PREFIX)
    run_app(make_app(store), host, port)


def run_app(app: Any, host: str, port: int) -> None:
    """Run an application from :func:`make_app` with uvicorn (blocking)."""
    try:
        import uvicorn
    except ImportError:
        raise EngineUnavailableError(f"serving needs uvicorn: {_EXTRA}") from None
    uvicorn.run(app, host=host, port=port, log_level="warning")
