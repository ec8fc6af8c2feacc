"""Pictures in the workdir and the one-page report: what is drawn is what was measured, and
every picture of the page loads (in headless Chromium where it is installed)."""

import base64
import io
import os
import re
import shutil
import subprocess

import numpy as np
import pytest
import tiny_config
from PIL import Image

from alignjax import plots, report, restore, scoring, train
from alignjax import workdir as workdir_lib
from alignjax.config import resolve
from alignjax.evaluate import __main__ as evaluate_cli
from alignjax.evaluate import evaluators as evaluators_lib
from alignjax.evaluate import retrieval

TASKS = ('shape', 'color')
EVALS = dict(
    shapes=dict(type='zeroshot', split='test', num_examples=48, batch_size=16, tasks=TASKS),
    pairs=dict(type='retrieval', split='test', num_examples=48, batch_size=16),
)


@pytest.fixture(scope='module')
def run(tmp_path_factory):
    """A 4-step tiny run with pictures on, evaluated at steps 2 and 4."""
    c = tiny_config.get_config()
    c.total_steps = c.checkpoint_every_steps = 4
    c.eval_every_steps = 2
    c.log.pictures = True
    c.evals = EVALS
    workdir = str(tmp_path_factory.mktemp('pictures'))
    summary = train.train_and_evaluate(c, workdir)
    return workdir, summary


def _png(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()  # decodes every byte: a truncated file fails here
    assert img.format == 'PNG' and min(img.size) > 50
    return img


def test_every_evaluation_draws_each_evaluators_pictures_and_the_curves(run):
    workdir, _ = run
    root = os.path.join(workdir, workdir_lib.PICTURES_DIR)
    want = {
        f'zeroshot_shapes_{t}_{kind}.png' for t in TASKS for kind in ('confusion', 'predictions')
    }
    want.add('retrieval_pairs_similarity.png')
    for step in (2, 4):
        files = set(os.listdir(os.path.join(root, f'step_{step}')))
        assert files == want
        for f in files:
            with open(os.path.join(root, f'step_{step}', f), 'rb') as fh:
                _png(fh.read())
    with open(os.path.join(root, workdir_lib.CURVES_FILE), 'rb') as fh:
        _png(fh.read())


def test_the_confusion_matrix_is_the_measured_accuracy(run):
    """The drawn predictions are the evaluator's: the confusion matrix's diagonal share is
    the zero-shot acc1 it logged, for a task with prototypes (shape) and one without."""
    workdir, summary = run
    loaded = restore.load_run(None, workdir)
    c = resolve(loaded.config)
    evaluators = evaluators_lib.build_evaluators(c, loaded.model, loaded.tokenizer, loaded.mesh)
    [ev] = [e for e in evaluators if e.name == 'shapes']
    emb = ev.split.embed(loaded.params, with_text=False)
    for t in TASKS:
        labels = ev.class_ids(t, emb.labels)
        top = ev.top_classes(loaded.params, t, emb.image)
        assert top.shape == (48, 3)
        counts = plots.confusion_matrix(labels, top[:, 0], len(ev.tasks[t]['classnames']))
        assert counts.sum() == 48
        acc = np.trace(counts) / 48
        assert acc == pytest.approx(summary[f'zeroshot/shapes_{t}/acc1'])


def test_a_tokenwise_scorer_draws_each_words_patch_similarities(run, tmp_path):
    """FILIP-style pictures: one heat map per caption word, the similarities of that word's
    token to every patch token, on the patch grid."""
    workdir, _ = run
    loaded = restore.load_run(None, workdir)
    c = resolve(loaded.config)
    c.evals = dict(pairs=EVALS['pairs'])
    scorers = (scoring.GLOBAL, scoring.tokenwise_scorer())
    [ev] = evaluators_lib.build_evaluators(c, loaded.model, loaded.tokenizer, loaded.mesh, scorers)
    ev.run(loaded.params)
    files = ev.pictures(loaded.params, str(tmp_path))
    assert [os.path.basename(f) for f in files] == [
        'retrieval_pairs_similarity.png',
        'retrieval_pairs@tokenwise_words.png',
    ]
    _png(open(files[1], 'rb').read())
    # The maps are the token dot products, on the 4 x 4 patch grid of a 16 px image.
    emb = ev.split.embed(loaded.params, with_text=True)
    caption = ev.split.source[0]['caption']
    words, maps = ev.word_maps(emb.features['tokenwise'], [0], [caption])
    assert words[0] == loaded.tokenizer.words(caption)[: len(words[0])] and words[0]
    img, txt = emb.features['tokenwise']
    keep, _ = retrieval.token_names(loaded.tokenizer, caption, loaded.tokenizer([caption])[0])
    want = txt['tokens'][0][keep[: len(words[0])]] @ img['tokens'][0].T
    np.testing.assert_allclose(maps[0], want.reshape(-1, 4, 4), rtol=1e-6)


def test_curves_show_the_evaluation_metrics_that_were_logged(run):
    workdir, _ = run
    keys = plots.eval_curve_keys(workdir_lib.read_metrics(workdir))
    assert 'zeroshot/shapes_shape/acc1' in keys
    assert 'retrieval/pairs/image_retrieval_recall@1' in keys
    assert not any('@' in k.split('/')[1] for k in keys)  # scorer variants left out


def test_re_evaluating_a_checkpoint_draws_its_pictures_where_asked(run, tmp_path):
    workdir, _ = run
    ckpt, step = evaluate_cli.locate_checkpoint(None, workdir, 4)
    config = evaluate_cli.choose_config(None, workdir, ckpt, step)
    out = str(tmp_path / 'again')
    step, _ = evaluate_cli.run_evaluators(config, ckpt, step, ['pairs'], pictures_dir=out)
    assert step == 4
    files = os.listdir(os.path.join(out, workdir_lib.PICTURES_DIR, 'step_4'))
    assert files == ['retrieval_pairs_similarity.png']  # only the evaluator asked for


def _images(page: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([^"]+)"', page)]


def test_the_report_embeds_every_picture_the_metrics_and_the_config(run, tmp_path):
    workdir, summary = run
    out = report.build_report(workdir, str(tmp_path / 'r.html'))
    page = open(out).read()
    images = _images(page)
    assert len(images) == 6  # curves + the newest step's 5
    for data in images:
        _png(data)
    assert (
        'zeroshot/shapes_shape/acc1' in page
        and f'{summary["zeroshot/shapes_shape/acc1"]:.4f}' in page
    )
    assert '&quot;total_steps&quot;: 4' in page  # the config, escaped
    assert 'step 4' in page


def test_a_run_without_pictures_still_gets_a_report_and_a_bad_path_one_line(run, tmp_path):
    workdir = str(tmp_path / 'plain')
    shutil.copytree(run[0], workdir)
    shutil.rmtree(os.path.join(workdir, workdir_lib.PICTURES_DIR))
    page = open(report.build_report(workdir)).read()
    assert 'No pictures were drawn' in page and 'config.log.pictures=True' in page
    assert 'retrieval/pairs/image_retrieval_recall@1' in page and not _images(page)
    with pytest.raises(SystemExit, match='no config.json: it is not a training workdir'):
        report.main([str(tmp_path)])


def _chromium():
    return shutil.which('chromium') or shutil.which('chromium-browser') or shutil.which(
        'google-chrome')  # fmt: skip


@pytest.mark.skipif(
    _chromium() is None,
    reason='no headless Chromium on this machine (Debian: apt-get install chromium; .ci/run '
    'installs it where it runs as root with apt)',
)
def test_every_image_loads_in_headless_chromium(run, tmp_path):
    workdir, _ = run
    out = report.build_report(workdir, str(tmp_path / 'r.html'))
    dom = subprocess.run(
        [_chromium(), '--headless', '--no-sandbox', '--disable-gpu', '--virtual-time-budget=10000',
         '--dump-dom', f'file://{out}'],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout  # fmt: skip
    assert re.search(r'data-images="(\d+)/(\d+)"', dom), dom[-500:]
    ok, total = map(int, re.search(r'data-images="(\d+)/(\d+)"', dom).groups())
    assert total == 6 and ok == total
