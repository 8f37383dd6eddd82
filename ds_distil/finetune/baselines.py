"""Baselines a finetuned model must beat, computed from the data and scored exactly like a model's
predictions (ds_distil.finetune.scoring), so that results.json and the report can show them beside it.

Each entry of BASELINES takes the task and the featurised splits and returns a description plus
predictions per split in the model's format; the report shows every baseline found in results.json
as a row. Two are computed:

* `majority`: the most frequent training label for everything.
* `bow`: a linear model on a bag of words, the baseline that costs seconds. Sentence tasks: word
  unigrams + bigrams (lowercased) counted by scikit-learn's CountVectorizer; pairs add the
  premise's and the hypothesis's n-grams as separate features the words they share and how many (lexical
  overlap: what a bag of words can say about a pair). Token tasks (POS, NER): one prediction per
  word from the word itself, its two neighbours, its 3-letter prefix and suffix and its shape
  (capitalised, digit), the per-token equivalent of a bag of words. The classifier is chosen on the
  validation split among multinomial Naive Bayes on counts (alpha 0.1 / 0.3 / 1) and logistic
  regression on tf-idf weights (L2 3e-6 / 1e-5 / 3e-5 / 1e-4), and the choice and every candidate's
  validation score are recorded. A few seconds per run. It sees the same training examples as the model (task.max_train_examples included).
"""

from __future__ import annotations

from collections import Counter

from ds_distil.data.examples import Task
from ds_distil.finetune.scoring import evaluate


def majority(task: Task, feats: dict[str, list[dict]]) -> tuple[dict, dict[str, dict]]:
    """The most frequent training label (per word for token tasks; ties: the first label) for every example."""
    counts = Counter(lab for f in feats["train"] for lab in (f["labels"] if isinstance(f["labels"], list) else [f["labels"]])
                     if lab != -100)
    top = max(sorted(counts), key=lambda lab: counts[lab])
    preds = {}
    for split in ("valid", "test"):
        if task.kind == "token":
            preds[split] = {f["index"]: [top] * len(f["labels"]) for f in feats[split]}
        else:
            preds[split] = {f["index"]: top for f in feats[split]}
    return {"label": task.labels[top], "description": f"always '{task.labels[top]}', the most frequent training label"}, preds


WORD = r"(?u)\b\w+\b"  # words of one letter count too (scikit-learn's default drops them)


def _texts(task: Task, feats: list[dict], split: str) -> list[str]:
    """One document per example: its text, or for pairs a document of prefixed features (see _pair_analyzer)."""
    ex = [task.splits[split][f["index"]] for f in feats]
    return [e.text if task.kind == "sequence" else (e.text, e.text_pair) for e in ex]


def _pair_analyzer():
    from sklearn.feature_extraction.text import CountVectorizer

    ngrams = CountVectorizer(ngram_range=(1, 2), token_pattern=WORD).build_analyzer()
    words = CountVectorizer(token_pattern=WORD).build_analyzer()

    def analyze(pair: tuple[str, str]) -> list[str]:
        premise, hypothesis = pair
        shared = set(words(premise)) & set(words(hypothesis))
        return ["p:" + g for g in ngrams(premise)] + ["h:" + g for g in ngrams(hypothesis)] + ["both:" + w for w in shared] + ["overlap"] * len(shared)

    return analyze


def _word_features(words: list[str], i: int) -> dict[str, float]:
    w = words[i]
    low = w.lower()
    f = {"w=" + low: 1.0, "pre3=" + low[:3]: 1.0, "suf3=" + low[-3:]: 1.0,
         "w-1=" + (words[i - 1].lower() if i > 0 else "<s>"): 1.0,
         "w+1=" + (words[i + 1].lower() if i + 1 < len(words) else "</s>"): 1.0}
    if w[:1].isupper():
        f["cap"] = 1.0
    if any(c.isdigit() for c in w):
        f["digit"] = 1.0
    return f


def _token_rows(task: Task, feats: list[dict], split: str) -> tuple[list[dict], list[int], list[int]]:
    """Features and gold label ids of every scored word (those whose first sub-word has a label), and words per example."""
    rows, gold, counts = [], [], []
    for f in feats:
        words = task.splits[split][f["index"]].text
        scored = [lab for lab in f["labels"] if lab != -100]  # word k's label is the k-th one: truncated words are not scored
        rows += [_word_features(words, k) for k in range(len(scored))]
        gold += scored
        counts.append(len(scored))
    return rows, gold, counts


def _candidates():
    """(name, on tf-idf?, factory). Logistic regression is fitted by SGD (15 epochs, seeded): lbfgs took
    5-10 s per fit on these sets and liblinear has no multinomial mode, for the same validation scores."""
    from sklearn.linear_model import SGDClassifier
    from sklearn.naive_bayes import MultinomialNB

    nb = [(f"multinomial NB (alpha {a:g})", False, lambda a=a: MultinomialNB(alpha=a)) for a in (0.1, 0.3, 1.0)]
    lr = [(f"logistic regression (L2 {a:g})", True,
           lambda a=a: SGDClassifier(loss="log_loss", alpha=a, max_iter=15, tol=None, random_state=0)) for a in (3e-6, 1e-5, 3e-5, 1e-4)]
    return nb + lr


def _int32(m):
    """scikit-learn's liblinear/SGD code takes 32-bit sparse indices; DictVectorizer makes 64-bit ones."""
    m.indices, m.indptr = m.indices.astype("int32"), m.indptr.astype("int32")
    return m


def bow(task: Task, feats: dict[str, list[dict]]) -> tuple[dict, dict[str, dict]]:
    """A linear model on unigrams + bigrams (per-word features for token tasks), chosen on the validation split."""
    from sklearn.feature_extraction import DictVectorizer
    from sklearn.feature_extraction.text import CountVectorizer, TfidfTransformer

    if task.kind == "token":
        data = {s: _token_rows(task, feats[s], s) for s in ("train", "valid", "test")}
        vec = DictVectorizer()
        X = {"train": vec.fit_transform(data["train"][0])}
        X.update({s: vec.transform(data[s][0]) for s in ("valid", "test")})
        y = data["train"][1]
        features = "the word, its neighbours, prefix/suffix 3 and shape"
    else:
        vec = CountVectorizer(ngram_range=(1, 2), token_pattern=WORD) if task.kind == "sequence" else CountVectorizer(analyzer=_pair_analyzer())
        X = {"train": vec.fit_transform(_texts(task, feats["train"], "train"))}
        X.update({s: vec.transform(_texts(task, feats[s], s)) for s in ("valid", "test")})
        y = [f["labels"] for f in feats["train"]]
        features = "word unigrams + bigrams" + ("" if task.kind == "sequence" else " of premise and hypothesis, and their shared words")
    tfidf = TfidfTransformer().fit(X["train"])
    X = {s: _int32(x.tocsr()) for s, x in X.items()}
    tf = {s: _int32(tfidf.transform(x)) for s, x in X.items()}

    def predictions(model, use_tfidf: bool) -> dict[str, dict]:
        out = {}
        for split in ("valid", "test"):
            labels = model.predict(tf[split] if use_tfidf else X[split]).tolist()
            if task.kind == "token":
                it, per = iter(labels), {}
                for f, n in zip(feats[split], data[split][2]):
                    words = [next(it) for _ in range(n)]
                    wi = iter(words)
                    per[f["index"]] = [next(wi) if lab != -100 else 0 for lab in f["labels"]]  # unscored positions are ignored
                out[split] = per
            else:
                out[split] = {f["index"]: lab for f, lab in zip(feats[split], labels)}
        return out

    tried, best = {}, None
    for name, use_tfidf, make in _candidates():
        model = make().fit(tf["train"] if use_tfidf else X["train"], y)
        preds = predictions(model, use_tfidf)
        valid = evaluate(task, preds["valid"], feats["valid"])["score"]
        tried[name] = valid
        if best is None or valid > best[0]:
            best = (valid, name, preds)
    info = {"description": f"{best[1]} on {features}, chosen on the validation split", "model": best[1],
            "candidates_valid": tried, "features": X["train"].shape[1]}
    return info, best[2]


BASELINES = {"majority": majority, "bow": bow}


def run_baselines(task: Task, feats: dict[str, list[dict]]) -> dict[str, dict]:
    """{name: {description..., valid: scores, test: scores}}; scores: score, accuracy, macro_f1."""
    out = {}
    for name, fn in BASELINES.items():
        info, preds = fn(task, feats)
        for split, p in preds.items():
            ev = evaluate(task, p, feats[split])
            info[split] = {k: ev[k] for k in ("score", "accuracy", "macro_f1")}
        out[name] = info
    return out
