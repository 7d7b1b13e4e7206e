"""Banks larger than memory: training streams the bank by chunks, embeddings go to disk batch by batch."""

import numpy as np
import pytest
from match_helpers import ProjectionEmbedder, write_bank

from protolib.bank import Bank
from protolib.matching import EmbeddingIndex, Matcher, bank_embeddings, embed_bank, faiss_available
from protolib.runtime import ProtolibInputError
from protolib.training import ImageSource, system_batches


@pytest.fixture
def bank(tmp_path):
    with Bank(write_bank(tmp_path / "bank.h5", n_systems=30, n_projections=4)) as opened:
        yield opened


class CountingImages:
    """The bank's image dataset, recording how many systems each read returns."""

    def __init__(self, images):
        self.images, self.reads = images, []
        self.shape, self.dtype, self.chunks = images.shape, images.dtype, images.chunks

    def __getitem__(self, key):
        block = self.images[key]
        self.reads.append(len(block))
        return block


def test_training_from_a_bank_over_its_memory_limit_reads_chunks_never_the_whole_bank(bank, monkeypatch):
    source = ImageSource(bank, memory_limit_mb=0)
    counting = CountingImages(bank.images)
    monkeypatch.setattr(source, "bank", type("StreamedBank", (), {"images": counting})())
    batches = list(system_batches(source, np.arange(30), batch_systems=4, chunk_systems=8, seed=1))
    assert not source.in_memory and max(counting.reads) <= 8 and sum(counting.reads) == 30
    assert sorted(np.concatenate([systems for _, systems in batches]).tolist()) == sorted(
        np.repeat(np.arange(30), 4).tolist()
    )


def test_embedding_to_a_file_gives_the_same_vectors_mapped_from_disk_without_holding_them(bank, tmp_path):
    in_memory, system, projection = embed_bank(ProjectionEmbedder(), bank, batch_size=16, progress=False)
    embedder = ProjectionEmbedder()
    on_disk, system_2, projection_2 = embed_bank(
        embedder, bank, batch_size=16, progress=False, out=tmp_path / "vectors.npy"
    )
    assert isinstance(on_disk, np.memmap) and embedder.calls == 30 * 4 // 16 + 1
    assert (
        np.array_equal(on_disk, in_memory)
        and np.array_equal(system, system_2)
        and np.array_equal(projection, projection_2)
    )
    assert np.array_equal(np.load(tmp_path / "vectors.npy"), in_memory)


def test_an_interrupted_embedding_leaves_no_file_behind(bank, tmp_path):
    class Failing(ProjectionEmbedder):
        def __call__(self, images):
            if self.calls == 3:
                raise KeyboardInterrupt
            return super().__call__(images)

    with pytest.raises(KeyboardInterrupt):
        embed_bank(Failing(), bank, batch_size=16, progress=False, out=tmp_path / "vectors.npy")
    assert list(tmp_path.iterdir()) == [tmp_path / "bank.h5"]


def test_cached_embeddings_are_mapped_from_their_file_and_a_new_key_replaces_them(bank, tmp_path):
    cache = tmp_path / "model.embeddings.npz"
    first = bank_embeddings(
        ProjectionEmbedder(), bank, cache_path=cache, key={"model": "a"}, batch_size=16, progress=False
    )
    again = bank_embeddings(ProjectionEmbedder(), bank, cache_path=cache, key={"model": "a"}, progress=False)
    assert isinstance(again.vectors, np.memmap) and np.array_equal(again.vectors, first.vectors)
    assert np.array_equal(again.nearest_neighbour_similarity, first.nearest_neighbour_similarity)
    other = bank_embeddings(ProjectionEmbedder(seed=1), bank, cache_path=cache, key={"model": "b"}, progress=False)
    assert not np.array_equal(other.vectors, first.vectors)
    assert len(list(tmp_path.glob("model.embeddings.*.npy"))) == 1
    matcher = Matcher.from_embed_function(
        ProjectionEmbedder(seed=1), bank, cache_path=cache, key={"model": "b"}, progress=False
    )
    assert (
        matcher.match_system(3, top_k=5).system.tolist()
        == Matcher.from_embed_function(ProjectionEmbedder(seed=1), bank, key={"model": "b"}, progress=False)
        .match_system(3, top_k=5)
        .system.tolist()
    )


@pytest.mark.skipif(not faiss_available(), reason="faiss-cpu is not installed")
def test_an_ivf_index_visiting_every_list_finds_the_exact_neighbours_and_a_bad_setting_is_named():
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(3000, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    system, projection = np.arange(3000) // 3, np.arange(3000) % 3
    queries = vectors[:20] + 0.05 * rng.normal(size=(20, 16)).astype(np.float32)
    exact = EmbeddingIndex(vectors, system, projection, backend="exact").search(queries, top_k=10)
    ivf = EmbeddingIndex(
        vectors, system, projection, backend="faiss", faiss_factory="IVF16,Flat", faiss_parameters="nprobe=16"
    )
    assert [m.system.tolist() for m in ivf.search(queries, top_k=10)] == [m.system.tolist() for m in exact]
    with pytest.raises(ProtolibInputError, match="efSearch"):
        EmbeddingIndex(
            vectors, system, projection, backend="faiss", faiss_factory="IVF16,Flat", faiss_parameters="efSearch=8"
        )
