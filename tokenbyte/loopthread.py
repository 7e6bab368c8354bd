"""An asyncio server run from a daemon thread of its own, for tests and the offline demo: the
bundled mock upstream and fake Stripe. No Django here (both also run without it)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable
from typing import Any, Protocol, Self


class Server(Protocol):
    async def start(self, host: str, port: int) -> None: ...

    async def close(self) -> None: ...


class LoopThread:
    """Starts `server` on its own event loop in a daemon thread; `call(fn)` runs fn on that loop
    (where the server's state lives) from any thread. A context manager: started on entry,
    stopped on exit."""

    thread_name = "loop-thread"

    def __init__(
        self,
        server: Server,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        new_loop: Callable[[], asyncio.AbstractEventLoop] = asyncio.new_event_loop,
    ) -> None:
        self.host = host
        self._requested_port = port
        self._serving = server
        self._new_loop = new_loop
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None

    def start(self) -> Self:
        if self._thread is not None:
            return self
        self._ready.clear()
        self._startup_error = None
        self._thread = threading.Thread(target=self._run, name=self.thread_name, daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise TimeoutError(f"{self.thread_name} did not start within 10 s")
        if self._startup_error is not None:
            self._thread.join(5)
            self._thread = None
            raise self._startup_error
        return self

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        self._thread = None
        self._loop = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _run(self) -> None:
        loop = self._new_loop()
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._serving.start(self.host, self._requested_port))
        except BaseException as exc:  # handed to start(), which raises it in the caller
            self._startup_error = exc
            self._ready.set()
            loop.close()
            return
        self._loop = loop
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(self._serving.close())
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """fn(*args, **kwargs) on the server's loop; before start() (no loop yet), here."""
        loop = self._loop
        if loop is None:
            return fn(*args, **kwargs)
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()

        def run() -> None:
            try:
                future.set_result(fn(*args, **kwargs))
            except Exception as exc:
                future.set_exception(exc)

        loop.call_soon_threadsafe(run)
        return future.result(timeout=10)
