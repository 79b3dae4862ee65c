"""Kept students (`tracking.save_student`), `harness export` and the library API, on real studies (tiny model, real
MLflow store, real lm-eval, real Optuna): the exported folder, loaded by plain transformers in a fresh process
and scored by plain lm-eval with the c' stored beside it, reproduces what the trial scored."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import PARITY, ROOT, write_suite
from mlflow.tracking import MlflowClient

import harness
from harness import keep, stores, tracking
from harness.contexts import Context
from harness.spec import load_suite

# A fresh interpreter: plain transformers loads OUT/, plain lm-eval scores the task's test split with the
# arguments stored in OUT/student_context.json. Prints the score.
SCORE = """
import json, sys
import lm_eval
from lm_eval.models.huggingface import HFLM
from lm_eval.tasks import TaskManager
from transformers import AutoModelForCausalLM, AutoTokenizer

out, tasks = sys.argv[1], sys.argv[2]
model = AutoModelForCausalLM.from_pretrained(out)
tok = AutoTokenizer.from_pretrained(out)
ctx = json.load(open(f"{out}/student_context.json"))
res = lm_eval.simple_evaluate(
    model=HFLM(pretrained=model, tokenizer=tok, batch_size=16), tasks=[ctx["task"]],
    task_manager=TaskManager(include_path=tasks, include_defaults=False), bootstrap_iters=0, **ctx["lm_eval"],
)
print("SCORE", res["results"][ctx["task"]]["acc,none"])
"""


def _cli(env: dict, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "harness.cli", *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=600
    )


def _fresh_score(env: dict, out: Path) -> float:
    proc = subprocess.run(
        [sys.executable, "-c", SCORE, str(out), str(PARITY)],
        capture_output=True,
        text=True,
        env=env,
        cwd=PARITY,  # the task's data files are named relative to its folder
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return float(next(line for line in proc.stdout.splitlines() if line.startswith("SCORE")).split()[1])


def _runs(suite) -> tuple[MlflowClient, list, list]:
    tracking.use_store(stores.tracking_uri(suite))  # MLflow reads a run's logged models through the global URI
    client = MlflowClient()
    exp = client.get_experiment_by_name(tracking.experiment_name(suite))
    runs = client.search_runs([exp.experiment_id])
    kind = lambda k: [r for r in runs if r.data.tags.get("harness.kind") == k]  # noqa: E731
    return client, kind("trial"), kind("seed")


@pytest.mark.slow
def test_best_student_is_registered_with_its_context(cli_smoke):
    """save_student: best (the default): the validation-best configuration's first seed is logged with the
    transformers flavour and registered under `<suite>-student`, alias `best`, with c' and the metrics."""
    assert cli_smoke["returncode"] == 0, cli_smoke["log"]
    suite = load_suite(cli_smoke["suite"])
    client, trials, seeds = _runs(suite)
    best = max(trials, key=lambda r: r.data.metrics["validation_gap_closure"])
    version = client.get_model_version_by_alias(keep.registered_name(suite), keep.ALIAS)
    assert version.tags["harness.trial_run_id"] == best.info.run_id
    first = next(
        r for r in seeds if r.data.tags["mlflow.parentRunId"] == best.info.run_id and r.data.tags["harness.seed"] == "0"
    )
    assert version.run_id == first.info.run_id and version.source == f"models:/{first.data.tags[keep.MODEL_TAG]}"
    model = client.get_logged_model(first.data.tags[keep.MODEL_TAG])
    assert {m.key: m.value for m in model.metrics}["test_student_score"] == first.data.metrics["test_student_score"]
    context = json.loads(Path(client.download_artifacts(first.info.run_id, "student/student_context.json")).read_text())
    assert context["context"] == best.data.params["context"] and context["prompt_template"].count("{prompt}") == 1
    # every seed run keeps its c'; a logged model only where a configuration was the best so far when it finished
    # (first seed only); the spool is emptied
    promoted, top = set(), -math.inf
    for r in sorted(trials, key=lambda r: r.info.end_time):
        if r.data.metrics["validation_gap_closure"] > top:
            promoted.add(r.info.run_id)
            top = r.data.metrics["validation_gap_closure"]
    for r in seeds:
        assert [a.path for a in client.list_artifacts(r.info.run_id, "student")] == ["student/student_context.json"]
        first_of_promoted = r.data.tags["harness.seed"] == "0" and r.data.tags["mlflow.parentRunId"] in promoted
        assert (keep.MODEL_TAG in r.data.tags) == first_of_promoted
    assert list((stores.work_dir(suite) / "students").iterdir()) == []


@pytest.mark.slow
def test_export_of_the_best_reproduces_its_score_in_a_fresh_process(cli_smoke, tmp_path):
    suite = load_suite(cli_smoke["suite"])
    out = tmp_path / "student"
    proc = _cli(cli_smoke["env"], cli_smoke["tmp"], "export", str(cli_smoke["suite"]), str(out))
    assert proc.returncode == 0, proc.stderr
    assert "from its logged model" in proc.stdout and proc.stderr == "", proc.stderr
    context = json.loads((out / "student_context.json").read_text())
    client, trials, _ = _runs(suite)
    best = max(trials, key=lambda r: r.data.metrics["validation_gap_closure"])
    assert context["trial"]["configuration"] == best.info.run_name  # chosen on validation
    trained = client.get_run(context["trial"]["run_id"]).data.metrics["test_student_score"]
    assert _fresh_score(cli_smoke["env"], out) == trained


@pytest.mark.slow
def test_export_after_the_work_folder_moved(cli_smoke, tmp_path):
    """MLflow records artifact locations as absolute paths; with the work folder moved, export finds the logged
    model and the run's artifacts at the same place under the suite's new work_dir."""
    suite = load_suite(cli_smoke["suite"])
    old = stores.work_dir(suite)
    shutil.copytree(old, tmp_path / ".harness")
    moved = write_suite(tmp_path)  # same suite, work_dir = tmp_path/.harness
    old.rename(old.with_name("away"))
    try:
        proc = _cli(cli_smoke["env"], tmp_path, "export", str(moved), str(tmp_path / "student"))
    finally:
        old.with_name("away").rename(old)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "student" / "model.safetensors").is_file() and "from its logged model" in proc.stdout


@pytest.mark.slow
def test_a_truncated_student_context_is_one_line_exit_2(cli_smoke, tmp_path):
    """A kept `student_context.json` cut short on disk (a copy of the smoke study's work folder, the original
    moved away so export reads the copy): one line naming the damaged file and what to do, no JSONDecodeError."""
    old = stores.work_dir(load_suite(cli_smoke["suite"]))
    shutil.copytree(old, tmp_path / ".harness")
    damaged = sorted((tmp_path / ".harness" / "mlartifacts").rglob(keep.CONTEXT_FILE))
    assert damaged
    for f in damaged:
        f.write_text(f.read_text()[:40])
    moved = write_suite(tmp_path)
    old.rename(old.with_name("away"))
    try:
        proc = _cli(cli_smoke["env"], tmp_path, "export", str(moved), str(tmp_path / "student"))
    finally:
        old.with_name("away").rename(old)
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1, proc.stderr
    assert proc.stderr.startswith("error: ") and "is damaged" in proc.stderr and "--trial" in proc.stderr
    assert any(str(f) in proc.stderr for f in damaged) and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_a_student_not_kept_is_one_line_exit_2(cli_smoke, tmp_path):
    suite = load_suite(cli_smoke["suite"])
    _, trials, seeds = _runs(suite)
    logged = {r.data.tags["mlflow.parentRunId"] for r in seeds if keep.MODEL_TAG in r.data.tags}
    # the smoke grid runs its better configuration first (fixed grid order), so the other was never the best
    other = next(r for r in trials if r.info.run_id not in logged).data.tags["optuna.trial_number"]
    for args, message in (
        (["--trial", other], "is a full fine-tune whose weights were not kept"),
        (["--trial", "9"], "no trial 9 (trials: 0, 1)"),
    ):
        proc = _cli(cli_smoke["env"], cli_smoke["tmp"], "export", str(cli_smoke["suite"]), str(tmp_path / "x"), *args)
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr
        assert len(proc.stderr.splitlines()) == 1 and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_library_run_and_lora_adapter_export(tmp_path):
    """`harness.run` returns the trials as a DataFrame; a LoRA study with save_student: adapter keeps each seed's
    adapter; `harness.load_student` and `harness export` rebuild the student from it, and a fresh process scores
    what the trial scored, prompted with c' = the instruction and one demonstration."""
    path = write_suite(
        tmp_path,
        name="lora",
        axes={
            "targets": [{"name": "greedy"}],
            "contexts": [{"name": "fewer_demos", "k": 1}],
            "losses": [{"name": "forward_kl"}],
        },
        hyperparameters={"learning_rate": 1.0e-2, "epochs": 1, "batch_size": 4, "train_inputs": 8, "lora_rank": 4},
        sweep={"sampler": "grid", "n_trials": 1, "seeds": 1},
        tracking={"save_student": "adapter"},
    )
    df = harness.run(path)
    assert list(df["trial"]) == [0] and list(df["state"]) == ["COMPLETE"]
    assert df.loc[0, "context"] == "fewer_demos(k=1)" and df.loc[0, "hp.lora_rank"] == 4
    suite = load_suite(path)
    client, trials, seeds = _runs(suite)
    assert df.loc[0, "run_id"] == trials[0].info.run_id
    assert df.loc[0, "test_student_score"] == trials[0].data.metrics["test_student_score"]
    kept = {a.path for a in client.list_artifacts(seeds[0].info.run_id, "student/adapter")}
    assert {"student/adapter/adapter_config.json", "student/adapter/adapter_model.safetensors"} <= kept
    assert client.search_registered_models() == []  # adapter mode registers nothing

    model, tok, ctx = harness.load_student(path)
    assert (ctx.system, ctx.n_demos) == (suite.context.instruction, 1) and ctx.messages is not None
    assert "adapter" not in type(model).__name__.lower()

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    out = tmp_path / "student"
    proc = _cli(env, tmp_path, "export", str(path), str(out))
    assert proc.returncode == 0 and "adapter merged into the base model" in proc.stdout, proc.stderr
    assert (out / "adapter" / "adapter_config.json").is_file() and (out / "model.safetensors").is_file()
    assert _fresh_score(env, out) == seeds[0].data.metrics["test_student_score"]


def test_student_context_reproduces_the_trained_prompts(tiny, parity):
    """The template (and the chat messages) render, for every item, the very string the task renders with c'."""
    docs = parity.split("validation", None, 0).docs[:6]
    for ctx, label in ((Context("Answer E if even.", 2), "fewer_demos(k=2)"), (Context(None, 0), "empty")):
        card = keep.describe(parity, tiny.tokenizer, docs, ctx, label)
        again = keep.StudentContext.from_json(card.to_json())
        assert again == card and card.lm_eval["num_fewshot"] == ctx.n_demos
        for doc in docs:
            text = str(parity.task.doc_to_text(doc))
            assert card.prompt(text) == parity.render(doc, ctx, tiny.tokenizer)
            chat = [*(card.messages or []), {"role": "user", "content": text}]
            assert tiny.tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True) == card.prompt(
                text
            )


def test_braces_in_the_context_survive_the_template(tiny, parity):
    docs = parity.split("validation", None, 0).docs[:2]
    ctx = Context("Reply as {E} or {O}: {{parity}}", 1)
    card = keep.describe(parity, tiny.tokenizer, docs, ctx, "instruction")
    assert card.prompt("Number 7").count("{E} or {O}: {{parity}}") == 1


def test_export_refuses_a_non_empty_out_unless_forced(tmp_path, capsys):
    """A non-empty OUT is refused before anything is loaded (one line naming it and --force, exit 2) and the
    user's file is untouched; with --force export goes on (here to 'no trials recorded': nothing ran)."""
    from harness import cli

    suite = write_suite(tmp_path)
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    assert cli.main(["export", str(suite), str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: OUT ") and str(out) in err and "--force" in err, err
    assert (out / "notes.txt").read_text() == "keep me"
    (tmp_path / "a-file").write_text("x")
    assert cli.main(["export", str(suite), str(tmp_path / "a-file")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    assert cli.main(["export", str(suite), str(out), "--force"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no trials recorded" in err, err
