"""Row 12: what the prompt layout saves — the share of prompt tokens a prefix-caching provider serves from its
cache, and US$ per 1,000 kept items at gpt-4o-mini prices, the cached layout vs image first, in one run.

The test server emulates OpenAI's prompt caching (prefixes of at least 1,024 tokens, in 128-token steps, each
run against a fresh server: an empty provider cache). Each demo seed gets a picture of its own, so every
request carries an image, as a real multimodal run does.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from bench.common import DEMO_SEEDS, SCRATCH, WORKLOAD, evolve_cmd, fake_server, run
from bench.rows import Outcome, Row, Sizes, _fail

PRICES = ("0.15", "0.075", "0.60")
"""gpt-4o-mini's US$ per million tokens: input, cached input, output."""
LAYOUTS = ("cached", "image-first")


def image_seeds(count: int) -> Path:
    """`count` demo seeds (repeated with new ids when there are fewer), each with an image of its own (a small
    drawn PNG: as in a real data set, no two samples share a picture)."""
    path = SCRATCH / "data" / f"cache-seeds-{count}.jsonl"
    if path.exists():
        return path
    from PIL import Image, ImageDraw

    from bench.workload import ensure_demo_seeds

    ensure_demo_seeds()
    folder = path.with_suffix("")
    folder.mkdir(parents=True, exist_ok=True)
    records = [json.loads(line) for line in DEMO_SEEDS.read_text(encoding="utf-8").splitlines() if line.strip()]
    with path.with_suffix(".tmp").open("w", encoding="utf-8") as fp:
        for index in range(count):
            image = folder / f"{index}.png"
            if not image.exists():
                picture = Image.new("RGB", (96, 64), ((index * 37) % 256, (index * 91) % 256, (index * 53) % 256))
                ImageDraw.Draw(picture).text((4, 24), str(index), fill=(255, 255, 255))
                picture.save(image)
            record = dict(records[index % len(records)])
            record["hash_id"] = f"{index}_{record.get('hash_id') or record.get('id')}"
            record["image"] = str(image)
            fp.write(json.dumps(record) + "\n")
    path.with_suffix(".tmp").replace(path)
    return path


def run_layout(seeds: Path, layout: str) -> dict[str, Any]:
    """One round with images against a fresh test server; run.json's usage, cost and kept items."""
    out = SCRATCH / "runs" / f"cache-{layout}"
    shutil.rmtree(out, ignore_errors=True)
    with fake_server(0.0, tag=f"cache-{layout}", prefix_cache=True) as server:
        cmd = [*evolve_cmd(), "run", str(seeds), "--out", str(out), "--rounds", "1", "--prompt-layout", layout,
               "--base-url", f"http://127.0.0.1:{server.port}/v1", "--api-key", "x", "--model", "m",
               "--concurrency", "64", "--price-in", PRICES[0], "--price-cached-in", PRICES[1],
               "--price-out", PRICES[2], "--quiet"]  # fmt: skip
        proc = run(cmd, timeout=1800, log=SCRATCH / "logs" / f"cache-{layout}.log")
    manifest = json.loads((out / "run.json").read_text()) if (out / "run.json").exists() else {}
    shutil.rmtree(out, ignore_errors=True)
    if proc.rc not in (0, 3) or not manifest:
        raise RuntimeError(f"evolve run --prompt-layout {layout} exited {proc.rc}: {proc.stderr[-400:]}")
    usage = manifest["usage"]
    kept = sum(int(r["kept_items"]) for r in manifest["rounds"].values())
    return {
        "prompt_tokens": usage["prompt_tokens"],
        "cached_tokens": usage["cached_tokens"],
        "completion_tokens": usage["completion_tokens"],
        "requests": usage["requests"],
        "kept_items": kept,
        "cost_usd": manifest["cost_usd"],
        "wall": proc.wall,
    }


def row12(sizes: Sizes) -> Outcome:
    """The cached layout vs image first: cached-token share (goal ≥ 0.5) and US$ per 1,000 kept items (≤ 0.85)."""
    out = Outcome()
    count = sizes.samples
    setting = f"{count:,} demo seeds with images, 1 round (evolve + judge calls), {WORKLOAD.split(' (')[0]}"
    try:
        seeds = image_seeds(count)
        found = {layout: run_layout(seeds, layout) for layout in LAYOUTS}
    except (RuntimeError, OSError, ValueError, KeyError) as exc:
        out.rows.append(_fail("12 cached prompt share", setting, repr(exc)))
        return out
    out.data["cache-layouts"] = found
    new, old = found["cached"], found["image-first"]
    share = {k: v["cached_tokens"] / v["prompt_tokens"] if v["prompt_tokens"] else 0.0 for k, v in found.items()}
    out.rows.append(
        Row(
            "12 cached prompt share (emulated provider cache)",
            setting,
            f"{share['cached']:.2f} (cached layout)",
            f"{share['image-first']:.2f} (image first)",
            share["cached"],
            "≥ 0.5",
            share["cached"] >= 0.5,
            f"{new['cached_tokens']:,} of {new['prompt_tokens']:,} prompt tokens over {new['requests']:,} requests",
        )
    )
    per_kept = {
        k: v["cost_usd"] / v["kept_items"] * 1000 if v["kept_items"] else float("inf") for k, v in found.items()
    }
    ratio = per_kept["cached"] / per_kept["image-first"] if per_kept["image-first"] else float("inf")
    out.rows.append(
        Row(
            "12 US$ per 1,000 kept items (gpt-4o-mini prices)",
            setting,
            f"${per_kept['cached']:.3f} (cached layout)",
            f"${per_kept['image-first']:.3f} (image first)",
            ratio,
            "≤ 0.85",
            ratio <= 0.85,
            f"input ${PRICES[0]}/M, cached ${PRICES[1]}/M, output ${PRICES[2]}/M; images at the test server's 85 "
            f"tokens; kept items {new['kept_items']:,} vs {old['kept_items']:,}",
        )
    )
    return out
