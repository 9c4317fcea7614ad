"""Show what a text-only endpoint answers to a chat request holding an image_url part (status and body), so the
message evolve matches can be checked against a real server. Usage: e2e_image_probe.py BASE_URL IMAGE."""

from __future__ import annotations

import base64
import sys
from pathlib import Path

import httpx


def main() -> int:
    """Send one small request with an image part; print the HTTP status and the start of the body."""
    base, image = sys.argv[1], Path(sys.argv[2])
    data = base64.b64encode(image.read_bytes()).decode("ascii")
    mime = "image/png" if image.suffix.lower() == ".png" else "image/jpeg"
    body = {
        "model": "smollm2",
        "max_tokens": 8,
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is in this image?"},
                    {"type": "image_url", "image_url": {"url": f"data:{mime};base64,{data}"}},
                ],
            }
        ],
    }
    response = httpx.post(
        f"{base.rstrip('/')}/chat/completions", json=body, headers={"Authorization": "Bearer x"}, timeout=120
    )
    print(f"HTTP {response.status_code} {response.headers.get('content-type', '')}")
    print(response.text[:1000])
    return 0 if response.status_code >= 400 else 1


if __name__ == "__main__":
    sys.exit(main())
