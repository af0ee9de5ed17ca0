"""Inference on a worker: a loaded base model with adapters swapped per request (`engine`), one chat reply
(`generation`), and a request from the queue to its streamed reply (`serve`)."""
