"""Unit tests of the demo job handlers, called directly with a stand-in job context.

No database is involved: these check what each handler computes, writes and reports.
"""

from __future__ import annotations

import json
import logging
import re
import socket
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from jobvisor.demo import app, demo_jobs, imaging, stories

JOB_TYPES = {"cartoonize", "image-generation", "scenes", "storybook", "auto-story"}


class FakeContext:
    """Records progress reports the way the worker's job context receives them."""

    def __init__(self, job_id: int = 1) -> None:
        self.job_id = job_id
        self.attempt = 1
        self.logger = logging.getLogger("test-demo")
        self.reports: list[tuple[float, str | None]] = []

    def progress(self, percent: float, step: str | None = None) -> None:
        assert 0 <= percent <= 100, percent
        self.reports.append((percent, step))


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("JOBVISOR_HOME", str(tmp_path))
    return tmp_path


def run(job_type: str, data: Any, job_id: int = 1) -> tuple[dict[str, Any], FakeContext]:
    ctx = FakeContext(job_id)
    result = app.job_types[job_type].handler(ctx, data)
    return result, ctx


def assert_progress_completes(ctx: FakeContext) -> None:
    percents = [percent for percent, _ in ctx.reports]
    assert len(percents) >= 4
    assert percents == sorted(percents), percents
    assert ctx.reports[-1] == (100, "done")
    assert all(step for _, step in ctx.reports)


def assert_json_result(result: dict[str, Any], home: Path) -> Path:
    assert json.loads(json.dumps(result)) == result
    path = Path(result["path"])
    assert path.parent == home / "demo-output"
    assert path.is_file()
    assert not list(path.parent.glob("*.partial"))
    return path


def test_registers_the_five_job_types() -> None:
    assert set(app.job_types) == JOB_TYPES
    assert (app.job_types["cartoonize"].memory, app.job_types["cartoonize"].cpu) == (
        "high",
        "high",
    )
    assert (app.job_types["image-generation"].memory, app.job_types["image-generation"].cpu) == (
        "medium",
        "high",
    )
    assert all(spec.services == () for spec in app.job_types.values())


def test_bundled_photos_load_without_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_network(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a demo photo tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    for name in imaging.PHOTOS:
        photo = imaging.load_photo(name)
        assert photo.ndim == 3
        assert photo.shape[2] == 3
        assert photo.dtype == np.uint8


def test_cartoonize_writes_reduced_palette_png(home: Path) -> None:
    result, ctx = run("cartoonize", {"photo": "chelsea", "colors": 6, "max_side": 160}, job_id=7)
    path = assert_json_result(result, home)
    assert path.name == "cartoonize-7.png"
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size == (result["width"], result["height"])
        pixels = np.asarray(image.convert("RGB"))
    assert max(image.size) == 160
    assert result["photo"] == "chelsea"
    assert result["colors"] <= 6
    # The palette colours plus the colour of the outlines.
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) <= result["colors"] + 1
    assert_progress_completes(ctx)


def test_image_generation_is_deterministic(home: Path) -> None:
    data = {"prompt": "a castle in the clouds", "seed": 3, "width": 96, "height": 64}
    first, ctx = run("image-generation", data, job_id=1)
    second, _ = run("image-generation", data, job_id=2)
    other, _ = run("image-generation", {**data, "prompt": "a lighthouse"}, job_id=3)
    paths = [assert_json_result(result, home) for result in (first, second, other)]
    images = []
    for path in paths:
        with Image.open(path) as image:
            assert image.format == "PNG"
            assert image.size == (96, 64)
            images.append(np.asarray(image.convert("RGB")))
    assert np.array_equal(images[0], images[1])
    assert not np.array_equal(images[0], images[2])
    assert images[0].std() > 10, "the picture is nearly flat"
    assert_progress_completes(ctx)


def test_scenes_describes_each_scene(home: Path) -> None:
    result, ctx = run("scenes", {"prompt": "an orchestra of frogs", "scenes": 3, "seed": 1})
    path = assert_json_result(result, home)
    document = json.loads(path.read_text(encoding="utf-8"))
    assert [scene["number"] for scene in document["scenes"]] == [1, 2, 3]
    assert all(scene["description"].strip() for scene in document["scenes"])
    assert document["scenes"][0]["beat"] == "opening"
    assert document["scenes"][-1]["beat"] == "resolution"
    assert result["stats"]["words"] > 50
    assert_progress_completes(ctx)


def test_storybook_pages_fit_line_width(home: Path) -> None:
    result, ctx = run(
        "storybook", {"prompt": "a fox who collects lost keys", "pages": 3, "line_width": 40}
    )
    text = assert_json_result(result, home).read_text(encoding="utf-8")
    assert text.startswith(result["title"])
    assert re.findall(r"^Page (\d+)$", text, flags=re.MULTILINE) == ["1", "2", "3"]
    assert max(len(line) for line in text.splitlines()) <= 40
    assert_progress_completes(ctx)


def test_auto_story_keeps_the_best_draft(home: Path) -> None:
    result, ctx = run(
        "auto-story", {"prompt": "a river that flows uphill", "drafts": 3, "beats": 3}
    )
    text = assert_json_result(result, home).read_text(encoding="utf-8")
    assert 1 <= result["chosen_draft"] <= 3
    assert text.count("\n\n") >= 3
    assert "river" in text.lower()
    assert_progress_completes(ctx)


def test_story_jobs_are_deterministic(home: Path) -> None:
    data = {"prompt": "a garden on the moon", "scenes": 2, "seed": 9}
    first, _ = run("scenes", data, job_id=1)
    second, _ = run("scenes", data, job_id=2)
    assert Path(first["path"]).read_text() == Path(second["path"]).read_text()


@pytest.mark.parametrize(
    ("job_type", "data", "named"),
    [
        ("cartoonize", {"photo": "mona-lisa"}, "'mona-lisa'"),
        ("cartoonize", {}, "None"),
        ("cartoonize", {"photo": "chelsea", "colors": 1}, "colors=1"),
        ("cartoonize", {"photo": "chelsea", "edge_sigma": "wide"}, "edge_sigma='wide'"),
        ("image-generation", {"prompt": "   "}, "prompt='   '"),
        ("image-generation", {"prompt": "x", "width": 5000}, "width=5000"),
        ("scenes", {"prompt": "x", "scenes": "3"}, "scenes='3'"),
        ("storybook", {"prompt": "x", "colour": "red"}, "colour"),
        ("auto-story", {"prompt": "x", "drafts": True}, "drafts=True"),
    ],
)
def test_bad_input_raises_naming_the_value(
    home: Path, job_type: str, data: Any, named: str
) -> None:
    ctx = FakeContext()
    with pytest.raises(ValueError, match=re.escape(named)):
        app.job_types[job_type].handler(ctx, data)
    assert ctx.reports == []


def test_non_object_input_raises_type_error(home: Path) -> None:
    with pytest.raises(TypeError, match="must be a JSON object, got list"):
        run("auto-story", ["not", "an", "object"])


def test_unknown_photo_error_lists_the_choices(home: Path) -> None:
    with pytest.raises(ValueError) as raised:
        run("cartoonize", {"photo": "mona-lisa"})
    assert all(name in str(raised.value) for name in imaging.PHOTOS)


def test_break_lines_keeps_words_and_width() -> None:
    text = "the quick brown fox jumps over the lazy dog " * 5 + "supercalifragilistic"
    lines = stories.break_lines(text, 16)
    assert " ".join(lines).split() == text.split()
    assert all(len(line) <= 16 for line in lines[:-1])
    assert stories.break_lines("", 10) == []


def test_reading_stats_counts_words_and_sentences() -> None:
    stats = stories.reading_stats("The cat sat. The dog ran away!")
    assert (stats["words"], stats["sentences"]) == (7, 2)
    assert stats["flesch_reading_ease"] > 80


def test_demo_jobs_covers_types_users_and_tiers() -> None:
    rows = demo_jobs(50)
    assert len(rows) == 50
    assert {row["job_type"] for row in rows} == JOB_TYPES
    assert len({row["user_id"] for row in rows}) >= 4
    assert {row["user_type"] for row in rows} == {"free", "premium", "admin"}
    assert all(set(row) == {"job_type", "data", "user_id", "user_type"} for row in rows)
    json.dumps(rows)
    assert demo_jobs(50) == rows
    assert demo_jobs(50, seed=1) != rows


def test_demo_jobs_small_counts() -> None:
    assert sorted(row["job_type"] for row in demo_jobs(5, seed=4)) == sorted(JOB_TYPES)
    assert demo_jobs(0) == []
    with pytest.raises(ValueError, match="count=-1"):
        demo_jobs(-1)


def test_demo_job_inputs_pass_handler_checks(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Swap the expensive work out: only the input checks before it are under test here.
    class Stop(Exception):
        pass

    def stop(*args: Any, **kwargs: Any) -> None:
        raise Stop

    monkeypatch.setattr(imaging, "cartoonize", stop)
    monkeypatch.setattr(imaging, "generate_image", stop)
    monkeypatch.setattr(stories, "build_world", stop)
    for row in demo_jobs(30, seed=2):
        with pytest.raises(Stop):
            app.job_types[row["job_type"]].handler(FakeContext(), row["data"])
