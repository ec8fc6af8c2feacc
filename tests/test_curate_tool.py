"""`python -m alignjax.curate` end to end, on WebDataset shards generated here.

The raw data: 48 shapes images with captions, into which are planted exact copies of 6 of
them (under new keys), one empty caption and one corrupt image. A tiny randomly initialised
model (an alignjax export) embeds them: its CLIP scores mean nothing, but an exact copy has
the same embedding as its original, so duplicates are found whatever the model, and the
scores the tool records can be checked against the model's own embeddings.

Checked: the manifest (one row per example, the planted reasons and duplicate groups, the
recorded scores equal to `load_pretrained(...).encode_*`), the shards (readable as `wds:`,
the kept examples in source order, with their captions), the recaption hook (replace and
add), a rerun with other settings refused, a run killed mid-way and rerun giving the same
bytes, and 2 processes giving the same bytes as 1. The selection's behaviour on planted
mismatched captions is checked on embeddings made up for it (`select` is a pure function
of the scan).
"""

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from PIL import Image

import alignjax
from alignjax import models
from alignjax.curate import rules, tool
from alignjax.data import sources
from alignjax.data.synthetic import ShapesDataset
from alignjax.interop.common import Converted
from alignjax.pretrained import save_converted

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = dict(
    embed_dim=16,
    image=dict(variant=None, patch_size=8, width=32, depth=1, mlp_dim=64, num_heads=2,
               pool='gap'),
    text=dict(width=32, depth=1, mlp_dim=64, num_heads=2, vocab_size=256, context_length=8),
)  # fmt: skip
N_BASE = 48
COPIES = (3, 7, 11, 20, 30, 41)  # Base indices whose exact copies are appended.
EMPTY, CORRUPT = 5, 9  # Base indices given an empty caption / undecodable image bytes.


@pytest.fixture(scope='module')
def model_dir(tmp_path_factory):
    model = models.build(MODEL)
    v = jax.jit(model.init)(
        jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)), jnp.zeros((1, 8), jnp.int32)
    )
    conv = Converted(
        model_config=MODEL,
        params=jax.tree.map(np.asarray, nn.meta.unbox(v)['params']),
        preprocess=dict(size=32, resize_mode='center', interpolation='bilinear',
                        mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25]),
        tokenizer=dict(name='word_hash', vocab_size=256, context_length=8),
    )  # fmt: skip
    out = str(tmp_path_factory.mktemp('model'))
    save_converted(conv, out)
    return out


def _png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format='PNG')
    return buf.getvalue()


def _write_tar(path: str, samples) -> None:
    with tarfile.open(path, 'w') as tar:
        for key, members in samples:
            for ext, payload in members.items():
                info = tarfile.TarInfo(f'{key}.{ext}')
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))


@pytest.fixture(scope='module')
def raw(tmp_path_factory):
    """Two shards of raw samples; returns (source spec, keys in source order)."""
    ds = ShapesDataset('val', image_size=32, num_examples=N_BASE)
    samples = []
    for i in range(N_BASE):
        ex = ds[i]
        image = b'\x89PNG garbage' if i == CORRUPT else _png(ex['image'])
        caption = '' if i == EMPTY else ex['caption']
        samples.append((f'base{i:03d}', dict(png=image, txt=caption.encode())))
    for i in COPIES:
        samples.append((f'copy{i:03d}', dict(samples[i][1])))
    d = tmp_path_factory.mktemp('raw')
    half = len(samples) // 2
    _write_tar(str(d / '00000.tar'), samples[:half])
    _write_tar(str(d / '00001.tar'), samples[half:])
    return f'wds:{d}/{{00000..00001}}.tar', [k for k, _ in samples]


def _args(raw, model_dir, output, *extra):
    return [
        '--source', raw[0], '--model', model_dir, '--output', str(output),
        '--drop_empty', '--dedup', 'exact', '--dedup_threshold', '0.99999',
        '--clip_keep_fraction', '0.9', '--chunk_size', '16', '--shard_size', '10',
        '--batch_size', '16', '--subset_fraction', '0.75', '--subset_clusters', '4', *extra,
    ]  # fmt: skip


def _shard_bytes(output) -> dict[str, bytes]:
    d = os.path.join(output, tool.SHARD_DIR)
    out = {}
    for name in sorted(os.listdir(d)):
        with open(os.path.join(d, name), 'rb') as f:
            out[name] = f.read()
    return out


@pytest.fixture(scope='module')
def reference(raw, model_dir, tmp_path_factory):
    output = tmp_path_factory.mktemp('curated')
    summary = tool.main(_args(raw, model_dir, output))
    return output, summary, tool.read_manifest(str(output))


def test_manifest_names_every_example_and_the_planted_reasons(raw, reference):
    _, summary, rows = reference
    keys = raw[1]
    assert [r['index'] for r in rows] == list(range(54))
    # An example the source cannot read has no key to give: it is named by its index.
    assert [r['key'] for r in rows] == keys[:CORRUPT] + [f'{CORRUPT:09d}'] + keys[CORRUPT + 1 :]
    by_key = {r['key']: r for r in rows}
    assert by_key[f'base{EMPTY:03d}']['reason'] == 'caption_empty'
    assert by_key[f'{CORRUPT:09d}']['reason'] == 'unreadable_undecodable_image'
    deduplicated = 0
    for i in COPIES:
        a, b = by_key[f'base{i:03d}'], by_key[f'copy{i:03d}']
        assert a['score'] == b['score']  # The same image and caption.
        if 'clip_score' not in (a['reason'], b['reason']):  # Both reached deduplication.
            # Same score: the lower index represents the group.
            assert a['group'] == b['group'] == a['index'], (a, b)
            assert b['reason'] == 'duplicate' and a['reason'] in (None, 'subset')
            deduplicated += 1
    assert deduplicated >= 3
    others = [r for r in rows if r['key'].startswith('base') and r['reason'] == 'duplicate']
    assert all(int(r['key'][4:]) in COPIES for r in others)  # No false duplicate.
    assert summary['kept'] == sum(r['kept'] for r in rows)
    assert summary['reasons']['clip_score'] == 52 - round(0.9 * 52)  # 52 pass the rules.
    survivors = 52 - summary['reasons']['clip_score'] - summary['reasons']['duplicate']
    assert summary['kept'] == round(0.75 * survivors)
    clustered = [r for r in rows if r['cluster'] >= 0]
    assert len(clustered) == survivors and {r['cluster'] for r in clustered} <= {0, 1, 2, 3}


def test_recorded_scores_are_the_models_cosines(raw, model_dir, reference):
    _, _, rows = reference
    source = sources.get_source(raw[0], 'train')
    clip = alignjax.load_pretrained(model_dir)
    scored = [r for r in rows if r['score'] is not None][:8]
    zimg = clip.encode_image([source[r['index']]['image'] for r in scored])
    ztxt = clip.encode_text([source[r['index']]['caption'] for r in scored])
    np.testing.assert_allclose([r['score'] for r in scored], np.sum(zimg * ztxt, -1), atol=2e-5)


def test_shards_hold_the_kept_examples_in_source_order(raw, reference):
    output, summary, rows = reference
    kept = [r for r in rows if r['kept']]
    assert summary['shards'] == -(-len(kept) // 10)
    written = sources.get_source(summary['spec'], 'train')
    original = sources.get_source(raw[0], 'train')
    assert len(written) == len(kept)
    for j, r in enumerate(kept):
        ex = written[j]
        assert ex['key'] == r['key'] and ex['caption'] == original[r['index']]['caption']
        assert ex['image'].shape == (32, 32, 3)
    assert summary == json.load(open(os.path.join(output, tool.SUMMARY_FILE)))


@pytest.mark.parametrize('mode', ['replace', 'add'])
def test_recaption_hook(raw, model_dir, reference, tmp_path, mode):
    _, _, rows = reference
    first = next(r for r in rows if r['kept'])
    captions = tmp_path / 'long.jsonl'
    captions.write_text(json.dumps(dict(key=first['key'], caption='a long new caption')) + '\n')
    output = tmp_path / 'out'
    summary = tool.main(
        _args(raw, model_dir, output, '--recaption', str(captions), '--recaption_mode', mode)
    )
    default = sources.get_source(summary['spec'], 'train')[0]
    original = sources.get_source(raw[0], 'train')[first['index']]['caption']
    if mode == 'replace':
        assert default['caption'] == 'a long new caption'
    else:
        assert default['caption'] == original
        new = sources.get_source(summary['spec'] + '?caption_key=recaption', 'train')[0]
        assert new['caption'] == 'a long new caption'


def test_bad_recaption_file_and_changed_settings_are_refused(raw, model_dir, reference, tmp_path):
    output, _, _ = reference
    with pytest.raises(ValueError, match='dedup_threshold'):
        tool.main(_args(raw, model_dir, output, '--dedup_threshold', '0.9'))
    bad = tmp_path / 'bad.jsonl'
    bad.write_text('{"key": "base000", "caption": "ok"}\n{"key": "base001", "caption": " "}\n')
    with pytest.raises(ValueError, match=r'bad\.jsonl:2: empty caption'):
        tool.read_recaptions(str(bad))
    with pytest.raises(ValueError, match='--model'):
        tool.Curation(source=raw[0], output=str(tmp_path), dedup='exact')


def _command(raw, model_dir, output, *extra):
    return [sys.executable, '-m', 'alignjax.curate', *_args(raw, model_dir, output, *extra)]


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_shards(raw, model_dir, reference, tmp_path):
    output = tmp_path / 'killed'
    proc = subprocess.Popen(_command(raw, model_dir, output), cwd=REPO)
    first_chunk = output / tool.SCAN_DIR / 'chunk_000000.npz'
    deadline = time.monotonic() + 120
    while not first_chunk.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert first_chunk.exists()
    tool.main(_args(raw, model_dir, output))  # The same command again.
    assert _shard_bytes(output) == _shard_bytes(reference[0])
    assert tool.read_manifest(str(output)) == reference[2]


@pytest.mark.slow
def test_two_processes_write_what_one_writes(raw, model_dir, reference, tmp_path):
    output = tmp_path / 'two'
    procs = [
        subprocess.Popen(
            _command(raw, model_dir, output, '--num_processes', '2', '--process_id', str(p)),
            cwd=REPO,
        )
        for p in (0, 1)
    ]
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    assert _shard_bytes(output) == _shard_bytes(reference[0])
    assert tool.read_manifest(str(output)) == reference[2]


def test_select_keeps_the_matching_pairs_of_planted_mismatches():
    """Matching pairs: text = image + small noise; mismatched: another image's text."""
    rng = np.random.default_rng(0)
    n, d = 200, 32
    zimg = rng.normal(size=(n, d)).astype(np.float32)
    zimg /= np.linalg.norm(zimg, axis=1, keepdims=True)
    ztxt = zimg + 0.3 * rng.normal(size=(n, d)).astype(np.float32) / np.sqrt(d)
    planted = rng.choice(n, 40, replace=False)
    ztxt[planted] = ztxt[np.roll(planted, 1)]  # Captions of other images.
    ztxt /= np.linalg.norm(ztxt, axis=1, keepdims=True)
    scanned = dict(
        index=np.arange(n), key=np.array([str(i) for i in range(n)]),
        reason=np.array([''] * n), image_emb=zimg, text_emb=ztxt,
    )  # fmt: skip
    cur = tool.Curation(source='synthetic:shapes', output='/unused', model='m',
                        clip_keep_fraction=0.8)  # fmt: skip
    out = tool.select(cur, scanned)
    dropped = set(np.flatnonzero(out['reason'] == 'clip_score'))
    assert dropped == set(planted.tolist())
    assert isinstance(cur.rules, rules.Rules)
