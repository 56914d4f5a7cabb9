"""Importers: pairs from data that already exists (an image-pair folder, a COLMAP reconstruction, ...) into the
one shard format of ``croco.data.shards`` (``python generate.py source=<name> input=... out=...``).

``base`` is the framework every importer plugs into (its docstring says how); ``images`` reads, resizes and
centre-crops images and moves their intrinsics along; ``folder`` and ``colmap`` are importers; ``colmap_io``
reads and writes COLMAP's model files.
"""
