"""Suite validation: every problem is one line naming the file and the field, exit code 2.

The command-line view over many malformed files is tests/test_validate.py; here: the rules
themselves, the study hash, model and task resolution, and the registries behind the axes.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from helpers import ROOT, SUITES, write_suite

from harness import contexts, losses, registry, spec, targets
from harness.cli import main
from harness.spec import FAST, Choices, Range, SuiteError, load_suite


@pytest.mark.parametrize("path", sorted(SUITES.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_suites_validate(path, capsys):
    assert main(["validate", str(path)]) == 0
    assert "ok" in capsys.readouterr().out


TASK = "task: {name: parity, path: tasks/parity}\n"
BAD = [
    ("name: x\n", ["task: Field required"]),
    (
        "name: x\n" + TASK + "models: {teacher: a, studnet: b}\n",
        ["models.studnet: unknown field (known: teacher, student, device)"],
    ),
    (
        "name: x\n" + TASK + "axes: {targets: [{name: greedyy}]}\n",
        ["axes.targets.0.name: unknown target strategy 'greedyy' (known: beam, best_of, greedy,"],
    ),
    ("name: x\n" + TASK + "axes: {contexts: [{name: fewer_demos, n: 2}]}\n", ["axes.contexts.0.n: unknown parameter"]),
    # The five axis parameters that validated and then failed every trial.
    ("name: x\n" + TASK + "axes: {losses: [{name: jsd, beta: 2}]}\n", ["axes.losses.0.beta: Input should be less"]),
    ("name: x\n" + TASK + "axes: {losses: [{name: forward_kl, top_k: -3}]}\n", ["axes.losses.0.top_k: Input should"]),
    ("name: x\n" + TASK + "axes: {losses: [{name: jsd, temperature: 0}]}\n", ["axes.losses.0.temperature: Input"]),
    ("name: x\n" + TASK + "axes: {targets: [{name: on_policy, mix: 7}]}\n", ["axes.targets.0.mix: Input should be"]),
    ("name: x\n" + TASK + "axes: {contexts: [{name: fewer_demos, k: -2}]}\n", ["axes.contexts.0.k: Input should be"]),
    (
        "name: x\n" + TASK + "axes: {losses: [{name: self_target_nll, top_k: 8}]}\n",
        ["axes.losses.0.top_k: unknown parameter (known: temperature)"],
    ),
    (
        "name: x\n" + TASK + "axes: {targets: [{name: greedy}, {name: beam}, {name: beam, n_beams: 4}]}\n",
        ["axes.targets.2: duplicate: same target strategy and effective parameters as item 1 ('beam')"],
    ),
    (
        "name: x\n" + TASK + "hyperparameters: {learning_rate: {low: 1.0e-2, high: 1.0e-3}}\n",
        ["hyperparameters.learning_rate: low (0.01) is above high (0.001)"],
    ),
    (
        "name: x\n" + TASK + "hyperparameters: {learning_rate: {low: 1.0e-5, hgih: 1}}\n",
        ["hyperparameters.learning_rate.high: Field required", "hyperparameters.learning_rate.hgih: unknown field"],
    ),
    (
        "name: x\n" + TASK + "hyperparameters: {epochs: two, lora_rank: {choices: [0, -8]}, warmup_ratio: 2}\n",
        [
            "hyperparameters.epochs: Input should be a valid integer (got 'two')",
            "hyperparameters.lora_rank.choices.1: Input should be greater than or equal to 0 (got -8)",
            "hyperparameters.warmup_ratio: Input should be less than or equal to 1 (got 2)",
        ],
    ),
    ("name: x\n" + TASK + "sweep: {sampler: bayes}\n", ["sweep.sampler: Input should be 'tpe', 'grid'"]),
    ("name: x\ntask: {name: parity, path: nowhere}\n", ["task.path: folder nowhere not found"]),
    (
        "name: x\ntask: {name: parity, path: tasks/parity, control: {name: c, path: gone}}\n",
        ["task.control.path: folder gone not found"],
    ),
    ("name: x\ntask: {name: parity, path: tasks/parity, control: {name: c, demos: -1}}\n", ["task.control.demos"]),
    ("name: [x\n", ["line 2: invalid YAML"]),
    ("- just\n- a list\n", ["a suite must be a mapping of fields, got list"]),
    ("name: x\n" + TASK + "seed: 1\nseed: 2\n", ["seed: duplicate key (lines 3 and 4); keep one"]),
]


@pytest.mark.parametrize(("text", "messages"), BAD)
def test_bad_suite_names_file_and_field(tmp_path, text, messages):
    (tmp_path / "tasks" / "parity").mkdir(parents=True)
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(SuiteError) as err:
        load_suite(path)
    problems = err.value.problems
    assert len(problems) == len(messages), problems
    for line, message in zip(problems, messages, strict=True):
        assert line.startswith(f"{path}: {message}") and "\n" not in line, line


def test_all_errors_are_listed_not_the_first(tmp_path):
    path = write_suite(
        tmp_path,
        models={"teacher": "tiny-random", "studnet": "x"},
        axes={"losses": [{"name": "jsd", "beta": 2}, {"name": "forward_kl", "top_k": -3}]},
        hyperparameters={"epochs": "two", "learning_rate": 0},
    )
    with pytest.raises(SuiteError) as err:
        load_suite(path)
    fields = [line.removeprefix(f"{path}: ").split(":")[0] for line in err.value.problems]
    assert fields == [
        "models.studnet",
        "axes.losses.0.beta",
        "axes.losses.1.top_k",
        "hyperparameters.learning_rate",
        "hyperparameters.epochs",
    ]
    assert "more)" not in str(err.value)


@pytest.mark.slow
def test_cli_bad_suite_is_one_line_exit_2(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\ntask: {name: parity}\nepochs: 3\n")
    for cmd in ("validate", "run"):
        out = subprocess.run(
            [sys.executable, "-m", "harness.cli", cmd, str(path)], capture_output=True, text=True, cwd=ROOT, timeout=300
        )
        assert out.returncode == 2
        assert out.stderr.startswith(f"error: {path}: epochs: unknown field (known: name, description, seed, models,")
        assert out.stderr.count("\n") == 1


def test_cli_missing_suite(tmp_path, capsys):
    assert main(["validate", str(tmp_path / "none.yaml")]) == 2
    assert capsys.readouterr().err == f"error: {tmp_path / 'none.yaml'}: no such suite file\n"


def test_non_utf8_suite_names_the_line(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"name: x\ncontext: {instruction: caf\xe9}\n")
    with pytest.raises(SuiteError, match=r"latin1.yaml: line 2: not UTF-8 text \(byte 0xe9\)"):
        load_suite(path)


def test_oversized_suite_is_refused_before_parsing(tmp_path):
    """A 50 MB description once took 43 s to validate: the size is checked before the file is read."""
    path = tmp_path / "huge.yaml"
    with path.open("w") as f:
        f.write("name: x\n" + TASK + "description: ")
        f.write("a" * (50 << 20))
    start = time.perf_counter()
    with pytest.raises(SuiteError) as err:
        load_suite(path)
    assert time.perf_counter() - start < 1.0
    assert err.value.problems == [f"{path}: {path.stat().st_size} bytes; a suite file is at most 1048576 bytes (1 MiB)"]


def test_a_suite_at_the_size_cap_is_read_fast(tmp_path):
    """Just under 1 MiB: an escaped string (3.7 s with the pure-Python parser) and a 20,001-value list
    (500,000 values took over 20 s) are answered in well under a second, the list by the value cap."""
    (tmp_path / "tasks" / "parity").mkdir(parents=True)
    text = tmp_path / "text.yaml"
    text.write_text("name: x\n" + TASK + 'description: "' + "\\n" * ((1 << 19) - 100) + '"\n')
    values = tmp_path / "values.yaml"
    values.write_text("name: x\n" + TASK + "description: [" + ",".join(["1"] * 500_000) + "]\n")
    start = time.perf_counter()
    assert load_suite(text).description == "\n" * ((1 << 19) - 100)
    with pytest.raises(SuiteError) as err:
        load_suite(values)
    assert time.perf_counter() - start < 2.0
    assert err.value.problems == [f"{values}: line 3: more than 20000 YAML values; a suite holds a few hundred"]


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="needs /dev/zero")
def test_an_endless_file_is_read_only_up_to_the_cap():
    """A device or pipe reports size 0: the read itself stops at the cap."""
    with pytest.raises(SuiteError) as err:
        load_suite(Path("/dev/zero"))
    assert err.value.problems == ["/dev/zero: more than 1048576 bytes; a suite file is at most 1 MiB"]


def test_ranges_and_labels(tmp_path):
    path = tmp_path / "s.yaml"
    (tmp_path / "t").mkdir()
    path.write_text(
        "name: s\ntask: {name: parity, path: t}\n"
        "axes: {contexts: [{name: fewer_demos, k: 1}, {name: empty}]}\n"
        "hyperparameters: {learning_rate: {low: 1.0e-5, high: 1.0e-3, log: true},\n"
        "                  lora_rank: {choices: [0, 8]}, epochs: {low: 1, high: 3}, warmup_ratio: 1e-1}\n"
    )
    suite = load_suite(path)
    hp = suite.hyperparameters
    assert [v.label for v in suite.axes.contexts] == ["fewer_demos(k=1)", "empty"]
    assert isinstance(hp.learning_rate, Range) and not hp.learning_rate.int_
    assert isinstance(hp.lora_rank, Choices) and hp.lora_rank.choices == [0, 8]
    assert isinstance(hp.epochs, Range) and hp.epochs.int_  # an integer field's range is an integer range
    assert hp.warmup_ratio == 0.1  # PyYAML reads `1e-1` (no dot) as text; a float field takes it as the number
    assert set(hp.searched()) == {"learning_rate", "lora_rank", "epochs"}
    assert suite.content_hash() == load_suite(path).content_hash()
    path.write_text(path.read_text().replace("1.0e-3", "2.0e-3"))
    assert suite.content_hash() != load_suite(path).content_hash()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("description", "a new description"),
        ("work_dir", "elsewhere"),
        ("models", {"teacher": "tiny-random", "student": "same", "device": "cuda:1"}),
        ("sweep", {"sampler": "grid", "n_trials": 40, "seeds": 2}),
        ("sweep", {"sampler": "grid", "n_trials": 2, "seeds": 2, "timeout": 600}),
        ("sweep", {"sampler": "grid", "n_trials": 2, "seeds": 2, "storage": "postgresql://db/optuna"}),
        ("sweep", {"sampler": "grid", "n_trials": 2, "seeds": 2, "tracking_uri": "http://mlflow:5000"}),
        ("sweep", {"sampler": "grid", "n_trials": 2, "seeds": 2, "cache_dir": "/nfs/harness-cache"}),
        ("tracking", {"save_student": "all"}),  # keeping more students measures nothing new
    ],
)
def test_hash_ignores_what_does_not_change_results(tmp_path, field, value):
    """Editing n_trials (or where things are stored) must resume the study, not start a new one."""
    base = load_suite(write_suite(tmp_path)).content_hash()
    raw = yaml.safe_load((tmp_path / "smoke.yaml").read_text())
    raw[field] = value
    (tmp_path / "smoke.yaml").write_text(yaml.safe_dump(raw))
    assert load_suite(tmp_path / "smoke.yaml").content_hash() == base


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("hyperparameters", {"learning_rate": 2.0e-3, "epochs": 1, "batch_size": 4, "train_inputs": 8}),
        ("axes", {"targets": [{"name": "greedy"}], "contexts": [{"name": "empty"}], "losses": [{"name": "jsd"}]}),
        ("sweep", {"sampler": "tpe", "n_trials": 2}),
        ("sweep", {"sampler": "grid", "n_trials": 2, "seeds": 3}),  # more seeds, other results: a new study
        ("task", {"validation_limit": 10}),
        ("seed", 1),
        ("models", {"teacher": "tiny-random", "student": "tiny-random"}),
    ],
)
def test_hash_follows_what_changes_results(tmp_path, field, value):
    base = load_suite(write_suite(tmp_path)).content_hash()
    assert load_suite(write_suite(tmp_path, **{field: value})).content_hash() != base


# ----------------------------------------------------------------------------- models and tasks resolve


def test_model_names_resolve_without_loading(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    path = write_suite(tmp_path, models={"teacher": "smollm2-136m", "student": "org/not-cached"})
    with pytest.raises(SuiteError) as err:
        load_suite(path, resources=True)
    assert [line.removeprefix(f"{path}: ") for line in err.value.problems] == [
        "models.teacher: unknown model 'smollm2-136m': not an alias (smollm2-135m, tiny-random), a local folder, "
        "or a hub id in the local Hugging Face cache (nothing is downloaded); did you mean 'smollm2-135m'?",
        "models.student: unknown model 'org/not-cached': not an alias (smollm2-135m, tiny-random), a local folder, "
        "or a hub id in the local Hugging Face cache (nothing is downloaded)",
    ]
    load_suite(path)  # without `resources`, a suite that only names models is still readable (e.g. for reports)
    # A hub id is fine once the Hugging Face cache holds it (the cache layout huggingface_hub reads).
    snapshot = tmp_path / "hub" / "models--org--not-cached" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (tmp_path / "hub" / "models--org--not-cached" / "refs").mkdir()
    (tmp_path / "hub" / "models--org--not-cached" / "refs" / "main").write_text("abc123")
    folder = tmp_path / "my-model"
    folder.mkdir()
    load_suite(write_suite(tmp_path, models={"teacher": str(folder), "student": "org/not-cached"}), resources=True)


def test_model_aliases_match_the_loader():
    from harness import models

    assert set(spec.MODEL_ALIASES) == {models.EMBEDDED, models.TINY}


def test_local_task_name_must_exist_in_its_folder(tmp_path):
    path = write_suite(tmp_path, task={"name": "parityy", "path": str(SUITES / "tasks" / "parity")})
    with pytest.raises(SuiteError, match=r"task.name: no task YAML with 'task: parityy' in .*parity \(found: parity\)"):
        load_suite(path, resources=True)
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "t.yaml").write_text("task: mine\nnum_fewshot: 3\ndoc_to_text: !function utils.text\n")
    path = write_suite(tmp_path, task={"name": "mine", "path": str(tasks), "allow_code": True})
    with pytest.raises(SuiteError, match=r"task.path: t.yaml: num_fewshot: remove it"):
        load_suite(path, resources=True)


def test_task_code_needs_allow_code(tmp_path):
    """A task YAML (or one it includes) that names Python with `!function` is refused unless the suite opts in."""
    tasks = tmp_path / "tasks"
    shutil.copytree(SUITES / "tasks" / "parity", tasks)
    main = (tasks / "parity.yaml").read_text()
    (tasks / "base.yaml").write_text(
        main.replace("task: parity", "task: parity_base") + "process_docs: !function u.f\n"
    )
    (tasks / "parity.yaml").write_text("include: base.yaml\ntask: parity\n")
    path = write_suite(tmp_path, task={"name": "parity", "path": str(tasks)})
    with pytest.raises(SuiteError) as err:
        load_suite(path, resources=True)
    line = main.count("\n") + 1
    assert err.value.problems == [
        f"{path}: task.path: base.yaml line {line}: !function names Python that lm-eval would run; "
        "to allow it, set `task.allow_code: true`"
    ]
    allowed = write_suite(tmp_path, task={"name": "parity", "path": str(tasks), "allow_code": True})
    suite = load_suite(allowed, resources=True)
    assert suite.task.allow_code and suite.content_hash() == load_suite(path).content_hash()


@pytest.mark.parametrize(
    "spelling",
    ["!function u.f", "!<!function> u.f", "!f!tion u.f"],
    ids=["tag", "verbatim", "tag-directive"],
)
def test_every_spelling_of_function_is_code(tmp_path, spelling):
    """The tag is read as the parser resolves it: a verbatim `!<!function>` or a `%TAG` shorthand is refused too."""
    tasks = tmp_path / "tasks"
    shutil.copytree(SUITES / "tasks" / "parity", tasks)
    main = (tasks / "parity.yaml").read_text()
    directive = "%TAG !f! !func\n---\n" if spelling.startswith("!f!") else ""
    (tasks / "parity.yaml").write_text(directive + main + f"process_docs: {spelling}\n")
    path = write_suite(tmp_path, task={"name": "parity", "path": str(tasks)})
    with pytest.raises(SuiteError) as err:
        load_suite(path, resources=True)
    line = (directive + main).count("\n") + 1
    assert err.value.problems == [
        f"{path}: task.path: parity.yaml line {line}: !function names Python that lm-eval would run; "
        "to allow it, set `task.allow_code: true`"
    ]


def test_a_deep_yaml_in_the_task_folder_is_one_line(tmp_path):
    """Any YAML of the task folder is read at validate: 3,000 levels took 5 s to end in a RecursionError traceback."""
    tasks = tmp_path / "tasks"
    shutil.copytree(SUITES / "tasks" / "parity", tasks)
    (tasks / "deep.yaml").write_text("task: deep\nx: " + "[" * 3000 + "]" * 3000 + "\n")
    path = write_suite(tmp_path, task={"name": "parity", "path": str(tasks)})
    start = time.perf_counter()
    with pytest.raises(SuiteError) as err:
        load_suite(path, resources=True)
    assert time.perf_counter() - start < 1.0
    assert err.value.problems == [f"{path}: task.path: deep.yaml: line 2: nested more than 32 levels deep"]


@pytest.mark.slow
def test_registered_task_names_are_checked_with_lm_eval(tmp_path):
    """No `path`: the name must be one task in lm-eval's own index (built once, ~10 s)."""
    ok = write_suite(tmp_path, task={"name": "arc_easy", "path": None})
    assert load_suite(ok, resources=True).task.name == "arc_easy"
    bad = write_suite(tmp_path, task={"name": "arc_easyy", "path": None})
    with pytest.raises(SuiteError, match=r"task.name: unknown lm-eval task 'arc_easyy' .*\(close: arc_easy"):
        load_suite(bad, resources=True)
    group = write_suite(tmp_path, task={"name": "ai2_arc", "path": None})
    with pytest.raises(SuiteError, match="task.name: 'ai2_arc' is an lm-eval group or tag; name one task"):
        load_suite(group, resources=True)


# ----------------------------------------------------------------------------- the registries behind the axes


@pytest.mark.parametrize("reg", [losses.LOSSES, targets.TARGETS, contexts.MODIFICATIONS], ids=lambda r: r.kind)
def test_registries_share_one_set_of_rules(reg):
    name = next(iter(reg))
    with pytest.raises(ValueError, match=f"{reg.kind} '{name}' is already registered"):
        reg.register(name)(reg[name].fn)
    with pytest.raises(
        registry.RegistryError, match=rf"^unknown {reg.kind} 'nope' \(known: {', '.join(sorted(reg))}\)$"
    ):
        reg.lookup("nope")
    for entry in reg.values():  # every default is a valid value of its own parameter
        assert reg.validate(entry.name, {}) == entry.defaults()


def test_parameters_come_from_the_signature():
    reg = registry.Registry("widget", registry.Entry)

    @reg.register("w")
    def w(x, *, size: registry.PositiveInt = 3, scale: registry.UnitInterval = 0.5, label: str | None = None):
        return x

    assert reg["w"].params == ("size", "scale", "label")
    assert reg.resolve("w", {"scale": "0.25"})[1] == {"size": 3, "scale": 0.25, "label": None}
    with pytest.raises(registry.RegistryError, match=r"^widget 'w': size: Input should be a valid integer; scale: "):
        reg.resolve("w", {"size": 2.5, "scale": 2})
    with pytest.raises(TypeError, match="parameter 'n' needs a type annotation"):
        reg.register("v")(lambda x, *, n=1: x)


def test_registries_do_not_import_torch():
    code = "import sys, harness.spec; print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.stdout.strip() == "[]", out.stderr


def test_fast_caps_items_seeds_and_configurations(tmp_path):
    """`--fast` keeps the standard (seeds >= 2, both splits, intervals) on fewer items, under its own name."""
    suite = load_suite(write_suite(tmp_path, sweep={"seeds": 5, "n_trials": 9}, task={"eval_limit": 30}))
    fast = suite.fast()
    assert fast.name == "smoke-fast" and fast.content_hash() != suite.content_hash()
    assert (fast.sweep.seeds, fast.sweep.n_trials) == (FAST["seeds"], FAST["configurations"])
    assert fast.task.eval_limit == 30  # already below the cap: kept
    assert fast.task.validation_limit == FAST["validation_items"]
    assert fast.evaluation.heldout_inputs == min(suite.evaluation.heldout_inputs, FAST["heldout_inputs"])
    assert fast.axes == suite.axes and fast.hyperparameters == suite.hyperparameters
    assert fast.training_seeds() == [suite.seed, suite.seed + 1]
    assert suite.training_seeds() == [0, 1, 2, 3, 4]


def test_storage_url_is_checked_without_connecting(tmp_path):
    """A PostgreSQL URL to a port nothing listens on validates (no connection is made); a bad scheme does not."""
    ok = write_suite(tmp_path, sweep={"storage": "postgresql://user:secret@127.0.0.1:1/optuna"})
    assert load_suite(ok).sweep.storage
    for url, message in [
        ("postgersql://user:secret@h/db", "unknown database 'postgersql' in the URL"),
        ("sqlite+nosuchdriver:///x.db", "unknown database 'sqlite+nosuchdriver' in the URL"),
        ("no url at all", "not a database URL"),
    ]:
        with pytest.raises(SuiteError) as err:
            load_suite(write_suite(tmp_path, sweep={"storage": url}))
        (line,) = err.value.problems
        assert f": sweep.storage: {message}" in line and "secret" not in line, line
