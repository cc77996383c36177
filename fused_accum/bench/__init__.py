"""Benchmarks of fused_accum against torch.optim: `python -m fused_accum.bench --help`.

One job per module: shapes (tensor sets), timing and memory (measuring one call),
roofline (what memory bandwidth allows), variants (the optimizers compared), mixed (the
precision modes and torch's master-weights recipe, with the memory each holds),
scenarios (what is measured), machine (the CPU named beside the tables), report and plot
(how results are shown), document (the whole of docs/benchmarks.md), __main__ (the CLI),
spread (each ratio over several runs' JSON files), check_json (CI's check of a run's
JSON file). convergence is apart: a small training run in bfloat16, each precision mode
against float32 (`python -m fused_accum.bench.convergence --svg PATH`).
"""
