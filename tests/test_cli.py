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
    for fmt in ("llava", "sharegpt"):
        target = tmp_path / f"{fmt}.jsonl"
        result = CliRunner().invoke(app, ["export", str(run), "--to", fmt, "--out", str(target)])
        assert result.exit_code == 0, result.output
        back = list(load_samples(target))
        assert [[(q.question, q.answer) for q in s.qa] for s in back] == [
            [(q.question, q.answer) for q in s.qa] for s in final
        ]  # image paths are rewritten to work from the output's folder:
        assert [(tmp_path / str(s.image)).resolve() for s in back] == [(SEEDS / str(s.image)).resolve() for s in final]
    mmevol = tmp_path / "mmevol.jsonl"
    assert CliRunner().invoke(app, ["export", str(run), "--to", "mmevol", "--out", str(mmevol)]).exit_code == 0
    by_seed = {r["hash_id"]: r for r in lines(mmevol)}
    assert all([q["question"] for q in by_seed[s.seed_id]["conversations_v1"]] == [q.question for q in s.qa]
               for s in final)  # fmt: skip
    first = lines(tmp_path / "llava.jsonl")[0]
    assert first["conversations"][0]["value"].startswith("<image>\n")
    share = lines(tmp_path / "sharegpt.jsonl")[0]
    assert (tmp_path / share["images"][0]).resolve() == (SEEDS / str(final[0].image)).resolve()
    assert share["messages"][0]["content"].startswith("<image>")
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
    assert "submitted 10 requests" in said[0] and "waiting" in said[0]
    assert "collected 1 batch(es): 10 answers" in said[1] and "submitted" in said[1]
    assert len(lines(out / "final.jsonl")) == 10 and json.loads((out / "run.json").read_text())["status"] == "done"
    assert server.stats()["batches"] == 2


def test_every_setting_is_a_flag_a_variable_and_a_line_of_the_file(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    from evolve.config import RunConfig

    config = tmp_path / "evolve.toml"
    config.write_text('workers = 2\nexecutor = "local"\nray_address = "auto"\n[judge]\ntemperature = 0.5\n')
    merged = build_config({}, config, {"EVOLVE_JUDGE_VOTES": "3", "EVOLVE_ITEMS_PER_CALL": "4"})
    assert (merged.workers, merged.ray_address, merged.judge_temperature) == (2, "auto", 0.5)
    assert (merged.judge_votes, merged.items_per_call) == (3, 4)
    help_text = subprocess.run([sys.executable, "-m", "evolve", "run", "--help"], capture_output=True, text=True,
                               env={**os.environ, "COLUMNS": "250"}, timeout=60).stdout  # fmt: skip
    for name in RunConfig.model_fields:
        assert "--" + name.replace("_", "-") in help_text, name


def test_a_bad_value_names_its_source(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"^EVOLVE_ROUNDS=abc: "):
        build_config({}, None, {"EVOLVE_ROUNDS": "abc"})
    with pytest.raises(UsageError, match=r"^--rounds: "):
        build_config({"rounds": 0}, None, {})
    config = tmp_path / "evolve.toml"
    config.write_text('model = "m"\n\n[judge]\nvotes = 99\n')
    with pytest.raises(UsageError, match=rf"^{config}:4: judge_votes: "):
        build_config({}, config, {})
    result = CliRunner().invoke(app, ["run", str(SEEDS)], env={"EVOLVE_ROUNDS": "abc"})
    assert result.exit_code == 2 and result.output.startswith("error: EVOLVE_ROUNDS=abc: ")


def test_conflicting_engines_are_refused_with_one_line(tmp_path: Path) -> None:
    for flags in (
        ["--batch", "--executor", "ray"],
        ["--workers", "2", "--executor", "ray"],
        ["--batch", "--workers", "2"],
    ):
        result = CliRunner().invoke(app, ["run", str(SEEDS), *flags, "--out", str(tmp_path / "x")])
        assert result.exit_code == 2 and "cannot be combined" in result.output, flags
        assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / "x").exists()


def test_workers_from_the_config_file_run_two_workers(server: ThreadedServer, tmp_path: Path) -> None:
    import subprocess
    import sys

    (tmp_path / "evolve.toml").write_text(
        f'workers = 2\nrounds = 1\nimages = "skip"\nbase_url = "{server.base_url}"\nmodel = "m"\n'
    )
    done = subprocess.run([sys.executable, "-m", "evolve", "run", str(SEEDS), "--out", "run", "--api-key", "k"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (tmp_path / "run" / "shards").iterdir()) == ["0-of-2", "1-of-2"]
    assert json.loads((tmp_path / "run" / "run.json").read_text())["mode"] == "workers"
