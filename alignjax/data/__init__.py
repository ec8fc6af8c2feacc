"""alignjax data: the embedded shapes dataset, tokenizers, sources and grain pipelines.

Typical use::

    from alignjax import data
    tok = data.build_tokenizer(data.default_tokenizer_config())
    src = data.get_source('synthetic:shapes', 'train', image_size=32, seed=0)
    it = data.make_train_iterator(src, tokenizer=tok, global_batch_size=256, seed=0)
    batch = next(it)                      # {'image': f32 [b,32,32,3], 'tokens': i32 [b,16]}
    state = it.get_state()                # JSON-able; it.set_state(state) resumes exactly
    evals = data.make_eval_batches(data.get_source('synthetic:shapes', 'test'),
                                   tokenizer=tok, batch_size=256)
"""

from alignjax.data.pipeline import (
    EvalBatches,
    LoadExample,
    TrainIterator,
    make_eval_batches,
    make_train_iterator,
)
from alignjax.data.sources import SOURCES, get_source, parse_spec, register_source
from alignjax.data.synthetic import ATTRIBUTES, COLOR_RGB, ShapesDataset
from alignjax.data.tokenizers import (
    TOKENIZERS,
    ByteTokenizer,
    SentencePieceTokenizer,
    Tokenizer,
    WordHashTokenizer,
    build_tokenizer,
    default_tokenizer_config,
)
from alignjax.data.transforms import (
    NORMALIZATIONS,
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    FlattenLabels,
    KeepArrays,
    NormalizeImage,
    TokenizeText,
    normalize_image,
)

__all__ = [
    "ATTRIBUTES",
    "COLOR_RGB",
    "ByteTokenizer",
    "EvalBatches",
    "FlattenLabels",
    "KeepArrays",
    "LoadExample",
    "NORMALIZATIONS",
    "NormalizeImage",
    "OPENAI_CLIP_MEAN",
    "OPENAI_CLIP_STD",
    "SOURCES",
    "SentencePieceTokenizer",
    "ShapesDataset",
    "TOKENIZERS",
    "TokenizeText",
    "Tokenizer",
    "TrainIterator",
    "WordHashTokenizer",
    "build_tokenizer",
    "default_tokenizer_config",
    "get_source",
    "make_eval_batches",
    "make_train_iterator",
    "normalize_image",
    "parse_spec",
    "register_source",
]
