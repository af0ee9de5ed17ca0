"""workers.gguf_once: within a conversion each GGUF file is parsed once and gguf's name table built once; outside,
the library is as it was."""

from __future__ import annotations

import numpy as np
import pytest

from workers.gguf_once import gguf_read_once

gguf = pytest.importorskip("gguf")


@pytest.fixture
def gguf_file(tmp_path):
    path = tmp_path / "tiny.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(2)
    writer.add_string("general.name", "tiny")
    writer.add_tensor("token_embd.weight", np.arange(12, dtype=np.float32).reshape(3, 4))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_a_file_is_parsed_once_inside_and_each_time_outside(gguf_file):
    from gguf import GGUFReader  # as transformers imports it, at the call

    with gguf_read_once():
        from gguf import GGUFReader as shared

        first, again = shared(gguf_file), shared(str(gguf_file))
        assert first is again
        assert first.fields["general.name"].contents() == "tiny"
        assert [t.name for t in first.tensors] == ["token_embd.weight"]
        assert np.array_equal(first.tensors[0].data, np.arange(12, dtype=np.float32).reshape(3, 4))
    assert gguf.GGUFReader is GGUFReader
    assert gguf.GGUFReader(gguf_file) is not gguf.GGUFReader(gguf_file)


def test_the_name_table_is_built_once_per_architecture_and_depth_inside_only():
    real = gguf.get_tensor_name_map
    with gguf_read_once():
        table = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, 2)
        assert gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, 2) is table
        assert gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, 3) is not table
        assert table.get_name("model.layers.1.self_attn.q_proj") == "blk.1.attn_q"
    assert gguf.get_tensor_name_map is real
    assert real(gguf.MODEL_ARCH.LLAMA, 2) is not real(gguf.MODEL_ARCH.LLAMA, 2)


def test_the_library_is_restored_when_the_conversion_fails(gguf_file):
    real = gguf.GGUFReader
    with pytest.raises(RuntimeError), gguf_read_once():
        gguf.GGUFReader(gguf_file)
        raise RuntimeError("conversion failed")
    assert gguf.GGUFReader is real
