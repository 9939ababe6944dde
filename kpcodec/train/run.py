"""`kpcodec train`: load data, resume if asked, train with a progress bar on stderr."""
from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from kpcodec.errors import UsageError
from kpcodec.scale import distributed as dd
from kpcodec.train.trainer import Trainer


def run_training(config: str, data: Path, out: Path, steps: int, resume: bool = False, recipe: str = "base",
                 threads: int = 1, landmarks: Path | None = None, val_every: int = 300,
                 checkpoint_minutes: float = 5.0, seed: int = 0, max_train_clips: int | None = None,
                 monitor_frames: int = 100, quiet: bool = False, init: Path | None = None,
                 compact: Path | None = None, log_every: int = 10, batch: int | None = None,
                 accumulate: int = 1) -> Trainer:
    """Under torchrun (WORLD_SIZE > 1) this process joins the process group and trains its share of
    each global batch (kpcodec.scale.distributed); only rank 0 prints, logs and saves."""
    if not (Path(data) / "manifest.csv").is_file():
        raise UsageError(f"{data}: no manifest.csv (expected the shared data folder)")
    joined = dd.init_from_env()
    console = Console(stderr=True, quiet=quiet or dd.rank() > 0)
    trainer = Trainer(config, data, out, recipe=recipe, seed=seed, threads=threads, landmark_dir=landmarks,
                      max_train_clips=max_train_clips, monitor_frames=monitor_frames, batch=batch,
                      accumulate=accumulate)
    if resume and trainer.resume():
        console.print(f"resumed {out} at step {trainer.step} ({_hours(trainer)})")
    elif init is not None:
        if not Path(init).is_file():
            raise UsageError(f"--init {init}: no such checkpoint")
        trainer.resume(Path(init))
        if hasattr(trainer, "initialised"):
            done, total = trainer.initialised
            console.print(f"initialised {done} of {total} tensors from {init} (another config)")
        else:
            console.print(f"started from {init} at step {trainer.step} ({_hours(trainer)})")
    elif resume:
        console.print(f"no checkpoint in {out}: starting from scratch")
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TimeRemainingColumn(), TextColumn("{task.fields[info]}")]
    with Progress(*columns, console=console, disable=quiet) as progress:
        task = progress.add_task("loading clips", total=None, info="")
        trainer.load_data(progress=lambda: progress.advance(task))
        console.print(f"{trainer.train_frames} training frames, {trainer.have_landmarks} clips with landmarks, "
                      f"device {trainer.device}, batch {trainer.recipe.batch}"
                      + (f" over {trainer.world} ranks" if trainer.world > 1 else "")
                      + (f" in {trainer.accumulate} micro-batches each" if trainer.accumulate > 1 else ""))
        progress.update(task, description="training", total=steps, completed=trainer.step)

        def report(step: int, rec: dict) -> None:
            progress.update(task, completed=step)
            if "val" in rec:
                v = rec["val"]
                console.print("val @%d: " % step + ", ".join(f"{k} {x:.4g}" for k, x in v.items()))
            else:
                progress.update(task, info=f"loss {rec['total']:.3f} spread {rec['kp_spread']:.3f} "
                                           f"{rec['s_per_step']:.2f} s/step")

        trainer.run(steps, val_every=val_every, checkpoint_minutes=checkpoint_minutes, report=report,
                    compact=compact, log_every=log_every)
    console.print(f"stopped at step {trainer.step}, {_hours(trainer)} -> {out}")
    if joined:
        dd.finish()
    return trainer


def _hours(trainer: Trainer) -> str:
    text = f"{trainer.cpu_seconds / 3600:.2f} CPU-hours"
    if trainer.accelerator_seconds:
        text += f", {trainer.accelerator_seconds / 3600:.3f} GPU-hours"
    return text
