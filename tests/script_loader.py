"""Import a repository script (scripts/, benchmarks/) in tests."""


def load_script(relpath: str, name: str | None = None):
    """Import a script of the repository (scripts/, benchmarks/) by its path, as a module."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / relpath
    spec = importlib.util.spec_from_file_location(name or path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
