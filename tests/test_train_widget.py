"""The Train and one-click widgets: what the status says (score wording, warnings), Stop,
one notification per error, the model kept in the project, and no import on the GUI thread."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("qtpy")

from napari_lazylabels.core.io import LazyDataset, load_dataset, save_dataset  # noqa: E402
from napari_lazylabels.core.labels import ClassSpec  # noqa: E402
from napari_lazylabels.core.train import TrainEvent  # noqa: E402
from test_widgets import make_sample  # noqa: E402

TINY = (4, 8)  # the network's widths: a fast one for GUI tests


@pytest.fixture
def project(tmp_path):
    """A project folder with two annotated images (exact masks on the first)."""
    ds = LazyDataset(
        classes=ClassSpec(names=("background", "cell")),
        samples=[make_sample("a", seed=0), make_sample("b", seed=1)],
    )
    return save_dataset(ds, tmp_path / "project")


@pytest.fixture
def shown(monkeypatch):
    """Every notification the widgets raise: ``[(level, message)]`` (napari's relay of
    worker errors included)."""
    from napari.utils import notifications
    from napari.utils.notifications import notification_manager

    out: list[tuple[str, str]] = []
    for level in ("error", "warning", "info"):
        monkeypatch.setattr(notifications, f"show_{level}", lambda m, level=level: out.append((level, str(m))))
    monkeypatch.setattr(
        notification_manager, "receive_error", lambda *a, **k: out.append(("napari error", str(a[1])))
    )
    return out


def _tiny(widget, iterations=1000):
    widget.widths = TINY
    widget.device.setCurrentText("cpu")
    widget.budget_kind.setCurrentText("iterations")
    widget.budget.setValue(iterations)
    widget.batch.setValue(2)
    widget.patch.setValue(48)
    widget.preview.setChecked(False)


def _idle(qtbot, widget, timeout=60_000):
    qtbot.waitUntil(lambda: not widget.is_running(), timeout=timeout)


def _ev(kind, iteration=10, **kw):
    return TrainEvent(kind, iteration, 100, 1.0, **kw)


# --------------------------------------------------------------------------- status wording
@pytest.mark.gui
def test_score_says_what_it_measures(make_napari_viewer, shown):
    """A score on marks alone reads "agreement with your marks", not a dice of the objects;
    the final status names the measure and the trivial score next to the best value."""
    from napari_lazylabels._widgets.train import TrainWidget

    viewer = make_napari_viewer(show=True)
    tw = TrainWidget(viewer)
    marks = {"dice": 0.963, "n": 2, "measure": "marks", "trivial": 0.95, "foreground": 0.9}
    tw._on_event(_ev("validation", metrics=marks))
    tw._on_event(_ev("step", 11, loss=0.5, patches_per_s=10.0))
    assert "agreement with your marks 0.963" in tw.status.text()
    assert "not a dice of the objects" in tw.status.text()
    exact = {"dice": 0.81, "n": 1, "measure": "exact masks", "trivial": 0.4, "foreground": 0.3}
    tw._on_event(_ev("done", 20, path=tw._out_dir() / "best.pt", message="finished",
                     metrics={"best_metric": 0.81, "best": exact, "warnings": [], "interface_threshold": None}))
    text = tw.status.text()
    assert "validation dice 0.810 on exact masks of 1 image" in text and "0.40" in text
    assert "validation dice 0.810," not in text  # the old wording with no measure


@pytest.mark.gui
def test_warning_shown_in_status_and_once_as_notification(make_napari_viewer, shown):
    from napari_lazylabels._widgets.train import TrainWidget

    viewer = make_napari_viewer(show=True)
    tw = TrainWidget(viewer)
    weak = 'The model does no better (0.30) than calling every pixel one class (0.94): train longer.'
    tw._on_event(_ev("warning", message=weak))
    assert weak in tw.status.text()
    tw._on_event(_ev("warning", message=weak))  # the same warning again, then in the done event
    tw._on_event(_ev("done", 20, path=tw._out_dir() / "best.pt", message="stopped",
                     metrics={"best_metric": 0.3, "best": {"dice": 0.3, "n": 1, "measure": "exact masks",
                                                           "trivial": 0.94}, "warnings": [weak]}))
    assert shown.count(("warning", weak)) == 1
    assert [m for lvl, m in shown if lvl == "warning"] == [weak]
    assert weak in tw.status.text() and "stopped at iteration 20" in tw.status.text()


# --------------------------------------------------------------------------- errors
@pytest.mark.gui
def test_only_background_labels_give_one_clear_error(make_napari_viewer, shown):
    from napari_lazylabels._widgets.train import TrainWidget

    viewer = make_napari_viewer(show=True)
    viewer.add_image(np.zeros((64, 64), np.uint8), name="img")
    det = np.zeros((64, 64), np.uint8)
    det[5:10, 5:50] = 1  # background strokes only
    viewer.add_labels(det, name="detection")
    tw = TrainWidget(viewer)
    tw.start()
    assert not tw.is_running()
    errors = [m for lvl, m in shown if "error" in lvl]
    assert len(errors) == 1 and "Only background is painted" in errors[0] and "\n" not in errors[0]


@pytest.mark.gui
def test_worker_error_gives_exactly_one_notification(make_napari_viewer, qtbot, project, shown, monkeypatch):
    from napari_lazylabels._widgets import train

    def failing(*_a, **_k):
        raise ValueError("The checkpoint has 1 input channel, the images have 3: train a new model.")
        yield  # a generator, like the real worker

    monkeypatch.setattr(train, "_train_worker_fn", failing)
    viewer = make_napari_viewer(show=True)
    viewer.open(str(project), plugin="napari-lazylabels")
    tw = train.TrainWidget(viewer)
    _tiny(tw)
    # an exception re-raised in a slot is what napari shows as a second notification
    with qtbot.captureExceptions() as reraised:
        tw.start()
        _idle(qtbot, tw)
        qtbot.waitUntil(lambda: any("error" in lvl for lvl, _ in shown), timeout=5000)
        qtbot.wait(200)
    assert not reraised
    errors = [m for lvl, m in shown if "error" in lvl]
    assert errors == ["Training failed: The checkpoint has 1 input channel, the images have 3: train a new model."]
    assert tw.status.text().startswith("Training failed:")


@pytest.mark.gui
def test_load_model_without_a_model_names_a_widget_action(make_napari_viewer, shown, tmp_path):
    from napari_lazylabels._widgets.train import TrainWidget

    viewer = make_napari_viewer(show=True)
    (tmp_path / "empty").mkdir()
    TrainWidget(viewer).load_model(str(tmp_path / "empty"))
    errors = [m for lvl, m in shown if "error" in lvl]
    assert len(errors) == 1 and "Start" in errors[0] and "lazylabels train" not in errors[0]


# --------------------------------------------------------------------------- Stop
@pytest.mark.gui
def test_stop_twice_ends_in_a_final_status(make_napari_viewer, qtbot, project, shown):
    from napari_lazylabels._widgets.train import TrainWidget

    viewer = make_napari_viewer(show=True)
    viewer.open(str(project), plugin="napari-lazylabels")
    tw = TrainWidget(viewer)
    _tiny(tw)
    tw.start()
    qtbot.waitUntil(lambda: tw.last_event is not None and tw.last_event.iteration >= 2, timeout=60_000)
    tw.stop()
    tw.stop()
    _idle(qtbot, tw)
    qtbot.wait(100)
    text = tw.status.text()
    assert not text.startswith("Stopping"), text
    assert "Training" in text and ("second Stop" in text or "stopped at iteration" in text), text
    assert tw.start_btn.isEnabled() and not tw.stop_btn.isEnabled()


@pytest.mark.gui
def test_one_click_stop_before_a_model_pushes_nothing_silently(make_napari_viewer, qtbot, project, shown, monkeypatch):
    """Stop pressed while Start waits for the engine: no training, no prediction layers, and
    the status says there is no model."""
    from napari_lazylabels._widgets import _common
    from napari_lazylabels._widgets.train import OneClickWidget

    viewer = make_napari_viewer(show=True)
    viewer.open(str(project), plugin="napari-lazylabels")
    w = OneClickWidget(viewer)
    _tiny(w.trainer)
    if _common._WARM_THREAD is not None:  # a warm-up of an earlier widget must not end it now
        _common._WARM_THREAD.join(timeout=60)
    # as if torch were still being imported (in a test session everything already is, and
    # start_warm_up would say so at once)
    monkeypatch.setattr(_common, "start_warm_up", lambda: None)
    _common._WARM.clear()
    try:
        w.run()
        assert w.trainer.is_running() and w.trainer.worker is None
        w.stop_btn.click()
    finally:
        _common._WARM.set()
    qtbot.wait(200)
    assert not w.trainer.is_running() and w.trainer.worker is None
    assert "no model" in w.trainer.status.text()
    assert not any("classes" in ly.name for ly in viewer.layers)


# --------------------------------------------------------------------------- the model in the project
@pytest.mark.gui
def test_model_moves_into_the_project_and_is_restored(make_napari_viewer, qtbot, tmp_path, shown, monkeypatch):
    """Train on new images (no project yet): the model lands in the temp folder; Save project
    moves it to <project>/models/; a new viewer opening the project restores it in the Train
    and Predict widgets, and Start continues it."""
    from napari_lazylabels._widgets import _common
    from napari_lazylabels._widgets.annotate import AnnotationWidget
    from napari_lazylabels._widgets.predict import PredictWidget
    from napari_lazylabels._widgets.train import TrainWidget

    monkeypatch.setenv("LAZYLABELS_MODEL_DIR", str(tmp_path / "tmpmodels"))
    viewer = make_napari_viewer(show=True)
    s = make_sample("cells")
    viewer.add_image(s.image, name="cells")
    ann = AnnotationWidget(viewer)
    tasks = ann.create_layers()
    rr, cc = np.nonzero(s.detection)
    tasks["detection"].data_setitem((rr, cc), s.detection[rr, cc])
    tw = TrainWidget(viewer)
    _tiny(tw, iterations=3)
    tw.start()
    _idle(qtbot, tw)
    qtbot.waitUntil(lambda: tw.last_event is not None and tw.last_event.kind == "done", timeout=10_000)
    temp_model = tw.last_result_dir
    assert _common.is_temporary(temp_model) and (temp_model / "best.pt").exists()

    root = ann.save_project(str(tmp_path / "proj"))
    model = root / "models" / "model"
    assert (model / "best.pt").exists() and not temp_model.exists()
    assert tw.model_dir.text() == str(model)
    assert _common.session(viewer).model_dir == model
    assert (root / "models" / "current.json").exists()
    assert load_dataset(root).names() == ["cells"]  # the models folder does not disturb the dataset

    viewer2 = make_napari_viewer(show=True)
    viewer2.open(str(root), plugin="napari-lazylabels")
    tw2 = TrainWidget(viewer2)
    pw2 = PredictWidget(viewer2)
    assert tw2.model_dir.text() == str(model)
    assert pw2.model_dir.text() == str(model)
    _tiny(tw2, iterations=2)
    tw2.widths = None
    tw2.start()
    _idle(qtbot, tw2)
    from napari_lazylabels.core.checkpoint import load_checkpoint

    assert load_checkpoint(model / "latest.pt").iteration == 5  # 3 + 2: resumed, not restarted


@pytest.mark.gui
def test_new_model_never_overwrites_one(make_napari_viewer, qtbot, project, shown):
    from napari_lazylabels._widgets.train import TrainWidget

    viewer = make_napari_viewer(show=True)
    viewer.open(str(project), plugin="napari-lazylabels")
    tw = TrainWidget(viewer)
    assert tw.model_dir.text() == str(project / "models" / "model")  # the project's, not /tmp
    _tiny(tw, iterations=2)
    tw.start()
    _idle(qtbot, tw)
    first = project / "models" / "model"
    before = (first / "best.pt").read_bytes()
    tw.resume.setChecked(False)
    tw.start()
    _idle(qtbot, tw)
    assert (first / "best.pt").read_bytes() == before
    assert tw.last_result_dir == project / "models" / "model-2" and (tw.last_result_dir / "best.pt").exists()


def test_unsaved_models_are_not_kept_in_the_temp_folder(monkeypatch):
    import tempfile
    from pathlib import Path

    from napari_lazylabels._widgets import _common

    monkeypatch.delenv("LAZYLABELS_MODEL_DIR", raising=False)
    base = _common.temp_model_base()
    assert Path(tempfile.gettempdir()) not in base.parents and base.name == "unsaved-models"
    monkeypatch.setenv("LAZYLABELS_MODEL_DIR", "/somewhere/models")
    assert _common.temp_model_base() == Path("/somewhere/models")


@pytest.mark.gui
def test_file_save_with_the_plugin_writer_moves_the_model(make_napari_viewer, qtbot, tmp_path, shown, monkeypatch):
    """File > Save (napari's writer path) takes the model into the saved project too."""
    from pathlib import Path

    from napari_lazylabels._widgets import _common
    from napari_lazylabels._widgets.annotate import AnnotationWidget
    from napari_lazylabels._widgets.train import TrainWidget

    monkeypatch.setenv("LAZYLABELS_MODEL_DIR", str(tmp_path / "unsaved"))
    viewer = make_napari_viewer(show=True)
    s = make_sample("cells")
    viewer.add_image(s.image, name="cells")
    tasks = AnnotationWidget(viewer).create_layers()
    rr, cc = np.nonzero(s.detection)
    tasks["detection"].data_setitem((rr, cc), s.detection[rr, cc])
    tw = TrainWidget(viewer)
    _tiny(tw, iterations=2)
    tw.start()
    _idle(qtbot, tw)
    assert _common.is_temporary(tw.last_result_dir)
    viewer.layers.select_all()
    (saved,) = viewer.layers.save(str(tmp_path / "proj"), selected=True, plugin="napari-lazylabels")
    model = Path(saved) / "models" / "model"
    assert (model / "best.pt").exists() and tw.model_dir.text() == str(model)
    assert not any((tmp_path / "unsaved").iterdir())


@pytest.mark.gui
def test_training_on_a_large_layer_reads_the_parts_around_the_marks(make_napari_viewer, qtbot, tmp_path, shown, caplog):
    """A 4200 x 4300 image layer (at a physical scale) marked in two corners: the Train widget
    trains on the two parts around the marks (core.crops), not on the whole image."""
    import logging

    from napari_lazylabels._widgets.annotate import AnnotationWidget
    from napari_lazylabels._widgets.train import TrainWidget

    rng = np.random.default_rng(0)
    image = rng.normal(40, 10, (4200, 4300)).clip(0, 255).astype(np.uint8)
    for y, x in ((300, 400), (3900, 3950)):
        image[y - 40 : y + 40, x - 40 : x + 40] = 200
    viewer = make_napari_viewer(show=True)
    viewer.add_image(image, name="montage", scale=(0.2, 0.2))
    ann = AnnotationWidget(viewer)
    viewer.window.add_dock_widget(ann)
    det = ann.create_layers()["detection"]
    for y, x in ((300, 400), (3900, 3950)):  # a mark inside each bright square, a scribble beside it
        det.data[y - 10 : y + 10, x - 10 : x + 10] = 2
        det.data[y + 60 : y + 64, x - 40 : x + 40] = 1
    det.refresh()
    caplog.set_level(logging.INFO, logger="napari_lazylabels")
    tw = TrainWidget(viewer)
    _tiny(tw, iterations=3)
    tw.model_dir.setText(str(tmp_path / "model"))
    tw.start()
    qtbot.waitUntil(lambda: tw.last_event is not None and tw.last_event.kind == "done", timeout=120_000)
    _idle(qtbot, tw)
    assert "montage: 4200x4300 px, trained on the 2 part(s) around its labels" in caplog.text
