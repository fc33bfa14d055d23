"""Subcommands of ``landcover``: one module each, with ``add_arguments`` and ``run``.

Modules are imported only when their subcommand runs, so ``landcover --help`` stays fast
and never pulls in heavy dependencies.
"""

# name -> (module under landcover.engine.commands, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "create": ("create", "write an untrained model package for an architecture"),
    "info": ("info", "print a model package's metadata as JSON"),
    "segment": ("segment", "segment rasters into a class raster, polygons and an area table"),
    "benchmark": ("benchmark", "measure models or the segmentation pipeline"),
}
