"""big_vision SigLIP/LiT ``.npz`` -> alignjax, against a reference forward pass.

The reference below is written in numpy (float64) from big_vision's published model
definitions (``big_vision/models/vit.py``: Encoder1DBlock, MlpBlock with ``nn.gelu`` (tanh
approximation), MAPHead, flax LayerNorm eps 1e-6; ``models/proj/image_text/
text_transformer.py``: Embed + pos_embedding, no mask, last-token pooling, Dense head;
``two_towers.py``: ``z / (||z|| + 1e-8)``, logits ``exp(t) zimg ztxt^T + b``). Random tiny
checkpoints are saved in big_vision's npz layout (``params/img/...`` paths, unrolled
``encoderblock_i`` or scanned ``encoderblock``) and converted.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alignjax import interop, load_pretrained, models
from alignjax.interop import common

W, DEPTH, MLP, HEADS, PATCH, IMG = 32, 2, 64, 2, 8, 16
TW, TL, OUT = 32, 8, 24


# ------------------------------------------------------------------- reference forward


def ln(x, p, eps=1e-6):
    m = x.mean(-1, keepdims=True)
    v = ((x - m) ** 2).mean(-1, keepdims=True)
    return (x - m) / np.sqrt(v + eps) * p["scale"] + p["bias"]


def gelu_tanh(x):
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def dense(x, p):
    return x @ p["kernel"] + p["bias"]


def mha(xq, xkv, p):
    q = np.einsum("bld,dhk->blhk", xq, p["query"]["kernel"]) + p["query"]["bias"]
    k = np.einsum("bld,dhk->blhk", xkv, p["key"]["kernel"]) + p["key"]["bias"]
    v = np.einsum("bld,dhk->blhk", xkv, p["value"]["kernel"]) + p["value"]["bias"]
    s = np.einsum("bqhk,bshk->bhqs", q, k) / math.sqrt(q.shape[-1])
    a = np.exp(s - s.max(-1, keepdims=True))
    a /= a.sum(-1, keepdims=True)
    o = np.einsum("bhqs,bshk->bqhk", a, v)
    return np.einsum("bqhk,hkd->bqd", o, p["out"]["kernel"]) + p["out"]["bias"]


def mlp(x, p):
    return dense(gelu_tanh(dense(x, p["Dense_0"])), p["Dense_1"])


def encoder(x, p):
    if "encoderblock" in p:
        flat = common.flatten(p["encoderblock"])
        depth = next(iter(flat.values())).shape[0]
        blocks = [common.unflatten({k: v[i] for k, v in flat.items()}) for i in range(depth)]
    else:
        blocks = [
            p[f"encoderblock_{i}"] for i in range(sum(k.startswith("encoderblock_") for k in p))
        ]
    for b in blocks:
        y = ln(x, b["LayerNorm_0"])
        x = x + mha(y, y, b["MultiHeadDotProductAttention_0"])
        x = x + mlp(ln(x, b["LayerNorm_1"]), b["MlpBlock_0"])
    return ln(x, p["encoder_norm"])


def ref_image(img, p, pool):
    b, h, w, c = img.shape
    gh, gw = h // PATCH, w // PATCH
    patches = img.reshape(b, gh, PATCH, gw, PATCH, c).transpose(0, 1, 3, 2, 4, 5)
    x = np.einsum("bijpqc,pqcd->bijd", patches, p["embedding"]["kernel"]) + p["embedding"]["bias"]
    x = x.reshape(b, gh * gw, -1) + p["pos_embedding"]
    if pool == "tok":
        x = np.concatenate([np.tile(p["cls"], (b, 1, 1)), x], axis=1)
    x = encoder(x, p["Transformer"])
    if pool == "map":
        m = p["MAPHead_0"]
        probe = np.tile(m["probe"], (b, 1, 1))
        y = mha(probe, x, m["MultiHeadDotProductAttention_0"])
        y = y + mlp(ln(y, m["LayerNorm_0"]), m["MlpBlock_0"])
        x = y[:, 0]
    elif pool == "tok":
        x = x[:, 0]
    else:
        x = x.mean(1)
    return dense(x, p["head"])


def ref_text(tokens, p):
    x = p["Embed_0"]["embedding"][tokens]
    x = x + p["pos_embedding"][:, : tokens.shape[1]]
    x = encoder(x, p["Encoder_0"])
    return dense(x[:, -1], p["head"])


def ref_forward(tree, img, tokens, pool):
    zi = ref_image(img, tree["img"], pool)
    zt = ref_text(tokens, tree["txt"])
    zi = zi / (np.linalg.norm(zi, axis=1, keepdims=True) + 1e-8)
    zt = zt / (np.linalg.norm(zt, axis=1, keepdims=True) + 1e-8)
    logits = zi @ zt.T * np.exp(tree["t"][0]) + tree["b"][0]
    return zi, zt, logits


# ------------------------------------------------------------------ random checkpoints


def random_tree(seed=0, pool="map", scan=False, vocab=50):
    rng = np.random.default_rng(seed)

    def r(*shape, s=0.2):
        return (s * rng.normal(size=shape)).astype(np.float32)

    def lnp(d):
        return {"scale": 1 + r(d, s=0.1), "bias": r(d, s=0.1)}

    def attn(d):
        return {
            **{
                n: {"kernel": r(d, HEADS, d // HEADS), "bias": r(HEADS, d // HEADS)}
                for n in ("query", "key", "value")
            },
            "out": {"kernel": r(HEADS, d // HEADS, d), "bias": r(d)},
        }

    def mlpp(d):
        return {
            "Dense_0": {"kernel": r(d, MLP), "bias": r(MLP)},
            "Dense_1": {"kernel": r(MLP, d), "bias": r(d)},
        }

    def block(d):
        return {
            "LayerNorm_0": lnp(d),
            "MultiHeadDotProductAttention_0": attn(d),
            "LayerNorm_1": lnp(d),
            "MlpBlock_0": mlpp(d),
        }

    def enc(d):
        blocks = [block(d) for _ in range(DEPTH)]
        if scan:
            flat = [common.flatten(b) for b in blocks]
            out = {
                "encoderblock": common.unflatten(
                    {k: np.stack([f[k] for f in flat]) for k in flat[0]}
                )
            }
        else:
            out = {f"encoderblock_{i}": b for i, b in enumerate(blocks)}
        return {**out, "encoder_norm": lnp(d)}

    n = (IMG // PATCH) ** 2
    img = {
        "embedding": {"kernel": r(PATCH, PATCH, 3, W), "bias": r(W)},
        "pos_embedding": r(1, n, W),
        "Transformer": enc(W),
        "head": {"kernel": r(W, OUT), "bias": r(OUT)},
    }
    if pool == "map":
        img["MAPHead_0"] = {
            "probe": r(1, 1, W),
            "MultiHeadDotProductAttention_0": attn(W),
            "LayerNorm_0": lnp(W),
            "MlpBlock_0": mlpp(W),
        }
    if pool == "tok":
        img["cls"] = r(1, 1, W)
    txt = {
        "Embed_0": {"embedding": r(vocab, TW)},
        "pos_embedding": r(1, TL, TW),
        "Encoder_0": enc(TW),
        "head": {"kernel": r(TW, OUT), "bias": r(OUT)},
    }
    return {
        "img": img,
        "txt": txt,
        "t": np.array([2.3], np.float32),
        "b": np.array([-10.0], np.float32),
    }


def save_npz(path, tree):
    flat = {f"params/{k}": v for k, v in common.flatten(tree).items()}
    np.savez(path, **flat)


def batch(seed=1, vocab=50):
    rng = np.random.default_rng(seed)
    img = rng.uniform(-1, 1, size=(3, IMG, IMG, 3)).astype(np.float32)
    tokens = rng.integers(2, vocab, size=(3, TL)).astype(np.int32)
    tokens[0, 4:] = 1  # sticky EOS padding (EOS id 1, as the c4 SentencePiece model)
    tokens[1, -1] = 1
    return img, tokens


def rel_err(a, b):
    return float(np.abs(np.asarray(a, np.float64) - b).max() / np.abs(b).max())


@pytest.mark.parametrize(
    "pool,scan", [("map", False), ("map", True), ("tok", False), ("gap", True)]
)
def test_big_vision_parity(tmp_path, pool, scan):
    tree = random_tree(pool=pool, scan=scan)
    path = str(tmp_path / "siglip_tiny.npz")
    save_npz(path, tree)
    conv = interop.from_big_vision(path)
    mc = conv.model_config
    assert mc["act"] == "gelu_tanh" and mc["ln_eps"] == 1e-6
    assert mc["image"]["pool"] == pool and mc["text"]["convention"] == "big_vision"
    assert mc["image"]["num_heads"] == HEADS and mc["text"]["context_length"] == TL
    assert conv.preprocess == dict(
        size=IMG, resize_mode="squash", interpolation="bilinear", mean=[0.5] * 3, std=[0.5] * 3
    )
    assert conv.tokenizer["pad"] == "eos" and conv.tokenizer["name"] == "sentencepiece"
    img, tokens = batch()
    model = models.build(mc)
    out = jax.jit(model.apply)({"params": conv.params}, jnp.asarray(img), jnp.asarray(tokens))
    logits = out.logit_scale * out.zimg @ out.ztxt.T + out.logit_bias
    for name, a, b in zip(
        ("zimg", "ztxt", "logits"),
        (out.zimg, out.ztxt, logits),
        ref_forward(tree, img.astype(np.float64), tokens, pool),
    ):
        assert rel_err(a, b) <= 1e-5, f"{name}: relative error {rel_err(a, b):.2e}"


def test_load_pretrained_siglip_with_sentencepiece(tmp_path):
    spm = pytest.importorskip("sentencepiece")
    captions = [
        f"a photo of {w} number {i}"
        for i, w in enumerate(
            ["cat", "dog", "bird", "car", "tree", "house", "boat", "plane", "train", "horse"] * 8
        )
    ]
    prefix = str(tmp_path / "c4_tiny")
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(captions),
        model_prefix=prefix,
        vocab_size=40,
        model_type="unigram",
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        minloglevel=2,
    )
    tree = random_tree(seed=3, vocab=40)
    path = str(tmp_path / "siglip_tiny.npz")
    save_npz(path, tree)
    clip = load_pretrained(path)  # finds the one .model next to the npz
    tokens = clip.tokenizer(["a photo of a cat", "a dog"])
    assert tokens.shape == (2, TL) and tokens.dtype == np.int32
    assert (tokens[:, -1] == 1).all()  # sticky EOS: last-token pooling sees EOS
    img = np.random.default_rng(0).integers(0, 256, size=(2, 20, 24, 3), dtype=np.uint8)
    x = clip.preprocess(list(img))
    assert x.shape == (2, IMG, IMG, 3) and -1 <= x.min() and x.max() <= 1
    out = jax.jit(clip.model.apply)({"params": clip.params}, x, tokens)
    _, _, logits = ref_forward(tree, x.astype(np.float64), tokens, "map")
    assert rel_err(out.logit_scale * out.zimg @ out.ztxt.T + out.logit_bias, logits) <= 1e-5


def test_not_a_two_tower_checkpoint(tmp_path):
    np.savez(tmp_path / "vit.npz", **{"params/embedding/kernel": np.zeros((8, 8, 3, 4))})
    with pytest.raises(ValueError, match="two-tower"):
        interop.from_big_vision(str(tmp_path / "vit.npz"))


def test_model_config_act_and_eps_fields():
    cfg = dict(
        embed_dim=8,
        image=dict(variant=None, width=32, depth=1, mlp_dim=64, num_heads=2, patch_size=8),
        text=dict(width=32, depth=1, mlp_dim=64, num_heads=2, vocab_size=40, context_length=8),
    )
    resolved = models.resolve_model_config({**cfg, "act": "gelu_tanh", "ln_eps": 1e-5})
    assert resolved["act"] == "gelu_tanh" and resolved["ln_eps"] == 1e-5
    with pytest.raises(ValueError, match="quick_gelu=True conflicts"):
        models.build({**cfg, "quick_gelu": True, "act": "gelu"})
    with pytest.raises(ValueError, match="act="):
        models.build({**cfg, "act": "relu"})
    with pytest.raises(ValueError, match="ln_eps"):
        models.build({**cfg, "ln_eps": 0})
