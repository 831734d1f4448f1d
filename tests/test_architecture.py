"""docs/ARCHITECTURE.md's picture of the layers is the import-linter contract in pyproject.toml.

lint-imports (CI) enforces the contract; this keeps the picture from drifting away from it.
"""

from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def contract_layers() -> list[list[str]]:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]
    (contract,) = [c for c in config["contracts"] if c["type"] == "layers"]
    assert contract["containers"] == ["task_service"]
    return [_modules(layer) for layer in contract["layers"]]


def diagram_layers() -> list[list[str]]:
    """The layers as the diagram lists them: the first column of the code block that follows
    the "## Layers" heading, top layer first."""
    text = (REPO / "docs" / "ARCHITECTURE.md").read_text()
    section = text.split("\n## Layers\n", 1)[1]
    block = re.search(r"```\n(.*?)```", section, re.S)
    assert block is not None, "no diagram under ## Layers"
    return [_modules(re.split(r"\s{2,}", line.strip())[0]) for line in block.group(1).splitlines() if line.strip()]


def _modules(layer: str) -> list[str]:
    return [name.strip() for name in re.split(r"[|:]", layer)]


class TestLayerDiagram:
    def test_the_diagram_lists_the_contract_layers_in_order(self) -> None:
        assert diagram_layers() == contract_layers()

    def test_every_layer_is_a_module_of_the_package(self) -> None:
        for layer in contract_layers():
            for name in layer:
                assert (REPO / f"{name}.py").is_file() or (REPO / name / "__init__.py").is_file(), name

    def test_the_diagram_is_read_whole(self) -> None:
        # Guards the parsing: a diagram read as empty or as one line would compare vacuously.
        layers = diagram_layers()
        assert len(layers) >= 6
        assert any(len(layer) > 1 for layer in layers)


class TestTheKnowledgeIsInTheRepository:
    def test_nothing_cites_the_design_document_outside_the_repository(self) -> None:
        # The design knowledge the code relies on is in docs/ARCHITECTURE.md; a reference to
        # the original design document would send a reader somewhere they cannot follow.
        outside = "DESIGN" + ".md"
        files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout
        citing = [
            name
            for name in files.splitlines()
            if name.endswith((".py", ".md", ".toml", ".sh", ".yaml", ".yml", ".js", ".html", ".conf"))
            and not name.startswith("web/vendor/")
            and (REPO / name).is_file()
            and outside in (REPO / name).read_text(errors="replace")
        ]
        assert not citing, f"these cite {outside}; point them to docs/ARCHITECTURE.md: {citing}"
