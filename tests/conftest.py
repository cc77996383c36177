import pytest

# Largest float32 difference against torch's fused=True seen in this run, in ulps;
# printed at the end so the figure is visible in every CI log.
FLOAT32_ULPS_VS_TORCH_FUSED = {"max": None}


def pytest_terminal_summary(terminalreporter):
    if FLOAT32_ULPS_VS_TORCH_FUSED["max"] is None:
        return
    terminalreporter.write_line(
        "fused_accum: largest float32 difference against torch fused=True: "
        f"{FLOAT32_ULPS_VS_TORCH_FUSED['max']} ulp"
    )
