"""Continuing a run (train.resume): which checkpoint, and, before training, refusals of one that cannot continue."""

from __future__ import annotations

from pathlib import Path

import torch

from lyricist.training.module import LitLanguageModel


def resolve_resume(resume: str | None, output_dir: Path) -> str | None:
    """`null`: start afresh; `auto`: output_dir's last.ckpt if there is one; a path: that checkpoint (it must exist)."""
    if not resume:
        return None
    if resume == "auto":
        last = output_dir / "checkpoints" / "last.ckpt"
        return str(last) if last.is_file() else None
    if not Path(resume).is_file():
        raise FileNotFoundError(f"train.resume={resume!r}: no such checkpoint; use 'auto' or "
                                "the path of a last.ckpt")
    return str(resume)


def check_resumable(path: str, module: LitLanguageModel, max_epochs: int) -> None:
    """Refuse a checkpoint of another model size or optimizer, or past trainer.max_epochs, before training,
    naming what differs (Lightning would fail with a raw `size mismatch` or `KeyError: 'momentum'`)."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    # The weight average (train.weight_averaging) exists only once averaging has started.
    found = {k: tuple(v.shape) for k, v in checkpoint.get("state_dict", {}).items() if not k.startswith("averaged.")}
    wanted = {k: tuple(v.shape) for k, v in module.state_dict().items() if not k.startswith("averaged.")}
    if differ := [f"{k}: checkpoint {found.get(k, 'absent')}, config {wanted.get(k, 'absent')}"
                  for k in sorted(found.keys() | wanted.keys()) if found.get(k) != wanted.get(k)]:
        raise ValueError(f"train.resume={path!r} holds another model than the config builds ("
                         f"{'; '.join(differ[:3])}{'; ...' if len(differ) > 3 else ''}). Resume with the "
                         "run's own model settings (its .hydra/overrides.yaml), or start afresh in another "
                         "directory")
    saved = [set(group) - {"params"} for state in checkpoint.get("optimizer_states", [])
             for group in state.get("param_groups", [])[:1]]
    probe, _ = module.optim.build([torch.zeros(1, requires_grad=True)])  # (1,): only its settings
    made = set(probe.param_groups[0]) - {"params"}
    if saved and (saved[0] ^ made) - {"initial_lr"}:  # initial_lr: added by an lr scheduler
        raise ValueError(f"train.resume={path!r} was trained with another optimizer (its settings "
                         f"{sorted(saved[0])}; optim={type(probe).__name__} has {sorted(made)}). Resume "
                         "with the run's own optim= setting, or start afresh in another directory")
    finished = checkpoint.get("epoch", -1) + 1  # its epoch is 0-based, saved at its end
    if max_epochs != -1 and max_epochs < finished:
        raise ValueError(f"train.resume={path!r} has finished {finished} epochs, more than trainer.max_epochs="
                         f"{max_epochs}: to train on, raise it above {finished}, e.g. trainer.max_epochs="
                         f"{finished + max(max_epochs, 1)}, or start afresh with train.overwrite=true")
