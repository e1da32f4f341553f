"""Publishing: a finished store as a flat bundle for a DOI archive.

A bundle is one folder with no sub-folders, so any archive (Zenodo, Figshare,
a university repository) takes it as is::

    NAME.zarr.zip     the store, one zip file (stored, not recompressed);
                      zarr.storage.ZipStore opens it directly
    datacite.json     DataCite-style metadata: titles, creators, rights,
                      descriptions, sizes, formats, and under "phasearray"
                      the full pipeline, package version and grid
    README.md         the data card: what it is, how to open it, variables
    CITATION.cff      how to cite it (Citation File Format 1.2.0)
    catalog.json      STAC catalog with the one item NAME.json, so that
    NAME.json         phasearray.open_catalog(bundle) opens it by name
    SHA256SUMS        sha256 of every other file (``sha256sum -c`` reads it)

:func:`verify` recomputes every checksum; a single changed byte fails and
names the file. The zip is reproducible: the same store gives the same bytes.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import re
import shutil
import warnings
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
import yaml

from .catalog import (
    ZARR_MEDIA_TYPE,
    ZIP_MEDIA_TYPE,
    ChecksumError,
    catalog_document,
    grid_summary,
    item_links,
    open_catalog,
    open_store,
    sha256_file,
    stac_item,
    write_json,
)
from .errors import ConfigError, PhasearrayWarning, StoreError
from .store import check_sound

__all__ = ["MANIFEST", "add_to_catalog", "pack_store", "publish", "verify"]

logger = logging.getLogger(__name__)

MANIFEST = "SHA256SUMS"
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # fixed, so the same store zips to the same bytes
_RESUME_ONLY = ("resume_W2",)  # resume state of an unfinished sweep, not data
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_LICENCES = {
    "CC-BY-4.0": "Creative Commons Attribution 4.0 International",
    "CC0-1.0": "Creative Commons Zero v1.0 Universal",
    "CC-BY-SA-4.0": "Creative Commons Attribution Share Alike 4.0 International",
    "ODC-By-1.0": "Open Data Commons Attribution License v1.0",
    "BSD-3-Clause": 'BSD 3-Clause "New" or "Revised" License',
    "MIT": "MIT License",
}
_UNAVAILABLE = ":unav"  # DataCite's standard value for "not available"


# --- publish -----------------------------------------------------------------------


def publish(
    store: str | Path,
    out_dir: str | Path,
    *,
    name: str | None = None,
    title: str | None = None,
    creators: Sequence[str] = (),
    description: str | None = None,
    license: str = "CC-BY-4.0",
    publisher: str | None = None,
    allow_incomplete: bool = False,
) -> Path:
    """Make a flat, checksummed bundle of a store for a DOI archive.

    Parameters
    ----------
    store : path
        A phasearray store folder, normally complete.
    out_dir : path
        The bundle folder; must not exist or be empty.
    name : str, optional
        Base name of the files and catalog id; default: the store's folder
        name without ``.zarr``.
    title, description : str, optional
        Default: from the pipeline's name and description.
    creators : sequence of str
        People as ``"Family, Given"``, organisations as their name. When none
        are given the metadata says ``:unav`` and a warning is issued.
    license : str
        SPDX id of the data licence.
    publisher : str, optional
        Default: the first creator.
    allow_incomplete : bool
        Publish a store whose ``done`` mask is not all true.

    Returns
    -------
    pathlib.Path
        The bundle folder.

    Raises
    ------
    ConfigError
        A bad name or licence, or ``out_dir`` is not empty.
    StoreError
        The store cannot be read, is incomplete, or its zip does not reopen.

    Examples
    --------
    >>> publish("runs/quick.zarr", "bundle", creators=["Park, Chanju"])  # doctest: +SKIP
    >>> verify("bundle")  # doctest: +SKIP
    """
    store = Path(store)
    out = Path(out_dir)
    name = _check_name(name or store.name.removesuffix(".zarr"))
    _check_licence(license)
    if store.is_dir():
        check_sound(store, decode=True)  # a published copy must not carry damage
    ds = open_store(store)
    _check_complete(ds, store, allow_incomplete)
    _prepare_out(out)

    zip_path = out / f"{name}.zarr.zip"
    pack_store(store, zip_path)
    zipped = _check_reopens(zip_path, ds)
    meta = _Metadata.build(ds, name, title, creators, description, license, publisher)

    write_json(out / "datacite.json", _datacite(meta, zip_path, ds))
    (out / "README.md").write_text(_data_card(meta, zip_path, zipped), encoding="utf-8")
    (out / "CITATION.cff").write_text(_citation(meta), encoding="utf-8")
    _write_catalog(out, name, zip_path, zipped, meta)
    zipped.close()
    _write_manifest(out)
    logger.info("published %s as %s", store, out)
    return out


def _check_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise ConfigError(
            f"name {name!r} is not allowed; use letters, digits, '.', '_' and '-', "
            "starting with a letter or digit"
        )
    return name


def _check_licence(licence: str) -> None:
    if not licence or any(c.isspace() for c in licence):
        raise ConfigError(
            f"license {licence!r} must be an SPDX id such as "
            f"{', '.join(sorted(_LICENCES))}"
        )


def _check_complete(ds: xr.Dataset, store: Path, allow_incomplete: bool) -> None:
    done = np.asarray(ds["done"].values)
    if done.all() or allow_incomplete:
        return
    models_missing = int((~done.all(axis=-1)).sum())
    raise StoreError(
        f"store {str(store)!r} is not complete: {models_missing} of "
        f"{done[..., 0].size} models miss checkpoints; finish it with "
        "`phasearray run`, or publish it anyway with allow_incomplete=True "
        "(--allow-incomplete)"
    )


def _prepare_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"out_dir {str(out)!r} must not exist or be an empty folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise StoreError(f"cannot create bundle folder {str(out)!r}: {error}") from None


def pack_store(store: str | Path, zip_path: str | Path) -> Path:
    """Zip a store folder into one file that ZipStore opens directly.

    Entries are stored uncompressed (the chunks are compressed already), in
    sorted order with a fixed timestamp, so the same store always gives the
    same bytes. The sweep's resume state is left out.

    Parameters
    ----------
    store : path
        A Zarr v3 store folder (``zarr.json`` at its top).
    zip_path : path
        The file to write.
    """
    store = Path(store)
    if not (store / "zarr.json").is_file():
        raise StoreError(f"{str(store)!r} is not a Zarr v3 store folder (no zarr.json)")
    files = sorted(
        p
        for p in store.rglob("*")
        if p.is_file() and p.relative_to(store).parts[0] not in _RESUME_ONLY
    )
    with zipfile.ZipFile(zip_path, "w", compression=zipfile.ZIP_STORED) as archive:
        for path in files:
            info = zipfile.ZipInfo(path.relative_to(store).as_posix(), _ZIP_TIME)
            info.external_attr = 0o644 << 16
            with path.open("rb") as source, archive.open(info, "w") as target:
                shutil.copyfileobj(source, target, 1 << 20)
    return Path(zip_path)


def _check_reopens(zip_path: Path, original: xr.Dataset) -> xr.Dataset:
    """Open the zip and compare its variables, sizes and attributes."""
    zipped = open_store(zip_path)
    expected = set(original.variables)
    problems = []
    if set(zipped.variables) != expected:
        problems.append(
            f"variables {sorted(map(str, set(zipped.variables) ^ expected))} differ"
        )
    if dict(zipped.sizes) != dict(original.sizes):
        problems.append(f"sizes {dict(zipped.sizes)} != {dict(original.sizes)}")
    if zipped.attrs != original.attrs:
        problems.append("root attributes differ")
    if not np.array_equal(zipped["done"].values, original["done"].values):
        problems.append("the done mask differs")
    if problems:
        zipped.close()
        raise StoreError(
            f"{zip_path} does not reopen as its store: {'; '.join(problems)}"
        )
    return zipped


# --- metadata ----------------------------------------------------------------------


@dataclass(frozen=True)
class _Metadata:
    """What every metadata file says, gathered once."""

    name: str
    title: str
    creators: list[str]
    publisher: str
    description: str
    licence: str
    licence_name: str
    pipeline_yaml: str
    pipeline_name: str
    fingerprint: str | None
    store_version: str | None
    version: str
    created: str
    year: str
    grid: dict[str, Any]

    @classmethod
    def build(
        cls,
        ds: xr.Dataset,
        name: str,
        title: str | None,
        creators: Sequence[str],
        description: str | None,
        licence: str,
        publisher: str | None,
    ) -> _Metadata:
        from . import __version__

        pipeline = yaml.safe_load(ds.attrs["pipeline"])
        if not creators:
            warnings.warn(
                f"no creators given; the metadata says {_UNAVAILABLE!r}. Fill them "
                "in before depositing the bundle (creators=, --creator)",
                PhasearrayWarning,
                stacklevel=3,  # build <- publish <- the caller
            )
        created = str(ds.attrs.get("created", ""))
        return cls(
            name=name,
            title=title or f"phasearray sweep {pipeline.get('name', name)!r}",
            creators=list(creators) or [_UNAVAILABLE],
            publisher=publisher or (creators[0] if creators else _UNAVAILABLE),
            description=description or _default_description(ds, pipeline),
            licence=licence,
            licence_name=_LICENCES.get(licence, licence),
            pipeline_yaml=str(ds.attrs["pipeline"]),
            pipeline_name=str(pipeline.get("name", "")),
            fingerprint=ds.attrs.get("pipeline_fingerprint"),
            store_version=ds.attrs.get("phasearray_version"),
            version=__version__,
            created=created,
            year=(created[:4] if created[:4].isdigit() else str(_dt.date.today().year)),
            grid=grid_summary(ds),
        )


def _default_description(ds: xr.Dataset, pipeline: Mapping[str, Any]) -> str:
    grid = _grid_line(grid_summary(ds))
    source = ds.attrs.get("source_format")
    if source:
        return (
            f"Runs of another code, read from the {source!r} format into a "
            f"phasearray store (pipeline {pipeline.get('name')!r}): {grid}."
        )
    return (
        "SGD ensembles of teacher-student networks trained by phasearray with "
        f"pipeline {pipeline.get('name')!r}: {grid}."
    )


def _person(creator: str) -> dict[str, str]:
    family, comma, given = creator.partition(",")
    if comma and family.strip() and given.strip():
        return {"family": family.strip(), "given": given.strip()}
    return {"name": creator.strip()}


def _datacite(meta: _Metadata, zip_path: Path, ds: xr.Dataset) -> dict[str, Any]:
    creators = []
    for creator in meta.creators:
        person = _person(creator)
        if "family" in person:
            creators.append(
                {
                    "name": f"{person['family']}, {person['given']}",
                    "nameType": "Personal",
                    "familyName": person["family"],
                    "givenName": person["given"],
                }
            )
        else:
            creators.append({"name": person["name"]})
    return {
        "schemaVersion": "http://datacite.org/schema/kernel-4",
        "types": {"resourceTypeGeneral": "Dataset", "resourceType": "Zarr v3 store"},
        "titles": [{"title": meta.title}],
        "creators": creators,
        "publisher": {"name": meta.publisher},
        "publicationYear": meta.year,
        "dates": [{"date": meta.created, "dateType": "Created"}],
        "rightsList": [
            {
                "rights": meta.licence_name,
                "rightsIdentifier": meta.licence.lower(),
                "rightsIdentifierScheme": "SPDX",
                "schemeUri": "https://spdx.org/licenses/",
            }
        ],
        "descriptions": [
            {"description": meta.description, "descriptionType": "Abstract"},
            {"description": meta.pipeline_yaml, "descriptionType": "Methods"},
            {"description": _grid_line(meta.grid), "descriptionType": "TechnicalInfo"},
        ],
        "subjects": [
            {"subject": s}
            for s in ("stochastic gradient descent", "phase diagram", "random matrix")
        ],
        "formats": [ZIP_MEDIA_TYPE, ZARR_MEDIA_TYPE],
        "sizes": [f"{zip_path.stat().st_size} bytes"],
        "version": meta.store_version,
        "phasearray": {
            "package_version": meta.version,
            "store_made_by_version": meta.store_version,
            "schema_version": ds.attrs.get("schema_version"),
            "pipeline": meta.pipeline_yaml,
            "pipeline_fingerprint": meta.fingerprint,
            "grid": meta.grid,
            "store_file": zip_path.name,
            "store_sha256": sha256_file(zip_path),
        },
    }


def _grid_line(grid: Mapping[str, Any]) -> str:
    return (
        f"T = {grid['T']}; sigma_W = {grid['sigma_W']}; {grid['seed']} seeds; "
        f"{grid['t']} checkpoints up to {grid['steps']} SGD steps; batch size "
        f"{grid['batch_size']}; {grid['dtype']}; {grid['models_done']} of "
        f"{grid['models']} models complete"
    )


def _data_card(meta: _Metadata, zip_path: Path, ds: xr.Dataset) -> str:
    rows = [
        f"| `{name}` | {', '.join(map(str, var.dims))} | {_cell(var.attrs.get('long_name'))} "
        f"| {_cell(var.attrs.get('units'))} |"
        for name, var in sorted(ds.data_vars.items())
    ]
    creators = "; ".join(meta.creators)
    engines = ", then ".join(ds.attrs.get("engines", [ds.attrs.get("engine")]))
    return f"""# {meta.title}

{meta.description}

Creators: {creators}. Licence: {meta.licence} ({meta.licence_name}).

## Files

| file | what |
|---|---|
| `{zip_path.name}` | the data: a Zarr v3 store in one zip file ({zip_path.stat().st_size} bytes) |
| `datacite.json` | DataCite-style metadata, with the full pipeline and grid |
| `CITATION.cff` | how to cite this data set |
| `catalog.json`, `{meta.name}.json` | a STAC catalog with this data set as its one item |
| `{MANIFEST}` | SHA-256 of every other file |

Check the files with `phasearray verify .` or `sha256sum -c {MANIFEST}`.

## Opening

```python
import xarray as xr
import zarr

ds = xr.open_zarr(zarr.storage.ZipStore("{zip_path.name}", mode="r"), zarr_format=3)
```

or, with phasearray installed, `phasearray.open_catalog(".").open("{meta.name}")`.

## Grid

{_grid_line(meta.grid)}.

Dimensions: {", ".join(f"`{d}` = {n}" for d, n in ds.sizes.items())}.
The temperature is T = learning_rate / batch_size; `seed` indexes the ensemble.

## Variables

| name | dims | meaning | units |
|---|---|---|---|
{chr(10).join(rows)}

## Provenance

- made by phasearray {meta.store_version}, bundled by phasearray {meta.version}
- pipeline `{meta.pipeline_name}`, fingerprint `{meta.fingerprint}`
- engine `{engines}`, git revision `{ds.attrs.get("git_revision")}`
- created {meta.created}

The pipeline that made the store, in full:

```yaml
{meta.pipeline_yaml.rstrip()}
```
"""


def _cell(text: Any) -> str:
    """Text for a Markdown table cell: pipes escaped, one line."""
    return " ".join(str(text or "").split()).replace("|", "\\|")


def _citation(meta: _Metadata) -> str:
    authors = []
    for creator in meta.creators:
        person = _person(creator)
        if "family" in person:
            authors.append(
                {"family-names": person["family"], "given-names": person["given"]}
            )
        else:
            authors.append({"name": person["name"]})
    document = {
        "cff-version": "1.2.0",
        "message": "If you use this data set, please cite it as below.",
        "type": "dataset",
        "title": meta.title,
        "authors": authors,
        "abstract": meta.description,
        "license": meta.licence,
        "version": str(meta.store_version),
        "keywords": ["stochastic gradient descent", "phase diagram", "zarr"],
    }
    if meta.created[:10]:
        document["date-released"] = meta.created[:10]
    return yaml.safe_dump(document, sort_keys=False, allow_unicode=True)


def _write_catalog(
    out: Path, name: str, zip_path: Path, zipped: xr.Dataset, meta: _Metadata
) -> None:
    item = stac_item(
        name,
        zip_path,
        zipped,
        title=meta.title,
        description=meta.description,
        license=meta.licence,
    )
    item["links"] = item_links("./catalog.json")
    write_json(out / f"{name}.json", item)
    write_json(
        out / "catalog.json",
        catalog_document(name, f"Bundle of {meta.title}", {name: f"./{name}.json"}),
    )


def add_to_catalog(
    store: str | Path,
    catalog_dir: str | Path,
    name: str,
    *,
    title: str,
    description: str,
    license: str = "CC-BY-4.0",
) -> Path:
    """Zip a store into a catalog folder as entry ``name`` and link it.

    Writes ``NAME/NAME.zarr.zip`` and ``NAME/NAME.json`` under
    ``catalog_dir`` and adds the item to its ``catalog.json`` (created if
    absent). This is how the entries shipped in ``catalog/`` are made.

    Returns
    -------
    pathlib.Path
        The item file.
    """
    folder = Path(catalog_dir)
    name = _check_name(name)
    _check_licence(license)
    entry_dir = folder / name
    _prepare_out(entry_dir)

    zip_path = pack_store(store, entry_dir / f"{name}.zarr.zip")
    zipped = _check_reopens(zip_path, open_store(store))
    item = stac_item(
        name, zip_path, zipped, title=title, description=description, license=license
    )
    zipped.close()
    item["links"] = item_links("../catalog.json")
    item_path = entry_dir / f"{name}.json"
    write_json(item_path, item)
    _link_item(folder / "catalog.json", name, f"./{name}/{name}.json")
    return item_path


def _link_item(catalog_file: Path, name: str, href: str) -> None:
    if catalog_file.is_file():
        document = json.loads(catalog_file.read_text(encoding="utf-8"))
    else:
        document = catalog_document("phasearray", "Data sets made with phasearray.", {})
    links = [link for link in document["links"] if link.get("href") != href]
    links.append(
        {"rel": "item", "href": href, "type": "application/geo+json", "title": name}
    )
    document["links"] = links
    write_json(catalog_file, document)


# --- checksums ---------------------------------------------------------------------


def _write_manifest(out: Path) -> None:
    lines = [
        f"{sha256_file(path)}  {path.name}\n"
        for path in sorted(out.iterdir())
        if path.name != MANIFEST
    ]
    (out / MANIFEST).write_text("".join(lines), encoding="utf-8")


def _read_manifest(folder: Path) -> dict[str, str]:
    path = folder / MANIFEST
    if not path.is_file():
        raise StoreError(f"{str(folder)!r} is not a bundle: it has no {MANIFEST}")
    recorded = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        match = re.fullmatch(r"([0-9a-f]{64}) [ *]([^/\\]+)", line)
        if not match or match[2] in (".", ".."):
            raise ChecksumError(
                f"{MANIFEST} line {number} is malformed: {line!r}; each line must be "
                "a sha256 hex digest, two spaces, and a file name in the bundle"
            )
        recorded[match[2]] = match[1]
    return recorded


def verify(bundle: str | Path) -> dict[str, str]:
    """Recompute the SHA-256 of every file of a bundle against its manifest.

    Parameters
    ----------
    bundle : path
        A folder made by :func:`publish`.

    Returns
    -------
    dict of str to str
        File name to hex SHA-256, for every file checked.

    Raises
    ------
    ChecksumError
        A file differs from its checksum, is missing, or is not listed; the
        message names every such file.
    StoreError
        The folder is missing or has no manifest.
    """
    folder = Path(bundle)
    if not folder.is_dir():
        raise StoreError(f"bundle {str(folder)!r} does not exist or is not a folder")
    recorded = _read_manifest(folder)
    present = {p.name for p in folder.iterdir()} - {MANIFEST}

    problems = [
        f"{name}: listed in {MANIFEST} but missing"
        for name in sorted(set(recorded) - present)
    ]
    problems += [
        f"{name}: not listed in {MANIFEST}" for name in sorted(present - set(recorded))
    ]
    for name in sorted(set(recorded) & present):
        if not (folder / name).is_file():
            problems.append(f"{name}: not a file")
            continue
        actual = sha256_file(folder / name)
        if actual != recorded[name]:
            problems.append(
                f"{name}: sha256 {actual}, {MANIFEST} says {recorded[name]}"
            )
    problems += _item_checksum_problems(folder, set(recorded) & present)
    if problems:
        raise ChecksumError(f"bundle {str(folder)!r} fails: " + "; ".join(problems))
    return recorded


def _item_checksum_problems(folder: Path, names: set[str]) -> list[str]:
    """Stores whose size or SHA-256 differ from the bundle's own catalog entry.

    The manifest and the STAC item are written together; a store replaced
    along with its manifest line is still caught here, by the same check
    ``phasearray catalog open --verify`` makes.
    """
    if "catalog.json" not in names:
        return []  # a missing catalog is reported against the manifest
    try:
        catalog = open_catalog(folder)
    except StoreError:
        return []  # an altered catalog or item fails its manifest checksum
    problems = []
    for name in catalog.names:
        entry = catalog[name]
        if entry.is_local and Path(entry.location).name in names:
            try:
                entry.verify()
            except ChecksumError as error:
                problems.append(f"{error} ({entry.item_path.name})")
    return problems
