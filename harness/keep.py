"""Keeping trained students (`tracking.save_student`): which ones, in what form, with the context c' they expect.

A student is only useful prompted with exactly the context c' it was trained on, so every kept student travels
with `student_context.json` (`StudentContext`): the prompt template that reproduces the strings it was trained
and scored on, and lm-eval's arguments for the same prompts.

- `none`: nothing is kept.
- `adapter`: each seed run gets its LoRA adapter (`student/adapter/`, peft format) or its trained virtual tokens
  (`student/soft_prompt/`, a learned c') and `student/student_context.json` as artifacts; a full fine-tune keeps
  only the context (its weights are the whole model's size).
- `best` (default): as `adapter`; and a configuration that is the study's best on validation when it finishes
  (validation gap closure, as the report chooses; never test) has its first seed's student logged with MLflow's
  transformers flavour on that seed's run and registered as a new version of `<suite>-student`, alias `best`.
- `all`: as `best`, and every seed's student is logged with the transformers flavour.

The configuration's validation mean is known only after its last seed, so its first seed's student waits on
disk in `<work_dir>/students/<run id>/` (save_pretrained, or only the adapter for LoRA) and is deleted when the
configuration ends. Each worker promotes only students it trained, from its own disk, and decides by reading
the shared MLflow store: several workers on several machines need no shared folder and no retraining. Two
workers finishing together may both register a version; `settle` points `best` at the report's best at the end
of every run. Logging runs between trials (about a second for a small model), not inside training or scoring.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import shutil
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, cast

import huggingface_hub
import mlflow
import torch
import transformers
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from peft import PeftModel
from transformers import AutoModelForCausalLM, PreTrainedModel

from harness import aggregate, softprompt, stores, tracking
from harness.config import TrialConfig
from harness.contexts import Context
from harness.metrics import TrialMetrics
from harness.spec import Suite
from harness.tasks import TaskBundle, encode_prompt
from harness.train import quiet_peft
from harness.trial import Workbench

log = logging.getLogger(__name__)

CONTEXT_FILE = "student_context.json"
ARTIFACTS = "student"  # a seed run's folder of kept-student artifacts
ALIAS = "best"
VALIDATION = "validation_gap_closure"  # what chooses the best configuration (as the report does)
# Run tags: where a seed run's logged model is, and which registered version holds a configuration's student.
MODEL_TAG = "harness.student_model_id"
VERSION_TAG = "harness.student_version"
MODEL_VERSIONS = "mlflow.modelVersions"  # a logged model's registered versions, as MLflow's UI reads them


@contextmanager
def _not_fatal(run: tracking.TrialRun, trial: dict[str, Any]) -> Iterator[None]:
    """A student that cannot be kept (disk full, a refused MLflow request) costs the student, not the trial's
    measurement: one warning, and the run says why. A tracking store that stopped answering still stops."""
    try:
        yield
    except (OSError, MlflowException) as e:
        why = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
        log.warning("trial %s: its student was not kept (%s)", trial.get("number"), why)
        run.set_tags({"harness.student": f"not kept: {why}"})


def registered_name(suite: Suite) -> str:
    """The registered model of a suite's students: `<suite>-student` (a `--fast` run: `<suite>-fast-student`)."""
    return f"{suite.name}-student"


@dataclass(frozen=True)
class StudentContext:
    """The context c' a student was trained with, in the forms that reproduce its prompts exactly.

    `prompt_template` (Python format string, one field `prompt`: the task's input text) gives the very string
    the student was trained and scored on; `messages` are the same turns for a chat template, where they render
    identically; `lm_eval` are the arguments that make lm-eval build those prompts. Tokenize with
    `add_special_tokens` as given (what lm-eval did)."""

    task: str
    context: str  # the c' label, e.g. `fewer_demos(k=1)`
    system: str | None
    n_demos: int
    demos: list[list[str]]
    prompt_template: str | None
    messages: list[dict[str, str]] | None
    add_special_tokens: bool
    lm_eval: dict[str, Any] = field(default_factory=dict)
    trial: dict[str, Any] = field(default_factory=dict)  # which trial and seed trained it, its scores
    soft_prompt: int = 0  # a learned c': this many virtual tokens (soft_prompt.safetensors) precede every prompt

    def prompt(self, text: str) -> str:
        """The student's prompt for one input (the task's `doc_to_text`), exactly as it was trained on."""
        if self.prompt_template is None:
            raise ValueError(f"no prompt template for task '{self.task}': build prompts with lm-eval ({self.lm_eval})")
        return self.prompt_template.format(prompt=text)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> StudentContext:
        data = json.loads(text)
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


def _escape(text: str) -> str:
    return text.replace("{", "{{").replace("}", "}}")


def describe(task: TaskBundle, tok: Any, docs: Sequence[dict[str, Any]], ctx: Context, label: str) -> StudentContext:
    """c' as the student saw it: the template is cut from the prompt the task renders for `docs[0]` and checked
    on every other doc; the chat messages are kept only where the chat template renders the very same string."""
    rendered = [task.render(d, ctx, tok) for d in docs]
    texts = [str(task.task.doc_to_text(d)) for d in docs]
    template: str | None = None
    at = rendered[0].rfind(texts[0])
    if at >= 0:
        template = _escape(rendered[0][:at]) + "{prompt}" + _escape(rendered[0][at + len(texts[0]) :])
        if any(template.format(prompt=t) != r for t, r in zip(texts, rendered, strict=True)):
            template = None
    demos = [list(p) for p in task.demo_pairs(ctx.n_demos)]
    messages = [{"role": "system", "content": ctx.system}] if ctx.system else []
    for question, answer in demos:
        messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    chat = tok.apply_chat_template(
        [*messages, {"role": "user", "content": texts[0]}], tokenize=False, add_generation_prompt=True
    )
    ids = encode_prompt(tok, rendered[0])
    return StudentContext(
        task=task.name,
        context=label,
        system=ctx.system,
        n_demos=ctx.n_demos,
        demos=demos,
        prompt_template=template,
        messages=messages if chat == rendered[0] else None,
        add_special_tokens=ids != tok(rendered[0], add_special_tokens=False)["input_ids"],
        lm_eval={
            "system_instruction": ctx.system,
            "num_fewshot": ctx.n_demos,
            "apply_chat_template": True,
            "fewshot_as_multiturn": True,
        },
    )


def base_name(suite: Suite) -> str:
    """The student's starting model as the suite names it."""
    return suite.models.teacher if suite.models.student == "same" else suite.models.student


class Keeper:
    """One worker's keeping of its students: spools the first seed's, logs and registers per `save_student`."""

    def __init__(self, suite: Suite, bench: Workbench, experiment_id: str) -> None:
        self.suite, self.bench, self.experiment_id = suite, bench, experiment_id
        self.mode = suite.tracking.save_student
        self.spool = stores.work_dir(suite) / "students"
        self.contexts: dict[tuple[Context, str], StudentContext] = {}
        self.first_run: str | None = None  # the configuration's first seed run (its student may be promoted)
        self.spooled: list[str] = []  # the configuration's seed runs with a folder in the spool

    # --- during a seed ---------------------------------------------------------------------------
    def hook(self, run_id: str, first: bool) -> Callable[[torch.nn.Module], None] | None:
        """What `run_trial` calls with the trained student (before a LoRA merge): it is written to the spool
        when something will read it (its adapter; the full model when it may be logged)."""
        if self.mode == "none":
            return None
        if first:
            self.first_run = run_id
        keep_full = self.mode == "all" or (self.mode == "best" and first)

        def save(student: torch.nn.Module) -> None:
            folder = self.spool / run_id
            self.spooled.append(run_id)
            try:
                if (prompt := softprompt.attached(student)) is not None:  # the weights are the frozen base's
                    softprompt.save(prompt, folder / "soft_prompt" / softprompt.FILE)
                elif isinstance(student, PeftModel):
                    student.save_pretrained(str(folder / "adapter"))
                elif keep_full:
                    cast(PreTrainedModel, student).save_pretrained(folder / "model")
                    self.bench.tok.save_pretrained(folder / "model")
            except OSError as e:  # a full disk costs the student, not the trial's measurement
                log.warning("the student of run %s was not kept: %s", run_id, e)
                shutil.rmtree(folder, ignore_errors=True)

        return save

    def seed_done(self, run: tracking.TrialRun, ctx: Context, label: str, trial: dict[str, Any]) -> None:
        """A seed run's artifacts: its c' always, its adapter (LoRA), its full student with mode `all`."""
        if self.mode == "none":
            return
        with _not_fatal(run, trial):
            self._seed_done(run, ctx, label, trial)

    def _seed_done(self, run: tracking.TrialRun, ctx: Context, label: str, trial: dict[str, Any]) -> None:
        folder = self.spool / run.run_id
        card = self.context(ctx, label, {**trial, "run_id": run.run_id})
        run.log_text(card.to_json(), f"{ARTIFACTS}/{CONTEXT_FILE}")
        for part in ("adapter", "soft_prompt"):
            if (folder / part).is_dir():
                run.log_artifacts(folder / part, f"{ARTIFACTS}/{part}")
        if self.mode == "all":
            self._log_model(run.run_id, card)
        if run.run_id != self.first_run:
            shutil.rmtree(folder, ignore_errors=True)

    def context(self, ctx: Context, label: str, trial: dict[str, Any]) -> StudentContext:
        key = (ctx, label)
        if key not in self.contexts:
            b = self.bench
            docs = list(b.splits["validation"].docs[:3]) or b.task.train_docs(3)
            self.contexts[key] = describe(b.task, b.tok, docs, ctx, label)
        c = self.contexts[key]
        file = self.spool / str(trial.get("run_id")) / "soft_prompt" / softprompt.FILE
        virtual = softprompt.load(file).n_tokens if file.is_file() else 0
        return StudentContext(**{**asdict(c), "trial": trial, "soft_prompt": virtual})

    # --- at the end of a configuration -----------------------------------------------------------
    def configuration_done(self, run: tracking.TrialRun, cfg: TrialConfig, number: int, metrics: TrialMetrics) -> None:
        """Promote the configuration's first-seed student when the configuration is the study's best so far."""
        if self.mode not in ("best", "all") or self.first_run is None:
            return
        with _not_fatal(run, {"number": number}):
            self._promote(self.first_run, run, cfg, number, metrics)

    def _promote(
        self, first: str, run: tracking.TrialRun, cfg: TrialConfig, number: int, metrics: TrialMetrics
    ) -> None:
        value = getattr(metrics, VALIDATION)
        if value is None or math.isnan(value) or not leads(self.suite, self.experiment_id, value, number, run.run_id):
            return
        trial = {
            "number": number,
            "configuration": tracking.run_name(cfg.target.label, cfg.context.label, cfg.loss.label),
            "seed": self.suite.training_seeds()[0],
        }
        card = self.context(self.bench.student_context(cfg.context), cfg.context.label, {**trial, "run_id": first})
        model_id = tracking.TrialRun(first).get_tag(MODEL_TAG) or self._log_model(first, card)
        version = self._register(model_id, first, run.run_id, card, metrics)
        run.set_tags({VERSION_TAG: version})
        log.info(
            "trial %d is the best so far (%s %.3f): student registered as %s version %s",
            number,
            VALIDATION,
            value,
            registered_name(self.suite),
            version,
        )

    def clear(self) -> None:
        """Remove whatever the configuration spooled (also after a failed or pruned seed)."""
        for run_id in self.spooled:
            shutil.rmtree(self.spool / run_id, ignore_errors=True)
        self.spooled, self.first_run = [], None

    # --- MLflow -----------------------------------------------------------------------------------
    def _student(self, run_id: str) -> PreTrainedModel:
        """The spooled student as a plain model on the CPU: the saved full model, or base + adapter merged in fp32
        (the trial scored the same adapter unmerged on the base; a bf16 frozen base on CUDA is cast up first)."""
        folder = self.spool / run_id
        model: Any
        if (folder / "model").is_dir():
            model = AutoModelForCausalLM.from_pretrained(folder / "model", dtype=torch.float32)
        elif (folder / "soft_prompt").is_dir():  # frozen weights: the base itself, its virtual tokens beside it
            model = copy.deepcopy(self.bench.base_model()).to("cpu").float()
        else:
            base = copy.deepcopy(self.bench.base_model()).to("cpu").float()
            with quiet_peft():
                model = PeftModel.from_pretrained(base, folder / "adapter").merge_and_unload()
        model.name_or_path = base_name(self.suite)  # MLflow records it; the spool folder is deleted
        return cast(PreTrainedModel, model)

    def _log_model(self, run_id: str, card: StudentContext) -> str:
        """Log the seed run's student with the transformers flavour; c' as metadata, prompt template and file."""
        model = self._student(run_id)
        requirements = [f"transformers=={transformers.__version__}", f"torch=={torch.__version__.split('+')[0]}"]
        with tracking.guard():
            info = mlflow.transformers.log_model(
                {"model": model, "tokenizer": self.bench.tok},
                name=registered_name(self.suite),  # the experiment's Models tab lists it by this name
                task="text-generation",
                run_id=run_id,
                prompt_template=card.prompt_template,
                metadata={"student_context": asdict(card)},
                model_card=huggingface_hub.ModelCard(self._card(card)),
                pip_requirements=requirements,
            )
            folder = self.spool / run_id / "context"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / CONTEXT_FILE).write_text(card.to_json())
            prompt = self.spool / run_id / "soft_prompt" / softprompt.FILE
            if prompt.is_file():  # the student is these weights with the virtual tokens in front of every input
                shutil.copy(prompt, folder / softprompt.FILE)
            MlflowClient().log_model_artifacts(info.model_id, str(folder))
        tracking.TrialRun(run_id).set_tags({MODEL_TAG: info.model_id})
        return info.model_id

    def _card(self, card: StudentContext) -> str:
        t = card.trial
        return (
            f"---\nbase_model: {base_name(self.suite)}\nlibrary_name: transformers\ntags: [context-distillation]\n"
            f"---\n\n# {registered_name(self.suite)}\n\nA student distilled by suite `{self.suite.name}` from "
            f"`{base_name(self.suite)}` (task {card.task}): configuration `{t.get('configuration', '')}`, "
            f"MLflow run {t.get('run_id')}.\n\nPrompt it with exactly its context c' (`{card.context}`): "
            f"`{CONTEXT_FILE}` beside the weights, `prompt_template.format(prompt=<input>)`.\n"
            + (
                f"\nIts context is learned: the {card.soft_prompt} virtual tokens in `{softprompt.FILE}` go in front "
                "of every input's embeddings (`harness.load_student` attaches them); the weights are the base's.\n"
                if card.soft_prompt
                else ""
            )
        )

    def _register(
        self, model_id: str, seed_run: str, config_run: str, card: StudentContext, metrics: TrialMetrics
    ) -> str:
        name = registered_name(self.suite)
        client = MlflowClient()
        with tracking.guard():
            try:
                client.create_registered_model(
                    name,
                    description=f"Students distilled by suite `{self.suite.name}`; alias `{ALIAS}`: the study's best "
                    f"configuration on validation. Prompt each with the `{CONTEXT_FILE}` of its version.",
                )
            except MlflowException as e:
                if e.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
                    raise
            scores = {k: f"{v:.4g}" for k, v in metrics.logged().items() if k.startswith(("validation_", "test_"))}
            version = client.create_model_version(
                name,
                source=f"models:/{model_id}",
                run_id=seed_run,
                model_id=model_id,
                tags={
                    "harness.study": stores.study_name(self.suite),
                    "harness.trial_run_id": config_run,
                    "harness.trial": str(card.trial.get("number")),
                    "harness.configuration": str(card.trial.get("configuration")),
                    "harness.context": card.context,
                    **scores,
                },
                description=f"`{card.trial.get('configuration')}`, first training seed; the configuration's scores "
                "(means over seeds) are the tags, this seed's are the model's metrics. Prompt it with "
                f"`{CONTEXT_FILE}` (context c' `{card.context}`).",
            )
            client.set_registered_model_alias(name, ALIAS, version.version)
            # what mlflow.register_model records (it also prints to stderr): the Models tab's "Registered models"
            linked = json.loads(client.get_logged_model(model_id).tags.get(MODEL_VERSIONS, "[]"))
            linked.append({"name": name, "version": version.version})
            client.set_logged_model_tags(model_id, {MODEL_VERSIONS: json.dumps(linked)})
        return str(version.version)


def leads(suite: Suite, experiment_id: str, value: float, number: int, run_id: str) -> bool:
    """Whether configuration run `run_id` (trial `number`, `value` on validation) ranks first among the study's
    finished ones, by the rule the report and export use (`aggregate.validation_rank`: a tie goes to the
    earliest trial): only then is its student registered as the best so far."""
    with tracking.guard():
        found = MlflowClient().search_runs(
            [experiment_id],
            filter_string=f"tags.`harness.study` = '{stores.study_name(suite)}' "
            "and tags.`harness.kind` = 'trial' and attributes.status = 'FINISHED'",
            max_results=5000,
        )
    others = [r for r in found if r.info.run_id != run_id]
    values = [r.data.metrics.get(VALIDATION) for r in others] + [value]
    trials = [r.data.tags.get("optuna.trial_number") for r in others] + [number]
    order = aggregate.validation_rank(values, trials)
    return bool(order) and order[0] == len(others)


def settle(suite: Suite, best_run_id: str | None) -> str | None:
    """Point alias `best` at the registered student of the study's best configuration (`best_run_id`, chosen on
    validation by the report); returns that version, or None (and one warning) when it was not kept."""
    if suite.tracking.save_student not in ("best", "all") or best_run_id is None:
        return None
    name = registered_name(suite)
    client = MlflowClient()
    with tracking.guard():
        versions = client.search_model_versions(f"name = '{name}' and tags.`harness.trial_run_id` = '{best_run_id}'")
        if not versions:
            log.warning(
                "the best configuration's student (run %s) is not registered as %s (its worker stopped before "
                "registering it, or it was chosen by an older rule); `harness export` rebuilds it where its "
                "adapter was kept",
                best_run_id,
                name,
            )
            return None
        version = str(max(int(v.version) for v in versions))
        client.set_registered_model_alias(name, ALIAS, version)
    return version
