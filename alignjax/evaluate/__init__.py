"""Evaluation: zero-shot classification, retrieval, linear probe and embedding geometry.

Metric names and semantics are LAION CLIP_benchmark's (`acc1`, `acc5`,
`mean_per_class_recall`, `image_retrieval_recall@k`, `text_retrieval_recall@k`). See
docs/EVALUATION.md; `python -m alignjax.evaluate --workdir DIR` evaluates a checkpoint.
Zero-shot and retrieval rank with each `alignjax.scoring.Scorer` given to `build_evaluators`
(global cosine by default; token-wise for FILIP / Wukong), see docs/EVALUATION.md "Scorers".
"""

from alignjax.evaluate.cross_modal import CrossModalEvaluator
from alignjax.evaluate.embed import Embedder, EvalSplit
from alignjax.evaluate.evaluators import EVALUATORS, build_evaluators
from alignjax.evaluate.geometry import alignment, geometry_metrics, modality_gap, uniformity
from alignjax.evaluate.linear_probe import LinearProbeEvaluator, fit_logistic_regression
from alignjax.evaluate.metrics import (
    retrieval_metrics,
    retrieval_metrics_from_ranks,
    topk_hits,
    zero_shot_metrics,
    zero_shot_metrics_from_ranks,
)
from alignjax.evaluate.ranks import gallery_scores, positive_ranks, scored_positive_ranks
from alignjax.evaluate.retrieval import GeometryEvaluator, RetrievalEvaluator
from alignjax.evaluate.zero_shot import ZeroShotEvaluator

__all__ = [
    'EVALUATORS',
    'CrossModalEvaluator',
    'Embedder',
    'EvalSplit',
    'GeometryEvaluator',
    'LinearProbeEvaluator',
    'RetrievalEvaluator',
    'ZeroShotEvaluator',
    'alignment',
    'build_evaluators',
    'fit_logistic_regression',
    'gallery_scores',
    'geometry_metrics',
    'modality_gap',
    'positive_ranks',
    'retrieval_metrics',
    'retrieval_metrics_from_ranks',
    'scored_positive_ranks',
    'topk_hits',
    'uniformity',
    'zero_shot_metrics',
    'zero_shot_metrics_from_ranks',
]
