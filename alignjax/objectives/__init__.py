"""Objectives: every method as one registered plug-in of the one trainer.

``config.loss.name`` picks a registered :class:`Objective`; ``config.loss`` holds that
method's fields only (:func:`loss_config`). The built-in methods are the modules of this
package, one file each; a user's own module registers the same way and is listed in
``config.imports``. See :mod:`alignjax.objectives.base` for the hooks and docs/OBJECTIVES.md
("Writing a method") for a complete example.
"""

from alignjax.objectives import (  # noqa: F401  (importing a method module registers it)
    attributes,
    classify,
    clim,
    clip,
    clip_refine,
    coop,
    ctp,
    distill,
    dreamlip,
    filip,
    lightclip,
    mlm,
    negclip,
    pyramid,
    siglip,
    unicl,
    uniter,
    wukong,
)
from alignjax.objectives.base import (
    Buffer,
    Head,
    Objective,
    StepContext,
    WeightSet,
    build,
    default_loss_config,
    get,
    import_modules,
    loss_config,
    names,
    register,
    validate_loss_config,
)

__all__ = [
    "Buffer",
    "Head",
    "Objective",
    "StepContext",
    "WeightSet",
    "build",
    "default_loss_config",
    "get",
    "import_modules",
    "loss_config",
    "names",
    "register",
    "validate_loss_config",
]
