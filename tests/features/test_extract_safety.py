"""Input safety of ``features.extract`` (issue #20, part C): links and ids leading out of the input folder, blank
transcript segments, torn cache entries, a full disk, and label.csv encodings.

The media decoding and feature models are replaced by a stand-in ``extract_source`` (tiny arrays), so these tests
exercise discovery, the cache and the assembly in a fraction of a second; the real pipeline is covered by
``test_extract.py``.
"""

from __future__ import annotations

import csv
import errno
import json
import logging
import os
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

import features.extract as fx
from common.io import atomic_write
from features.extract import ExtractorSettings, discover, extract, run_extraction

ROW_FIELDS = ["video_id", "clip_id", "text", "label", "annotation", "mode"]


def _fake_extract_source(path: str, clips, settings) -> list[dict[str, np.ndarray]]:
    """One "ok" cache entry per clip with the right keys and tiny arrays (3 audio, 2 vision steps)."""
    out = []
    for c in clips:
        seed = sum(map(ord, c.id))
        rng = np.random.default_rng(seed)
        out.append({"status": np.asarray("ok"), "detail": np.asarray(""),
                    "audio": rng.normal(size=(3, 4)).astype(np.float32),
                    "prosody": np.zeros(len(fx.PROSODY_FEATURES), np.float32),
                    "vision": rng.normal(size=(2, 5)).astype(np.float32), "vision_face_mask": np.ones(2, bool),
                    "text": np.zeros((settings.text_max_len, 6), np.float32),
                    "text_bert": np.zeros((3, settings.text_max_len)),
                    "start_s": np.asarray(float(c.start)), "end_s": np.asarray(1.0)})
    return out


@pytest.fixture
def fake_models(monkeypatch) -> list[str]:
    """Replace the media/model part of the extractor; returns the list of source files extracted."""
    calls: list[str] = []

    def fake(path, clips, settings, face_model=None):
        calls.append(path)
        return _fake_extract_source(path, clips, settings)

    monkeypatch.setattr(fx, "extract_source", fake)
    return calls


SETTINGS = ExtractorSettings(text_max_len=8)


def _label_csv(path: Path, rows: list[tuple[str, str, str, float, str]], encoding: str = "utf-8") -> None:
    with path.open("w", newline="", encoding=encoding) as f:
        w = csv.DictWriter(f, fieldnames=ROW_FIELDS)
        w.writeheader()
        for v, c, t, lab, mode in rows:
            w.writerow({"video_id": v, "clip_id": c, "text": t, "label": lab, "annotation": "", "mode": mode})


def _dataset(tmp_path: Path) -> Path:
    """MMSA raw layout with three clips (train/valid/test) whose 'media' are placeholder bytes."""
    root = tmp_path / "ds"
    for v, c in (("vid_a", "1"), ("vid_a", "2"), ("vid_b", "1")):
        (root / "Raw" / v).mkdir(parents=True, exist_ok=True)
        (root / "Raw" / v / f"{c}.mp4").write_bytes(f"{v}/{c}".encode())
    _label_csv(root / "label.csv", [("vid_a", "1", "good", 1.0, "train"), ("vid_a", "2", "bad", -1.0, "valid"),
                                    ("vid_b", "1", "fine", 0.5, "test")])
    return root


# ------------------------------------------------------------------------------------------------ outside the root
def test_symlinks_and_ids_leading_out_of_raw_are_refused_and_reported(tmp_path, fake_models, caplog) -> None:
    root = _dataset(tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "x.mp4").write_bytes(b"private")
    (outside / "y.mp4").write_bytes(b"private too")
    os.symlink(outside / "x.mp4", root / "Raw" / "vid_b" / "2.mp4")  # a link out of Raw/ with a label row
    os.symlink(outside / "y.mp4", root / "Raw" / "vid_b" / "3.mp4")  # ... and one without
    with (root / "label.csv").open("a", newline="") as f:
        w = csv.writer(f)
        w.writerow(["vid_b", "2", "linked", 2.0, "", "train"])
        w.writerow(["../../outside", "x", "dot dot", 2.0, "", "train"])
        w.writerow(["vid_a", "../../../outside/y", "dot dot in the clip id", 2.0, "", "train"])
        w.writerow([str(outside), "x", "absolute", 2.0, "", "train"])
    clips, bad, _ = discover(root)
    assert [c.id for c in clips] == ["vid_a$_$1", "vid_a$_$2", "vid_b$_$1"]
    assert all(Path(c.path).resolve().is_relative_to((root / "Raw").resolve()) for c in clips)
    outside_ids = sorted(b.id for b in bad if b.reason == "outside_root")
    assert outside_ids == sorted(["vid_b$_$2", "../../outside$_$x", "vid_a$_$../../../outside/y",
                                  f"{outside}$_$x", "vid_b$_$3"])
    assert all(b.reason == "outside_root" for b in bad)
    with caplog.at_level(logging.INFO, logger="features.extract"):
        report = extract(root, tmp_path / "out.npz", SETTINGS, progress=False)
    assert report["bad_counts"] == {"outside_root": 5} and report["left_out"] == 5
    assert report["split_sizes"] == {"train": 1, "valid": 1, "test": 1}
    assert not any("outside" in p for p in fake_models)  # nothing outside Raw/ was opened
    saved = json.loads((tmp_path / "out.report.json").read_text())
    assert {b["id"] for b in saved["bad"]} == set(outside_ids)
    assert any("outside_root" in r.getMessage() for r in caplog.records)  # counted in the log


def test_video_folder_links_leading_outside_are_refused(tmp_path) -> None:
    folder, outside = tmp_path / "videos", tmp_path / "elsewhere"
    folder.mkdir()
    outside.mkdir()
    srt = "1\n00:00:00,000 --> 00:00:01,000\nhello\n"
    (folder / "talk.mp4").write_bytes(b"v")
    (folder / "talk.srt").write_text(srt)
    (outside / "secret.mp4").write_bytes(b"v")
    (outside / "secret.srt").write_text(srt)
    os.symlink(outside / "secret.mp4", folder / "linked.mp4")
    os.symlink(outside / "secret.srt", folder / "linked.srt")
    (folder / "own.mp4").write_bytes(b"v")
    os.symlink(outside / "secret.srt", folder / "own.srt")  # own video, transcript from elsewhere
    clips, bad, kind = discover(folder)
    assert kind == "folder" and [c.id for c in clips] == ["talk$_$1"]
    assert sorted((b.id, b.reason) for b in bad) == [("linked", "outside_root"), ("own", "outside_root")]


# ------------------------------------------------------------------------------------------------ blank segments
@pytest.mark.parametrize(("name", "content"), [
    ("talk.srt", ("1\n00:00:00,000 --> 00:00:01,000\nhello\n\n2\n00:00:01,000 --> 00:00:02,000\n\n"
                  "3\n00:00:02,000 --> 00:00:03,000\nthird\n")),
    ("talk.vtt", ("WEBVTT\n\n00:00:00.000 --> 00:00:01.000\nhello\n\n00:00:01.000 --> 00:00:02.000\n\n"
                  "00:00:02.000 --> 00:00:03.000\nthird\n")),
    ("talk.csv", "start,end,text\n0,1,hello\n1,2,  \n2,3,third\n"),
])
def test_blank_transcript_segments_are_counted_and_reported(tmp_path, fake_models, name, content) -> None:
    folder = tmp_path / "videos"
    folder.mkdir()
    (folder / "talk.mp4").write_bytes(b"v")
    (folder / name).write_text(content)
    clips, bad, _ = discover(folder)
    # the blank cue keeps its number: the ids follow the transcript, nothing shifts
    assert [(c.id, c.text, c.start) for c in clips] == [("talk$_$1", "hello", 0.0), ("talk$_$3", "third", 2.0)]
    assert [(b.id, b.reason) for b in bad] == [("talk$_$2", "empty_transcript_segment")]
    report = extract(folder, tmp_path / "out.npz", SETTINGS, progress=False)
    assert report["bad_counts"] == {"empty_transcript_segment": 1}
    assert report["bad"][0]["id"] == "talk$_$2" and "1.000-2.000 s" in report["bad"][0]["detail"]


# ------------------------------------------------------------------------------------------------ torn cache
def test_torn_cache_entry_is_named_and_extracted_again(tmp_path, fake_models, caplog) -> None:
    root = _dataset(tmp_path)
    out = tmp_path / "run" / "feat.npz"
    first = extract(root, out, SETTINGS, progress=False)
    reference = out.read_bytes()
    cache = out.with_name(out.name + ".cache")
    entries = sorted(cache.glob("*.npz"))
    assert len(entries) == 3 and first["cache_reextracted"] == []
    victim = entries[1]
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])  # truncated by a full disk / a crash
    # --merge cannot re-extract: it names the torn entry, the clip's source file and what to do
    with pytest.raises(FileNotFoundError) as err:
        extract(root, tmp_path / "merged.npz", SETTINGS, merge=True, cache_dirs=[cache], progress=False)
    msg = str(err.value)
    assert str(victim) in msg and "torn" in msg and "Extract them again" in msg
    clips, _, _ = discover(root)
    torn_clip = next(c for c in clips if fx._clip_key(c, fx._settings_hash(SETTINGS)) == victim.stem)
    assert torn_clip.path in msg
    # the next run finds it, says so, extracts that source again and writes the same file
    fake_models.clear()
    with caplog.at_level(logging.WARNING, logger="features.extract"):
        report = extract(root, out, SETTINGS, progress=False, overwrite=True)
    assert fake_models == [torn_clip.path]
    assert report["cache_reextracted"] == [str(victim)]
    assert any(str(victim) in r.getMessage() and "torn" in r.getMessage() for r in caplog.records)
    assert out.read_bytes() == reference
    assert run_extraction(clips, SETTINGS, cache, progress=False) == 0  # sound again


@pytest.mark.parametrize("damage", ["empty", "garbage", "flipped_byte", "no_arrays"])
def test_every_kind_of_torn_entry_is_detected(tmp_path, fake_models, damage) -> None:
    root = _dataset(tmp_path)
    clips, _, _ = discover(root)
    cache = tmp_path / "cache"
    assert run_extraction(clips, SETTINGS, cache, progress=False) == 3
    victim = min(cache.glob("*.npz"))
    data = bytearray(victim.read_bytes())
    if damage == "empty":
        data = bytearray()
    elif damage == "garbage":
        data = bytearray(b"\x00" * 64)
    elif damage == "flipped_byte":
        pos = data.index(b"\x93NUMPY", data.index(b"audio.npy")) + 140  # inside the audio array's data
        data[pos] ^= 0xFF
    else:  # a sound zip that lost its arrays
        with atomic_write(victim) as f:
            np.savez(f, status=np.asarray("ok"), detail=np.asarray(""))
        data = bytearray(victim.read_bytes())
    victim.write_bytes(bytes(data))
    torn: list[str] = []
    assert run_extraction(clips, SETTINGS, cache, progress=False, torn=torn) == 1
    assert torn == [str(victim)]
    assert fx._cache_load(victim)[0] is not None


def test_cache_entries_are_written_atomically(tmp_path, monkeypatch) -> None:
    target = tmp_path / "cache" / "k.npz"

    def dies_half_way(f, **arrays):
        f.write(b"PK\x03\x04 half an entry")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fx.np, "savez", dies_half_way)
    with pytest.raises(OSError, match="k.npz"):
        fx._cache_write(target, _fake_extract_source("v", [fx.Clip("a", "v", "test", "t")], SETTINGS)[0])
    assert list(target.parent.iterdir()) == []  # neither a torn entry nor a temporary file is left


# ------------------------------------------------------------------------------------------------ disk full
@contextmanager
def _full_disk_on(suffix: str):
    """An ``atomic_write`` stand-in whose writes fail with ENOSPC for paths ending in ``suffix``."""
    real = atomic_write

    @contextmanager
    def fake(path, mode="wb", **kw):
        with real(path, mode, **kw) as f:
            if str(path).endswith(suffix):
                def write(*_args, **_kwargs):
                    raise OSError(errno.ENOSPC, "No space left on device")

                f.write = write  # the file object's own write, as a full disk would fail it
            yield f

    yield fake


@pytest.mark.parametrize("target", ["cache entry", "report", "feature file"])
def test_full_disk_error_names_the_path(tmp_path, fake_models, monkeypatch, target) -> None:
    root = _dataset(tmp_path)
    out = tmp_path / "out" / "feat.npz"
    if target == "feature file":
        import features.synthetic_mmsa

        def full(data, path, overwrite=False):
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(features.synthetic_mmsa, "write_feature_file", full)
        expected = str(out)
    else:
        suffix = ".npz" if target == "cache entry" else ".report.json"
        with _full_disk_on(suffix) as fake:
            monkeypatch.setattr(fx, "atomic_write", fake)
        expected = str(out.with_name("feat.npz.cache")) if target == "cache entry" else str(
            out.with_name("feat.report.json"))
    with pytest.raises(OSError) as err:
        extract(root, out, SETTINGS, progress=False)
    assert err.value.errno == errno.ENOSPC
    assert expected in str(err.value) and "No space left" in str(err.value)
    assert not out.with_name("feat.report.json").exists()


# ------------------------------------------------------------------------------------------------ encodings
def test_label_csv_with_a_byte_order_mark_is_read(tmp_path) -> None:
    root = _dataset(tmp_path)
    text = (root / "label.csv").read_text(encoding="utf-8")
    (root / "label.csv").write_text(text.replace("good", "très bien"), encoding="utf-8-sig")  # Excel's "CSV UTF-8"
    clips, bad, _ = discover(root)
    assert bad == [] and [c.text for c in clips] == ["très bien", "bad", "fine"]


def test_label_csv_not_in_utf8_names_file_line_and_fix(tmp_path) -> None:
    root = _dataset(tmp_path)
    text = (root / "label.csv").read_text(encoding="utf-8")
    (root / "label.csv").write_text(text.replace("bad", "mauvais, très"), encoding="latin-1")
    with pytest.raises(ValueError, match=r"label\.csv: not UTF-8 text: byte \d+ \(line 3, column \d+\).*"
                                         r"save the file as UTF-8"):
        discover(root)
