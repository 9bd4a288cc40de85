"""The wheel carries the SQL: migrations and named queries ship inside the package."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from litellm_credits.store.migrate import load_migrations

REPO = Path(__file__).resolve().parents[2]


def test_wheel_contains_every_migration_and_query_file(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
         "-w", str(tmp_path), str(REPO)],
        check=True, capture_output=True, timeout=300,
    )
    (wheel,) = tmp_path.glob("litellm_credits-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for migration in load_migrations():
        assert f"litellm_credits/store/migrations/{migration.filename}" in names
    queries = sorted((REPO / "litellm_credits" / "store" / "queries").glob("*.sql"))
    assert queries, "no named-query files found"
    for sql in queries:
        assert f"litellm_credits/store/queries/{sql.name}" in names
    assert "litellm_credits/api/static/credits.html" in names
