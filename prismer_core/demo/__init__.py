"""`prismer demo`: the main job on the built-in offline default, in one package.

Modules, in the order the demo runs them: scenes (the generated data), run (label, train
twice, report), evaluation (the table of both runs on the test split, by `prismer eval`'s code).

    from prismer_core.demo import DemoSettings, run_demo
    run_demo("demo_out", DemoSettings(n=64, steps=20))
"""

from .evaluation import evaluate_demo
from .run import DemoReport, DemoSettings, run_demo
from .scenes import generate_demo, split_sizes

__all__ = ["DemoReport", "DemoSettings", "evaluate_demo", "generate_demo", "run_demo", "split_sizes"]
