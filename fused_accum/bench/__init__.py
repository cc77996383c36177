"""Benchmarks of fused_accum against torch.optim: `python -m fused_accum.bench --help`.

One job per module: shapes (tensor sets), timing and memory (measuring one call),
roofline (what memory bandwidth allows), variants (the optimizers compared), scenarios
(what is measured), report and plot (how results are shown), __main__ (the CLI),
spread (each ratio over several runs' JSON files).
"""
