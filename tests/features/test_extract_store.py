"""The extractor writes the memory-mapped feature store directly when ``--out`` ends in ``.mmsa`` (``--merge`` too)."""

from __future__ import annotations

import pytest

from features.convert_mmsa import trees_equal
from features.extract import main
from features.mmsa_format import load_feature_file, open_store
from tests.features.test_extract import bad_dataset, extracted  # noqa: F401 - fixtures

__all__: list[str] = []


@pytest.mark.slow
def test_merge_writes_a_store_equal_to_the_npz(bad_dataset, extracted, tmp_path) -> None:  # noqa: F811
    cache = extracted.with_name(extracted.name + ".cache")
    store = tmp_path / "feat.mmsa"
    main([str(bad_dataset), "--out", str(store), "--merge", "--cache", str(cache)])
    tree, header = open_store(store)
    assert trees_equal(load_feature_file(extracted), tree) is None
    assert header["complete"] is True and header["extractor"]["seq_lens"]["text"] > 0
    assert (tmp_path / "feat.report.json").is_file()
