"""Faults and bad input (issue 5, part 4): one function per case, shared by the test and the table.

Each ``CASES[name](work) -> CaseResult`` breaks one thing on purpose inside ``work`` (a scratch folder),
runs the pipeline as a user would (the CLI or the step's ``main`` in a subprocess where a kill or a
resource limit is involved), and checks three things: a clear message, the rest of the run goes on,
nothing finished is lost. Every failed check is listed in ``CaseResult.failures``; those that mean
lost (or silently wrong) data also in ``CaseResult.lost``.

Used by ``tests/test_faults.py`` (one test per case: no failure) and ``benchmarks/faults.py`` (the
table). Images are the project's own sample scene (``sample_scenes/corner``) shrunk to 320x240 (its
EXIF focal kept) so that SIFT, the matcher of every case, is fast; cases that need the same finished
run share it through ``work/_shared`` (built once per ``work`` folder).

Kills are SIGKILL (no handler runs): timed from outside for matching and training (the moment is
whatever the run is doing), and placed at the worst moment from inside for the tracks step (between
its two file renames) and the mapper (after its third registered image), so that those tests do not
depend on timing.
"""
from __future__ import annotations

import json
import os
import re
import resource
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import combinations
from pathlib import Path
from typing import Callable, Optional, Sequence

import cv2
import h5py
import numpy as np
from PIL import Image

from roma_sfm.pipelines import h5io, matchers

ROOT = Path(__file__).resolve().parents[1]
SCENE = ROOT / "sample_scenes" / "corner" / "images"
WIDTH = 320  # of the scene images (the sample scene is 480x360)
VIEWS = 6  # views of the cases that match a whole scene (15 pairs)


@dataclass
class CaseResult:
    case: str
    action: str  # what was done
    outcome: str = ""  # what the pipeline said (the message a user sees)
    failures: list[str] = field(default_factory=list)  # checks that did not hold
    lost: list[str] = field(default_factory=list)  # the failed checks that mean lost or wrong data
    facts: dict = field(default_factory=dict)  # the numbers the checks used

    def check(self, ok: bool, what: str, loss: bool = False) -> bool:
        """Record ``what`` (the expected behaviour) as failed unless ``ok``."""
        if not ok:
            self.failures.append(what)
            if loss:
                self.lost.append(what)
        return bool(ok)

    @property
    def data_lost(self) -> str:
        return "no" if not self.lost else "YES: " + "; ".join(self.lost)


# ---------------------------------------------------------------------------------------------- helpers
def fresh(work: Path, name: str) -> Path:
    """An empty folder for one case (what an earlier run of the case left is removed)."""
    d = Path(work) / name
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    return d


def scene(dst: Path, views: Sequence[int], names: Optional[Sequence[str]] = None, width: int = WIDTH) -> list[str]:
    """Views of the sample scene, shrunk to ``width`` px (EXIF kept: its 35 mm focal does not change),
    saved as ``names`` (default ``0000.jpg`` ...) under ``dst``; returns the names."""
    names = list(names or [f"{v:04d}.jpg" for v in views])
    for v, name in zip(views, names):
        im = Image.open(SCENE / f"{v:04d}.jpg")
        out = Path(dst) / name
        out.parent.mkdir(parents=True, exist_ok=True)
        im.resize((width, width * im.height // im.width), Image.LANCZOS).save(out, quality=92, exif=im.getexif())
    return names


def scene_rgb(view: int, width: int = WIDTH) -> np.ndarray:
    im = Image.open(SCENE / f"{view:04d}.jpg")
    return np.asarray(im.resize((width, width * im.height // im.width), Image.LANCZOS).convert("RGB"))


def flat_png(path: Path, width: int, height: int, rgb: tuple[int, int, int] = (90, 120, 150)) -> None:
    """A valid PNG of one colour, written in well under a second whatever its size: after a full
    flush a deflate segment does not refer back, so the segment of one 'up'-filtered row (all
    zeros) is repeated instead of compressing width x height x 3 bytes."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    first, row = b"\x00" + bytes(rgb) * width, b"\x02" + bytes(3 * width)
    c = zlib.compressobj(9)
    head = c.compress(first) + c.flush(zlib.Z_FULL_FLUSH)
    seg = c.compress(row) + c.flush(zlib.Z_FULL_FLUSH)
    adler = zlib.adler32(first)
    for _ in range(height - 1):
        adler = zlib.adler32(row, adler)
    idat = head + seg * (height - 1) + b"\x03\x00" + struct.pack(">I", adler)  # empty final block, checksum
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    Path(path).write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def reconstruct(images: Path, out: Path) -> dict:
    from roma_sfm.pipelines import reconstruct as reconstruct_

    return reconstruct_.main(images, out, matcher="sift", progress=False, num_threads=1, gt_poses=None)


def python(code: str, *args: str, timeout: float = 120, **kw) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter (``sys.argv[1:]`` = ``args``)."""
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, **kw)


def cli(*args: str, timeout: float = 120, **kw) -> subprocess.CompletedProcess:
    """``roma-sfm ARGS`` (the installed CLI, run as a module so PATH does not matter)."""
    return subprocess.run([sys.executable, "-m", "roma_sfm.cli.main", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "COLUMNS": "200"}, **kw)


def kill_when(cmd: list[str], ready: Callable[[], bool], timeout: float = 60) -> int:
    """Start ``cmd``, SIGKILL it as soon as ``ready()`` holds; returns its exit code (-9 if killed,
    else it finished first)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.time()
    try:
        while proc.poll() is None and time.time() - t0 < timeout:
            if ready():
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.02)
    finally:
        if proc.poll() is None and time.time() - t0 >= timeout:
            proc.kill()
        proc.wait()
    return proc.returncode


def last_line(text: str, pattern: str) -> str:
    """The last line of ``text`` that matches ``pattern`` (regex), '' if none."""
    lines = [ln for ln in text.splitlines() if re.search(pattern, ln)]
    return lines[-1].strip() if lines else ""


def match_counts(log: str) -> Optional[tuple[int, int, int]]:
    """(new, resumed, failed) from the match step's closing log line."""
    m = re.findall(r"(\d+) new, (\d+) resumed, (\d+) failed", log)
    return tuple(int(v) for v in m[-1]) if m else None


def stored_pairs(matches: Path) -> set[tuple[str, str]]:
    """Complete pairs of a matches.h5 and of its journal (what a rerun must not match again)."""
    from roma_sfm.pipelines import match

    pairs = set(h5io.list_pairs(matches)) if Path(matches).exists() else set()
    journal = h5io.journal_dir(matches)
    for e in sorted(journal.glob("*.npz")) if journal.is_dir() else []:
        try:
            with np.load(e, allow_pickle=False) as z:
                pairs.add((str(z["name0"]), str(z["name1"])))
        except FileNotFoundError:  # merged into the h5 by a running match step meanwhile
            continue
    return {tuple(sorted(p)) for p in pairs}


def h5_opens(path: Path) -> bool:
    try:
        with h5py.File(path, "r"):
            return True
    except OSError:
        return False


def model_names(sparse: Path) -> set[str]:
    import pycolmap

    rec = pycolmap.Reconstruction(str(sparse))
    return {im.name for im in rec.images.values() if im.has_pose}


# ---------------------------------------------------------------------------------------------- shared runs
@lru_cache(maxsize=None)
def _matched_scene(work: Path) -> Path:
    """``VIEWS`` views matched exhaustively into ``<dir>/matches.h5`` (for the tracks and mapping cases)."""
    from roma_sfm.pipelines import match

    d = work / "_shared" / "matched"
    shutil.rmtree(d, ignore_errors=True)
    names = scene(d / "images", range(VIEWS))
    match.main(list(combinations(names, 2)), d / "images", d / "matches.h5", "sift", progress=False)
    return d


MESSY_BAD = {"corrupt.jpg", "zero.jpg", "truncated.jpg", "one_pixel.png", "huge_20000.png"}


@lru_cache(maxsize=None)
def _messy_run(work: Path) -> dict:
    """One reconstruction of 5 plain views + the unusual but valid images + the bad ones; returns its
    report.json, which the image cases read. The rotated file is view 7 stored turned by 90 degrees
    with orientation 6."""
    d = work / "_shared" / "messy"
    shutil.rmtree(d, ignore_errors=True)
    images = d / "images"
    scene(images, range(5))
    rgb = scene_rgb(5)
    cv2.imwrite(str(images / "0005_16bit.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR).astype(np.uint16) * 257)
    Image.fromarray(scene_rgb(6)).convert("CMYK").save(images / "0006_cmyk.jpg", quality=92)
    exif = Image.Exif()
    exif[0x0112] = 6  # display = stored pixels turned 90 degrees clockwise
    Image.fromarray(np.rot90(scene_rgb(7), 1)).save(images / "0007_rot.jpg", exif=exif, quality=95)
    Image.fromarray(scene_rgb(7)).save(d / "0007_upright.jpg", quality=95)  # outside the folder: the reference
    raw = (images / "0000.jpg").read_bytes()
    (images / "truncated.jpg").write_bytes(raw[: len(raw) // 2])
    (images / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0" + np.random.default_rng(0).bytes(4000))
    (images / "zero.jpg").write_bytes(b"")
    Image.new("RGB", (1, 1), (200, 40, 40)).save(images / "one_pixel.png")
    flat_png(images / "huge_20000.png", 20000, 20000)
    reconstruct(images, d / "out")
    return json.loads((d / "out" / "report.json").read_text())


def _messy_case(work: Path, name: str, action: str) -> tuple[CaseResult, dict]:
    """Common checks of an image case: the run goes on with every other image."""
    rep = _messy_run(work)
    r = CaseResult(name, action)
    r.facts = {"status": rep["status"], "registered": rep.get("images_registered"),
               "skipped": rep.get("images_skipped", {})}
    r.check(rep["status"] == "ok", f"the run goes on (status {rep['status']}: {rep['message']})")
    r.check(set(rep.get("registered", [])) >= {f"{i:04d}.jpg" for i in range(5)},
            "every plain image is registered", loss=True)
    r.check(set(rep.get("images_skipped", {})) == MESSY_BAD,
            f"exactly the bad files are skipped (got {sorted(rep.get('images_skipped', {}))})")
    return r, rep


def _skipped_case(work: Path, name: str, action: str, file: str, words: Sequence[str]) -> CaseResult:
    r, rep = _messy_case(work, name, action)
    reason = rep.get("images_skipped", {}).get(file, "")
    r.outcome = f'skipped, report.json: "{reason}"' if reason else "not skipped"
    r.check(bool(reason) and all(w in reason for w in words), f"{file} skipped with a reason saying {words}")
    return r


def _valid_case(work: Path, name: str, action: str, file: str) -> tuple[CaseResult, dict]:
    r, rep = _messy_case(work, name, action)
    ok = r.check(file in rep.get("registered", []), f"{file} is used and registered", loss=True)
    r.outcome = "read as 8-bit RGB, registered" if ok else f"not registered: {rep.get('images_skipped', {}).get(file)}"
    return r, rep


# ---------------------------------------------------------------------------------------------- kill -9
def _to_match(work: Path, name: str) -> tuple[Path, list[tuple[str, str]], Path]:
    """(folder, pairs, matches.h5 to write) of a case that matches ``VIEWS`` views; the pairs are in
    ``<folder>/pairs.txt``, the images in ``<folder>/images``."""
    from roma_sfm.pipelines.utils import write_pairs

    d = fresh(work, name)
    pairs = list(combinations(scene(d / "images", range(VIEWS)), 2))
    write_pairs(pairs, d / "pairs.txt")
    return d, pairs, d / "matches.h5"


def case_kill_match(work: Path) -> CaseResult:
    r = CaseResult("kill -9 during matching", "`roma-sfm match` (SIFT, 15 pairs) killed after its first pairs, "
                                             "then the same command again")
    d, pairs, out = _to_match(work, "kill_match")
    args = ["match", d / "images", "--pairs", d / "pairs.txt", "-o", out, "--matcher", "sift"]
    journal = h5io.journal_dir(out)
    rc = kill_when([sys.executable, "-m", "roma_sfm.cli.main", *map(str, args)],
                   lambda: len(stored_pairs(out)) >= 3)
    done = stored_pairs(out)
    r.facts.update(exit_code=rc, done_at_kill=len(done), pairs=len(pairs))
    r.check(rc == -signal.SIGKILL and 0 < len(done) < len(pairs), f"killed mid-run (exit {rc}, {len(done)} pairs done)")
    r.check(not out.exists() or h5_opens(out), "matches.h5 opens after the kill", loss=True)
    rerun = cli(*args)
    counts = match_counts(rerun.stderr)
    r.facts.update(rerun_exit=rerun.returncode, new_resumed_failed=counts)
    closing = re.findall(r"match: \d+ new, \d+ resumed, \d+ failed pairs", rerun.stderr)
    r.outcome = f'{len(done)} pairs done at the kill; rerun: "{closing[-1] if closing else rerun.stderr[-200:]}"'
    r.check(rerun.returncode == 0, f"the rerun completes (exit {rerun.returncode}: {rerun.stderr[-300:]})")
    r.check(counts is not None and counts[1] == len(done), "every pair finished before the kill is resumed",
            loss=True)
    r.check(counts is not None and counts[0] == len(pairs) - len(done), "no finished pair is matched again")
    r.check(h5_opens(out) and len(stored_pairs(out)) == len(pairs) and not journal.exists(),
            "matches.h5 holds every pair, the journal is merged", loss=True)
    return r


# SIGKILL this process at the n-th call of owner.attr (before the call runs): a kill at an exact moment
KILL_ON_CALL = '''
import os, signal, sys
def kill_on_call(owner, attr, n):
    real, calls = getattr(owner, attr), []
    def wrapper(*a, **k):
        calls.append(1)
        if len(calls) == n:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*a, **k)
    setattr(owner, attr, wrapper)
'''


def _tracks_inputs(work: Path, name: str) -> tuple[Path, Path, Path, Path]:
    """(dir, matches.h5, features.h5, matches_idx.h5) of a case that starts from the matched scene."""
    d = fresh(work, name)
    shutil.copy(_matched_scene(work) / "matches.h5", d / "matches.h5")
    return d, d / "matches.h5", d / "features.h5", d / "matches_idx.h5"


def case_kill_tracks(work: Path) -> CaseResult:
    from roma_sfm.pipelines import mapping, tracks

    r = CaseResult("kill -9 during track building", "`tracks.main` over a finished run, killed between renaming "
                                                   "matches_idx.h5 and features.h5 into place, then run again")
    d, matches, features, idx = _tracks_inputs(work, "kill_tracks")
    tracks.main(matches, features, idx, 2.0)  # the earlier, finished run
    before = h5io.read_features(features)
    p = python(KILL_ON_CALL + "from roma_sfm.pipelines import tracks\nkill_on_call(os, 'replace', 2)\n"
                              "tracks.main(*sys.argv[1:4], 2.0)\n", matches, features, idx)
    r.check(p.returncode == -signal.SIGKILL, f"killed at the second rename (exit {p.returncode}: {p.stderr[-300:]})")
    r.check(h5_opens(features) and h5_opens(idx), "features.h5 and matches_idx.h5 open after the kill", loss=True)
    try:
        mapping.main(d / "sfm", _matched_scene(work) / "images", features, idx, num_threads=1)
        refused = ""
    except ValueError as e:
        refused = str(e)
    r.outcome = f'the map step refuses the mix: "{refused.replace(str(d) + "/", "")}"; the rerun completes'
    r.check("different runs" in refused, "the mapping step refuses a features.h5 and a matches_idx.h5 of two runs")
    stats = tracks.main(matches, features, idx, 2.0)
    after = h5io.read_features(features)
    h5io.check_same_run(features, idx)
    r.facts.update(images=stats.num_images, exit_code=p.returncode)
    r.check(after.keys() == before.keys() and all(np.array_equal(after[k], before[k]) for k in before),
            "the rerun writes the same keypoints as the uninterrupted run", loss=True)
    r.check(not list(d.glob("*.tmp*")), "no temporary file is left")
    return r


MAPPING_KILL = '''
import os, signal, sys, pycolmap
from roma_sfm.pipelines import mapping
real, registered = pycolmap.incremental_mapping, []
def kill_at_third():
    registered.append(1)
    if len(registered) == 3:
        os.kill(os.getpid(), signal.SIGKILL)
pycolmap.incremental_mapping = lambda *a, **k: real(*a, **k, next_image_callback=kill_at_third)
mapping.main(*sys.argv[1:5], num_threads=1, mapper="incremental")
'''


def case_kill_mapping(work: Path) -> CaseResult:
    import pycolmap

    from roma_sfm.pipelines import mapping, tracks

    r = CaseResult("kill -9 during mapping", "`mapping.main` (incremental mapper) over a finished run, killed by "
                                            "the mapper's callback after its 3rd registered image, then run again")
    pycolmap.logging.minloglevel = 1  # warnings and errors only, as reconstruct sets it
    d, matches, features, idx = _tracks_inputs(work, "kill_mapping")
    images, sfm = _matched_scene(work) / "images", d / "sfm"
    tracks.main(matches, features, idx, 2.0)
    first = mapping.main(sfm, images, features, idx, num_threads=1, mapper="incremental")  # it has a callback
    n0 = first.reconstruction.num_reg_images() if first.reconstruction is not None else 0
    p = python(MAPPING_KILL, sfm, images, features, idx)
    r.check(p.returncode == -signal.SIGKILL, f"killed inside the mapper (exit {p.returncode}: {p.stderr[-300:]})")
    with pycolmap.Database.open(sfm / "database.db") as db:
        n_db = db.num_images()
    kept = model_names(sfm / "models" / "0") if (sfm / "models" / "0").is_dir() else set()
    r.check(n_db == VIEWS, f"the earlier database.db opens with its {VIEWS} images (got {n_db})", loss=True)
    r.check(len(kept) == n0 > 0, f"the earlier model is intact ({len(kept)} of {n0} images)", loss=True)
    again = mapping.main(sfm, images, features, idx, num_threads=1, mapper="incremental")
    n1 = again.reconstruction.num_reg_images() if again.reconstruction is not None else 0
    r.facts.update(registered_first=n0, registered_after_kill=len(kept), registered_rerun=n1)
    r.outcome = (f"after the kill the earlier database.db and model ({len(kept)} images) are intact; the rerun "
                 f"replaces them ({n1} images)")
    r.check(n1 == n0, f"the rerun registers as many images ({n1} vs {n0})")
    r.check(not [q.name for q in sfm.iterdir() if ".tmp" in q.name or q.name.endswith(".old")],
            "no temporary database or model folder is left")
    return r


def _train_config(d: Path, steps: int) -> Path:
    """A model of a few thousand parameters at 56x56 px on 3 random textures: a few ms per step."""
    from synthetic import random_texture
    from roma_sfm.presets import RefinerConfig, get_preset

    (d / "photos").mkdir(parents=True, exist_ok=True)
    for i in range(3):
        cv2.imwrite(str(d / "photos" / f"{i}.png"), random_texture(150, 200, seed=i))
    refiners = {s: RefinerConfig(c, 2, r, hidden_blocks=0) for s, c, r in
                ((16, 8, 1), (8, 8, 1), (4, 4, 1), (2, 2, 0), (1, 2, 0))}
    model = get_preset("roma-tiny").replace(
        name="faults-tiny", vgg_widths=(4, 8, 8, 8), vgg_convs=(1, 1, 1, 1), conv_coarse_dims=(8,), coarse_dim=8,
        coarse_context_depth=0,
        proj_dims={16: 8, 8: 8, 4: 4, 2: 2, 1: 2}, gp_dim=8, dec_dim=16, dec_depth=1, dec_heads=2, refiners=refiners)
    cfg = {"model": model.to_dict(), "train_roots": [str(d / "photos")], "val_root": None, "resolution": [56, 56],
           "batch_size": 2, "steps": steps, "warmup_steps": 2, "ckpt_every": 5, "log_every": 1, "num_workers": 0,
           "threads": 1, "progress": False, "out_dir": str(d / "run"), "seed": 1}
    (d / "cfg.json").write_text(json.dumps(cfg))
    return d / "cfg.json"


def _logged_steps(log: Path) -> list[int]:
    try:
        lines = log.read_text().splitlines()[1:]
    except FileNotFoundError:
        return []
    return [int(ln.split(",")[0]) for ln in lines if ln.split(",")[0].isdigit()]


def case_kill_training(work: Path) -> CaseResult:
    import torch

    r = CaseResult("kill -9 during training", "`python -m roma_sfm.train.trainer` (tiny model, checkpoint every "
                                             "5 steps) killed after step 8, then the same command again")
    d = fresh(work, "kill_training")
    steps = 30
    cmd = [sys.executable, "-m", "roma_sfm.train.trainer", "--config", str(_train_config(d, steps))]
    log, last = d / "run" / "log.csv", d / "run" / "last.pt"
    rc = kill_when(cmd, lambda: max(_logged_steps(log), default=0) >= 8)
    at_kill = int(torch.load(last, map_location="cpu", weights_only=True)["step"]) if last.exists() else 0
    r.check(rc == -signal.SIGKILL and 5 <= at_kill < steps, f"killed mid-run (exit {rc}, checkpoint step {at_kill})")
    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    summary = json.loads(rerun.stdout.strip().splitlines()[-1]) if rerun.returncode == 0 else {}
    resumed = re.findall(r"steps \d+ -> \d+(?: \(resumed\))?", " ".join(rerun.stderr.split()))
    resumed = resumed[-1] if resumed else ""
    r.facts.update(exit_code=rc, checkpoint_at_kill=at_kill, rerun=summary)
    r.outcome = f'checkpoint of step {at_kill} at the kill; rerun: "{resumed}", finished at step {summary.get("step")}'
    r.check(rerun.returncode == 0 and summary.get("finished") and summary.get("step") == steps,
            f"the rerun finishes (exit {rerun.returncode}: {rerun.stderr[-300:]})")
    r.check(f"steps {at_kill} -> {steps} (resumed)" in resumed, "training resumes from its last checkpoint",
            loss=True)
    r.check(_logged_steps(log) == list(range(1, steps + 1)), "log.csv holds every step exactly once", loss=True)
    r.check(not [q for q in (d / "run").iterdir() if ".tmp" in q.name], "no temporary file is left")
    return r


# ---------------------------------------------------------------------------------------------- disk full
def _limit_file_size(limit: int) -> Callable[[], None]:
    def apply() -> None:  # in the child: writes past ``limit`` bytes fail with EFBIG instead of killing it
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # should it crash: no core file in the working folder
    return apply


def case_disk_full(work: Path) -> CaseResult:
    from roma_sfm.pipelines import match

    r = CaseResult("disk full while writing HDF5", "`roma-sfm match` resuming a matches.h5 of 5 pairs with files "
                                                  "limited to its size + 16 KB (RLIMIT_FSIZE), then without limit")
    d, pairs, out = _to_match(work, "disk_full")
    match.main(pairs[:5], d / "images", out, "sift", progress=False)
    before = stored_pairs(out)
    p = cli("match", d / "images", "--pairs", d / "pairs.txt", "-o", out, "--matcher", "sift",
            preexec_fn=_limit_file_size(out.stat().st_size + 16 * 1024))
    error = re.search(r"error:(.*)", p.stdout, re.S)  # the CLI's message (stderr has HDF5's own)
    message = " ".join(error.group(1).split()).replace(str(d) + "/", "") if error else ""
    r.outcome = f'exit {p.returncode}: "{message}"'
    r.facts.update(exit_code=p.returncode, message=message)
    r.check(p.returncode == 1, f"a clean failure with exit code 1 (got {p.returncode})")
    r.check(any(w in message for w in ("File too large", "No space", "space")), "the message names the cause")
    r.check(h5_opens(out) and {tuple(sorted(q)) for q in h5io.list_pairs(out)} >= before,
            "the earlier matches.h5 is intact", loss=True)
    kept = stored_pairs(out)
    rerun = match.main(d / "pairs.txt", d / "images", out, "sift", progress=False)
    r.facts.update(kept=len(kept), resumed=rerun.num_resumed)
    r.check(rerun.num_resumed == len(kept) >= len(before), "the rerun resumes every pair written before the failure",
            loss=True)
    r.check(len(stored_pairs(out)) == len(pairs) and not list(d.glob("*.tmp")), "the rerun completes, no leftovers")
    return r


def case_disk_full_tracks(work: Path) -> CaseResult:
    from roma_sfm.pipelines import tracks

    r = CaseResult("disk full while writing features.h5", "`tracks.main` over a finished run with files limited "
                                                         "to half of features.h5, then without limit")
    d, matches, features, idx = _tracks_inputs(work, "disk_full_tracks")
    tracks.main(matches, features, idx, 2.0)
    before = h5io.read_features(features)
    p = python("from roma_sfm.pipelines import tracks\nimport sys\ntracks.main(*sys.argv[1:4], 2.0)\n",
               matches, features, idx, preexec_fn=_limit_file_size(features.stat().st_size // 2))
    message = last_line(p.stderr, r"^\w*Error")
    r.outcome = f'exit {p.returncode}: "{message}"'.replace(str(d) + "/", "")
    r.check(p.returncode == 1, f"a clean failure with exit code 1 (got {p.returncode})")
    r.check("File too large" in message and "unchanged" in message, "the message names the cause and the file")
    after = h5io.read_features(features)
    r.check(after.keys() == before.keys() and all(np.array_equal(after[k], before[k]) for k in before),
            "the earlier features.h5 is intact", loss=True)
    tracks.main(matches, features, idx, 2.0)
    h5io.check_same_run(features, idx)
    r.check(not list(d.glob("*.tmp*")), "the rerun completes, no temporary file is left")
    return r


# ---------------------------------------------------------------------------------------------- images
def case_corrupt(work: Path) -> CaseResult:
    return _skipped_case(work, "corrupt image", "random bytes behind a JPEG header", "corrupt.jpg",
                         ["not a readable image"])


def case_zero_byte(work: Path) -> CaseResult:
    return _skipped_case(work, "zero-byte image", "an empty .jpg", "zero.jpg", ["empty"])


def case_truncated(work: Path) -> CaseResult:
    return _skipped_case(work, "truncated JPEG", "the first half of a JPEG", "truncated.jpg", ["truncated"])


def case_one_pixel(work: Path) -> CaseResult:
    return _skipped_case(work, "1x1 image", "a 1x1 PNG", "one_pixel.png", ["too small", "1x1"])


SCAN_MEMORY = '''
import json, resource, sys, time
from roma_sfm.pipelines.utils import scan_images
peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MB
before, t0 = peak(), time.perf_counter()
scan = scan_images(sys.argv[1])  # decode=True, as reconstruct does
print(json.dumps({"skipped": scan.skipped, "grown_mb": peak() - before, "seconds": time.perf_counter() - t0}))
'''


def case_huge(work: Path) -> CaseResult:
    r = _skipped_case(work, "20000x20000 image", "a flat-colour 20000x20000 PNG (1.6 MB on disk, 1.2 GB decoded); "
                                                "memory of a scan measured alone", "huge_20000.png",
                      ["too large", "400 MP"])
    alone = fresh(work, "huge_alone")
    shutil.copy(work / "_shared" / "messy" / "images" / "huge_20000.png", alone)
    p = python(SCAN_MEMORY, alone)
    res = json.loads(p.stdout.strip().splitlines()[-1]) if p.returncode == 0 else {}
    r.facts.update(scan=res)
    r.check(p.returncode == 0 and "huge_20000.png" in res.get("skipped", {}), "scan_images reports it alone too")
    r.check(res.get("grown_mb", 1e9) < 100, f"scanning it costs no memory (peak RSS grew {res.get('grown_mb')} MB)")
    return r


def case_16bit(work: Path) -> CaseResult:
    from roma_sfm.io import read_image

    r, rep = _valid_case(work, "16-bit PNG", "an RGB PNG of 16 bits per channel", "0005_16bit.png")
    diff = np.abs(read_image(work / "_shared" / "messy" / "images" / "0005_16bit.png").astype(int) - scene_rgb(5))
    r.check(diff.max() <= 1, f"its pixels are the 8-bit ones (max difference {diff.max()})", loss=True)
    r.outcome += f" (max difference to the 8-bit pixels: {diff.max()})"
    return r


def case_cmyk(work: Path) -> CaseResult:
    from roma_sfm.io import read_image

    r, rep = _valid_case(work, "CMYK JPEG", "a JPEG saved in CMYK by Pillow", "0006_cmyk.jpg")
    diff = np.abs(read_image(work / "_shared" / "messy" / "images" / "0006_cmyk.jpg").astype(int) - scene_rgb(6))
    r.check(diff.mean() < 6, f"its colours are right (mean difference {diff.mean():.1f} levels)", loss=True)
    r.outcome += f" (mean colour difference to the RGB original: {diff.mean():.1f} levels)"
    return r


def case_exif_rotated(work: Path) -> CaseResult:
    from roma_sfm.pipelines import match, tracks

    r, rep = _valid_case(work, "EXIF-rotated JPEG", "view 7 stored turned by 90 degrees with EXIF orientation 6",
                         "0007_rot.jpg")
    d = work / "_shared" / "messy"
    with h5py.File(d / "out" / "features.h5", "r") as f:
        size = tuple(int(v) for v in f["0007_rot.jpg"].attrs["image_size"])
    r.check(size == (WIDTH, WIDTH * 3 // 4), f"its size is the displayed one, {WIDTH}x{WIDTH * 3 // 4} (got {size})")
    # the neighbour's keypoints are the same in both runs: their partners must agree in the upright frame
    k0, k1, _ = h5io.read_matches(d / "out" / "matches.h5", "0006_cmyk.jpg", "0007_rot.jpg")
    ref = matchers.get_matcher("sift").match(d / "images" / "0006_cmyk.jpg", d / "0007_upright.jpg")
    partner = {tuple(np.round(a, 3)): b for a, b in zip(ref.kpts_A, ref.kpts_B)}
    keys = [tuple(np.round(a, 3)) for a in k0]
    err = [np.linalg.norm(b - partner[k]) for k, b in zip(keys, k1) if k in partner]
    med = float(np.median(err)) if err else float("inf")
    r.facts.update(size=size, common_matches=len(err), median_px=med)
    r.check(len(err) >= 20 and med < 1.0, f"keypoints are in the displayed frame ({len(err)} matches shared with "
                                          f"the upright image, median {med:.2f} px apart)", loss=True)
    r.check(len(h5io.read_features(d / "out" / "features.h5")["0007_rot.jpg"]) > 0, "it has keypoints")
    r.outcome += f"; {size[0]}x{size[1]} as displayed, matches {med:.2f} px (median) from the upright image's"
    return r


# ---------------------------------------------------------------------------------------------- names
def case_duplicate_names(work: Path) -> CaseResult:
    from roma_sfm.pipelines import match, tracks

    r = CaseResult("duplicate names in sub-folders", "a/x.jpg, a/y.jpg, a/z.jpg and b/x.jpg, b/y.jpg, b/z.jpg "
                                                    "(6 different views)")
    d = fresh(work, "dup_names")
    names = scene(d / "images", range(6), ["a/x.jpg", "a/y.jpg", "a/z.jpg", "b/x.jpg", "b/y.jpg", "b/z.jpg"])
    rep = reconstruct(d / "images", d / "out")
    r.outcome = f"{rep['message']}; names kept with their folder"
    r.check(rep["status"] == "ok" and set(rep["registered"]) == set(names),
            f"all 6 registered under their own names ({rep['message']})", loss=True)
    kps = h5io.read_features(d / "out" / "features.h5")
    r.check(set(kps) == set(names) and not np.array_equal(kps["a/x.jpg"], kps["b/x.jpg"]),
            "a/x.jpg and b/x.jpg have their own keypoints", loss=True)
    k0, _, _ = h5io.read_matches(d / "out" / "matches.h5", "a/x.jpg", "b/x.jpg")
    r.check(len(k0) > 20, "a/x.jpg and b/x.jpg are matched to each other")
    return r


def case_name_collision(work: Path) -> CaseResult:
    from roma_sfm.pipelines import match
    from roma_sfm.pipelines.utils import names_to_pair

    r = CaseResult("pair-key collision", "a root file a-x.jpg next to a/x.jpg (both are 'a-x.jpg' in the pair "
                                        "keys of matches.h5, where '/' becomes '-')")
    d = fresh(work, "collision")
    names = scene(d / "images", range(5), ["a-x.jpg", "a/x.jpg", "v2.jpg", "v3.jpg", "v4.jpg"])
    rep = reconstruct(d / "images", d / "out")
    reason = rep.get("images_skipped", {}).get("a/x.jpg", "")
    r.outcome = f'a/x.jpg skipped, report.json: "{reason}"'
    r.check("collides" in reason and "a-x.jpg" in reason, "the second name is skipped with a reason naming the first")
    r.check(rep["status"] == "ok" and set(rep["registered"]) == set(names) - {"a/x.jpg"},
            f"the other 4 are registered ({rep['message']})", loss=True)
    with h5py.File(d / "out" / "matches.h5", "r") as f:
        groups = [(k, g.attrs["name0"], g.attrs["name1"]) for k, g in
                  ((f"{a}/{b}", f[a][b]) for a in f for b in f[a])]
    r.check(all(k == names_to_pair(a, b) and "a/x.jpg" not in (a, b) for k, a, b in groups),
            "every pair group of matches.h5 holds the pair its key names", loss=True)
    st = match.main([("a-x.jpg", "v2.jpg"), ("a/x.jpg", "v2.jpg")], d / "images", d / "m.h5", "sift", progress=False)
    r.check(st.num_matched == 1 and st.num_failed == 1 and "a/x.jpg" in st.skipped_images,
            "the match step alone refuses the second name too")
    return r


def case_unicode_spaces(work: Path) -> CaseResult:
    from roma_sfm.pipelines import match
    from roma_sfm.pipelines.utils import read_pairs

    r = CaseResult("unicode and spaces in paths", "images in 'scène été 1/my images', named 'café 0.jpg', '日本語 "
                                                 "1.jpg', 'sub dir/ñandú 2.jpg', ..., output in 'sortie ø'")
    base = fresh(work, "unicode")
    images, out = base / "scène été 1" / "my images", base / "sortie ø"
    names = scene(images, range(5), ["café 0.jpg", "日本語 1.jpg", "sub dir/ñandú 2.jpg", "plain3.jpg",
                                     "x y 4.jpg"])
    rep = reconstruct(images, out)
    r.outcome = f"{rep['message']}; pairs.txt quotes the names with spaces and reads back"
    r.check(rep["status"] == "ok" and set(rep["registered"]) == set(names),
            f"all 5 registered under their names ({rep['message']})", loss=True)
    listed = read_pairs(out / "pairs.txt")
    r.check({tuple(sorted(p)) for p in listed} == stored_pairs(out / "matches.h5") and len(listed) == 10,
            "pairs.txt reads back the names with spaces")
    st = match.main(out / "pairs.txt", images, out / "matches.h5", "sift", progress=False)
    r.check(st.num_resumed == 10 and st.num_failed == 0, "the match step resumes from that pairs file", loss=True)
    return r


# ---------------------------------------------------------------------------------------------- folder changes
@lru_cache(maxsize=None)
def _changes_base(work: Path) -> Path:
    """5 views reconstructed: each folder-change case starts from a copy of this finished run."""
    d = work / "_shared" / "changes"
    shutil.rmtree(d, ignore_errors=True)
    scene(d / "images", range(5))
    reconstruct(d / "images", d / "out")
    return d


def _change_and_rerun(work: Path, r: CaseResult, change: Callable[[Path], object]) -> tuple[Path, dict, dict]:
    """A copy of the finished base run, ``change(images)``, the same reconstruction again; returns
    (folder, report, report['match']) and sets the outcome."""
    d = work / r.case.replace(" ", "_")
    shutil.rmtree(d, ignore_errors=True)
    shutil.copytree(_changes_base(work), d)
    change(d / "images")
    rep = reconstruct(d / "images", d / "out")
    m = rep.get("match", {})
    r.outcome = f"{m.get('pairs_matched')} pairs matched, {m.get('pairs_resumed')} resumed; {rep['message']}"
    return d, rep, m


def case_image_added(work: Path) -> CaseResult:
    r = CaseResult("image added between runs", "a 6th view added to a reconstructed folder of 5, same command again")
    _, rep, m = _change_and_rerun(work, r, lambda images: scene(images, [5]))
    r.check(m.get("pairs_resumed") == 10, "the 10 earlier pairs are resumed", loss=True)
    r.check(m.get("pairs_matched") == 5, "only the 5 new pairs are matched")
    r.check(rep["status"] == "ok" and "0005.jpg" in rep["registered"], "the new image is in the model")
    return r


def case_image_removed(work: Path) -> CaseResult:
    r = CaseResult("image removed between runs", "0002.jpg deleted from a reconstructed folder of 5, same command "
                                                "again")
    d, rep, m = _change_and_rerun(work, r, lambda images: (images / "0002.jpg").unlink())
    r.check(m.get("pairs_resumed") == 6 and m.get("pairs_matched") == 0, "the 6 remaining pairs are resumed",
            loss=True)
    in_model = model_names(d / "out" / "sparse" / "0") if rep["status"] == "ok" else set()
    r.check(rep["status"] == "ok" and in_model == {"0000.jpg", "0001.jpg", "0003.jpg", "0004.jpg"},
            f"the new model has the 4 remaining images and not the removed one ({sorted(in_model)})")
    r.check(rep["images_given"] == 4 and "0002.jpg" not in rep.get("images_unregistered", []),
            "report.json does not list the removed image")
    return r


def case_image_replaced(work: Path) -> CaseResult:
    from roma_sfm.pipelines import match

    r = CaseResult("image replaced between runs", "0003.jpg overwritten by another view (same name, same size), "
                                                 "same command again")
    stale = h5io.read_matches(_changes_base(work) / "out" / "matches.h5", "0000.jpg", "0003.jpg")
    d, rep, m = _change_and_rerun(work, r, lambda images: scene(images, [6], ["0003.jpg"]))
    now = h5io.read_matches(d / "out" / "matches.h5", "0000.jpg", "0003.jpg")
    r.check(m.get("pairs_matched") == 4 and m.get("pairs_resumed") == 6,
            "the 4 pairs of the replaced image are matched again, the 6 others resumed")
    r.check(not (len(stale[0]) == len(now[0]) and np.array_equal(stale[1], now[1])),
            "no stale matches of the old content are used", loss=True)
    return r


# ---------------------------------------------------------------------------------------------- one writer
# the first writer of the two-writers case: a reconstruction that waits before its mapping step (its
# output folder locked, matches.h5 written) until the file argv[4] appears; argv[3] says it waits
HOLD_BEFORE_MAPPING = '''
import sys, time
from pathlib import Path
from roma_sfm.pipelines import mapping, reconstruct
real = mapping.main
def held(*a, **k):
    Path(sys.argv[3]).touch()
    t0 = time.time()
    while not Path(sys.argv[4]).exists() and time.time() - t0 < 120:
        time.sleep(0.05)
    return real(*a, **k)
mapping.main = held
rep = reconstruct.main(Path(sys.argv[1]), Path(sys.argv[2]), matcher="sift", progress=False, num_threads=1,
                       gt_poses=None)
print(rep["status"], rep["images_registered"])
'''


def _files(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``folder`` with its (mtime ns, size): what a refused writer must not change."""
    return {p.relative_to(folder).as_posix(): (p.stat().st_mtime_ns, p.stat().st_size)
            for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def case_two_writers(work: Path) -> CaseResult:
    from roma_sfm.lock import LOCK_NAME, read_holder

    r = CaseResult("two writers on one output", "`roma-sfm reconstruct`, `match` and `map` started into a folder that "
                                                "a reconstruction is writing (held before its mapping step), then "
                                                "the first run goes on")
    d = fresh(work, "two_writers")
    scene(d / "images", range(VIEWS))
    out, ready, go = d / "out", d / "ready", d / "go"
    first = subprocess.Popen([sys.executable, "-c", HOLD_BEFORE_MAPPING, str(d / "images"), str(out), str(ready),
                              str(go)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    t0 = time.time()
    while not ready.exists() and first.poll() is None and time.time() - t0 < 120:
        time.sleep(0.05)
    holder = read_holder(out / LOCK_NAME)
    r.check(ready.exists() and holder is not None and holder.pid == first.pid,
            f"the first run holds the folder (lock: {holder})")
    started = holder.started if holder is not None else "?"
    expected = (f"another roma-sfm process (pid {first.pid}, started {started}) is writing {out}; wait for it or "
                "choose another output")
    before = _files(out)
    commands = {"reconstruct": ["reconstruct", d / "images", "-o", out, "--matcher", "sift"],
                "match": ["match", d / "images", "-o", out / "matches.h5", "--matcher", "sift"],
                "map": ["map", d / "images", "-o", out]}
    env = {**os.environ, "COLUMNS": "250"}
    procs = {k: subprocess.Popen([sys.executable, "-m", "roma_sfm.cli.main", *map(str, a)], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True, env=env) for k, a in commands.items()}
    said = {}
    for k, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=120)
        said[k] = " ".join((stdout + stderr).split())
        r.check(proc.returncode == 1 and f"error: {expected}" in said[k],
                f"a second `{k}` exits 1 with the message (exit {proc.returncode}: {said[k][-300:]})")
    r.check(_files(out) == before, "the refused runs change nothing in the folder", loss=True)
    go.touch()
    stdout, stderr = first.communicate(timeout=180)
    rep = json.loads((out / "report.json").read_text()) if (out / "report.json").is_file() else {}
    r.facts.update(first_exit=first.returncode, first=stdout.strip(), registered=rep.get("images_registered"))
    r.check(first.returncode == 0 and rep.get("status") == "ok" and rep.get("images_registered") == VIEWS,
            f"the first run finishes with all {VIEWS} images (exit {first.returncode}: {stderr[-300:]})", loss=True)
    r.check(not (out / LOCK_NAME).exists(), "the lock file is gone once the first run is done")
    r.outcome = f'each exits 1: "error: {expected}"; the first run then registers {rep.get("images_registered")} ' \
                f'of {VIEWS}'.replace(str(d) + "/", "")
    return r


def case_stale_lock(work: Path) -> CaseResult:
    from roma_sfm.lock import LOCK_NAME, pid_alive, read_holder

    r = CaseResult("stale lock after kill -9", "`roma-sfm reconstruct` (SIFT) killed after its first matched pairs, "
                                              "which leaves its lock file, then the same command again")
    d = fresh(work, "stale_lock")
    scene(d / "images", range(VIEWS))
    out = d / "out"
    args = ["reconstruct", d / "images", "-o", out, "--matcher", "sift", "--num-threads", "1", "--poses-gt", "none"]
    rc = kill_when([sys.executable, "-m", "roma_sfm.cli.main", *map(str, args)],
                   lambda: len(stored_pairs(out / "matches.h5")) >= 3)
    done, holder = stored_pairs(out / "matches.h5"), read_holder(out / LOCK_NAME)
    r.facts.update(exit_code=rc, done_at_kill=len(done), holder=str(holder))
    r.check(rc == -signal.SIGKILL and len(done) >= 3, f"killed mid-run (exit {rc}, {len(done)} pairs done)")
    r.check(holder is not None and not pid_alive(int(holder.pid)), f"the lock file names the dead process ({holder})")
    rerun = cli(*args)
    warning = last_line(rerun.stderr, "stale lock")
    counts = match_counts(rerun.stderr)
    rep = json.loads((out / "report.json").read_text()) if (out / "report.json").is_file() else {}
    r.facts.update(rerun_exit=rerun.returncode, new_resumed_failed=counts)
    r.check(rerun.returncode == 0 and rep.get("images_registered") == VIEWS,
            f"the rerun completes with all {VIEWS} images (exit {rerun.returncode}: {rerun.stdout[-300:]})")
    r.check(holder is not None and f"pid {holder.pid}" in warning and "no longer running" in warning,
            f"the rerun warns that it takes over the dead run's lock (got: {warning or rerun.stderr[-300:]})")
    r.check(counts is not None and counts[1] == len(done), "every pair finished before the kill is resumed",
            loss=True)
    r.check(not (out / LOCK_NAME).exists(), "the lock file is gone after the rerun")
    r.outcome = (f'warning: "{warning}"; {len(done)} pairs resumed, registered {rep.get("images_registered")} of '
                 f"{VIEWS}").replace(str(d) + "/", "")
    return r


CASES: dict[str, Callable[[Path], CaseResult]] = {
    "kill_match": case_kill_match,
    "kill_tracks": case_kill_tracks,
    "kill_mapping": case_kill_mapping,
    "kill_training": case_kill_training,
    "disk_full": case_disk_full,
    "disk_full_tracks": case_disk_full_tracks,
    "corrupt": case_corrupt,
    "zero_byte": case_zero_byte,
    "truncated": case_truncated,
    "16bit": case_16bit,
    "cmyk": case_cmyk,
    "exif_rotated": case_exif_rotated,
    "one_pixel": case_one_pixel,
    "huge": case_huge,
    "duplicate_names": case_duplicate_names,
    "name_collision": case_name_collision,
    "unicode_spaces": case_unicode_spaces,
    "image_added": case_image_added,
    "image_removed": case_image_removed,
    "image_replaced": case_image_replaced,
    "two_writers": case_two_writers,
    "stale_lock": case_stale_lock,
}
