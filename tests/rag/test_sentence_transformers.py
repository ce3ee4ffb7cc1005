"""A local sentence-transformers directory, run by the library itself."""

import numpy as np
import pytest


def test_a_local_sentence_transformers_model_embeds_as_the_library_does(tmp_path, checkpoint):
    st = pytest.importorskip("sentence_transformers")  # the dev extra installs it
    import torch
    import transformers

    from acorn.errors import AcornError
    from acorn.rag.embeddings import AcornEmbedder, SentenceTransformerEmbedder, load_embedder
    from acorn.rag.pipeline import RAG, build_index

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "sat", "on", "mat", "oak", "tree", "a"]
    hf_dir = tmp_path / "bert"
    hf_dir.mkdir()
    (hf_dir / "vocab.txt").write_text("\n".join(words) + "\n")
    transformers.BertTokenizerFast(str(hf_dir / "vocab.txt")).save_pretrained(hf_dir)
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=len(words), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=32, max_position_embeddings=64)
    transformers.BertModel(cfg).save_pretrained(hf_dir)
    from sentence_transformers.base.modules.normalize import Normalize
    from sentence_transformers.base.modules.transformer import Transformer
    from sentence_transformers.sentence_transformer.modules.pooling import Pooling

    word = Transformer(str(hf_dir), max_seq_length=32)
    model = st.SentenceTransformer(modules=[word, Pooling(16, "mean"), Normalize()], device="cpu")
    st_dir = tmp_path / "st"
    model.save(str(st_dir))

    emb = load_embedder(st_dir)
    assert isinstance(emb, SentenceTransformerEmbedder) and emb.dim == 16
    texts = ["the cat sat on the mat", "a oak tree"]
    assert np.allclose(emb.encode(texts), model.encode(texts), atol=1e-6)
    assert np.allclose(np.linalg.norm(emb.encode(texts), axis=1), 1.0, atol=1e-5)  # its Normalize module ran

    (tmp_path / "d.txt").write_text("the cat sat on the mat\n\na oak tree")
    build_index([tmp_path / "d.txt"], tmp_path / "idx", emb, chunk_by="paragraphs")
    rag = RAG(tmp_path / "idx", embedder=st_dir, mode="dense", k=1)
    assert rag.retrieve(["oak tree"])[0][0].chunk.text == "a oak tree"
    with pytest.raises(AcornError, match="sentence-transformers embedder"):
        RAG(tmp_path / "idx", embedder=AcornEmbedder(checkpoint[0]))
