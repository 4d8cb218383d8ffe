"""The README's Python example runs as written (on a tiny trained run)."""

import re
from pathlib import Path

from indpred.train import train

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_example_runs(tmp_path, tiny_config, monkeypatch, capsys):
    block = re.search(r"```python\n(.*?)```", README.read_text(), re.S)
    assert block, "README has no python example"
    code = block.group(1)
    assert "runs/demo/factored" in code
    train(tiny_config, tmp_path / "runs" / "demo" / "factored", steps=1, progress=False)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, str(README), "exec"), {})
    assert "tensor" in capsys.readouterr().out


def test_readme_test_command_is_what_ci_runs():
    text = README.read_text()
    ci = (README.parent / ".ci" / "run").read_text()
    assert "<!-- test-command -->" in text and "<!-- /test-command -->" in text
    assert "README.md" in ci and "torch==2.13.0" in ci
    assert "pip install -e . && indpred demo" in text
