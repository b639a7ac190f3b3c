"""``features.extract`` assembles the feature file streaming (issue #23): two passes over the cache entries, the
padded rows read back chunk by chunk as the ``.mmsa`` store / ``.npz`` is written, so a MOSEI-size extraction never
holds the dataset in memory; the output is the one the in-memory assembly wrote, byte for byte.

The media and models are replaced by a stand-in ``extract_source`` (seeded arrays of varying lengths, with NaN, a
faceless clip, faceless frames and a corrupt clip), as in ``test_extract_safety.py``.
"""

from __future__ import annotations

import csv
import json
import tracemalloc
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

import features.extract as fx
from features import mmsa_format
from features.extract import ExtractorSettings, discover
from features.mmsa_format import FILE_SPLITS, ArrayStream, open_store, save_npz, save_store

ROW_FIELDS = ["video_id", "clip_id", "text", "label", "annotation", "mode"]
SETTINGS = ExtractorSettings(text_max_len=8)
TEXT_DIM = 6


def fake_extract_source(path: str, clips, settings, face_model=None) -> list[dict[str, np.ndarray]]:
    """Seeded cache entries: audio of 1..``max_audio`` steps (NaN in some), vision with faceless frames, one
    clip without any face, one corrupt file (ids ending in ``$_$bad``)."""
    out = []
    for c in clips:
        rng = np.random.default_rng(sum(map(ord, c.id)))
        if c.id.endswith("$_$bad"):
            out.append({"status": np.asarray("corrupt"), "detail": np.asarray("stand-in for a broken file")})
            continue
        audio = rng.normal(size=(int(rng.integers(1, _FAKE["max_audio"] + 1)), _FAKE["audio_dim"])).astype(np.float32)
        if rng.random() < 0.1:
            audio[0, 0] = np.nan
        nv = int(rng.integers(1, 9))
        mask = rng.random(nv) < 0.7 if not c.id.endswith("$_$faceless") else np.zeros(nv, bool)
        out.append({"status": np.asarray("ok"), "detail": np.asarray(""), "audio": audio,
                    "prosody": rng.normal(size=len(fx.PROSODY_FEATURES)).astype(np.float32),
                    "vision": rng.normal(size=(nv, 5)).astype(np.float32), "vision_face_mask": mask,
                    "text": rng.normal(size=(settings.text_max_len, TEXT_DIM)).astype(np.float32),
                    "text_bert": rng.integers(0, 2, size=(3, settings.text_max_len)),
                    "start_s": np.asarray(float(c.start)), "end_s": np.asarray(rng.uniform(1, 5))})
    return out


_FAKE = {"max_audio": 40, "audio_dim": 4}


@pytest.fixture
def fake_models(monkeypatch) -> None:
    monkeypatch.setattr(fx, "extract_source", fake_extract_source)
    monkeypatch.setitem(_FAKE, "max_audio", 40)


def make_dataset(root: Path, n: int, splits: tuple[str, ...] = FILE_SPLITS) -> Path:
    """MMSA raw layout with ``n`` clips (placeholder media bytes) over ``splits``, plus a faceless and a corrupt
    clip in the first split."""
    rows = [(f"vid_{i // 3}", str(i % 3), f"utterance {i}", round((i % 13) / 2 - 3, 1), splits[i % len(splits)])
            for i in range(n)]
    rows += [("vid_x", "faceless", "nobody", 0.5, splits[0]), ("vid_x", "bad", "broken", 0.5, splits[0])]
    for v, c, *_ in rows:
        (root / "Raw" / v).mkdir(parents=True, exist_ok=True)
        (root / "Raw" / v / f"{c}.mp4").write_bytes(f"{v}/{c}".encode())
    with (root / "label.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=ROW_FIELDS)
        w.writeheader()
        for v, c, t, lab, mode in rows:
            w.writerow({"video_id": v, "clip_id": c, "text": t, "label": lab, "annotation": "", "mode": mode})
    return root


# ----------------------------------------------------------------------------- the in-memory assembly (reference)
def _pad(arrays, length: int, dim: int, dtype) -> tuple[np.ndarray, np.ndarray]:
    out = np.zeros((len(arrays), length, dim), dtype=dtype)
    lengths = np.zeros(len(arrays), dtype=np.int64)
    for i, a in enumerate(arrays):
        n = min(len(a), length)
        out[i, :n] = a[:n]
        lengths[i] = n
    return out, lengths


def in_memory_assemble(clips, bad, settings: ExtractorSettings, cache_dirs, out: Path, *, kind: str) -> dict:
    """The assembly as it was before it streamed (every entry loaded, the padded split arrays built in memory,
    then written with ``write_feature_file``): the reference the streamed output must equal."""
    from features.synthetic_mmsa import write_feature_file

    shash = fx._settings_hash(settings)
    bad, kept = list(bad), []
    for c in clips:
        entry = next(e for d in cache_dirs if (p := Path(d) / f"{fx._clip_key(c, shash)}.npz").is_file()
                     for e in [fx._cache_load(p)[0]] if e is not None)
        if str(entry["status"]) != "ok":
            bad.append(fx.BadClip(c.id, c.path, str(entry["status"]), str(entry["detail"])))
            continue
        if not entry["vision_face_mask"].any():
            bad.append(fx.BadClip(c.id, c.path, "no_face", "no face in any sampled frame: kept, vision masked"))
        if settings.vision.no_face_frames == "drop":
            m = entry["vision_face_mask"]
            entry["vision"], entry["vision_face_mask"] = entry["vision"][m], m[m]
        kept.append((c, entry))
    labelled = all(c.label is not None for c, _ in kept)
    first = kept[0][1]
    dims = {m: int(first[m].shape[1]) for m in ("audio", "vision", "text")}
    la = max(len(e["audio"]) for _, e in kept)
    lv = max(max(len(e["vision"]) for _, e in kept), 1)
    la = min(la, settings.max_audio_len) if settings.max_audio_len else la
    lv = min(lv, settings.max_vision_len) if settings.max_vision_len else lv
    lt = settings.text_max_len
    data: dict[str, Any] = {}
    for split in FILE_SPLITS:
        items = [(c, e) for c, e in kept if c.split == split]
        audio, alen = _pad([e["audio"] for _, e in items], la, dims["audio"], np.float32)
        vision, vlen = _pad([e["vision"] for _, e in items], lv, dims["vision"], np.float32)
        fmask, _ = _pad([e["vision_face_mask"][:, None] for _, e in items], lv, 1, bool)
        entry = {
            "raw_text": np.array([c.text for c, _ in items], dtype=object),
            "audio": audio, "audio_lengths": alen, "vision": vision, "vision_lengths": vlen,
            "vision_face_mask": fmask[..., 0],
            "text": np.stack([e["text"] for _, e in items]) if items else np.zeros((0, lt, dims["text"]), np.float32),
            "text_bert": np.stack([e["text_bert"] for _, e in items]) if items else np.zeros((0, 3, lt)),
            "id": np.array([c.id for c, _ in items], dtype=object),
            "prosody": np.stack([e["prosody"] for _, e in items]) if items
            else np.zeros((0, len(fx.PROSODY_FEATURES)), np.float32),
            "source": np.array([Path(c.path).name for c, _ in items], dtype=object),
            "start_s": np.array([float(e["start_s"]) for _, e in items], dtype=np.float64),
            "end_s": np.array([float(e["end_s"]) for _, e in items], dtype=np.float64),
        }
        if labelled:
            entry["regression_labels"] = np.array([c.label for c, _ in items], dtype=np.float32)
        data[split] = entry
    info = fx.extractor_info(settings, dims)
    info.update(seq_lens={"audio": la, "vision": lv, "text": lt}, input=kind, labelled=labelled)
    data["extractor"] = json.dumps(info, sort_keys=True)
    counts = Counter(b.reason for b in bad)
    write_feature_file(data, out)
    return {"output": out.name, "input": kind, "split_sizes": {s: len(data[s]["id"]) for s in FILE_SPLITS},
            "clips_written": len(kept), "bad_counts": dict(sorted(counts.items())),
            "left_out": sum(v for r, v in counts.items() if r not in fx.KEPT_REASONS),
            "bad": [asdict(b) for b in sorted(bad, key=lambda b: (b.reason, b.id))],
            "truncated": {"audio": int(sum(len(e["audio"]) > la for _, e in kept)),
                          "vision": int(sum(len(e["vision"]) > lv for _, e in kept))},
            "cache_reextracted": []}


def assert_same_output(got: Path, want: Path) -> None:
    """Byte-equal files; for a store, an equal header and byte-equal array files."""
    if got.is_dir():
        header = json.loads((got / "header.json").read_text())
        assert header == json.loads((want / "header.json").read_text())
        assert sorted(p.name for p in got.iterdir()) == sorted(p.name for p in want.iterdir())
        for entry in header["arrays"].values():
            assert (got / entry["file"]).read_bytes() == (want / entry["file"]).read_bytes(), entry["file"]
    else:
        assert got.read_bytes() == want.read_bytes()


# ------------------------------------------------------------------------------------------------ equal outputs
@pytest.mark.parametrize(("suffix", "settings", "splits"), [
    (".mmsa", SETTINGS, FILE_SPLITS),
    (".npz", SETTINGS, FILE_SPLITS),
    (".pkl", SETTINGS, FILE_SPLITS),
    (".mmsa", ExtractorSettings(text_max_len=8, max_audio_len=25, max_vision_len=4), ("train", "test")),
    (".npz", ExtractorSettings(text_max_len=8, vision=fx.VisionSettings(no_face_frames="drop")), ("valid",)),
])
def test_streamed_output_equals_the_in_memory_assembly(tmp_path, fake_models, monkeypatch, suffix, settings,
                                                       splits) -> None:
    monkeypatch.setattr(mmsa_format, "CHUNK_BYTES", 1000)  # many chunks of a few rows, one row split across none
    root = make_dataset(tmp_path / "ds", 40, splits)
    out = tmp_path / "run" / f"feat{suffix}"
    report = fx.extract(root, out, settings, progress=False)
    clips, bad, kind = discover(root)
    want = tmp_path / "ref" / out.name  # same name: the header records it
    want.parent.mkdir()
    reference = in_memory_assemble(clips, bad, settings, [out.with_name(out.name + ".cache")], want, kind=kind)
    assert report == reference
    assert json.loads(out.with_name("feat.report.json").read_text()) == reference
    assert_same_output(out, want)
    assert report["bad_counts"]["corrupt"] == 1 and report["bad_counts"]["no_face"] >= 1
    if settings.max_audio_len:
        assert report["truncated"]["audio"] > 0 and report["truncated"]["vision"] > 0
    if suffix == ".mmsa":
        header = open_store(out)[1]
        assert sum(n for s in header["nonfinite"].values() for n in s.values()) > 0  # NaN counted, rows listed
        assert any(r for s in header["nonfinite_rows"].values() for r in s.values())


def test_merge_of_shards_streams_the_same_store(tmp_path, fake_models, monkeypatch) -> None:
    monkeypatch.setattr(mmsa_format, "CHUNK_BYTES", 4096)
    root = make_dataset(tmp_path / "ds", 30)
    one = tmp_path / "one" / "feat.mmsa"
    fx.extract(root, one, SETTINGS, progress=False)
    a, b = tmp_path / "cache_a", tmp_path / "cache_b"
    for k, d in ((0, a), (1, b)):
        assert fx.extract(root, tmp_path / "x.mmsa", SETTINGS, shard=(k, 2), cache_dirs=[d], progress=False) is None
    merged = tmp_path / "merged" / "feat.mmsa"
    report = fx.extract(root, merged, SETTINGS, merge=True, cache_dirs=[a, b], progress=False)
    assert_same_output(merged, one)
    assert report == json.loads(one.with_name("feat.report.json").read_text())


def test_a_cache_entry_changed_between_the_passes_is_named(tmp_path, fake_models, monkeypatch) -> None:
    root = make_dataset(tmp_path / "ds", 6)
    clips, _, _ = discover(root)
    cache = tmp_path / "cache"
    fx.run_extraction(clips, SETTINGS, cache, progress=False)
    victim = cache / f"{fx._clip_key(clips[0], fx._settings_hash(SETTINGS))}.npz"
    load = fx._cache_load

    def load_then_change(path: Path):  # the first pass has read the entry; then another run rewrites it
        arrays, why = load(path)
        if path == victim and arrays is not None:
            changed = dict(arrays, audio=np.zeros((len(arrays["audio"]) + 1, 4), np.float32))
            np.savez(victim, **changed)
        return arrays, why

    monkeypatch.setattr(fx, "_cache_load", load_then_change)
    with pytest.raises(ValueError, match="changed while the file was written") as err:
        fx.extract(root, tmp_path / "feat.mmsa", SETTINGS, merge=True, cache_dirs=[cache], progress=False)
    assert str(victim) in str(err.value) and clips[0].id in str(err.value)
    assert not (tmp_path / "feat.mmsa").exists()  # the store is only moved into place when complete


def test_array_stream_writes_what_the_array_writes(tmp_path) -> None:
    arr = np.arange(7 * 3 * 2, dtype=np.float32).reshape(7, 3, 2)
    arr[4, 1, 0] = np.inf
    stream = ArrayStream(arr.shape, arr.dtype, lambda: (arr[i:i + 3] for i in range(0, 7, 3)))
    np.testing.assert_array_equal(stream.materialise(), arr)
    a, b = tmp_path / "array", tmp_path / "stream"  # the same names: the headers record them
    save_npz({"x": {"a": arr}}, a / "f.npz")
    save_npz({"x": {"a": stream}}, b / "f.npz")
    assert (a / "f.npz").read_bytes() == (b / "f.npz").read_bytes()
    save_store({"x": {"a": arr}}, a / "f.mmsa")
    save_store({"x": {"a": stream}}, b / "f.mmsa")
    assert_same_output(b / "f.mmsa", a / "f.mmsa")
    short = ArrayStream(arr.shape, arr.dtype, lambda: [arr[:5]])
    with pytest.raises(mmsa_format.MMSADataError, match="bytes of data"):
        save_npz({"x": {"a": short}}, tmp_path / "short.npz")
    with pytest.raises(ValueError, match="dtype"):
        ArrayStream(arr.shape, arr.dtype, lambda: [arr.astype(np.float64)]).materialise()


# ------------------------------------------------------------------------------------------------ bounded memory
def padded_nbytes(out: Path) -> int:
    """Bytes of the padded split arrays of a written store (what the in-memory assembly held at once)."""
    header = open_store(out)[1]
    return sum(e["nbytes"] for name, e in header["arrays"].items()
               if name.split("/")[-1] in ("audio", "vision", "vision_face_mask", "text", "text_bert"))


def peak_assemble_bytes(module: ModuleType, root: Path, out: Path, caches: list[Path], *, merge: bool) -> int:
    """Peak traced memory (numpy buffers included) of ``module.extract`` over a filled cache."""
    tracemalloc.start()
    try:
        module.extract(root, out, SETTINGS, cache_dirs=caches, merge=merge, progress=False)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def filled_caches(root: Path, tmp_path: Path, shards: int) -> list[Path]:
    clips, _, _ = discover(root)
    caches = [tmp_path / f"cache_{k}" for k in range(shards)]
    for k, cache in enumerate(caches):
        fx.run_extraction(clips, SETTINGS, cache, shard=(k, shards), progress=False)
    return caches


@pytest.mark.parametrize("merge", [False, True], ids=["assemble", "merge_of_shards"])
def test_assembly_memory_stays_far_below_the_padded_arrays(tmp_path, fake_models, monkeypatch, merge) -> None:
    # 240 clips of up to 400 x 64 float32 audio steps: ~25 MB of padded audio; the in-memory assembly held it all
    # (and every entry besides), the streamed one a chunk (256 KiB here) per array
    monkeypatch.setitem(_FAKE, "max_audio", 400)
    monkeypatch.setitem(_FAKE, "audio_dim", 64)
    monkeypatch.setattr(mmsa_format, "CHUNK_BYTES", 256 * 1024)
    root = make_dataset(tmp_path / "ds", 240)
    caches = filled_caches(root, tmp_path, 3 if merge else 1)
    out = tmp_path / "out" / "feat.mmsa"
    peak = peak_assemble_bytes(fx, root, out, caches, merge=merge)
    full = padded_nbytes(out)
    assert full > 20 * 2**20
    assert peak < full / 5, f"peak {peak / 2**20:.1f} MiB for {full / 2**20:.1f} MiB of padded arrays"

