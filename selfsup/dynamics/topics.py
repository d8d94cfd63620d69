"""Topic distributions of captions: latent Dirichlet allocation (Blei, Ng, Jordan, JMLR 2003) on a bag of words, the
targets of TextTopicNet (Gomez et al., CVPR 2017). scikit-learn fits it; one fixed seed gives the same topics on
every run and every resume."""

from __future__ import annotations

import torch

from selfsup.errors import UserError


def caption_topics(texts: list[str], num_topics: int, vocab_size: int = 50_000, iters: int = 10,
                   seed: int = 0) -> tuple[torch.Tensor, list[list[str]]]:
    """Each caption's topic distribution ``(N, num_topics)`` float32 (rows sum to one) and each topic's three most
    probable words. The bag of words counts the ``vocab_size`` most frequent words (lower-cased, of two or more
    letters and digits) less scikit-learn's English stop words; LDA runs ``iters`` batch variational-Bayes passes
    from ``seed``. A caption with none of the words gets the prior's uniform distribution."""
    from sklearn.decomposition import LatentDirichletAllocation
    from sklearn.feature_extraction.text import CountVectorizer

    vectorizer = CountVectorizer(stop_words="english", max_features=vocab_size)
    try:
        counts = vectorizer.fit_transform(texts)
    except ValueError:  # scikit-learn: "empty vocabulary"
        raise UserError("the captions have no words to fit topics on (only English stop words, or none)") from None
    lda = LatentDirichletAllocation(n_components=num_topics, max_iter=iters, learning_method="batch",
                                    random_state=seed)
    doc_topics = torch.from_numpy(lda.fit_transform(counts)).double()
    words = vectorizer.get_feature_names_out()
    top = [[str(words[j]) for j in row.argsort()[::-1][:3]] for row in lda.components_]
    return (doc_topics / doc_topics.sum(1, keepdim=True)).float(), top
