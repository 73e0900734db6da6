"""The method contract as a test you can run on your own method: :func:`check_method`.

    from sweeper.testing import check_method
    from my_ssl.simsiam import SimSiam

    def test_simsiam_keeps_the_contract():
        check_method(SimSiam)

It checks what the engine relies on, on real images (scikit-learn's digits) and the engine's
own code path (the method is built by the config, exactly as a sweep builds it): the class
declares its hyperparameters and takes exactly them; the loss is finite and a few optimiser
steps, with the engine's call sequence and hooks, lower it; ``embed`` gives finite (B, D)
representations and (B, K) embeddings without gradients; ``prototypes()`` is None or (P, K);
the state dict round-trips everything the loss and the embeddings depend on; and with
``distributed=True`` two gloo processes training on halves of a batch give the single
process's loss and weights — the check that hooks and batch statistics are DDP-safe (a loss
needs its batch statistics over all ranks, e.g. lightly's ``gather_distributed=True``).

Every built-in passes the same checks (``tests/methods/test_method_contract.py``). A failed
check raises :class:`MethodContractError` (an ``AssertionError``) saying what broke.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from sweeper import distributed, registry
from sweeper.config import SweeperConfig, load_config
from sweeper.engine import Trainer
from sweeper.errors import ConfigError
from sweeper.methods import SSLMethod

__all__ = [
    "Equivalence",
    "MethodContractError",
    "check_method",
    "ddp_equivalence",
    "loss_before_after",
    "method_config",
]

BATCH = 32


class MethodContractError(AssertionError):
    """A method breaks the contract the engine relies on; the message says which part."""


def check_method(
    method: type[SSLMethod] | str,
    *,
    params: Mapping[str, Any] | None = None,
    projector: Sequence[int] = (32, 16),
    image_size: int = 8,
    steps: int = 5,
    lr: float = 1e-3,
    epoch: int = 0,
    distributed: bool = True,
) -> None:
    """Check that ``method`` (a class, or its name/import path) keeps the contract (see the
    module docstring).

    Args:
        method: The :class:`~sweeper.SSLMethod` subclass, or how a config names it.
        params: Hyperparameters overriding the class's defaults (smaller heads for a CPU test).
        projector: ``model.projector`` of the check's model.
        image_size: Side of the digits images.
        steps: AdamW steps of the "lowers the loss" check, at learning rate ``lr``.
        epoch: The epoch the hooks are told (past a method's frozen first epochs, if any).
        distributed: Also run the two-process equivalence check (spawns 2 processes).

    Raises:
        MethodContractError: What broke.
    """
    target = _target(method)
    config = method_config(target, params=params, projector=projector, image_size=image_size)
    trainer = Trainer(config, device="cpu")
    built = trainer.method
    if not isinstance(built, SSLMethod):
        raise MethodContractError(f"{target} built a {type(built).__name__}, not a sweeper.SSLMethod")
    images = trainer.data.train.images[:64]
    torch.manual_seed(0)
    views = trainer.augment(images)
    _check_loss_falls(built, views, target=target, steps=steps, lr=lr, epoch=epoch)
    _check_embed(built, images, target=target)
    _check_round_trip(config, trainer, views, images, target=target)
    if distributed:
        result = ddp_equivalence([config])[0]
        if result.problem is not None:
            raise MethodContractError(f"{target}: {result.problem}")


def method_config(
    target: str, *, params: Mapping[str, Any] | None = None, projector: Sequence[int] = (32, 16), image_size: int = 8
) -> SweeperConfig:
    """A one-trial digits config of the method ``target`` (small CNN, SGD, no oracle), as a
    sweep would build it."""
    try:
        return load_config(
            data={
                "name": "check-method",
                "data": {"image_size": image_size},
                "method": {"name": target, "params": dict(params or {})},
                "model": {"projector": list(projector)},
                # SGD: Adam's first step is lr·sign(g), which turns rounding-level gradients into
                # lr-sized weight differences; the loss and its gradients are what is compared.
                "train": {"epochs": 2, "batch_size": BATCH, "optimizer": "sgd", "lr": 0.05, "warmup_epochs": 0},
                "evaluation": {"every_n_epochs": 1, "rankme_samples": 256, "oracle": []},
                "selection": {"rule": "max"},
            }
        )
    except ConfigError as exc:
        raise MethodContractError(f"{target}: the config does not take it: {exc}") from None


def loss_before_after(
    method: SSLMethod,
    views: Sequence[torch.Tensor],
    *,
    steps: int = 5,
    lr: float = 1e-3,
    seed: int = 0,
    epoch: int = 0,
) -> tuple[float, float]:
    """Train ``steps`` AdamW steps on fixed ``views`` with the engine's call sequence
    (loss, backward, ``before_optimizer_step``, step, ``after_step``) and return the loss on
    the same views before and after (random parts of the loss seeded alike, buffers kept)."""
    method.train()
    optimizer = torch.optim.AdamW([p for p in method.parameters() if p.requires_grad], lr=lr)
    before = _measure(method, views, seed)
    for step in range(steps):
        progress = step / (steps * 10)
        torch.manual_seed(seed + step + 1)
        loss = method.training_loss(views, progress=progress)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        method.before_optimizer_step(progress=progress, epoch=epoch)
        optimizer.step()
        method.after_step(progress=progress)
    return before, _measure(method, views, seed)


@dataclass(frozen=True)
class Equivalence:
    """Two processes against one, for one config: the global batch's loss per step of the
    single process and of each rank, the state dicts after the steps, the largest weight
    difference, how far the weights moved, and what is wrong (None: nothing)."""

    losses: list[float]
    rank_losses: list[list[float]]
    state: dict[str, torch.Tensor]
    rank_states: list[dict[str, torch.Tensor]]
    max_weight_difference: float
    moved: float
    problem: str | None


def ddp_equivalence(configs: Sequence[SweeperConfig], *, steps: int = 2, tolerance: float = 1e-5) -> list[Equivalence]:
    """For each config, ``steps`` SGD steps on fixed views of a global batch, by one process
    and by two gloo processes (half the rows each, DistributedDataParallel, synchronised
    BatchNorm: the engine's data-parallel path), from the same initial weights; the losses
    and weights must agree to ``tolerance`` (relative for a loss above 1). All configs share one
    spawn of the two processes."""
    inputs, references = [], []
    for config in configs:
        views, reference = _reference(config, steps=steps)
        inputs.append((config.to_dict(), views))
        references.append(reference)
    processes = distributed.spawn(_train_on_each_process, inputs, world_size=2)
    results = []
    for index, reference in enumerate(references):
        rank_losses = [process[index]["losses"] for process in processes]
        difference = max(_max_difference(process[index]["state"], reference["state"]) for process in processes)
        moved = _max_difference(reference["initial"], reference["state"])
        problem = None
        for losses in rank_losses:
            for got, expected in zip(losses, reference["losses"], strict=True):
                # Relative to the loss, absolute below 1: a loss near 0 (SimSiam's at the start)
                # would otherwise be judged by its float32 rounding.
                if abs(got - expected) > tolerance * max(abs(expected), 1.0):
                    problem = (
                        f"2 processes give the loss {losses} where 1 process gives {reference['losses']} on the same "
                        "global batch: compute batch statistics over all ranks (e.g. lightly's gather_distributed=True)"
                    )
        if problem is None and difference > tolerance:
            problem = (
                f"after {steps} steps the weights of 2 processes differ from 1 process's by {difference:.3g}: a hook "
                "(before_optimizer_step/after_step) or a buffer update is not the same on every rank"
            )
        rank_states = [process[index]["state"] for process in processes]
        results.append(
            Equivalence(reference["losses"], rank_losses, reference["state"], rank_states, difference, moved, problem)
        )
    return results


# --------------------------------------------------------------------------- internals
def _target(method: type[SSLMethod] | str) -> str:
    if isinstance(method, str):
        try:
            return registry.resolve("method", method).target
        except ConfigError as exc:
            raise MethodContractError(str(exc)) from None
    target = f"{method.__module__}:{method.__qualname__}"
    if "<locals>" in method.__qualname__ or method.__module__ == "__main__":
        raise MethodContractError(
            f"{method!r} is defined {'in __main__' if method.__module__ == '__main__' else 'inside a function'}: "
            "define it at the top level of an importable module (the trial processes import it by name)"
        )
    for name in registry.builtin_names("method"):
        if registry.BUILTIN_METHODS[name].target == target:
            return name
    return target


def _measure(method: SSLMethod, views: Sequence[torch.Tensor], seed: int) -> float:
    """The training loss of ``views`` without changing the method (buffers restored)."""
    buffers = {name: value.clone() for name, value in method.named_buffers()}
    torch.manual_seed(seed)
    with torch.no_grad():
        loss = float(method.training_loss(views, progress=0.0))
    with torch.no_grad():
        for name, value in method.named_buffers():
            value.copy_(buffers[name])
    return loss


def _check_loss_falls(
    method: SSLMethod, views: Sequence[torch.Tensor], *, target: str, steps: int, lr: float, epoch: int
) -> None:
    if len(views) != method.num_views:
        raise MethodContractError(
            f"{target}: the augmentation gave {len(views)} views, num_views is {method.num_views}"
        )
    before, after = loss_before_after(method, views, steps=steps, lr=lr, epoch=epoch)
    if not (torch.isfinite(torch.tensor(before)) and torch.isfinite(torch.tensor(after))):
        raise MethodContractError(f"{target}: the loss is not finite ({before} before training, {after} after)")
    if not after < before:
        raise MethodContractError(
            f"{target}: {steps} AdamW steps at lr {lr} did not lower the loss on a fixed batch ({before:.6g} -> "
            f"{after:.6g}): does training_loss return the loss of the views it is given, with gradients?"
        )


def _check_embed(method: SSLMethod, images: torch.Tensor, *, target: str) -> None:
    from sweeper.data.augment import normalize

    method.eval()
    out = method.embed(normalize(images))
    if not (isinstance(out, tuple) and len(out) == 2):
        raise MethodContractError(f"{target}: embed must return (representation, embedding)")
    representation, embedding = out
    expected = {
        "representation": (representation, method.representation_dim),
        "embedding": (embedding, method.embedding_dim),
    }
    for what, (tensor, dim) in expected.items():
        if tuple(tensor.shape) != (len(images), dim):
            raise MethodContractError(
                f"{target}: embed's {what} is {tuple(tensor.shape)}, expected ({len(images)}, {dim})"
            )
        if not torch.isfinite(tensor).all():
            raise MethodContractError(f"{target}: embed's {what} is not finite")
        if tensor.requires_grad:
            raise MethodContractError(f"{target}: embed's {what} requires grad: decorate embed with @torch.no_grad()")
    if not embedding.std(dim=0).max() > 0:
        raise MethodContractError(f"{target}: embed gives the same embedding for every image")
    prototypes = method.prototypes()
    if prototypes is not None and (prototypes.ndim != 2 or prototypes.shape[1] != method.embedding_dim):
        raise MethodContractError(
            f"{target}: prototypes() is {tuple(prototypes.shape)}, expected (P, {method.embedding_dim}) or None"
        )


def _check_round_trip(
    config: SweeperConfig, trainer: Trainer, views: Sequence[torch.Tensor], images: torch.Tensor, *, target: str
) -> None:
    from sweeper.data.augment import normalize

    trained = trainer.method
    restored = Trainer(config.with_overrides({"seed": config.seed + 1}), data=trainer.data, device="cpu").method
    restored.load_state_dict(trained.state_dict())
    for key, value in trained.state_dict().items():
        if not torch.equal(restored.state_dict()[key], value):
            raise MethodContractError(f"{target}: state dict entry {key!r} does not round-trip")
    losses = []
    for method in (trained, restored):
        losses.append(_measure(method.train(), views, seed=3))
    if losses[0] != losses[1]:
        raise MethodContractError(
            f"{target}: the loss after load_state_dict differs ({losses[0]} vs {losses[1]}): keep every tensor the "
            "loss depends on (EMA teachers, centres, queues) in the state dict (parameters or buffers)"
        )
    embeddings = [method.eval().embed(normalize(images)) for method in (trained, restored)]
    for a, b in zip(*embeddings, strict=True):
        if not torch.equal(a, b):
            raise MethodContractError(f"{target}: embed after load_state_dict differs")


def _steps(trainer: Trainer, views_per_step: list[list[torch.Tensor]]) -> list[float]:
    """The global batch's loss of each step (this process's rows of ``views_per_step``)."""
    trainer.method.train()
    losses = []
    for step, views in enumerate(views_per_step):
        rows = distributed.shard(len(views[0]))
        loss = trainer.train_step([view[rows] for view in views], progress=step / trainer.total_steps)
        losses.append(float(distributed.all_reduce_(loss.detach().clone())) / distributed.world_size())
    return losses


def _state(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {key: value.detach().clone() for key, value in trainer.method.state_dict().items()}


def _reference(config: SweeperConfig, *, steps: int) -> tuple[list[list[torch.Tensor]], dict[str, Any]]:
    """Fixed views of the first ``steps`` batches, and one process's losses and final state."""
    trainer = Trainer(config, device="cpu")
    after_init = torch.get_rng_state()  # what rank 0's trainer starts from (a method may draw from it)
    images = trainer.data.train.images
    torch.manual_seed(123)
    views = [trainer.augment(images[step * BATCH : (step + 1) * BATCH]) for step in range(steps)]
    initial = _state(trainer)
    torch.set_rng_state(after_init)
    losses = _steps(trainer, views)
    return views, {"losses": losses, "initial": initial, "state": _state(trainer)}


def _train_on_each_process(inputs: list[tuple[dict[str, Any], list[list[torch.Tensor]]]]) -> list[dict[str, Any]]:
    out = []
    for config_data, views in inputs:
        trainer = Trainer(load_config(data=config_data), device="cpu")
        out.append({"losses": _steps(trainer, views), "state": _state(trainer)})
    return out


def _max_difference(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> float:
    """The largest absolute difference of the floating-point entries of two state dicts
    (SwAV's queue excluded: each rank holds its own part of it)."""
    differences = [
        float((a[key] - value).abs().max())
        for key, value in b.items()
        if key != "queue" and value.is_floating_point() and value.numel()
    ]
    return max(differences, default=0.0)
