"""The limits' parts on their own: GCRA arithmetic (in memory and in the Redis script, which
must agree), the public-bind guard and launcher, CORS, and secrets kept out of sight."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import httpx
import pytest
import redis as sync_redis

from deployments.dependencies import build_ingress_resources
from deployments.fastapi_app import create_app
from deployments.serve_launch import resolve
from services.core.settings import Environment, LimitsSettings, RedisSettings, Settings
from services.limits.bind import PublicBindRefusedError, bind_host, check_bind, is_public
from services.limits.gcra import MemoryGcra, Quota
from services.limits.limiter import Kind, Mode, UsageLimiter
from services.migrations import upgrade as migrate
from services.resources import build_resources
from services.transcription.engine import WhisperEngine
from services.transcription.local import LocalTranscriber
from tests.servers import SHARED_REDIS

ROOT = Path(__file__).resolve().parents[2]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_gcra_allows_the_burst_then_spaces_requests() -> None:
    clock = FakeClock()
    gcra = MemoryGcra(clock)
    quota = Quota(limit=3, period_s=3.0)
    decisions = [gcra.take("u", quota, 1) for _ in range(4)]
    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert [d.remaining for d in decisions[:3]] == [2, 1, 0]
    assert decisions[3].retry_after_s == pytest.approx(1.0)
    assert decisions[2].reset_s == pytest.approx(3.0)
    clock.now += 0.99
    assert not gcra.take("u", quota, 1).allowed  # refused takes charge nothing
    clock.now += 0.01
    assert gcra.take("u", quota, 1).allowed
    assert gcra.take("other", quota, 1).allowed  # keys are independent


def test_gcra_weighted_forced_and_refunded_takes() -> None:
    clock = FakeClock()
    gcra = MemoryGcra(clock)
    quota = Quota(limit=10, period_s=10.0)  # 10 audio-seconds per 10 s
    assert gcra.take("u", quota, 6).allowed
    refused = gcra.take("u", quota, 6)
    assert (refused.allowed, refused.remaining) == (False, 4)
    assert refused.retry_after_s == pytest.approx(2.0)
    assert gcra.take("u", quota, 10, force=True).allowed  # reconciliation: debt
    in_debt = gcra.take("u", quota, 1)
    assert not in_debt.allowed
    assert in_debt.retry_after_s == pytest.approx(7.0)
    gcra.take("u", quota, -10, force=True)  # a refund
    assert gcra.take("u", quota, 4).allowed


@pytest.mark.parametrize("clock_s", [1e3 + 0.1234567, 4.6e6 + 0.987654321, 1.8e9 + 0.123456])
@pytest.mark.parametrize(("limit", "period_s"), [(1, 600.0), (7, 600.0), (3, 30.0), (10, 3.3)])
def test_a_full_burst_is_allowed_whatever_the_clock_reads(
    clock_s: float, limit: int, period_s: float
) -> None:
    """`tat + interval - period` rounds differently at each clock reading: a user's whole
    quota must pass at every one of them (it used to fail one time in four)."""
    quota = Quota(limit, period_s)
    for step in range(50):
        clock = FakeClock()
        clock.now = clock_s + step * 0.0137
        gcra = MemoryGcra(clock)
        taken = [gcra.take("u", quota, 1).allowed for _ in range(limit + 1)]
        assert taken == [True] * limit + [False], f"at {clock.now!r}"


@pytest.mark.parametrize("limit", [1, 7])
async def test_the_redis_script_allows_a_full_burst_in_a_fresh_bucket(limit: int) -> None:
    """The same on Redis's clock, in milliseconds since 1970 (about 1.8e12)."""
    keys = [f"burst-{limit}-{i}" for i in range(40)]
    client = sync_redis.Redis.from_url(SHARED_REDIS)
    client.delete(*(f"rayscribe:limits:requests:{key}" for key in keys))
    settings = LimitsSettings(requests_per_minute=limit, requests_period_s=600.0)
    limiter = UsageLimiter(settings, RedisSettings(url=SHARED_REDIS))
    try:
        for key in keys:
            taken = []
            for _ in range(limit + 1):
                decision = await limiter.take(Kind.REQUESTS, key)
                assert decision is not None
                taken.append(decision.allowed)
            assert taken == [True] * limit + [False], key
        assert limiter.mode is Mode.SHARED
    finally:
        await limiter.close()
        client.delete(*(f"rayscribe:limits:requests:{key}" for key in keys))
        client.close()


async def test_the_redis_script_decides_like_the_memory_table() -> None:
    client = sync_redis.Redis.from_url(SHARED_REDIS)
    client.delete("rayscribe:limits:requests:parity", "rayscribe:limits:audio_s:parity")
    client.close()
    settings = LimitsSettings(
        requests_per_minute=3,
        requests_period_s=30.0,
        audio_seconds_per_hour=10.0,
        audio_period_s=100.0,
    )
    limiter = UsageLimiter(settings, RedisSettings(url=SHARED_REDIS))
    memory = MemoryGcra()
    requests = Quota(3, 30.0)
    try:
        for _ in range(4):
            shared = await limiter.take(Kind.REQUESTS, "parity")
            local = memory.take("r", requests, 1)
            assert shared is not None
            assert (shared.allowed, shared.remaining) == (local.allowed, local.remaining)
            assert shared.retry_after_s == pytest.approx(local.retry_after_s, abs=0.05)
            assert shared.reset_s == pytest.approx(local.reset_s, abs=0.05)
        assert limiter.mode is Mode.SHARED
        audio = await limiter.take(Kind.AUDIO_SECONDS, "parity", 7.5)
        assert audio is not None
        assert audio.allowed
        assert audio.remaining == 2
        over = await limiter.take(Kind.AUDIO_SECONDS, "parity", 3.0)
        assert over is not None
        assert not over.allowed
        assert over.retry_after_s == pytest.approx(5.0, abs=0.05)  # 0.5 s short, 0.1 s/s
        assert await limiter.take(Kind.AUDIO_SECONDS, "parity", 20.0, force=True) is not None
    finally:
        await limiter.close()


def test_unset_limits_are_unlimited() -> None:
    limiter = UsageLimiter(LimitsSettings(), RedisSettings())
    assert not limiter.enabled
    assert asyncio.run(limiter.take(Kind.REQUESTS, "u")) is None


# -- the public-bind guard ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "public"),
    [
        ("127.0.0.1", False),
        ("::1", False),
        ("[::1]", False),
        ("localhost", False),
        ("0.0.0.0", True),
        ("::", True),
        ("10.1.2.3", True),
        ("api.example.com", True),
    ],
)
def test_what_counts_as_a_public_bind(host: str, public: bool) -> None:
    assert is_public(host) is public


def _settings(**values: Any) -> Settings:
    base = {"_env_file": None, "data_dir": Path("/srv/rayscribe")}
    if values.get("env", "dev") != "dev":
        base["database"] = {"url": "postgresql+asyncpg://rayscribe:pw@db/rayscribe"}
        base["auth"] = {"issuer": "https://sso.example.com/realms/acme", "audience": "rayscribe"}
    return Settings(**{**base, **values})


def test_the_bind_comes_from_the_environment_else_from_the_serve_config() -> None:
    config = {"http_options": {"host": "0.0.0.0", "port": 8000}}
    assert bind_host(config, _settings()) == "0.0.0.0"
    assert bind_host({}, _settings()) == "127.0.0.1"  # Serve's own default
    assert bind_host(config, _settings(server={"host": "127.0.0.1"})) == "127.0.0.1"


def test_public_bind_with_auth_off_is_refused_outside_dev_and_loud_in_dev() -> None:
    # Settings already refuse AUTH__MODE=off outside dev; the guard holds on its own too.
    uat_off = SimpleNamespace(env=Environment.UAT, auth=SimpleNamespace(mode="off"))
    with pytest.raises(PublicBindRefusedError, match="env=uat"):
        check_bind("0.0.0.0", cast(Settings, uat_off))
    warning = check_bind("0.0.0.0", _settings())
    assert warning is not None
    assert "authentication off" in warning
    assert check_bind("127.0.0.1", cast(Settings, uat_off)) is None


def test_public_bind_with_authentication_on_is_allowed() -> None:
    prod = _settings(env="prod")
    assert prod.auth.mode.value == "jwt"
    assert check_bind("0.0.0.0", prod) is None


def test_the_launcher_writes_the_decided_host_into_the_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config, host = resolve(ROOT / "serve_config.yaml", _settings(server={"host": "0.0.0.0"}))
    assert host == "0.0.0.0"
    assert config["http_options"]["host"] == "0.0.0.0"
    assert config["applications"][0]["import_path"] == "deployments.app:build_app"
    assert "!!!!" in capsys.readouterr().err  # the dev warning is loud


def test_the_launcher_refuses_to_start_a_public_unauthenticated_bind_in_prod(
    tmp_path: Path,
) -> None:
    env = {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": str(ROOT),
        "RAYSCRIBE_ENV": "prod",
        "RAYSCRIBE_DATA_DIR": str(tmp_path),
        "RAYSCRIBE_DATABASE__URL": "postgresql+asyncpg://rayscribe:s3cret-pw@db/rayscribe",
        "RAYSCRIBE_SERVER__HOST": "0.0.0.0",
        "RAYSCRIBE_AUTH__MODE": "off",
    }
    config = str(ROOT / "serve_config.yaml")
    launch = [sys.executable, "-m", "deployments.serve_launch", "run", config]
    refused = subprocess.run(launch, env=env, cwd=tmp_path, capture_output=True, text=True)
    assert refused.returncode == 1
    assert "refusing to start" in refused.stderr
    assert "s3cret-pw" not in refused.stderr
    env["RAYSCRIBE_SERVER__HOST"] = "127.0.0.1"
    env["RAYSCRIBE_AUTH__MODE"] = "jwt"
    env["RAYSCRIBE_AUTH__ISSUER"] = "https://sso.example.com/realms/acme"
    env["RAYSCRIBE_AUTH__AUDIENCE"] = "rayscribe"
    check = [*launch[:3], "check", config]
    allowed = subprocess.run(check, env=env, cwd=tmp_path, capture_output=True, text=True)
    assert (allowed.returncode, allowed.stdout.strip()) == (0, "127.0.0.1"), allowed.stderr


# -- secrets and CORS ----------------------------------------------------------------------


def test_urls_with_passwords_never_show_in_repr_or_dumps() -> None:
    settings = _settings(
        env="prod",
        database={"url": "postgresql+asyncpg://rayscribe:db-s3cret@db/rayscribe"},
        redis={"url": "redis://:redis-s3cret@cache:6379/0"},
    )
    for shown in (repr(settings), str(settings), settings.model_dump_json(), repr(settings.redis)):
        assert "db-s3cret" not in shown
        assert "redis-s3cret" not in shown
    assert settings.database_url.endswith(":db-s3cret@db/rayscribe")  # still usable


@pytest.fixture
def app_client(settings: Settings, tiny_engine: WhisperEngine) -> Any:
    async def make(**overrides: Any) -> httpx.AsyncClient:
        custom = settings.model_copy(update=overrides)
        await asyncio.to_thread(migrate, custom.database_url)  # Alembic runs its own loop
        shared = build_resources(custom, nudge=lambda: None)
        resources = build_ingress_resources(shared, LocalTranscriber(tiny_engine))
        transport = httpx.ASGITransport(app=create_app(resources))
        return httpx.AsyncClient(transport=transport, base_url="http://test")

    return make


async def test_readyz_and_logs_never_show_the_redis_password(
    app_client: Any, settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    dead = "redis://:redis-s3cret@127.0.0.1:1/0"
    client = await app_client(
        redis=RedisSettings(url=dead, timeout_s=0.2),
        limits=settings.limits.model_copy(update={"requests_per_minute": 100}),
    )
    async with client:
        ready = await client.get("/readyz")
        models = await client.get("/v1/models")
    assert ready.status_code == 200
    assert ready.json()["rate_limits"] == "per_process"
    assert ready.json()["redis"] == "down"
    assert models.status_code == 200
    captured = capsys.readouterr()
    for text in (ready.text, models.text, captured.out, captured.err):
        assert "redis-s3cret" not in text


async def test_cors_allows_the_configured_origin_only_and_never_credentials(
    app_client: Any, settings: Settings
) -> None:
    server = settings.server.model_copy(update={"cors_origins": ["https://app.example"]})
    async with await app_client(server=server) as client:
        preflight = {
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization",
        }
        allowed = await client.options(
            "/v1/audio/transcriptions", headers={"Origin": "https://app.example", **preflight}
        )
        other = await client.options(
            "/v1/audio/transcriptions", headers={"Origin": "https://evil.example", **preflight}
        )
        simple = await client.get("/v1/models", headers={"Origin": "https://app.example"})
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == "https://app.example"
    assert "access-control-allow-credentials" not in allowed.headers
    assert "access-control-allow-origin" not in other.headers
    assert "RateLimit-Reset" in simple.headers["access-control-expose-headers"]
    assert simple.headers["access-control-allow-origin"] == "https://app.example"


async def test_no_cors_headers_by_default(app_client: Any) -> None:
    async with await app_client() as client:
        answer = await client.get("/v1/models", headers={"Origin": "https://app.example"})
    assert "access-control-allow-origin" not in answer.headers


async def test_a_rate_limited_upload_is_refused_before_its_body_is_read(
    app_client: Any, settings: Settings
) -> None:
    """The request rate is checked from the headers: a client over it learns so at once,
    and the service reads none of the (here 6.4 MB) upload it would throw away."""
    sent: list[int] = []

    async def body() -> Any:
        for _ in range(100):
            sent.append(1)
            yield b"x" * 65536

    limits = settings.limits.model_copy(
        update={"requests_per_minute": 1, "requests_period_s": 600.0}
    )
    async with await app_client(limits=limits) as client:
        first = await client.get("/v1/models")
        refused = await client.post(
            "/v1/audio/transcriptions",
            content=body(),
            headers={"Content-Type": "multipart/form-data; boundary=x"},
        )
        probe = await client.get("/healthz")
    assert first.status_code == 200
    assert first.headers["RateLimit-Remaining"] == "0"
    assert refused.status_code == 429, refused.text
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert int(refused.headers["Retry-After"]) >= 1
    assert len(sent) <= 1  # at most the chunk the transport hands over with the headers
    assert probe.status_code == 200
