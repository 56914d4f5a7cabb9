"""Shared helpers: config resolvers and validation, the instantiation allow-list, logging, hardware queries.

Importing this package registers the ``croco.*`` OmegaConf resolvers used by ``conf/``.
"""

from croco.utils.resolvers import register_resolvers

register_resolvers()

__all__ = ["register_resolvers"]
