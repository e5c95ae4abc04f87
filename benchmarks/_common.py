"""What the benchmark scripts share: the repository's folders, the development data, the
machine and software a record was made with, and appending records to JSON-lines files.

The scripts run as ``python benchmarks/<name>.py``, which puts this folder on ``sys.path``
(so they import this module and each other by name), and use the installed package
(``pip install -e .``). A sweep run from another checkout, such as a git worktree, sets
``PYTHONPATH=<worktree>/src`` so that its scripts measure that checkout's package; a script
started from here warns when the package would come from somewhere else.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import importlib.util
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
WORK = REPO / "benchmarks" / "work"
DOCS = REPO / "docs"

#: the development data sets, by short name: folder under the shared data
FOLDERS = {"glas": "glas-train", "isbi": "isbi2012-dev", "dsb": "dsb2018-touching-dev"}


def _warn_if_package_elsewhere() -> None:
    if Path(sys.argv[0]).resolve().parent != REPO / "benchmarks":
        return  # imported by the tests or another program: nothing is measured
    spec = importlib.util.find_spec("napari_lazylabels")
    if spec is None or spec.origin is None:
        return
    origin = Path(spec.origin).resolve()
    if REPO / "src" not in origin.parents:
        sys.stderr.write(
            f"warning: napari_lazylabels comes from {origin.parent}, not from this checkout "
            f"({REPO / 'src'}); set PYTHONPATH={REPO / 'src'} to measure this checkout\n"
        )


_warn_if_package_elsewhere()


def shared_data(required: bool = True) -> Path:
    """The development data folder: ``$LAZYLABELS_SHARED_DATA``, else ``shared/data`` beside
    the repository (or two levels above it, for a checkout inside a folder of checkouts).

    Where none holds the data sets, exits with a message; with ``required=False`` returns the
    first candidate instead (for scripts that can run on synthetic data)."""
    env = os.environ.get("LAZYLABELS_SHARED_DATA")
    candidates = [Path(env)] if env else []
    candidates += [REPO.parent / "shared" / "data", REPO / ".." / ".." / "shared" / "data"]
    for c in candidates:
        if any((c / folder).is_dir() for folder in FOLDERS.values()):
            return c.resolve()
    if not required:
        return candidates[0]
    raise SystemExit(
        "Shared data not found: set LAZYLABELS_SHARED_DATA to the folder holding "
        f"{', '.join(f + '/' for f in FOLDERS.values())}."
    )


def utc_now() -> str:
    """The time of a record: UTC, ISO 8601 to the second."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def machine() -> dict:
    """What a record was measured on: CPU model and cores, torch threads, load average, GPU,
    whether the CPU computes bf16 natively, the platform, torch, the command and its start."""
    import torch

    from napari_lazylabels.core.model import cpu_bf16_supported

    cpu = platform.processor() or ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "torch": torch.__version__,
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }
    with contextlib.suppress(OSError):
        info["loadavg_at_start"] = [round(v, 2) for v in os.getloadavg()]
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    # bf16 autocast only where the CPU has it natively (model.autocast_dtype) since 2026-12-02
    # noon; records made before then trained in bf16 on every CPU (emulated where this is False).
    info["cpu_native_bf16"] = cpu_bf16_supported()
    return info


def git_commit() -> str:
    """The repository's checked-out commit ("" where git cannot say)."""
    with contextlib.suppress(Exception):
        return subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
    return ""


def versions() -> dict:
    """The checkpoint's software versions, the image libraries', scikit-learn's (where
    installed) and the git commit."""
    import cv2
    import skimage

    from napari_lazylabels.core.checkpoint import versions as package_versions

    v = package_versions()
    v["scikit-image"] = skimage.__version__
    v["opencv"] = cv2.__version__
    with contextlib.suppress(ImportError):
        import sklearn

        v["scikit-learn"] = sklearn.__version__
    v["git_commit"] = git_commit()
    return v


def append_jsonl(path: str | os.PathLike, record: dict) -> Path:
    """Append ``record`` as one JSON line to ``path`` (its folder made where missing)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
    return path


def run_console(args: list[str]) -> dict:
    """The installed ``lazylabels`` console script with ``args``, in a child process under
    ``/usr/bin/time``: ``{"command", "seconds", "peak_rss_mb", "stderr"}`` (wall seconds, the
    child's peak resident memory). Raises ``RuntimeError`` when it fails."""
    import time

    cmd = [str(Path(sys.executable).with_name("lazylabels")), *args]
    t0 = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-f", "MAXRSS_KB %M", *cmd], capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    peak_kb = int(proc.stderr.rsplit("MAXRSS_KB", 1)[1].split()[0])
    return {"command": " ".join(["lazylabels", *args]), "seconds": round(seconds, 1),
            "peak_rss_mb": round(peak_kb / 1024), "stderr": proc.stderr}
