"""Real-data sources (csv, jsonl, tfds, mixtures), decoding, bad data and the transform hook."""

import io
import json

import numpy as np
import pytest
from PIL import Image

from alignjax import data
from alignjax.data import decode as D
from alignjax.data import transforms as T

SIZE = 16


@pytest.fixture(scope="module")
def tok():
    return data.WordHashTokenizer(vocab_size=4096, context_length=16)


def color_of(i: int) -> tuple[int, int, int]:
    """A colour that encodes the example number (recoverable after JPEG + resize)."""
    return (40 + 10 * (i % 20), 40 + 10 * ((i // 20) % 20), 200)


def write_image(path: str, i: int, fmt: str = "JPEG", size=(24, 20)) -> None:
    Image.new("RGB", size, color_of(i)).save(path, fmt)


def image_bytes(i: int, fmt: str = "JPEG", size=(24, 20)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color_of(i)).save(buf, fmt)
    return buf.getvalue()


def make_table(tmp_path, n=20, fmt="csv", sep=",", captions=None, label=False, name="data"):
    """n real images (even: JPEG, odd: PNG) in tmp_path/img and a table with relative paths."""
    img_dir = tmp_path / "img"
    img_dir.mkdir(exist_ok=True)
    rows = []
    for i in range(n):
        ext = "jpg" if i % 2 == 0 else "png"
        write_image(str(img_dir / f"{i}.{ext}"), i, "JPEG" if ext == "jpg" else "PNG")
        row = {"filepath": f"img/{i}.{ext}", "title": captions[i] if captions else f"photo {i}"}
        if label:
            row["label"] = i % 3
        rows.append(row)
    path = tmp_path / f"{name}.{fmt if fmt == 'jsonl' else ('tsv' if sep == chr(9) else 'csv')}"
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        keys = list(rows[0])
        lines = [sep.join(keys)] + [sep.join(str(r[k]) for k in keys) for r in rows]
        path.write_text("\n".join(lines) + "\n")
    return str(path), rows


def example_number(img: np.ndarray) -> int:
    """Inverse of color_of on a decoded (uint8) image."""
    r, g, _ = np.asarray(img, np.float64).reshape(-1, 3).mean(0)
    return round((r - 40) / 10) + 20 * round((g - 40) / 10)


# --- decode ----------------------------------------------------------------------------------
def test_decode_image_modes_are_converted():
    def enc(img, fmt):
        buf = io.BytesIO()
        img.save(buf, fmt)
        return buf.getvalue()

    gray = D.decode_image(enc(Image.new("L", (8, 6), 100), "PNG"))
    assert gray.mode == "RGB" and np.asarray(gray)[0, 0].tolist() == [100] * 3
    rgba = Image.new("RGBA", (8, 8), (255, 0, 0, 0))  # fully transparent red
    assert np.asarray(D.decode_image(enc(rgba, "PNG")))[0, 0].tolist() == [255, 255, 255]
    half = Image.new("RGBA", (8, 8), (0, 0, 0, 128))
    assert 120 < np.asarray(D.decode_image(enc(half, "PNG")))[0, 0, 0] < 135
    cmyk = D.decode_image(enc(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), "JPEG"))
    r, g, b = np.asarray(cmyk)[4, 4].tolist()
    assert r > 200 and g < 60 and b < 60  # CMYK (0, 1, 1, 0) is red
    deep = Image.fromarray(np.full((6, 6), 65535 // 2, np.uint16))  # 16-bit grey
    assert deep.mode.startswith("I")
    assert abs(int(np.asarray(D.decode_image(enc(deep, "PNG")))[0, 0, 0]) - 127) <= 1
    pal = Image.new("P", (8, 8), 3)
    pal.putpalette([0, 0, 0] * 3 + [10, 20, 30] + [0, 0, 0] * 252)
    assert np.asarray(D.decode_image(enc(pal, "PNG")))[0, 0].tolist() == [10, 20, 30]
    for bad in (b"", b"not an image", image_bytes(0)[:40]):
        with pytest.raises(D.SkipExample) as e:
            D.decode_image(bad)
        assert e.value.reason == "undecodable_image"
    with pytest.raises(D.SkipExample, match="small_image"):
        D.decode_image(image_bytes(0, size=(4, 4)), min_image_size=8)


def test_decode_draft_keeps_enough_pixels():
    big = image_bytes(3, size=(512, 384))
    img = D.decode_image(big, min_side=100)
    assert min(img.size) >= 100 and img.size[0] < 512  # DCT-scaled, still >= the need
    assert D.decode_image(big).size == (512, 384)


def test_clean_caption():
    assert D.clean_caption("  A&amp;B\n\t cat\x00 ") == "A&B cat"
    assert D.clean_caption(b"caf\xc3\xa9") == "café"
    with pytest.raises(D.SkipExample, match="empty_caption"):
        D.check_caption("", 10)
    with pytest.raises(D.SkipExample, match="long_caption"):
        D.check_caption("x" * 11, 10)


def test_crops():
    rng = np.random.default_rng(0)
    for _ in range(50):
        x0, y0, x1, y1 = T.random_resized_crop_box(300, 200, rng, (0.9, 1.0), (3 / 4, 4 / 3))
        assert 0 <= x0 < x1 <= 300 and 0 <= y0 < y1 <= 200
        area = (x1 - x0) * (y1 - y0) / (300 * 200)
        assert 0.85 <= area <= 1.0, area
    assert T.center_crop_box(300, 200) == (50.0, 0.0, 250.0, 200.0)
    img = np.zeros((20, 40, 3), np.uint8)
    img[:, 10:30] = 255  # white central square, black sides
    out = T.crop_resize(img, "center", 8)
    assert out.shape == (8, 8, 3) and out.min() > 200  # the center crop is the square
    assert T.crop_resize(img, "resize", 8)[:, 0].max() < 50  # squashed: sides stay
    out = T.crop_resize(img, "random_resized", 8, np.random.default_rng(1))
    assert out.shape == (8, 8, 3)
    with pytest.raises(ValueError, match="valid"):
        T.Preprocess(image_size=8, train_crop="fancy")
    pre = T.Preprocess.from_kwargs({"image_size": 8, "crop": "center", "min_scale": 0.5})
    assert (pre.train_crop, pre.scale) == ("center", (0.5, 1.0))


# --- csv / jsonl -----------------------------------------------------------------------------
def test_csv_and_tsv_and_jsonl_read_the_same_samples(tmp_path):
    path, _ = make_table(tmp_path, n=6, label=True)
    src = data.get_source(f"csv:{path}?label_key=label", "train", image_size=SIZE)
    assert len(src) == 6 and src.preprocess.image_size == SIZE
    for i in range(6):
        ex = src[i]
        assert ex["caption"] == f"photo {i}" and ex["labels"] == {"label": i % 3}
        assert ex["image"].shape == (20, 24, 3) and ex["image"].dtype == np.uint8
        assert example_number(ex["image"]) == i
    tsv, _ = make_table(tmp_path, n=6, sep="\t", name="t")
    jsonl, _ = make_table(tmp_path, n=6, fmt="jsonl", name="j")
    for spec in (f"csv:{tsv}", f"jsonl:{jsonl}"):
        other = data.get_source(spec, "train")
        assert [other[i]["caption"] for i in range(6)] == [src[i]["caption"] for i in range(6)]
    # other column names, {split} in the path
    (tmp_path / "val.csv").write_text("img,text\nimg/1.png,hello\n")
    src = data.get_source(f"csv:{tmp_path}/{{split}}.csv?image_key=img&caption_key=text", "val")
    assert len(src) == 1 and src[0]["caption"] == "hello"
    with pytest.raises(ValueError, match=r"no column 'title'.*\?caption_key=NAME"):
        data.get_source(f"csv:{tmp_path}/val.csv?image_key=img", "train")
    with pytest.raises(TypeError, match="Unknown csv: source parameters"):
        data.get_source(f"csv:{path}?colour=red", "train")


def test_class_name_labels(tmp_path):
    write_image(str(tmp_path / "a.jpg"), 1)
    (tmp_path / "t.csv").write_text("filepath,title,label\na.jpg,x,dog\na.jpg,y,cat\n")
    src = data.get_source(f"csv:{tmp_path}/t.csv?label_key=label", "train")
    assert src.classnames == ["cat", "dog"] and src[0]["labels"] == {"label": 1}


def test_train_pipeline_over_csv_split_and_resume(tmp_path, tok):
    path, _ = make_table(tmp_path, n=24)
    src = data.get_source(f"csv:{path}", "train", image_size=SIZE)

    def run(p=0, pc=1, k=6, state=None):
        it = data.make_train_iterator(
            src,
            tokenizer=tok,
            global_batch_size=8,
            seed=3,
            process_index=p,
            process_count=pc,
            with_metadata=True,
        )
        if state:
            it.set_state(state)
        with it:
            return [next(it) for _ in range(k)], it.get_state()

    full, _ = run()
    b = full[0]
    assert b["image"].shape == (8, SIZE, SIZE, 3) and b["image"].dtype == np.float32
    assert b["tokens"].shape == (8, 16)
    epoch = np.concatenate([x["index"] for x in full[:3]])
    assert sorted(epoch) == list(range(24))  # one epoch = every row once
    for x in full[:3]:  # each decoded row is the image of its own index
        for i, img in zip(x["index"], x["image"]):
            assert example_number((img + 1) * 127.5) == i
    parts = [run(p, 2)[0] for p in range(2)]
    for k in range(6):
        a, c = parts[0][k]["index"], parts[1][k]["index"]
        assert not set(a) & set(c) and sorted([*a, *c]) == sorted(full[k]["index"])
    _, state = run(k=2)
    resumed, _ = run(k=4, state=state)
    for x, y in zip(resumed, full[2:]):
        for key in x:
            np.testing.assert_array_equal(x[key], y[key], err_msg=key)


def test_random_caption_choice_and_eval_first(tmp_path, tok):
    path, _ = make_table(tmp_path, n=4, fmt="jsonl")
    with open(path) as f:
        lines = [json.loads(x) for x in f]
    for r in lines:
        r["title"] = ["alpha", "beta", "  ", "gamma"]
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in lines)
    src = data.get_source(f"jsonl:{path}", "train", image_size=SIZE)
    seen = set()

    def grab(ex):
        seen.add(ex["caption"])
        assert ex["captions"] == ["alpha", "beta", "gamma"]  # cleaned, empty dropped
        return ex

    it = data.make_train_iterator(
        src,
        tokenizer=tok,
        global_batch_size=4,
        seed=0,
        process_index=0,
        process_count=1,
        extra_transforms=[grab],
    )
    with it:
        for _ in range(6):
            next(it)
    assert seen == {"alpha", "beta", "gamma"}
    batches = data.make_eval_batches(
        src, tokenizer=tok, batch_size=4, process_index=0, process_count=1
    )
    (b,) = list(batches)
    np.testing.assert_array_equal(b["tokens"], tok(["alpha"] * 4))


# --- the extra_transforms hook ---------------------------------------------------------------
class TwoViews:
    """A module-level RandomMap-style transform adding a second image and an int array."""

    def random_map(self, example, rng):
        out = dict(example)
        img = example["image"]
        out["image_2"] = img[:, ::-1] if rng.random() < 0.5 else img.copy()
        out["tokens_sub"] = np.full((2, 4), int(rng.integers(100)), np.int32)
        return out


def test_extra_transforms_keep_arrays_and_are_deterministic(tmp_path, tok):
    path, _ = make_table(tmp_path, n=16)
    src = data.get_source(f"csv:{path}", "train", image_size=SIZE)

    def make(**kw):
        return data.make_train_iterator(
            src,
            tokenizer=tok,
            global_batch_size=4,
            seed=1,
            process_index=0,
            process_count=1,
            extra_transforms=[TwoViews(), lambda ex: {**ex, "flag": np.int32(7)}],
            normalize="clip",
            **kw,
        )

    with make() as it:
        ref = [next(it) for _ in range(5)]
        state = ref and it.get_state()
    b = ref[0]
    assert set(b) == {"image", "image_2", "tokens", "tokens_sub", "flag"}
    assert b["image_2"].shape == (4, SIZE, SIZE, 3) and b["image_2"].dtype == np.float32
    assert b["image_2"].min() < -1.0  # normalised like 'image' (OpenAI statistics)
    assert b["tokens_sub"].shape == (4, 2, 4) and (b["flag"] == 7).all()
    with make() as it:
        it.set_state({**state, "next_batch": 2})
        again = [next(it) for _ in range(3)]
    for x, y in zip(again, ref[2:]):
        for key in x:
            np.testing.assert_array_equal(x[key], y[key], err_msg=key)


# --- bad data --------------------------------------------------------------------------------
def _bad_table(tmp_path):
    """16 rows: good ones plus each kind of bad row (and odd image modes that convert)."""
    path, _ = make_table(tmp_path, n=10)
    d = tmp_path / "img"
    (d / "broken.jpg").write_bytes(image_bytes(0)[:60])  # truncated JPEG
    (d / "text.jpg").write_text("not an image")
    Image.new("L", (20, 20), 90).save(d / "gray.png")
    Image.new("RGBA", (20, 20), (0, 0, 0, 0)).save(d / "rgba.png")
    Image.new("CMYK", (20, 20), (0, 0, 0, 0)).save(d / "cmyk.jpg")
    Image.fromarray(np.full((20, 20), 30000, np.uint16)).save(d / "deep.png")
    extra = [
        ("img/broken.jpg", "truncated"),
        ("img/text.jpg", "garbage"),
        ("img/absent.jpg", "missing file"),
        ("img/0.jpg", ""),
        ("img/0.jpg", "x" * 3000),
        ("img/gray.png", "gray"),
        ("img/rgba.png", "rgba"),
        ("img/cmyk.jpg", "cmyk"),
        ("img/deep.png", "sixteen bit"),
    ]
    with open(path, "a") as f:
        f.writelines(f"{p},{c}\n" for p, c in extra)
    return path


def test_bad_data_is_skipped_counted_and_batches_stay_full(tmp_path, tok):
    path = _bad_table(tmp_path)
    src = data.get_source(f"csv:{path}", "train", image_size=SIZE)
    assert len(src) == 19
    seen = []

    def record(ex):
        seen.append(ex["caption"])
        return ex

    def make():
        return data.make_train_iterator(
            src,
            tokenizer=tok,
            global_batch_size=19,
            seed=0,
            process_index=0,
            process_count=1,
            extra_transforms=[record],
            with_metadata=True,
        )

    with make() as it:
        assert next(it)["image"].shape == (19, SIZE, SIZE, 3)  # full despite 5 bad rows
        counts = it.skipped_counts()
        ref = [next(it) for _ in range(2)]
        state = it.get_state()
        more = [next(it) for _ in range(2)]
    assert set(counts) == set(D.SKIP_REASONS)
    # each bad row was met once in the first epoch (replacements are drawn from all rows,
    # so a replacement can itself be bad: >=)
    for reason in ("undecodable_image", "missing_file", "empty_caption", "long_caption"):
        assert counts[reason] >= 1, (reason, counts)
    assert counts["undecodable_image"] >= 2
    for cap in ("gray", "rgba", "cmyk", "sixteen bit"):  # converted, not skipped
        assert cap in seen
    assert not {"truncated", "garbage", "missing file", ""} & set(seen)
    assert not any(len(c) > 2000 for c in seen)
    with make() as it:  # resuming is exact with replacements in the stream
        it.set_state({**state, "next_batch": 1})
        again = [next(it) for _ in range(4)]
    for x, y in zip(again, ref + more):
        np.testing.assert_array_equal(x["index"], y["index"])
        np.testing.assert_array_equal(x["image"], y["image"])


def test_unusable_source_stops_with_a_clear_error(tmp_path, tok):
    (tmp_path / "t.csv").write_text("filepath,title\n" + "nope.jpg,a cat\n" * 5)
    src = data.get_source(f"csv:{tmp_path}/t.csv", "train", image_size=SIZE)
    it = data.make_train_iterator(
        src, tokenizer=tok, global_batch_size=2, seed=0, process_index=0, process_count=1
    )
    with pytest.raises(Exception, match=r"yields nothing usable.*missing_file") as e:
        next(it)
    assert "t.csv" in str(e.value)
    it.close()


def test_eval_masks_bad_examples(tmp_path, tok):
    path = _bad_table(tmp_path)
    src = data.get_source(f"csv:{path}", "test", image_size=SIZE)
    batches = data.make_eval_batches(
        src, tokenizer=tok, batch_size=8, process_index=0, process_count=1
    )
    out = list(batches)
    mask = np.concatenate([b["mask"] for b in out])
    assert mask[:19].tolist() == [True] * 10 + [False] * 5 + [True] * 4
    assert not mask[19:].any()
    assert batches.skipped["undecodable_image"] == 2 and batches.skipped["missing_file"] == 1
    # eval crop: resize shortest side + center crop of a 24x20 image -> SIZE x SIZE
    assert out[0]["image"].shape == (8, SIZE, SIZE, 3)


# --- tfds ------------------------------------------------------------------------------------
def test_tfds_builder_and_source_without_tensorflow(tmp_path, tok):
    import sys

    path, _ = make_table(tmp_path, n=8, label=True)
    from alignjax.data import csv_source

    table = csv_source.read_table(path, "csv")
    for r in table:
        r["filepath"] = str(tmp_path / r["filepath"])
        r["label"] = int(r["label"])
    builder = data.ImageTextFolder(
        name="tiny_pairs",
        rows_by_split={"train": table[:6], "test": table[6:]},
        classnames=["a", "b", "c"],
        data_dir=str(tmp_path / "tfds"),
    )
    builder.download_and_prepare()
    assert "tensorflow" not in sys.modules
    src = data.get_source(f"tfds:tiny_pairs?data_dir={tmp_path}/tfds", "train", image_size=SIZE)
    assert len(src) == 6 and src.classnames == ["a", "b", "c"]
    got = {}
    for i in range(6):
        ex = src[i]
        n = example_number(ex["image"])
        got[n] = ex
        assert ex["captions"] == [f"photo {n}"] and ex["labels"] == {"label": n % 3}
    assert sorted(got) == list(range(6))
    test = data.get_source(f"tfds:tiny_pairs?data_dir={tmp_path}/tfds", "test", image_size=SIZE)
    (b,) = data.make_eval_batches(
        test, tokenizer=tok, batch_size=2, process_index=0, process_count=1
    )
    assert sorted(b["label_label"].tolist()) == [0, 1]  # rows 6 and 7


# --- mixtures --------------------------------------------------------------------------------
def test_mixture_weights_are_exact_per_block(tmp_path):
    a, _ = make_table(tmp_path, n=10, name="a")
    b, _ = make_table(tmp_path, n=4, name="b")
    src = data.get_source(
        f"mix:0.75*csv:{a};0.25*csv:{b}?caption_key=title", "train", image_size=SIZE, block=8
    )
    assert isinstance(src, data.MixtureSource)
    ids = [int(src[i]["source_id"]) for i in range(len(src))]
    assert len(src) % 8 == 0 and len(src) >= 14
    for k in range(0, len(src), 8):
        assert ids[k : k + 8].count(0) == 6
    firsts = [src.locate(i) for i in range(len(src)) if src.locate(i)[0] == 0]
    assert sorted({j for _, j in firsts}) == list(range(10))  # every row of a is used
    with pytest.raises(ValueError, match="positive"):
        data.get_source(f"mix:0*csv:{a}", "train")


def test_tfds_label_only_dataset_gets_template_captions(tmp_path, tok):
    """A cifar10-like TFDS dataset (image + ClassLabel, no text): captions from the template,
    labels for the zero-shot evaluator."""
    import tensorflow_datasets as tfds

    class TinyLabels(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            features = {
                "image": tfds.features.Image(encoding_format="png"),
                "label": tfds.features.ClassLabel(names=["cat", "dog"]),
            }
            return tfds.core.DatasetInfo(
                builder=self, features=tfds.features.FeaturesDict(features)
            )

        def _split_generators(self, dl_manager):
            return {"test": self._generate_examples()}

        def _generate_examples(self):
            for i in range(4):
                yield str(i), {"image": image_bytes(i, "PNG"), "label": i % 2}

    with tfds.core.registered.skip_registration():
        builder_cls = type("TinyLabels", (TinyLabels,), {"name": "tiny_labels"})
    builder_cls(data_dir=str(tmp_path), file_format="array_record").download_and_prepare()
    src = data.get_source(f"tfds:tiny_labels?data_dir={tmp_path}&template=a {{}}.", "test")
    by_number = {example_number(src[i]["image"]): src[i] for i in range(4)}
    assert by_number[1]["caption"] == "a dog." and by_number[1]["labels"] == {"label": 1}
    assert by_number[2]["caption"] == "a cat." and src.classnames == ["cat", "dog"]
