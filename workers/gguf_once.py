"""Reading a GGUF file once per conversion: transformers' GGUF loading, without its repeated work.

Converting the demo GGUF with transformers reads the file's header three times (the config, the weights, the
tokenizer: about 8 s of CPU each for SmolLM2's 49k-entry vocabulary) and builds gguf's tensor-name table once per
module of the model (397 times for SmolLM2, 12 s). Each gives the same answer every time, so during a conversion the
first one is kept and handed out again: the same checkpoint, from about 41 s of CPU to 23 s. Imports gguf
only when entered; must not be used around anything that writes GGUF files.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def gguf_read_once() -> Iterator[None]:
    """Within the block, gguf.GGUFReader returns one reader per file and gguf.get_tensor_name_map one table per
    architecture and depth (transformers imports both from gguf where it calls them)."""
    import gguf

    real_reader, real_name_map = gguf.GGUFReader, gguf.get_tensor_name_map
    readers: dict[tuple, object] = {}

    def shared_reader(path, mode: str = "r"):
        if mode != "r":  # a writer-side reader is the library's own business
            return real_reader(path, mode)
        key = (str(path), mode)
        if key not in readers:
            readers[key] = real_reader(path, mode)
        return readers[key]

    gguf.GGUFReader, gguf.get_tensor_name_map = shared_reader, functools.cache(real_name_map)
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = real_reader, real_name_map
