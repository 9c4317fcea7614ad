"""Direct image requests for scripts/e2e_vision.sh, built by evolve's own ImageEncoder, ChatRequest and ChatClient.

Against llama.cpp's multimodal server (random-weight projector) it checks the wire, not vision:
  - a request with an image costs about the projector's image tokens more prompt tokens than the same text alone;
  - at temperature 0 the answer is the same for the same image twice and differs between two images;
  - `detail` low, high and auto are all accepted (and what the server does with them);
and times the image requests. Prints the figures and writes them as JSON (--out); exits 1 if a check fails.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import math
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
from PIL import Image
from pydantic import SecretStr

from evolve.cache import NullCache
from evolve.client import ChatClient, ChatRequest, build_body
from evolve.endpoint import EndpointSettings, ImageDetail
from evolve.errors import EvolveError
from evolve.images import EncodedImage, ImageEncoder

PREFIX = "Look at the image and answer in one short sentence.\n"
"""The sample-independent text, sent before the image as evolve's cached layout does."""
QUESTION = "What is the main object in the picture, and what colour is it?"
DELIMITER_SLACK = 32
"""Text tokens mtmd adds around an image (overview and tile markers) on top of its embeddings: ~14 measured."""


@dataclass
class Call:
    """One request and what came back."""

    label: str
    image: str | None
    detail: str
    ok: bool
    seconds: float
    prompt_tokens: int = 0
    completion_tokens: int = 0
    text: str = ""
    sent_detail: str | None = None
    error: str = ""


def expected_image_tokens(width: int, height: int, tile: int, per_tile: int) -> int:
    """Image embeddings mtmd's idefics3 path makes of a width x height image: an overview tile plus a grid
    of tiles (each side rounded to whole tiles, at least one)."""
    columns = max(1, math.floor(width / tile + 0.5))
    rows = max(1, math.floor(height / tile + 0.5))
    return per_tile * (1 + columns * rows)


def data_url_size(image: EncodedImage) -> tuple[int, int]:
    """Width and height of the JPEG inside an encoded image's data URL (what the server decodes)."""
    data = base64.b64decode(image.url.split(",", 1)[1])
    with Image.open(io.BytesIO(data)) as decoded:
        return decoded.size


def sent_detail(settings: EndpointSettings, request: ChatRequest) -> str | None:
    """The `detail` evolve puts into the body of `request` (None without an image part)."""
    for message in build_body(settings, request)["messages"]:
        content = message["content"]
        if isinstance(content, list):
            for part in content:
                if part.get("type") == "image_url":
                    return str(part["image_url"].get("detail"))
    return None


class Prober:
    """Sends labelled requests through one ChatClient per detail setting, no response cache."""

    def __init__(self, base_url: str, model: str, max_tokens: int, timeout: float, system: str) -> None:
        self.system = system
        self.settings = {
            detail: EndpointSettings(
                base_url=base_url,
                api_key=SecretStr("x"),
                model=model,
                temperature=0.0,
                max_tokens=max_tokens,
                timeout=timeout,
                concurrency=1,
                max_retries=0,
                image_detail=detail,
            )
            for detail in ("low", "high", "auto")
        }
        self.clients = {detail: ChatClient(s, NullCache()) for detail, s in self.settings.items()}
        self.calls: list[Call] = []

    async def ask(self, label: str, image: tuple[str, EncodedImage] | None, detail: ImageDetail = "low") -> Call:
        """One request: the image (if any) between the prefix and the question, as evolve sends it."""
        images = [image[1]] if image else []
        request = ChatRequest(system=self.system, text=QUESTION, images=images, prefix=PREFIX)
        call = Call(label, image[0] if image else None, detail, False, 0.0)
        call.sent_detail = sent_detail(self.settings[detail], request)
        started = time.perf_counter()
        try:
            result = await self.clients[detail].chat(request)
        except EvolveError as exc:
            call.error = str(exc)
        else:
            call.ok = True
            call.prompt_tokens, call.completion_tokens, call.text = (
                result.prompt_tokens, result.completion_tokens, result.text,
            )  # fmt: skip
        call.seconds = round(time.perf_counter() - started, 3)
        self.calls.append(call)
        shown = call.text.replace("\n", " ")[:70] if call.ok else f"FAILED: {call.error}"
        print(f"  {label:<22} {call.seconds:6.2f} s  prompt {call.prompt_tokens:5d}  {shown!r}", flush=True)
        return call

    async def aclose(self) -> None:
        """Close every client."""
        for client in self.clients.values():
            await client.aclose()


def unknown_detail_answer(settings: EndpointSettings, request: ChatRequest, value: str) -> dict[str, Any]:
    """What the server answers to evolve's body with `detail` replaced by a value outside low/high/auto
    (informational: shows whether the server reads the field at all)."""
    body = build_body(settings, request)
    for part in body["messages"][-1]["content"]:
        if part.get("type") == "image_url":
            part["image_url"]["detail"] = value
    reply = httpx.post(f"{settings.base_url}/chat/completions", json=body, timeout=settings.timeout)
    return {"value": value, "status": reply.status_code, "error_names_detail": "detail" in reply.text}


async def probe(args: argparse.Namespace) -> dict[str, Any]:
    """Run every request and check the figures; returns them with a list of failed checks."""
    projector = json.loads(args.projector_info.read_text(encoding="utf-8"))
    encoder = ImageEncoder(max_side=args.image_size)
    images = [(path.name, encoder.encode(path)) for path in args.images]
    first, second = images[0], images[1]
    system = args.system.read_text(encoding="utf-8").strip() if args.system else "You are a helpful assistant."
    prober = Prober(args.base_url, args.model, args.max_tokens, args.timeout, system)
    failures: list[str] = []
    try:
        warm = await prober.ask("first (loads mtmd)", first)
        text_only = await prober.ask("text only", None)
        same = [await prober.ask(f"{first[0]} again", first) for _ in range(2)]
        others = [await prober.ask(name, (name, image)) for name, image in images[1:]]
        details = {detail: await prober.ask(f"detail={detail}", first, detail) for detail in ("high", "auto")}
    finally:
        await prober.aclose()
    request = ChatRequest(system=system, text=QUESTION, images=[first[1]], prefix=PREFIX)
    unknown = unknown_detail_answer(prober.settings["low"], request, "ultra")

    for call in prober.calls:
        if not call.ok:
            failures.append(f"{call.label}: {call.error}")
        if call.image and call.sent_detail != call.detail:
            failures.append(f"{call.label}: body carried detail={call.sent_detail}, settings asked {call.detail}")
    width, height = data_url_size(first[1])
    expected = expected_image_tokens(width, height, projector["image_size"], projector["tokens_per_tile"])
    delta = same[0].prompt_tokens - text_only.prompt_tokens
    if not expected <= delta <= expected + DELIMITER_SLACK:
        failures.append(f"prompt tokens with image - without = {delta}, expected {expected}..{expected + 32}")
    same_answers = {warm.text, *(c.text for c in same)}
    if len(same_answers) != 1:
        failures.append(f"the same image gave {len(same_answers)} different answers at temperature 0")
    changes = others[0].text != same[0].text
    if not changes:
        failures.append(f"{second[0]} and {first[0]} gave the same answer: the image does not reach the model")
    timed = [c.seconds for c in [*same, *others, *details.values()] if c.ok]
    if len(timed) < 5:
        failures.append(f"only {len(timed)} timed image requests succeeded (need 5)")
    distinct = len({c.text for c in [same[0], *others]})
    low_tokens = same[0].prompt_tokens
    return {
        "image_sent": {"name": first[0], "width": width, "height": height, "data_url_chars": len(first[1].url)},
        "prompt_tokens_text_only": text_only.prompt_tokens,
        "prompt_tokens_with_image": low_tokens,
        "image_prompt_tokens": delta,
        "projector_image_tokens": expected,
        "delimiter_tokens": delta - expected,
        "answer_changes_with_image": changes,
        "same_image_same_answer": len(same_answers) == 1,
        "distinct_answers": f"{distinct} of {1 + len(others)} images",
        "first_request_seconds": warm.seconds,
        "image_request_seconds": {
            "n": len(timed),
            "min": min(timed, default=0),
            "median": statistics.median(timed) if timed else 0,
            "max": max(timed, default=0),
        },
        "detail": {
            detail: {
                "accepted": call.ok,
                "prompt_tokens": call.prompt_tokens,
                "same_tokens_as_low": call.prompt_tokens == low_tokens,
                "same_answer_as_low": call.text == same[0].text,
            }
            for detail, call in {"low": same[0], **details}.items()
        },
        "detail_outside_low_high_auto": unknown,
        "calls": [asdict(c) for c in prober.calls],
        "failures": failures,
    }


def main() -> int:
    """Probe, print the figures, write them to --out; exit 1 on any failed check."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-url", required=True, help="the server's /v1 URL")
    parser.add_argument("--model", required=True)
    parser.add_argument("--projector-info", type=Path, required=True, help="JSON written beside the mmproj")
    parser.add_argument("--system", type=Path, help="system prompt file (evolve's prompts/system.txt)")
    parser.add_argument("--max-tokens", type=int, default=24)
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--image-size", type=int, default=512, help="longest side evolve sends (--image-size)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("images", type=Path, nargs="+", help="at least 4 different images")
    args = parser.parse_args()
    if len(args.images) < 4:
        parser.error("give at least 4 images (>= 5 timed image requests)")
    figures = asyncio.run(probe(args))
    args.out.write_text(json.dumps(figures, indent=1) + "\n", encoding="utf-8")
    shown = {k: v for k, v in figures.items() if k not in ("calls", "failures")}
    print(json.dumps(shown, indent=1))
    for failure in figures["failures"]:
        print("CHECK FAILED:", failure, file=sys.stderr)
    return 1 if figures["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
