"""The procedural detection dataset: determinism, label validity and tightness, size and class
coverage, the ultralytics layout, and the demo video's smoothness."""

import json
import os
import random
from pathlib import Path

import numpy as np
import pytest
import yaml

os.environ.setdefault("YOLO_OFFLINE", "true")

import itertools

from dcnv3.data import CLASS_NAMES, image_rng, render_scene, video_frames, write_dataset
from dcnv3.data.shapes import Geometry, ellipse, place, rasterise, rectangle, sample_geometry

SIZE = 320


@pytest.fixture(scope="module")
def scenes():
    """100 training scenes with masks: (image, boxes, classes, masks) each."""
    return [render_scene(image_rng(7, "train", i), SIZE, return_masks=True) for i in range(100)]


def _files(root: Path) -> dict:
    """relative path -> bytes of every file under the images/ and labels/ trees."""
    return {
        str(p.relative_to(root)): p.read_bytes()
        for kind in ("images", "labels")
        for p in sorted((root / kind).rglob("*"))
        if p.is_file()
    }


# ----------------------------------------------------------------------------- rasteriser


def test_pixel_aligned_square_covers_exactly_its_pixels():
    # Pixel i spans [i, i+1): a square with corners at 10 and 20 covers pixels 10..19 fully.
    geometry = Geometry(0, (rectangle(0, 0, 1, 1),), (True,))
    patch = rasterise(place(geometry, 15.0, 15.0, 10.0, 0.0))
    full = np.zeros((32, 32), np.float32)
    full[patch.y0 : patch.y0 + patch.alpha.shape[0], patch.x0 : patch.x0 + patch.alpha.shape[1]] = patch.alpha
    expected = np.zeros((32, 32), np.float32)
    expected[10:20, 10:20] = 1
    np.testing.assert_array_equal(full, expected)


def test_antialiased_disc_area_and_ring_hole():
    disc = rasterise(place(Geometry(2, (ellipse(0, 0, 0.5, 0.5),), (True,)), 50.3, 40.7, 60.0, 0.0))
    assert disc.alpha.sum() == pytest.approx(np.pi * 30.0**2, rel=0.01)
    assert ((disc.alpha > 0.05) & (disc.alpha < 0.95)).sum() > 100  # an anti-aliased rim
    ring = sample_geometry(np.random.default_rng(0), CLASS_NAMES.index("ring"), 80.0)
    patch = rasterise(place(ring, 100.0, 100.0, 80.0, 0.3))
    assert patch.alpha[100 - patch.y0, 100 - patch.x0] == 0.0  # the hole
    assert patch.alpha.max() == 1.0


# ----------------------------------------------------------------------------- determinism


def test_render_scene_is_deterministic_and_seed_dependent():
    for i in range(3):
        a = render_scene(image_rng(0, "train", i), SIZE)
        b = render_scene(image_rng(0, "train", i), SIZE)
        assert a[0].tobytes() == b[0].tobytes()
        np.testing.assert_array_equal(a[1], b[1])
        np.testing.assert_array_equal(a[2], b[2])
        other_seed = render_scene(image_rng(1, "train", i), SIZE)
        other_split = render_scene(image_rng(0, "val", i), SIZE)
        assert a[0].tobytes() != other_seed[0].tobytes()
        assert a[0].tobytes() != other_split[0].tobytes()


def test_global_random_state_untouched():
    # The legacy global generator is the subject here: the generators must leave it untouched.
    np_state, py_state = np.random.get_state(), random.getstate()  # noqa: NPY002
    render_scene(image_rng(3, "train", 0), SIZE)
    next(iter(video_frames(seed=3, seconds=0.2)))
    after = np.random.get_state()  # noqa: NPY002
    assert np_state[0] == after[0] and np.array_equal(np_state[1], after[1]) and np_state[2:] == after[2:]
    assert py_state == random.getstate()


def test_write_dataset_byte_identical_across_worker_counts(tmp_path):
    one = write_dataset(tmp_path / "w1", 5, 3, seed=11, imgsz=96, workers=1).parent
    two = write_dataset(tmp_path / "w2", 5, 3, seed=11, imgsz=96, workers=2).parent
    other = write_dataset(tmp_path / "s12", 5, 3, seed=12, imgsz=96, workers=1).parent
    files_one, files_two = _files(one), _files(two)
    assert len(files_one) == 16 and files_one == files_two
    files_other = _files(other)
    assert files_other.keys() == files_one.keys()
    assert all(files_other[k] != files_one[k] for k in files_one if k.endswith(".jpg"))
    train = {k.split("/")[-1]: v for k, v in files_one.items() if k.startswith("images/train")}
    val = {k.split("/")[-1]: v for k, v in files_one.items() if k.startswith("images/val")}
    assert all(train[name] != val[name] for name in val)  # val is never a copy of train


# ----------------------------------------------------------------------------- labels


def test_boxes_tightly_enclose_visible_masks(scenes):
    for image, boxes, classes, masks in scenes:
        assert image.shape == (SIZE, SIZE, 3) and image.dtype == np.uint8
        assert boxes.dtype == np.float32 and boxes.shape == (len(classes), 4) and masks.shape[0] == len(classes)
        for box, mask in zip(boxes, masks):
            ys, xs = np.nonzero(mask)
            tight = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)
            assert np.abs(box - tight).max() <= 1.0
            assert (box >= 0).all() and (box <= SIZE).all()


def test_sizes_span_small_and_large_and_every_class_appears(scenes):
    boxes = np.concatenate([s[1] for s in scenes])
    classes = np.concatenate([s[2] for s in scenes])
    longest = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    assert longest.min() < 20 and longest.max() > 0.4 * SIZE
    assert (longest < 32).mean() > 0.15 and (longest > 96).mean() > 0.1  # small and large both common
    assert set(classes.tolist()) == set(range(len(CLASS_NAMES)))
    counts = [len(s[2]) for s in scenes]
    assert max(counts) <= 8 and counts.count(0) <= 5 and max(counts) >= 5


def test_written_labels_are_valid_yolo(tmp_path):
    data_yaml = write_dataset(tmp_path / "ds", 12, 4, seed=5, imgsz=128, workers=1)
    for label in sorted((data_yaml.parent / "labels").rglob("*.txt")):
        for line in label.read_text().splitlines():
            fields = line.split()
            assert len(fields) == 5 and all(len(f.split(".")[1]) == 6 for f in fields[1:])
            cls, (cx, cy, w, h) = int(fields[0]), map(float, fields[1:])
            assert 0 <= cls < len(CLASS_NAMES)
            assert w > 0 and h > 0
            for v in (cx, cy, w, h, cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2):
                assert -1e-6 <= v <= 1 + 1e-6


# ----------------------------------------------------------------------------- layout


def test_layout_data_yaml_and_ultralytics_parse(tmp_path, monkeypatch):
    out = tmp_path / "shapes"
    data_yaml = write_dataset(out, 4, 2, seed=0, imgsz=64, workers=1)
    assert data_yaml == out.resolve() / "data.yaml"
    for split, n in (("train", 4), ("val", 2)):
        assert sorted(p.name for p in (out / "images" / split).iterdir()) == [f"{i:06d}.jpg" for i in range(n)]
        assert sorted(p.name for p in (out / "labels" / split).iterdir()) == [f"{i:06d}.txt" for i in range(n)]
    data = yaml.safe_load(data_yaml.read_text())
    assert Path(data["path"]).is_absolute() and Path(data["path"]) == out.resolve()
    assert data["train"] == "images/train" and data["val"] == "images/val"
    assert data["names"] == dict(enumerate(CLASS_NAMES))
    recipe = json.loads((out / "recipe.json").read_text())
    assert recipe["seed"] == 0 and recipe["n_train"] == 4 and recipe["n_val"] == 2 and recipe["imgsz"] == 64
    assert recipe["class_names"] == list(CLASS_NAMES) and recipe["version"]

    import ultralytics.data.utils as data_utils

    # check_det_dataset ends by fetching a plotting font when none is installed: not our concern here.
    monkeypatch.setattr(data_utils, "check_font", lambda *a, **k: None)
    parsed = data_utils.check_det_dataset(str(data_yaml))
    assert parsed["nc"] == len(CLASS_NAMES)
    assert Path(parsed["train"]) == out.resolve() / "images" / "train"
    assert Path(parsed["val"]) == out.resolve() / "images" / "val"


def test_existing_dataset_needs_overwrite(tmp_path):
    write_dataset(tmp_path / "ds", 2, 1, seed=0, imgsz=64, workers=1)
    with pytest.raises(FileExistsError):
        write_dataset(tmp_path / "ds", 1, 1, seed=0, imgsz=64, workers=1)
    write_dataset(tmp_path / "ds", 1, 1, seed=0, imgsz=64, workers=1, overwrite=True)
    assert len(list((tmp_path / "ds" / "images" / "train").iterdir())) == 1  # no stale images left


# ----------------------------------------------------------------------------- video


def test_video_frames_constant_size_smooth_and_deterministic():
    frames = list(video_frames(seed=0, size=(240, 160), seconds=4, fps=15))
    assert len(frames) == 60
    assert all(f.shape == (160, 240, 3) and f.dtype == np.uint8 for f, _, _ in frames)
    steps = []
    for (_, b0, c0), (_, b1, c1) in itertools.pairwise(frames):
        assert len(set(c0.tolist())) == len(c0)  # one track per class
        centres0 = {int(c): (b[:2] + b[2:]) / 2 for b, c in zip(b0, c0)}
        for b, c in zip(b1, c1):
            if int(c) in centres0:
                steps.append(np.hypot(*((b[:2] + b[2:]) / 2 - centres0[int(c)])))
    steps = np.asarray(steps)
    assert len(steps) > 100
    assert np.percentile(steps, 95) <= 5.0 and steps.max() <= 0.25 * 240  # small steps, no teleports
    assert steps.max() > 0  # it does move
    again = next(iter(video_frames(seed=0, size=(240, 160), seconds=4, fps=15)))
    assert again[0].tobytes() == frames[0][0].tobytes()
