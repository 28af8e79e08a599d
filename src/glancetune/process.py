"""Process-wide set-up made by the CLI before any heavy import: environment defaults (the CUDA allocator,
tokenizers' threads), the verbosity of the libraries, and glancetune's own log format."""
from __future__ import annotations

import os
import sys
from pathlib import Path

# PyTorch's CUDA allocator grows segments instead of reserving new fixed ones: on the H200 the nf4-bnb FLUX.1 job
# reserved 13.4 GiB with it against 18.1 without, for the same 11.7 GiB allocated and no slower (bench/RESULTS.md)
ALLOC_CONF = "expandable_segments:True"
COMMAND_LINE = False  # set by `torch_defaults` (cli.main): a job's time report then counts this process's imports


def cache_root() -> Path:
    """Where glancetune keeps its own files (caches, tiny models, compile marks, rescued LoRAs): $GLANCETUNE_HOME,
    default ~/.cache/glancetune."""
    return Path(os.environ.get("GLANCETUNE_HOME", Path.home() / ".cache" / "glancetune"))


def torch_defaults() -> None:
    """Set before torch touches CUDA; a value the user set is kept. The allocator (either of torch's two names);
    inductor's on-disk cache (`compile_transformer`) under glancetune's cache folder instead of /tmp, where a reboot
    or a container restart loses it: on the H200 a warm cache cut regional compile from 54 s to 7.5 s."""
    global COMMAND_LINE
    COMMAND_LINE = True
    if not (os.environ.get("PYTORCH_CUDA_ALLOC_CONF") or os.environ.get("PYTORCH_ALLOC_CONF")):
        os.environ["PYTORCH_CUDA_ALLOC_CONF"] = ALLOC_CONF
    if not os.environ.get("TORCHINDUCTOR_CACHE_DIR"):
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache_root() / "inductor")


def quiet_libraries(models: bool = True) -> None:
    """Warnings and library loggers down to errors; `models`: also transformers' and diffusers' own verbosity and
    progress bars, which imports both (and torch): a command that loads no model (validate-dataset) skips it."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import logging
    import warnings

    warnings.filterwarnings("ignore", message=".*torchvision.*")
    warnings.filterwarnings("ignore", message=".*peft_config.*multiple adapters.*")
    for name in ("diffusers", "transformers", "peft", "bitsandbytes", "torchao"):  # bnb: an optional CPU kernel
        logging.getLogger(name).setLevel(logging.ERROR)
    if not models:
        return
    try:
        from transformers.utils import logging as tlog

        tlog.set_verbosity_error()
        tlog.disable_progress_bar()
        from diffusers.utils import logging as dlog

        dlog.set_verbosity_error()
        dlog.disable_progress_bar()
    except ImportError:
        pass


def setup_logging(verbose: bool = False) -> None:
    """glancetune's loggers as plain text: INFO on stdout as the bare message (`notice: ...`, progress lines),
    WARNING and above on stderr (so a failing command's stderr is its one error line plus real warnings),
    WARNING as `warning: ...`, ERROR as `error: ...`; DEBUG only with `verbose`. Lines go through tqdm.write so
    they do not break a progress bar. Idempotent; records still propagate (pytest's caplog sees them)."""
    import logging

    class Text(logging.Formatter):
        def format(self, record):
            msg = record.getMessage()
            if record.exc_info:
                msg += "\n" + self.formatException(record.exc_info)
            return msg if record.levelno < logging.WARNING else f"{record.levelname.lower()}: {msg}"

    class Stderr(logging.Handler):  # sys.stdout/stderr looked up per line: redirected / captured streams work
        def emit(self, record):
            try:
                from tqdm import tqdm

                stream = sys.stdout if record.levelno < logging.WARNING else sys.stderr
                tqdm.write(self.format(record), file=stream)
            except Exception:
                self.handleError(record)

    # torchao announces at import that its C++ kernels do not match this torch; glancetune uses none of them
    logging.getLogger("torchao").setLevel(logging.ERROR)
    logger = logging.getLogger("glancetune")
    for h in [h for h in logger.handlers if getattr(h, "_glancetune", False)]:
        logger.removeHandler(h)
    handler = Stderr()
    handler._glancetune = True
    handler.setFormatter(Text())
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
