"""The package's layering: each folder imports only the folders below it, so the architecture can be read
from the folder names and no low-level piece depends on the training loop or the command line."""

import ast
from pathlib import Path

import bespoke_pl

PACKAGE = Path(bespoke_pl.__file__).parent
# Lowest first. A module may import its own folder and the folders of lower rank; equal rank, different
# folder (errors / files, lora / offline) is not allowed either: they are independent. The callbacks sit
# below training so that the LightningModule can return its own (configure_callbacks); the data sit above
# diffusion because the captions are checked with the base model's tokenizer. The side products sit
# beside each other, above the trainer and below the commands: the kohya converter (it writes a fit config)
# and the tiny-base pretraining recipe (it reuses the trainer's objective, schedule and EMA).
RANKS = {
    "errors": 0,
    "files": 0,
    "pixelart": 1,
    "lora": 2,
    "offline": 2,
    "diffusion": 3,
    "data": 4,
    "callbacks": 5,
    "training": 6,
    "kohya": 7,
    "tinybases": 7,
    "commands": 8,
    "comfyui": 9,  # the ComfyUI node wraps the snap command's palette reading
}


def layer(module: str) -> str:
    """``bespoke_pl.pixelart.grid`` -> ``pixelart``; ``bespoke_pl.files`` -> ``files``."""
    return module.split(".")[1]


def imports_of(path: Path) -> list[tuple[int, str]]:
    """Every ``bespoke_pl.*`` module a file imports, at module level or inside functions."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("bespoke_pl."):
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("bespoke_pl.")]
    return found


def test_every_module_sits_in_a_known_layer():
    top = {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir() if not p.name.startswith("_")}
    top.discard("__pycache__")
    assert top == set(RANKS), "new top-level module or folder: give it a rank in RANKS"


def test_no_import_runs_up_a_layer():
    violations = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE.parent).with_suffix("")
        if len(relative.parts) < 2 or relative.parts[1].startswith("__"):
            continue  # bespoke_pl/__init__.py, __main__.py: the entry points
        own = layer(".".join(relative.parts))
        for line, module in imports_of(path):
            other = layer(module)
            if other != own and (RANKS[other] > RANKS[own] or RANKS[other] == RANKS[own]):
                violations.append(f"{relative}.py:{line} ({own}) imports {module} ({other})")
    assert not violations, "\n".join(violations)


def test_every_folder_says_what_lives_there():
    for folder in (p for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()):
        docstring = ast.get_docstring(ast.parse((folder / "__init__.py").read_text()))
        assert docstring and len(docstring) > 40, f"{folder.name}/__init__.py needs a docstring"
