"""Tuneboard's GPU workers: the Celery app (`celery -A workers worker`), its tasks and the training code.

The only package that imports torch / transformers / peft, always lazily so `import workers` stays
light. May import `app`; `app` never imports `workers`.
"""

from workers.celery_app import app

__all__ = ["app"]
