"""round_to="auto": the channel multiple chosen from the provider and the CPU's flags."""

import pytest

from attnprune.deploy.channels import channel_multiple

AVX512 = "fpu sse sse2 avx avx2 fma avx512f avx512dq avx512bw avx512vl".split()
AVX2 = "fpu sse sse2 avx avx2 fma".split()
SSE = "fpu sse sse2 sse4_1".split()
NEON = "fp asimd evtstrm aes pmull sha1 sha2 crc32".split()


@pytest.mark.parametrize("flags, want", [(AVX512, 16), (AVX2, 8), (SSE, 4), (NEON, 4), ([], 4),
                                         (["AVX2"], 8)])
def test_cpu_multiple_follows_the_vector_width(flags, want):
    assert channel_multiple("cpu", flags) == want


def test_cuda_wants_multiples_of_eight_whatever_the_cpu():
    assert channel_multiple("cuda", AVX512) == 8
    assert channel_multiple("cuda", SSE) == 8


def test_unknown_provider_names_the_choices():
    with pytest.raises(ValueError, match=r"provider must be one of \['cpu', 'cuda'\].*got 'tpu'"):
        channel_multiple("tpu", AVX2)
