"""Tasks are lm-eval tasks; this module builds prompts with lm-eval's own code.

Training prompts (teacher with c, student with c') and evaluation prompts must
be the same strings, so both come from `Task.fewshot_context` with the same chat
template callable that lm-eval's HFLM uses.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import yaml
from lm_eval.models.huggingface import HFLM
from lm_eval.tasks import TaskManager
from lm_eval.tasks._yaml_loader import load_yaml

from harness.contexts import Context, ContextEnv
from harness.spec import TaskYamlLoader, lm_eval_index

log = logging.getLogger(__name__)


class TaskError(ValueError):
    """A task that cannot be found or used."""


def _absolute_data_files(cfg: dict[str, Any], folder: Path) -> dict[str, Any]:
    """lm-eval resolves relative data_files against the cwd, not the YAML's folder: fix that here."""
    kwargs = dict(cfg.get("dataset_kwargs") or {})
    files = kwargs.get("data_files")
    if isinstance(files, dict):
        kwargs["data_files"] = {k: str((folder / v).resolve()) for k, v in files.items()}
    elif isinstance(files, str):
        kwargs["data_files"] = str((folder / files).resolve())
    if kwargs:
        cfg = {**cfg, "dataset_kwargs": kwargs}
    return cfg


def task_config(name: str, folder: Path | None) -> dict[str, Any] | str:
    """A local task as an in-code config dict (absolute paths), or a registered task's name.

    Only the named task's YAML (and what it includes) goes through lm-eval's loader, which runs `!function`
    tags: the other YAMLs of the folder are read with a loader that runs nothing, just to find the name."""
    if folder is None:
        return name
    path = _task_file(name, folder)
    cfg = load_yaml(path)
    if "num_fewshot" in cfg:
        raise TaskError(f"{path}: num_fewshot: remove it; the suite's context sets the demonstrations")
    return _absolute_data_files(cfg, folder)


def _task_file(name: str, folder: Path) -> Path:
    """The YAML in `folder` whose `task:` is `name`, found without running any of the folder's code."""
    for path in sorted(folder.glob("*.yaml")):
        try:
            head = yaml.load(path.read_text(encoding="utf-8"), Loader=TaskYamlLoader)  # noqa: S506 (runs nothing)
        except (yaml.YAMLError, UnicodeDecodeError, OSError) as e:
            log.debug("skipping %s: %s", path, e)
            continue
        if isinstance(head, dict) and head.get("task") == name:
            return path
    raise TaskError(f"{folder}: no task YAML with 'task: {name}'")


def chat_template_fn(tokenizer: Any) -> Any:
    """lm-eval's HFLM.apply_chat_template bound to our tokenizer: the very function evaluation uses."""
    shim = SimpleNamespace(tokenizer=tokenizer, chat_template_args={})
    return functools.partial(HFLM.apply_chat_template, shim)


def encode_prompt(tokenizer: Any, prompt: str) -> list[int]:
    """Token ids of a rendered prompt exactly as lm-eval's HFLM (as `scoring.evaluate_arm` builds it) feeds them.

    HFLM.tok_encode lets the tokenizer add its special tokens (a BOS for many models) unless the string
    already starts with BOS; training must see the same ids, so this calls that very method.
    """
    from lm_eval.models.huggingface import HFLM

    prefix = HFLM.prefix_token_id.fget(SimpleNamespace(custom_prefix_token_id=None, tokenizer=tokenizer))
    shim = SimpleNamespace(tokenizer=tokenizer, add_bos_token=None, prefix_token_id=prefix)
    return list(HFLM.tok_encode(shim, prompt))


@dataclass
class TaskBundle:
    """One lm-eval task, loaded once, with the splits a trial needs."""

    name: str
    config: dict[str, Any] | str
    task: Any  # lm_eval.api.task.ConfigurableTask
    folder: Path | None = None

    @property
    def output_type(self) -> str:
        return self.task.OUTPUT_TYPE if hasattr(self.task, "OUTPUT_TYPE") else self.task.config.output_type

    def _docs(self, split: str) -> list[dict[str, Any]]:
        has = {
            "train": self.task.has_training_docs,
            "validation": self.task.has_validation_docs,
            "test": self.task.has_test_docs,
        }
        get = {
            "train": self.task.training_docs,
            "validation": self.task.validation_docs,
            "test": self.task.test_docs,
        }
        if not has[split]():
            raise TaskError(f"task '{self.name}' has no {split} split")
        return list(get[split]())

    def train_docs(self, n: int | None = None) -> list[dict[str, Any]]:
        """Distillation inputs z: the first n documents of the training split (deterministic)."""
        docs = self._docs("train")
        if n is not None and n > len(docs):
            raise TaskError(f"task '{self.name}': asked for {n} training inputs, the train split has {len(docs)}")
        return docs[:n] if n is not None else docs

    def eval_docs(self) -> list[dict[str, Any]]:
        """Held-out documents, exactly what lm-eval scores (test split, else validation)."""
        return list(self.task.eval_docs)

    @functools.cached_property
    def data_fingerprint(self) -> str:
        """Hash of the documents a score depends on (scored items and the demonstrations' source).

        Cached scores are keyed by it: a key holding only the data-file paths would pair old per-item
        scores with a fresh student after the data changed.
        """
        h = hashlib.sha256()
        for part in (self.task.eval_docs, self.task.fewshot_docs() or []):
            for doc in part:
                h.update(json.dumps(doc, sort_keys=True, default=str, ensure_ascii=False).encode())
                h.update(b"\n")
            h.update(b"\0")
        return h.hexdigest()[:20]

    def demo_pairs(self, n: int) -> tuple[tuple[str, str], ...]:
        """The first n demonstrations as (input, answer) texts."""
        if n == 0:
            return ()
        docs = list(self.task.fewshot_docs() or [])[:n]
        return tuple((str(self.task.doc_to_text(d)), self.reference(d)) for d in docs)

    def reference(self, doc: dict[str, Any]) -> str:
        """The dataset's answer as text (the `ground_truth` target)."""
        target = self.task.doc_to_target(doc)
        if self.output_type == "multiple_choice":
            choices = self.task.doc_to_choice(doc)
            target = choices[target] if isinstance(target, int) else target
        elif isinstance(target, list):
            target = target[0]
        return str(target)

    def render(self, doc: dict[str, Any], ctx: Context, tokenizer: Any) -> str:
        """The prompt string for one input under a context, as lm-eval builds it (chat template, multiturn)."""
        prompt = self.task.fewshot_context(
            doc,
            num_fewshot=ctx.n_demos,
            system_instruction=ctx.system,
            apply_chat_template=True,
            fewshot_as_multiturn=True,
            chat_template=chat_template_fn(tokenizer),
        )
        if isinstance(prompt, list):
            raise TaskError(f"task '{self.name}' has multiple inputs per document; not supported for distillation")
        return prompt

    def env(self, ctx: Context, tokenizer: Any) -> ContextEnv:
        return ContextEnv(demos=self.demo_pairs(ctx.n_demos), task_name=self.name, tokenizer=tokenizer)

    def stop_strings(self) -> tuple[str, ...]:
        """The task's own generation stop strings (minus chat specials, which stop at eos anyway)."""
        gen = dict(getattr(self.task.config, "generation_kwargs", None) or {})
        until = gen.get("until") or []
        return tuple(s for s in ([until] if isinstance(until, str) else until) if not s.startswith("<|"))


@functools.lru_cache(maxsize=8)
def task_manager(folder: Path | None) -> Any:
    """lm-eval's index of registered tasks (~10 s to build, once), or for a local task an empty TaskManager:
    its config comes in as a dict from `task_config`, so the folder's other YAMLs are never indexed."""
    if folder is None:
        return lm_eval_index()
    return TaskManager(include_defaults=False)


def load_task(name: str, folder: Path | None) -> TaskBundle:
    """Load a local task folder or a registered lm-eval task by name."""
    cfg = task_config(name, folder)
    tm = task_manager(folder)
    try:
        tasks = tm.load([cfg])["tasks"]
    except Exception as e:  # lm-eval raises many types for a missing task or data
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise TaskError(f"cannot load lm-eval task '{name}': {why}") from e
    if name not in tasks:
        raise TaskError(f"lm-eval task '{name}' is a group or unknown; name one task")
    task = tasks[name]
    if task.has_training_docs() is False:
        log.warning("task %s has no training split; distillation inputs will be missing", name)
    return TaskBundle(name=name, config=cfg, task=task, folder=folder)
