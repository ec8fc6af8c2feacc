#!/usr/bin/env bash
# The prepared GPU benchmark (issue 8): ViT-B/16 CLIP and SigLIP training steps in bf16 on
# one accelerator, per-device batch 256 and 512, reporting MFU against a bf16 matmul
# measured in the same run. Sized to finish in about 8 minutes on one H200 (compilation
# of each B/16 step dominates); results go to runs/bench/gpu.json and the table to stdout.
#
#   bash experiments/gpu_bench.sh            # on the GPU host, from the repository root
#
# Needs only `pip install -e .` plus a CUDA jax (`pip install -U "jax[cuda12]"`); the
# PyTorch column is skipped (--torch off) to keep the run short.
set -euo pipefail
cd "$(dirname "$0")/.."
python -c 'import jax; assert jax.devices()[0].platform == "gpu", jax.devices()' \
  || { echo "no GPU visible to jax: install jax[cuda12]"; exit 1; }
mkdir -p runs/bench
# attn_cudnn: jax.nn.dot_product_attention with the cuDNN fused (flash) kernel; base lets
# JAX choose. Both bf16 compute, fp32 parameters and optimizer state.
python experiments/bench_train_step.py --models vit_b16_clip,vit_b16_siglip \
  --batch_sizes 256,512 --variants attn_cudnn,base --steps 10 --warmup 3 --torch off \
  --json runs/bench/gpu.json
