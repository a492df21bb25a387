import pytest

from lmlab.data.tokenizer import get_tokenizer


def test_gpt2_encodes_like_openai():
    enc = get_tokenizer("gpt2")
    assert enc.encode("Hello, I am") == [15496, 11, 314, 716]
    assert enc.n_vocab == 50257
    assert enc.eot_token == 50256


def test_gpt2_decodes_the_books_example():
    enc = get_tokenizer("gpt2")
    ids = [15496, 11, 314, 716, 27018, 24086, 47843, 30961, 42348, 7267]
    assert enc.decode(ids) == "Hello, I am Featureiman Byeswickattribute argue"


def test_round_trip_of_unicode_and_whitespace():
    enc = get_tokenizer("gpt2")
    text = "  Café — naïve\n\n\tROMEO: O, she doth teach the torches to burn bright! 日本"
    assert enc.decode(enc.encode(text)) == text


def test_unknown_encoding_names_the_valid_ones():
    with pytest.raises(ValueError, match="unknown tokenizer 'gpt9'.*cl100k_base"):
        get_tokenizer("gpt9")


def test_encoding_that_needs_a_download_fails_clearly_offline():
    try:
        enc = get_tokenizer("cl100k_base")
    except RuntimeError as err:
        assert "cl100k_base" in str(err) and "offline" in str(err)
    else:  # a machine with network (or a tiktoken cache) loads it for real
        assert enc.name == "cl100k_base"
