"""Evaluation: zero-shot classification and retrieval with CLIP_benchmark's metric names."""

from alignjax.evaluate.evaluators import (
    EVALUATORS,
    Embedder,
    RetrievalEvaluator,
    ZeroShotEvaluator,
    build_evaluators,
)
from alignjax.evaluate.metrics import retrieval_metrics, topk_hits, zero_shot_metrics

__all__ = [
    'EVALUATORS',
    'Embedder',
    'RetrievalEvaluator',
    'ZeroShotEvaluator',
    'build_evaluators',
    'retrieval_metrics',
    'topk_hits',
    'zero_shot_metrics',
]
