"""`make run` starts Ray with token authentication for the dashboard and the Jobs API."""

from __future__ import annotations

from deployments.serve_launch import ray_environment


def test_make_run_turns_ray_token_auth_on() -> None:
    env = ray_environment({"PATH": "/usr/bin"})
    assert env["RAY_AUTH_MODE"] == "token"
    assert env["PATH"] == "/usr/bin"


def test_an_explicit_choice_is_kept() -> None:
    assert ray_environment({"RAY_AUTH_MODE": "disabled"})["RAY_AUTH_MODE"] == "disabled"
