"""An OpenAI-compatible fake LLM server for tests and the benchmark (raw asyncio HTTP/1.1, loopback only).

    from evolve.fakeserver import Config, serve_in_thread

    with serve_in_thread(Config(latency=0.05)) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="x")
        server.add_fault("429", count=2, retry_after=0)
        server.stats(); server.log(); server.reset()

Or in its own process: ``python -m evolve.fakeserver --port 0 --port-file PATH --latency 0.2``.
"""

from evolve.fakeserver.app import FAULT_KINDS, App, Config, Fault
from evolve.fakeserver.content import messages_sha256, stable_fraction, stable_hash
from evolve.fakeserver.runner import FakeServer, ServerHandle, ThreadedServer, serve_in_thread

__all__ = [
    "FAULT_KINDS",
    "App",
    "Config",
    "FakeServer",
    "Fault",
    "ServerHandle",
    "ThreadedServer",
    "messages_sha256",
    "serve_in_thread",
    "stable_fraction",
    "stable_hash",
]
