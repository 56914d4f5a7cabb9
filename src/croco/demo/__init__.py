"""The reconstruction demo (the paper's figure: reference | masked | reconstruction | target) for one image
pair, as a command line (``croco.demo.cli``, ``python demo.py``) and a local web page (``croco.demo.ui``, gradio,
imported only when asked for). The work is in ``croco.demo.reconstruct``; see docs/demo.md.

Layer: above ``tasks`` (it uses the training panels) and ``importers`` (image reading), below the entry points.
"""
