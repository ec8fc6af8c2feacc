"""Evaluators run inside training (each at its own period) and standalone.

An evaluator is configured under `config.evals.<name>`; `type` picks the class:

  config.evals.shapes = dict(
      type='zeroshot',            # zeroshot | retrieval | geometry | linear_probe | fewshot
                                  # | cross_modal
      data='synthetic:shapes',    # source spec (alignjax.data.get_source)
      split='test',
      num_examples=1000,          # None: the whole split
      batch_size=250,             # global; rounded up to a multiple of the data-parallel size
      every_steps=0,              # 0: config.eval_every_steps
  )

Each type's own fields are in its module (`zero_shot`, `retrieval`, `linear_probe`,
`few_shot`, `cross_modal`: emergent retrieval against another model's tower); an
unknown field fails naming the valid ones. Values given as strings (the command line's
`--config.evals.NAME.FIELD=VALUE` for a field the config did not have) are read as the type
of the field's default (`base.coerce`): `cache=false`, `num_examples=500`,
`weight_decays=1e-4,1e-2`. Every process reads and embeds only its shard of
a split (`embed.EvalSplit`); embeddings are gathered to every host in source order and the
similarities ranked on device (`ranks`), so the metrics do not depend on the number of
processes or devices.

The trainer calls `build_evaluators(config, model, tokenizer, mesh, objective.scorers)`, then
`ev.due(step)` and `ev.run(params) -> dict[str, float]`.

Scorers (`alignjax.scoring`): zero-shot and retrieval rank with every given scorer. The
global one (`scoring.GLOBAL`, the default) keeps the plain metric names; each other scorer
`s` reports the same metrics under `<kind>/<name>@<s.name>/<metric>`, e.g.
`zeroshot/inet@tokenwise/acc1`, `retrieval/coco@tokenwise/image_retrieval_recall@1`.
Linear probe and geometry use the global embeddings only.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import ml_collections

from alignjax import plots, scoring, validation
from alignjax import workdir as workdir_lib
from alignjax.evaluate import base
from alignjax.evaluate.cross_modal import CrossModalEvaluator
from alignjax.evaluate.embed import Embedder
from alignjax.evaluate.few_shot import FewShotEvaluator
from alignjax.evaluate.linear_probe import LinearProbeEvaluator
from alignjax.evaluate.retrieval import GeometryEvaluator, RetrievalEvaluator
from alignjax.evaluate.zero_shot import ZeroShotEvaluator

ConfigDict = ml_collections.ConfigDict

EVALUATORS = {
    cls.kind: cls
    for cls in (
        ZeroShotEvaluator,
        RetrievalEvaluator,
        GeometryEvaluator,
        LinearProbeEvaluator,
        FewShotEvaluator,
        CrossModalEvaluator,
    )
}

__all__ = ['EVALUATORS', 'Embedder', 'build_evaluators', 'draw_pictures', 'keep_only']


def build_evaluators(
    config: ConfigDict,
    model: nn.Module,
    tokenizer,
    mesh,
    scorers: Sequence[scoring.Scorer] = (scoring.GLOBAL,),
) -> list[Any]:
    """One evaluator per entry of `config.evals`, fields validated.

    Evaluators reading the same split share its decoded shard and, within one evaluation
    round, its embeddings (and scorer features); those with the same batch size share one
    compiled `Embedder`. `scorers`: the similarities zero-shot and retrieval rank with (names
    distinct; see the module docstring for the metric names).
    """
    ctx = base.Context(config, model, tokenizer, mesh, scorers)
    out = []
    for name, ev in config.evals.items():
        validation.check_choice(ev.get('type'), list(EVALUATORS), f'evals.{name}.type')
        cls = EVALUATORS[ev['type']]
        validation.check_fields(ev, cls.FIELDS, f'evals.{name}')
        given = base.coerce_fields(ev.to_dict(), cls.FIELDS, f'evals.{name}')
        cfg = ConfigDict(dict(cls.FIELDS, **given))
        out.append(cls(name, cfg, config, ctx))
    return out


def keep_only(config: ConfigDict, names: Sequence[str] | None) -> ConfigDict:
    """`config` with only the evaluators `names` (a copy; all of them when `names` is
    empty). A name not in `config.evals` is a ValueError listing the evaluators there are
    (the command-line tools' `--evals a,b`)."""
    if not names:
        return config
    missing = [n for n in names if n not in config.evals]
    if missing:
        raise ValueError(f'--evals {missing} not in config.evals {sorted(config.evals)}.')
    config = ConfigDict(config.to_dict())
    for name in list(config.evals):
        if name not in names:
            del config.evals[name]
    return config


def draw_pictures(
    workdir: str, step: int, evaluators: Sequence[Any], params, log: Callable[[str], None] = print
) -> list[str]:
    """Each evaluator's pictures for `params` into <workdir>/pictures/step_<step>/, and the
    run's curves so far (from <workdir>/metrics.jsonl, if there) into
    <workdir>/pictures/curves.png. Call right after running the evaluators on the same
    `params` (their embeddings are reused); every process calls it, process 0 writes. A
    picture that fails to draw is logged and skipped: pictures never stop a run."""
    out_dir = os.path.join(workdir, workdir_lib.PICTURES_DIR, f'step_{step}')
    if jax.process_index() == 0:
        os.makedirs(out_dir, exist_ok=True)
    began, files = time.perf_counter(), []
    for ev in evaluators:
        try:
            files += ev.pictures(params, out_dir)
        except Exception as e:  # noqa: BLE001 - pictures are a view, not a result.
            log(f'  pictures of {ev.name} failed ({type(e).__name__}: {e}); skipped.')
    if jax.process_index() == 0:
        if os.path.exists(os.path.join(workdir, 'metrics.jsonl')):
            curves = os.path.join(workdir, workdir_lib.PICTURES_DIR, workdir_lib.CURVES_FILE)
            try:
                files.append(plots.plot_curves(workdir_lib.read_metrics(workdir), curves))
            except Exception as e:  # noqa: BLE001
                log(f'  the curves failed to draw ({type(e).__name__}: {e}); skipped.')
        log(f'  {len(files)} pictures in {time.perf_counter() - began:.1f} s -> {out_dir}')
    return files
