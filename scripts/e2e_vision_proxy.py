"""A recording proxy on 127.0.0.1 between `evolve run` and the llama.cpp server, for scripts/e2e_vision.sh.

It forwards every request unchanged and writes one JSON line per chat call: the image parts evolve put on the
wire (URL scheme and media type, decoded size, `detail`), the text parts, the HTTP status, the seconds taken and
the server's token usage. Usage: e2e_vision_proxy.py --upstream http://127.0.0.1:P --port Q --log wire.jsonl
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

FORWARDED_HEADERS = ("Content-Type", "Authorization", "Accept")


def image_part_summary(part: dict[str, Any]) -> dict[str, Any]:
    """What one image_url part carries: its URL's kind, the decoded byte count of a data URL, and its detail."""
    image_url = part.get("image_url")
    url = image_url.get("url", "") if isinstance(image_url, dict) else str(image_url or "")
    detail = image_url.get("detail") if isinstance(image_url, dict) else None
    summary: dict[str, Any] = {"kind": url.split(",", 1)[0][:40] if url.startswith("data:") else url[:40]}
    summary["detail"] = detail
    if url.startswith("data:") and ";base64," in url:
        try:
            summary["bytes"] = len(base64.b64decode(url.split(",", 1)[1], validate=True))
        except (binascii.Error, ValueError):
            summary["bytes"] = None
    return summary


def request_summary(body: bytes) -> dict[str, Any]:
    """The image and text parts of a chat completions body (all messages)."""
    try:
        payload = json.loads(body)
    except ValueError:
        return {"unreadable_body": True}
    images: list[dict[str, Any]] = []
    text_chars = 0
    for message in payload.get("messages") or []:
        content = message.get("content")
        if isinstance(content, str):
            text_chars += len(content)
            continue
        for part in content or []:
            if part.get("type") == "image_url":
                images.append(image_part_summary(part))
            elif part.get("type") == "text":
                text_chars += len(part.get("text") or "")
    return {"images": images, "text_chars": text_chars, "max_tokens": payload.get("max_tokens")}


def response_summary(status: int, body: bytes) -> dict[str, Any]:
    """Token usage and finish reason of an answer, or the start of an error body."""
    if status != 200:
        return {"error": body[:300].decode("utf-8", "replace")}
    try:
        payload = json.loads(body)
        usage = payload.get("usage") or {}
        return {
            "prompt_tokens": usage.get("prompt_tokens"),
            "completion_tokens": usage.get("completion_tokens"),
            "finish_reason": (payload.get("choices") or [{}])[0].get("finish_reason"),
        }
    except (ValueError, AttributeError, IndexError):
        return {"error": "unreadable answer body"}


def make_app(upstream: str, log_path: Path) -> web.Application:
    """The proxy application: every path is forwarded to `upstream`; chat calls are logged."""
    app = web.Application(client_max_size=64 * 1024 * 1024)

    async def open_session(app: web.Application) -> Any:
        app["session"] = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None))
        yield
        await app["session"].close()

    async def forward(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        headers = {name: request.headers[name] for name in FORWARDED_HEADERS if name in request.headers}
        started = time.monotonic()
        session: aiohttp.ClientSession = request.app["session"]
        async with session.request(request.method, upstream + request.path_qs, data=body, headers=headers) as reply:
            answer = await reply.read()
            status = reply.status
            content_type = reply.headers.get("Content-Type", "application/json")
        if request.method == "POST" and request.path.endswith("/chat/completions"):
            record = {"t": time.time(), "path": request.path, "status": status}
            record["seconds"] = round(time.monotonic() - started, 3)
            record.update(request_summary(body))
            record.update(response_summary(status, answer))
            with log_path.open("a", encoding="utf-8") as log:
                log.write(json.dumps(record, sort_keys=True) + "\n")
        return web.Response(body=answer, status=status, headers={"Content-Type": content_type})

    app.cleanup_ctx.append(open_session)
    app.router.add_route("*", "/{tail:.*}", forward)
    return app


def main() -> None:
    """Serve the proxy on 127.0.0.1 until SIGINT/SIGTERM."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--upstream", required=True, help="server root, e.g. http://127.0.0.1:8000")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--log", type=Path, required=True, help="JSONL file, one line per chat call")
    args = parser.parse_args()
    app = make_app(args.upstream.rstrip("/"), args.log)
    web.run_app(app, host="127.0.0.1", port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
