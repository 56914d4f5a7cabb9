"""Pair data: the one shard format (``shards``), the pair index and train / val split (``index``), the epoch
sampler (``sampler``), the dataset (``dataset``), transforms (``transforms``), the Lightning DataModule
(``datamodule``) and a contact sheet of a shard folder (``preview``).

Where data come from is not this package's business: the embedded generator (``croco.synth``) and, later,
importers of other sources end in the same shards. Kept import-light on purpose: importing ``croco.data`` loads
no torch or Lightning; import the submodules you need (``from croco.data.shards import ShardWriter``).
"""
