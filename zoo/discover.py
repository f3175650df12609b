"""Import every module of a package so its ``@register`` decorators run (one file = one component)."""

import importlib
import pkgutil


def import_submodules(package_name: str, package_path: list[str]) -> None:
    for info in pkgutil.iter_modules(package_path):
        if not info.name.startswith("_"):
            importlib.import_module(f"{package_name}.{info.name}")
