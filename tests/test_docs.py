"""Every Python sample in README.md and docs/ runs, so none can rot."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("**/*.md"))]
FENCE = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_python_samples_run(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    samples = FENCE.findall(path.read_text())
    namespace: dict[str, object] = {"__name__": f"docs_sample_{path.stem}"}
    for index, sample in enumerate(samples):
        code = compile(sample, f"{path.name}[sample {index}]", "exec")
        exec(code, namespace)
