"""The worker fleet as the web side sees it: the Celery queue, live workers, and work offloaded to them."""
