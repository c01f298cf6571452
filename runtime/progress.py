"""TensorRT's build phases as rich progress bars (IProgressMonitor)."""

from __future__ import annotations

from types import ModuleType
from typing import Any

from rich.progress import Progress


def progress_monitor(trt: ModuleType, progress: Progress) -> Any:
    """An IProgressMonitor drawing each phase as a task of `progress`, nested phases indented."""

    class RichProgressMonitor(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self.tasks: dict[str, tuple[Any, int]] = {}

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            depth = self.tasks[parent_phase][1] + 1 if parent_phase in self.tasks else 0
            task = progress.add_task("  " * depth + phase_name, total=max(num_steps, 1))
            self.tasks[phase_name] = (task, depth)

        def step_complete(self, phase_name: str, step: int) -> bool:
            if phase_name in self.tasks:
                progress.update(self.tasks[phase_name][0], completed=step + 1)
            return True  # never cancel the build

        def phase_finish(self, phase_name: str) -> None:
            task, _ = self.tasks.pop(phase_name, (None, 0))
            if task is not None:
                progress.remove_task(task)

    return RichProgressMonitor()
