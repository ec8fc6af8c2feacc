"""Zero-shot classification: class names x prompt templates -> class embeddings -> ranks.

For class c with templates t_1..t_T (Radford et al. 2021):

  w_c = normalize( (1/T) sum_t normalize(encode_text(t(c))) )          [C, D]
  score(image i, class c) = <zimg_i, w_c>

Metrics (CLIP_benchmark names), from the rank of each image's true class
(`alignjax.evaluate.ranks`, ties to the lower class index):
  acc1, acc5 (k capped at C), mean_per_class_recall (mean over classes present of acc1).

Config (`config.evals.<name>`, type='zeroshot'):
  classnames: None -> the source's own tasks (`source.zero_shot_tasks()`, e.g. the shapes
              data's 'shape', 'color', 'size'; choose with `tasks`, a list or 'shape,color');
              or a built-in list ('imagenet', 'cifar10', 'cifar100'), a file (one name per
              line, or a .json list; in label order), an inline 'cat,dog,bird' or a list.
  templates:  None -> the built-in templates of that name ('imagenet': CLIP's 80, 'cifar':
              CLIP's 18), else 'simple' ('a photo of a {}.'); or a built-in name, file,
              inline 'a {}.|a photo of a {}.' ('|' or ',' between templates) or list.
  label_key:  the label column with `classnames` ('label' for tfds:/csv:/jsonl: sources).
              Integer labels are class indices; a column of class *names* (a CSV/JSONL
              table, a TFDS ClassLabel) is matched to `classnames` by name (exactly, then
              ignoring case, spaces and underscores), and a name that matches no class is
              an error (`base.class_ids`).
Metric names: `zeroshot/<name>/<metric>` with `classnames`, `zeroshot/<name>_<task>/<metric>`
for the source's tasks.

Other scorers (`alignjax.scoring`, e.g. token-wise): the same metrics under
`zeroshot/<name>[_<task>]@<scorer>/<metric>`. A scorer with `combine_templates='scores'`
averages the per-template scores instead of the embeddings,

  score(image i, class c) = (1/T) sum_t s_i2t(i, t(c)),

computed on device (`ranks.gallery_scores`: prompts sharded, images in chunks); with
prototype groups a class again scores its best group. The host receives [N, C] scores.
"""

from __future__ import annotations

import dataclasses
import os
from typing import ClassVar

import jax
import numpy as np

from alignjax import plots, scoring, validation
from alignjax.data import few_shot
from alignjax.evaluate import base, ranks
from alignjax.evaluate import classnames as classnames_lib
from alignjax.evaluate import metrics as metrics_lib


class ZeroShotEvaluator(base.Evaluator):
    kind = 'zeroshot'
    FIELDS: ClassVar[dict] = dict(
        base.COMMON_FIELDS,
        tasks=None,  # names from source.zero_shot_tasks(); None: all
        classnames=None,
        templates=None,
        label_key='label',
        chunk_size=1024,  # images per device call when ranking classes
        # 'base' | 'new' | class indices: classify among these classes only, on the images
        # of these classes (CoCoOp's base-to-new protocol); None: every class.
        classes=None,
    )

    def __init__(self, *args):
        super().__init__(*args)
        cfg = self.cfg
        self.split = self.ctx.split(
            cfg.data, cfg.split, cfg.num_examples, cfg.batch_size, cache=cfg.cache
        )
        self.embedder = self.ctx.embedder(cfg.batch_size)
        self.scorers = self.ctx.scorers
        self.split.add_scorers(self.scorers)
        self.tasks = self._tasks()
        if cfg.classes is not None:
            for task in self.tasks.values():
                _keep_classes(task, cfg.classes, f'evals.{self.name}.classes')
        for t in self.tasks:  # Label names that match no class fail now, not after embedding.
            column = base.column_name(self.tasks[t]['label_key'])
            self.class_ids(t, {column: np.zeros((0,), np.int64)})
        tok = self.ctx.tokenizer
        # Tokenised prompts per task and prototype group: [C * T_g, L], class-major.
        self.prompts = {
            t: [
                tok([tmpl.format(c) for c in names for tmpl in templates])
                for names, templates in _prototype_groups(task)
            ]
            for t, task in self.tasks.items()
        }

    def _tasks(self) -> dict[str, dict]:
        cfg, where = self.cfg, f'evals.{self.name}'
        if cfg.classnames is not None:
            names = classnames_lib.get_classnames(cfg.classnames, f'{where}.classnames')
            templates = cfg.templates
            if templates is None:
                templates = classnames_lib.default_templates(cfg.classnames)
            templates = classnames_lib.get_templates(templates, f'{where}.templates')
            return {
                '': {
                    'classnames': names,
                    'templates': templates,
                    'label_key': cfg.label_key,
                    'classnames_from': f'classnames={base.shown_value(cfg.classnames)}',
                }
            }
        get_tasks = getattr(self.split.source, 'zero_shot_tasks', None)
        if get_tasks is None:
            raise ValueError(
                f'{where}: source {cfg.data!r} defines no zero-shot tasks; set '
                f"{where}.classnames ('imagenet', a file, or a list such as 'cat,dog') and, "
                f"if the label column is not 'label', {where}.label_key."
            )
        tasks = get_tasks()
        wanted = cfg.tasks or list(tasks)
        if isinstance(wanted, str):  # From the command line: 'shape,color'.
            wanted = classnames_lib.split_inline(wanted)
        for t in wanted:
            validation.check_choice(t, list(tasks), f'{where}.tasks')
        out = {t: dict(tasks[t]) for t in wanted}
        if cfg.templates is not None:
            templates = classnames_lib.get_templates(cfg.templates, f'{where}.templates')
            for task in out.values():
                task['templates'] = templates
        return out

    def class_ids(self, task: str, labels: dict[str, np.ndarray], source=None) -> np.ndarray:
        """[N] the class index of each image of the split (`labels`: `Embeddings.labels`),
        its label matched to the task's class names (`base.class_ids`). `source`: the
        source the labels come from (default: this evaluator's split)."""
        spec, where = self.tasks[task], f'evals.{self.name}'
        column = base.label_column(spec['label_key'], labels, where)
        ids = base.class_ids(
            labels[column],
            self.split.source if source is None else source,
            spec.get('all_classnames', spec['classnames']),
            spec.get('classnames_from', f'the task {task!r} of {self.cfg.data}'),
            where,
            column,
            self.cfg.data,
        )
        if 'subset' not in spec:
            return ids
        # Index into the kept classes; -1 for an image of another class (not scored).
        position = np.full(len(spec['all_classnames']), -1, np.int64)
        position[spec['subset']] = np.arange(len(spec['subset']))
        return position[ids]

    def class_embeddings(self, params, task: str) -> np.ndarray:
        """[G, C, D]: per prototype group and class, the renormalised mean of the normalised
        embeddings of that group's templates (G = 1 unless the task has ``prototypes``)."""
        n_cls = len(self.tasks[task]['classnames'])
        out = [
            mean_template_embedding(self.embedder.texts(params, tokens), n_cls)
            for tokens in self.prompts[task]
        ]
        return np.stack(out)

    def class_scores(self, params, task: str, scorer: scoring.Scorer, image_features) -> np.ndarray:
        """[N, C] float32 score of each image for each class under `scorer`.

        Per prototype group g: `s_gic = (1/T_g) sum_t s_i2t(i, t(c))` for
        `combine_templates='scores'`, or `s_i2t(i, w_gc)` with `w_gc` the group's mean
        template embedding (`mean_template_embedding`) for 'embeddings'; then
        `s_ic = max_g s_gic`. `image_features`: the scorer's features of the N images.
        """
        n_cls = len(self.tasks[task]['classnames'])
        chunk = base.query_chunk(self.cfg.chunk_size, scorer)
        best = None
        for tokens in self.prompts[task]:
            (text,) = self.embedder.features(params, tokens, (scorer,), 'text')
            group_size = tokens.shape[0] // n_cls  # templates per class, class-major
            if scorer.combine_templates == 'embeddings':
                text, group_size = mean_template_embedding(text, n_cls), 1
            s = ranks.gallery_scores(
                scorer.i2t,
                image_features,
                text,
                self.ctx.mesh,
                chunk,
                scorer.gallery_chunk,
                group_size=group_size,
            )
            best = s if best is None else np.maximum(best, s)
        return best

    def _ranks(self, params, task: str, scorer: scoring.Scorer, emb, labels) -> np.ndarray:
        if scorer is not scoring.GLOBAL:
            scores = self.class_scores(params, task, scorer, emb.features[scorer.name][0])
            return ranks.ranks_from_scores(scores, labels)
        # The global scorer: class embeddings ranked on device (unchanged path and values).
        w = self.class_embeddings(params, task)
        if w.shape[0] == 1:
            n_cls = w.shape[1]
            return ranks.positive_ranks(
                emb.image, labels, w[0], np.arange(n_cls), self.ctx.mesh, self.cfg.chunk_size
            )
        # A class scores its best prototype: rank the [N, C] maxima.
        return ranks.ranks_from_scores(
            ranks.max_prototype_scores(emb.image, w, self.cfg.chunk_size), labels
        )

    def run(self, params) -> dict[str, float]:
        emb = self.split.embed(params, with_text=False)
        out = {}
        for t in self.tasks:
            labels = self.class_ids(t, emb.labels)
            task_emb = emb
            if (labels < 0).any():  # `classes`: only the images of the kept classes
                task_emb, labels = _rows(emb, labels >= 0), labels[labels >= 0]
            group = f'zeroshot/{self.name}' + (f'_{t}' if t else '')
            for scorer in self.scorers:
                r = self._ranks(params, t, scorer, task_emb, labels)
                for k, v in metrics_lib.zero_shot_metrics_from_ranks(r, labels).items():
                    out[f'{scorer.qualify(group)}/{k}'] = v
        return out

    #: Images in the prediction grid; confusion matrices are drawn up to this many classes.
    PICTURE_IMAGES = 16
    PICTURE_MAX_CLASSES = 100

    def top_classes(self, params, task: str, image: np.ndarray, k: int = 3) -> np.ndarray:
        """[N, k] the k best classes of each image embedding [N, D] (global cosine, a class
        scoring its best prototype group), computed in row chunks on the host."""
        w = self.class_embeddings(params, task)  # [G, C, D]
        k = min(k, w.shape[1])
        out = []
        for start in range(0, image.shape[0], 4096):
            s = np.einsum('nd,gcd->gnc', image[start : start + 4096], w).max(axis=0)
            out.append(np.argsort(-s, axis=1, kind='stable')[:, :k])
        return np.concatenate(out) if out else np.zeros((0, k), np.int64)

    def pictures(self, params, out_dir: str) -> list[str]:
        """Per task: `zeroshot_<name>[_<task>]_predictions.png` (the first images of the
        split with their top-3 classes, right in green, wrong in red) and `..._confusion.png`
        (true x predicted top-1 over the whole split, up to PICTURE_MAX_CLASSES classes)."""
        emb = self.split.embed(params, with_text=False)
        files = []
        for t, task in self.tasks.items():
            labels = self.class_ids(t, emb.labels)
            rows = np.flatnonzero(labels >= 0)
            top = self.top_classes(params, t, emb.image[rows])
            if not base.is_writer():
                continue
            names, tag = task['classnames'], f'{self.name}_{t}' if t else self.name
            title = f'{self.name} {t}'.strip()
            if len(names) <= self.PICTURE_MAX_CLASSES:
                counts = plots.confusion_matrix(labels[rows], top[:, 0], len(names))
                path = os.path.join(out_dir, f'zeroshot_{tag}_confusion.png')
                files.append(plots.plot_confusion(counts, names, path, title=title))
            shown = rows[: self.PICTURE_IMAGES]
            images = base.example_images(self.split.source, shown)
            if images is not None:
                path = os.path.join(out_dir, f'zeroshot_{tag}_predictions.png')
                n = len(shown)
                files.append(
                    plots.plot_predictions(images, top[:n], labels[shown], names, path, title)
                )
        return files


def mean_template_embedding(z: np.ndarray, n_cls: int) -> np.ndarray:
    """[C, D] float32 `w_c = normalize((1/T) sum_t normalize(z_ct))` of class-major template
    embeddings z [C * T, D] (CLIP's prompt ensembling), in float64."""
    z = np.asarray(z).astype(np.float64)
    z = z.reshape(n_cls, -1, z.shape[-1])
    z /= np.linalg.norm(z, axis=-1, keepdims=True)  # encode_text normalises; be exact.
    w = z.mean(axis=1)
    return (w / np.linalg.norm(w, axis=-1, keepdims=True)).astype(np.float32)


def _keep_classes(task: dict, classes, where: str) -> None:
    """Restricts `task` (in place) to `classes`: 'base' / 'new' (the halves of
    `alignjax.data.few_shot.base_new_split`) or class indices. `classnames` (and each
    prototype group's) become the kept ones; `all_classnames` keeps the full list the
    labels index, `subset` the kept indices."""
    names = list(task['classnames'])
    if isinstance(classes, str) and classes in few_shot.HALVES:
        base_half, new_half = few_shot.base_new_split(len(names))
        subset = base_half if classes == 'base' else new_half
    else:
        if isinstance(classes, str):
            classes = classnames_lib.split_inline(classes)
        try:
            subset = [int(c) for c in classes]
        except (TypeError, ValueError):
            subset = None
        if not subset or any(not 0 <= c < len(names) for c in subset):
            raise ValueError(
                f"{where}={classes!r}: use 'base', 'new' or class indices in [0, {len(names)})."
            )
    task['all_classnames'] = names
    task['subset'] = list(subset)
    task['classnames'] = [names[i] for i in subset]
    if task.get('prototypes'):
        task['prototypes'] = [
            dict(g, classnames=[list(g['classnames'])[i] for i in subset])
            for g in task['prototypes']
        ]


def _rows(emb, keep: np.ndarray):
    """`emb` with only the image rows `keep` (no captions: zero-shot reads none)."""
    return dataclasses.replace(
        emb,
        image=emb.image[keep],
        text=None,
        image_of_text=None,
        labels={k: v[keep] for k, v in emb.labels.items()},
        features={
            name: (jax.tree.map(lambda a: a[keep], img), None)
            for name, (img, _) in emb.features.items()
        },
    )


def _prototype_groups(task: dict) -> list[tuple[list[str], list[str]]]:
    """(classnames, templates) per prototype group of a zero-shot task.

    A task is ``classnames`` + ``templates`` (one group: a class embedding is the mean over
    its templates), or adds ``prototypes``: a list of ``{'classnames', 'templates'}`` groups,
    each naming every class (e.g. singular and plural forms); a class's score for an image is
    then the highest of its groups' scores (a class may look like either).
    """
    groups = [(list(task['classnames']), list(task['templates']))]
    for g in task.get('prototypes') or ():
        names, templates = list(g['classnames']), list(g['templates'])
        if len(names) != len(groups[0][0]) or not templates:
            raise ValueError(
                f'A prototype group needs one class name per class ({len(groups[0][0])}) and '
                f'at least one template; got {len(names)} names, {len(templates)} templates.'
            )
        groups.append((names, templates))
    return groups
