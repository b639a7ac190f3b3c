"""MiniLM text features in MMSA's text_bert layout, and transcript reading (.srt, .vtt, CSV)."""

from __future__ import annotations

import numpy as np
import pytest

from features.text import Segment, TextEncoder, TranscriptError, read_transcript, read_utf8


@pytest.fixture(scope="module")
def encoder() -> TextEncoder:
    return TextEncoder(max_len=12)


def test_text_bert_is_mmsa_layout(encoder) -> None:
    tb = encoder.tokenize("I love this movie")
    assert tb.shape == (3, 12) and tb.dtype == np.float64
    ids, mask, seg = tb
    n = int(mask.sum())
    assert ids[0] == 101 and ids[n - 1] == 102  # [CLS] ... [SEP]
    assert n == 6 and np.all(ids[n:] == 0) and np.all(mask[:n] == 1) and np.all(seg == 0)
    assert list(ids[1:n - 1]) == [1045, 2293, 2023, 3185]  # i love this movie in the uncased BERT vocabulary
    long = encoder.tokenize("word " * 40)
    assert long[1].sum() == 12 and long[0, -1] == 102  # truncated, still ends with [SEP]


def test_token_features_zero_on_padding_and_text_dependent(encoder) -> None:
    a, tb = encoder.encode("I love this movie")
    b, _ = encoder.encode("I hate this movie")
    assert a.shape == (12, 384) and a.dtype == np.float32
    n = int(tb[1].sum())
    assert np.all(a[n:] == 0) and np.all(np.abs(a[:n]).sum(1) > 0)
    assert not np.allclose(a[2], b[2])  # the changed word
    again, _ = encoder.encode("I love this movie")
    np.testing.assert_array_equal(a, again)


def test_transcripts(tmp_path) -> None:
    srt = tmp_path / "a.srt"
    srt.write_text("1\n00:00:00,000 --> 00:00:01,500\nHello there.\n\n2\n00:00:01,500 --> 00:00:03,250\n"
                   "This is\nbad.\n")
    assert read_transcript(srt) == [Segment(0.0, 1.5, "Hello there."), Segment(1.5, 3.25, "This is bad.")]
    vtt = tmp_path / "a.vtt"
    vtt.write_text("WEBVTT\n\n00:00:00.500 --> 00:00:02.000\nfirst\n\n00:00:02.000 --> 00:00:04.000\nsecond\n")
    assert [(s.start, s.end, s.text) for s in read_transcript(vtt)] == [(0.5, 2.0, "first"), (2.0, 4.0, "second")]
    csv = tmp_path / "a.csv"
    csv.write_text("start,end,text,label\n0,1.25,good,2.5\n00:00:01.25,2.5,bad,-1\n")
    assert read_transcript(csv) == [Segment(0.0, 1.25, "good", 2.5), Segment(1.25, 2.5, "bad", -1.0)]


@pytest.mark.parametrize(("name", "content", "reason"), [
    ("empty.srt", "", "empty_transcript"),
    ("blank.csv", "start,end,text\n0,1,\n1,2,  \n", "empty_transcript"),
    ("cols.csv", "begin,stop,words\n0,1,hi\n", "corrupt"),
    ("time.csv", "start,end,text\nzero,1,hi\n", "corrupt"),
    ("order.csv", "start,end,text\n2,1,hi\n", "corrupt"),
    ("junk.vtt", "this is not webvtt", "corrupt"),
    ("junk.srt", "this is not\na subtitle file", "corrupt"),
    ("blank.srt", "1\n00:00:00,000 --> 00:00:01,000\n\n2\n00:00:01,000 --> 00:00:02,000\n  \n", "empty_transcript"),
])
def test_bad_transcripts_name_the_file_and_reason(tmp_path, name, content, reason) -> None:
    p = tmp_path / name
    p.write_text(content)
    with pytest.raises(TranscriptError, match=name) as err:
        read_transcript(p)
    assert err.value.reason == reason


def test_blank_srt_cues_are_kept_in_place(tmp_path) -> None:
    """webvtt-py drops blank SRT cues (and so renumbers the rest); the reader keeps them for the caller to report."""
    srt = tmp_path / "a.srt"
    srt.write_text("1\n00:00:00,000 --> 00:00:01,000\nhello\n\n2\n00:00:01,000 --> 00:00:02,000\n\n"
                   "3\n00:00:02,000 --> 00:00:03,000\n2019\n\n4\n00:00:03,000 --> 00:00:04,000\n   \n"
                   "5\n00:00:04,000 --> 00:00:05,500\nlast\nline\n")
    assert read_transcript(srt) == [Segment(0.0, 1.0, "hello"), Segment(1.0, 2.0, ""), Segment(2.0, 3.0, "2019"),
                                    Segment(3.0, 4.0, ""), Segment(4.0, 5.5, "last line")]


@pytest.mark.parametrize(("name", "content"), [
    ("bom.srt", "1\r\n00:00:00,000 --> 00:00:01,000\r\ncafé crème\r\n"),
    ("bom.vtt", "WEBVTT\n\n00:00:00.000 --> 00:00:01.000\ncafé crème\n"),
    ("bom.csv", "start,end,text\n0,1,café crème\n"),
])
def test_transcripts_with_a_byte_order_mark(tmp_path, name, content) -> None:
    p = tmp_path / name
    p.write_text(content, encoding="utf-8-sig", newline="")
    assert read_transcript(p) == [Segment(0.0, 1.0, "café crème")]


@pytest.mark.parametrize("name", ["latin.srt", "latin.vtt", "latin.csv"])
def test_transcripts_not_in_utf8_name_file_line_and_fix(tmp_path, name) -> None:
    content = {"latin.srt": "1\n00:00:00,000 --> 00:00:01,000\ncafé\n",
               "latin.vtt": "WEBVTT\n\n00:00:00.000 --> 00:00:01.000\ncafé\n",
               "latin.csv": "start,end,text\n0,1,café\n"}[name]
    p = tmp_path / name
    p.write_bytes(content.encode("latin-1"))
    line = content.split("\n").index(next(x for x in content.split("\n") if "café" in x)) + 1
    with pytest.raises(TranscriptError, match=rf"{name}.*not UTF-8.*\(line {line}, column \d+\).*save the file as "
                                              "UTF-8") as err:
        read_transcript(p)
    assert err.value.reason == "corrupt"


def test_read_utf8_position(tmp_path) -> None:
    p = tmp_path / "x.csv"
    p.write_bytes(b"a,b\nok,\xe9t\xe9\n")
    with pytest.raises(ValueError, match=r"x\.csv: not UTF-8 text: byte 7 \(line 2, column 4\) is b'\\xe9'"):
        read_utf8(p)
    p.write_bytes("\ufeffa,b\n".encode())
    assert read_utf8(p) == "a,b\n"
