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

Real data: ``get_source('csv:/data/cc3m.tsv?caption_key=caption', 'train', image_size=224)``,
``'jsonl:...'``, ``'tfds:coco_captions'``, ``'wds:/shards/{00000..00999}.tar'`` and
``'mix:0.7*SPEC;0.3*SPEC'`` (docs/DATA.md). ``it.skipped_counts()`` counts bad examples.
"""

from alignjax.data.csv_source import TableSource
from alignjax.data.decode import SKIP_REASONS, SkipExample, clean_caption, decode_image
from alignjax.data.mixture import MixtureSource, MixtureStream
from alignjax.data.pipeline import (
    EvalBatches,
    ExampleProcessor,
    LoadExample,
    TrainIterator,
    make_eval_batches,
    make_train_iterator,
)
from alignjax.data.sources import SOURCES, get_source, parse_spec, register_source
from alignjax.data.synthetic import ATTRIBUTES, COLOR_RGB, ShapesDataset
from alignjax.data.tfds_source import ImageTextFolder, TfdsSource
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
    CROPS,
    NORMALIZATIONS,
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    FlattenLabels,
    KeepArrays,
    NormalizeImage,
    Preprocess,
    TokenizeText,
    crop_resize,
    normalize_image,
)
from alignjax.data.wds import WdsSource

__all__ = [
    "ATTRIBUTES",
    "COLOR_RGB",
    "CROPS",
    "NORMALIZATIONS",
    "OPENAI_CLIP_MEAN",
    "OPENAI_CLIP_STD",
    "SKIP_REASONS",
    "SOURCES",
    "TOKENIZERS",
    "ByteTokenizer",
    "EvalBatches",
    "ExampleProcessor",
    "FlattenLabels",
    "ImageTextFolder",
    "KeepArrays",
    "LoadExample",
    "MixtureSource",
    "MixtureStream",
    "NormalizeImage",
    "Preprocess",
    "SentencePieceTokenizer",
    "ShapesDataset",
    "SkipExample",
    "TableSource",
    "TfdsSource",
    "TokenizeText",
    "Tokenizer",
    "TrainIterator",
    "WdsSource",
    "WordHashTokenizer",
    "build_tokenizer",
    "clean_caption",
    "crop_resize",
    "decode_image",
    "default_tokenizer_config",
    "get_source",
    "make_eval_batches",
    "make_train_iterator",
    "normalize_image",
    "parse_spec",
    "register_source",
]
