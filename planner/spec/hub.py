"""Hugging Face hub lookups that answer within seconds: the local cache first, the network once.

``transformers``' own lookup retries an unreachable hub for 25-50 s before it fails. Here every
lookup reads the local cache first (``local_files_only=True``); only on a miss is the hub's
host (or the configured proxy) probed, once per process, with a short TCP connect. When it
cannot be reached (or ``HF_HUB_OFFLINE``/``TRANSFORMERS_OFFLINE`` is set) the lookup fails at
once with one line saying so.
"""

from __future__ import annotations

import os
import socket
import threading
from functools import lru_cache
from typing import Callable, TypeVar
from urllib.parse import urlparse

from planner.errors import PlannerError

HUB_PROBE_TIMEOUT_S = 3.0  # one TCP connect to the hub (or proxy); a reachable host answers in well under 1 s
DEFAULT_ENDPOINT = "https://huggingface.co"
_TRUE = ("1", "true", "yes", "on")

T = TypeVar("T")


def hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT


def offline_by_env() -> str | None:
    """The variable that switches the hub off (``HF_HUB_OFFLINE=1``), or None."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in _TRUE:
            return f"{var}={os.environ[var]}"
    return None


def _probe_target() -> tuple[str, int]:
    """Host and port a request to the hub connects to first: the proxy when one is set."""
    endpoint = urlparse(hub_endpoint())
    for var in (
        ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")
        if endpoint.scheme == "https"
        else ("HTTP_PROXY", "http_proxy")
    ):
        if os.environ.get(var):
            proxy = urlparse(os.environ[var] if "://" in os.environ[var] else f"http://{os.environ[var]}")
            return proxy.hostname or "", proxy.port or 80
    return endpoint.hostname or "", endpoint.port or (443 if endpoint.scheme == "https" else 80)


@lru_cache(maxsize=1)
def hub_unreachable() -> str | None:
    """Why the hub cannot be reached (checked once per process), or None when it answers."""
    env = offline_by_env()
    if env:
        return env
    host, port = _probe_target()
    outcome: list[str | None] = []

    def probe():  # in a thread: name resolution ignores socket timeouts
        try:
            with socket.create_connection((host, port), timeout=HUB_PROBE_TIMEOUT_S):
                outcome.append(None)
        except OSError as exc:
            outcome.append(f"{host}:{port}: {exc.strerror or exc}")

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(HUB_PROBE_TIMEOUT_S + 0.5)
    return outcome[0] if outcome else f"{host}:{port}: no answer within {HUB_PROBE_TIMEOUT_S:g} s"


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def from_hub(load: Callable[..., T], model_id: str, *, flag: str = "--model", network: bool = True) -> T:
    """``load(model_id, local_files_only=...)`` from the local cache, else (``network``) from the hub.

    Raises a one-line PlannerError at once when the cache misses and the hub cannot be reached
    (or ``network`` is False); errors of the online lookup itself propagate to the caller.
    """
    try:
        return load(model_id, local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - a cache miss has several exception types
        cache_miss = first_line(exc)
    if not network:
        raise PlannerError(f"{flag} {model_id!r} must be in the local Hugging Face cache, but it is not ({cache_miss})")
    why = hub_unreachable()
    if why is not None:
        raise PlannerError(
            f"{flag} hub id must be in the local Hugging Face cache or the hub must be reachable, but "
            f"{model_id!r} is not cached and {hub_endpoint()} cannot be reached ({why}); "
            f"give a local model directory, or run once with network"
        )
    return load(model_id, local_files_only=False)
