"""Bad data is named in the log: each unusable example once, with its file and the reason,
and a bounded number per process so a broken shard does not flood the log."""

import pytest
from test_data_sources import make_table

from alignjax import data
from alignjax.data import decode as D


@pytest.fixture
def fresh_log(monkeypatch):
    monkeypatch.setattr(D, "_logged", set())


def test_each_bad_file_logged_once_and_bounded(tmp_path, caplog, fresh_log, monkeypatch):
    monkeypatch.setattr(D, "MAX_LOGGED_SKIPS", 3)
    path, rows = make_table(tmp_path, n=16)
    for i in (1, 4, 6, 9, 12):
        (tmp_path / rows[i]["filepath"]).unlink()
    src = data.get_source(f"csv:{path}", "train", image_size=8)
    tok = data.WordHashTokenizer(vocab_size=64, context_length=8)
    it = data.make_train_iterator(
        src, tokenizer=tok, global_batch_size=4, seed=0, process_index=0, process_count=1
    )
    with caplog.at_level("WARNING", logger="alignjax.data"), it:
        for _ in range(8):  # two epochs: every bad file met at least twice
            next(it)
    lines = [r.getMessage() for r in caplog.records if r.name == "alignjax.data"]
    named = [m for m in lines if m.startswith("data: skipped")]
    assert len(named) == 3 and len(set(named)) == 3, lines
    assert all("missing_file" in m and "/img/" in m for m in named), named
    assert sum("further ones are only counted" in m for m in lines) == 1, lines
    assert it.skipped_counts()["missing_file"] >= 10
