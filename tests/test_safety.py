"""Nothing a user made is lost or silently mixed; every failure is one clear line (issue 24).

Kill tests run the real CLI in a subprocess and send real signals; the full-disk and
read-only tests mount a small tmpfs and are skipped where that is not allowed (not root).
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from napari_lazylabels.cli import main
from napari_lazylabels.core import runfolder
from napari_lazylabels.core.checkpoint import load_checkpoint, read_history, save_checkpoint
from napari_lazylabels.core.io import (
    atomic_write_json,
    load_dataset,
    read_classes,
    read_image,
    read_label,
    write_image,
    write_label,
)
from napari_lazylabels.core.labels import ClassSpec
from napari_lazylabels.core.model import ModelConfig, build_model
from napari_lazylabels.core.prepare import normalize

TINY = ["--size", "tiny", "--batch-size", "2", "--patch-size", "64", "--threads", "1", "--device", "cpu"]




@pytest.fixture(scope="module")
def lazy(tmp_path_factory, gt_folder) -> Path:
    """A simulated dataset (3 images, one exact mask); tests copy it before writing."""
    root = tmp_path_factory.mktemp("lazy")
    gt = gt_folder(root / "gt")
    assert main(["simulate", str(gt), "--out", str(root / "ds"), "--strong-fraction", "0.34"]) == 0
    return root / "ds"


@pytest.fixture(scope="module")
def model(tmp_path_factory, lazy) -> Path:
    out = tmp_path_factory.mktemp("model") / "m"
    assert main(["train", str(lazy), "--out", str(out), "--iterations", "3", "--val-every", "0", *TINY]) == 0
    return out


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _cli(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", "import sys; from napari_lazylabels.cli import main; sys.exit(main(sys.argv[1:]))", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw,
    )


def _one_line_error(stderr: str) -> None:
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("ERROR")]
    assert len(errors) == 1, stderr


def _wait_for(cond, timeout: float = 60.0, proc: subprocess.Popen | None = None) -> None:
    t0 = time.monotonic()
    while not cond():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the run ended first: {proc.stderr.read()}")
        if time.monotonic() - t0 > timeout:
            raise AssertionError("timed out")
        time.sleep(0.05)


@pytest.fixture
def tmpfs(tmp_path):
    """Mount a tmpfs of the given size (MiB) under tmp_path; skipped where mount is refused."""
    mounted = []

    def make(size_mb: int, readonly: bool = False) -> Path:
        if os.geteuid() != 0:
            pytest.skip("mounting a tmpfs needs root")
        mnt = tmp_path / f"fs{len(mounted)}"
        mnt.mkdir()
        opts = f"size={size_mb}m" + (",ro" if readonly else "")
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(mnt)], capture_output=True)
        if r.returncode:
            pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")
        mounted.append(mnt)
        return mnt

    yield make
    for mnt in mounted:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


# --------------------------------------------------------------------------- 1. simulate
def test_simulate_refuses_to_replace_hand_annotations(tmp_path, lazy, caplog, gt_folder):
    ds = tmp_path / "ds"
    ds.mkdir()
    for name, data in _files(lazy).items():
        (ds / name).parent.mkdir(parents=True, exist_ok=True)
        (ds / name).write_bytes(data)
    # hand edits: other classes, a drawn detection map
    meta = json.loads((ds / "lazylabels.json").read_text())
    meta["classes"] = {"names": ["background", "nucleus", "mitochondrion"]}
    (ds / "lazylabels.json").write_text(json.dumps(meta))
    write_label(ds / "detection" / "im0.png", np.full((96, 112), 3, np.uint8))
    before = _files(ds)
    gt = gt_folder(tmp_path / "gt")
    assert main(["simulate", str(gt), "--out", str(ds), "--seed", "3"]) == 2
    assert "--overwrite" in caplog.text and str(ds) in caplog.text
    assert _files(ds) == before
    assert read_classes(ds).names == ("background", "nucleus", "mitochondrion")
    assert main(["simulate", str(gt), "--out", str(ds), "--seed", "3", "--overwrite"]) == 0
    assert read_classes(ds).names == ("background", "object")


# --------------------------------------------------------------------------- 2. train
def test_train_refuses_an_existing_model_and_overwrite_leaves_no_stale_best(tmp_path, lazy, model, caplog):
    out = tmp_path / "m"
    out.mkdir()
    for name, data in _files(model).items():
        (out / name).write_bytes(data)
    before = _files(out)
    args = ["train", str(lazy), "--out", str(out), "--iterations", "2", "--val-every", "0", *TINY]
    assert main(args) == 2
    assert "already holds a model" in caplog.text and "--overwrite" in caplog.text
    assert _files(out) == before
    # an unrelated earlier model: replaced whole, best.pt included, with validation off
    ck = load_checkpoint(out / "best.pt")
    other = ModelConfig.named("tiny", in_channels=1, n_classes=3)
    save_checkpoint(out / "best.pt", build_model(other), other, ClassSpec(("background", "a", "b")), iteration=100)
    assert main([*args, "--overwrite"]) == 0
    new_best, new_latest = load_checkpoint(out / "best.pt"), load_checkpoint(out / "latest.pt")
    assert new_best.classes.names == ck.classes.names and new_best.iteration == 2 == new_latest.iteration
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["classes"]["names"] == list(new_best.classes.names)


# --------------------------------------------------------------------------- 3. resume, kills
def test_resume_folder_uses_latest_and_a_kill_costs_at_most_the_interval(tmp_path, lazy):
    out = tmp_path / "m"
    p = _cli("train", str(lazy), "--out", str(out), "--iterations", "100000", "--val-every", "7",
             "--save-every", "0", *TINY)
    try:
        def saved_enough():
            try:
                return load_checkpoint(out / "latest.pt").iteration >= 12
            except (FileNotFoundError, ValueError):
                return False

        _wait_for(saved_enough, proc=p)
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=30)
    finally:
        p.kill()
    killed_at = load_checkpoint(out / "latest.pt").iteration
    best_at = load_checkpoint(out / "best.pt").iteration
    assert best_at % 7 == 0 and best_at <= killed_at
    assert main(["train", str(lazy), "--out", str(out), "--resume", str(out), "--iterations", "3",
                 "--val-every", "0", *TINY]) == 0
    latest = load_checkpoint(out / "latest.pt")
    assert latest.iteration == killed_at + 3  # from latest.pt, not from best.pt
    steps = [s[0] for s in read_history(out)["steps"]]
    assert steps == sorted(set(steps)) and steps[-1] == killed_at + 3  # no step repeated
    assert not [f for f in os.listdir(out) if f.endswith(".tmp") or f == runfolder.LOCK_NAME]


def test_latest_is_saved_periodically_not_only_at_the_end(tmp_path, lazy):
    from napari_lazylabels.core.train import TrainConfig, train_iter

    ds = load_dataset(lazy)
    cfg = TrainConfig(iterations=6, batch_size=2, val_every=0, save_every=0, num_threads=1, device="cpu",
                      augment={"patch_size": 64})
    mc = ModelConfig.named("tiny", in_channels=1, n_classes=2)
    seen = []
    for ev in train_iter(ds, tmp_path / "m", mc, cfg):
        if ev.kind == "step" and ev.iteration == 4:  # written after step 3, long before the end
            seen.append(load_checkpoint(tmp_path / "m" / "latest.pt").iteration)
    assert seen == [3]


# --------------------------------------------------------------------------- 4. concurrency
def test_a_second_run_into_a_locked_folder_is_refused(tmp_path, lazy, model, caplog):
    out = tmp_path / "busy"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from napari_lazylabels.core.runfolder import folder_lock\n"
         f"with folder_lock({str(out)!r}, 'train'):\n    print('locked', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert main(["train", str(lazy), "--out", str(out), "--iterations", "2", *TINY]) == 2
        assert "being written by another lazylabels run" in caplog.text and f"pid {holder.pid}" in caplog.text
        assert main(["predict", str(model), str(lazy / "images"), "--out", str(out)]) == 2
        assert not (out / "best.pt").exists() and not list(out.glob("*_classes.png"))
    finally:
        holder.kill()  # a killed holder's lock goes with it
        holder.wait()
    assert main(["predict", str(model), str(lazy / "images" / "im0.png"), "--out", str(out), "--tta", "1"]) == 0


def test_repredicting_removes_the_earlier_models_outputs(tmp_path, lazy, model, caplog):
    out = tmp_path / "pred"
    img = str(lazy / "images" / "im0.png")
    assert main(["predict", str(model), img, str(lazy / "images" / "im1.png"), "--out", str(out), "--tta", "1"]) == 0
    assert (out / "im0_interfaces.tif").exists() and (out / "im0_probabilities.tif").exists()
    unet = tmp_path / "unet"
    assert main(["train", str(lazy), "--out", str(unet), "--iterations", "1", "--val-every", "0",
                 "--architecture", "unet", *TINY]) == 0
    assert main(["predict", str(unet), img, "--out", str(out), "--tta", "1", "--no-probabilities"]) == 0
    assert not (out / "im0_interfaces.tif").exists() and not (out / "im0_probabilities.tif").exists()
    assert "also holds predictions of 1 other images by another model" in caplog.text  # im1's


def test_two_inputs_with_one_stem_are_refused(tmp_path, lazy, model, caplog):
    for d in ("a", "b"):
        write_image(tmp_path / d / "x.png", read_image(lazy / "images" / "im0.png"))
    out = tmp_path / "pred"
    assert main(["predict", str(model), str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(out)]) == 2
    assert "would both write x_*" in caplog.text
    assert not list(out.glob("x_*"))


# --------------------------------------------------------------------------- 5. filesystem
def test_out_that_is_a_file_bad_device_and_threads_are_one_line(tmp_path, lazy):
    f = tmp_path / "a_file"
    f.write_text("x")
    p = _cli("train", str(lazy), "--out", str(f), "--iterations", "1", *TINY)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 2 and str(f) in err and "must be a folder" in err
    _one_line_error(err)
    p = _cli("train", str(lazy), "--out", str(tmp_path / "m"), "--iterations", "1", "--device", "bogus")
    _, err = p.communicate(timeout=120)
    assert p.returncode == 2 and "--device 'bogus' is not a device" in err
    _one_line_error(err)
    for bad in (["--threads", "-1"], ["--patch-size", "0"], ["--patch-size", "7"], ["--val-every", "-1"]):
        with pytest.raises(SystemExit) as e:
            main(["train", str(lazy), "--out", str(tmp_path / "m"), *bad])
        assert e.value.code == 2
    assert not (tmp_path / "m").exists()


def test_read_only_folder_fails_before_training(tmpfs, lazy, caplog):
    ro = tmpfs(1, readonly=True)
    t0 = time.perf_counter()
    assert main(["train", str(lazy), "--out", str(ro / "m"), "--iterations", "100000", *TINY]) == 2
    assert time.perf_counter() - t0 < 30
    assert "Read-only file system" in caplog.text and str(ro / "m") in caplog.text and "Traceback" not in caplog.text


def test_full_disk_is_one_line(tmpfs, lazy, model, caplog):
    small = tmpfs(2)
    assert main(["train", str(lazy), "--out", str(small / "m"), "--iterations", "100000", "--size", "small",
                 *TINY[2:]]) == 2
    assert "No space left" in caplog.text and str(small / "m") in caplog.text
    fd = os.open(small / "filler", os.O_WRONLY | os.O_CREAT)
    with pytest.raises(OSError):  # fill the disk
        while True:
            os.write(fd, b"\0" * 4096)
    os.close(fd)
    caplog.clear()
    assert main(["predict", str(model), str(lazy / "images"), "--out", str(small / "p")]) == 2
    assert "No space left on device" in caplog.text and "free some space" in caplog.text
    assert not [p for p in small.rglob("*.tmp")]


# --------------------------------------------------------------------------- 6. temp files
_LARGE = (
    "import functools, sys\n"
    "from napari_lazylabels.core import outputs, predict as P\n"
    "P.predict_file = outputs.predict_file = functools.partial(outputs.predict_file, large_pixels=1)\n"
    "from napari_lazylabels.cli import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_a_killed_large_prediction_leaves_no_temporary_files(tmp_path, model, sig):
    rng = np.random.default_rng(0)
    write_image(tmp_path / "big.png", rng.integers(0, 255, (1024, 1024), dtype=np.uint8))
    out = tmp_path / "pred"
    args = [sys.executable, "-c", _LARGE, "predict", str(model), str(tmp_path / "big.png"), "--out", str(out),
            "--device", "cpu", "--tta", "8"]
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(lambda: out.is_dir() and any(f.endswith(".f32.tmp") for f in os.listdir(out)), proc=p)
        p.send_signal(sig)
        _, err = p.communicate(timeout=60)
    finally:
        p.kill()
    left = [f for f in os.listdir(out) if f.endswith(".tmp")]
    if sig == signal.SIGTERM:
        assert p.returncode == 143 and "terminated" in err and "Traceback" not in err
        assert left == []
    else:
        assert left  # kill -9 runs no cleanup: the next run into the folder removes them
        small = tmp_path / "small.png"
        write_image(small, rng.integers(0, 255, (64, 64), dtype=np.uint8))
        assert main(["predict", str(model), str(small), "--out", str(out), "--tta", "1"]) == 0
        assert [f for f in os.listdir(out) if f.endswith(".tmp")] == []
    assert not (out / runfolder.LOCK_NAME).exists()


# --------------------------------------------------------------------------- 7. file modes
def test_rewritten_files_keep_their_mode_and_new_ones_follow_the_umask(tmp_path):
    lab = np.ones((16, 16), np.uint8)
    p = write_label(tmp_path / "shared.png", lab)
    os.chmod(p, 0o664)
    write_label(p, lab * 2)
    assert stat.S_IMODE(p.stat().st_mode) == 0o664
    old = os.umask(0o002)
    try:
        assert stat.S_IMODE(write_label(tmp_path / "new.png", lab).stat().st_mode) == 0o664
        os.umask(0o077)
        assert stat.S_IMODE(atomic_write_json(tmp_path / "private.json", {}).stat().st_mode) == 0o600
    finally:
        os.umask(old)


# --------------------------------------------------------------------------- 8. reading
@pytest.mark.parametrize("compression", ["lzw", "deflate", "zstd"])
def test_compressed_tiffs_are_read(tmp_path, compression):
    img = np.arange(64 * 48, dtype=np.uint16).reshape(64, 48)
    tifffile.imwrite(tmp_path / "c.tif", img, compression=compression)
    np.testing.assert_array_equal(read_image(tmp_path / "c.tif"), img)


def test_read_errors_name_the_file(tmp_path, caplog):
    data = (tmp_path / "t.tif")
    tifffile.imwrite(data, np.zeros((64, 64), np.uint16))
    data.write_bytes(data.read_bytes()[:100])
    with pytest.raises(ValueError, match="t.tif"):
        read_image(data)
    with pytest.raises(ValueError, match="t.tif"):
        read_label(data)
    write_label(tmp_path / "pred" / "x_classes.png", np.ones((32, 32), np.uint8))
    (tmp_path / "pred" / "lazylabels-predict.json").write_text("{not json")
    assert main(["instances", str(tmp_path / "pred")]) == 2
    assert "lazylabels-predict.json is not valid JSON" in caplog.text


# --------------------------------------------------------------------------- 9. smaller
def test_constant_uint64_image_normalises():
    out = normalize(np.full((32, 32), 2**63 + 5, np.uint64), 1)
    assert np.isfinite(out).all()


def test_one_corrupt_image_does_not_stop_the_batch(tmp_path, lazy, model, caplog):
    imgs = tmp_path / "imgs"
    write_image(imgs / "good.png", read_image(lazy / "images" / "im0.png"))
    (imgs / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    out = tmp_path / "pred"
    assert main(["predict", str(model), str(imgs), "--out", str(out), "--tta", "1"]) == 1
    assert (out / "good_classes.png").exists()
    assert "skipped" in caplog.text and "bad.png" in caplog.text


def test_resume_refuses_options_it_would_ignore(tmp_path, lazy, model, caplog):
    out = tmp_path / "m2"
    assert main(["train", str(lazy), "--out", str(out), "--resume", str(model), "--iterations", "1",
                 *TINY[2:], "--size", "small"]) == 2
    assert "--size small differs from the resumed model's tiny" in caplog.text
    assert main(["train", str(lazy), "--out", str(out), "--resume", str(model), "--iterations", "1",
                 *TINY, "--architecture", "unet"]) == 2
    assert main(["train", str(lazy), "--out", str(out), "--resume", str(model), "--iterations", "1",
                 *TINY, "--tasks", "segmentation"]) == 2
    assert not out.exists() or not (out / "best.pt").exists()


def test_grabcut_unknown_image_and_evaluate_json_and_dataset_version(tmp_path, lazy, caplog):
    assert main(["grabcut", str(lazy), "--images", "typo"]) == 2
    assert "'typo'" in caplog.text
    atomic_write_json(tmp_path / "s.json", {"dice": float("nan"), "n": [float("inf"), 1.0]})
    text = (tmp_path / "s.json").read_text()
    assert json.loads(text, parse_constant=lambda c: pytest.fail(f"invalid JSON constant {c}")) == {
        "dice": None, "n": [None, 1.0]}
    ds = tmp_path / "ds"
    write_image(ds / "images" / "a.png", np.zeros((16, 16), np.uint8))
    (ds / "lazylabels.json").write_text(json.dumps({"version": 99, "classes": {"names": ["background", "x"]}}))
    with pytest.raises(ValueError, match="version 99.*upgrade"):
        load_dataset(ds)


def test_flipped_weight_bytes_and_pickles_are_refused(tmp_path, model, caplog):
    ck = load_checkpoint(model / "best.pt")
    name, weight = max(ck.state_dict.items(), key=lambda kv: kv[1].numel())
    raw = bytearray((model / "best.pt").read_bytes())
    at = raw.find(weight.numpy().tobytes()[:64])
    assert at > 0
    raw[at + 5] ^= 0xFF
    (tmp_path / "flipped.pt").write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="checksum"):
        load_checkpoint(tmp_path / "flipped.pt")

    class Evil:
        def __reduce__(self):
            return (os.system, ("true",))

    torch.save({"format": "x", "evil": Evil()}, tmp_path / "evil.pt")
    assert main(["predict", str(tmp_path / "evil.pt"), str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "could run code" in caplog.text and "weights_only=False" not in caplog.text
