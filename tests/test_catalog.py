"""The shipped STAC catalog, opening entries by name, and the catalog CLI."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from phasearray.catalog import (
    ChecksumError,
    default_catalog_path,
    open_catalog,
    open_store,
)
from phasearray.cli_catalog import register
from phasearray.errors import ConfigError, StoreError

SHIPPED = Path(__file__).resolve().parents[1] / "catalog"


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="phasearray")
    register(parser.add_subparsers())
    args = parser.parse_args(argv)
    return args.handler(args)


@pytest.fixture
def catalog_copy(tmp_path) -> Path:
    return Path(shutil.copytree(SHIPPED, tmp_path / "catalog"))


# --- the shipped entry -------------------------------------------------------------------


def test_default_catalog_is_the_shipped_folder(monkeypatch, tmp_path):
    # The catalog is installed with the package: found from any folder, with
    # the same files as the checkout's catalog/.
    monkeypatch.delenv("PHASEARRAY_CATALOG", raising=False)
    monkeypatch.chdir(tmp_path)
    installed = default_catalog_path()
    for shipped in SHIPPED.rglob("*.*"):
        relative = shipped.relative_to(SHIPPED)
        assert (installed / relative).read_bytes() == shipped.read_bytes()
    assert open_catalog().names == ["quick-tiny"]


def test_shipped_entry_is_small_and_matches_its_checksum():
    entry = open_catalog(SHIPPED)["quick-tiny"]
    assert entry.size == Path(entry.location).stat().st_size < 1_000_000
    assert entry.verify() == entry.sha256
    assert entry.license == "CC-BY-4.0"
    assert entry.pipeline == "quick"


def test_shipped_entry_opens_with_the_store_schema():
    entry = open_catalog(SHIPPED)["quick-tiny"]
    ds = entry.open(verify=True)
    grid = entry.properties["phasearray:grid"]

    assert ds["T"].values.tolist() == grid["T"] == [0.5, 4.0]
    assert ds["sigma_W"].values.tolist() == grid["sigma_W"] == [0.25, 64.0]
    assert ds.sizes["seed"] == grid["seed"] == 2
    assert int(ds["t"][-1]) == grid["steps"] == 500
    assert bool(ds["done"].all())
    assert (
        ds.attrs["pipeline_fingerprint"]
        == entry.properties["phasearray:pipeline_fingerprint"]
    )

    # Values, not just layout: eigenvalues are the squared singular values of W2.
    W2 = ds["W2"].values
    singular = np.linalg.svd(W2, compute_uv=False)
    np.testing.assert_allclose(
        ds["eigenvalues"].values, np.sort(singular**2, axis=-1), rtol=1e-9, atol=1e-12
    )
    ds.close()


def test_shipped_catalog_is_valid_stac_for_pystac():
    pystac = pytest.importorskip("pystac", reason="pystac is in the test extra")
    pytest.importorskip("jsonschema", reason="STAC validation needs jsonschema")
    from pystac.extensions.file import FileExtension
    from pystac.validation.stac_validator import JsonSchemaSTACValidator

    catalog = pystac.Catalog.from_file(str(SHIPPED / "catalog.json"))
    (item,) = catalog.get_items(recursive=True)
    asset = item.assets["store"]
    entry = open_catalog(SHIPPED)["quick-tiny"]

    assert item.id == "quick-tiny"
    assert Path(asset.get_absolute_href()).resolve() == Path(entry.location).resolve()
    assert FileExtension.ext(asset).checksum == "1220" + entry.sha256
    assert FileExtension.ext(asset).size == entry.size
    assert item.common_metadata.license == "CC-BY-4.0"

    # The core schemas ship with pystac, so this runs offline.
    validator = JsonSchemaSTACValidator()
    for path, kind in (
        (SHIPPED / "catalog.json", pystac.STACObjectType.CATALOG),
        (SHIPPED / "quick-tiny" / "quick-tiny.json", pystac.STACObjectType.ITEM),
    ):
        document = json.loads(path.read_text())
        validator.validate_core(document, kind, document["stac_version"])


# --- lookups and failures ---------------------------------------------------------------


def test_unknown_name_lists_the_entries():
    with pytest.raises(ConfigError, match=r"'nope' not found .* entries: quick-tiny"):
        open_catalog(SHIPPED)["nope"]


def test_missing_catalog_says_where_it_looked(tmp_path):
    with pytest.raises(StoreError, match=r"no catalog at .*PHASEARRAY_CATALOG"):
        open_catalog(tmp_path)


def test_environment_variable_chooses_the_catalog(catalog_copy, monkeypatch):
    monkeypatch.setenv("PHASEARRAY_CATALOG", str(catalog_copy))
    assert open_catalog().path == (catalog_copy / "catalog.json").resolve()


def test_tampered_entry_fails_verification(catalog_copy):
    zip_path = catalog_copy / "quick-tiny" / "quick-tiny.zarr.zip"
    data = bytearray(zip_path.read_bytes())
    data[len(data) // 3] ^= 0xFF
    zip_path.write_bytes(bytes(data))

    entry = open_catalog(catalog_copy)["quick-tiny"]
    with pytest.raises(ChecksumError, match=r"quick-tiny\.zarr\.zip: sha256"):
        entry.verify()
    with pytest.raises(ChecksumError):
        entry.open(verify=True)


def test_duplicate_ids_are_refused(catalog_copy):
    root = catalog_copy / "catalog.json"
    document = json.loads(root.read_text())
    item_link = next(link for link in document["links"] if link["rel"] == "item")
    shutil.copy(
        catalog_copy / "quick-tiny" / "quick-tiny.json",
        catalog_copy / "quick-tiny" / "again.json",
    )
    document["links"].append({**item_link, "href": "./quick-tiny/again.json"})
    root.write_text(json.dumps(document))
    with pytest.raises(StoreError, match="entry id 'quick-tiny' appears twice"):
        open_catalog(catalog_copy)


def test_open_store_refuses_a_folder_that_is_no_store(tmp_path):
    with pytest.raises(StoreError, match="not a Zarr v3 store"):
        open_store(tmp_path)


def test_remote_zip_is_not_implemented():
    with pytest.raises(NotImplementedError, match="download the file"):
        open_store("https://example.org/x.zarr.zip")


# --- command line -----------------------------------------------------------------------


def test_cli_list_show_open(capsys):
    assert _cli(["catalog", "--catalog", str(SHIPPED), "list"]) == 0
    assert capsys.readouterr().out.startswith("quick-tiny\t")

    assert _cli(["catalog", "--catalog", str(SHIPPED), "show", "quick-tiny"]) == 0
    shown = capsys.readouterr().out
    assert "pipeline   quick" in shown
    assert "2 T × 2 sigma_W × 2 seeds" in shown

    assert _cli(["catalog", "--catalog", str(SHIPPED), "open", "quick-tiny"]) == 0
    assert "<xarray.Dataset>" in capsys.readouterr().out


def test_cli_errors_exit_2_with_one_line(catalog_copy, capsys):
    assert _cli(["catalog", "--catalog", str(catalog_copy), "show", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("phasearray: error: catalog entry 'nope' not found")
    assert err.count("\n") == 1
