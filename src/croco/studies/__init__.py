"""The paper's findings at the smoke scale: each study is a set of training runs and evaluations
(``croco.studies.runner``) and a report that writes its figures and its part of docs/results.md.

    python -m croco.studies crossview      # cross-view versus single-view (MAE-like) completion
    python -m croco.studies mask_overlap   # mask ratio x pair overlap, one Hydra multirun
    python -m croco.studies decoders       # CrossBlock versus CatBlock decoders at equal compute
    python -m croco.studies init           # pretrained versus scratch on depth, segmentation and stereo
"""

STUDIES: dict[str, str] = {
    "crossview": "croco.studies.crossview",
    "mask_overlap": "croco.studies.mask_overlap",
    "decoders": "croco.studies.decoders",
    "init": "croco.studies.init",
}
