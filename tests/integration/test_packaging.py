"""The wheel carries the SQL: migrations and named queries ship inside the package."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from litellm_credits.migrations import load_migrations

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
        assert f"litellm_credits/sql/migrations/{migration.filename}" in names
    for sql in (REPO / "litellm_credits" / "sql").glob("*.sql"):
        assert f"litellm_credits/sql/{sql.name}" in names
    assert "litellm_credits/sql/queries.sql" in names
