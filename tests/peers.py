"""Other projects' code as test-only references."""

import importlib.util

import pytest


def torchtune_module(relative_path: str):
    """A module of torchtune loaded from its file: the package's __init__ needs torchao, which the modules these
    tests use do not (torchtune is installed without its dependencies, see the Makefile)."""
    spec = importlib.util.find_spec("torchtune")
    if spec is None:
        pytest.skip("torchtune is not installed (the Makefile installs it with --no-deps)")
    path = f"{spec.submodule_search_locations[0]}/{relative_path}"
    module_spec = importlib.util.spec_from_file_location(f"torchtune_{relative_path.replace('/', '_')}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module
