"""The recipe schema comes from the installed ERNIEKit, is cached, and the shipped snapshot is true."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from ernie_ops.recipe import schema as schema_mod
from ernie_ops.recipe.schema import PINNED_VERSION, installed_fingerprint, load_schema, snapshots


@pytest.mark.slow
def test_shipped_snapshot_equals_what_the_installed_erniekit_says(tmp_path):
    out = tmp_path / "schema.json"
    subprocess.run(
        [sys.executable, "-m", "ernie_ops.recipe.schema", str(out)], check=True, capture_output=True
    )
    extracted = json.loads(out.read_text())
    shipped = json.loads(snapshots()[extracted["erniekit_version"]].read_text())
    assert extracted == shipped


def test_schema_knows_erniekit_s_own_fields():
    schema = load_schema(PINNED_VERSION)
    f = schema.fields["learning_rate"]
    assert (f.type, f.default) == ("float", 5e-05)
    assert schema.fields["fine_tuning"].default == "LoRA"  # ERNIEKit's surprising default
    assert schema.fields["batch_size"].groups == ("FinetuningArguments",)
    assert set(schema.stages) == {"SFT", "DPO"}
    assert "wint4/8" in schema.compute_types
    assert "VL-SFT" in schema.others["1.3.0"].stages
    assert "text_dataset_path" in schema.others["1.3.0"].keys


@pytest.mark.cpu_stack
def test_installed_erniekit_matches_a_shipped_snapshot():
    version, fingerprint = installed_fingerprint()
    schema = load_schema()
    assert schema.erniekit_version == version
    assert schema.fingerprint == fingerprint
    assert schema.source == "snapshot"


@pytest.mark.cpu_stack
def test_another_build_is_extracted_once_then_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("ERNIE_OPS_CACHE", str(tmp_path))
    version, _ = installed_fingerprint()
    monkeypatch.setattr(schema_mod, "installed_fingerprint", lambda: (version, "0123456789abcdef"))
    first = load_schema()
    assert first.source == "extracted"
    assert (tmp_path / "schema" / f"erniekit-{version}-0123456789abcdef.json").is_file()

    def no_extraction():
        raise AssertionError("the cache should have answered")

    monkeypatch.setattr(schema_mod, "extract_in_subprocess", no_extraction)
    second = load_schema()
    assert second.source == "cache" and second.fields == first.fields


def test_without_erniekit_the_pinned_snapshot_is_used(monkeypatch):
    monkeypatch.setattr(schema_mod, "installed_fingerprint", lambda: None)
    schema = load_schema()
    assert schema.erniekit_version == PINNED_VERSION
    assert "not installed" in schema.source


def test_unknown_snapshot_version_is_a_user_error():
    from ernie_ops.errors import UserError

    with pytest.raises(UserError) as err:
        load_schema("0.9")
    assert "1.0.1" in err.value.hint
