"""Benchmark of the trainer's own train step, side by side with a PyTorch CLIP step.

  python experiments/bench_train_step.py                       # demo + bench-s, CPU
  python experiments/bench_train_step.py --models bench-s --variants base,scan,remat,bf16 \
      --json runs/bench/bench_s.json
  python experiments/bench_train_step.py --models vit_b16_clip,vit_b16_siglip \
      --batch_sizes 256,512 --json runs/bench/gpu.json              # accelerator
  python experiments/bench_train_step.py --models demo,bench-s \
      --variants base,pdrop50,pdrop75 --torch off             # FLIP patch dropout

For each (model, variant) it builds the real `alignjax.train.build_trainer(config)` step
(jitted, sharded over the mesh, donated state), and reports:

  compile_s          lower + compile of the step
  step_ms            median wall time of >= 10 steps after warm-up (block_until_ready)
  samples_per_s      global batch / step time
  flops_per_step     XLA's cost analysis of the compiled step (whole mesh; for `scan`
                     variants taken from the unrolled step, as XLA counts a loop body once)
  flops_per_s        flops_per_step / step time;  mfu = flops_per_s / matmul peak
  peak_memory_bytes  per device: the allocator's peak where the backend reports it
                     (GPU/TPU), else XLA's memory analysis (arguments + outputs + temps
                     - aliased)

The machine's matmul peak is measured in the same run: the best of several large jitted
matmuls (fp32 on CPU, bf16 on accelerators), 2 n^3 FLOPs each.

The PyTorch reference (same run, same shapes) is open_clip's step when open_clip is
importable (its VisionTransformer/TextTransformer from a custom config, ClipLoss, AdamW);
otherwise `transformers.CLIPModel` (the same architecture: pre-LN ViT and causal text
transformer, symmetric InfoNCE) with torch.optim.AdamW. The row says which one ran.
`ratio_vs_torch` = alignjax samples/s / PyTorch samples/s.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))

from alignjax import parallel, train  # noqa: E402
from alignjax.config import base_config  # noqa: E402


# --------------------------------------------------------------------------------------
# Model configurations.


def _tower(m, width, depth, heads, mlp=None):
    m.width, m.depth, m.num_heads, m.mlp_dim = width, depth, heads, mlp or 4 * width


def bench_config(name: str, batch_size: int | None, accelerator: bool):
    """A full training config for benchmark model `name` (trained on random data)."""
    c = base_config()
    c.mesh = dict(data=-1, fsdp=1, tensor=1)
    c.evals = {}
    m = c.model
    m.dtype = 'bfloat16' if accelerator else 'float32'
    if name == 'demo':  # configs/demo.py's model.
        sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..', 'configs'))
        import demo  # pylint: disable=import-outside-toplevel

        c = demo.get_config()
        c.evals = {}
        c.mesh = dict(data=-1, fsdp=1, tensor=1)
        c.model.dtype = 'bfloat16' if accelerator else 'float32'
    elif name == 'bench-s':  # Issue 8's small model: ViT 384x6 /8 at 64 px, text 384x6.
        c.batch_size = 64
        c.data.image_size = 64
        m.embed_dim = 256
        m.image.variant = None
        m.image.patch_size = 8
        _tower(m.image, 384, 6, 6)
        _tower(m.text, 384, 6, 6)
        m.text.context_length = 32
        m.text.vocab_size = 49408
    elif name in ('vit_b16_clip', 'vit_b16_siglip'):  # OpenAI CLIP B/16 shapes, 224 px.
        c.batch_size = 256
        c.data.image_size = 224
        m.embed_dim = 512
        m.image.variant = 'B/16'
        m.text.context_length = 77
        m.text.vocab_size = 49408
        if name.endswith('siglip'):
            c.loss.name = 'siglip'
            m.logit_scale_init, m.logit_bias_init = 10.0, -10.0
            m.image.pool = 'map'
            m.text.context_length = 64
            m.text.vocab_size = 32000
            m.text.convention = 'big_vision'
            c.optim.clamp_logit_scale = False
    else:
        raise ValueError(f'Unknown model {name!r}; valid: {list(MODELS)}.')
    if batch_size:
        c.batch_size = batch_size
    c.tokenizer.name = 'word_hash'
    c.tokenizer.vocab_size = c.model.text.vocab_size
    c.tokenizer.context_length = c.model.text.context_length
    c.total_steps = 1000
    return c


MODELS = ('demo', 'bench-s', 'vit_b16_clip', 'vit_b16_siglip')

# Variant name -> overrides of the config (dotted paths).
VARIANTS = {
    'base': {},
    'scan': {'model.scan': True},
    'remat': {'model.remat': 'nothing_saveable'},
    'remat_dots': {'model.remat': 'dots_with_no_batch_dims_saveable'},
    'bf16': {'model.dtype': 'bfloat16'},
    'fp32': {'model.dtype': 'float32'},
    'attn_xla': {'model.attention_impl': 'xla'},
    'attn_cudnn': {'model.attention_impl': 'cudnn', 'model.dtype': 'bfloat16'},
    'fsdp': {'mesh': {'data': 1, 'fsdp': -1, 'tensor': 1}},
    # FLIP patch dropout: the fraction of patch tokens each example drops in training.
    'pdrop50': {'model.image.patch_dropout': 0.5},
    'pdrop75': {'model.image.patch_dropout': 0.75},
}


def apply_overrides(config, overrides):
    for path, value in overrides.items():
        node = config
        *parents, leaf = path.split('.')
        for p in parents:
            node = node[p]
        node[leaf] = value
    return config


# --------------------------------------------------------------------------------------
# Measurements.


def random_batch(config, rng: np.random.Generator):
    b, s, l = config.batch_size, config.data.image_size, config.model.text.context_length
    tokens = rng.integers(1, config.model.text.vocab_size - 1, size=(b, l), dtype=np.int32)
    tokens[:, l // 2] = config.model.text.vocab_size - 1  # An EOT-like max id mid-sequence.
    return {
        'image': rng.standard_normal((b, s, s, 3), dtype=np.float32),
        'tokens': tokens,
    }


def _first(x):
    return x[0] if isinstance(x, (list, tuple)) else x


def peak_memory_bytes(compiled) -> tuple[int | None, str]:
    stats = jax.local_devices()[0].memory_stats() or {}
    if 'peak_bytes_in_use' in stats:
        return int(stats['peak_bytes_in_use']), 'allocator peak'
    ma = compiled.memory_analysis()
    if ma is None:
        return None, 'n/a'
    total = (
        ma.argument_size_in_bytes
        + ma.output_size_in_bytes
        + ma.temp_size_in_bytes
        - ma.alias_size_in_bytes
    )
    return int(total), 'XLA memory analysis'


def time_calls(fn, steps: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def matmul_peak(accelerator: bool) -> float:
    """Best FLOP/s of large jitted matmuls on device 0 (fp32 on CPU, bf16 elsewhere)."""
    dtype = jnp.bfloat16 if accelerator else jnp.float32
    sizes = (4096, 8192) if accelerator else (1024, 2048)
    best = 0.0
    for n in sizes:
        a = jnp.ones((n, n), dtype)
        b = jnp.ones((n, n), dtype)
        f = jax.jit(lambda x, y: x @ y)
        times = time_calls(lambda: f(a, b).block_until_ready(), steps=5, warmup=2)
        best = max(best, 2 * n**3 / min(times))
    return best


def bench_alignjax(config, steps: int, warmup: int) -> dict:
    t = train.build_trainer(config)
    state = t.init_fn()
    batch = parallel.make_global_batch(random_batch(config, np.random.default_rng(0)), t.mesh)
    t0 = time.perf_counter()
    compiled = t.step_fn.lower(state, batch).compile()
    compile_s = time.perf_counter() - t0
    flops = float(_first(compiled.cost_analysis()).get('flops', float('nan')))
    box = [state]

    def step():
        box[0], metrics = compiled(box[0], batch)
        jax.block_until_ready(metrics)

    times = time_calls(step, steps, warmup)
    step_s = statistics.median(times)
    peak, peak_kind = peak_memory_bytes(compiled)
    return dict(
        compile_s=compile_s,
        step_ms=1e3 * step_s,
        samples_per_s=config.batch_size / step_s,
        flops_per_step=flops,
        flops_per_s=flops / step_s,
        peak_memory_bytes=peak,
        peak_memory_kind=peak_kind,
    )


def bench_torch(config, steps: int, warmup: int) -> dict | None:
    """The same model and batch as a PyTorch training step, or None without torch."""
    try:
        import torch  # pylint: disable=import-outside-toplevel
    except ImportError:
        return None
    torch.manual_seed(0)
    torch.set_num_threads(os.cpu_count() or 1)
    device = 'cuda' if torch.cuda.is_available() else 'cpu'
    mi, mt = config.model.image, config.model.text
    if mi.variant:  # Only B/16 is used with a variant here.
        width, depth, heads, mlp, patch = 768, 12, 12, 3072, 16
    else:
        width, depth, heads, mlp, patch = (
            mi.width,
            mi.depth,
            mi.num_heads,
            mi.mlp_dim,
            mi.patch_size,
        )
    try:
        import open_clip  # pylint: disable=import-outside-toplevel

        model = open_clip.CLIP(
            embed_dim=config.model.embed_dim,
            vision_cfg=dict(
                layers=depth,
                width=width,
                head_width=width // heads,
                mlp_ratio=mlp / width,
                patch_size=patch,
                image_size=config.data.image_size,
            ),
            text_cfg=dict(
                context_length=mt.context_length,
                vocab_size=mt.vocab_size,
                width=mt.width,
                heads=mt.num_heads,
                layers=mt.depth,
            ),
        ).to(device)
        loss_mod = open_clip.ClipLoss()

        def loss_of(images, tokens):
            f_img, f_txt, scale = model(images, tokens)[:3]
            return loss_mod(f_img, f_txt, scale)

        impl = f'open_clip {open_clip.__version__}'
    except ImportError:
        try:
            import transformers  # pylint: disable=import-outside-toplevel
        except ImportError:
            return None
        hf_config = transformers.CLIPConfig(
            projection_dim=config.model.embed_dim,
            vision_config=dict(
                hidden_size=width,
                num_hidden_layers=depth,
                num_attention_heads=heads,
                intermediate_size=mlp,
                patch_size=patch,
                image_size=config.data.image_size,
                hidden_act='gelu',
            ),
            text_config=dict(
                hidden_size=mt.width,
                num_hidden_layers=mt.depth,
                num_attention_heads=mt.num_heads,
                intermediate_size=mt.mlp_dim,
                max_position_embeddings=mt.context_length,
                vocab_size=mt.vocab_size,
                hidden_act='gelu',
                eos_token_id=mt.vocab_size - 1,
            ),
        )
        model = transformers.CLIPModel(hf_config).to(device)

        def loss_of(images, tokens):
            return model(input_ids=tokens, pixel_values=images, return_loss=True).loss

        impl = f'transformers {transformers.__version__} CLIPModel (open_clip not importable)'
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1)
    batch = random_batch(config, np.random.default_rng(0))
    images = torch.from_numpy(batch['image']).permute(0, 3, 1, 2).contiguous().to(device)
    tokens = torch.from_numpy(batch['tokens']).long().to(device)
    dtype = torch.bfloat16 if config.model.dtype == 'bfloat16' else None

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device, dtype=dtype, enabled=dtype is not None):
            loss = loss_of(images, tokens)
        loss.backward()
        opt.step()
        if device == 'cuda':
            torch.cuda.synchronize()

    times = time_calls(step, steps, warmup)
    step_s = statistics.median(times)
    return dict(impl=impl, step_ms=1e3 * step_s, samples_per_s=config.batch_size / step_s)


# --------------------------------------------------------------------------------------
# Command line.


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--models', default='demo,bench-s', help=f'Comma list of {MODELS}.')
    p.add_argument('--variants', default='base', help=f'Comma list of {list(VARIANTS)}.')
    p.add_argument('--batch_sizes', default='', help='Comma list (default: the model\'s).')
    p.add_argument('--steps', type=int, default=10)
    p.add_argument('--warmup', type=int, default=3)
    p.add_argument('--torch', default='auto', choices=('auto', 'off'))
    p.add_argument('--json', default=None, help='Write the results here as JSON.')
    args = p.parse_args(argv)

    platform = jax.devices()[0].platform
    accelerator = platform != 'cpu'
    peak = matmul_peak(accelerator)
    info = dict(
        platform=platform,
        device_kind=jax.devices()[0].device_kind,
        num_devices=jax.device_count(),
        cpu_count=os.cpu_count(),
        jax_version=jax.__version__,
        date=time.strftime('%Y-%m-%d %H:%M:%S %Z'),
        matmul_peak_flops_per_s=peak,
    )
    print(f'{info["device_kind"]} x{info["num_devices"]}: matmul peak {peak / 1e9:.1f} GFLOP/s')

    rows = []
    unrolled_flops = {}  # (model, batch, dtype) -> FLOPs of the unrolled step.
    batch_sizes = [int(b) for b in args.batch_sizes.split(',') if b] or [None]
    for model in args.models.split(','):
        for bs in batch_sizes:
            torch_result = None
            for variant in args.variants.split(','):
                if variant not in VARIANTS:
                    raise SystemExit(f'Unknown variant {variant!r}; valid: {list(VARIANTS)}.')
                config = apply_overrides(bench_config(model, bs, accelerator), VARIANTS[variant])
                r = bench_alignjax(config, args.steps, args.warmup)
                # XLA's cost analysis counts a while-loop body once, so a scanned model's
                # FLOPs are those of one layer: take them from the unrolled variant.
                key = (model, config.batch_size, config.model.dtype)
                if config.model.scan and key in unrolled_flops:
                    r['flops_per_step'] = unrolled_flops[key]
                    r['flops_per_s'] = r['flops_per_step'] / (r['step_ms'] / 1e3)
                elif not config.model.scan:
                    unrolled_flops[key] = r['flops_per_step']
                r.update(
                    model=model,
                    variant=variant,
                    batch_size=config.batch_size,
                    dtype=config.model.dtype,
                    mfu=r['flops_per_s'] / peak,
                )
                if variant == args.variants.split(',')[0] and args.torch == 'auto':
                    torch_result = bench_torch(config, args.steps, args.warmup)
                if torch_result is not None:
                    r['torch_impl'] = torch_result['impl']
                    r['torch_samples_per_s'] = torch_result['samples_per_s']
                    r['ratio_vs_torch'] = r['samples_per_s'] / torch_result['samples_per_s']
                rows.append(r)
                print_row(r)
    print_table(rows, info)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, 'w') as f:
            json.dump(dict(info, results=rows), f, indent=1)
        print(f'wrote {args.json}')
    return rows


def print_row(r):
    print(
        f'  {r["model"]}/{r["variant"]} b={r["batch_size"]}: {r["samples_per_s"]:.1f} samples/s, '
        f'compile {r["compile_s"]:.1f}s',
        flush=True,
    )


def print_table(rows, info):
    head = (
        '| model | variant | batch | dtype | compile s | step ms | samples/s | GFLOP/s | '
        '% of matmul peak | peak MiB | PyTorch samples/s | ratio |'
    )
    print(
        f'\n{info["device_kind"]}, {info["date"]}, matmul peak '
        f'{info["matmul_peak_flops_per_s"] / 1e9:.1f} GFLOP/s\n'
    )
    print(head)
    print('|' + '---|' * (head.count('|') - 1))
    for r in rows:
        mem = r['peak_memory_bytes']
        print(
            f'| {r["model"]} | {r["variant"]} | {r["batch_size"]} | {r["dtype"]} | '
            f'{r["compile_s"]:.1f} | {r["step_ms"]:.1f} | {r["samples_per_s"]:.1f} | '
            f'{r["flops_per_s"] / 1e9:.1f} | {100 * r["mfu"]:.0f}% | '
            f'{"n/a" if mem is None else f"{mem / 2**20:.0f}"} | '
            f'{r.get("torch_samples_per_s", float("nan")):.1f} | '
            f'{r.get("ratio_vs_torch", float("nan")):.2f} |'
        )
    torch_impls = {r['torch_impl'] for r in rows if 'torch_impl' in r}
    for impl in torch_impls:
        print(f'PyTorch reference: {impl}')


if __name__ == '__main__':
    main()
