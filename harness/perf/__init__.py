"""`python -m harness.perf` (`nox -s perf`): a side-by-side speed benchmark, not a test.

Every figure is a ratio of two arms measured in the same process, interleaved (arm order rotating every
repeat), reported as the median of the per-repeat ratios with its min and max (`timing`). The parts:

- train (`training`): seconds per optimizer step of the real `train` loop per loss (`stepping`) against
  TRL's GKDTrainer step (`trl_gkd`) on the same model, data and batch; phases and profiles of a step;
- generate, topk (`teacher_arms`): the teacher's work with the shared context's KV cache reused, against
  plain batched `generate` / every row running its whole prompt; identical outputs asserted;
- lmeval (`lmeval_arm`): a suite's teacher arm through plain HFLM against `hf-prefix-reuse`;
- memory (`memory`): peak memory of a trial's training per student kind, each in a fresh process;
- scaling (`scaling`): the teacher's and the student's cost against |c| and train_inputs.

`workload` builds the prompts and examples, `write` and `plots` write results/perf/, `cli` ties them
together. The harness never imports this package.
"""
