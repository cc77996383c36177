"""Benchmarks of fused_accum against torch.optim: `python -m fused_accum.bench --help`.

One job per module: shapes (tensor sets), timing and memory (measuring one call),
roofline (what memory bandwidth allows), variants (the optimizers compared), scenarios
(what is measured), report and plot (how results are shown), document (the whole of
docs/benchmarks.md), __main__ (the CLI), spread (each ratio over several runs' JSON
files), check_json (CI's check of a run's JSON file).
"""
