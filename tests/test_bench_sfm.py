"""benchmarks/sfm.py: the SIFT peers (COLMAP incremental and GLOMAP on one database), the mixed folder."""
import json
from pathlib import Path

import pycolmap
import pytest
from bench_loader import load as load_benchmark

sfm = load_benchmark("sfm")
CORNER = Path(__file__).resolve().parents[1] / "sample_scenes" / "corner"


def test_peers_share_one_sift_database(tmp_path):
    if not hasattr(pycolmap, "global_mapping"):
        pytest.skip("pycolmap without global_mapping")
    rows = sfm.run_peers(CORNER / "images", CORNER / "poses_gt.txt", tmp_path, num_threads=1)
    assert [r["method"] for r in rows] == ["COLMAP SIFT", "GLOMAP SIFT"]
    for r in rows:
        assert r["registered"] == "8/8" and r["auc@5"] > 80, r
        assert r["time"] >= r["time_features"] > 0 and len(r["models"]) == 1
    assert rows[0]["time_features"] == rows[1]["time_features"]
    assert len(list(tmp_path.glob("*.db"))) == 1
    assert "| GLOMAP SIFT | 8/8 |" in sfm.table("corner", rows)


def test_mixed_folder_and_table(tmp_path):
    data = tmp_path / "data"
    for scene in ("s1", "s2"):
        (data / scene / "images").mkdir(parents=True)
        for i in range(3):
            (data / scene / "images" / f"{i}.jpg").write_bytes(b"x")
    images = sfm.link_mixed(data, ["s1", "s2"], tmp_path / "mixed")
    assert sorted(p.relative_to(images).as_posix() for p in images.rglob("*.jpg")) == \
        [f"{s}/{i}.jpg" for s in ("s1", "s2") for i in range(3)]
    row = {"method": "ours (sift)", "time": 12.0, "models": [["s1/0.jpg", "s1/1.jpg", "s2/0.jpg"], ["s2/1.jpg"]]}
    text = sfm.mixed_table([row])
    assert "| ours (sift) | 3 (s1 2, s2 1); 1 (s2 1) | 4 | 12 |" in text


def test_titles_and_summary_against_the_better_peer():
    assert sfm.title(sfm.row_name("s", "uncal-offcentre")) == "s (uncal-offcentre)"
    assert sfm.title(sfm.row_name("s", "uncal")) == "s (uncal)" and sfm.title(sfm.row_name("s", "original")) == "s"
    row = dict(registered="3/3", time=30.0)
    rows = {"s-wrong-exif": [{**row, "method": "ours (sift)", "auc@3": 80.0},
                             {**row, "method": "COLMAP SIFT", "auc@3": 70.0, "time": 10.0},
                             {**row, "method": "GLOMAP SIFT", "auc@3": 85.0}]}
    text = sfm.summary_table(rows)
    assert "| s (wrong-exif) | ours (sift) | 3/3 | 80.0 | GLOMAP SIFT | 85.0 | -5.0 | 3.0x |" in text
    assert sfm.summary_table({"s": rows["s-wrong-exif"][:1]}) == ""  # no peers: no summary


def test_columns_side_by_side_each_with_its_own_runs_peer(tmp_path):
    row = dict(registered="3/3", time=30.0)
    run_a = {"s-uncal": [{**row, "method": "ours (sift)", "auc@3": 80.0},
                         {**row, "method": "COLMAP SIFT", "auc@3": 70.0, "time": 10.0},
                         {**row, "method": "GLOMAP SIFT", "auc@3": 75.0}]}
    run_b = {"s-uncal": [{**row, "method": "ours (roma)", "auc@3": 79.0, "registered": "2/3", "time": 100.0},
                         {**row, "method": "COLMAP SIFT", "auc@3": 78.0, "time": 20.0}],
             "t": [{**row, "method": "ours (roma)", "auc@3": 90.0}]}  # no peers: no cells
    text = sfm.columns_table({"sift": run_a, "roma": run_b})
    assert text.splitlines()[0] == "| scene | variant | ours (sift) | its better peer | ours (roma) | its better peer |"
    assert "| s | uncal | **80.0**, 3.0x | 75.0 (GLOMAP) | 79.0 (2/3), 5.0x | 78.0 (COLMAP) |" in text
    assert "| t | original | - | - | - | - |" in text
    files = []
    for i, run in enumerate((run_a, run_b)):
        files.append(tmp_path / f"{i}.json")
        files[-1].write_text(json.dumps(run))
    doc = tmp_path / "doc.md"
    doc.write_text("<!-- cols -->\n<!-- /cols -->\n")
    assert sfm.main(["--column", "sift", str(files[0]), "--column", "roma", str(files[1]),
                     "--readme", str(doc), "--table", "cols"]) == 0
    written = doc.read_text()
    assert "| s | uncal | **80.0**, 3.0x |" in written and "--column sift 0.json --column roma 1.json" in written
