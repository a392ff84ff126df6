"""The lesson network (dcnv3.lesson.network, lesson_data, lesson_measure, lesson_watch): its records'
geometry, the measurement functions against hand-made references, the bundled weights' figures on
a held-out set of an unseen seed (printed in the measurements), and a short "watch it learn" run
(determinism, the offsets leaving the grid, stopping)."""

import math
import threading

import numpy as np
import pytest
import torch

from dcnv3.lesson.data import LESSON_SIDE, cell_of, lesson_batch, targets
from dcnv3.lesson.measure import HELD_OUT_SEED, circular_correlation, lesson_figures, pearson, principal_axis
from dcnv3.lesson.network import (
    BUNDLED_LESSON,
    BUNDLED_LESSON_PLAIN,
    LessonConfig,
    LessonNet,
    lesson_letterbox,
    lesson_records,
    load_lesson,
)
from dcnv3.lesson.train import TRAIN_SEED
from dcnv3.lesson.watch import watch_learn
from dcnv3.record.geometry import regular_locations, sampling_locations
from dcnv3.record.stats import effective_dilation


@pytest.fixture(scope="module")
def lesson():
    return load_lesson(BUNDLED_LESSON)


def test_scenes_and_targets_follow_the_objects():
    scene = lesson_batch(3, "val", 0, 1)[0]
    assert scene.image.shape == (LESSON_SIDE, LESSON_SIDE, 3) and scene.objects
    assert np.array_equal(scene.image, lesson_batch(3, "val", 0, 1)[0].image)  # a pure function of the seed
    target = targets(scene)
    for obj in scene.objects:
        row, col = cell_of(obj.x, obj.y)
        assert target["heat"][row, col] == 1.0 and target["class_id"][row, col] == obj.class_id
        assert target["extent"][row, col, 0] == pytest.approx(math.log(obj.size), abs=1e-5)
        x1, y1, x2, y2 = obj.box
        assert 0 <= x1 < obj.x < x2 <= LESSON_SIDE and 0 <= y1 < obj.y < y2 <= LESSON_SIDE
    assert target["heat"].sum() > len(scene.objects)  # Gaussian peaks, not single cells


def test_untrained_records_sample_the_regular_grid():
    torch.manual_seed(0)
    model = LessonNet(LessonConfig())
    image = lesson_batch(0, "val", 0, 1)[0].image
    output, records = lesson_records(model, [image])
    assert output.shape == (1, 11, 64, 64) and len(records[0]) == 3
    record = records[0][-1]
    assert record.stride == 4 and record.grid == (64, 64) and record.groups == 2 and record.points == 9
    assert np.allclose(effective_dilation(record), 1.0)
    # Zero offsets: cell (r, c) samples pixel centres ((c + 0.5 + i) * 4, (r + 0.5 + j) * 4), i, j in -1..1.
    points = sampling_locations(record, lesson_letterbox(), (10, 20))
    grid = np.array([((20 + 0.5 + i) * 4, (10 + 0.5 + j) * 4) for i in (-1, 0, 1) for j in (-1, 0, 1)])
    assert np.allclose(points, grid[None]) and np.allclose(
        regular_locations(record, lesson_letterbox(), (10, 20)), points
    )


def test_measurement_functions_against_references():
    rng = np.random.default_rng(0)
    along = np.stack([np.linspace(-10, 10, 9), np.zeros(9)], axis=1)
    turn = math.radians(125.0)
    rotated = along @ np.array([[math.cos(turn), math.sin(turn)], [-math.sin(turn), math.cos(turn)]])
    angle, elongation = principal_axis(rotated + rng.normal(0, 0.01, rotated.shape), np.ones(9))
    assert angle == pytest.approx(turn % math.pi, abs=1e-2) and elongation > 100
    a, b = rng.uniform(0, 2 * np.pi, 50), rng.uniform(0, 2 * np.pi, 50)
    assert circular_correlation(a, a + 0.7) == pytest.approx(1.0)
    assert abs(circular_correlation(a, b)) < 0.4
    x, y = rng.normal(size=30), rng.normal(size=30)
    reference = ((x - x.mean()) * (y - y.mean())).sum() / math.sqrt(
        ((x - x.mean()) ** 2).sum() * ((y - y.mean()) ** 2).sum()
    )
    assert pearson(x, y) == pytest.approx(reference)


def test_bundled_lesson_figures_on_a_held_out_seed(lesson, report):
    model, recipe = lesson
    twin, _ = load_lesson(BUNDLED_LESSON_PLAIN)
    assert HELD_OUT_SEED != TRAIN_SEED == recipe["seed"]
    figures = lesson_figures(model, twin)
    sizes, bars, task, twin_task = figures["size_dilation"], figures["bar_axis"], figures["task"], figures["twin_task"]
    report(
        f"lesson network, held-out seed {HELD_OUT_SEED} ({figures['scenes']} scenes, {sizes['shapes']} shapes): "
        f"r(size, effective dilation at the centre, deepest layer) = {sizes['r_size']:.3f} "
        f"(log size {sizes['r_log_size']:.3f}; layers 1-3: "
        + ", ".join(f"{r:.2f}" for r in figures["r_size_by_layer"])
        + f"); dilation smallest fifth (<= {sizes['size_small_max']:.0f} px) {sizes['dilation_small']:.2f} cells, "
        f"largest fifth (>= {sizes['size_large_min']:.0f} px) {sizes['dilation_large']:.2f}: ratio {sizes['ratio']:.2f}"
    )
    report(
        f"lesson network, bars ({bars['shapes']}): circular r(samples' principal axis, bar axis, doubled angles) = "
        f"{bars['circular_r']:.3f}, median axis error {bars['median_error_deg']:.0f} deg, "
        f"median elongation {bars['median_elongation']:.2f}"
    )
    wide = figures["bar_axis_min_24px"]
    report(
        f"lesson network, bars of >= 24 px ({wide['shapes']}): circular r {wide['circular_r']:.3f}, "
        f"median axis error {wide['median_error_deg']:.0f} deg"
    )
    report(
        f"lesson task (F1 of centres / class accuracy / size error factor): DCNv3 {task['f1']:.3f} / "
        f"{task['class_accuracy']:.3f} / {task['size_error_factor']:.3f}; plain twin {twin_task['f1']:.3f} / "
        f"{twin_task['class_accuracy']:.3f} / {twin_task['size_error_factor']:.3f}"
    )
    # The sampling grows with the shape: regression guards a little below the card's figures.
    assert sizes["r_size"] > 0.8 and sizes["ratio"] > 2.5 and sizes["dilation_large"] > 5.0
    assert figures["r_size_by_layer"][-1] >= figures["r_size_by_layer"][0]
    assert bars["shapes"] >= 30 and bars["circular_r"] > 0.35 and wide["circular_r"] > 0.6
    assert task["f1"] > twin_task["f1"]


def _short_run(model, seed, **kwargs):
    return list(watch_learn(model, seed=seed, iterations=20, every=5, **kwargs))


def test_watch_it_learn_leaves_the_grid_and_is_deterministic(lesson, report):
    model, _ = lesson
    before = [p.clone() for p in model.parameters()]
    first = _short_run(model, seed=2)
    assert [s.iteration for s in first] == [0, 5, 10, 15, 20]
    assert first[0].mean_offset == 0.0 and first[0].cell_dilation == pytest.approx(1.0)
    assert first[-1].mean_offset > 0.3 and first[-1].cell_offset > 0.1
    assert first[-1].points.shape == (2, 9, 2) and first[-1].weights.shape == (2, 9)
    again = _short_run(model, seed=2)
    assert all(a.loss == b.loss and np.array_equal(a.points, b.points) for a, b in zip(first, again))
    assert not np.array_equal(_short_run(model, seed=3)[-1].points, first[-1].points)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # the bundled model is untouched
    report(
        f"watch it learn, 20 iterations (seed 2): mean |offset| 0 -> {first[-1].mean_offset:.2f} cells, "
        f"loss {first[0].loss:.2f} -> {first[-1].loss:.2f}, {first[-1].seconds:.1f} s"
    )


def test_watch_it_learn_stops_when_asked(lesson):
    stop = threading.Event()
    snapshots = []
    for snapshot in watch_learn(lesson[0], seed=2, iterations=100, every=5, stop=stop):
        snapshots.append(snapshot)
        if snapshot.iteration >= 5:
            stop.set()
    assert snapshots[-1].iteration == 5 and len(snapshots) == 2
    with pytest.raises(ValueError):
        next(watch_learn(LessonNet(LessonConfig(deformable=False))))
