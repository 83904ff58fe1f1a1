"""A reproducible mix of demo jobs from several users on different tiers."""

from __future__ import annotations

import random
from typing import Any

from jobvisor.demo.imaging import PHOTOS

# Relative frequency of each job type in a generated workload.
TYPE_WEIGHTS: dict[str, int] = {
    "cartoonize": 25,
    "image-generation": 25,
    "scenes": 20,
    "storybook": 15,
    "auto-story": 15,
}
# Six users: three on the free tier, two premium, one admin.
USERS: list[tuple[str, str]] = [
    ("user-1", "free"),
    ("user-2", "free"),
    ("user-3", "free"),
    ("user-4", "premium"),
    ("user-5", "premium"),
    ("user-6", "admin"),
]
PROMPTS = [
    "a lighthouse on a foggy island",
    "a castle in the clouds",
    "a fox who collects lost keys",
    "the last train through the mountains",
    "a garden growing on the moon",
    "a robot learning to bake bread",
    "a river that flows uphill",
    "an orchestra of frogs",
]


def _job_data(job_type: str, rng: random.Random) -> dict[str, Any]:
    seed = rng.randrange(1_000_000)
    if job_type == "cartoonize":
        return {"photo": rng.choice(sorted(PHOTOS)), "colors": rng.choice([6, 8, 12]), "seed": seed}
    prompt = rng.choice(PROMPTS)
    if job_type == "image-generation":
        return {"prompt": prompt, "seed": seed}
    if job_type == "scenes":
        return {"prompt": prompt, "scenes": rng.randint(3, 6), "seed": seed}
    if job_type == "storybook":
        return {"prompt": prompt, "pages": rng.randint(4, 10), "seed": seed}
    if job_type == "auto-story":
        return {"prompt": prompt, "drafts": rng.randint(2, 6), "seed": seed}
    raise ValueError(
        f"unknown demo job type {job_type!r}; choose one of: {', '.join(TYPE_WEIGHTS)}"
    )


def demo_jobs(count: int, seed: int = 0) -> list[dict[str, Any]]:
    """Return ``count`` rows for ``App.enqueue_many``; equal arguments give equal rows.

    With ``count >= 5`` every job type appears at least once; the rest follow
    :data:`TYPE_WEIGHTS`. Users are drawn uniformly from :data:`USERS`.
    """
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise ValueError(f"count={count!r} is invalid; use an integer >= 0")
    rng = random.Random(seed)
    names = list(TYPE_WEIGHTS)
    guaranteed = names[:count]
    drawn = rng.choices(names, weights=list(TYPE_WEIGHTS.values()), k=count - len(guaranteed))
    types = guaranteed + drawn
    rng.shuffle(types)
    rows = []
    for job_type in types:
        user_id, user_type = rng.choice(USERS)
        rows.append(
            {
                "job_type": job_type,
                "data": _job_data(job_type, rng),
                "user_id": user_id,
                "user_type": user_type,
            }
        )
    return rows
