"""The command line: help texts, config precedence, init, export, validate on the shared seeds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from evolve.cli import app
from evolve.config import build_config
from evolve.errors import UsageError
from evolve.fakeserver import ThreadedServer
from evolve.records import load_samples
from tests.test_run import SEEDS, SHARED_SEEDS, evolve, lines

COMMANDS = ("run", "eliminate", "stats", "validate", "export", "merge", "init")


def test_every_command_has_help() -> None:
    top = CliRunner().invoke(app, ["--help"])
    assert top.exit_code == 0
    for command in COMMANDS:
        assert command in top.output
        result = CliRunner().invoke(app, [command, "--help"])
        assert result.exit_code == 0 and "Usage" in result.output and len(result.output) > 200, command


def test_precedence_flag_env_config_default(tmp_path: Path) -> None:
    config = tmp_path / "evolve.toml"
    config.write_text('model = "from-file"\nconcurrency = 8\nrounds = 5\n[judge]\nmodel = "judge-from-file"\n')
    env = {"EVOLVE_CONCURRENCY": "16", "EVOLVE_ROUNDS": "4", "OPENAI_BASE_URL": "http://127.0.0.1:9/v1"}
    merged = build_config({"rounds": 2, "model": None}, config, env)
    assert merged.rounds == 2  # flag beats env and file
    assert merged.concurrency == 16  # env beats file
    assert merged.model == "from-file"  # file beats default
    assert merged.judge_model == "judge-from-file"
    assert merged.base_url == "http://127.0.0.1:9/v1"
    assert merged.temperature == 1.0  # default
    assert build_config({}, None, {}).model == "gpt-4o-mini"


def test_bad_config_is_one_line(tmp_path: Path) -> None:
    config = tmp_path / "evolve.toml"
    config.write_text("modle = 'typo'\n")
    with pytest.raises(UsageError, match="unknown setting 'modle'"):
        build_config({}, config, {})
    with pytest.raises(UsageError, match="--concurrency"):
        build_config({"concurrency": 0}, None, {})
    with pytest.raises(UsageError, match="--weights"):
        build_config({"weights": "perceptual=1,bogus=2"}, None, {})
    result = CliRunner().invoke(app, ["run", str(SEEDS), "--config", str(config)])
    assert result.exit_code == 2 and "unknown setting" in result.output and "Traceback" not in result.output


def test_init_writes_config_and_prompts(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["init", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "evolve.toml").exists() and (tmp_path / "prompts" / "judge.j2").exists()
    build_config({}, tmp_path / "evolve.toml", {})  # the starter config is valid as written
    again = CliRunner().invoke(app, ["init", str(tmp_path)])
    assert again.exit_code == 2 and "--force" in again.output


def test_export_round_trips(server: ThreadedServer, tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert evolve(server, str(SEEDS), "--rounds", "1", "--out", str(run), "--images", "skip").exit_code == 0
    final = list(load_samples(run / "final.jsonl"))
    for fmt in ("llava", "sharegpt", "mmevol"):
        target = tmp_path / f"{fmt}.jsonl"
        result = CliRunner().invoke(app, ["export", str(run), "--to", fmt, "--out", str(target)])
        assert result.exit_code == 0, result.output
        back = list(load_samples(target))
        assert [[(q.question, q.answer) for q in s.qa] for s in back] == [
            [(q.question, q.answer) for q in s.qa] for s in final
        ]
        assert [s.image for s in back] == [s.image for s in final]
    first = lines(tmp_path / "llava.jsonl")[0]
    assert first["conversations"][0]["value"].startswith("<image>\n")
    share = lines(tmp_path / "sharegpt.jsonl")[0]
    assert share["images"] == [final[0].image] and share["messages"][0]["content"].startswith("<image>")
    array = tmp_path / "llava.json"
    result = CliRunner().invoke(app, ["export", str(run), "--to", "llava", "--json-array", "--min-score", "7",
                                      "--out", str(array)])  # fmt: skip
    assert result.exit_code == 0
    records = json.loads(array.read_text())
    assert 0 < len(records) <= len(final)


@pytest.mark.skipif(not SHARED_SEEDS.exists(), reason="shared/data is not beside the checkout")
def test_validate_shared_demo_seeds() -> None:
    result = CliRunner().invoke(app, ["validate", str(SHARED_SEEDS)])
    assert result.exit_code == 2  # the images are not shipped
    assert "1,612 loaded (1,612 mmevol; 9,878 Q&A items), 0 rejected" in result.output
    assert "1,612 missing" in result.output
    clean = CliRunner().invoke(app, ["validate", str(SHARED_SEEDS), "--no-images"])
    assert clean.exit_code == 0


def test_validate_demo_seeds_with_images() -> None:
    result = CliRunner().invoke(app, ["validate", str(SEEDS)])
    assert result.exit_code == 0, result.output
    assert "10 loaded" in result.output and "10 ok, 0 missing" in result.output


def test_dry_run_sends_nothing(server: ThreadedServer) -> None:
    result = CliRunner().invoke(app, ["run", str(SEEDS), "--dry-run", "--base-url", server.base_url])
    assert result.exit_code == 0, result.output
    assert "### Given Q&A&S" in result.output and "round 1" in result.output and "10 samples" in result.output
    assert server.stats()["total"] == 0


def test_batch_mode_across_cron_invocations(server: ThreadedServer, tmp_path: Path) -> None:
    out = tmp_path / "run"
    said = []
    for _ in range(3):
        result = evolve(server, str(SEEDS), "--batch", "--rounds", "1", "--out", str(out), "--images", "skip")
        assert result.exit_code == 0, result.output
        said.append(result.output)
    assert "submitted evolve round 1" in said[0]
    assert "submitted judge round 1" in said[1]
    assert len(lines(out / "final.jsonl")) == 10 and json.loads((out / "run.json").read_text())["status"] == "done"
    assert server.stats()["batches"] == 2
