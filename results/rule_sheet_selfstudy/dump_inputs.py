"""The inputs z each `axes.inputs` value of a suite gives, with the teacher's greedy answer to each under the full
c: what the student is trained to say. A markdown table on stdout; the teacher's work comes from the study's cache.

    python results/rule_sheet_selfstudy/dump_inputs.py suites/rule_sheet_selfstudy.yaml \
        > results/rule_sheet_selfstudy/inputs.md
"""

from __future__ import annotations

import sys

from harness.spec import load_suite
from harness.trial import Workbench


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", "⏎") or "(empty)"


def main(path: str) -> None:
    s = load_suite(path, resources=True)
    b = Workbench(s)
    n = int(s.hyperparameters.train_inputs)  # type: ignore[call-overload]
    print(f"# Inputs z for `{s.name}`, and what the teacher answers to them\n")
    system = len(b.tok.encode(b.context.system or ""))
    print(
        f"`python results/rule_sheet_selfstudy/dump_inputs.py {path}`: the {n} inputs of each source (suite seed "
        f"{s.seed}), each with the teacher's greedy answer under the full c ({system} tokens of system prompt + "
        f"{b.context.n_demos} demonstrations), which the student is trained to give.\n"
    )
    for ax in s.axes.inputs:
        queries = b.inputs(ax, n)
        prompts = b.encode_queries(queries, b.context)
        ids = b.greedy_targets(prompts)
        print(f"## `{ax.label}`\n\n| # | input z | teacher's answer (with c) |\n|---|---|---|")
        for i, (q, t) in enumerate(zip(queries, ids, strict=True)):
            print(f"| {i + 1} | {cell(q.text)} | {cell(str(b.tok.decode(t, skip_special_tokens=True)).strip())} |")
        print()


if __name__ == "__main__":
    main(sys.argv[1])
