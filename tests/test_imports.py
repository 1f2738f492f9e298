"""`redhand stack` imports only what it uses: the import time is most of its run.

Heavy modules are imported where they are needed (the C++ and Rust demanglers
on the first such name, json for --json, lzma for MiniDebugInfo), and the
modules of the stack path do not pull in typing or dataclasses (see
redhand._value for what they cost).
"""

from __future__ import annotations

import subprocess
import sys

STACK_PATH = "import redhand.__main__, redhand.cli, redhand.report.stack, redhand.target.live"

# Imported by the stack path only when a command needs them.
LAZY = ("cxxfilt", "pyderust", "json", "lzma", "shutil", "zstandard", "redhand.unwind.expr")

# Imported at start-up by none of the stack path's modules outside redhand.proc
# (whose owner is replacing its dataclasses and typing.Any).
AVOIDED = ("typing", "dataclasses", "inspect")


def import_tree() -> list[tuple[int, str]]:
    """(depth, module) in -X importtime's order: a module's imports come before it."""
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", STACK_PATH],
        capture_output=True,
        text=True,
        check=True,
    )
    tree = []
    for line in result.stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        name = line.rsplit("|", 1)[1]
        if name.strip() == "imported package":
            continue
        tree.append(((len(name) - len(name.lstrip(" "))) // 2, name.strip()))
    return tree


def importers(tree: list[tuple[int, str]], module: str) -> list[list[str]]:
    """For each place ``module`` is imported, the chain of modules that imported it."""
    chains = []
    for at, (depth, name) in enumerate(tree):
        if name != module:
            continue
        chain = []
        level = depth
        for later_depth, later in tree[at + 1 :]:
            if later_depth < level:
                chain.append(later)
                level = later_depth
        chains.append(chain)
    return chains


def test_lazy_modules_are_not_imported() -> None:
    code = f"{STACK_PATH}; import sys; print([m for m in {LAZY!r} if m in sys.modules])"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


def test_stack_path_avoids_typing_and_dataclasses() -> None:
    tree = import_tree()
    for module in AVOIDED:
        for chain in importers(tree, module):
            redhand = [name for name in chain if name.startswith("redhand")]
            assert not redhand or redhand[0].startswith("redhand.proc"), (module, chain)
