"""CroCo / CroCo v2: cross-view completion pretraining for 3D vision (Hydra + PyTorch Lightning)."""

__version__ = "0.1.0"
