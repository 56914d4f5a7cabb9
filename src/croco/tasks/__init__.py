"""LightningModules of the project's tasks and what they share (optimiser recipe, callbacks, export).

``croco.tasks.pretrain.PretrainTask`` is CroCo pretraining; ``croco.tasks.training.train`` runs a composed
Hydra config end to end (what ``train.py`` calls).
"""
