"""How a step is taken: one plain process, DDP over several, or DeepSpeed ZeRO-2.

All engines share the optimisation recipe: AdamW (weight decay on matrices only, not on
biases and norms), linear warm-up then cosine decay (transformers' schedule), gradient
clipping, and autocast in bf16/fp16 where the device supports it. A step minimises the
generative loss plus ``contrastive_weight`` times the contrastive one (MaMMUT's two passes,
when the model has the contrastive pass and the batch brings image-text pairs); with
``clip_each_loss`` each of the two gradients is clipped on its own before they are summed
(:meth:`Engine.backward_each`). They differ only in who holds which state, which is why
saving and loading the training state is theirs too.
"""

from __future__ import annotations

import json
from contextlib import nullcontext
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ..errors import PrismerError
from ..data.dataset import Batch
from ..text import IGNORE_INDEX
from ..model.prismer import part_of
from .config import TrainConfig
from .distributed import Distributed, ensure_process_group
from .state import load_pickled_state, load_training_state, read_extra, save_training_state

DEEPSPEED_TAG = "deepspeed"


def choose_precision(requested: str, device: torch.device) -> torch.dtype:
    """``auto``: bf16 on GPUs that have it, fp16 on other GPUs, fp32 on the CPU: bf16 autocast
    is slower than fp32 on CPUs without bf16 instructions; on one with AVX-512 BF16 it measured
    1.4-1.9x faster and kept the demo's accuracy (docs/benchmarks.md), so ask for it there."""
    if requested == "auto":
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if requested == "fp16" and device.type != "cuda":
        raise PrismerError("--precision fp16 needs a GPU; use bf16 or fp32 on the CPU")
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[requested]


def parameter_groups(model: nn.Module, weight_decay: float, lr_scales: Mapping[str, float] | None = None) -> list[dict[str, Any]]:
    """Trainable parameters, with weight decay on weight matrices only (as GPT-2/nanoGPT), and
    one group per learning-rate scale: ``lr_scales`` maps a model part (``vision.backbone``) to
    a factor of the base rate; each group records its factor as ``lr_scale``."""
    lr_scales = dict(lr_scales or {})
    groups: dict[tuple[float, bool], list[nn.Parameter]] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        scale = lr_scales.get(part_of(name), 1.0) if lr_scales else 1.0
        groups.setdefault((scale, parameter.ndim >= 2), []).append(parameter)
    if not groups:
        raise PrismerError("the model has no trainable parameters")
    # the base rate's groups first, so the rate logged is the one --lr sets
    order = sorted(groups, key=lambda key: (key[0] != 1.0, key[0], not key[1]))
    return [{"params": groups[key], "weight_decay": weight_decay if key[1] else 0.0, "lr_scale": key[0]} for key in order]


def make_optimizer(model: nn.Module, config: TrainConfig, device: torch.device):
    from transformers import get_cosine_schedule_with_warmup

    groups = parameter_groups(model, config.weight_decay, config.lr_scales)
    for group in groups:
        group["lr"] = config.lr * group["lr_scale"]
    # Fused kernels on GPUs and on the CPU: with torch 2.14 the fused CPU step is 4x faster than
    # the multi-tensor one (13 against 50-60 ms for the tiny spec's 10M parameters, one thread).
    optimizer = torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, 0.999), fused=device.type in ("cuda", "cpu"))
    scheduler = get_cosine_schedule_with_warmup(optimizer, min(config.warmup, config.max_steps), config.max_steps)
    return optimizer, scheduler


def base_lr(optimizer: torch.optim.Optimizer) -> float:
    """The rate of this step before any part's scale: what ``--lr`` and the schedule give."""
    group = optimizer.param_groups[0]
    return float(group["lr"]) / float(group.get("lr_scale", 1.0))


def label_tokens(labels: torch.Tensor) -> int:
    """How many tokens the loss is averaged over (the first position is never a label)."""
    return int((labels != IGNORE_INDEX).sum())


def training_losses(output, contrastive_weight: float, reconstruction_weight: float = 0.0) -> list[torch.Tensor]:
    """The generative loss (plus the pixel reconstruction's times its weight, which trains the
    same vision tokens), and the contrastive one times its weight when the model made one."""
    generative = output.loss
    if output.reconstruction_loss is not None and reconstruction_weight:
        generative = generative + reconstruction_weight * output.reconstruction_loss
    if output.contrastive_loss is None or not contrastive_weight:
        return [generative]
    return [generative, contrastive_weight * output.contrastive_loss]


def clips_each_loss(config: TrainConfig, contrastive_weight: float) -> bool:
    """Whether a step with both passes clips each loss's gradient on its own (the run asked
    for it, clips at all, and trains the contrastive loss)."""
    return config.clip_each_loss and config.grad_clip > 0 and bool(contrastive_weight)


def clip_each_and_sum(
    losses: list[torch.Tensor],
    parameters: list[nn.Parameter],
    max_norm: float,
    scale: float = 1.0,
    reduce: Callable[[list[torch.Tensor | None]], list[torch.Tensor | None]] = lambda grads: grads,
) -> None:
    """Each loss's gradient clipped to ``max_norm`` on its own, then summed into ``.grad``.

    With one clip over the summed gradient, a spike in the contrastive gradient (the image
    pooler's, 8-22 times the clip in the demo's early steps) shrank that step's generative
    update and swelled AdamW's second moments of the shared weights for long after. Clipped
    apart, neither loss can take the other's share: on the demo's PrismerZ recipe the
    generative loss then falls as without the contrastive pass (docs/benchmarks.md, "The
    contrastive pass in the demo"). It costs a second backward pass through the layers the
    losses share. ``scale`` is a loss scaler's: gradients stay
    multiplied by it, so its overflow check and unscaling work as with one loss. ``reduce``
    turns one loss's local gradients into the ones the optimiser should see (DDP: the average).
    """
    summed: list[torch.Tensor | None] = [None] * len(parameters)
    for index, loss in enumerate(losses):
        # backward() rather than autograd.grad: module hooks (the FLOP counter's) support only it
        for parameter in parameters:
            parameter.grad = None
        (loss * scale).backward(retain_graph=index < len(losses) - 1)
        grads = reduce([parameter.grad for parameter in parameters])
        present = [g for g in grads if g is not None]
        if not present:
            continue
        factor = (max_norm / (torch.nn.utils.get_total_norm(present) / scale + 1e-6)).clamp(max=1.0)
        for i, grad in enumerate(grads):
            if grad is not None:
                summed[i] = grad * factor if summed[i] is None else summed[i] + grad * factor
    for parameter, grad in zip(parameters, summed):
        parameter.grad = grad


class Engine:
    """Common surface: ``step``, ``evaluate``, ``save_state``/``load_state``, ``model``."""

    name = "plain"

    def __init__(self, model: nn.Module, config: TrainConfig, ctx: Distributed) -> None:
        self.config, self.ctx = config, ctx
        self.dtype = choose_precision(config.precision, ctx.device)
        self.model = model.to(ctx.device)
        self.optimizer, self.scheduler = make_optimizer(self.model, config, ctx.device)
        self.scaler = torch.amp.GradScaler(ctx.device.type, enabled=self.dtype == torch.float16)
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.wrapped: nn.Module = self.model
        self.contrastive_weight = config.contrastive_weight_for(model.spec)
        #: Whether a step with both passes clips each loss's gradient on its own (backward_each).
        self.clips_each_loss = clips_each_loss(config, self.contrastive_weight)
        #: The contrastive loss of the last step (None: the step had none).
        self.last_contrastive: float | None = None
        #: This process's pixel-reconstruction loss of the last step (None: the model has none).
        self.last_reconstruction: float | None = None

    def losses(self, output) -> list[torch.Tensor]:
        """What a step minimises (:func:`training_losses`); the contrastive loss is kept in
        ``last_contrastive``, and the step itself reports the generative loss, comparable with
        a run without the contrastive pass."""
        uses_contrastive = output.contrastive_loss is not None and bool(self.contrastive_weight)
        self.last_contrastive = float(output.contrastive_loss.detach().float()) if uses_contrastive else None
        reconstruction = output.reconstruction_loss
        self.last_reconstruction = float(reconstruction.detach().float()) if reconstruction is not None else None
        return training_losses(output, self.contrastive_weight, self.model.spec.reconstruction.weight)

    def autocast(self):
        if self.dtype == torch.float32:
            return nullcontext()
        return torch.autocast(self.ctx.device.type, dtype=self.dtype)

    def forward(self, module: nn.Module, batch: Batch):
        with self.autocast():
            return module(**batch.arguments())

    def step(self, batch: Batch) -> float:
        """One optimisation step; returns this process's generative loss."""
        self.wrapped.train()
        batch = batch.to(self.ctx.device)
        each = self.clips_each_loss and batch.pairs is not None
        with self.unsynced() if each else nullcontext():
            output = self.forward(self.wrapped, batch)
        losses = self.losses(output)
        self.optimizer.zero_grad(set_to_none=True)
        if each:
            self.backward_each(losses)
        else:
            self.scaler.scale(sum(losses)).backward()
            if self.config.grad_clip > 0:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self.trainable, self.config.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return float(output.loss.detach())

    def backward_each(self, losses: list[torch.Tensor]) -> None:
        """:func:`clip_each_and_sum` with this engine's loss scale and reduction."""
        scale = self.scaler.get_scale() if self.scaler.is_enabled() else 1.0
        clip_each_and_sum(losses, self.trainable, self.config.grad_clip, scale, self.reduce)

    def unsynced(self):
        """Where the forward of a :meth:`backward_each` step runs (DDP: without its reduction)."""
        return nullcontext()

    def reduce(self, grads: list[torch.Tensor | None]) -> list[torch.Tensor | None]:
        """One loss's gradients as the optimiser should see them (one process: as they are)."""
        return grads

    @torch.no_grad()
    def evaluate(self, batch: Batch) -> tuple[float, int]:
        """(summed loss, token count) of a batch, for a token-weighted mean over many."""
        self.model.eval()
        batch = batch.to(self.ctx.device)
        loss = self.forward(self.model, batch).loss
        tokens = label_tokens(batch.labels)
        return float(loss) * tokens, tokens

    @property
    def lr(self) -> float:
        return base_lr(self.optimizer)

    def save_state(self, folder: Path, extra: dict[str, Any]) -> None:
        """Write the training state into ``folder`` (the main process writes; others wait)."""
        if self.ctx.is_main:
            save_training_state(folder, self.optimizer, self.scheduler, self.scaler, extra)

    def load_state(self, folder: Path) -> dict[str, Any]:
        return load_training_state(folder, self.optimizer, self.scheduler, self.scaler)

    def close(self) -> None:
        """Let go of what holds the process group (DDP's reducer), while the group is alive."""
        self.wrapped = self.model


class DDPEngine(Engine):
    """Data parallel over torchrun's processes: gradients are averaged in backward."""

    name = "ddp"

    def __init__(self, model: nn.Module, config: TrainConfig, ctx: Distributed) -> None:
        super().__init__(model, config, ctx)
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        self.wrapped = DistributedDataParallel(self.model, device_ids=device_ids, find_unused_parameters=True)

    def unsynced(self):
        """DDP reduces in the backward pass it hooks; :meth:`backward_each` reduces itself."""
        return self.wrapped.no_sync()

    @torch.no_grad()
    def reduce(self, grads: list[torch.Tensor | None]) -> list[torch.Tensor | None]:
        """The processes' average of one loss's gradients, as DDP would make it (one
        all-reduce; a weight this process's batch did not reach counts as a zero gradient)."""
        full = [g if g is not None else torch.zeros_like(p) for g, p in zip(grads, self.trainable)]
        flat = torch.cat([g.reshape(-1) for g in full])
        dist.all_reduce(flat)
        flat /= self.ctx.world_size
        return [part.view_as(g) for part, g in zip(flat.split([g.numel() for g in full]), full)]


class DeepSpeedEngine(Engine):
    """DeepSpeed ZeRO stage 2: optimizer state and gradients are partitioned across processes.

    The config comes from ``specs/deepspeed_zero2.json`` (or ``--deepspeed-config``); batch
    size, clipping and precision are filled in from the run's settings so both agree.
    """

    name = "deepspeed"

    def __init__(self, model: nn.Module, config: TrainConfig, ctx: Distributed) -> None:
        import deepspeed

        self.config, self.ctx = config, ctx
        ensure_process_group(ctx)  # one plain process too (`prismer train --device cuda` picks DeepSpeed)
        self.dtype = choose_precision(config.precision, ctx.device)
        model = model.to(ctx.device)
        optimizer, scheduler = make_optimizer(model, config, ctx.device)
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=scheduler, config=self.deepspeed_config(),
        )
        self.model = self.engine.module
        self.wrapped = self.engine
        self.scaler = None
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.contrastive_weight = config.contrastive_weight_for(model.spec)
        #: Not implemented here: DeepSpeed reduces and clips the gradient of the one loss it is
        #: given; the trainer says so when the run asked for it (``clip_each_loss``).
        self.clips_each_loss = False
        self.last_contrastive = None
        self.last_reconstruction = None

    def deepspeed_config(self) -> dict[str, Any]:
        from ..specs import data_file

        path = Path(self.config.deepspeed_config) if self.config.deepspeed_config else data_file("deepspeed_zero2.json")
        try:
            ds = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise PrismerError(f"DeepSpeed config {path} is unreadable: {exc}") from None
        ds.pop("train_batch_size", None)
        ds["train_micro_batch_size_per_gpu"] = self.config.batch_size
        ds["gradient_accumulation_steps"] = 1
        ds["gradient_clipping"] = self.config.grad_clip
        ds["bf16"] = {**ds.get("bf16", {}), "enabled": self.dtype == torch.bfloat16}
        ds["fp16"] = {**ds.get("fp16", {}), "enabled": self.dtype == torch.float16}
        ds["zero_allow_untested_optimizer"] = True  # our AdamW, not DeepSpeed's compiled one
        return ds

    def autocast(self):
        return nullcontext()  # DeepSpeed casts the model itself; inputs are cast in step()

    def step(self, batch: Batch) -> float:
        self.engine.train()
        batch = batch.to(self.ctx.device, self.dtype if self.dtype != torch.float32 else None)
        output = self.engine(**batch.arguments())
        self.engine.backward(sum(self.losses(output)))
        self.engine.step()
        return float(output.loss.detach().float())

    @torch.no_grad()
    def evaluate(self, batch: Batch) -> tuple[float, int]:
        self.engine.eval()
        batch = batch.to(self.ctx.device, self.dtype if self.dtype != torch.float32 else None)
        loss = self.engine(**{**batch.arguments(), "pairs": None}).loss
        tokens = label_tokens(batch.labels)
        return float(loss.float()) * tokens, tokens

    @property
    def lr(self) -> float:
        return base_lr(self.optimizer)

    def save_state(self, folder: Path, extra: dict[str, Any]) -> None:
        """Every process writes its optimizer partition; the main one adds the numbers."""
        self.engine.save_checkpoint(str(folder), tag=DEEPSPEED_TAG, exclude_frozen_parameters=True)
        if self.ctx.is_main:
            from ..atomic import write_json_atomic

            write_json_atomic(folder / "trainer.json", {"engine": "deepspeed", **extra})

    def load_state(self, folder: Path) -> dict[str, Any]:
        # DeepSpeed's own loader unpickles with weights_only=False; every file goes through ours.
        self.engine.checkpoint_engine = _WeightsOnlyLoading(self.engine.checkpoint_engine)
        path, _ = self.engine.load_checkpoint(str(folder), tag=DEEPSPEED_TAG, load_module_strict=False)
        if path is None:
            raise PrismerError(f"no DeepSpeed state in {folder}: was this run trained with another engine?")
        return read_extra(folder)

    def close(self) -> None:
        """DeepSpeed's own teardown. Until it runs, the engine keeps automatic garbage collection
        off and stays alive in reference cycles (its hooks hold it), with the process group's
        gloo threads: left to interpreter shutdown, after the group was destroyed, a run
        could abort there ("terminate called without an active exception", seen in CI)."""
        self.engine.destroy()
        super().close()


class _WeightsOnlyLoading:
    """A DeepSpeed checkpoint engine that reads files with :func:`load_pickled_state`
    (``weights_only=True``) and leaves everything else to the engine it wraps."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def load(self, path: str, map_location: Any = None) -> Any:
        return load_pickled_state(path, map_location)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


ENGINES = {"plain": Engine, "ddp": DDPEngine, "deepspeed": DeepSpeedEngine}


def make_engine(name: str, model: nn.Module, config: TrainConfig, ctx: Distributed) -> Engine:
    return ENGINES[name](model, config, ctx)
