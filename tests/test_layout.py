"""The package layering docs/layout.md promises: lower layers never import the trainers."""
import ast
from pathlib import Path

import posttrain

PACKAGE = Path(posttrain.__file__).parent
LOWER_LAYERS = ["data", "judges", "losses", "models", "rewards", "tools"]


def imported_modules(source: str, relative_path: Path) -> set[str]:
    """Absolute names of every module a file at ``relative_path`` (inside the package) imports,
    relative imports resolved."""
    package_parts = ("posttrain",) + relative_path.parent.parts
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package_parts[: len(package_parts) - node.level + 1] if node.level else ()
            module = ".".join(base + ((node.module,) if node.module else ()))
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def test_lower_layers_do_not_import_the_trainers_or_commands():
    offenders = []
    for layer in LOWER_LAYERS:
        for path in sorted((PACKAGE / layer).rglob("*.py")):
            if path.name == "cli.py":  # a package's command module may use anything
                continue
            imported = imported_modules(path.read_text(), path.relative_to(PACKAGE))
            bad = sorted(n for n in imported
                         if n.startswith(("posttrain.train", "posttrain.cli", "posttrain.recipes")))
            offenders += [f"{path.relative_to(PACKAGE)} imports {n}" for n in bad]
    assert not offenders, "\n".join(offenders)


def test_the_package_root_holds_only_the_command_entry_and_options():
    loose = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert loose == ["__init__.py", "cli.py", "config.py"]


def test_the_import_resolver_sees_relative_and_absolute_trainer_imports():
    # The layering check must be able to fail: both spellings of a trainer import inside data/.
    where = Path("data/probe.py")
    assert "posttrain.train.sft.SFTConfig" in imported_modules("from ..train.sft import SFTConfig\n", where)
    assert "posttrain.train.dpo" in imported_modules("import posttrain.train.dpo\n", where)
    assert "posttrain.data.sft" in imported_modules("from .sft import tokenize_sft\n", where)
