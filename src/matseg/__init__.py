"""matseg: which segmentation architecture to trust for your micrographs, and when to stop.

The public API (the CLI is a thin shell over the same functions)::

    import matseg
    profile = matseg.load_profile("my.json")
    plan = matseg.compile_plan(profile)             # the jobs, a dry run
    run = matseg.run(profile, out="runs")            # train, evaluate, QC, record, report
    run = matseg.Run.open("runs/my-1234abcd")        # an existing run
    data = matseg.load_dataset("examples/nasa-super.json"); data.plot(0)
    model, _ = matseg.build_model("resnet18", "unet", in_channels=1, classes=2)
    qc = matseg.TypicalityQC(extractors=["classical"]).fit(train_images, val_images)
    heat = matseg.counterfactual_heatmap(model, image, region)
    matseg.predict(run.path, ["big.tif"], out=Path("pred"))

Names are imported on first use, so ``import matseg`` stays fast.
"""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

try:
    __version__ = version("matseg")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0"

# public name -> (module, attribute)
_API = {
    "load_profile": ("matseg.profile", "load_profile"),
    "Profile": ("matseg.profile", "Profile"),
    "compile_plan": ("matseg.plan", "compile_plan"),
    "run": ("matseg.pipeline", "run"),
    "Run": ("matseg.api", "Run"),
    "load_dataset": ("matseg.datasets.load", "load_dataset"),
    "build_model": ("matseg.models", "build_model"),
    "TypicalityQC": ("matseg.qc.quality", "TypicalityQC"),
    "counterfactual_heatmap": ("matseg.explain.heatmap", "counterfactual_heatmap"),
    "explain": ("matseg.explain.run", "explain_image"),
    "ExplainOptions": ("matseg.explain.run", "ExplainOptions"),
    "predict": ("matseg.deploy.predict", "predict_inputs"),
    "PredictOptions": ("matseg.deploy.predict", "PredictOptions"),
    "UserError": ("matseg.errors", "UserError"),
}

__all__ = [
    "ExplainOptions", "PredictOptions", "Profile", "Run", "TypicalityQC", "UserError",
    "__version__", "build_model", "compile_plan", "counterfactual_heatmap", "explain",
    "load_dataset", "load_profile", "predict", "run",
]  # fmt: skip

if TYPE_CHECKING:
    from matseg.api import Run
    from matseg.datasets.load import load_dataset
    from matseg.deploy.predict import PredictOptions
    from matseg.deploy.predict import predict_inputs as predict
    from matseg.errors import UserError
    from matseg.explain.heatmap import counterfactual_heatmap
    from matseg.explain.run import ExplainOptions
    from matseg.explain.run import explain_image as explain
    from matseg.models import build_model
    from matseg.pipeline import run
    from matseg.plan import compile_plan
    from matseg.profile import Profile, load_profile
    from matseg.qc.quality import TypicalityQC


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'matseg' has no attribute {name!r}")
    module, attribute = _API[name]
    value = getattr(import_module(module), attribute)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
