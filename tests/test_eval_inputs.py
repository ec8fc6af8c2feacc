"""Evaluator inputs as users give them: label columns of class names, class names and
templates as command-line strings or files, and the errors for labels that match no class.
(The model is the untrained tiny one: only the label bookkeeping matters here.)"""

import json

import numpy as np
import pytest
import tiny_config
from PIL import Image

from alignjax import config as config_lib
from alignjax import evaluate, train
from alignjax.evaluate import base, classnames

COLORS = ('red', 'green', 'blue')  # Label order; sorted order is blue, green, red.
RGB = np.array([[220, 30, 30], [30, 200, 30], [30, 30, 220]], np.uint8)


@pytest.fixture(scope='module')
def trainer():
    t = train.build_trainer(tiny_config.get_config())
    return t, t.init_fn()


def _evaluators(t, **evals):
    c = tiny_config.get_config()
    for name, ev in evals.items():
        c.evals[name] = ev
    return evaluate.build_evaluators(config_lib.resolve(c), t.model, t.tokenizer, t.mesh)


def _table(path, labels, name='d.csv'):
    """A CSV of flat-colour 16 px PNGs (label i % 3's colour) with the given label column."""
    path.mkdir(exist_ok=True)
    lines = ['filepath,title,label']
    for i, label in enumerate(labels):
        noise = np.random.default_rng(i).integers(-20, 21, size=(16, 16, 3))
        image = np.clip(RGB[i % 3].astype(int) + noise, 0, 255).astype(np.uint8)
        Image.fromarray(image).save(path / f'{i}.png')
        lines.append(f'{i}.png,picture {i},{label}')
    (path / name).write_text('\n'.join(lines) + '\n')
    return f'csv:{path}/{name}?label_key=label'


def test_label_names_are_matched_to_the_class_names(trainer, tmp_path):
    """A label column of names gives the same metrics as integer labels in class-name
    order (it was numbered in sorted order: blue=0, ..., silently wrong accuracy)."""
    t, state = trainer
    truth = [i % 3 for i in range(12)]
    # Names as people write them: case and spaces differ from the class names.
    written = {0: 'red', 1: 'Green', 2: ' blue '}
    names = _table(tmp_path / 'names', [written[y] for y in truth])
    ints = _table(tmp_path / 'ints', truth)
    common = dict(type='zeroshot', classnames=list(COLORS), batch_size=8)
    by_name, by_id = _evaluators(t, a=dict(data=names, **common), b=dict(data=ints, **common))
    emb = by_name.split.embed(state.params, with_text=False)
    np.testing.assert_array_equal(by_name.class_ids('', emb.labels), truth)
    m_name, m_id = by_name.run(state.params), by_id.run(state.params)
    for k, v in m_id.items():
        assert m_name[k.replace('/b/', '/a/')] == pytest.approx(v), k
    # The sorted numbering would have scored differently: the check above can fail.
    (w,) = by_id.class_embeddings(state.params, '')
    sorted_ids = [sorted(COLORS).index(COLORS[y]) for y in truth]
    wrong = evaluate.zero_shot_metrics(emb.image @ w.T, np.asarray(sorted_ids))
    assert wrong['acc1'] != pytest.approx(m_id['zeroshot/b/acc1'])


def test_label_names_that_match_no_class_are_refused(trainer, tmp_path):
    t, _ = trainer
    data = _table(tmp_path, ['red', 'green', 'blue', 'purple'])
    with pytest.raises(ValueError) as e:
        _evaluators(t, a=dict(type='zeroshot', data=data, classnames='red,green,yellow'))
    msg = str(e.value)
    assert "evals.a: the labels ['blue', 'purple'] of csv:" in msg
    assert "class names of classnames='red,green,yellow'" in msg and '\n' not in msg


def test_integer_labels_beyond_the_class_names_are_refused(trainer, tmp_path):
    t, state = trainer
    data = _table(tmp_path, [0, 1, 2, 3])
    (ev,) = _evaluators(t, a=dict(type='zeroshot', data=data, classnames='red,green,blue'))
    with pytest.raises(ValueError, match=r"span \[0, 3\] but there are 3 class names"):
        ev.run(state.params)


def test_linear_probe_numbers_named_labels_by_the_train_split(trainer, tmp_path):
    """Per-split tables with different name sets: the scored split's names are numbered as
    in the train split (sorted per table, 'green' was 0 in one and 1 in the other)."""
    t, state = trainer
    _table(tmp_path, [COLORS[i % 3] for i in range(12)], 'train.csv')
    _table(tmp_path, ['green', 'red'] * 3, 'test.csv')  # images: red, green, blue, ...
    common = dict(type='linear_probe', data=f'csv:{tmp_path}/{{split}}.csv?label_key=label')
    (ev,) = _evaluators(t, lp=dict(max_iters=50, weight_decays=(1e-3,), batch_size=8, **common))
    test = ev.test.embed(state.params, with_text=False)
    # Sorted within the test table: green=0, red=1; in the train table: blue=0, green=1, red=2.
    np.testing.assert_array_equal(test.labels['label_label'], [0, 1] * 3)
    ev.run(state.params)
    train_names = ev.train.source.classnames
    ids = base.class_ids(
        test.labels['label_label'], ev.test.source, train_names, 'x', 'w', 'label_label', 'd'
    )
    np.testing.assert_array_equal(ids, [1, 2] * 3)
    _table(tmp_path, ['green', 'violet'], 'test.csv')
    (ev,) = _evaluators(t, lp=dict(max_iters=5, batch_size=8, **common))
    with pytest.raises(ValueError, match=r"labels \['violet'\].*the train split 'train'"):
        ev.run(state.params)


def test_command_line_strings_configure_an_evaluator(trainer, tmp_path):
    """`--config.evals.NAME.FIELD=VALUE` gives new fields as strings: each is read as its
    field's type; class names and templates as inline lists or files."""
    t, state = trainer
    data = _table(tmp_path, [COLORS[i % 3] for i in range(9)])
    (ev,) = _evaluators(
        t,
        a=dict(
            type='zeroshot',
            data=data,
            num_examples='6',
            batch_size='4',
            cache='false',
            every_steps='0',
            classnames='red, green ,blue',
            templates='a {}, shown.|{}',
        ),
    )
    assert (ev.cfg.num_examples, ev.cfg.batch_size, ev.cfg.cache) == (6, 4, False)
    assert ev.tasks['']['classnames'] == list(COLORS)
    assert ev.tasks['']['templates'] == ['a {}, shown.', '{}']
    assert set(ev.run(state.params)) == {
        f'zeroshot/a/{k}' for k in ('acc1', 'acc5', 'mean_per_class_recall')
    }
    (ev,) = _evaluators(
        t, s=dict(type='zeroshot', tasks='shape,size', num_examples='8', batch_size=8)
    )
    assert list(ev.tasks) == ['shape', 'size']
    with pytest.raises(ValueError, match=r"evals.s.cache='maybe': expected true or false"):
        _evaluators(t, s=dict(type='zeroshot', cache='maybe'))


def test_classnames_and_templates_from_files_and_inline_lists(tmp_path):
    (tmp_path / 'names.json').write_text(json.dumps(['cat', 'dog']))
    (tmp_path / 'names.txt').write_text('\ufeffcat\n\ndog\n')  # a byte-order mark, a gap
    assert classnames.get_classnames(str(tmp_path / 'names.json')) == ['cat', 'dog']
    assert classnames.get_classnames(str(tmp_path / 'names.txt')) == ['cat', 'dog']
    assert classnames.get_classnames('cat,dog') == ['cat', 'dog']
    assert classnames.get_templates('a photo of a {}.') == ['a photo of a {}.']
    with pytest.raises(ValueError, match="separate them with '[|]'"):
        classnames.get_templates('a photo of a {}, a pet.')
    with pytest.raises(ValueError, match='does not exist'):
        classnames.get_classnames(str(tmp_path / 'nope.txt'))
    (tmp_path / 'bad.json').write_text('{"cat": 0}')
    with pytest.raises(ValueError, match='JSON list of strings'):
        classnames.get_classnames(str(tmp_path / 'bad.json'))
