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
import random
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import yaml
from lm_eval.models.huggingface import HFLM
from lm_eval.tasks import TaskManager
from lm_eval.tasks._yaml_loader import load_yaml

from harness.contexts import Context, ContextEnv
from harness.spec import TaskYamlLoader, code_in_task_yaml, code_refused, lm_eval_index

log = logging.getLogger(__name__)


class TaskError(ValueError):
    """A task that cannot be found or used."""


SPLITS = ("validation", "test")  # DESIGN.md section 9: validation chooses, test is reported and never chooses
CARVE_SHARE, CARVE_MAX = 5, 200  # a carved validation slice: a fifth of the scored items, at most 200


def _docs_hash(*parts: Any) -> str:
    h = hashlib.sha256()
    for part in parts:
        for doc in part:
            h.update(json.dumps(doc, sort_keys=True, default=str, ensure_ascii=False).encode())
            h.update(b"\n")
        h.update(b"\0")
    return h.hexdigest()[:20]


@dataclass(frozen=True)
class Split:
    """The held-out items of one split (`validation` or `test`) exactly as lm-eval scores them.

    `source` is the task's own split they come from. `indices` are positions in that split when the
    items are a seeded slice carved from it (a task without its own validation split), else None and
    the first `limit` items are scored. Per-item scores are keyed by the position in the source split
    (lm-eval's doc_id), the same for every arm, seed and configuration: that is what pairs them.
    """

    name: str
    source: str
    docs: tuple[dict[str, Any], ...]
    indices: tuple[int, ...] | None
    limit: int | None
    note: str
    fingerprint: str  # the scored documents and the demonstrations' source: what a cached score depends on

    def key(self) -> dict[str, Any]:
        """What identifies the scored items in a cache key."""
        carved = None if self.indices is None else hashlib.sha256(str(self.indices).encode()).hexdigest()[:12]
        return {"split": self.name, "source": self.source, "carved": carved, "limit": self.limit}


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


def task_config(name: str, folder: Path | None, *, allow_code: bool = False) -> dict[str, Any] | str:
    """A local task as an in-code config dict (absolute paths), or a registered task's name.

    Only the named task's YAML (and what it includes) goes through lm-eval's loader, which runs `!function`
    tags: the other YAMLs of the folder are read with a loader that runs nothing, just to find the name.
    A YAML that names Python is refused unless the suite opts in (`task.allow_code`), before any import."""
    if folder is None:
        return name
    path = _task_file(name, folder)
    code = None if allow_code else code_in_task_yaml(path)
    if code:
        raise TaskError(f"{folder}: {code_refused('task', code).removeprefix('task.path: ')}")
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
            hint = "; take the inputs from the teacher instead: axes.inputs: [self_study]" if split == "train" else ""
            raise TaskError(f"task '{self.name}' has no {split} split{hint}")
        return list(get[split]())

    def train_docs(self, n: int | None = None) -> list[dict[str, Any]]:
        """Distillation inputs z: the first n documents of the training split (deterministic)."""
        docs = self._docs("train")
        if n is not None and n > len(docs):
            raise TaskError(f"task '{self.name}': asked for {n} training inputs, the train split has {len(docs)}")
        return docs[:n] if n is not None else docs

    def eval_docs(self) -> list[dict[str, Any]]:
        """The documents lm-eval scores by default (test split, else validation): where `test` comes from."""
        return list(self.task.eval_docs)

    @property
    def has_own_validation(self) -> bool:
        """A validation split apart from the split lm-eval scores: otherwise validation is carved from it."""
        return bool(self.task.has_validation_docs() and self.task.has_test_docs())

    def split(self, name: str, limit: int | None, seed: int) -> Split:
        """The `validation` or `test` items: the task's own splits (first `limit` items of each), or, for a
        task whose only held-out split is the one lm-eval scores, a seeded slice of it for validation
        (`limit` items, default a fifth up to 200) and the rest for test (its first `limit`). Disjoint either way.
        """
        if name not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got '{name}'")
        cfg = self.task.config
        fewshot = list(self.task.fewshot_docs() or [])
        if self.has_own_validation:
            source = cfg.validation_split if name == "validation" else cfg.test_split
            docs = list(self._docs(name))[:limit]
            note = f"{len(docs)} items of the task's `{source}` split" + (f" (first {limit})" if limit else "")
            return Split(name, source, tuple(docs), None, limit, note, _docs_hash(docs, fewshot))
        source = cfg.test_split if self.task.has_test_docs() else cfg.validation_split
        pool = self.eval_docs()
        val = self._carve(len(pool), limit if name == "validation" else None, seed)
        if name == "validation":
            indices = val
            note = (
                f"carved from the task's `{source}` split (it has no separate validation split): "
                f"{len(val)} of its {len(pool)} items, drawn with seed {seed}; test is the rest"
            )
        else:
            chosen = set(val)
            indices = [i for i in range(len(pool)) if i not in chosen][:limit]
            note = f"{len(indices)} items of the task's `{source}` split that the carved validation slice left out"
        docs = [pool[i] for i in indices]
        return Split(name, source, tuple(docs), tuple(indices), limit, note, _docs_hash(docs, fewshot))

    def scored_split(self, limit: int | None) -> Split:
        """The first `limit` items lm-eval scores by default, for a task that is only reported (the control task)."""
        source = self.task.config.test_split if self.task.has_test_docs() else self.task.config.validation_split
        docs = self.eval_docs()[:limit]
        fewshot = list(self.task.fewshot_docs() or [])
        note = f"{len(docs)} items of the task's `{source}` split"
        return Split("test", source, tuple(docs), None, limit, note, _docs_hash(docs, fewshot))

    def _carve(self, n: int, size: int | None, seed: int) -> list[int]:
        """The validation slice of a task without its own: `size` seeded positions out of n, in order."""
        size = size or min(CARVE_MAX, max(1, n // CARVE_SHARE))
        if size >= n:
            raise TaskError(
                f"task '{self.name}': cannot carve {size} validation items out of its {n} held-out items "
                "and keep a test split; lower task.validation_limit"
            )
        return sorted(random.Random(seed).sample(range(n), size))

    def lm_eval_task(self, split: Split) -> dict[str, Any] | str | Any:
        """What `simple_evaluate(tasks=[...])` scores for this split (lm-eval scores a task's `test_split`).

        A local task: its config with `test_split` set to the split's source. A registered task whose
        source is what lm-eval scores anyway: its name. Otherwise a freshly loaded task object with
        `test_split` changed (lm-eval has no per-name override for a registered task).
        """
        if isinstance(self.config, dict):
            return {**self.config, "test_split": split.source}
        default = self.task.config.test_split if self.task.has_test_docs() else self.task.config.validation_split
        if split.source == default:
            return self.config
        return with_test_split(task_manager(self.folder), self.name, split.source)

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

    def render_text(self, text: str, ctx: Context, tokenizer: Any) -> str:
        """The prompt for a free-text input (a generated query) under a context: lm-eval's own prompt for a
        stand-in item (a demonstration, else the first scored item) with that item's input replaced by `text`,
        so system message, demonstrations and chat turns are built exactly as for the task's own items."""
        pool = list(self.task.fewshot_docs() or []) or self.eval_docs()
        captured: list[list[dict[str, str]]] = []

        def capture(messages: list[dict[str, str]], **kwargs: Any) -> str:
            captured.append([dict(m) for m in messages])
            return ""

        self.task.fewshot_context(
            pool[0],
            num_fewshot=ctx.n_demos,
            system_instruction=ctx.system,
            apply_chat_template=True,
            fewshot_as_multiturn=True,
            chat_template=capture,
        )
        messages = captured[0]
        if not messages or messages[-1].get("role") != "user":
            raise TaskError(f"task '{self.name}': its prompt does not end in a user turn; cannot place an input")
        messages[-1]["content"] = text
        return chat_template_fn(tokenizer)(messages, add_generation_prompt=True)

    def env(self, ctx: Context, tokenizer: Any) -> ContextEnv:
        return ContextEnv(demos=self.demo_pairs(ctx.n_demos), task_name=self.name, tokenizer=tokenizer)

    def stop_strings(self) -> tuple[str, ...]:
        """The task's own generation stop strings (minus chat specials, which stop at eos anyway)."""
        gen = dict(getattr(self.task.config, "generation_kwargs", None) or {})
        until = gen.get("until") or []
        return tuple(s for s in ([until] if isinstance(until, str) else until) if not s.startswith("<|"))


def with_test_split(tm: Any, name: str, source: str) -> Any:
    """A fresh lm-eval task object that scores `source` as its test split (lm-eval's eval_docs read it)."""
    task = tm.load([name])["tasks"][name]
    task.set_config(key="test_split", value=source)
    return task


@functools.lru_cache(maxsize=8)
def task_manager(folder: Path | None) -> Any:
    """lm-eval's index of registered tasks (~10 s to build, once), or for a local task an empty TaskManager:
    its config comes in as a dict from `task_config`, so the folder's other YAMLs are never indexed."""
    if folder is None:
        return lm_eval_index()
    return TaskManager(include_defaults=False)


def load_task(name: str, folder: Path | None, *, allow_code: bool = False) -> TaskBundle:
    """Load a local task folder or a registered lm-eval task by name (`allow_code`: see `task_config`)."""
    cfg = task_config(name, folder, allow_code=allow_code)
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
        # Not a problem by itself: self_study inputs need no train split; train_split / paraphrase say so if asked.
        log.info("task %s has no training split", name)
    return TaskBundle(name=name, config=cfg, task=task, folder=folder)
