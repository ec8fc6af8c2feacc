"""WebDataset shards: reading, per-process/per-worker splitting, shuffling, resumption."""

import collections
import io
import json
import tarfile

import numpy as np
import pytest
from test_data_sources import example_number, image_bytes

from alignjax import data
from alignjax.data import wds

SIZE = 16


@pytest.fixture(scope="module")
def tok():
    return data.WordHashTokenizer(vocab_size=4096, context_length=16)


def _add(tar, name, payload: bytes):
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    tar.addfile(info, io.BytesIO(payload))


def write_shards(folder, counts, bad=()):
    """Shards folder/{000..}.tar; sample numbers run over all shards. ``bad``: numbers whose
    sample is broken (even: undecodable JPEG, odd: no caption)."""
    n = 0
    for s, count in enumerate(counts):
        with tarfile.open(folder / f"{s:03d}.tar", "w") as tar:
            for _ in range(count):
                key = f"{n:06d}"
                png = n % 3 == 1
                img = image_bytes(n, "PNG" if png else "JPEG")
                if n in bad and n % 2 == 0:
                    img = img[:50]
                _add(tar, f"{key}.{'png' if png else 'jpg'}", img)
                if n % 4 == 3:  # json caption (img2dataset writes both)
                    _add(tar, f"{key}.json", json.dumps({"caption": f"sample {n}"}).encode())
                elif not (n in bad and n % 2 == 1):
                    _add(tar, f"{key}.txt", f"sample {n}".encode())
                n += 1
    return f"wds:{folder}/{{000..{len(counts) - 1:03d}}}.tar"


def numbers(batch):
    return [example_number((img + 1) * 127.5) for img in batch["image"]]


def test_expand_pattern():
    assert wds.expand_pattern("a/{08..11}.tar") == [f"a/{i:02d}.tar" for i in range(8, 12)]
    assert wds.expand_pattern("gs://b/{x,y}-{1..2}.tar::c.tar") == [
        "gs://b/x-1.tar",
        "gs://b/x-2.tar",
        "gs://b/y-1.tar",
        "gs://b/y-2.tar",
        "c.tar",
    ]


def test_samples_read(tmp_path, tok):
    spec = write_shards(tmp_path, [5, 4])
    src = data.get_source(spec + "?buffer=4", "train", image_size=SIZE)
    assert src.is_stream and len(src.urls) == 2 and src.buffer == 4
    assert [src.count(i) for i in range(2)] == [5, 4]
    assert len(src) == 9  # random access (eval, stats) through the header index
    for i in (0, 3, 4, 7):
        ex = src[i]
        assert ex["caption"] == f"sample {i}" and example_number(ex["image"]) == i
    # evaluation reads a stream source in order, through the same index
    (b,) = data.make_eval_batches(
        src, tokenizer=tok, batch_size=9, process_index=0, process_count=1
    )
    assert b["mask"].all() and b["image"].shape == (9, SIZE, SIZE, 3)
    assert [example_number((x + 1) * 127.5) for x in b["image"]] == list(range(9))
    np.testing.assert_array_equal(b["tokens"][4], tok(["sample 4"])[0])
    # img2dataset's per-shard stats file gives the count without a scan
    (tmp_path / "001_stats.json").write_text(json.dumps({"successes": 4, "failed": 1}))
    assert wds.shard_count(str(tmp_path / "001.tar")) == 4


def _epoch_numbers(batches):
    return [n for b in batches for n in numbers(b)]


def test_stream_epochs_split_and_resume(tmp_path, tok):
    spec = write_shards(tmp_path, [6, 6, 6, 6])  # 24 samples; 4 streams of one shard each
    src = data.get_source(spec + "?buffer=3", "train", image_size=SIZE)

    def run(p=0, pc=1, k=6, state=None, seed=0):
        it = data.make_train_iterator(
            src,
            tokenizer=tok,
            global_batch_size=4 * pc,
            seed=seed,
            process_index=p,
            process_count=pc,
        )
        if state:
            it.set_state(state)
        with it:
            return [next(it) for _ in range(k)], it.get_state()

    ref, _ = run(k=12)
    first, second = _epoch_numbers(ref[:6]), _epoch_numbers(ref[6:])
    assert sorted(first) == sorted(second) == list(range(24))  # each epoch: all, once
    assert first != second and first != list(range(24))  # shuffled, differently per epoch
    # resumption mid-window and mid-shard is exact
    _, state = run(k=5)
    again, _ = run(k=7, state=state)
    for x, y in zip(again, ref[5:]):
        np.testing.assert_array_equal(x["image"], y["image"])
        np.testing.assert_array_equal(x["tokens"], y["tokens"])
    # two processes: each reads half of the shards; together every sample once per epoch
    parts = [run(p, 2, k=3)[0] for p in range(2)]
    got = [_epoch_numbers(part) for part in parts]
    assert not set(got[0]) & set(got[1]) and sorted(got[0] + got[1]) == list(range(24))
    other, _ = run(k=6, seed=1)
    assert _epoch_numbers(other) != first


def test_stream_bad_samples_counted_and_replaced(tmp_path, tok):
    spec = write_shards(tmp_path, [8, 8], bad={2, 5, 9})
    src = data.get_source(spec + "?buffer=8", "train", image_size=SIZE)
    it = data.make_train_iterator(
        src, tokenizer=tok, global_batch_size=16, seed=0, process_index=0, process_count=1
    )
    with it:
        batch = next(it)
        counts = it.skipped_counts()
    got = numbers(batch)
    assert len(got) == 16 and not {2, 5, 9} & set(got)
    # every bad sample is met once per epoch; a replacement look-ahead can meet it again
    assert counts["undecodable_image"] >= 1 and counts["missing_caption"] >= 2
    assert sum(counts.values()) <= 6
    assert len(set(got)) == 13  # the 3 replacements repeat good samples of their window


def test_stream_resample_and_streams_need_shards(tmp_path, tok):
    spec = write_shards(tmp_path, [3, 3])
    src = data.get_source(spec + "?buffer=3&resample=true", "train", image_size=SIZE)
    shards = [tuple(src.epoch_shards(e, 0, 1, seed=0)) for e in range(20)]
    assert {len(s) for s in shards} == {2}
    assert any(s[0] == s[1] for s in shards)  # with replacement: some epochs repeat a shard
    with pytest.raises(ValueError, match=r"streams=3 needs at least as many shards.*has 2"):
        data.get_source(spec + "?streams=3", "train")
    assert data.get_source(spec + "?streams=3&resample=true", "train").num_streams == 3


def test_stream_mixture(tmp_path, tok):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    spec_a = write_shards(a, [8])
    spec_b = write_shards(b, [4])
    src = data.get_source(
        f"mix:0.5*{spec_a}?buffer=4;0.5*{spec_b}?buffer=4", "train", image_size=SIZE, block=4
    )
    assert isinstance(src, data.MixtureStream)

    def run(k, state=None):
        it = data.make_train_iterator(
            src,
            tokenizer=tok,
            global_batch_size=4,
            seed=0,
            process_index=0,
            process_count=1,
            with_metadata=True,
        )
        if state:
            it.set_state(state)
        with it:
            return [next(it) for _ in range(k)], it.get_state()

    ref, _ = run(6)
    for b_ in ref:
        assert collections.Counter(b_["source_id"].tolist()) == {0: 2, 1: 2}
    _, state = run(3)
    again, _ = run(3, state)
    for x, y in zip(again, ref[3:]):
        np.testing.assert_array_equal(x["image"], y["image"])


@pytest.mark.slow
def test_stream_with_two_workers_split_and_resume(tmp_path, tok):
    """Two grain worker processes: 2 streams over disjoint shards; exact resumption."""
    spec = write_shards(tmp_path, [5, 5, 5, 5])  # 20 samples
    src = data.get_source(spec + "?buffer=5", "train", image_size=SIZE)

    def run(k, state=None):
        it = data.make_train_iterator(
            src,
            tokenizer=tok,
            global_batch_size=5,
            seed=0,
            process_index=0,
            process_count=1,
            num_workers=2,
        )
        if state:
            it.set_state(state)
        with it:
            return [next(it) for _ in range(k)], it.get_state()

    ref, _ = run(8)
    assert sorted(_epoch_numbers(ref[:4])) == list(range(20))  # 2 streams x 2 batches
    _, state = run(3)
    again, _ = run(5, state)
    for x, y in zip(again, ref[3:]):
        np.testing.assert_array_equal(x["image"], y["image"])


def test_fsspec_urls(tmp_path, tok):
    """Shards and tables behind an fsspec URL (memory:// here; gs:// works the same way)."""
    import fsspec

    write_shards(tmp_path, [3, 3])
    fs = fsspec.filesystem("memory")
    for i in range(2):
        fs.pipe(f"/shards/{i:03d}.tar", (tmp_path / f"{i:03d}.tar").read_bytes())
    src = data.get_source("wds:memory://shards/{000..001}.tar?buffer=3", "train", image_size=SIZE)
    assert [src.count(i) for i in range(2)] == [3, 3]
    it = data.make_train_iterator(
        src, tokenizer=tok, global_batch_size=6, seed=0, process_index=0, process_count=1
    )
    with it:
        assert sorted(numbers(next(it))) == list(range(6))
    assert len(src) == 6 and src[4]["caption"] == "sample 4"  # random access over fsspec
    fs.pipe("/t/table.csv", b"filepath,title\nimg.png,remote\n")
    fs.pipe("/t/img.png", image_bytes(5, "PNG"))
    table = data.get_source("csv:memory://t/table.csv", "train")
    assert table[0]["caption"] == "remote" and example_number(table[0]["image"]) == 5


def test_stream_interleaves_cycle_shards_and_resumes_anywhere(tmp_path, tok):
    write_shards(tmp_path, [2, 3])  # shard 0: samples 0-1, shard 1: samples 2-4
    src = data.get_source(
        f"wds:{tmp_path}/{{000..001}}.tar?buffer=1&cycle=2&streams=1", "train", image_size=SIZE
    )

    def run(k, start=0):
        it = data.make_train_iterator(
            src, tokenizer=tok, global_batch_size=1, seed=0, process_index=0, process_count=1
        )
        it.set_state({**it.get_state(), "next_batch": start})
        with it:
            return [numbers(next(it))[0] for _ in range(k)]

    ref = run(10)  # two epochs, no shuffle buffer: the round-robin order itself
    first = src.epoch_shards(0, 0, 1, seed=0)
    expected = [0, 2, 1, 3, 4] if first == [0, 1] else [2, 0, 3, 1, 4]
    assert ref[:5] == expected
    assert sorted(ref[5:]) == list(range(5))
    for start in (1, 3, 4, 6):
        assert run(3, start) == ref[start : start + 3], start


def test_truncated_shard_warns_once(tmp_path, tok, caplog):
    """A shard cut short (an interrupted copy) is met in every epoch: one warning names it."""
    spec = write_shards(tmp_path, [6, 6])
    shard = tmp_path / "001.tar"
    shard.write_bytes(shard.read_bytes()[:3000])
    (tmp_path / "001_stats.json").write_text(json.dumps({"successes": 6}))
    src = data.get_source(spec + "?buffer=6&streams=1&cycle=2", "train", image_size=SIZE)
    it = data.make_train_iterator(
        src, tokenizer=tok, global_batch_size=4, seed=0, process_index=0, process_count=1
    )
    with caplog.at_level("WARNING"), it:
        for _ in range(9):  # three epochs
            next(it)
    broken = [r.getMessage() for r in caplog.records if "is broken" in r.getMessage()]
    assert len(broken) == 1 and str(shard) in broken[0], broken
    assert it.skipped_counts()["error"] > 0


def test_glob_patterns(tmp_path):
    write_shards(tmp_path, [2, 2, 2])
    src = data.get_source(f"wds:{tmp_path}/*.tar", "train")
    assert src.urls == [str(tmp_path / f"{i:03d}.tar") for i in range(3)]
    assert wds.expand_pattern(f"{tmp_path}/00[02].tar::{tmp_path}/{{001..001}}.tar") == [
        str(tmp_path / "000.tar"),
        str(tmp_path / "002.tar"),
        str(tmp_path / "001.tar"),
    ]
    with pytest.raises(ValueError, match=r"the glob '.*/nothing-\*\.tar' matches no file"):
        data.get_source(f"wds:{tmp_path}/nothing-*.tar", "train")


def test_no_error_printed_at_interpreter_exit(tmp_path):
    """A stream left open (no close()) is torn down at exit without an 'Exception ignored'."""
    import subprocess
    import sys

    spec = write_shards(tmp_path, [4, 4])
    code = (
        "from alignjax import data\n"
        "tok = data.WordHashTokenizer(vocab_size=64, context_length=8)\n"
        f"src = data.get_source({spec + '?buffer=2'!r}, 'train', image_size=8)\n"
        "it = data.make_train_iterator(src, tokenizer=tok, global_batch_size=2, seed=0,"
        " process_index=0, process_count=1)\n"
        "next(it)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "Exception ignored" not in out.stderr and "Error" not in out.stderr, out.stderr


def test_a_stream_whose_only_shard_is_unreadable_takes_the_next_epoch(tmp_path, tok):
    """Streams hold one shard each; one shard is cut before its first sample. Its stream
    moves on to its next epoch's shard instead of stopping the run."""
    spec = write_shards(tmp_path, [4, 4, 4])
    shard = tmp_path / "001.tar"
    shard.write_bytes(shard.read_bytes()[:600])
    src = data.get_source(spec + "?buffer=2", "train", image_size=SIZE)
    it = data.make_train_iterator(
        src, tokenizer=tok, global_batch_size=3, seed=0, process_index=0, process_count=1
    )
    with it:
        got = [n for _ in range(8) for n in numbers(next(it))]
    assert len(got) == 24 and not set(got) & {4, 5, 6, 7}
    for s in range(3):
        (tmp_path / f"{s:03d}.tar").write_bytes(b"")
    empty = data.make_train_iterator(
        data.get_source(spec, "train", image_size=SIZE),
        tokenizer=tok,
        global_batch_size=3,
        seed=0,
        process_index=0,
        process_count=1,
    )
    with empty, pytest.raises(ValueError, match="all 3 shards are empty or unreadable"):
        next(empty)
