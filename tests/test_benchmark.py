"""benchmarks/throughput.py runs at a tiny size and reports every figure (no test asserts a time)."""

import importlib.util
import json
import os

import pytest

from conftest import ROOT

spec = importlib.util.spec_from_file_location("throughput", os.path.join(ROOT, "benchmarks", "throughput.py"))
throughput = importlib.util.module_from_spec(spec)
spec.loader.exec_module(throughput)

FIELDS = {"settings", "device", "torch_threads", "render_fps_per_env", "render_fps_total", "clip_fps",
          "clip_gflop_per_frame", "clip_tflops_achieved", "device_peak_tflops", "clip_fraction_of_peak",
          "updates_per_second", "end_to_end_sps", "end_to_end_over_clip_only", "phase_share", "fidelity"}


@pytest.mark.parametrize("script", ["cartpole", "humanoid"])
def test_benchmark_reports_every_figure(tiny_clip, tmp_path, script):
    name, _, _ = tiny_clip
    path = tmp_path / "figures.json"
    throughput.main(throughput.Args(script=script, clip_model=name, frames=8, steps=120, batch_size=8,
                                    num_envs=2, json=str(path)))
    figures = json.loads(path.read_text())
    assert FIELDS <= set(figures), FIELDS - set(figures)
    assert set(figures["phase_share"]) == {"simulation", "rendering", "clip", "updates"}
    assert figures["clip_gflop_per_frame"] > 0 and figures["end_to_end_sps"] > 0
    assert set(figures["fidelity"]) >= {"fp32", "bf16"}
    row = figures["fidelity"]["bf16"]
    assert {"cosine_min", "cosine_mean", "max_reward_error", "reward_spread", "error_over_spread", "spearman",
            "faithful"} <= set(row)
    assert figures["fidelity"]["fp32"]["max_reward_error"] == 0.0
