"""Boundary-model speed on this machine: forest features / prediction and U-Net steps, fp32 vs bf16.

    python benchmarks/bench_boundary.py [--out benchmarks/results/boundary_speed.json]

Measures, on a (64, 128, 128) crop of fib25_ts2 (or a phantom when the data is absent):
- forest feature computation (Mvoxel/s) and, if the bundled forest is present, whole-model
  prediction (Mvoxel/s);
- one U-Net training step (forward + backward + Adam) on a 32x96x96 patch and one inference forward
  pass, with fp32 and with CPU bf16 autocast, side by side (bundled U-Net config).
Every number is a median over repeats; the machine is shared, so treat them as +-30 %.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import time
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "fib25_ts2.zarr"


def _image() -> np.ndarray:
    for path in (DATA, Path("/work/shared/data/fib25_ts2.zarr")):
        if path.exists():
            import zarr

            return np.asarray(zarr.open(str(path), mode="r")["raw"][:64, :128, :128]).astype(np.float32) / 255
    from emseg.pipeline.quality.phantom import Phantom, PhantomParams

    return Phantom(PhantomParams(shape_zyx=(64, 128, 128))).render()[0].astype(np.float32) / 255


def _timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/boundary_speed.json")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    import torch

    from emseg.pipeline.backends.boundary import features as feats
    from emseg.pipeline.backends.boundary import unet as unet_mod

    image = _image()
    result: dict = {
        "cpu": subprocess.run(["sh", "-c", "lscpu | grep 'Model name' | cut -d: -f2"], capture_output=True,
                              text=True).stdout.strip() or platform.processor(),
        "cpu_bf16_flag": "avx512_bf16" in Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else None,
        "torch_threads": torch.get_num_threads(), "torch": str(torch.__version__),
    }
    sec = _timed(lambda: feats.compute(image), args.repeats)
    result["forest_features_mvoxel_s"] = round(image.size / sec / 1e6, 3)
    bundled = Path(__file__).resolve().parents[1] / "pipeline" / "models" / "forest_fib25.skops"
    if bundled.exists():
        from emseg.pipeline.backends.boundary import load_model

        model = load_model("forest")
        sec = _timed(lambda: model.predict(image), 1)
        result["forest_predict_mvoxel_s"] = round(image.size / sec / 1e6, 3)
    import yaml

    cfg_path = Path(__file__).resolve().parents[1] / "configs" / "unet_fib25_train.yaml"
    spec = yaml.safe_load(cfg_path.read_text())["model"]
    spec.pop("kind")
    config = unet_mod.UNetConfig.model_validate(spec)
    torch.manual_seed(0)
    net = unet_mod.build(config)
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    x = torch.randn(1, 1, 32, 96, 96)
    target = torch.rand(1, config.out_channels, 32, 96, 96)
    result["unet"] = {"config": config.model_dump(mode="json"), "parameters": sum(p.numel() for p in net.parameters())}
    for name, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
        def step() -> None:
            opt.zero_grad()
            if dtype is None:
                y = net(x)
            else:
                with torch.autocast("cpu", dtype=dtype):
                    y = net(x)
            torch.nn.functional.binary_cross_entropy_with_logits(y.float(), target).backward()
            opt.step()

        def infer() -> None:
            with torch.inference_mode():
                if dtype is None:
                    net(x)
                else:
                    with torch.autocast("cpu", dtype=dtype):
                        net(x)

        step()  # warm-up
        result["unet"][f"train_step_s_{name}"] = round(_timed(step, args.repeats), 3)
        infer()
        sec = _timed(infer, args.repeats)
        result["unet"][f"inference_mvoxel_s_{name}"] = round(x.numel() / sec / 1e6, 3)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
