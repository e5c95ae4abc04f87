"""Freed CPU memory is kept for reuse while training, and handed back afterwards (glibc)."""

import threading

import numpy as np
import pytest
import torch

from napari_lazylabels.core import allocator
from napari_lazylabels.core.io import LazyDataset, Sample
from napari_lazylabels.core.labels import ClassSpec
from napari_lazylabels.core.model import ModelConfig
from napari_lazylabels.core.train import TrainConfig, train_iter

BIG = 240 << 20  # far above glibc's largest mmap threshold (32 MiB)


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        line = next(x for x in f if x.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def held_after_free() -> float:
    """Resident MB that a touched, then freed, large tensor leaves behind."""
    before = rss_mb()
    t = torch.ones(BIG, dtype=torch.uint8)
    del t
    return rss_mb() - before


def needs_glibc():
    if allocator._glibc() is None:
        pytest.skip("needs glibc, with malloc not tuned through the environment")


class FakeLibc:
    def __init__(self):
        self.calls = []

    def mallopt(self, param, value):
        self.calls.append(("mallopt", param, value))
        return 1

    def malloc_trim(self, pad):
        self.calls.append(("malloc_trim", pad))
        return 1


@pytest.fixture
def fake_libc(monkeypatch):
    lib = FakeLibc()
    monkeypatch.setattr(allocator, "_glibc", lambda: lib)
    return lib


HOLD = [("mallopt", allocator.M_TRIM_THRESHOLD, allocator.HOLD_TRIM_THRESHOLD), ("mallopt", allocator.M_MMAP_MAX, 0)]
RESTORE = [
    ("mallopt", allocator.M_MMAP_MAX, allocator.DEFAULT_MMAP_MAX),
    ("mallopt", allocator.M_MMAP_THRESHOLD, allocator.RESTORE_MMAP_THRESHOLD),
    ("mallopt", allocator.M_TRIM_THRESHOLD, allocator.RESTORE_TRIM_THRESHOLD),
    ("malloc_trim", 0),
]


def test_settings_are_held_once_and_restored_by_the_last_to_leave(fake_libc):
    with allocator.cpu_allocation_cache() as active:
        assert active and fake_libc.calls == HOLD
        with allocator.cpu_allocation_cache():  # a second training at once
            pass
        assert fake_libc.calls == HOLD  # still held until the outer one leaves
    assert fake_libc.calls == HOLD + RESTORE
    with pytest.raises(RuntimeError), allocator.cpu_allocation_cache():
        raise RuntimeError("training failed")
    assert fake_libc.calls == 2 * (HOLD + RESTORE)  # restored on errors too
    with allocator.cpu_allocation_cache(enabled=False) as active:
        assert not active
    assert fake_libc.calls == 2 * (HOLD + RESTORE)


def test_environment_tuning_of_malloc_is_left_alone(monkeypatch):
    allocator._glibc.cache_clear()
    try:
        monkeypatch.setenv("MALLOC_ARENA_MAX", "2")
        assert allocator._glibc() is None
        with allocator.cpu_allocation_cache() as active:
            assert not active
    finally:
        allocator._glibc.cache_clear()


def test_freed_memory_stays_resident_inside_and_is_handed_back_when_leaving():
    needs_glibc()
    with allocator.cpu_allocation_cache():
        assert held_after_free() > 150
        held = rss_mb()
    assert held - rss_mb() > 150


def test_after_leaving_mid_sized_tensors_still_come_from_the_heap():
    """glibc's own threshold grows to 32 MiB in a torch process; once mallopt has been called it
    no longer grows, so leaving must not drop it back to 128 KiB (every tensor mapped afresh)."""
    needs_glibc()
    import ctypes

    class Mallinfo2(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

    lib = allocator._glibc()
    if not hasattr(lib, "mallinfo2"):
        pytest.skip("needs glibc >= 2.33 (mallinfo2)")
    lib.mallinfo2.restype = Mallinfo2
    with allocator.cpu_allocation_cache():
        pass
    before = lib.mallinfo2().hblks
    t = torch.empty(16 << 20, dtype=torch.uint8)
    assert lib.mallinfo2().hblks == before  # not a mapping of its own
    del t


def test_training_on_the_cpu_keeps_memory_until_it_ends(tmp_path, fake_libc):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 60, (48, 48)).astype(np.uint8)
    img[16:32, 16:32] += 150
    det = np.zeros((48, 48), np.uint8)
    det[:4] = 1
    det[20:28, 20:28] = 2
    ds = LazyDataset(ClassSpec(("background", "blob")), [Sample("a", img, detection=det)])
    cfg = ModelConfig(widths=(4, 8), tasks=("detection", "segmentation"))
    fast = dict(iterations=3, batch_size=2, val_every=0, augment={"patch_size": 32}, device="cpu")

    runs = iter(range(100))

    def calls_during_and_after(train_config, close_early=False):
        gen = train_iter(ds, tmp_path / f"m{next(runs)}", cfg, train_config)  # a new folder each
        for ev in gen:
            if ev.kind == "step":
                during = list(fake_libc.calls)
                if close_early:  # the GUI's Stop between two yields
                    gen.close()
                    break
        after = list(fake_libc.calls)
        fake_libc.calls.clear()
        return during, after

    assert calls_during_and_after(TrainConfig(**fast)) == (HOLD, HOLD + RESTORE)
    assert calls_during_and_after(TrainConfig(**fast), close_early=True) == (HOLD, HOLD + RESTORE)
    assert calls_during_and_after(TrainConfig(reuse_cpu_memory=False, **fast)) == ([], [])

    # In a worker thread (the napari widgets) only when asked for: there the gain is small.
    def in_thread(train_config):
        out = []
        th = threading.Thread(target=lambda: out.append(calls_during_and_after(train_config)))
        th.start()
        th.join()
        return out[0]

    assert in_thread(TrainConfig(**fast)) == ([], [])
    assert in_thread(TrainConfig(reuse_cpu_memory=True, **fast)) == (HOLD, HOLD + RESTORE)
