"""Pair data: the shard format (``croco.data.shards``), transforms and the Lightning DataModule.

Kept import-light on purpose: importing ``croco.data`` loads no torch, Lightning or renderer; import the
submodules you need (``from croco.data.shards import ShardWriter``).
"""
