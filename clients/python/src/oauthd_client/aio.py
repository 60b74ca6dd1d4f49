"""An asyncio variant: the same calls, awaited (each runs the synchronous client in a worker
thread, so an event loop is never blocked)."""

from __future__ import annotations

import asyncio
import functools
from typing import Any

from .client import Client


class _Async:
    def __init__(self, sync: Any):
        self._sync = sync

    def __getattr__(self, name: str) -> Any:
        target = getattr(self._sync, name)
        if not callable(target):
            return _Async(target)

        @functools.wraps(target)
        async def call(*args: Any, **kwargs: Any) -> Any:
            return await asyncio.to_thread(target, *args, **kwargs)

        return call


class AsyncClient:
    """`await AsyncClient(url, key).states.create("app:2fa", secret="123456")`."""

    def __init__(self, base_url: str, api_key: str, **options: Any):
        self._client = Client(base_url, api_key, **options)
        self.states = _Async(self._client.states)
        self.connections = _Async(self._client.connections)
        self.connect = _Async(self._client.connect)
        self.device = _Async(self._client.device)
        self.proxy = _Async(self._client.proxy)
