"""The house's layers, read from the source's own imports (every `import` and `from ... import`, function-level
ones included): each room may import only rooms on lower layers or itself, so no import runs back up and none goes
round in a circle between rooms; nothing outside `train/` imports training code except cli.py, which registers the
commands."""
from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "glancetune"
# ground first; a room imports only from earlier layers (or inside itself)
LAYERS = [
    {"errors", "process"},
    {"schedule", "__init__"},
    {"families", "record", "ladder"},
    {"config"},
    {"data"},
    {"engine", "export"},
    {"sampling"},
    {"plan", "evaluation"},
    {"train", "server"},
    {"cli"},
    {"__main__"},
]
LAYER = {room: i for i, rooms in enumerate(LAYERS) for room in rooms}


def room(path: Path) -> str:
    rel = path.relative_to(SRC)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def imported_rooms(path: Path):
    """(line, room) of every glancetune module a file imports."""
    package = path.relative_to(SRC.parent).with_suffix("").parts[:-1]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(package[:len(package) - node.level + 1])
                parts = base + (node.module.split(".") if node.module else [])
                names = [parts + [a.name] for a in node.names] if len(parts) == 1 else [parts]
            else:
                names = [node.module.split(".")] if node.module and node.module.startswith("glancetune") else []
        elif isinstance(node, ast.Import):
            names = [a.name.split(".") for a in node.names if a.name.startswith("glancetune")]
        else:
            continue
        for parts in names:
            if len(parts) > 1:
                target = SRC.joinpath(*parts[1:])
                yield node.lineno, parts[1] if target.is_dir() or len(parts) > 2 else target.stem


def edges():
    for path in SRC.rglob("*.py"):
        for line, target in imported_rooms(path):
            yield path, line, room(path), target


def test_every_room_is_on_a_layer():
    rooms = {room(p) for p in SRC.rglob("*.py")}
    assert rooms <= set(LAYER), f"place these rooms in LAYERS: {sorted(rooms - set(LAYER))}"


def test_no_import_runs_back_up():
    up = [f"{p.relative_to(SRC)}:{line} ({src} imports {dst})" for p, line, src, dst in edges()
          if dst in LAYER and src != dst and LAYER[dst] >= LAYER[src]]
    assert not up, "\n".join(up)


def test_only_the_command_line_imports_training_code():
    found = [f"{p.relative_to(SRC)}:{line}" for p, line, src, dst in edges() if dst == "train" and src not in
             ("train", "cli")]
    assert not found, found


def test_the_check_sees_an_upward_import(tmp_path, monkeypatch):
    """The layer test is not vacuous: an engine module importing sampling is caught."""
    fake = SRC / "engine" / "runtime.py"
    text = fake.read_text(encoding="utf-8") + "\nfrom ..sampling import sampler  # noqa\n"
    monkeypatch.setattr(Path, "read_text", lambda self, encoding=None: text if self == fake else
                        Path.read_bytes(self).decode(encoding or "utf-8"))
    assert any(src == "engine" and dst == "sampling" for _, _, src, dst in edges())
