"""GPU paths: bf16 autocast, the teacher on CUDA, a whole round with use_gpu. Skipped without CUDA
(see conftest); run them on a GPU machine with ``pytest -m gpu``."""

from __future__ import annotations

import pytest
import torch

from s4al_ray.model import build_model
from s4al_ray.teacher import predict_probs

pytestmark = pytest.mark.gpu


def test_bf16_autocast_training_step():
    model = build_model(9, "mobilenet_v2", 16, 16, head_channels=64).cuda()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.randn(4, 3, 96, 128, device="cuda")
    y = torch.randint(0, 9, (4, 96, 128), device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = model(x, with_embedding=True)
        loss = torch.nn.functional.cross_entropy(out["logits"].float(), y)
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_teacher_on_gpu_matches_cpu():
    model = build_model(5, "mobilenet_v2", 16, 16, head_channels=64).eval()
    x = torch.rand(2, 3, 64, 80)
    cpu = predict_probs(model, x, [0.5, 1.0], flip=True)
    gpu = predict_probs(model.cuda(), x.cuda(), [0.5, 1.0], flip=True).cpu()
    assert torch.allclose(cpu, gpu, atol=1e-3)


def test_round_with_gpu_workers(ray_session, smoke_data_root, tmp_path):
    from s4al_ray.config import load_config
    from s4al_ray.experiment import Experiment

    if ray_session.cluster_resources().get("GPU", 0) < 1:
        pytest.skip("the Ray session sees no GPU")
    cfg = load_config(
        "configs/smoke.yaml",
        [
            f"storage={tmp_path}",
            f"data.root={smoke_data_root}",
            "name=gpu",
            "train.use_gpu=true",
            "train.sync_bn=true",
        ],
    )
    records = Experiment(cfg, log=print).run()
    assert records[1]["pool/labeled_frac"] > records[0]["pool/labeled_frac"]
