"""Publishing bundles: pack, describe, checksum, verify, reopen."""

from __future__ import annotations

import argparse
import hashlib
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import yaml
import zarr

from phasearray import open_sweep, parse_pipeline, run_sweep
from phasearray.catalog import ChecksumError, open_catalog
from phasearray.cli_catalog import register
from phasearray.errors import ConfigError, PhasearrayWarning, StoreError
from phasearray.publish import MANIFEST, pack_store, publish, verify

CREATORS = ["Doe, Jane", "Example Lab"]


def _micro_pipeline(name: str = "micro"):
    return parse_pipeline(
        {
            "name": name,
            "description": "two temperatures, one sigma_W, two seeds",
            "grid": {"T": [0.5, 4.0], "sigma_W": [1.0], "seeds": 2},
            "data": {"n_train": 64, "n_test": 16},
            "train": {"steps": 20},
            "record": {"checkpoints": [5, 10]},
            "engine": {"name": "numpy"},
        }
    )


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("stores") / "micro.zarr"
    run_sweep(_micro_pipeline(), path)
    return path


@pytest.fixture(scope="module")
def bundle(store, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bundles") / "micro-bundle"
    return publish(store, out, creators=CREATORS, license="CC-BY-4.0")


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="phasearray")
    register(parser.add_subparsers())
    args = parser.parse_args(argv)
    return args.handler(args)


def _flip_one_byte(path: Path, offset: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    where = len(data) // 2 if offset is None else offset
    data[where] ^= 0x01
    path.write_bytes(bytes(data))


# --- the round trip --------------------------------------------------------------------


def test_bundle_is_flat_and_complete(bundle):
    names = sorted(p.name for p in bundle.iterdir())
    assert names == sorted(
        [
            "micro.zarr.zip",
            "datacite.json",
            "README.md",
            "CITATION.cff",
            "catalog.json",
            "micro.json",
            MANIFEST,
        ]
    )
    assert all(p.is_file() for p in bundle.iterdir())


def test_publish_verify_open_round_trip(store, bundle):
    checked = verify(bundle)
    assert set(checked) == {p.name for p in bundle.iterdir()} - {MANIFEST}
    for name, digest in checked.items():
        assert digest == hashlib.sha256((bundle / name).read_bytes()).hexdigest()

    catalog = open_catalog(bundle)
    assert catalog.names == ["micro"]
    reopened = catalog.open("micro", verify=True)
    original = open_sweep(store)
    xr.testing.assert_identical(reopened.load(), original.load())
    reopened.close()


def test_zip_opens_with_plain_zarr_and_xarray(store, bundle):
    zipped = zarr.storage.ZipStore(bundle / "micro.zarr.zip", mode="r")
    ds = xr.open_zarr(zipped, consolidated=False, zarr_format=3)
    np.testing.assert_array_equal(ds["W2"].values, open_sweep(store)["W2"].values)
    assert "resume_W2" not in ds
    ds.close()


def test_zip_entries_are_the_store_files(store, bundle):
    with zipfile.ZipFile(bundle / "micro.zarr.zip") as archive:
        entries = {info.filename: info for info in archive.infolist()}
        assert "zarr.json" in entries
        for name, info in entries.items():
            assert info.compress_type == zipfile.ZIP_STORED
            assert archive.read(name) == (store / name).read_bytes()


def test_pack_is_reproducible(store, tmp_path):
    a = pack_store(store, tmp_path / "a.zip")
    b = pack_store(store, tmp_path / "b.zip")
    assert a.read_bytes() == b.read_bytes()


# --- metadata ------------------------------------------------------------------------


def test_datacite_metadata(store, bundle):
    meta = json.loads((bundle / "datacite.json").read_text())
    attrs = open_sweep(store).attrs

    assert meta["titles"] == [{"title": "phasearray sweep 'micro'"}]
    assert meta["creators"][0] == {
        "name": "Doe, Jane",
        "nameType": "Personal",
        "familyName": "Doe",
        "givenName": "Jane",
    }
    assert meta["creators"][1] == {"name": "Example Lab"}
    assert meta["rightsList"][0]["rightsIdentifier"] == "cc-by-4.0"
    assert meta["types"]["resourceTypeGeneral"] == "Dataset"
    methods = [d for d in meta["descriptions"] if d["descriptionType"] == "Methods"]
    assert methods[0]["description"] == attrs["pipeline"]

    block = meta["phasearray"]
    assert block["pipeline"] == attrs["pipeline"]
    assert yaml.safe_load(block["pipeline"]) == _micro_pipeline().to_dict()
    assert block["package_version"] == attrs["phasearray_version"]
    assert block["grid"]["T"] == [0.5, 4.0]
    assert block["grid"]["sigma_W"] == [1.0]
    assert block["grid"]["seed"] == 2
    assert block["grid"]["steps"] == 20
    assert block["grid"]["models_done"] == block["grid"]["models"] == 4
    zip_bytes = (bundle / "micro.zarr.zip").read_bytes()
    assert block["store_sha256"] == hashlib.sha256(zip_bytes).hexdigest()
    assert meta["sizes"] == [f"{len(zip_bytes)} bytes"]


def test_citation_cff(bundle):
    cff = yaml.safe_load((bundle / "CITATION.cff").read_text())
    assert cff["cff-version"] == "1.2.0"
    assert cff["type"] == "dataset"
    assert cff["authors"] == [
        {"family-names": "Doe", "given-names": "Jane"},
        {"name": "Example Lab"},
    ]
    assert cff["license"] == "CC-BY-4.0"


def test_data_card_lists_variables_and_pipeline(store, bundle):
    card = (bundle / "README.md").read_text()
    ds = open_sweep(store)
    table = card.split("## Variables")[1].split("## Provenance")[0]
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    assert sorted(row.split("`")[1] for row in rows) == sorted(ds.data_vars)
    for row in rows:  # four columns: pipes inside cells are escaped
        assert row.replace("\\|", "").count("|") == 5, row
    assert ds.attrs["pipeline"].strip() in card
    assert "sha256sum -c SHA256SUMS" in card


def test_bundle_catalog_entry_records_the_zip(bundle):
    entry = open_catalog(bundle)["micro"]
    zip_path = bundle / "micro.zarr.zip"
    assert Path(entry.location) == zip_path.resolve()
    assert entry.size == zip_path.stat().st_size
    assert entry.sha256 == hashlib.sha256(zip_path.read_bytes()).hexdigest()
    assert entry.license == "CC-BY-4.0"
    assert entry.pipeline == "micro"


# --- tampering ------------------------------------------------------------------------


@pytest.mark.parametrize("victim", ["micro.zarr.zip", "README.md", "datacite.json"])
def test_one_changed_byte_fails_naming_the_file(bundle, tmp_path, victim):
    copy = tmp_path / "copy"
    copy.mkdir()
    for path in bundle.iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    _flip_one_byte(copy / victim)

    with pytest.raises(
        ChecksumError, match=rf"{victim}: sha256 [0-9a-f]{{64}}"
    ) as info:
        verify(copy)
    others = {p.name for p in copy.iterdir()} - {victim, MANIFEST}
    assert not any(f"{name}:" in str(info.value) for name in others)


def test_store_replaced_with_its_manifest_line_fails_on_the_stac_item(bundle, tmp_path):
    from phasearray.catalog import sha256_file

    copy = tmp_path / "copy"
    copy.mkdir()
    for path in bundle.iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    old = sha256_file(copy / "micro.zarr.zip")
    _flip_one_byte(copy / "micro.zarr.zip")
    new = sha256_file(copy / "micro.zarr.zip")
    manifest = copy / MANIFEST
    manifest.write_text(manifest.read_text().replace(old, new))

    with pytest.raises(ChecksumError) as info:
        verify(copy)
    assert str(info.value).endswith(
        f"micro.zarr.zip: sha256 {new} differs from the catalog's {old} (micro.json)"
    )


def test_info_on_the_zipped_store_says_what_it_is(bundle, capsys):
    from phasearray.cli import main

    assert main(["info", str(bundle / "micro.zarr.zip")]) == 2
    assert "is a zipped store (as in a published bundle)" in capsys.readouterr().err


def test_cli_verify_exit_codes(bundle, tmp_path, capsys):
    assert _cli(["verify", str(bundle)]) == 0
    copy = tmp_path / "copy"
    copy.mkdir()
    for path in bundle.iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    _flip_one_byte(copy / "micro.zarr.zip", offset=100)
    assert _cli(["verify", str(copy)]) == 1
    assert "micro.zarr.zip" in capsys.readouterr().err
    assert _cli(["verify", str(tmp_path / "absent")]) == 2


def test_missing_and_unlisted_files_fail(bundle, tmp_path):
    copy = tmp_path / "copy"
    copy.mkdir()
    for path in bundle.iterdir():
        if path.name != "CITATION.cff":
            (copy / path.name).write_bytes(path.read_bytes())
    (copy / "extra.txt").write_text("not in the manifest\n")
    with pytest.raises(ChecksumError) as info:
        verify(copy)
    assert "CITATION.cff: listed in SHA256SUMS but missing" in str(info.value)
    assert "extra.txt: not listed in SHA256SUMS" in str(info.value)


# --- refusals ---------------------------------------------------------------------------


def test_incomplete_store_is_refused_before_writing(tmp_path):
    path = tmp_path / "unfinished.zarr"
    run_sweep(_micro_pipeline("unfinished"), path)
    zarr.open_group(path, mode="r+", zarr_format=3)["done"][1, 0, 1, -1] = False

    with pytest.raises(StoreError, match="is not complete: 1 of 4 models"):
        publish(path, tmp_path / "out", creators=CREATORS)
    assert not (tmp_path / "out").exists()

    out = publish(path, tmp_path / "out", creators=CREATORS, allow_incomplete=True)
    grid = json.loads((out / "datacite.json").read_text())["phasearray"]["grid"]
    assert (grid["models_done"], grid["models"]) == (3, 4)


def test_non_empty_out_dir_is_refused(store, tmp_path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "file").write_text("x")
    with pytest.raises(ConfigError, match="must not exist or be an empty folder"):
        publish(store, tmp_path / "busy", creators=CREATORS)


def test_bad_licence_and_name_are_refused(store, tmp_path):
    with pytest.raises(ConfigError, match="must be an SPDX id"):
        publish(store, tmp_path / "a", creators=CREATORS, license="CC BY")
    with pytest.raises(ConfigError, match=r"name '\.\./x' is not allowed"):
        publish(store, tmp_path / "b", creators=CREATORS, name="../x")


def test_no_creators_warns_and_marks_unavailable(store, tmp_path):
    with pytest.warns(PhasearrayWarning, match="no creators given"):
        out = publish(store, tmp_path / "out")
    meta = json.loads((out / "datacite.json").read_text())
    assert meta["creators"] == [{"name": ":unav"}]
    verify(out)


def test_imported_store_publishes_with_its_origin(tmp_path):
    from phasearray.importers import import_phase_ml

    rng = np.random.default_rng(3)
    arrays = {
        "W": rng.normal(size=(2, 3, 16, 32)),
        "dW": rng.normal(size=(2, 3, 16, 32)),
        "loss": rng.uniform(size=(2, 3)),
        "Wt": rng.normal(size=(2, 16, 32)),
        "Z": rng.normal(size=(2, 1, 16)),
        "M": rng.normal(size=(2, 32, 3)),
    }
    release = tmp_path / "r2K16_tanh_lr0.5_bs4_eps2" / "data.npz"
    release.parent.mkdir()
    np.savez(release, arrays)
    store = import_phase_ml(release, tmp_path / "imported.zarr")

    out = publish(store, tmp_path / "bundle", creators=CREATORS)
    verify(out)
    meta = json.loads((out / "datacite.json").read_text())
    assert "read from the 'phase_ml' format" in meta["descriptions"][0]["description"]
    ds = open_catalog(out).open("imported")
    np.testing.assert_array_equal(ds["W2"].isel(T=0, sigma_W=0).values, arrays["W"])
    ds.close()
