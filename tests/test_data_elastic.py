"""Elastic resume: a run resumes on another number of processes or data workers and, within
the epoch, sees every example exactly once; the skip counters carry over a resume.

The processes are simulated (``process_index`` / ``process_count`` given to the iterator):
each process's iterator only reads its own share, so running them one after another in
this process is what the hosts of a pod slice do. The checkpoint's part (every process's
state saved; ``Checkpointer._own_data_state`` picks this process's) is covered by calling
the same selection function, ``pipeline.process_state``.
"""

import collections

import pytest
from test_data_sources import example_number, make_table
from test_data_wds import write_shards

from alignjax import checkpoint, data
from alignjax.data import pipeline

SIZE = 16


@pytest.fixture(scope="module")
def tok():
    return data.WordHashTokenizer(vocab_size=4096, context_length=16)


def _ids(batch, stream: bool) -> list[int]:
    if stream:  # wds has no index: the image colour encodes the sample number
        return [example_number((img + 1) * 127.5) for img in batch["image"]]
    return [int(i) for i in batch["index"]]


def _run(src, tok, gbs, processes, steps, states=None, num_workers=0):
    """Runs ``processes`` simulated processes for ``steps`` batches (from the saved
    ``states`` of a previous run, any process count); returns the ids each process saw
    and the states to save."""
    stream = getattr(src, "is_stream", False)
    seen, saved = [], []
    for p in range(processes):
        it = data.make_train_iterator(
            src,
            tokenizer=tok,
            global_batch_size=gbs,
            seed=3,
            process_index=p,
            process_count=processes,
            num_workers=num_workers,
            with_metadata=True,
        )
        if states is not None:
            it.set_state(pipeline.process_state(states, p, processes))
        with it:
            seen.append([i for _ in range(steps) for i in _ids(next(it), stream)])
            saved.append(it.get_state())
    return seen, saved


def _check_resume(src, tok, n, gbs, before, after, first_steps, first_workers=0, workers=0):
    """``before`` processes for ``first_steps`` batches, then ``after`` processes for the
    rest of the epoch: the union is the epoch, each example once, and equals the run that
    never stopped (same batches, only split differently)."""
    steps = n // gbs
    (reference,), _ = _run(src, tok, gbs, 1, steps)
    assert sorted(reference) == list(range(n))  # one epoch, each example once
    first, states = _run(src, tok, gbs, before, first_steps, num_workers=first_workers)
    rest, _ = _run(src, tok, gbs, after, steps - first_steps, states, num_workers=workers)
    seen = [i for part in first + rest for i in part]
    assert sorted(seen) == list(range(n)), collections.Counter(seen).most_common(3)
    # batch by batch, the same examples as the uninterrupted run
    for k in range(steps):
        runs, start = (first, 0) if k < first_steps else (rest, first_steps)
        b = gbs // len(runs)
        got = sorted(i for part in runs for i in part[(k - start) * b : (k - start + 1) * b])
        assert got == sorted(reference[k * gbs : (k + 1) * gbs]), k


@pytest.mark.parametrize("before,after", [(2, 1), (1, 2)])
def test_random_access_resumes_on_another_process_count(tmp_path, tok, before, after):
    path, _ = make_table(tmp_path, n=24)
    src = data.get_source(f"csv:{path}", "train", image_size=SIZE)
    _check_resume(src, tok, n=24, gbs=4, before=before, after=after, first_steps=3)


@pytest.mark.parametrize("before,after", [(2, 1), (1, 2)])
def test_wds_resumes_on_another_process_count(tmp_path, tok, before, after):
    spec = write_shards(tmp_path, [6, 6, 6, 6])  # 4 streams of 6 samples
    src = data.get_source(spec + "?buffer=3", "train", image_size=SIZE)
    assert src.num_streams == 4
    _check_resume(src, tok, n=24, gbs=4, before=before, after=after, first_steps=3)


def test_wds_readers_sharing_a_stream_still_see_each_sample_once(tmp_path, tok):
    """3 processes over 2 streams (3 does not divide 2): streams are read by several
    processes, each decoding only its own positions; the data is still exact."""
    spec = write_shards(tmp_path, [6, 6])
    src = data.get_source(spec + "?buffer=3", "train", image_size=SIZE)
    assert src.readers_per_stream(3) == 3
    _check_resume(src, tok, n=12, gbs=6, before=2, after=3, first_steps=1)


@pytest.mark.slow
@pytest.mark.parametrize("spec_kind", ["csv", "wds"])
def test_resume_from_no_workers_on_two_workers(tmp_path, tok, spec_kind):
    if spec_kind == "csv":
        path, _ = make_table(tmp_path, n=24)
        src = data.get_source(f"csv:{path}", "train", image_size=SIZE)
    else:
        spec = write_shards(tmp_path, [6, 6, 6, 6])
        src = data.get_source(spec + "?buffer=3", "train", image_size=SIZE)
    _check_resume(src, tok, n=24, gbs=4, before=1, after=1, first_steps=2, workers=2)


def test_skip_counts_carry_over_a_resume_on_another_process_count(tmp_path, tok):
    path, rows = make_table(tmp_path, n=16)
    (tmp_path / rows[5]["filepath"]).write_bytes(b"not an image")  # undecodable
    (tmp_path / rows[9]["filepath"]).unlink()  # missing
    src = data.get_source(f"csv:{path}", "train", image_size=SIZE)

    def total(states):
        out = collections.Counter()
        for s in states:
            out.update(s["skipped"])
        return {k: v for k, v in out.items() if v}

    _, (uninterrupted,) = _run(src, tok, 4, 1, steps=8)  # two epochs
    _, states = _run(src, tok, 4, 2, steps=4)  # one epoch: both bad examples met
    assert set(total(states)) == {"undecodable_image", "missing_file"}
    for after in (2, 1):
        _, again = _run(src, tok, 4, after, steps=4, states=states)  # the second epoch
        assert total(again) == total([uninterrupted]), after
    # the checkpoint (saved by 2 processes, restored in this single jax process) sums them
    own = checkpoint.Checkpointer._own_data_state({"process_count": 2, "processes": states})
    assert own["next_batch"] == 4
    assert {k: v for k, v in own["skipped"].items() if v} == total(states)


def test_state_without_skip_counts_restores_to_zero(tok):
    src = data.ShapesDataset("train", image_size=SIZE, num_examples=16)
    it = data.make_train_iterator(
        src, tokenizer=tok, global_batch_size=4, seed=0, process_index=0, process_count=1
    )
    state = it.get_state()
    state.pop("skipped")
    it.set_state({**state, "next_batch": 2})
    assert not any(it.skipped_counts().values())
    it.set_state({**state, "next_batch": 2, "skipped": {"bogus": 1, "missing_file": 2}})
    assert it.skipped_counts()["missing_file"] == 2 and it.next_batch == 2
