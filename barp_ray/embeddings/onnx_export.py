"""ONNX files of a sentence encoder, exported once from its local files into a cache and reused.

sentence-transformers' own ONNX backend goes through `optimum-onnx`, which does not support transformers 5
(huggingface/optimum-onnx#114; sentence-transformers 6 needs transformers 5), so the export here uses the
two libraries underneath it directly: `torch.onnx.export` of the Hugging Face model (fp32) and ONNX
Runtime's dynamic int8 quantisation (`quantize_dynamic`, per-channel weights). Pooling and normalisation
stay in numpy (`onnx_encoder.py`), exactly as sentence-transformers computes them.

Cache layout: ``<root>/<model slug>-<fingerprint>/{model.onnx, model_int8.onnx, meta.json}``, where the
fingerprint hashes the source files' content and the export recipe. Root: ``$BARP_ONNX_CACHE``, else
``$XDG_CACHE_HOME/barp-ray/onnx`` (``~/.cache/barp-ray/onnx``). A build happens in a temporary folder next
to the final one and is published with one atomic rename, so two processes building at once both end up
with one complete copy, and a crash leaves no half-written model behind.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

from barp_ray.embeddings.encoder import resolve_encoder

log = logging.getLogger(__name__)

CACHE_ENV = "BARP_ONNX_CACHE"
RECIPE_VERSION = "1: torch.onnx.export opset 17 (TorchScript exporter) + quantize_dynamic QInt8 per-channel"
FP32_FILE = "model.onnx"
INT8_FILE = "model_int8.onnx"
META_FILE = "meta.json"  # written last: its presence marks a complete export
_SOURCE_GLOBS = ("*.json", "*.txt", "*.safetensors", "*.bin", "1_Pooling/*.json")


def onnx_cache_root() -> Path:
    """Where exports live: `$BARP_ONNX_CACHE`, else the user's cache dir."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "barp-ray" / "onnx"


def source_fingerprint(source: Path) -> str:
    """sha256 over the model files' names and content plus the export recipe (first 16 hex digits)."""
    digest = hashlib.sha256(RECIPE_VERSION.encode())
    files = sorted({p for pattern in _SOURCE_GLOBS for p in source.glob(pattern) if p.is_file()})
    for path in files:
        digest.update(str(path.relative_to(source)).encode() + b"\0")
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


def export_dir_for(name: str, cache_root: str | Path | None = None) -> tuple[Path, Path]:
    """(local source folder of `name`, the folder its export lives in)."""
    source = Path(resolve_encoder(name))
    if not source.is_dir():
        raise FileNotFoundError(
            f"encoder {name!r}: the ONNX backends export from local model files and {source} is not a folder; "
            "use the packaged MiniLM (default) or a local sentence-transformers folder"
        )
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{source.parent.name}_{source.name}").strip("_")[-60:]
    root = Path(cache_root) if cache_root is not None else onnx_cache_root()
    return source, root / f"{slug}-{source_fingerprint(source)}"


def publish_atomically(final: Path, build: Callable[[Path], None]) -> bool:
    """Build `final` once: `build(tmp)` fills a temporary folder beside it, then one rename publishes it.

    Returns True if this call published it, False if it was already complete or another process won the
    race (its copy is kept, ours discarded). `build` must write `META_FILE` last.
    """
    if (final / META_FILE).exists():
        return False
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        build(tmp)
        if not (tmp / META_FILE).exists():
            raise RuntimeError(f"export into {tmp} wrote no {META_FILE}")
        try:
            os.rename(tmp, final)  # atomic; fails if another process published first (non-empty target)
            return True
        except OSError:
            if (final / META_FILE).exists():
                return False
            if final.exists() and not any(final.iterdir()):
                final.rmdir()
                os.rename(tmp, final)
                return True
            raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def ensure_onnx_export(name: str, cache_root: str | Path | None = None) -> Path:
    """The export folder of encoder `name` (fp32 and int8 models), built on first use, reused after."""
    source, final = export_dir_for(name, cache_root)
    if (final / META_FILE).exists():
        return final
    start = time.perf_counter()
    built = publish_atomically(final, lambda tmp: export_onnx(source, tmp))
    if built:
        log.warning("exported %s to ONNX (fp32 + int8) in %s in %.1fs", name, final, time.perf_counter() - start)
    return final


class _LastHiddenState:
    """Wraps a Hugging Face encoder so the traced graph returns token embeddings only."""

    @staticmethod
    def module(hf_model):
        import torch

        class Wrapper(torch.nn.Module):
            def __init__(self, model) -> None:
                super().__init__()
                self.model = model

            def forward(self, input_ids, attention_mask, token_type_ids):
                return self.model(
                    input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
                ).last_hidden_state

        return Wrapper(hf_model).eval()


def export_onnx(source: Path, out: Path) -> None:
    """Write `model.onnx` (fp32), `model_int8.onnx` (dynamic int8) and `meta.json` of `source` into `out`."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import onnxruntime
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(source), device="cpu")
    hf_model = st[0].auto_model
    tokenizer = st[0].tokenizer
    sample = tokenizer(
        ["an example prompt", "a second, longer example prompt for the export"], padding=True, return_tensors="pt"
    )
    names = ["input_ids", "attention_mask", "token_type_ids"]
    if "token_type_ids" not in sample:
        sample["token_type_ids"] = torch.zeros_like(sample["input_ids"])
    axes = {k: {0: "batch", 1: "sequence"} for k in [*names, "last_hidden_state"]}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _LastHiddenState.module(hf_model),
            tuple(sample[k] for k in names),
            str(out / FP32_FILE),
            input_names=names,
            output_names=["last_hidden_state"],
            dynamic_axes=axes,
            opset_version=17,
            dynamo=False,
        )
    quantize_dynamic(str(out / FP32_FILE), str(out / INT8_FILE), weight_type=QuantType.QInt8, per_channel=True)
    meta = {
        "source": str(source),
        "fingerprint": source_fingerprint(source),
        "recipe": RECIPE_VERSION,
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "files": {"onnx": FP32_FILE, "onnx-int8": INT8_FILE},
        "created": time.time(),
    }
    (out / META_FILE).write_text(json.dumps(meta, indent=2))
