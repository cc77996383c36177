"""Importing the package against a torch it was not built for fails with a clear message."""

import shutil
import subprocess
import sys

import fused_accum


def test_torch_mismatch_names_both_versions(tmp_path):
    # A copy of the installed package whose build record names another torch release.
    package = tmp_path / "fused_accum"
    shutil.copytree(fused_accum.__path__[0], package,
                    ignore=shutil.ignore_patterns("__pycache__", "bench"))
    (package / "_build_config.py").write_text("TORCH_VERSION = '1.13.0'\nWITH_CUDA = False\n")
    proc = subprocess.run(
        [sys.executable, "-c", "import fused_accum"], cwd=tmp_path,
        capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    last_line = proc.stderr.strip().splitlines()[-1]
    assert last_line.startswith("ImportError: fused_accum was built against torch 1.13.0")
    import torch
    assert torch.__version__ in last_line
    assert "undefined symbol" not in proc.stderr
