"""Settings from profiles, environment variables and overrides, and job type registration."""

from __future__ import annotations

import pytest

from jobvisor import App, Settings
from jobvisor.config import CPU_LEVELS_PERCENT, MEMORY_LEVELS_MB
from jobvisor.errors import ConfigError

# MAX_CONCURRENT_JOBS, MAX_JOBS_PER_USER and JOB_PROCESSING_INTERVAL (ms) of each profile.
PROFILE_VALUES = {
    "development": (2, 3, 10_000),
    "staging": (3, 5, 15_000),
    "production-small": (5, 5, 20_000),
    "production-medium": (10, 10, 15_000),
    "production-large": (20, 15, 10_000),
}


def limits(settings: Settings) -> tuple[int, int, int]:
    return settings.max_concurrent_jobs, settings.max_jobs_per_user, settings.poll_interval_ms


# Profiles and defaults


@pytest.mark.parametrize("profile", list(PROFILE_VALUES))
def test_profile_values(profile):
    settings = Settings.load(profile, environ={})

    assert limits(settings) == PROFILE_VALUES[profile]
    assert settings.profile == profile


@pytest.mark.parametrize("profile", list(PROFILE_VALUES))
def test_profile_from_environment(profile):
    settings = Settings.load(environ={"JOBVISOR_PROFILE": profile})

    assert limits(settings) == PROFILE_VALUES[profile]


def test_defaults_without_profile():
    settings = Settings.load(environ={})

    assert settings.profile is None
    assert settings.max_concurrent_jobs == 3
    assert settings.max_jobs_per_user == 5
    assert settings.job_memory_limit_mb == 512
    assert settings.job_cpu_limit_percent == 80
    assert settings.max_payload_bytes == 1_048_576


def test_requirement_levels():
    assert MEMORY_LEVELS_MB == {"low": 50, "medium": 100, "high": 200}
    assert CPU_LEVELS_PERCENT == {"low": 10, "medium": 20, "high": 30}


# Precedence: profile < environment < explicit overrides


def test_environment_overrides_profile():
    settings = Settings.load(
        environ={"JOBVISOR_PROFILE": "staging", "MAX_CONCURRENT_JOBS": "7"}
    )

    assert settings.max_concurrent_jobs == 7
    assert settings.max_jobs_per_user == 5
    assert settings.poll_interval_ms == 15_000


def test_override_beats_environment():
    settings = Settings.load(
        "production-large",
        environ={"MAX_CONCURRENT_JOBS": "7", "MAX_JOBS_PER_USER": "4"},
        max_concurrent_jobs=9,
    )

    assert settings.max_concurrent_jobs == 9
    assert settings.max_jobs_per_user == 4
    assert settings.poll_interval_ms == 10_000


def test_profile_argument_beats_environment():
    settings = Settings.load("development", environ={"JOBVISOR_PROFILE": "production-large"})

    assert settings.profile == "development"
    assert limits(settings) == PROFILE_VALUES["development"]


def test_none_override_keeps_environment():
    settings = Settings.load(environ={"MAX_JOBS_PER_USER": "8"}, max_jobs_per_user=None)

    assert settings.max_jobs_per_user == 8


def test_environment_variables_read():
    settings = Settings.load(
        environ={
            "MAX_CONCURRENT_JOBS": " 12 ",
            "MAX_JOBS_PER_USER": "6",
            "JOB_PROCESSING_INTERVAL": "2500",
            "JOB_MEMORY_LIMIT": "1024",
            "JOB_CPU_LIMIT": "60",
        }
    )

    assert settings.max_concurrent_jobs == 12
    assert settings.max_jobs_per_user == 6
    assert settings.poll_interval_ms == 2500
    assert settings.poll_interval_s == 2.5
    assert settings.job_memory_limit_mb == 1024
    assert settings.job_cpu_limit_percent == 60


def test_empty_environment_value_ignored():
    settings = Settings.load("staging", environ={"MAX_CONCURRENT_JOBS": "  "})

    assert settings.max_concurrent_jobs == 3


def test_process_environment_used_by_default(monkeypatch):
    monkeypatch.setenv("MAX_JOBS_PER_USER", "11")
    monkeypatch.delenv("JOBVISOR_PROFILE", raising=False)

    settings = Settings.load()

    assert settings.max_jobs_per_user == 11


# Invalid values

@pytest.mark.parametrize(
    ("variable", "raw"),
    [
        ("MAX_CONCURRENT_JOBS", "abc"),
        ("MAX_CONCURRENT_JOBS", "2.5"),
        ("MAX_CONCURRENT_JOBS", "0"),
        ("MAX_CONCURRENT_JOBS", "-1"),
        ("MAX_JOBS_PER_USER", "five"),
        ("JOB_PROCESSING_INTERVAL", "10s"),
        ("JOB_MEMORY_LIMIT", "512MB"),
        ("JOB_CPU_LIMIT", "80%"),
    ],
)
def test_invalid_environment_value(variable, raw):
    with pytest.raises(ConfigError) as caught:
        Settings.load(environ={variable: raw})

    message = str(caught.value)
    assert variable in message
    assert repr(raw) in message


@pytest.mark.parametrize("value", [0, -1])
def test_non_positive_value_rejected(value):
    with pytest.raises(ConfigError) as caught:
        Settings.load(environ={"MAX_CONCURRENT_JOBS": str(value)})

    assert f"MAX_CONCURRENT_JOBS='{value}'" in str(caught.value)
    assert "greater than 0" in str(caught.value)


@pytest.mark.parametrize("value", [0, -5, "3", True])
def test_invalid_override_rejected(value):
    with pytest.raises(ConfigError) as caught:
        Settings.load(environ={}, max_jobs_per_user=value)

    message = str(caught.value)
    assert "max_jobs_per_user" in message
    assert repr(value) in message


@pytest.mark.parametrize("raw", ["nan", "inf"])
def test_non_finite_environment_value(raw):
    with pytest.raises(ConfigError):
        Settings.load(environ={"JOBVISOR_LEASE_SECONDS": raw})


def test_fractional_override_rejected():
    with pytest.raises(ConfigError):
        Settings.load(environ={}, max_concurrent_jobs=2.5)


@pytest.mark.parametrize("source", ["argument", "environment"])
def test_unknown_profile_lists_choices(source):
    with pytest.raises(ConfigError) as caught:
        if source == "argument":
            Settings.load("huge", environ={})
        else:
            Settings.load(environ={"JOBVISOR_PROFILE": "huge"})

    message = str(caught.value)
    assert "'huge'" in message
    for profile in PROFILE_VALUES:
        assert profile in message


# Job type registration


@pytest.fixture
def app():
    # The DSN is parsed but never used, because registration needs no database.
    return App("host=127.0.0.1 dbname=unused", settings=Settings.load(environ={}))


def noop(ctx, data):
    return None


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"memory": "huge"}, "memory='huge'"),
        ({"cpu": "max"}, "cpu='max'"),
        ({"concurrency": 0}, "concurrency=0"),
        ({"concurrency": 1.5}, "concurrency=1.5"),
        ({"max_retries": -1}, "max_retries=-1"),
        ({"timeout": 0}, "timeout=0"),
        ({"timeout": float("inf")}, "timeout=inf"),
    ],
    ids=[
        "memory",
        "cpu",
        "concurrency-0",
        "concurrency-float",
        "retries",
        "timeout-0",
        "timeout-inf",
    ],
)
def test_job_option_rejected(app, options, named):
    with pytest.raises(ConfigError) as caught:
        app.job("resize", **options)(noop)

    message = str(caught.value)
    assert named in message
    assert "'resize'" in message
    assert "resize" not in app.job_types


def test_memory_level_lists_choices(app):
    with pytest.raises(ConfigError) as caught:
        app.job("resize", memory="huge")

    message = str(caught.value)
    for level in MEMORY_LEVELS_MB:
        assert level in message


def test_duplicate_job_type_rejected(app):
    app.job("resize")(noop)

    with pytest.raises(ConfigError) as caught:
        app.job("resize")(noop)

    assert "'resize'" in str(caught.value)
    assert "twice" in str(caught.value)


def test_non_callable_handler_rejected(app):
    with pytest.raises(ConfigError) as caught:
        app.job("resize")("not a function")

    assert "'resize'" in str(caught.value)


def test_job_type_defaults_from_tables(app):
    app.job("storybook")(noop)
    app.job("image-generation", memory="high", cpu="medium")(noop)
    app.job("custom")(noop)

    storybook = app.job_types["storybook"]
    image = app.job_types["image-generation"]
    custom = app.job_types["custom"]
    assert (storybook.concurrency, storybook.priority) == (2, 2)
    assert (image.concurrency, image.priority) == (5, 1)
    assert (image.memory_mb, image.cpu_percent) == (200, 20)
    assert (custom.concurrency, custom.priority) == (1, 0)
    assert (custom.memory_mb, custom.cpu_percent) == (50, 10)
    assert custom.max_retries == 3
    assert custom.timeout == 600.0
