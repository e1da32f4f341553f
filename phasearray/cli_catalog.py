"""Subcommands for catalogs, bundles, imports and serving.

``register(subparsers)`` adds ``catalog list|show|open``, ``publish``,
``verify``, ``import-phase-ml`` and ``serve`` to the ``phasearray`` command.
Each handler takes the parsed arguments and returns the exit code: 0 on
success, 1 when ``verify`` finds a file that fails its checksum, 2 on bad
input (one message on stderr).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any

from .errors import PhasearrayError

__all__ = ["register"]

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2

Handler = Callable[[argparse.Namespace], int]


def register(subparsers: Any) -> None:
    """Add this module's subcommands to the ``phasearray`` parser."""
    _add_catalog(subparsers)
    _add_publish(subparsers)
    _add_verify(subparsers)
    _add_import(subparsers)
    _add_serve(subparsers)


def _guarded(handler: Handler) -> Handler:
    """Turn phasearray's errors into one line on stderr and exit code 2."""

    @wraps(handler)
    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except (PhasearrayError, NotImplementedError) as error:
            print(f"phasearray: error: {error}", file=sys.stderr)
            return EXIT_BAD_INPUT

    return run


# --- catalog ----------------------------------------------------------------------


def _add_catalog(subparsers: Any) -> None:
    catalog = subparsers.add_parser(
        "catalog", help="list, show or open catalog data sets"
    )
    catalog.add_argument(
        "--catalog",
        type=Path,
        default=None,
        help="catalog.json or its folder (a bundle is one); default: the shipped one",
    )
    actions = catalog.add_subparsers(title="actions", metavar="ACTION", required=True)
    actions.add_parser("list", help="names and titles").set_defaults(
        handler=_catalog_list
    )
    for action, handler, text in (
        ("show", _catalog_show, "describe one entry"),
        ("open", _catalog_open, "check an entry's file and print its dataset"),
    ):
        parser = actions.add_parser(action, help=text)
        parser.add_argument("name", help="entry name, as listed")
        parser.set_defaults(handler=handler)


@_guarded
def _catalog_list(args: argparse.Namespace) -> int:
    from .catalog import open_catalog

    catalog = open_catalog(args.catalog)
    for name in catalog.names:
        entry = catalog[name]
        print(f"{name}\t{entry.title}\t{entry.license}")
    return EXIT_OK


@_guarded
def _catalog_show(args: argparse.Namespace) -> int:
    from .catalog import open_catalog

    print(open_catalog(args.catalog).show(args.name))
    return EXIT_OK


@_guarded
def _catalog_open(args: argparse.Namespace) -> int:
    from .catalog import open_catalog

    entry = open_catalog(args.catalog)[args.name]
    if entry.is_local and entry.sha256 is not None:
        entry.verify()
    ds = entry.open()
    print(ds)
    ds.close()
    return EXIT_OK


# --- publish and verify -----------------------------------------------------------


def _add_publish(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "publish", help="bundle a store for a DOI archive (zip, metadata, checksums)"
    )
    parser.add_argument("store", type=Path, help="the store folder")
    parser.add_argument("--out", type=Path, required=True, help="bundle folder to make")
    parser.add_argument("--name", help="file base name and catalog id")
    parser.add_argument("--title")
    parser.add_argument("--description")
    parser.add_argument(
        "--creator",
        action="append",
        default=[],
        help='"Family, Given" or an organisation; repeat for several',
    )
    parser.add_argument("--license", default="CC-BY-4.0", help="SPDX id of the data")
    parser.add_argument("--publisher")
    parser.add_argument(
        "--allow-incomplete", action="store_true", help="publish an unfinished store"
    )
    parser.set_defaults(handler=_publish)


@_guarded
def _publish(args: argparse.Namespace) -> int:
    from .publish import publish

    out = publish(
        args.store,
        args.out,
        name=args.name,
        title=args.title,
        creators=args.creator,
        description=args.description,
        license=args.license,
        publisher=args.publisher,
        allow_incomplete=args.allow_incomplete,
    )
    print(f"bundle: {out}")
    return EXIT_OK


def _add_verify(subparsers: Any) -> None:
    parser = subparsers.add_parser("verify", help="recompute a bundle's checksums")
    parser.add_argument("bundle", type=Path, help="the bundle folder")
    parser.set_defaults(handler=_verify)


@_guarded
def _verify(args: argparse.Namespace) -> int:
    from .catalog import ChecksumError
    from .publish import verify

    try:
        checked = verify(args.bundle)
    except ChecksumError as error:
        print(f"phasearray: verify failed: {error}", file=sys.stderr)
        return EXIT_FAILED
    print(f"{len(checked)} files match their sha256")
    return EXIT_OK


# --- import -----------------------------------------------------------------------


def _add_import(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "import-phase-ml",
        help="convert files of the phase_ml release format into a store",
    )
    parser.add_argument("files", nargs="+", type=Path, help="release data.npz files")
    parser.add_argument("--store", type=Path, required=True, help="store to create")
    parser.add_argument("--lr", type=float, help="learning rate, if not in the path")
    parser.add_argument("--bs", type=int, help="batch size, if not in the path")
    parser.add_argument(
        "--sigma-W", dest="sigma_W", type=float, help="σ_W, if not in the path"
    )
    parser.add_argument("--activation", help="activation, if not in the path (tanh)")
    parser.add_argument("--epochs", type=int, help="needed for files of 21 snapshots")
    parser.set_defaults(handler=_import_phase_ml)


@_guarded
def _import_phase_ml(args: argparse.Namespace) -> int:
    from .importers import import_phase_ml

    store = import_phase_ml(
        args.files,
        args.store,
        learning_rate=args.lr,
        batch_size=args.bs,
        sigma_W=args.sigma_W,
        activation=args.activation,
        epochs=args.epochs,
    )
    print(f"store: {store} ({len(args.files)} files)")
    return EXIT_OK


# --- serve ------------------------------------------------------------------------


def _add_serve(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "serve", help="serve a store over HTTP as Zarr (needs phasearray[serve])"
    )
    parser.add_argument("store", help="store folder or zipped store")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    parser.set_defaults(handler=_serve)


@_guarded
def _serve(args: argparse.Namespace) -> int:
    from .serve import ZARR_PREFIX, make_app, run_app

    app = make_app(args.store)
    url = f"http://{args.host}:{args.port}{ZARR_PREFIX}"
    print(f"serving {args.store} at {url} (Ctrl-C stops)", flush=True)
    run_app(app, args.host, args.port)
    return EXIT_OK
