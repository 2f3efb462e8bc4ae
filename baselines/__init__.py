"""Prior training-free skipping methods, each a ``litestage_bench.engine.method.Method``.

Each is an entry point of ``litestage_bench.methods`` (pyproject.toml); importing a calibrating one
also registers its search:
- ``adaskip``: sub-layer cosine ranking, norm-ratio scaling, decode-time FFN extension (search);
- ``skipdecode``: per-position monotone skipping of the lower layers, dense prefill;
- ``unified``: k intermediate layers spread evenly;
- ``early_exit``: the last k layers;
- ``shortgpt``: the k layers of lowest Block Influence (search);
- ``sleb``: SLEB's greedy block removal order by calibration perplexity (search).
Every method takes ``k`` (``litestage-bench run --k K``); shared helpers live in ``common``.
"""
