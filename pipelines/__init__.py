"""Reconstruction pipeline steps (hloc style): each module has a ``confs`` dict and a ``main(...)``
that reads and writes files, so every step can be re-run alone.

- :mod:`.pairs`       images -> pairs.txt (exhaustive / sequential / retrieval / file / auto)
- :mod:`.match`       pairs -> matches.h5 (dense layout, resumable, kill -9 safe; SIFT or RoMa)
- :mod:`.tracks`      matches.h5 -> features.h5 + matches_idx.h5 (shared keypoints, sub-pixel)
- :mod:`.mapping`     -> COLMAP database, verification, incremental/global mapping (pycolmap)
- :mod:`.export`      -> sparse/0 (bin + txt), points.ply, report.json, preview PNGs
- :mod:`.reconstruct` all of the above in one call (what the CLI runs)
- :mod:`.evaluate`    scores against ground-truth poses / pairs
- :mod:`.synthetic`   synthetic homography scenes and a fake dense matcher (tests, measurements)
"""
