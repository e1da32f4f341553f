"""The catalog: datasets described by STAC items, opened by name as xarray.

Format
------
The catalog is a static `STAC <https://stacspec.org>`_ catalog (spec 1.1):
``catalog.json`` links one STAC Item per dataset; each item holds the store
as an asset with its size and SHA-256 (STAC ``file`` extension, a multihash
``1220…``), its licence (SPDX id), description and creation time, and
phasearray's own fields under the ``phasearray:`` prefix (pipeline name and
fingerprint, schema version, grid).

STAC was chosen over intake 2 because a STAC catalog is plain JSON with a
published schema: it is read here with the standard library alone, pystac
(and any other STAC tool or archive) reads and validates the same files, and
licence, checksums and sizes have standard fields. An intake 2 catalog is a
serialisation of intake's own reader classes, readable only by intake, and
has no standard place for checksums or a licence. The geospatial fields STAC
requires are left empty (``geometry: null``).

Layout of ``catalog/`` (and of each published bundle, flat)::

    catalog.json                  STAC Catalog, links its items
    NAME/NAME.json                STAC Item of the dataset NAME
    NAME/NAME.zarr.zip            the store, one file (or an href to a URL)

Examples
--------
>>> cat = open_catalog()  # doctest: +SKIP
>>> cat.names  # doctest: +SKIP
['quick-tiny']
>>> ds = cat.open("quick-tiny")  # doctest: +SKIP
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import xarray as xr
import yaml

from .errors import ChecksumError, ConfigError, StoreError
from .store import check_schema, open_sweep

__all__ = [
    "STAC_VERSION",
    "Catalog",
    "CatalogEntry",
    "ChecksumError",
    "catalog_document",
    "default_catalog_path",
    "grid_summary",
    "item_links",
    "open_catalog",
    "open_store",
    "sha256_file",
    "stac_item",
    "write_json",
]

logger = logging.getLogger(__name__)

STAC_VERSION = "1.1.0"
FILE_EXTENSION = "https://stac-extensions.github.io/file/v2.1.0/schema.json"
ZIP_MEDIA_TYPE = "application/zip"
ZARR_MEDIA_TYPE = "application/vnd+zarr"
_SHA256_MULTIHASH = "1220"  # multihash prefix: sha2-256, 32 bytes
_ENV = "PHASEARRAY_CATALOG"


# --- checksums ---------------------------------------------------------------------


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks.

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.NamedTemporaryFile() as f:
    ...     sha256_file(f.name)[:12]
    'e3b0c44298fc'
    """
    digest = hashlib.sha256()
    with Path(path).open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _multihash(sha256: str) -> str:
    return _SHA256_MULTIHASH + sha256


def _from_multihash(value: str | None, where: str) -> str | None:
    if value is None:
        return None
    if not (value.startswith(_SHA256_MULTIHASH) and len(value) == 68):
        raise StoreError(
            f"{where}: file:checksum {value!r} is not a SHA-256 multihash "
            f"('{_SHA256_MULTIHASH}' followed by 64 hex digits)"
        )
    return value[len(_SHA256_MULTIHASH) :]


# --- opening stores ----------------------------------------------------------------


def _is_url(location: str) -> bool:
    return urlparse(location).scheme in ("http", "https", "s3", "gs", "az", "abfs")


def open_store(location: str | Path) -> xr.Dataset:
    """Open a phasearray store from a folder, a zip file or a URL.

    Parameters
    ----------
    location : str or path
        A store folder (opened with :func:`phasearray.open_sweep`), a zipped
        store (``.zip``, opened with :class:`zarr.storage.ZipStore`), or the URL
        of a Zarr v3 store with consolidated metadata, such as one served by
        :func:`phasearray.serve.serve`.

    Returns
    -------
    xarray.Dataset
        Dask-backed; dims ``T``, ``sigma_W``, ``seed``, ``t`` and the rest of
        ``docs/store.md``.

    Raises
    ------
    StoreError
        Nothing readable there, or not a phasearray store.
    """
    text = str(location)
    if _is_url(text):
        return _open_url(text)
    return open_sweep(Path(location))


def _open_url(url: str) -> xr.Dataset:
    if url.endswith(".zip"):
        raise NotImplementedError(
            f"opening a zipped store over the network ({url}) is not supported; "
            "download the file, check its sha256, and open the local copy"
        )
    try:
        ds = xr.open_zarr(url, chunks={}, consolidated=True, zarr_format=3)
    except Exception as error:  # fsspec, aiohttp, zarr and xarray raise many kinds
        raise StoreError(f"cannot open store at {url}: {error}") from None
    check_schema(ds.attrs, url)
    return ds


# --- entries -----------------------------------------------------------------------


@dataclass(frozen=True)
class CatalogEntry:
    """One dataset of a catalog, read from its STAC item.

    Attributes
    ----------
    name : str
        The item id, used to open it.
    location : str
        The store: an absolute local path or a URL.
    size : int or None
        Bytes of the store file, when it is one file.
    sha256 : str or None
        Hex SHA-256 of the store file, when it is one file.
    properties : mapping
        All item properties, including the ``phasearray:`` ones.
    """

    name: str
    title: str
    description: str
    license: str
    location: str
    media_type: str
    size: int | None
    sha256: str | None
    item_path: Path
    properties: Mapping[str, Any] = field(repr=False)

    @property
    def pipeline(self) -> str:
        """Name of the pipeline that made the store."""
        return str(self.properties.get("phasearray:pipeline", ""))

    @property
    def is_local(self) -> bool:
        return not _is_url(self.location)

    def verify(self) -> str:
        """Check the local store file against the recorded size and SHA-256.

        Returns
        -------
        str
            The hex SHA-256.

        Raises
        ------
        ChecksumError
            Size or checksum differ; the message names the file.
        StoreError
            Nothing to check: the store is remote, a folder, or missing.
        """
        path = Path(self.location)
        if not self.is_local or self.sha256 is None or not path.is_file():
            raise StoreError(
                f"entry {self.name!r}: {self.location} is not a local file with a "
                "recorded sha256, so it cannot be verified"
            )
        if self.size is not None and path.stat().st_size != self.size:
            raise ChecksumError(
                f"{path.name}: {path.stat().st_size} bytes, the catalog records "
                f"{self.size}"
            )
        actual = sha256_file(path)
        if actual != self.sha256:
            raise ChecksumError(
                f"{path.name}: sha256 {actual} differs from the catalog's {self.sha256}"
            )
        return actual

    def open(self, *, verify: bool = False) -> xr.Dataset:
        """The store as a Dask-backed dataset; ``verify`` checks the file first."""
        if verify:
            self.verify()
        return open_store(self.location)

    def describe(self) -> str:
        """A few lines for people: title, pipeline, grid, size, licence."""
        grid = self.properties.get("phasearray:grid", {})
        lines = [
            f"{self.name}: {self.title}",
            f"  pipeline   {self.pipeline} "
            f"(fingerprint {self.properties.get('phasearray:pipeline_fingerprint')})",
            f"  grid       {_grid_text(grid)}",
            f"  store      {self.location}",
            f"  size       {_size_text(self.size)}",
            f"  sha256     {self.sha256 or 'not recorded'}",
            f"  licence    {self.license}",
            f"  created    {self.properties.get('datetime')}",
            "",
            self.description,
        ]
        return "\n".join(lines)


def _grid_text(grid: Mapping[str, Any]) -> str:
    if not grid:
        return "not recorded"
    return (
        f"{len(grid.get('T', []))} T × {len(grid.get('sigma_W', []))} sigma_W × "
        f"{grid.get('seed')} seeds, {grid.get('t')} checkpoints up to step "
        f"{grid.get('steps')}"
    )


def _size_text(size: int | None) -> str:
    return "unknown" if size is None else f"{size} bytes ({size / 2**20:.2f} MiB)"


def _entry_from_item(item: Mapping[str, Any], item_path: Path) -> CatalogEntry:
    where = str(item_path)
    if item.get("type") != "Feature" or "id" not in item:
        raise StoreError(f"{where} is not a STAC item (type Feature with an id)")
    asset = _data_asset(item, where)
    props = item.get("properties", {})
    href = str(asset["href"])
    location = href if _is_url(href) else str((item_path.parent / href).resolve())
    return CatalogEntry(
        name=str(item["id"]),
        title=str(props.get("title", item["id"])),
        description=str(props.get("description", "")),
        license=str(props.get("license", "not stated")),
        location=location,
        media_type=str(asset.get("type", "")),
        size=asset.get("file:size"),
        sha256=_from_multihash(asset.get("file:checksum"), where),
        item_path=item_path,
        properties=props,
    )


def _data_asset(item: Mapping[str, Any], where: str) -> Mapping[str, Any]:
    assets = item.get("assets", {})
    if "store" in assets:
        return assets["store"]
    data = [a for a in assets.values() if "data" in a.get("roles", [])]
    if not data:
        raise StoreError(f"{where}: the item has no 'store' asset and no data asset")
    return data[0]


# --- catalogs ----------------------------------------------------------------------


class Catalog:
    """Datasets of a STAC catalog, by name.

    Parameters
    ----------
    entries : mapping of str to CatalogEntry
    path : path
        The ``catalog.json`` they were read from.
    """

    def __init__(self, entries: Mapping[str, CatalogEntry], path: Path) -> None:
        self._entries = dict(entries)
        self.path = path

    @property
    def names(self) -> list[str]:
        return sorted(self._entries)

    def __getitem__(self, name: str) -> CatalogEntry:
        if name not in self._entries:
            raise ConfigError(
                f"catalog entry {name!r} not found in {self.path}; entries: "
                f"{', '.join(self.names) or 'none'}"
            )
        return self._entries[name]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Catalog({str(self.path)!r}, entries={self.names})"

    def show(self, name: str) -> str:
        """Description of entry ``name`` (see :meth:`CatalogEntry.describe`)."""
        return self[name].describe()

    def open(self, name: str, *, verify: bool = False) -> xr.Dataset:
        """Open entry ``name`` as a Dask-backed :class:`xarray.Dataset`."""
        return self[name].open(verify=verify)


def default_catalog_path() -> Path:
    """Where :func:`open_catalog` looks when given no path.

    ``$PHASEARRAY_CATALOG`` where set, else the catalog shipped with the
    package (``catalog/`` of the repository, installed as
    ``phasearray/datasets``).
    """
    if os.environ.get(_ENV):
        return Path(os.environ[_ENV])
    return Path(__file__).resolve().parent / "datasets"


def open_catalog(path: str | Path | None = None) -> Catalog:
    """Read a STAC catalog of phasearray stores.

    Parameters
    ----------
    path : path, optional
        A ``catalog.json`` or the folder holding it (a published bundle is
        one). Default: :func:`default_catalog_path`.

    Returns
    -------
    Catalog
        ``names``, ``show(name)``, ``open(name)``, ``catalog[name]``.

    Raises
    ------
    StoreError
        No catalog there, or an item is malformed or its id repeated.

    Examples
    --------
    >>> cat = open_catalog("catalog")  # doctest: +SKIP
    >>> print(cat.show("quick-tiny"))  # doctest: +SKIP
    """
    root = _catalog_file(default_catalog_path() if path is None else Path(path))
    entries: dict[str, CatalogEntry] = {}
    for item_path in _item_paths(root, seen=set()):
        entry = _entry_from_item(_read_json(item_path), item_path)
        if entry.name in entries:
            raise StoreError(
                f"catalog {root}: entry id {entry.name!r} appears twice "
                f"({entries[entry.name].item_path} and {item_path})"
            )
        entries[entry.name] = entry
    logger.debug("catalog %s: %d entries", root, len(entries))
    return Catalog(entries, root)


def _catalog_file(path: Path) -> Path:
    candidate = path / "catalog.json" if path.is_dir() else path
    if not candidate.is_file():
        raise StoreError(
            f"no catalog at {str(path)!r} (looked for {candidate}); give a "
            f"catalog.json or its folder, or set {_ENV}"
        )
    return candidate.resolve()


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise StoreError(f"cannot read {path}: {error}") from None


def _item_paths(catalog_file: Path, seen: set[Path]) -> list[Path]:
    """Items linked from a catalog, following child catalogs once each."""
    seen.add(catalog_file)
    document = _read_json(catalog_file)
    if document.get("type") not in ("Catalog", "Collection"):
        raise StoreError(f"{catalog_file} is not a STAC catalog (type Catalog)")
    items = []
    for link in document.get("links", []):
        target = (catalog_file.parent / str(link.get("href", ""))).resolve()
        if link.get("rel") == "item":
            items.append(target)
        elif link.get("rel") == "child" and target not in seen:
            items += _item_paths(target, seen)
    return items


# --- writing -----------------------------------------------------------------------


def grid_summary(ds: xr.Dataset) -> dict[str, Any]:
    """The grid of a store in plain JSON types.

    Returns
    -------
    dict
        ``T`` and ``sigma_W`` (lists of float), ``seed`` (count), ``t``
        (count of checkpoints), ``steps`` (last checkpoint, SGD steps),
        ``batch_size``, ``dtype``, ``models_done`` / ``models``.
    """
    done = ds["done"].isel(t=-1).values if "done" in ds else np.zeros(0, dtype=bool)
    return {
        "T": [float(v) for v in ds["T"].values],
        "sigma_W": [float(v) for v in ds["sigma_W"].values],
        "seed": int(ds.sizes["seed"]),
        "t": int(ds.sizes["t"]),
        "steps": int(ds["t"].values[-1]),
        "batch_size": _plain(ds.attrs.get("batch_size")),
        "dtype": _plain(ds.attrs.get("dtype")),
        "models": int(done.size),
        "models_done": int(done.sum()),
    }


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def stac_item(
    name: str,
    store_file: str | Path,
    ds: xr.Dataset,
    *,
    title: str,
    description: str,
    license: str,
    href: str | None = None,
) -> dict[str, Any]:
    """A STAC item describing one zipped store.

    Parameters
    ----------
    name : str
        Item id, the name the dataset is opened by.
    store_file : path
        The zipped store, for its size and SHA-256.
    ds : xarray.Dataset
        The store, opened, for its attributes and grid.
    title, description, license : str
        ``license`` is an SPDX id such as ``CC-BY-4.0``.
    href : str, optional
        Where the item finds the store; default: the file name, next to the
        item.

    Returns
    -------
    dict
        JSON-able; links are added by :func:`catalog_document`'s caller.
    """
    path = Path(store_file)
    attrs = ds.attrs
    created = str(attrs.get("created") or _dt.datetime.now(_dt.UTC).isoformat())
    properties = {
        "datetime": _stac_datetime(created),
        "title": title,
        "description": description,
        "license": license,
        "phasearray:pipeline": _pipeline_name(attrs),
        "phasearray:pipeline_fingerprint": attrs.get("pipeline_fingerprint"),
        "phasearray:schema_version": attrs.get("schema_version"),
        "phasearray:version": attrs.get("phasearray_version"),
        "phasearray:grid": grid_summary(ds),
    }
    asset = {
        "href": href or path.name,
        "type": ZIP_MEDIA_TYPE,
        "title": "Zarr v3 store, zipped (open with zarr.storage.ZipStore)",
        "roles": ["data"],
        "file:size": path.stat().st_size,
        "file:checksum": _multihash(sha256_file(path)),
    }
    return {
        "type": "Feature",
        "stac_version": STAC_VERSION,
        "stac_extensions": [FILE_EXTENSION],
        "id": name,
        "geometry": None,
        "properties": properties,
        "links": [],
        "assets": {"store": asset},
    }


def _pipeline_name(attrs: Mapping[str, Any]) -> str:
    try:
        return str(yaml.safe_load(attrs.get("pipeline", "")).get("name", ""))
    except (yaml.YAMLError, AttributeError):
        return ""


def _stac_datetime(created: str) -> str:
    """RFC 3339 UTC with a ``Z``, as STAC asks."""
    moment = _dt.datetime.fromisoformat(created)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=_dt.UTC)
    return moment.astimezone(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def catalog_document(
    catalog_id: str, description: str, item_hrefs: Mapping[str, str]
) -> dict[str, Any]:
    """A STAC catalog linking items, by id, at hrefs relative to it."""
    links = [{"rel": "root", "href": "./catalog.json", "type": "application/json"}]
    for name, href in sorted(item_hrefs.items()):
        links.append(
            {"rel": "item", "href": href, "type": "application/geo+json", "title": name}
        )
    return {
        "type": "Catalog",
        "stac_version": STAC_VERSION,
        "id": catalog_id,
        "description": description,
        "links": links,
    }


def item_links(item_to_catalog: str) -> list[dict[str, str]]:
    """``root`` and ``parent`` links of an item, to its catalog.json."""
    return [
        {"rel": "root", "href": item_to_catalog, "type": "application/json"},
        {"rel": "parent", "href": item_to_catalog, "type": "application/json"},
    ]


def write_json(path: str | Path, document: Mapping[str, Any]) -> None:
    """Write JSON with sorted keys, two-space indent and a final newline."""
    text = json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False)
    Path(path).write_text(text + "\n", encoding="utf-8")
