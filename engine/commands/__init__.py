"""Subcommands of ``landcover``: one module each, with ``add_arguments`` and ``run``.

Modules are imported only when their subcommand runs, so ``landcover --help`` stays fast
and never pulls in heavy dependencies.
"""

# name -> (module under landcover.engine.commands, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "create": ("create", "write an untrained model package for an architecture"),
    "info": ("info", "print a model package's metadata as JSON"),
    "segment": ("segment", "segment rasters into a class raster, polygons and an area table"),
    "evaluate": ("evaluate", "accuracy of a model on labelled images, or of a map against a "
                             "reference"),
    "benchmark": ("benchmark", "measure models or the segmentation pipeline"),
    "train": ("train", "train a model from a YAML config (PyTorch Lightning)"),
    "export": ("export", "turn a training checkpoint into a model package"),
    "prepare": ("prepare", "cut published data sets (ISPRS) into training patches"),
}
