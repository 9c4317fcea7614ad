"""Model files for scripts/e2e_vision.sh: a random-weight SmolVLM-style (idefics3) projector and a copy of
SmolLM2's gguf that llama.cpp's mtmd can pair with it.

Runs in .e2e's venv (needs `gguf` and numpy, not evolve). Both outputs are deterministic: the projector's weights
come from a seeded generator, and neither file holds a timestamp, so the same seed gives the same bytes.

    e2e_vision_model.py text-model --text-model SMOLLM2.gguf --out smollm2-vision.gguf
    e2e_vision_model.py projector --width 576 --out mmproj.gguf [--seed 0]

Each also writes OUT.json: the text model's embedding width (the projector's --width) and renamed tokens, or the
projector's seed, digest and image tokens per tile.

The projector is a one-block ViT over 512 px tiles of 16 px patches whose pixel-shuffle (scale 4) and linear
projection give 64 embeddings per tile, each as wide as the text model's token embeddings. Its weights are noise:
it makes the answer depend on the image bytes, nothing more.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import gguf
import numpy as np

IMAGE_SIZE = 512
"""Tile side in pixels (SigLIP base patch16-512, as in SmolVLM-256M)."""
PATCH_SIZE = 16
SCALE_FACTOR = 4
"""Pixel-shuffle factor: (512 / 16 / 4)^2 = 64 embeddings per tile."""
WIDTH = 64
"""Width of the (tiny) vision transformer; SmolVLM's is 768, but random weights need no capacity."""
HEADS = 4
FFN = 256
BLOCKS = 1
EMBED_STD = 0.3
"""Spread of the projected image embeddings; SmolLM2's token embeddings have a std of ~0.14, so the image weighs
on the answer."""
TOKENS_PER_TILE = (IMAGE_SIZE // PATCH_SIZE // SCALE_FACTOR) ** 2

IMAGE_MARKERS = ("<fake_token_around_image>", "<global-img>")
"""Tokens mtmd's idefics3 path looks up in the vocabulary; without them every image request fails in decode."""

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n' }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
"""SmolLM2's ChatML, but a message's content may also be a list of parts (mtmd turns image parts into text
parts holding its media marker)."""


def tensor_name(kind: gguf.MODEL_TENSOR, suffix: str, block: int | None = None) -> str:
    """gguf's own spelling of a projector tensor's name (`v.blk.0.attn_q.weight` ...)."""
    base = gguf.TENSOR_NAMES[kind]
    return f"{base.format(bid=block) if block is not None else base}.{suffix}"


def projector_tensors(seed: int, out_width: int) -> dict[str, np.ndarray[Any, np.dtype[np.float32]]]:
    """The projector's weights, numpy shapes in gguf's (reversed) order, drawn from `seed`."""
    rng = np.random.default_rng(seed)

    def normal(*shape: int, std: float) -> np.ndarray[Any, np.dtype[np.float32]]:
        return (rng.standard_normal(shape, dtype=np.float32) * np.float32(std)).astype(np.float32)

    def ones(n: int) -> np.ndarray[Any, np.dtype[np.float32]]:
        return np.ones(n, dtype=np.float32)

    def zeros(n: int) -> np.ndarray[Any, np.dtype[np.float32]]:
        return np.zeros(n, dtype=np.float32)

    t = gguf.MODEL_TENSOR
    n_patches = (IMAGE_SIZE // PATCH_SIZE) ** 2
    fan_in = 3 * PATCH_SIZE * PATCH_SIZE
    tensors = {
        tensor_name(t.V_ENC_EMBD_PATCH, "weight"): normal(WIDTH, 3, PATCH_SIZE, PATCH_SIZE, std=fan_in**-0.5),
        tensor_name(t.V_ENC_EMBD_PATCH, "bias"): zeros(WIDTH),
        tensor_name(t.V_ENC_EMBD_POS, "weight"): normal(n_patches, WIDTH, std=0.02),
    }
    for block in range(BLOCKS):
        for kind in (t.V_ENC_ATTN_Q, t.V_ENC_ATTN_K, t.V_ENC_ATTN_V, t.V_ENC_ATTN_O):
            tensors[tensor_name(kind, "weight", block)] = normal(WIDTH, WIDTH, std=0.02)
            tensors[tensor_name(kind, "bias", block)] = zeros(WIDTH)
        for kind in (t.V_ENC_INPUT_NORM, t.V_ENC_POST_ATTN_NORM):
            tensors[tensor_name(kind, "weight", block)] = ones(WIDTH)
            tensors[tensor_name(kind, "bias", block)] = zeros(WIDTH)
        tensors[tensor_name(t.V_ENC_FFN_UP, "weight", block)] = normal(FFN, WIDTH, std=0.02)
        tensors[tensor_name(t.V_ENC_FFN_UP, "bias", block)] = zeros(FFN)
        tensors[tensor_name(t.V_ENC_FFN_DOWN, "weight", block)] = normal(WIDTH, FFN, std=0.02)
        tensors[tensor_name(t.V_ENC_FFN_DOWN, "bias", block)] = zeros(WIDTH)
    tensors[tensor_name(t.V_POST_NORM, "weight")] = ones(WIDTH)
    tensors[tensor_name(t.V_POST_NORM, "bias")] = zeros(WIDTH)
    merged = WIDTH * SCALE_FACTOR * SCALE_FACTOR
    tensors[tensor_name(t.V_MMPROJ_FC, "weight")] = normal(out_width, merged, std=EMBED_STD * merged**-0.5)
    return tensors


def write_projector(out: Path, seed: int, width: int) -> dict[str, Any]:
    """Write the idefics3 mmproj gguf (metadata keys as llama.cpp's clip loader reads them), `width` wide."""
    writer = gguf.GGUFWriter(out, arch="clip")
    writer.add_type(gguf.GGUFType.MMPROJ)
    writer.add_name(f"random SmolVLM-style projector, seed {seed}")
    writer.add_description("random weights for a wire test of evolve; meaningless as a vision model")
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_clip_has_vision_encoder(True)
    writer.add_clip_projector_type(gguf.VisionProjectorType.IDEFICS3)
    writer.add_vision_projection_dim(width)
    writer.add_vision_image_size(IMAGE_SIZE)
    writer.add_vision_patch_size(PATCH_SIZE)
    writer.add_vision_embedding_length(WIDTH)
    writer.add_vision_feed_forward_length(FFN)
    writer.add_vision_block_count(BLOCKS)
    writer.add_vision_head_count(HEADS)
    writer.add_vision_attention_layernorm_eps(1e-6)
    writer.add_vision_image_mean([0.5, 0.5, 0.5])
    writer.add_vision_image_std([0.5, 0.5, 0.5])
    writer.add_vision_use_gelu(True)
    writer.add_vision_projector_scale_factor(SCALE_FACTOR)
    for name, array in projector_tensors(seed, width).items():
        writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return {"seed": seed, "width": width, "image_size": IMAGE_SIZE, "patch_size": PATCH_SIZE,
            "scale_factor": SCALE_FACTOR, "tokens_per_tile": TOKENS_PER_TILE}  # fmt: skip


def spare_control_tokens(reader: gguf.GGUFReader, count: int) -> list[int]:
    """The last `count` control tokens that are none of bos/eos/unk/pad (SmolLM2's unused code-data markers)."""
    types = reader.fields[gguf.Keys.Tokenizer.TOKEN_TYPE].contents()
    reserved = {
        int(reader.fields[key].contents())
        for key in (gguf.Keys.Tokenizer.BOS_ID, gguf.Keys.Tokenizer.EOS_ID, gguf.Keys.Tokenizer.UNK_ID,
                    gguf.Keys.Tokenizer.PAD_ID)
        if key in reader.fields
    }  # fmt: skip
    spare = [i for i, kind in enumerate(types) if kind == gguf.TokenType.CONTROL and i not in reserved]
    if len(spare) < count:
        raise SystemExit(f"only {len(spare)} spare control tokens in the text model, need {count}")
    return spare[-count:]


def write_text_model(text_model: Path, out: Path) -> dict[str, Any]:
    """Copy the text gguf with a parts-aware chat template and two spare control tokens renamed to mtmd's
    image markers; tensors are copied byte for byte. Returns the embedding width and the renamed tokens."""
    reader = gguf.GGUFReader(text_model)
    arch = reader.fields[gguf.Keys.General.ARCHITECTURE].contents()
    tokens = list(reader.fields[gguf.Keys.Tokenizer.LIST].contents())
    renamed: dict[str, str] = {}
    for token_id, marker in zip(spare_control_tokens(reader, len(IMAGE_MARKERS)), IMAGE_MARKERS, strict=True):
        renamed[f"{token_id} {tokens[token_id]}"] = marker
        tokens[token_id] = marker
    writer = gguf.GGUFWriter(out, arch=arch)
    for field in reader.fields.values():
        if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
            continue  # the writer adds these itself
        kind = field.types[0]
        sub_type = field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None
        value: Any = field.contents()
        if field.name == gguf.Keys.Tokenizer.LIST:
            value = tokens
        elif field.name == gguf.Keys.Tokenizer.CHAT_TEMPLATE:
            value = CHAT_TEMPLATE
        writer.add_key_value(field.name, value, kind, sub_type=sub_type)
    for tensor in reader.tensors:
        writer.add_tensor_info(
            tensor.name, tensor.data.shape, tensor.data.dtype, tensor.data.nbytes, tensor.tensor_type
        )
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for tensor in reader.tensors:
        writer.write_tensor_data(tensor.data, tensor_endianess=reader.endianess)
    writer.close()
    return {"embedding_length": int(reader.fields[f"{arch}.embedding_length"].contents()), "renamed_tokens": renamed}


def sha256(path: Path) -> str:
    """Hex digest of a file (to show that a seed always gives the same bytes)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def main() -> int:
    """Write one of the two files and its OUT.json, atomically; print what was written."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["text-model", "projector"])
    parser.add_argument("--text-model", type=Path, help="text-model: SmolLM2-135M-Instruct's gguf")
    parser.add_argument("--width", type=int, help="projector: the text model's embedding width")
    parser.add_argument("--seed", type=int, default=0, help="projector: seed of its weights")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    started = time.perf_counter()
    partial = args.out.with_name(args.out.name + ".partial")
    if args.what == "projector":
        if not args.width:
            parser.error("projector needs --width")
        info = write_projector(partial, args.seed, args.width)
    else:
        if not args.text_model:
            parser.error("text-model needs --text-model")
        info = write_text_model(args.text_model, partial)
    partial.replace(args.out)
    info["seconds"] = round(time.perf_counter() - started, 2)
    info["sha256"] = sha256(args.out)
    args.out.with_name(args.out.name + ".json").write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")
    print(f"{args.out.name}: {args.out.stat().st_size:,} bytes, {json.dumps(info)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
