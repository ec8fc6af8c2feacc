"""Dataset tools: `python -m alignjax.data.write` (wds, tfds) and `python -m alignjax.data.stats`."""

import json
import os
import subprocess
import sys

import numpy as np
from test_data_sources import example_number, make_table, write_image

from alignjax import data
from alignjax.data import stats, write


def _folder(tmp_path):
    """Class folders with images + .txt captions; one unreadable image."""
    root = tmp_path / "photos"
    for c, cls in enumerate(("cat", "dog")):
        (root / cls).mkdir(parents=True)
        for i in range(3):
            n = 3 * c + i
            write_image(str(root / cls / f"{n}.jpg"), n, size=(40, 30))
            (root / cls / f"{n}.txt").write_text(f"a {cls} number {n}")
    (root / "dog" / "bad.jpg").write_bytes(b"garbage")
    (root / "dog" / "bad.txt").write_text("never read")
    return root


def test_write_wds_from_folder_and_read_back(tmp_path, capsys):
    root = _folder(tmp_path)
    spec = write.main(
        [
            "wds",
            "--input",
            str(root),
            "--output",
            str(tmp_path / "shards"),
            "--shard_size",
            "4",
            "--max_side",
            "20",
        ]
    )
    assert "wrote 6 samples in 2 shards (1 unreadable left out)" in capsys.readouterr().out
    src = data.get_source(spec, "train")
    assert len(src) == 6 and [src.count(i) for i in range(2)] == [4, 2]  # bad.jpg left out
    got = {}
    for i in range(6):
        ex = src[i]
        n = example_number(ex["image"])
        assert ex["caption"] == f"a {'cat' if n < 3 else 'dog'} number {n}"
        assert ex["labels"] == {"label": int(n >= 3)}  # class folders -> labels
        assert min(ex["image"].shape[:2]) == 20  # --max_side re-encoded
        got[n] = ex
    assert sorted(got) == list(range(6))
    assert json.loads((tmp_path / "shards" / "00001_stats.json").read_text())["successes"] == 2


def test_write_tfds_from_csv_in_a_subprocess(tmp_path):
    """The CLI end to end, in a fresh interpreter that must never import TensorFlow."""
    path, _ = make_table(tmp_path, n=10, label=True)
    code = (
        "import sys; from alignjax.data import write; "
        f"write.main(['tfds', '--input', {path!r}, '--output', {str(tmp_path / 'tfds')!r}, "
        "'--name', 'tiny_csv', '--label_key', 'label', '--test_fraction', '0.2']); "
        "assert 'tensorflow' not in sys.modules"
    )
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=repo, check=False, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "train: 8, test: 2" in out.stdout
    src = data.get_source(f"tfds:tiny_csv?data_dir={tmp_path}/tfds", "test", image_size=8)
    assert len(src) == 2 and src.classnames == ["0", "1", "2"]
    nums = sorted(example_number(src[i]["image"]) for i in range(2))
    assert nums == [0, 1]  # the test split is the first 20% of the rows


def test_stats(tmp_path, capsys):
    path, _ = make_table(tmp_path, n=8, label=True)
    with open(path, "a") as f:
        f.write("img/absent.jpg,gone,0\n")
    s = stats.main([f"csv:{path}?label_key=label", "--json", str(tmp_path / "s.json")])
    out = capsys.readouterr().out
    assert s["num_examples"] == 9 and s["usable"] == 8 and s["skipped"] == {"missing_file": 1}
    assert s["caption_words"]["median"] == 2 and s["image_width"]["max"] == 24
    assert s["num_labels"] == 3
    assert "caption_chars" in out and "image_height" in out and "missing_file" in out
    assert json.loads((tmp_path / "s.json").read_text())["usable"] == 8
    s = stats.dataset_stats(data.ShapesDataset("test", image_size=16), max_examples=50)
    assert s["measured"] == 50 and s["image_width"]["min"] == 16
    assert np.isfinite(s["caption_chars"]["mean"])


def test_write_names_images_without_a_caption(tmp_path, capsys):
    root = _folder(tmp_path)
    os.remove(root / "cat" / "1.jpg".replace(".jpg", ".txt"))  # 1.jpg: no caption file
    spec = write.main(["wds", "--input", str(root), "--output", str(tmp_path / "shards")])
    out = capsys.readouterr()
    line = f"write: {root / 'cat' / '1.jpg'} has no caption (no same-named .txt file"
    assert line in out.err and out.err.count("has no caption") == 1
    assert "wrote 5 samples in 1 shards (1 unreadable, 1 without a caption left out)" in out.out
    assert len(data.get_source(spec, "train")) == 5
