"""The app's state pieces without gradio: the one cache class, the file store, the view states."""

import threading
from dataclasses import FrozenInstanceError

import numpy as np
import pytest

from viz_app.state.cache import LRUCache
from viz_app.state.files import FileStore
from viz_app.state.view_state import ImageView


def test_lru_cache_forgets_the_least_recently_used_first():
    cache = LRUCache(2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # "a" is now the most recent
    cache.put("c", 3)
    assert "b" not in cache and cache.get("a") == 1 and cache.get("c") == 3 and len(cache) == 2
    assert cache.get("b", "absent") == "absent"


def test_get_or_compute_counts_and_stores_nothing_on_error():
    cache = LRUCache(4)
    calls = []
    assert cache.get_or_compute(("img", 320), lambda: calls.append(1) or "run") == "run"
    assert cache.get_or_compute(("img", 320), lambda: calls.append(1) or "again") == "run"
    assert (cache.hits, cache.misses, len(calls)) == (1, 1, 1)

    def fail():
        raise ValueError("bad image")

    with pytest.raises(ValueError, match="bad image"):
        cache.get_or_compute("broken", fail)
    assert "broken" not in cache


def test_capacity_zero_remembers_nothing():
    cache = LRUCache(0)
    assert cache.get_or_compute("k", lambda: 1) == 1 and cache.get_or_compute("k", lambda: 2) == 2
    assert len(cache) == 0 and cache.misses == 2
    with pytest.raises(ValueError):
        LRUCache(-1)


def test_lru_cache_stays_bounded_under_threads():
    cache = LRUCache(8)

    def work(offset):
        for i in range(500):
            cache.get_or_compute((offset + i) % 20, lambda i=i: i)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(cache) == 8 and cache.hits + cache.misses == 2000


def test_file_store_names_pictures_by_content_and_prunes(tmp_path):
    store = FileStore(keep_views=3, keep_runs=2)
    try:
        image = np.zeros((20, 30, 3), np.uint8)
        first = store.picture(image)
        assert store.picture(image.copy()) == first and first.endswith(".jpg")
        for value in range(1, 6):
            store.picture(np.full((20, 30, 3), value * 40, np.uint8))
        assert len(list((store.root / "views").glob("*.jpg"))) == 3
        assert store.picture(None) is None
        runs = [store.run_dir() for _ in range(4)]
        assert [r.exists() for r in runs] == [False, False, True, True]
        assert store.export_dir().parent == store.root / "exports"
        assert store.frame("clip_frame000003", image).endswith("clip_frame000003.png")
    finally:
        import shutil

        shutil.rmtree(store.root, ignore_errors=True)


def test_image_view_is_immutable_and_records_its_cell():
    view = ImageView((10.5, 20.5), "model.6.m.0.cv2.dcnv3", highlight=2)
    with pytest.raises(FrozenInstanceError):
        view.xy = (0.0, 0.0)
    rendered = view.rendered((3, 4))
    assert rendered.cell == (3, 4) and view.cell is None and rendered.rendered((3, 4)) is rendered


def test_no_handler_returns_a_positional_list_longer_than_3():
    """Handlers answer with {component: value} dicts: no return / yield of a list or tuple of more
    than 3 values in the gradio modules (the API endpoints return pairs)."""
    import ast

    from repo_paths import ROOT

    long = []
    for path in sorted((ROOT / "viz_app").glob("*_tab.py")) + [ROOT / "viz_app" / "ui.py"]:
        tree = ast.parse(path.read_text())
        for function in ast.walk(tree):  # lists of output components (properties) are not answers
            if isinstance(function, ast.FunctionDef) and any(
                getattr(d, "id", None) == "property" for d in function.decorator_list
            ):
                function.body = []
        for node in ast.walk(tree):
            if isinstance(node, (ast.Return, ast.Yield)) and isinstance(node.value, (ast.List, ast.Tuple)):
                if len(node.value.elts) > 3 or any(isinstance(e, ast.Starred) for e in node.value.elts):
                    long.append(f"{path.name}:{node.lineno}")
            if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult) and isinstance(node.left, ast.List):
                long.append(f"{path.name}:{node.lineno} (a padded list)")
    assert long == []
