"""The demo application: five job types that do real image and text work on the CPU.

Output files go to ``$JOBVISOR_HOME/demo-output``, named after the job type and job id, so a
retried job overwrites its own earlier output. No handler uses the network.
"""

from __future__ import annotations

import json
import random
import reprlib
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from jobvisor import App
from jobvisor.demo import imaging, stories
from jobvisor.paths import home_dir

app = App()

MAX_PROMPT_CHARS = 500
MAX_SEED = 2**32 - 1
# Sentences in a language model's training corpus, and samples drawn per kept sentence.
CORPUS_SENTENCES = 10_000
CANDIDATES_PER_SENTENCE = 48


# Input checks


def _fields(data: Any, allowed: set[str]) -> Mapping[str, Any]:
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        kind = type(data).__name__
        raise TypeError(f"input data must be a JSON object, got {kind}: {reprlib.repr(data)}")
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ValueError(
            f"unknown input keys {unknown}; allowed keys: {', '.join(sorted(allowed))}"
        )
    return data


def _integer(data: Mapping[str, Any], key: str, default: int, low: int, high: int) -> int:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{key}={value!r} is invalid; use an integer from {low} to {high}")
    return value


def _number(data: Mapping[str, Any], key: str, default: float, low: float, high: float) -> float:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise ValueError(f"{key}={value!r} is invalid; use a number from {low} to {high}")
    return float(value)


def _prompt(data: Mapping[str, Any]) -> str:
    value = data.get("prompt")
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_PROMPT_CHARS:
        raise ValueError(
            f"prompt={value!r} is invalid; "
            f"use a non-empty string of at most {MAX_PROMPT_CHARS} characters"
        )
    return value.strip()


def _photo(data: Mapping[str, Any]) -> str:
    value = data.get("photo")
    if value not in imaging.PHOTOS:
        raise ValueError(
            f"unknown photo {value!r}; choose one of: {', '.join(sorted(imaging.PHOTOS))}"
        )
    return str(value)


# Output files


def output_path(job_type: str, job_id: Any, suffix: str) -> Path:
    """``$JOBVISOR_HOME/demo-output/<job type>-<job id><suffix>``, with the folder created."""
    folder = home_dir() / "demo-output"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{job_type}-{job_id}{suffix}"


def _write_text(path: Path, text: str) -> Path:
    # Written beside the target and renamed, so readers never see a half-written file.
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text, encoding="utf-8")
    partial.replace(path)
    return path


# Image jobs


@app.job("cartoonize", memory="high", cpu="high", max_retries=3, timeout=600)
def cartoonize(ctx: Any, data: Any) -> dict[str, Any]:
    """Apply a cartoon-style filter to a bundled photo.

    The stages are bilateral smoothing, k-means colour quantization and dark outlines.
    """
    fields = _fields(data, {"photo", "colors", "max_side", "edge_sigma", "seed"})
    photo = _photo(fields)
    colors = _integer(fields, "colors", 8, 2, 32)
    max_side = _integer(fields, "max_side", 512, 64, 1024)
    edge_sigma = _number(fields, "edge_sigma", 2.0, 0.5, 5.0)
    seed = _integer(fields, "seed", 0, 0, MAX_SEED)
    started = time.perf_counter()
    image, palette_size = imaging.cartoonize(
        photo,
        colors=colors,
        max_side=max_side,
        edge_sigma=edge_sigma,
        seed=seed,
        progress=ctx.progress,
    )
    ctx.progress(95, "write PNG")
    path = imaging.write_png(image, output_path("cartoonize", ctx.job_id, ".png"))
    seconds = round(time.perf_counter() - started, 3)
    ctx.progress(100, "done")
    ctx.logger.info("cartoonized %s into %s in %.2f s", photo, path, seconds)
    height, width = image.shape[:2]
    return {
        "path": str(path),
        "photo": photo,
        "width": width,
        "height": height,
        "colors": palette_size,
        "seconds": seconds,
    }


@app.job("image-generation", memory="medium", cpu="high", max_retries=3, timeout=600)
def image_generation(ctx: Any, data: Any) -> dict[str, Any]:
    """Render a Julia set picture whose shape and palette are hashed from the prompt and seed."""
    fields = _fields(data, {"prompt", "seed", "width", "height", "max_iterations"})
    prompt = _prompt(fields)
    seed = _integer(fields, "seed", 0, 0, MAX_SEED)
    width = _integer(fields, "width", 512, 16, 1024)
    height = _integer(fields, "height", 512, 16, 1024)
    max_iterations = _integer(fields, "max_iterations", 256, 16, 2000)
    started = time.perf_counter()
    image, params = imaging.generate_image(
        prompt,
        seed=seed,
        width=width,
        height=height,
        max_iterations=max_iterations,
        progress=ctx.progress,
    )
    ctx.progress(95, "write PNG")
    path = imaging.write_png(image, output_path("image-generation", ctx.job_id, ".png"))
    seconds = round(time.perf_counter() - started, 3)
    ctx.progress(100, "done")
    ctx.logger.info("generated %s for prompt %r in %.2f s", path, prompt, seconds)
    return {
        "path": str(path),
        "width": width,
        "height": height,
        "seed": seed,
        "julia_c": [round(params.c_real, 6), round(params.c_imag, 6)],
        "seconds": seconds,
    }


# Text jobs


def _start_story(
    ctx: Any, prompt: str, seed: int, beats: int, purpose: str
) -> tuple[stories.World, random.Random, stories.MarkovModel]:
    """Plan the story world and train its language model; reports progress up to 10 %."""
    ctx.progress(5, "plan outline")
    world = stories.build_world(prompt, seed, beats)
    rng = stories.seeded_rng(prompt, seed, purpose)
    ctx.progress(10, "train language model")
    model = stories.world_model(world, rng, CORPUS_SENTENCES)
    return world, rng, model


@app.job("scenes", memory="low", cpu="medium", max_retries=3, timeout=300)
def scenes(ctx: Any, data: Any) -> dict[str, Any]:
    """Split a prompt into story scenes and describe each one; saves the scenes as JSON."""
    fields = _fields(data, {"prompt", "scenes", "seed"})
    prompt = _prompt(fields)
    count = _integer(fields, "scenes", 4, 1, 12)
    seed = _integer(fields, "seed", 0, 0, MAX_SEED)
    started = time.perf_counter()
    world, rng, model = _start_story(ctx, prompt, seed, count, "scenes")
    written: list[dict[str, Any]] = []
    used: set[str] = set()
    for index, beat in enumerate(world.beats):
        ctx.progress(20 + 65 * index / count, f"write scene {index + 1}/{count}")
        text = stories.write_passage(
            world,
            beat,
            model,
            rng,
            sentences=4,
            candidates=CANDIDATES_PER_SENTENCE,
            used_sentences=used,
        )
        written.append({"number": index + 1, "beat": beat, "description": text})
    ctx.progress(88, "reading statistics")
    stats = stories.reading_stats(" ".join(scene["description"] for scene in written))
    ctx.progress(95, "save scenes")
    document = {"title": world.title, "prompt": prompt, "scenes": written, "stats": stats}
    path = _write_text(output_path("scenes", ctx.job_id, ".json"), json.dumps(document, indent=2))
    ctx.progress(100, "done")
    return {
        "path": str(path),
        "title": world.title,
        "scenes": count,
        "beats": world.beats,
        "stats": stats,
        "seconds": round(time.perf_counter() - started, 3),
    }


@app.job("storybook", memory="medium", cpu="medium", max_retries=3, timeout=600)
def storybook(ctx: Any, data: Any) -> dict[str, Any]:
    """Write a picture-book text, one scene per page, laid out in fixed-width lines."""
    fields = _fields(data, {"prompt", "pages", "seed", "line_width"})
    prompt = _prompt(fields)
    pages = _integer(fields, "pages", 8, 2, 24)
    seed = _integer(fields, "seed", 0, 0, MAX_SEED)
    line_width = _integer(fields, "line_width", 48, 24, 120)
    started = time.perf_counter()
    world, rng, model = _start_story(ctx, prompt, seed, pages, "storybook")
    texts: list[str] = []
    used: set[str] = set()
    for index, beat in enumerate(world.beats):
        ctx.progress(15 + 60 * index / pages, f"write page {index + 1}/{pages}")
        texts.append(
            stories.write_passage(
                world,
                beat,
                model,
                rng,
                sentences=5,
                candidates=CANDIDATES_PER_SENTENCE,
                used_sentences=used,
            )
        )
    ctx.progress(80, "lay out pages")
    laid_out = [stories.break_lines(text, line_width) for text in texts]
    ctx.progress(88, "reading statistics")
    stats = stories.reading_stats(" ".join(texts))
    ctx.progress(95, "save storybook")
    rule = "-" * line_width
    body = [f"{world.title}\n{'=' * line_width}\n"]
    body += [
        f"{rule}\nPage {n}\n\n" + "\n".join(lines) + "\n"
        for n, lines in enumerate(laid_out, start=1)
    ]
    path = _write_text(output_path("storybook", ctx.job_id, ".txt"), "\n".join(body))
    ctx.progress(100, "done")
    return {
        "path": str(path),
        "title": world.title,
        "pages": pages,
        "lines": sum(map(len, laid_out)),
        "stats": stats,
        "seconds": round(time.perf_counter() - started, 3),
    }


def _draft_score(stats: Mapping[str, float | int]) -> float:
    # Favours varied vocabulary and a Flesch reading ease near 80, which the scale rates as easy.
    return 100 * float(stats["unique_word_ratio"]) - abs(float(stats["flesch_reading_ease"]) - 80)


@app.job("auto-story", memory="low", cpu="medium", max_retries=3, timeout=600)
def auto_story(ctx: Any, data: Any) -> dict[str, Any]:
    """Write several complete drafts of a short story and keep the best-scoring one."""
    fields = _fields(data, {"prompt", "drafts", "seed", "beats"})
    prompt = _prompt(fields)
    drafts = _integer(fields, "drafts", 4, 1, 16)
    beats = _integer(fields, "beats", 5, 2, 12)
    seed = _integer(fields, "seed", 0, 0, MAX_SEED)
    started = time.perf_counter()
    world, rng, model = _start_story(ctx, prompt, seed, beats, "auto-story")
    candidates = []
    for index in range(drafts):
        ctx.progress(15 + 70 * index / drafts, f"write draft {index + 1}/{drafts}")
        used: set[str] = set()
        text = "\n\n".join(
            stories.write_passage(
                world,
                beat,
                model,
                rng,
                sentences=3,
                candidates=CANDIDATES_PER_SENTENCE,
                used_sentences=used,
            )
            for beat in world.beats
        )
        stats = stories.reading_stats(text)
        candidates.append((_draft_score(stats), index, text, stats))
    ctx.progress(88, "pick best draft")
    score, chosen, text, stats = max(candidates, key=lambda c: (c[0], -c[1]))
    ctx.progress(95, "save story")
    path = _write_text(output_path("auto-story", ctx.job_id, ".txt"), f"{world.title}\n\n{text}\n")
    ctx.progress(100, "done")
    return {
        "path": str(path),
        "title": world.title,
        "drafts": drafts,
        "chosen_draft": chosen + 1,
        "score": round(score, 2),
        "stats": stats,
        "seconds": round(time.perf_counter() - started, 3),
    }
