"""Accuracy evaluation of trained networks (speed benchmarks live in ``croco.bench``).

``croco.eval.crossview``: does a pretrained CroCo network use its second view? (the cross-view health metric;
``python -m croco.eval.crossview --help``). Modules are not imported here, so ``python -m`` runs them cleanly.
"""
