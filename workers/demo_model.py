"""`python -m workers.demo_model`: convert the offline demo base model once, ahead of its first job.

`tuneboard up` runs this in the background so the first demo job does not wait for the conversion.
"""

from __future__ import annotations

import sys
import time

from app.settings import get_settings


def main() -> int:
    """Prepare SmolLM2-135M-Instruct in the data dir; print where it is, or why not."""
    from workers.base_models import prepare_demo_model
    from workers.training import TrainingFailure

    started = time.perf_counter()
    try:
        path = prepare_demo_model(get_settings().data_dir)
    except TrainingFailure as exc:
        print(f"demo model not prepared: {exc.reason}", file=sys.stderr)
        return 1
    print(f"demo model ready at {path} ({time.perf_counter() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
