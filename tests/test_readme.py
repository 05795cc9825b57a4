"""Every ```python block of README.md runs when pasted alone: each is
executed in a fresh namespace, so a block that forgets its imports fails. A
block whose comment announces an error must raise it."""

import builtins
import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_examples():
    assert len(BLOCKS) >= 4


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs_alone(index):
    block = BLOCKS[index]
    code = compile(block, f"{README}, python block {index}", "exec")
    expected = re.search(r"^# (\w+Error):", block, flags=re.M)
    if expected:
        with pytest.raises(getattr(builtins, expected.group(1)),
                           match=re.escape(block.split(f"# {expected.group(1)}: ")[1][:40])):
            exec(code, {"__name__": "__readme__"})
    else:
        exec(code, {"__name__": "__readme__"})


def test_first_example_is_small():
    """The first example is the one a newcomer pastes first: it must finish
    in seconds on a laptop (a few small networks and inputs, no big sizes)."""
    sizes = [int(n) for n in re.findall(r"\b\d+\b", BLOCKS[0])]
    assert max(sizes) <= 512
