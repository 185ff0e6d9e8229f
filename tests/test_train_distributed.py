"""Two CPU processes under torchrun: plain data parallel (DDP over gloo) and DeepSpeed ZeRO-2.

DeepSpeed compiles a small C++ extension on its first start (about a minute); it is cached
under the repository's .cache/ (git-ignored) so later runs skip that.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from prismer_core.demo import generate_demo
from prismer_core.model import Prismer

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "TORCH_EXTENSIONS_DIR": str(REPO / ".cache" / "torch_extensions"), "OMP_NUM_THREADS": "1"}
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]

#: One step per engine, taken by each of two processes through the public training pieces;
#: rank 0 writes what each process saw and its parameters' fingerprint.
STEP_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import torch
    import torch.distributed as dist
    from prismer_core.data.dataset import Collator, TrainingData
    from prismer_core.data.encoding import SampleEncoder
    from prismer_core.data.manifest import load_data
    from prismer_core.data.transforms import PairedTransform
    from prismer_core.model import build_model
    from prismer_core.specs import load_spec
    from prismer_core.train.config import TrainConfig
    from prismer_core.train.distributed import setup_distributed
    from prismer_core.train.engine import make_engine
    from prismer_core.train.sampler import StepSampler
    from prismer_core.text import TextCodec

    manifest, out = sys.argv[1:3]
    ctx = setup_distributed("cpu")
    samples = load_data(manifest, ("caption", "vqa")).samples
    report = {}
    # the engines with the generative pass alone and with MaMMUT's two passes (the DeepSpeed
    # engine's generative-only steps are the CLI test's below)
    for engine_name, contrastive in (("ddp", False), ("ddp", True), ("deepspeed", True)):
        torch.manual_seed(100 + ctx.rank)  # each process starts from other weights
        model = build_model(load_spec("tiny", {"image_size": 32, "contrastive.enabled": contrastive}), {})
        config = TrainConfig(data=[manifest], out="-", batch_size=4, max_steps=2, lr=1e-3, engine=engine_name).validate()
        engine = make_engine(engine_name, model, config, ctx)

        def fingerprint():
            flat = torch.cat([p.detach().double().flatten() for p in engine.model.parameters()])
            return [flat.sum().item(), flat.square().sum().item(), (flat * torch.arange(len(flat), dtype=torch.float64)).sum().item()]

        data = TrainingData(samples, SampleEncoder(PairedTransform(32), model.image_mean, model.image_std, {}), describe=contrastive)
        collate = Collator(TextCodec.for_decoder(model.spec.decoder), contrastive=contrastive)
        sampler = StepSampler(len(samples), 4, 2, seed=0, rank=ctx.rank, world_size=ctx.world_size)
        start, seen = fingerprint(), []
        for step in range(2):
            refs = sampler.batch(step)
            seen += [index for index, _ in refs]
            engine.step(collate([data[ref] for ref in refs]))
        mine = {"seen": seen, "start": start, "end": fingerprint(), "contrastive": engine.last_contrastive}
        everyone = [None] * ctx.world_size
        dist.all_gather_object(everyone, mine)
        report[f"{engine_name}{'+contrastive' if contrastive else ''}"] = everyone
        engine.close()  # as the trainer does, before the process group goes
    if ctx.rank == 0:
        with open(out, "w") as handle:
            json.dump(report, handle)
    ctx.close()
    """
)


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    generate_demo(out, n=24, seed=2, size=64)
    return out


def test_two_processes_see_different_data_and_keep_equal_parameters(demo, tmp_path):
    script = tmp_path / "step.py"
    script.write_text(STEP_SCRIPT)
    out = tmp_path / "report.json"
    result = subprocess.run([*TORCHRUN, str(script), str(demo / "train.jsonl"), str(out)],
                            capture_output=True, text=True, env=ENV, timeout=500)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    for engine, (rank0, rank1) in report.items():
        assert not set(rank0["seen"]) & set(rank1["seen"]), f"{engine}: the processes shared samples"
        assert len(rank0["seen"]) == len(rank1["seen"]) == 8
        assert rank0["end"] == rank1["end"], f"{engine}: parameters differ after synchronised steps"
        assert rank0["end"] != rank0["start"], f"{engine}: the steps changed nothing"
        if engine.endswith("+contrastive"):  # one loss over the global batch, the same on both
            assert rank0["contrastive"] is not None and rank0["contrastive"] == pytest.approx(rank1["contrastive"], rel=1e-6)
        else:
            assert rank0["contrastive"] is None


def test_deepspeed_zero2_training_and_resume_under_torchrun(demo, tmp_path):
    run = tmp_path / "run"
    args = [*TORCHRUN, "-m", "prismer_cli.main", "train", "--data", demo / "train.jsonl", "--task", "caption,vqa",
            "--out", run, "--engine", "deepspeed", "--checkpoint-every", "2", "--workers", "1",
            "--spec", "tiny", "--spec-set", "image_size=32", "--spec-set", "contrastive.enabled=true", "--batch-size", "4"]
    first = subprocess.run(list(map(str, [*args, "--max-steps", "4"])), capture_output=True, text=True, env=ENV, timeout=500)
    assert first.returncode == 0, first.stderr[-3000:]
    assert first.stdout.count("trained to step 4") == 1  # the main process reports for both

    record = json.loads((run / "run.json").read_text())
    assert record["engine"] == "deepspeed" and record["world_size"] == 2
    assert sorted(p.name for p in (run / "checkpoints" / "step-000004" / "trainer" / "deepspeed").iterdir()) == [
        "mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt", "zero_pp_rank_1_mp_rank_00_optim_states.pt"]

    second = subprocess.run(list(map(str, [*args, "--max-steps", "6", "--resume"])), capture_output=True, text=True, env=ENV, timeout=500)
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"resuming {run} from step 4" in second.stderr
    losses = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in losses] == [1, 2, 3, 4, 5, 6]
    assert all(r["contrastive_loss"] > 0 for r in losses)  # both passes trained across the two processes
    model = Prismer.from_pretrained(run / "checkpoints" / "step-000006", experts={})
    assert model.image_size == 32


#: MaMMUT's contrastive loss under DDP: two processes holding half a batch each, against one
#: process holding all of it. Every image has rows on both processes (a caption row on one, a
#: question row on the other), so each text's negatives and its image's other rows cross over.
CONTRASTIVE_SCRIPT = textwrap.dedent(
    """
    import sys
    import torch
    from safetensors.torch import save_file
    from prismer_core.data.dataset import Collator, TrainingData
    from prismer_core.data.encoding import SampleEncoder
    from prismer_core.data.manifest import load_data
    from prismer_core.data.transforms import PairedTransform
    from prismer_core.model import build_model
    from prismer_core.specs import load_spec
    from prismer_core.text import TextCodec
    from prismer_core.train.distributed import setup_distributed

    manifest, out = sys.argv[1:3]
    ctx = setup_distributed("cpu")
    samples = load_data(manifest, ("caption", "vqa")).samples
    first = {}
    for index, sample in enumerate(samples):
        first.setdefault((sample.image.source, sample.task), index)
    images = list(dict.fromkeys(sample.image.source for sample in samples))[:4]
    caption, question = [first[(i, "caption")] for i in images], [first[(i, "vqa")] for i in images]
    rows = [caption[0], caption[1], question[2], question[3], question[0], question[1], caption[2], caption[3]]
    mine = rows[ctx.rank * 8 // ctx.world_size : (ctx.rank + 1) * 8 // ctx.world_size]

    # the two passes only (no pixel reconstruction): the loss sums below name every output
    spec = load_spec("tiny", {"image_size": 32, "contrastive.enabled": True, "reconstruction.weight": 0.0})
    torch.manual_seed(0)
    model = build_model(spec, {}).eval()  # no dropout
    data = TrainingData(samples, SampleEncoder(PairedTransform(32), model.image_mean, model.image_std, {}), describe=True)
    batch = Collator(TextCodec.for_decoder(model.spec.decoder), contrastive=True)([data[(i, i)] for i in mine])
    wrapped = model
    if ctx.active:
        from torch.nn.parallel import DistributedDataParallel
        wrapped = DistributedDataParallel(model, find_unused_parameters=True)
    output = wrapped(**batch.arguments())
    # DDP averages the processes' gradients. The zero-weighted generative loss is part of what
    # is backpropagated because DDP reduces a bucket only once all its parameters that the
    # forward's outputs reach have a gradient: backpropagating the contrastive loss alone left
    # the buckets holding the cross-attention (reached only by the generative loss) unreduced,
    # and with them every parameter sharing those buckets kept its local gradient. Training
    # backpropagates the sum of the two losses, as here.
    (output.contrastive_loss + 0 * output.loss).backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    # A training step with both passes clips each loss's gradient on its own, then sums them.
    # The reference: the gradients DDP itself averages for each loss (a forward each), clipped.
    model.zero_grad()
    output = wrapped(**batch.arguments())
    (output.loss + 0 * output.contrastive_loss).backward()
    generative = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    def clipped(g, limit=0.5):
        factor = min(1.0, limit / float(torch.nn.utils.get_total_norm(list(g.values()))))
        return {name: x * factor for name, x in g.items()}
    a, b = clipped(generative), clipped(grads)
    reference = {"ref." + name: a.get(name, 0) + b.get(name, 0) for name in {**a, **b}}
    from prismer_core.train.config import TrainConfig
    from prismer_core.train.engine import make_engine
    torch.manual_seed(0)
    fresh = build_model(spec, {}).eval()
    config = TrainConfig(data=[manifest], out="-", grad_clip=0.5, engine="ddp" if ctx.active else "plain")
    engine = make_engine(config.engine, fresh, config, ctx)
    with engine.unsynced():
        losses = engine.losses(engine.forward(engine.wrapped, batch))
    engine.backward_each(losses)
    each = {"each." + name: p.grad for name, p in fresh.named_parameters() if p.grad is not None}
    if ctx.rank == 0:
        save_file({"loss": output.contrastive_loss.detach().reshape(1), **grads, **reference, **each}, out)
    engine.close()
    del wrapped  # DDP's reducer holds the group: gone before it
    ctx.close()
    """
)


def test_contrastive_negatives_come_from_the_global_batch_and_ddp_gets_its_exact_gradient(demo, tmp_path):
    from safetensors.torch import load_file

    script = tmp_path / "contrastive.py"
    script.write_text(CONTRASTIVE_SCRIPT)
    manifest = str(demo / "train.jsonl")
    two, one = tmp_path / "two.safetensors", tmp_path / "one.safetensors"
    result = subprocess.run([*TORCHRUN, str(script), manifest, str(two)], capture_output=True, text=True, env=ENV, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    result = subprocess.run([sys.executable, str(script), manifest, str(one)], capture_output=True, text=True, env=ENV, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    distributed, single = load_file(two), load_file(one)
    # the same loss: each process's texts met all eight images (with its half only: another number)
    assert torch.allclose(distributed["loss"], single["loss"], atol=1e-5)
    assert sorted(distributed) == sorted(single)
    for name, grad in single.items():
        if not name.startswith(("ref.", "each.")):
            assert torch.allclose(distributed[name], grad, atol=1e-6, rtol=1e-4), f"{name}: gradient differs from one process's"
    assert single["contrastive.image_proj.weight"].abs().sum() > 0 and single["decoder.embed.tokens.weight"].abs().sum() > 0
    # Each loss clipped on its own: what the engines put in .grad is the sum of the two losses'
    # (averaged) gradients, each clipped. (The generative gradient itself differs between one and
    # two processes: DDP averages the processes' per-token means, which weights tokens by process.)
    for grads in (single, distributed):
        each = {name[5:]: g for name, g in grads.items() if name.startswith("each.")}
        assert sorted(each) == sorted(name[4:] for name in grads if name.startswith("ref."))
        for name, g in each.items():
            assert torch.allclose(g, grads["ref." + name], atol=1e-7, rtol=1e-4), f"{name}: not the sum of the clipped gradients"
    assert single["each.decoder.layers.0.cross_attn.query.weight"].abs().sum() > 0


def test_deepspeed_runs_in_one_plain_process_and_leaves_no_group_behind(demo, tmp_path, monkeypatch):
    # `prismer train --device cuda` picks DeepSpeed without torchrun; DeepSpeed then wants a
    # process group and torchrun's variables, and looked for MPI (mpi4py) without them.
    import torch.distributed as dist

    from prismer_core.train.config import TrainConfig
    from prismer_core.train.trainer import train

    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", ENV["TORCH_EXTENSIONS_DIR"])
    config = TrainConfig(data=[str(demo / "train.jsonl")], out=str(tmp_path / "run"), engine="deepspeed", spec="tiny",
                         spec_overrides={"image_size": 32}, batch_size=4, max_steps=2, workers=0).validate()
    result = train(config, show_progress=False)
    assert result.step == 2 and json.loads((tmp_path / "run" / "run.json").read_text())["engine"] == "deepspeed"
    assert (tmp_path / "run" / "checkpoints" / "step-000002" / "trainer" / "deepspeed").is_dir()
    assert not dist.is_initialized()  # the group of one is closed with the run
    assert not {"RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"} & set(os.environ)
    # DeepSpeed's engine turns automatic garbage collection off while it lives and is kept alive
    # by its own hooks: the run destroys it, so neither outlives the run (nor the group)
    assert gc.isenabled()
    assert not [o for o in gc.get_objects() if type(o).__name__ == "DeepSpeedEngine"]
