"""Instance ids across the slices of a stack (issue 26, stacks): unique, optionally linked."""

import json

import numpy as np
import pytest
import torch

from napari_lazylabels.core.io import read_label, write_label
from napari_lazylabels.core.model import ModelConfig, build_model
from napari_lazylabels.core.outputs import PREDICTION_SETTINGS, resplit_folder
from napari_lazylabels.core.predictor import PredictConfig, Predictor
from napari_lazylabels.core.stacks import StackIds, slice_groups, stack_instances


def _disc(shape, centre, radius):
    yy, xx = np.ogrid[: shape[0], : shape[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2


def _slice(*objects, shape=(60, 80)):
    """Instances numbered 1, 2, ... in the order given: ``(centre, radius)`` discs."""
    out = np.zeros(shape, np.int32)
    for i, (centre, radius) in enumerate(objects, 1):
        out[_disc(shape, centre, radius)] = i
    return out


def test_every_object_of_every_slice_gets_its_own_id():
    a = _slice(((15, 15), 8), ((40, 50), 8))
    stack = stack_instances([a, a, np.zeros_like(a), a])
    assert stack.dtype == np.int32 and stack.shape == (4, 60, 80)
    assert [sorted(set(np.unique(s)) - {0}) for s in stack] == [[1, 2], [3, 4], [], [5, 6]]
    assert np.array_equal(stack[1] > 0, a > 0)  # only the ids change


def test_linked_objects_keep_the_id_of_the_one_they_continue():
    first = _slice(((15, 15), 8), ((40, 50), 8))
    # object 1 moved a pixel (same object); object 2 gone; a new object; ids given in another order
    second = np.zeros_like(first)
    second[_disc(first.shape, (45, 20), 6)] = 7
    second[_disc(first.shape, (16, 15), 8)] = 3
    ids = StackIds(link=True)
    s0, s1 = ids.add(first), ids.add(second)
    assert s1[16, 15] == s0[15, 15] == 1  # the moved object is the same object
    assert s1[45, 20] == 3  # a new object gets the next unused id (2 went away, never reused)
    third = np.zeros_like(first)
    third[_disc(first.shape, (45, 20), 6)] = 1
    assert ids.add(third)[45, 20] == 3


def test_a_link_is_one_to_one_and_needs_more_than_half_the_union():
    first = _slice(((30, 40), 12))
    # the object splits in two halves at an interface: each overlaps it by less than half their union
    halves = np.zeros_like(first)
    halves[(first > 0) & (np.arange(80)[None, :] < 40)] = 1
    halves[(first > 0) & (np.arange(80)[None, :] > 40)] = 2
    linked = stack_instances([first, halves], link=True)
    assert set(np.unique(linked[1])) == {0, 2, 3}
    # a big and a small piece: the big one continues the object, the small one is new
    pieces = np.zeros_like(first)
    pieces[(first > 0) & (np.arange(80)[None, :] < 48)] = 1
    pieces[(first > 0) & (np.arange(80)[None, :] >= 48)] = 2
    linked = stack_instances([first, pieces], link=True)
    assert linked[1][30, 35] == 1 and linked[1][30, 50] == 2
    with pytest.raises(ValueError, match="one-to-one"):
        StackIds(link=True, min_iou=0.3)


def test_slices_of_one_stack_have_one_shape():
    ids = StackIds()
    ids.add(np.zeros((10, 10), np.int32))
    with pytest.raises(ValueError, match="one shape"):
        ids.add(np.zeros((10, 12), np.int32))


def test_output_stems_group_by_stack_in_slice_order():
    stems = ["a_z001", "b", "a_z000", "a_z010", "c_z000", "a_zz"]
    assert slice_groups(stems) == [["a_z000", "a_z001", "a_z010"], ["b"], ["c_z000"], ["a_zz"]]


@pytest.mark.parametrize("link", [False, True])
def test_a_predicted_stack_numbers_its_objects_across_slices(link):
    torch.manual_seed(0)
    cfg = ModelConfig(in_channels=1, n_classes=2, widths=(4, 8), size="custom")
    model = build_model(cfg)
    with torch.no_grad():  # an untrained network that sees one object everywhere and no interface
        model.heads["segmentation"].bias.copy_(torch.tensor([-20.0, 20.0]))
        model.heads["separation"].bias.copy_(torch.tensor([20.0, -20.0]))
    predictor = Predictor(model, cfg, PredictConfig(tile=64, device="cpu", tta=1, link_slices=link))
    plane = (np.random.default_rng(1).random((64, 64)) * 255).astype(np.uint8)
    preds = predictor.predict_stack(np.stack([plane, plane]))
    first, second = preds[0].instances, preds[1].instances
    assert first.max() > 0 and np.array_equal(first > 0, second > 0)
    if link:  # the same objects in both slices: the same ids
        assert np.array_equal(first, second)
    else:
        assert not set(np.unique(first)) - {0} & set(np.unique(second)) - {0}
    assert predictor.instance_settings()["link_slices"] is link


def test_cutting_a_stack_again_keeps_ids_unique_across_it(tmp_path):
    classes = (_slice(((15, 15), 8), ((40, 50), 8)) > 0).astype(np.uint8)
    for stem in ("stack_z000", "stack_z001", "single"):
        write_label(tmp_path / f"{stem}_classes.png", classes)
    (tmp_path / PREDICTION_SETTINGS).write_text(json.dumps({"link_slices": True, "min_object_size": 0}))

    def ids(stem):
        return set(np.unique(read_label(next(tmp_path.glob(f"{stem}_instances.*"))))) - {0}

    resplit_folder(tmp_path, min_object_size=0)  # as recorded: linked
    assert ids("stack_z000") == ids("stack_z001") == {1, 2} and ids("single") == {1, 2}
    resplit_folder(tmp_path, min_object_size=0, link_slices=False)
    assert ids("stack_z000") == {1, 2} and ids("stack_z001") == {3, 4}
    assert json.loads((tmp_path / PREDICTION_SETTINGS).read_text())["link_slices"] is False
    # asking for one slice cuts its whole stack, so its ids still follow the slice before
    resplit_folder(tmp_path, min_object_size=0, stems=["stack_z001"])
    assert ids("stack_z001") == {3, 4}


def test_any_numbering_and_negative_ids():
    """Ids far above the pixel count (an earlier stack's) are renumbered in their order."""
    a = np.zeros((30, 30), np.int64)
    a[2:8, 2:8], a[20:25, 20:25] = 3_000_000_000, 7
    out = StackIds().add(a)
    assert out[3, 3] == 2 and out[21, 21] == 1 and out.dtype == np.int32
    with pytest.raises(ValueError, match=">= 0"):
        StackIds().add(-a)


def test_linking_tile_by_tile_gives_the_objects_stack_ids_give():
    """iter_link_table + iter_apply_link (slices too large to hold, read in tiles) link the
    same objects as StackIds(link=True); writing the table again changes nothing."""
    from napari_lazylabels.core.jobs import drive
    from napari_lazylabels.core.stacks import iter_apply_link, iter_link_table

    rng = np.random.default_rng(0)
    slices = []
    for z in range(4):  # discs drifting through the stack, one disappearing, one appearing
        objs = [((20 + 3 * z, 20 + 2 * z), 9), ((60, 70 - 4 * z), 12), ((30, 110), 7 + z)]
        if z == 2:
            objs.pop(0)
        if z >= 1:
            objs.append(((80, 30), 10))
        order = rng.permutation(len(objs))
        slices.append(_slice(*[objs[i] for i in order], shape=(100, 130)))
    # as block-by-block prediction writes them: ids unique over the stack, not linked
    stack, next_id, firsts = [], 1, []
    for s in slices:
        firsts.append(next_id)
        stack.append(np.where(s > 0, s + next_id - 1, 0).astype(np.uint32))
        next_id += int(s.max())
    ends = firsts[1:] + [next_id]
    linked = 0
    for z in range(1, 4):
        table = drive(iter_link_table(stack[z - 1], stack[z], firsts[z], ends[z], tile=48))
        linked += drive(iter_apply_link(stack[z], table, firsts[z], tile=48))
        again = stack[z].copy()
        drive(iter_apply_link(again, table, firsts[z], tile=48))
        assert np.array_equal(again, stack[z])
    want = stack_instances(slices, link=True)
    got = np.stack(stack)
    pairs = np.unique(np.stack([got[got > 0], want[got > 0]]), axis=1)  # one-to-one over the stack
    assert ((got > 0) == (want > 0)).all()
    assert len(np.unique(pairs[0])) == pairs.shape[1] == len(np.unique(pairs[1]))
    assert linked == next_id - 1 - len(np.unique(want[want > 0])) > 0
