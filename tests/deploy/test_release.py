"""`make release` (scripts/release.sh): an sdist that holds the whole service tree and a
wheel that holds the packages and the `batchsvc` command, both passing `twine check`."""

from __future__ import annotations

import subprocess
import tarfile
import zipfile
from pathlib import Path

from batchsvc.settings import PROJECT_ROOT


def test_release_builds_an_sdist_and_a_wheel_that_twine_accepts(tmp_path: Path) -> None:
    out = tmp_path / "dist"
    run = subprocess.run([str(PROJECT_ROOT / "scripts/release.sh"), str(out)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert run.stdout.count("PASSED") == 2
    (wheel,) = out.glob("*.whl")
    (sdist,) = out.glob("*.tar.gz")
    with zipfile.ZipFile(wheel) as whl:
        names = whl.namelist()
        entry_points = next(whl.read(n).decode() for n in names if n.endswith("entry_points.txt"))
    for module in ("batchsvc/client/cli.py", "tasks/worker.py", "web/__init__.py"):
        assert module in names
    assert "batchsvc = batchsvc.client.cli:main" in entry_points
    with tarfile.open(sdist) as tar:
        inside = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    for path in ("Procfile", "constraints.txt", "configs/models.yaml", "scripts/install.sh", "Dockerfile"):
        assert path in inside
    assert not any("__pycache__" in name or name == "deploy/compose.env" for name in inside)
