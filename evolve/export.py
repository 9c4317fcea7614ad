"""`evolve export`: a run's records as training files — LLaVA, ShareGPT (LLaMA-Factory), MMEvol's own
`conversations_vN` layout, or parquet with the images embedded as Hugging Face `Image` structs.

Image paths are rewritten to work from the output file's folder (`relative`), made absolute, or the images are
copied beside the output (`copy`). A relative path in a run's records starts from its seed file's folder (or
the run's --image-root); run.json lists both. Records are streamed: memory does not grow with the run, and
`--latest-only` keeps one digest (8 bytes) per seed to pick each seed's newest surviving version.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

import orjson

from evolve.errors import RecordError, UsageError
from evolve.idset import CompactIdSet, OffsetIndex
from evolve.images import is_remote
from evolve.operators import shard_of
from evolve.records import QAS, Loaded, Rejected, Sample, iter_raw, open_lines, parse_record
from evolve.runfolder import RunFolder, write_atomic
from evolve.sources import read_run_seeds
from evolve.sources.imagestore import image_extension
from evolve.sources.tables import read_json_object

TARGETS = ("llava", "sharegpt", "mmevol", "parquet")
IMAGE_PATHS = ("relative", "absolute", "copy")
ImagePaths = Literal["relative", "absolute", "copy"]
STEPS_LAYOUT = "Step 1 (manipulation): description … one line per step, then 'Answer: answer'"
"""How --with-steps writes an answer that has steps (an answer without steps stays as it is)."""
DATASET_INFO = "dataset_info.json"
PARQUET_BATCH_ROWS = 256
PARQUET_BATCH_BYTES = 64 * 1024 * 1024
CAPTION_PROMPT = "<image>\nDescribe the image in detail."
"""The human turn of the caption pair in MMEvol's layout (its real prompt is not kept by the readers)."""
MAX_PROBLEMS_KEPT = 20
_IMAGE_TOKEN = re.compile(r"\s*<image>\s*")
_MEMO_LIMIT = 1 << 16


@dataclass(frozen=True)
class ExportOptions:
    """What `evolve export` writes and how."""

    to: str = "llava"
    min_score: float | None = None
    json_array: bool = False
    latest_only: bool = False
    with_steps: bool = False
    image_paths: str = "relative"
    image_root: Path | None = None


@dataclass
class ExportResult:
    """What an export wrote, and what it could not read or find."""

    count: int = 0
    unreadable: int = 0
    problems: list[str] = field(default_factory=list)
    images_missing: int = 0
    images_copied: int = 0
    extra_files: list[Path] = field(default_factory=list)

    def unreadable_line(self, item: Rejected) -> None:
        """Count a line that could not be read, keeping the first few messages."""
        self.unreadable += 1
        if len(self.problems) < MAX_PROBLEMS_KEPT:
            self.problems.append(f"{item.where}: {item.reason}")


# ---------------------------------------------------------------------------------------------- the source


@dataclass(frozen=True)
class Source:
    """The records to export and what their run says about them: seeds, --image-root, settings."""

    records: Path
    run: RunFolder | None
    seeds: list[Path]
    image_root: Path | None
    config: dict[str, Any]

    @property
    def bases(self) -> list[Path]:
        """Folders that relative image paths may start from: the seed inputs' folders, else the file's."""
        bases = [seed if seed.is_dir() else seed.parent for seed in self.seeds]
        return bases or [self.records.parent]


def open_source(source: Path, image_root: Path | None = None) -> Source:
    """A run folder (its final.jsonl) or a file of records, with the run.json that belongs to it if any."""
    run: RunFolder | None
    if source.is_dir():
        run = RunFolder(source)
        records = run.final
        if not records.exists():
            raise UsageError(f"{source}: no final.jsonl (is it a finished run folder?)")
    elif source.exists():
        records = source
        owners = (RunFolder(source.parent), RunFolder(source.parent.parent))
        run = next((folder for folder in owners if folder.run_json.is_file()), None)
    else:
        raise UsageError(f"{source}: no such file or folder")
    manifest = (run.read_run_json() if run is not None else None) or {}
    config = manifest.get("config") or {}
    root = image_root or (Path(config["image_root"]) if config.get("image_root") else None)
    seeds = [Path(p) for p in manifest.get("seeds") or []]
    return Source(records, run, seeds, root, config)


# ---------------------------------------------------------------------------------------------- reading


def iter_records(path: Path, result: ExportResult, round_number: int | None = None) -> Iterator[Sample]:
    """The samples of one of evolve's files (no line size limit), optionally of one round only."""
    for item in iter_raw(path, max_bytes=None):
        if isinstance(item, Rejected):
            if round_number is None or round_number == _FIRST_PASS:
                result.unreadable_line(item)
            continue
        where, raw = item
        if round_number not in (None, _FIRST_PASS) and isinstance(raw, dict) and raw.get("round", 0) != round_number:
            continue
        try:
            sample, _ = parse_record(raw, where)
        except RecordError as exc:
            if round_number is None or round_number == _FIRST_PASS:
                result.unreadable_line(Rejected(exc.where, exc.reason))
            continue
        yield sample


_FIRST_PASS = -1


def scored(sample: Sample, min_score: float | None) -> Sample | None:
    """The sample with only its items scored at least `min_score` (None when none is), or as it is."""
    if min_score is None:
        return sample
    items = [item for item in sample.qa if item.score is not None and item.score >= min_score]
    return sample.model_copy(update={"qa": items}) if items else None


def latest_versions(path: Path, min_score: float | None, result: ExportResult) -> Iterator[Sample]:
    """Each seed's newest version (highest round) that has items left after `min_score`, newest rounds first.

    One pass finds the rounds present, then one pass per round, newest first, yields the versions of seeds
    not yet given: memory is one 64-bit digest per seed.
    """
    rounds: set[int] = set()
    for sample in iter_records(path, result, _FIRST_PASS):
        rounds.add(sample.round)
    given = CompactIdSet()
    for number in sorted(rounds, reverse=True):
        for sample in iter_records(path, result, number):
            kept = scored(sample, min_score)
            if kept is not None and kept.seed_id not in given:
                given.add_new(kept.seed_id)
                yield kept


# ---------------------------------------------------------------------------------------------- images


class ImagePathMapper:
    """Rewrites image references for the output file's folder: relative to it, absolute, or copied beside it."""

    def __init__(self, mode: str, out_dir: Path, source: Source, copy_dir: Path | None = None) -> None:
        if mode not in IMAGE_PATHS:
            raise UsageError(f"--image-paths: expected one of {', '.join(IMAGE_PATHS)}")
        self.mode = mode
        self.out_dir = Path(os.path.abspath(out_dir))
        self.source = source
        self.copy_dir = copy_dir
        self.missing = 0
        self.copied = 0
        self._memo: dict[tuple[str, Path | None], str] = {}

    def locate(self, ref: str, base: Path | None = None) -> Path | str:
        """Where an image reference points: a URL as it is, or an absolute path."""
        if is_remote(ref):
            return ref
        path = Path(ref).expanduser()
        if path.is_absolute():
            return path
        if self.source.image_root is not None:
            return Path(os.path.abspath(self.source.image_root / path))
        candidates = [Path(os.path.abspath(b / path)) for b in ([base] if base else self.source.bases)]
        return next((c for c in candidates if c.exists()), candidates[0])

    def __call__(self, ref: str | None, base: Path | None = None) -> str | None:
        """The reference to write for `ref` (None stays None)."""
        if ref is None:
            return None
        key = (ref, base)
        if key not in self._memo:
            if len(self._memo) >= _MEMO_LIMIT:
                self._memo.clear()
            self._memo[key] = self._map(ref, base)
        return self._memo[key]

    def _map(self, ref: str, base: Path | None) -> str:
        place = self.locate(ref, base)
        if isinstance(place, str):
            return place
        if not place.is_file():
            self.missing += 1
            return str(place) if self.mode == "absolute" else os.path.relpath(place, self.out_dir)
        if self.mode == "absolute":
            return str(place)
        if self.mode == "copy" and self.copy_dir is not None:
            place = self._copy(place, self.copy_dir)
        return os.path.relpath(place, self.out_dir)

    def _copy(self, path: Path, folder: Path) -> Path:
        digest = hashlib.sha256()
        with path.open("rb") as fp:
            head = fp.read(64)
            digest.update(head)
            for chunk in iter(lambda: fp.read(1 << 20), b""):
                digest.update(chunk)
        target = folder / f"{digest.hexdigest()[:32]}{image_extension(head, path.name)}"
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
            self.copied += 1
        return target


# ---------------------------------------------------------------------------------------------- formats


def clean_text(text: str) -> str:
    """Text without `<image>` tokens (the exporter puts exactly one where the format wants it)."""
    return _IMAGE_TOKEN.sub(" ", text).strip() if "<image>" in text else text


def answer_text(item: QAS, with_steps: bool) -> str:
    """The answer, preceded by its solution steps (`STEPS_LAYOUT`) when `with_steps` and it has any."""
    answer = clean_text(item.answer)
    if not with_steps or not item.steps:
        return answer
    lines = []
    for number, step in enumerate(item.steps, start=1):
        how = f" ({clean_text(step.manipulation)})" if step.manipulation else ""
        lines.append(f"Step {number}{how}: {clean_text(step.description)}")
    return "\n".join([*lines, f"Answer: {answer}"])


def _pairs(sample: Sample, with_steps: bool) -> list[tuple[str, str]]:
    return [(clean_text(item.question), answer_text(item, with_steps)) for item in sample.qa]


def llava_record(sample: Sample, image: str | None, with_steps: bool) -> dict[str, Any]:
    """A LLaVA training record: `<image>\\n` opens the first human turn when there is an image."""
    turns: list[dict[str, str]] = []
    for index, (question, answer) in enumerate(_pairs(sample, with_steps)):
        prefix = "<image>\n" if index == 0 and image else ""
        turns += [{"from": "human", "value": prefix + question}, {"from": "gpt", "value": answer}]
    record: dict[str, Any] = {"id": sample.id, "conversations": turns}
    if image:
        record["image"] = image
    return record


def sharegpt_record(sample: Sample, image: str | None, with_steps: bool) -> dict[str, Any]:
    """A ShareGPT record as LLaMA-Factory reads it: user/assistant `messages`, one `<image>` per image."""
    messages: list[dict[str, str]] = []
    for index, (question, answer) in enumerate(_pairs(sample, with_steps)):
        prefix = "<image>" if index == 0 and image else ""
        messages += [{"role": "user", "content": prefix + question}, {"role": "assistant", "content": answer}]
    return {"id": sample.id, "messages": messages, "images": [image] if image else []}


def _items(items: list[QAS], with_score: bool) -> list[dict[str, Any]]:
    out = []
    for item in items:
        data = item.core()
        if with_score and item.score is not None:
            data["score"] = int(item.score) if float(item.score).is_integer() else item.score
        out.append(data)
    return out


def mmevol_record(seed: Sample, versions: list[list[QAS]], image: str | None) -> dict[str, Any]:
    """MMEvol's layout (mmevol.md §1): `conversations_v0` the seed's items, `conversations_vK` round K's
    kept items with their score (or [] when none survived), and the seed's id, image, caption and boxes."""
    record: dict[str, Any] = {
        "id": seed.meta.get("source_id", seed.id),
        "hash_id": seed.id,
        "image": image,
        "conversations_v0": _items(seed.qa, with_score=False),
    }
    for number, items in enumerate(versions, start=1):
        record[f"conversations_v{number}"] = _items(items, with_score=True)
    caption = [{"from": "human", "value": CAPTION_PROMPT}, {"from": "gpt", "value": seed.caption}]
    record["caption"] = caption if seed.caption else []
    record["det"] = [{"label": box.label, "bbox": list(box.bbox)} for box in seed.objects]
    for key, value in seed.meta.items():
        if key not in record and key not in ("source_id", "extra_images"):
            record[key] = value
    return record


# ---------------------------------------------------------------------------------------------- writers


class JsonWriter:
    """JSONL, or one JSON array, to a file (written under a temporary name, renamed when complete) or stdout."""

    def __init__(self, out_file: Path | None, json_array: bool) -> None:
        self.out_file = out_file
        self.json_array = json_array
        self.count = 0
        self._tmp = out_file.with_name(out_file.name + ".tmp") if out_file else None
        self._fp: IO[bytes] = self._tmp.open("wb") if self._tmp else sys.stdout.buffer

    def write(self, record: dict[str, Any]) -> None:
        """Write one record."""
        text = orjson.dumps(record)
        if self.json_array:
            text = (b",\n" if self.count else b"[\n") + text
        else:
            text += b"\n"
        self._fp.write(text)
        self.count += 1

    def close(self, ok: bool) -> None:
        """Finish the file (rename it into place) or, after an error, remove the partial one."""
        if self.json_array and ok:
            self._fp.write(b"\n]\n" if self.count else b"[]\n")
        if self._tmp is None or self.out_file is None:
            self._fp.flush()
            return
        self._fp.close()
        if ok:
            os.replace(self._tmp, self.out_file)
        else:
            self._tmp.unlink(missing_ok=True)


class ParquetWriter:
    """Parquet rows `id`, `image` (an `Image` struct with the bytes) and LLaVA `conversations`, with the
    Hugging Face features in the schema so that `datasets` gives PIL images; written in bounded batches."""

    def __init__(self, out_file: Path) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        self._pa = pa
        turn = pa.struct([("from", pa.string()), ("value", pa.string())])
        image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
        text = {"dtype": "string", "_type": "Value"}
        features = {"id": text, "image": {"_type": "Image"}, "conversations": [{"from": text, "value": text}]}
        metadata = {b"huggingface": json.dumps({"info": {"features": features}}).encode()}
        self.schema = pa.schema([("id", pa.string()), ("image", image), ("conversations", pa.list_(turn))], metadata)
        self.out_file = out_file
        self.count = 0
        self._tmp = out_file.with_name(out_file.name + ".tmp")
        self._writer = pq.ParquetWriter(self._tmp, self.schema)
        self._rows: list[dict[str, Any]] = []
        self._bytes = 0

    def write(self, record: dict[str, Any], image_bytes: bytes | None, image_name: str | None) -> None:
        """Add one LLaVA record with its image's bytes (None: no image)."""
        image = {"bytes": image_bytes, "path": image_name} if image_bytes is not None else None
        self._rows.append({"id": record["id"], "image": image, "conversations": record["conversations"]})
        self._bytes += len(image_bytes or b"")
        self.count += 1
        if len(self._rows) >= PARQUET_BATCH_ROWS or self._bytes >= PARQUET_BATCH_BYTES:
            self._flush()

    def _flush(self) -> None:
        if self._rows:
            self._writer.write_table(self._pa.Table.from_pylist(self._rows, schema=self.schema))
        self._rows, self._bytes = [], 0

    def close(self, ok: bool) -> None:
        """Finish the file (rename it into place) or, after an error, remove the partial one."""
        if ok:
            self._flush()
        self._writer.close()
        if ok:
            os.replace(self._tmp, self.out_file)
        else:
            self._tmp.unlink(missing_ok=True)


def llama_factory_entry(out_file: Path) -> dict[str, Any]:
    """The dataset_info.json entry LLaMA-Factory needs for a ShareGPT export."""
    return {
        "file_name": out_file.name,
        "formatting": "sharegpt",
        "columns": {"messages": "messages", "images": "images"},
        "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"},
    }


def write_dataset_info(out_file: Path) -> Path:
    """Add (or replace) the export's entry, named after the file, in dataset_info.json beside it."""
    info = out_file.parent / DATASET_INFO
    entries = read_json_object(info) if info.exists() else {}
    entries[out_file.stem] = llama_factory_entry(out_file)
    write_atomic(info, json.dumps(entries, indent=2, ensure_ascii=False) + "\n")
    return info


# ---------------------------------------------------------------------------------------------- export


def export_records(source_path: Path, out_file: Path | None, options: ExportOptions) -> ExportResult:
    """Write the records of a run folder or file in the `options.to` layout; returns what was written."""
    if options.to not in TARGETS:
        raise UsageError(f"--to: expected one of {', '.join(TARGETS)}")
    if out_file is None and (options.to == "parquet" or options.image_paths == "copy"):
        raise UsageError(f"{'--to parquet' if options.to == 'parquet' else '--image-paths copy'} needs --out FILE")
    if options.to == "sharegpt" and out_file is not None and out_file.name == DATASET_INFO:
        raise UsageError(f"--out: {DATASET_INFO} is the name of LLaMA-Factory's index; pick another name")
    source = open_source(source_path, options.image_root)
    out_dir = out_file.parent if out_file is not None else Path.cwd()
    if out_file is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
    copy_dir = out_dir / f"{out_file.stem}_images" if out_file is not None and options.image_paths == "copy" else None
    mapper = ImagePathMapper(options.image_paths, out_dir, source, copy_dir)
    result = ExportResult()
    if options.to == "parquet":
        assert out_file is not None
        _write_parquet(source, out_file, options, mapper, result)
    else:
        _write_json(source, out_file, options, mapper, result)
    if options.to == "sharegpt" and out_file is not None:
        result.extra_files.append(write_dataset_info(out_file))
    if copy_dir is not None and mapper.copied:
        result.extra_files.append(copy_dir)
    result.images_missing, result.images_copied = mapper.missing, mapper.copied
    return result


def _samples(source: Source, options: ExportOptions, result: ExportResult) -> Iterator[Sample]:
    if options.latest_only:
        yield from latest_versions(source.records, options.min_score, result)
        return
    for sample in iter_records(source.records, result):
        kept = scored(sample, options.min_score)
        if kept is not None:
            yield kept


def _write_json(
    source: Source, out_file: Path | None, options: ExportOptions, mapper: ImagePathMapper, result: ExportResult
) -> None:
    writer = JsonWriter(out_file, options.json_array)
    ok = False
    try:
        if options.to == "mmevol":
            for record in _mmevol_records(source, options, mapper, result):
                writer.write(record)
        else:
            convert = llava_record if options.to == "llava" else sharegpt_record
            for sample in _samples(source, options, result):
                writer.write(convert(sample, mapper(sample.image), options.with_steps))
        ok = True
    finally:
        writer.close(ok)
    result.count = writer.count


def _write_parquet(
    source: Source, out_file: Path, options: ExportOptions, mapper: ImagePathMapper, result: ExportResult
) -> None:
    writer = ParquetWriter(out_file)
    ok = False
    try:
        for sample in _samples(source, options, result):
            data: bytes | None = None
            name: str | None = None
            if sample.image:
                place = mapper.locate(sample.image)
                if isinstance(place, Path) and place.is_file():
                    data, name = place.read_bytes(), place.name
                elif isinstance(place, Path):
                    mapper.missing += 1
            writer.write(llava_record(sample, name if data is not None else None, options.with_steps), data, name)
        ok = True
    finally:
        writer.close(ok)
    result.count = writer.count


# ---------------------------------------------------------------------------------------------- --to mmevol


def _mmevol_records(
    source: Source, options: ExportOptions, mapper: ImagePathMapper, result: ExportResult
) -> Iterator[dict[str, Any]]:
    """From a run folder: every seed (re-read through run.json) with each round's kept items; from a file:
    each record's items as `conversations_v{round}` after empty earlier versions."""
    if source.run is None or source.records != source.run.final or not source.seeds:
        for sample in _samples(source, options, result):
            versions: list[list[QAS]] = [[] for _ in range(sample.round)]
            if sample.round:
                versions[-1] = sample.qa
            seed = sample if not sample.round else sample.model_copy(update={"qa": []})
            yield mmevol_record(seed, versions, mapper(sample.image))
        return
    run = source.run
    missing = [str(p) for p in source.seeds if not p.exists()]
    if missing:
        raise UsageError(f"--to mmevol reads the run's seeds, but {', '.join(missing[:3])} is gone")
    rounds = [n for n in run.rounds_present() if n >= 1]
    indexes = {n: _kept_index(run.round(n).kept) for n in rounds}
    config = source.config
    shard = config.get("shard")
    part, parts = (int(x) for x in shard.split("/")) if shard else (0, 1)
    seeds = read_run_seeds(source.seeds, config, run.images)
    for item in seeds:
        if not isinstance(item, Loaded) or (parts > 1 and shard_of(item.sample.seed_id, parts) != part):
            continue
        seed = item.sample
        versions = []
        for number in rounds:
            kept = _kept_version(run.round(number).kept, indexes[number], seed.seed_id)
            kept = scored(kept, options.min_score) if kept is not None else None
            versions.append(kept.qa if kept is not None else [])
        image = mapper(seed.image, None if item.stored_image else item.base)
        yield mmevol_record(seed, versions, image)


def _kept_index(path: Path) -> OffsetIndex:
    """Offsets of a kept.jsonl's lines by seed id."""

    def pairs() -> Iterator[tuple[str, int]]:
        if not path.exists():
            return
        with open_lines(path) as fp:
            offset = 0
            for line in fp:
                with contextlib.suppress(orjson.JSONDecodeError, AttributeError, TypeError):
                    yield str(orjson.loads(line).get("seed_id")), offset
                offset += len(line)

    return OffsetIndex(pairs())


def _kept_version(path: Path, index: OffsetIndex, seed_id: str) -> Sample | None:
    offsets = index.offsets(seed_id)
    if not offsets:
        return None
    with path.open("rb") as fp:
        for offset in offsets:
            fp.seek(offset)
            sample = Sample.model_validate_json(fp.readline())
            if sample.seed_id == seed_id:
                return sample
    return None
