"""The embedded world that makes pairs without a download, and the habitat-sim path beside it.

``textures`` (procedural materials) -> ``scene`` (the container), ``room`` and ``furniture`` (what goes in it)
-> ``render`` (CPU ray caster) or ``habitat`` (habitat-sim) -> ``viewpoints`` (the paper's camera rules) and
``sampler`` (pairs, co-visibility, task ground truth) -> ``pipeline`` (``generate_pairs``: many scenes into
shards, parallel and resumable). Its output is the one shard format of ``croco.data.shards``.
"""
