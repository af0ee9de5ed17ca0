"""What a saved adapter says about its base: the model id a user loads it on, not a folder of this worker.

PEFT records the folder the base weights were loaded from as `base_model_name_or_path`. For a hub model
loaded from the worker's cache, or the demo model converted from its GGUF, that is a path on the worker, and
`PeftModel.from_pretrained` elsewhere fails to find it. The job's own model id is what a user can load.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

ADAPTER_CONFIG = "adapter_config.json"


def name_base_model(adapter_dir: Path, model_id: str) -> None:
    """Record model_id as the adapter's base in its config, and drop PEFT's template model card."""
    path = Path(adapter_dir) / ADAPTER_CONFIG
    config = json.loads(path.read_text(encoding="utf-8"))
    config["base_model_name_or_path"] = model_id
    partial = path.with_name(f".{ADAPTER_CONFIG}.tmp")
    partial.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(partial, path)  # never a half-written config, even if the worker dies here
    # PEFT writes a card of placeholders naming the same folder; the download brings a real one instead.
    (Path(adapter_dir) / "README.md").unlink(missing_ok=True)
