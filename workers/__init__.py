"""Tuneboard's GPU workers: the Celery app (`celery -A workers worker`), its tasks and the training code.

The only package that imports torch / transformers / peft, always lazily so `import workers` stays
light. May import `app`; `app` never imports `workers`. The Celery app itself is imported on first use
(`workers.app`, as `celery -A workers` asks for it): the web app's one-shot children (`python -m
workers.inventory`, `workers.dataset_preview`) and the training ranks need none of Celery, 1.6 s of CPU each.
"""

__all__ = ["app"]


def __getattr__(name: str):
    """The Celery app, imported on first use (PEP 562)."""
    if name == "app":
        from workers.celery_app import app

        return app
    raise AttributeError(f"module 'workers' has no attribute {name!r}")
