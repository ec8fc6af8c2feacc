"""Data curation algorithms: pure functions on captions, image sizes and embeddings.

The layer below the curation tool (which reads sources, embeds them with a model and writes
new shards); every function here takes arrays or strings and returns masks, groups or
counts, so it can be tested on generated data and reused by any driver.

  rules     caption rules (empty, word count, repeated tokens) and image rules (min side,
            aspect ratio); `Rules.reason` names the first rule a sample fails.
  filters   CLIP-score selection by threshold or kept fraction; row-wise cosine of image
            and text embeddings; the shared input checks.
  dedup     near-duplicate removal on unit-norm embeddings: exact (all pairs above a cosine
            threshold, chunked on device) and random-hyperplane LSH, one representative per
            connected group; the LSH method's pair recall / precision against exact.
  clusters  spherical k-means on device (k-means++ init, chunked Lloyd iterations) and
            TL;DR-style subsets balanced over clusters.

Nothing is imported here, so `import alignjax.curate` stays free of jax.
"""
