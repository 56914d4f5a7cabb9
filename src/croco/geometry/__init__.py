"""Multi-view geometry shared by the generator, the importers and the downstream ground truth: camera conventions
(``cameras``), reprojection, co-visibility, optical flow and disparity from depth (``covisibility``).

Pure numpy; knows nothing about scenes, shards or networks.
"""
