"""Model definitions: ViT image tower, text transformer, two-tower contrastive model.

Typical use::

    from alignjax import models
    model = models.build(dict(embed_dim=768, image=dict(variant="B/16", pool="map")))
    variables = model.init(rng, images, tokens)          # boxed (logically partitioned)
    out = model.apply(variables, images, tokens)          # TwoTowerOutput

Learned inputs (text embeddings, visual prompts, CoOp context): see ``models.prompts`` and
docs/MODELS.md.
"""

from alignjax.models import prompts
from alignjax.models.layers import LOGICAL_AXES, REMAT_POLICIES
from alignjax.models.prompts import LearnedContext, splice_context
from alignjax.models.text import TextTransformer
from alignjax.models.two_tower import (
    TwoTower,
    TwoTowerOutput,
    build,
    default_model_config,
    l2_normalize,
    resolve_model_config,
)
from alignjax.models.variants import VIT_SIZES, parse_vit_variant
from alignjax.models.vit import ViT

__all__ = [
    "build",
    "default_model_config",
    "resolve_model_config",
    "TwoTower",
    "TwoTowerOutput",
    "ViT",
    "TextTransformer",
    "parse_vit_variant",
    "VIT_SIZES",
    "LOGICAL_AXES",
    "REMAT_POLICIES",
    "l2_normalize",
    "prompts",
    "LearnedContext",
    "splice_context",
]
