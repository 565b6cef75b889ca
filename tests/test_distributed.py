"""Training with several processes (torchrun's data parallelism), tested with 2 gloo processes on the CPU.

Each step's batch and noise are seeded, so 2 processes that each take half of the global batch follow the
1-process run of the same batch_size: the same losses and weights, up to float rounding (gradients are summed in
another order)."""
import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from minidiff.models import MLPConfig, MLPDenoiser
from minidiff.process import ConditionalDiffusion, GaussianDiffusion, NoiseSchedule
from minidiff.training import distributed
from minidiff.training.checkpoint import load_checkpoint
from minidiff.training.loop import TrainConfig, train

CONFIG = dict(steps=4, batch_size=8, lr=1e-2, lr_schedule="constant", warmup_steps=1, log_every=1,
              checkpoint_every=2, sample_every=1, ema_decay=0.9)


def setup():
    """The same model, objective and data in every process."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = MLPDenoiser(MLPConfig(hidden=16, layers=1, time_dim=8))
    diffusion = GaussianDiffusion(NoiseSchedule.make("linear", 20), min_snr_gamma=5.0)
    data = torch.randn(32, 2, generator=torch.Generator().manual_seed(1))
    return model, diffusion, data


class TextMLP(torch.nn.Module):
    """A tiny text-conditional denoiser: token ids (B, L) -> context (B, L, 4) by encode_tokens, as in
    TextToImage when the text encoder trains with the denoiser (called outside DDP's forward)."""

    def __init__(self):
        super().__init__()
        self.embedding = torch.nn.Embedding(10, 4)
        self.denoiser = MLPDenoiser(MLPConfig(dim=6, hidden=16, layers=1, time_dim=8))

    def encode_tokens(self, ids):
        return self.embedding(ids)                                             # (B, L, 4)

    def forward(self, x_t, t, context):
        x = torch.cat([x_t, context.mean(1)[:, :4]], dim=1)                    # (B, 6)
        return self.denoiser(x, t)[:, :2]


def text_run(folder):
    """ConditionalDiffusion with token ids and caption dropout: its draws must be sliced like the noise."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = TextMLP()
    objective = ConditionalDiffusion(GaussianDiffusion(NoiseSchedule.make("linear", 20)),
                                     null_condition=torch.zeros(1, 3, dtype=torch.long), p_uncond=0.5)
    data = (torch.randn(32, 2, generator=torch.Generator().manual_seed(1)),
            torch.randint(1, 10, (32, 3), generator=torch.Generator().manual_seed(2)))
    config = TrainConfig(**{**CONFIG, "sample_every": 0})
    _, _, logs = train(model, objective, data, config, folder, {}, progress=False)
    return [r["loss"] for r in logs]


def run(folder, steps, resume=False, shard=False):
    """Train, and note what this process did: its losses, its sample calls, the checkpoints it saved."""
    from minidiff.training import loop

    saves, samples, seen = [], [], set()
    save = loop.save_checkpoint
    loop.save_checkpoint = lambda path, tensors, meta: (saves.append(meta["step"]), save(path, tensors, meta))
    try:
        model, diffusion, data = setup()
        model.register_forward_hook(lambda module, inputs, output: seen.add(inputs[0].shape[0]))
        config = TrainConfig(**{**CONFIG, "steps": steps, "shard": shard})
        _, _, logs = train(model, diffusion, data, config, folder, {"test": 1}, resume=resume,
                           on_sample=lambda ema, step: samples.append(step), progress=False)
        kinds = {type(p).__name__ for p in model.parameters()}    # FSDP turns the weights into shards (DTensor)
    finally:
        loop.save_checkpoint = save
    return {"losses": [r["loss"] for r in logs], "saves": saves, "samples": samples, "examples": sorted(seen),
            "weights": sorted(kinds)}


def worker(rank: int, port: int, root: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    assert distributed.init_from_environment()
    try:
        report = {"straight": run(f"{root}/straight", 4), "first": run(f"{root}/split", 2),
                  "resumed": run(f"{root}/split", 4, resume=True), "world": distributed.world_size(),
                  "sharded": run(f"{root}/sharded", 2, shard=True),
                  "sharded_resumed": run(f"{root}/sharded", 4, resume=True, shard=True),
                  "text": text_run(f"{root}/text")}
        with open(f"{root}/rank{rank}.json", "w") as f:
            json.dump(report, f)
    finally:
        distributed.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    mp.spawn(worker, args=(free_port(), str(root)), nprocs=2, join=True)
    return root, [json.loads((root / f"rank{r}.json").read_text()) for r in range(2)]


def test_two_processes_follow_the_one_process_run(two_processes, tmp_path):
    root, ranks = two_processes
    threads = torch.get_num_threads()
    single = run(tmp_path / "single", 4)
    torch.set_num_threads(threads)
    assert ranks[0]["world"] == 2
    assert single["examples"] == [8] and ranks[0]["straight"]["examples"] == ranks[1]["straight"]["examples"] == [4]
    for report in ranks:   # every process logs the mean loss over both
        assert report["straight"]["losses"] == pytest.approx(single["losses"], abs=1e-5)
    assert single["losses"][0] != single["losses"][-1]            # it trained: the comparison can fail
    a, _ = load_checkpoint(tmp_path / "single" / "checkpoint.safetensors")
    b, meta = load_checkpoint(root / "straight" / "checkpoint.safetensors")
    assert meta["step"] == 4 and a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key].float(), b[key].float(), atol=1e-5), key
    logged = [json.loads(line)["loss"] for line in (root / "straight" / "log.jsonl").read_text().splitlines()]
    assert logged == pytest.approx(single["losses"], abs=1e-5)      # one line per step: rank 1 wrote none


def test_only_rank_0_writes(two_processes):
    _, ranks = two_processes
    assert ranks[0]["straight"]["saves"] == [2, 4] and ranks[0]["straight"]["samples"] == [1, 2, 3]
    assert ranks[1]["straight"]["saves"] == [] and ranks[1]["straight"]["samples"] == []


def test_two_processes_resume(two_processes):
    root, ranks = two_processes
    for report in ranks:
        assert report["first"]["losses"] + report["resumed"]["losses"] == pytest.approx(
            report["straight"]["losses"], abs=1e-6)
    a, _ = load_checkpoint(root / "straight" / "checkpoint.safetensors")
    b, meta = load_checkpoint(root / "split" / "checkpoint.safetensors")
    assert meta["step"] == 4
    for key in a:
        assert torch.allclose(a[key].float(), b[key].float(), atol=1e-6), key
    steps = [json.loads(line)["step"] for line in (root / "split" / "log.jsonl").read_text().splitlines()]
    assert steps == [0, 1, 2, 3]


def test_one_process_is_a_world_of_one(monkeypatch):
    for name in distributed.ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)
    assert not distributed.init_from_environment()
    assert (distributed.rank(), distributed.world_size(), distributed.is_main()) == (0, 1, True)
    value = torch.tensor([1.5])
    assert distributed.all_reduce_mean(value) is value
    assert distributed.shard(8) == slice(0, 8)
    distributed.barrier()


def test_objectives_that_need_the_whole_batch_are_refused(monkeypatch):
    from minidiff.training.loop import data_parallel

    class WholeBatch:
        def loss(self, model, batch, generator=None):
            return batch.sum()

    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    config = TrainConfig(batch_size=8)
    with pytest.raises(distributed.DistributedError, match="WholeBatch's loss needs every example of the batch"):
        data_parallel(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2), WholeBatch(), config, torch.device("cpu"))
    with pytest.raises(distributed.DistributedError, match="batch_size=9 does not split evenly across 2 processes"):
        data_parallel(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2), GaussianDiffusion(NoiseSchedule.make("linear", 4)),
                      TrainConfig(batch_size=9), torch.device("cpu"))


def test_sharded_training_follows_the_one_process_run(two_processes):
    """TrainConfig.shard: FSDP (fully_shard) over gloo; the checkpoint holds full tensors in the usual layout."""
    root, ranks = two_processes
    for report in ranks:
        losses = report["sharded"]["losses"] + report["sharded_resumed"]["losses"]
        assert losses == pytest.approx(report["straight"]["losses"], abs=1e-5)
    assert ranks[0]["sharded"]["weights"] == ["DTensor"] and ranks[0]["straight"]["weights"] == ["Parameter"]
    assert ranks[0]["sharded"]["samples"] == [1] and ranks[1]["sharded"]["samples"] == []
    assert ranks[1]["sharded"]["saves"] == ranks[1]["sharded_resumed"]["saves"] == []
    a, _ = load_checkpoint(root / "straight" / "checkpoint.safetensors")
    b, meta = load_checkpoint(root / "sharded" / "checkpoint.safetensors")
    assert meta["step"] == 4 and a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key].float(), b[key].float(), atol=1e-5), key


def test_a_text_encoder_trained_with_the_denoiser_follows_the_one_process_run(two_processes, tmp_path):
    root, ranks = two_processes
    threads = torch.get_num_threads()
    single = text_run(tmp_path / "text")
    torch.set_num_threads(threads)
    assert single[0] != single[-1]
    for report in ranks:
        assert report["text"] == pytest.approx(single, abs=1e-5)
    a, _ = load_checkpoint(tmp_path / "text" / "checkpoint.safetensors")
    b, _ = load_checkpoint(root / "text" / "checkpoint.safetensors")
    for key in a:
        assert torch.allclose(a[key].float(), b[key].float(), atol=1e-5), key
