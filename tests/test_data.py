"""The shapes dataset, sources, transforms and the grain pipelines."""

import collections
import json
import pickle
import re

import numpy as np
import pytest
from absl import flags

from alignjax import data
from alignjax.data import synthetic

# Read inside grain workers by _FlagReadingTokenizer: without the pipeline's worker set-up,
# spawned workers raise absl's UnparsedFlagAccessError.
_TEST_FLAG = flags.DEFINE_integer(
    "alignjax_test_data_flag", 7, "Test-only flag read in grain workers."
)

IMG = 16  # pipeline tests use tiny images


class _FlagReadingTokenizer:
    """Module-level (spawn-picklable) tokenizer that reads an absl flag when called."""

    def __init__(self, tok):
        self.tok = tok

    def __call__(self, texts):
        assert flags.FLAGS.alignjax_test_data_flag == 7
        return self.tok(texts)


@pytest.fixture(scope="module")
def tok():
    return data.WordHashTokenizer(vocab_size=4096, context_length=16)


def _words(caption):
    return re.findall(r"\w+", caption.lower())


def _mentions(caption, phrases):
    text = " " + " ".join(_words(caption)) + " "
    return any(" " + " ".join(_words(p)) + " " in text for p in phrases)


# --- ShapesDataset -------------------------------------------------------------------------
def test_example_format_and_determinism():
    ds = data.ShapesDataset("train", image_size=32, seed=3)
    ex = ds[5]
    assert set(ex) == {"image", "caption", "labels"}
    assert ex["image"].shape == (32, 32, 3) and ex["image"].dtype == np.uint8
    assert isinstance(ex["caption"], str) and ex["caption"]
    assert set(ex["labels"]) == set(data.ATTRIBUTES)
    again = data.ShapesDataset("train", image_size=32, seed=3)[5]
    np.testing.assert_array_equal(ex["image"], again["image"])
    assert ex["caption"] == again["caption"] and ex["labels"] == again["labels"]
    other_seed = data.ShapesDataset("train", image_size=32, seed=4)
    assert any(not np.array_equal(other_seed[i]["image"], ds[i]["image"]) for i in range(3))
    assert len(ds) == 1_000_000 and len(data.ShapesDataset("test")) == 2000
    assert len(data.ShapesDataset("test", num_examples=10)) == 10
    np.testing.assert_array_equal(ds[-1]["image"], ds[len(ds) - 1]["image"])
    with pytest.raises(IndexError):
        ds[len(ds)]
    with pytest.raises(ValueError, match="valid splits"):
        data.ShapesDataset("validation")
    pickle.loads(pickle.dumps(ds))  # grain workers receive it pickled


def test_held_out_pairs():
    held = data.ShapesDataset.held_out_pairs()
    shapes, colors = data.ATTRIBUTES["shape"], data.ATTRIBUTES["color"]
    assert 0.15 <= len(held) / (len(shapes) * len(colors)) <= 0.3
    seen = {(s, c) for s in shapes for c in colors} - set(held)
    assert {s for s, _ in seen} == set(shapes) and {c for _, c in seen} == set(colors)

    train = data.ShapesDataset("train", seed=0)
    train_pairs = set()
    for i in range(0, 600_000, 200):  # 3000 indices spread over the split
        lab = train[i]["labels"]
        train_pairs.add((shapes[lab["shape"]], colors[lab["color"]]))
    assert not train_pairs & set(held)
    assert train_pairs == seen  # every seen pair does occur

    test = data.ShapesDataset("test", seed=0)
    test_pairs = set()
    for i in range(600):
        lab = test[i]["labels"]
        test_pairs.add((shapes[lab["shape"]], colors[lab["color"]]))
    assert test_pairs == set(held)


def test_all_classes_occur_and_captions_mention_attributes():
    ds = data.ShapesDataset("train", seed=1)
    counts = {a: collections.Counter() for a in data.ATTRIBUTES}
    mentioned = collections.Counter()
    n = 1500
    for i in range(n):
        ex = ds[i]
        cap = ex["caption"]
        for attr, k in ex["labels"].items():
            counts[attr][k] += 1
        lab = {a: data.ATTRIBUTES[a][k] for a, k in ex["labels"].items()}
        words = {
            "color": synthetic._COLOR_WORDS,
            "size": synthetic._SIZE_WORDS,
            "position": synthetic._POSITION_WORDS,
            "shape": {
                s: [w for pair in ws for w in pair] for s, ws in synthetic._SHAPE_WORDS.items()
            },
        }
        for attr, table in words.items():
            right = _mentions(cap, table[lab[attr]])
            wrong = [c for c, ws in table.items() if c != lab[attr] and _mentions(cap, ws)]
            assert not wrong, f"{cap!r} mentions {wrong} but {attr} is {lab[attr]}"
            mentioned[attr] += right
        two = lab["count"] == "two"
        assert _mentions(cap, ["two", "pair"]) == two, cap
    for attr, names in data.ATTRIBUTES.items():
        assert set(counts[attr]) == set(range(len(names))), attr
        assert min(counts[attr].values()) > n / len(names) / 2, (attr, counts[attr])
    for attr in ("color", "shape"):
        assert 0.9 < mentioned[attr] / n < 1.0, (attr, mentioned[attr])
    for attr in ("size", "position"):  # mostly mentioned, sometimes not
        assert 0.75 < mentioned[attr] / n < 0.95, (attr, mentioned[attr])


def test_captions_fit_default_context_length(tok):
    ds = data.ShapesDataset("train", seed=2)
    lengths = [(tok(ds[i]["caption"])[0] != 0).sum() for i in range(400)]
    assert max(lengths) <= 16 and (tok(ds[0]["caption"])[0] == tok.eos_id).any()


def _object_pixels(img):
    bg = np.median(img.reshape(-1, 3), axis=0)
    return np.abs(img.astype(np.float32) - bg).sum(-1) > 90


def test_images_show_the_labelled_attributes():
    ds = data.ShapesDataset("val", image_size=32, seed=0)
    areas = collections.defaultdict(list)
    for i in range(300):
        ex = ds[i]
        img, lab = ex["image"], ex["labels"]
        mask = _object_pixels(img)
        assert mask.sum() > 10, i
        diff = np.abs(img.astype(np.float32) - np.median(img.reshape(-1, 3), 0)).sum(-1)
        core = diff >= 0.8 * diff.max()  # interior pixels, not antialiased edges
        rgb = np.median(img[core].astype(np.float32), 0)
        nearest = np.argmin(((data.COLOR_RGB - rgb) ** 2).sum(-1))
        assert nearest == lab["color"], (i, rgb, lab)
        ys, xs = np.nonzero(mask)
        assert int(xs.mean() // (32 / 3)) == lab["position"], (i, xs.mean(), lab)
        middle = mask[int(0.4 * 32) : int(0.6 * 32)].sum(1)
        if lab["count"] == 1:
            assert middle.min() == 0, ("pair touches in the middle", i, lab)
        else:
            assert middle.max() > 0, i
        areas[(lab["shape"], lab["count"], lab["size"])].append(mask.sum())
    for (shape, count, size), a in areas.items():
        if size == 0 and (shape, count, 1) in areas:
            assert max(a) < min(areas[(shape, count, 1)]), (shape, count)


def test_caption_colour_rate_and_object_scale_options():
    from alignjax.data import synthetic

    colour_words = {w for ws in synthetic._COLOR_WORDS.values() for w in ws}

    def colour_rate(ds):
        return np.mean([bool(colour_words & set(ds[i]["caption"].split())) for i in range(300)])

    assert colour_rate(data.ShapesDataset("train", 32)) > 0.9
    assert colour_rate(data.get_source("synthetic:shapes?color_mention=0.0", "train")) == 0.0
    assert 0.35 < colour_rate(data.ShapesDataset("train", 32, color_mention=0.5)) < 0.65
    # Same images whatever the captions say; larger objects with object_scale.
    plain, scaled = data.ShapesDataset("val", 32), data.ShapesDataset("val", 32, object_scale=1.15)
    no_colour = data.ShapesDataset("val", 32, color_mention=0.0)
    for i in range(20):
        assert np.array_equal(plain[i]["image"], no_colour[i]["image"])
        assert plain[i]["labels"] == scaled[i]["labels"]
        assert _object_pixels(scaled[i]["image"]).sum() > _object_pixels(plain[i]["image"]).sum()
    with pytest.raises(ValueError, match="probability"):
        data.ShapesDataset("train", 32, color_mention=1.5)
    with pytest.raises(ValueError, match=r"object_scale must be in \[0.5, 1.2\]"):
        data.ShapesDataset("train", 32, object_scale=2.0)


def test_caption_noise_swaps_texts_and_nothing_else():
    clean = synthetic.ShapesDataset('train', num_examples=400, extra_captions=True)
    noisy = synthetic.ShapesDataset('train', num_examples=400, extra_captions=True,
                                    caption_noise=0.3)  # fmt: skip
    texts = collections.defaultdict(set)  # (caption, long caption) -> clean indices
    for i in range(400):
        texts[clean[i]['caption'], clean[i]['long_caption']].add(i)
    swapped = 0
    for i in range(400):
        a, b = clean[i], noisy[i]
        np.testing.assert_array_equal(a['image'], b['image'])
        assert b['labels'] == dict(a['labels'], noisy_caption=b['labels']['noisy_caption'])
        owners = texts[b['caption'], b['long_caption']]
        if b['labels']['noisy_caption']:
            swapped += 1
            assert owners - {i}, f'{i}: the texts are no other example\'s'
        else:
            assert i in owners
    assert 0.22 < swapped / 400 < 0.38  # Binomial(400, 0.3): 6 std either side.
    again = synthetic.ShapesDataset('train', num_examples=400, caption_noise=0.3)
    assert [again[i]['caption'] for i in range(20)] == [noisy[i]['caption'] for i in range(20)]
    assert 'noisy_caption' not in clean[0]['labels']
    with pytest.raises(ValueError, match='caption_noise'):
        synthetic.ShapesDataset('train', caption_noise=1.0)


def test_zero_shot_tasks():
    tasks = data.ShapesDataset.zero_shot_tasks()
    assert {"shape", "color"} <= set(tasks)
    for name, task in tasks.items():
        attr = task["attribute"]
        assert len(task["classnames"]) == len(data.ATTRIBUTES[attr]), name
        assert task["label_key"] == f"label_{attr}"
        assert task["templates"] and all(t.count("{}") == 1 for t in task["templates"])
    assert tasks["shape"]["classnames"] == list(data.ATTRIBUTES["shape"])
    assert "something {}." in tasks["color"]["templates"]


# --- sources and transforms ----------------------------------------------------------------
def test_get_source():
    src = data.get_source("synthetic:shapes", "test", image_size=IMG, seed=2)
    assert isinstance(src, data.ShapesDataset) and src.image_size == IMG and src.split == "test"
    src = data.get_source("synthetic:shapes?image_size=24&num_examples=7", "train")
    assert (src.image_size, len(src)) == (24, 7)
    with pytest.raises(ValueError, match=r"valid schemes: \[.*'synthetic'.*'wds'\]"):
        data.get_source("parquet:coco_captions", "train")
    with pytest.raises(ValueError, match="valid: \\['shapes'\\]"):
        data.get_source("synthetic:mnist", "train")
    with pytest.raises(ValueError, match="no scheme"):
        data.get_source("shapes", "train")


def test_transforms():
    img = np.array([[[0, 128, 255]]], np.uint8)
    np.testing.assert_allclose(
        data.normalize_image(img, "minus_one_one"), [[[-1, 1 / 255, 1]]], atol=1e-6
    )
    clip = data.normalize_image(img, "clip")
    np.testing.assert_allclose(
        clip[0, 0, 0], -data.OPENAI_CLIP_MEAN[0] / data.OPENAI_CLIP_STD[0], rtol=1e-5
    )
    with pytest.raises(ValueError, match="valid"):
        data.NormalizeImage("imagenet")
    ex = {"image": img, "caption": "a red star", "labels": {"shape": 3}, "index": np.int32(4)}
    tok = data.WordHashTokenizer(context_length=8)
    chain = [
        data.TokenizeText(tok),
        data.NormalizeImage("clip"),
        data.FlattenLabels(),
        data.KeepArrays(),
    ]
    chain = pickle.loads(pickle.dumps(chain))  # spawn-safe
    for t in chain:
        ex = t.map(ex)
    assert set(ex) == {"image", "tokens", "label_shape", "index"}
    assert ex["image"].dtype == np.float32 and ex["tokens"].dtype == np.int32
    np.testing.assert_array_equal(ex["tokens"], tok(["a red star"])[0])
    assert ex["label_shape"] == 3 and ex["label_shape"].dtype == np.int32


# --- train pipeline ------------------------------------------------------------------------
def _train(tok, n=40, gbs=8, seed=0, **kw):
    src = data.ShapesDataset("train", image_size=IMG, seed=0, num_examples=n)
    kw.setdefault("process_index", 0)
    kw.setdefault("process_count", 1)
    return data.make_train_iterator(src, tokenizer=tok, global_batch_size=gbs, seed=seed, **kw)


def _take(it, k):
    return [next(it) for _ in range(k)]


def _assert_batches_equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert set(x) == set(y)
        for key in x:
            np.testing.assert_array_equal(x[key], y[key], err_msg=key)


def test_train_batches_shapes_and_dtypes(tok):
    with _train(tok, normalize="minus_one_one") as it:
        batch = next(it)
    assert set(batch) == {"image", "tokens"}
    assert batch["image"].shape == (8, IMG, IMG, 3) and batch["image"].dtype == np.float32
    assert batch["tokens"].shape == (8, 16) and batch["tokens"].dtype == np.int32
    assert -1.0 <= batch["image"].min() and batch["image"].max() <= 1.0
    assert (batch["tokens"] == tok.eos_id).sum(1).tolist() == [1] * 8
    with _train(tok, normalize="clip", with_metadata=True) as it:
        batch = next(it)
    assert batch["image"].min() < -1.0  # OpenAI normalisation, not [-1, 1]
    assert {"index", "label_shape", "label_color"} <= set(batch)


def test_train_epochs_shuffled_and_deterministic(tok):
    with _train(tok, with_metadata=True) as it:
        batches = _take(it, 10)  # 40 examples / 8 = 5 batches per epoch
    idx = np.stack([b["index"] for b in batches])
    epoch0, epoch1 = idx[:5].ravel(), idx[5:].ravel()
    assert sorted(epoch0) == sorted(epoch1) == list(range(40))  # each epoch: every example once
    assert not np.array_equal(epoch0, epoch1)  # reshuffled
    assert not np.array_equal(epoch0, np.arange(40))
    assert len({tuple(r) for r in idx}) == 10  # different batches at every step
    with _train(tok, with_metadata=True) as it:
        _assert_batches_equal(batches, _take(it, 10))  # same seed: same stream
    with _train(tok, seed=1, with_metadata=True) as it:
        other = np.stack([b["index"] for b in _take(it, 5)])
    assert not np.array_equal(other, idx[:5])


def test_process_slices_are_disjoint_and_complete(tok):
    with _train(tok, gbs=8, with_metadata=True) as it:
        full = _take(it, 6)
    parts = []
    for p in range(2):
        with _train(tok, gbs=8, with_metadata=True, process_index=p, process_count=2) as it:
            parts.append(_take(it, 6))
    for k in range(6):
        a, b = parts[0][k]["index"], parts[1][k]["index"]
        assert len(a) == len(b) == 4
        assert not set(a) & set(b), k
        assert sorted([*a, *b]) == sorted(full[k]["index"]), k
        # the rows are the very same examples, processed identically
        rows = {int(i): r for i, r in zip(full[k]["index"], full[k]["image"])}
        for part in (parts[0][k], parts[1][k]):
            for i, r in zip(part["index"], part["image"]):
                np.testing.assert_array_equal(r, rows[int(i)])


def test_process_defaults_come_from_jax(tok):
    import jax

    src = data.ShapesDataset("train", image_size=IMG, num_examples=40)
    with data.make_train_iterator(src, tokenizer=tok, global_batch_size=8, seed=0) as it:
        assert next(it)["image"].shape[0] == 8 // jax.process_count()
    assert len(data.make_eval_batches(src, tokenizer=tok, batch_size=8, num_examples=16)) == 2


def test_global_batch_not_divisible(tok):
    with pytest.raises(ValueError, match=r"global_batch_size=10 .* process_count=3"):
        _train(tok, gbs=10, process_index=0, process_count=3)


def test_resume_exact_without_workers(tok):
    with _train(tok, with_metadata=True) as it:
        reference = _take(it, 8)
    with _train(tok, with_metadata=True) as it:
        _take(it, 3)
        state = it.get_state_json()
        assert json.loads(state)["next_batch"] == 3
    with _train(tok, with_metadata=True) as it:
        it.set_state_json(state)
        _assert_batches_equal(_take(it, 5), reference[3:])
        # restoring again mid-stream rewinds
        it.set_state(json.loads(state))
        _assert_batches_equal(_take(it, 1), reference[3:4])
    with _train(tok, seed=5) as it:
        with pytest.raises(ValueError, match="seed"):
            it.set_state_json(state)


@pytest.mark.slow
def test_resume_exact_with_two_workers(tok):
    """Worker processes (spawned, reading an absl flag) give the same batches and resume."""
    ftok = _FlagReadingTokenizer(tok)
    with _train(tok, n=48, with_metadata=True) as it:
        reference = _take(it, 7)
    with _train(ftok, n=48, with_metadata=True, num_workers=2) as it:
        _assert_batches_equal(_take(it, 3), reference[:3])
        state = it.get_state()
    json.dumps(state)
    with _train(ftok, n=48, with_metadata=True, num_workers=2) as it:
        it.set_state(state)
        _assert_batches_equal(_take(it, 4), reference[3:])


# --- eval batches --------------------------------------------------------------------------
def test_eval_batches_padding_and_processes(tok):
    src = data.ShapesDataset("test", image_size=IMG, seed=0)
    batches = data.make_eval_batches(
        src, tokenizer=tok, batch_size=16, num_examples=50, process_index=0, process_count=1
    )
    assert len(batches) == 4
    out = list(batches)
    assert len(out) == 4
    assert [int(b["mask"].sum()) for b in out] == [16, 16, 16, 2]
    for b in out:
        assert b["image"].shape == (16, IMG, IMG, 3) and b["image"].dtype == np.float32
        assert b["tokens"].shape == (16, 16) and b["mask"].dtype == bool
        assert {f"label_{a}" for a in data.ATTRIBUTES} <= set(b)
    np.testing.assert_array_equal(
        np.concatenate([b["index"][b["mask"]] for b in out]), np.arange(50)
    )
    last = out[-1]
    assert (last["image"][2:] == 0).all() and (last["tokens"][2:] == 0).all()
    assert last["label_shape"][0] == src[48]["labels"]["shape"]
    np.testing.assert_array_equal(last["tokens"][1], tok([src[49]["caption"]])[0])
    _assert_batches_equal(out, list(batches))  # re-iterable, same batches

    got = []
    for p in range(3):
        part = data.make_eval_batches(
            src, tokenizer=tok, batch_size=8, num_examples=50, process_index=p, process_count=3
        )
        part = list(part)
        assert len(part) == 3  # ceil(ceil(50 / 3) / 8) on every process
        got += [int(i) for b in part for i in b["index"][b["mask"]]]
    assert sorted(got) == list(range(50))
