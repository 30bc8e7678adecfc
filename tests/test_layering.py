"""The rooms of dotsllm import one way, down the list of the README's "What is here": a room imports
only rooms below it (or on its own row, when the README says they may), never one above."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "dotsllm"
# top to bottom, as README.md lists them; rooms on one row import nothing of each other
LEVELS = [
    {"commands", "cli"},
    {"recipes", "evaluation", "analysis", "plan"},
    {"train"},
    {"posttrain"},
    {"convert", "inference"},
    {"training"},
    {"model", "parallel"},
    {"tokenizer", "chat_template", "config_loading", "jsonl", "compat"},
]
LEVEL = {room: level for level, rooms in enumerate(LEVELS) for room in rooms}


def imported_rooms(path: Path) -> set[str]:
    """The dotsllm rooms (first name under dotsllm/) that a module imports, function-level imports and
    ``TYPE_CHECKING`` blocks included."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "dotsllm":
                names = [f"dotsllm.{alias.name}" for alias in node.names]
            else:
                names = [node.module]
        found |= {name.split(".")[1] for name in names if name.startswith("dotsllm.")}
    return found


def test_every_room_is_listed_and_imports_only_rooms_below_it():
    rooms = {p.stem for p in PACKAGE.iterdir() if (p.is_dir() and (p / "__init__.py").is_file()) or p.suffix == ".py"}
    assert rooms - {"__init__"} == set(LEVEL), "a room missing from the README's list (or gone from the code)"
    wrong = []
    for path in PACKAGE.rglob("*.py"):
        room = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
        if room == "__init__":
            continue
        for other in imported_rooms(path) - {room}:
            if LEVEL[other] <= LEVEL[room]:
                wrong.append(f"{path.relative_to(PACKAGE)} imports {other}")
    assert wrong == []


def test_the_check_sees_a_wrong_import(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from dotsllm.parallel.setup import init_distributed\n")
    assert imported_rooms(module) == {"parallel"}  # model/ importing this would be caught
