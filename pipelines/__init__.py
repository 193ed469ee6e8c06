"""Reconstruction pipeline steps (hloc style): each step module has its defaults in ``confs`` and a
``main(...)`` that reads and writes files, so every step can be re-run alone.

- :mod:`.pairs`       images -> pairs.txt (exhaustive / sequential / retrieval / file / auto)
- :mod:`.match`       pairs -> matches.h5 (resumable, kill -9 safe; :mod:`.cluster` spreads it over Ray)
- :mod:`.matchers`    the matchers behind one interface: SIFT and RoMa
- :mod:`.tracks`      matches.h5 -> features.h5 + matches_idx.h5 (shared keypoints, sub-pixel, pair gate)
- :mod:`.principal_points` dense matches: shared cameras' principal points, from a SIFT reconstruction
- :mod:`.mapping`     -> COLMAP database, verification, view-graph check (:mod:`.viewgraph`), mapping
- :mod:`.export`      -> sparse/0 (bin + txt), points.ply, report.json, previews (:mod:`.figures`),
  report.html (:mod:`.report_html`)
- :mod:`.reconstruct` all of the above from one ``ReconstructConfig`` (what the CLI runs)
- :mod:`.evaluate`    scores against ground-truth poses / pairs
- :mod:`.h5io`        the HDF5 files (matches.h5 with its journal and shards, features.h5, matches_idx.h5)
- :mod:`.utils`       image scanning, pair names and files, atomic writes, JSON, timing
"""
