import numpy as np
import pytest

from recmodel.text import HashingTextEncoder, TextEncoder, minilm_path


@pytest.fixture(scope="session")
def minilm() -> TextEncoder:
    return TextEncoder()


def test_minilm_is_packaged_offline_and_embeds_meaning(minilm):
    assert (minilm_path() / "config.json").exists()
    vecs = minilm.encode(
        ["A thrilling detective story about a murder.", "A police investigation of a mysterious murder.",
         "A recipe for baking bread in the oven."]
    )
    assert vecs.shape == (3, 384) and vecs.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    assert vecs[0] @ vecs[1] > vecs[0] @ vecs[2] + 0.2


def test_each_text_is_embedded_once(minilm):
    before = minilm.texts_embedded
    a = minilm.encode(["cache me", "cache me", "and me"])
    b = minilm.encode(["and me", "cache me"])
    assert minilm.texts_embedded - before == 2
    np.testing.assert_array_equal(a[1], b[1])


def test_batches_of_mixed_lengths_embed_each_text_as_alone_and_in_order():
    # Long and short texts interleaved, more than one batch: batches are formed by length, and every
    # vector must still land in its text's row, equal to that text embedded on its own.
    enc = TextEncoder(batch_size=4)
    texts = [("word " * (3 + (i * 7) % 40)) + f"item {i}" for i in range(11)]
    together = enc.encode(texts)
    single = TextEncoder(batch_size=1)
    alone = np.stack([single.encode([t])[0] for t in texts])
    np.testing.assert_allclose(together, alone, atol=1e-5)
    assert len({v.tobytes() for v in together}) == len(texts)


def test_hashing_encoder_is_deterministic_and_word_sensitive():
    enc = HashingTextEncoder(64)
    x = enc.encode(["space rocket orbit", "space rocket moon", "kitchen recipe"])
    again = HashingTextEncoder(64).encode(["space rocket orbit"])
    np.testing.assert_array_equal(x[0], again[0])
    assert x[0] @ x[1] > x[0] @ x[2]
    assert enc.encode([]).shape == (0, 64)


def test_trainer_uses_minilm_by_default_and_places_new_items_by_text():
    from recmodel.data import Item
    from recmodel.train import IncrementalTrainer

    trainer = IncrementalTrainer(dim=16, max_len=4, capacity=8, device="cpu")
    trainer.upsert_items([
        Item("a", "Murder on the night train", "A detective investigates a murder.", ("crime",)),
        Item("b", "The silent suspect", "Police hunt a thief and a killer.", ("crime",)),
        Item("c", "Sourdough at home", "Baking bread in your kitchen oven.", ("cooking",)),
    ])
    assert isinstance(trainer.text_encoder, TextEncoder)
    assert trainer.text_encoder.texts_embedded == 3
    trainer.upsert_items([Item("a", "Murder on the night train", "A detective investigates a murder.", ("crime",))])
    assert trainer.text_encoder.texts_embedded == 3  # unchanged text is not embedded again
    vecs = trainer.item_vectors(["a", "b", "c"])
    assert vecs[0] @ vecs[1] > vecs[0] @ vecs[2]  # untrained: the text alone places new items
