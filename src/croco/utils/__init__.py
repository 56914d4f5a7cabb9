"""Shared helpers: config resolvers and validation, the instantiation allow-list, logging, hardware queries,
atomic file output. Importing ``croco.utils.resolvers`` registers the ``croco.*`` OmegaConf resolvers of ``conf/``.
"""
