"""Where the tests find the project and its console command (one place for every CLI test)."""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SERVESIM = Path(sys.executable).parent / "servesim"
if not SERVESIM.exists():  # pragma: no cover - fall back to the project's venv
    SERVESIM = ROOT / ".venv" / "bin" / "servesim"
