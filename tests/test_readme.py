"""Every ```python block of README.md runs (in order, one namespace); a block
whose comment announces an error must raise it."""

import builtins
import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_examples():
    assert len(BLOCKS) >= 4


def test_readme_examples_run():
    namespace: dict = {}
    for block in BLOCKS:
        expected = re.search(r"^# (\w+Error):", block, flags=re.M)
        if expected:
            with pytest.raises(getattr(builtins, expected.group(1)),
                               match=re.escape(block.split(f"# {expected.group(1)}: ")[1][:40])):
                exec(compile(block, str(README), "exec"), namespace)
        else:
            exec(compile(block, str(README), "exec"), namespace)
