"""The teacher of embedding distillation: each 5 s row of the clips and of the unlabelled audio, clean and in its
background-mixed copies, through a frozen foundation model, computed once and cached.

**Sources.** The run's wave cache (the labelled clips) and one store per unlabelled folder
(``train.distill_unlabelled``, :func:`~birdclef.data.cache.prepare_audio_store`: its recordings decoded once, read
like a clip cache); with a pseudo table, perhaps one more: the table's windows no other source holds
(:mod:`birdclef.train.distill_pseudo`). **Rows** are :func:`~birdclef.birdnet.head_embed.clip_rows` of each source: every full 5 s
window of the stored audio, plus a last partial one holding at least one 3 s chunk (zero padded).
**Copies**: copy 0 is the clean row; copies ``1..train.embed_copies`` mix the row, with probability
``train.background_prob``, with a seeded train_soundscapes excerpt (:func:`~birdclef.birdnet.head_embed.copy_wave`),
so the student can be trained on exactly the audio the teacher heard.

**Targets.** The teacher embeds a row as an embedding head's input does (:class:`~birdclef.birdnet.head_inputs.
HeadInputs`: resampled to the model's rate, its windows at ``infer.birdnet_hop_s``); a row's target is the mean of
its window embeddings (BirdNET: three 3 s windows; Perch v2: its one 5 s window), shape (D,), minus the mean target
of every clean row of every source with ``train.distill_center`` (the cached embeddings stay raw).

**Cache** (the embedding stage of head runs, :func:`~birdclef.birdnet.head_embed.embed_copies`: chunked, resumable,
on Dask with ``train.embed_engine: dask``)::

    ROOT/audio/<key>/                  an unlabelled folder's decoded store
    ROOT/teacher/<key>/copy{c}.npz     per source: rows (n,) and emb (n, C, D) float16 of copy c

with ROOT = ``CACHE/distill`` when a wave cache folder is given (``train --cache``: runs and rounds sharing it
compute the teacher once) and ``RUN/distill`` otherwise. The key covers what changes the embeddings: the teacher's
file, rate, windows and hop, the source's files and lengths, the seed, the background settings and the background
files. Folds and resumed runs read the same files; more copies add files, the finished ones are kept.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from birdclef.birdnet.head_embed import clip_rows, copy_wave, embed_copies
from birdclef.birdnet.head_inputs import HeadInputs
from birdclef.config import FOUNDATION_BACKBONE, Config, ModelConfig
from birdclef.data.augment import BackgroundBank
from birdclef.data.cache import WaveCache, prepare_audio_store
from birdclef.errors import BirdclefError, BirdclefWarning, DatasetError

DEFAULT_UNLABELLED = "train_soundscapes"
"""The one unlabelled folder that may be absent (a data set without soundscapes distils its clips only)."""


def teacher_config(config: Config) -> Config:
    """`config` as an embedding head on ``train.distill_teacher`` (its model section; no teacher of its own): what
    :meth:`HeadInputs.from_config` (in this process and on each Dask worker) loads as the teacher."""
    model = ModelConfig(backbone=FOUNDATION_BACKBONE, freeze_backbone=True, foundation=(config.train.distill_teacher,),
                        frontend=config.model.frontend)
    train = dataclasses.replace(config.train, distill_teacher=None, distill_head_init=None)
    return dataclasses.replace(config, model=model, train=train)


def unlabelled_folders(config: Config, data_root: Path) -> list[Path]:
    """The folders of ``train.distill_unlabelled`` (relative to `data_root`, or absolute), each once.

    Raises:
        DatasetError: a named folder is missing (but :data:`DEFAULT_UNLABELLED`, which is skipped with a warning).
    """
    folders: dict[Path, Path] = {}
    for entry in config.train.distill_unlabelled:
        path = Path(entry) if Path(entry).is_absolute() else Path(data_root) / entry
        if not path.is_dir():
            if entry == DEFAULT_UNLABELLED:
                warnings.warn(f"{path}: no unlabelled soundscapes; distilling the clips only", BirdclefWarning,
                              stacklevel=2)
                continue
            raise DatasetError(f"{path}: unlabelled audio folder not found (train.distill_unlabelled / --unlabelled)")
        folders.setdefault(path.resolve(), path)
    return list(folders.values())


@dataclass
class TeacherSource:
    """One source's rows and their cached teacher targets (module docstring).

    Attributes:
        name: ``clips`` or the unlabelled folder.
        cache: its audio (the wave cache or the folder's store).
        clips: (R,) position in `cache` of each row's recording.
        windows: (R,) 5 s window number of each row in its recording.
        lookup: per copy, (R,) position of each row in that copy's targets, -1 where the copy left it clean.
        targets: per copy, (n, D) float16 row targets.
    """

    name: str
    cache: WaveCache
    clips: np.ndarray
    windows: np.ndarray
    lookup: list[np.ndarray]
    targets: list[np.ndarray]

    def __len__(self) -> int:
        return len(self.clips)

    @property
    def n_copies(self) -> int:
        """Mixed copies besides the clean one."""
        return len(self.targets) - 1

    def row(self, row: int, copy: int, config: Config, bank: BackgroundBank | None) -> tuple[np.ndarray, np.ndarray]:
        """((5 s,) float32 audio, (D,) float32 teacher target) of `row` in `copy`, the clean row where that copy's
        draw left it clean: the very audio the teacher embedded."""
        position = int(self.lookup[copy][row])
        if position < 0:
            copy, position = 0, row
        wave = copy_wave(self.cache, copy, int(self.clips[row]), int(self.windows[row]), config, bank)
        return wave, self.targets[copy][position].astype(np.float32)


@dataclass
class Teacher:
    """The teacher's targets of every source, and what they cost."""

    spec: str
    embedding_size: int
    sources: list[TeacherSource]
    """The clips first, then each unlabelled folder."""
    provenance: list[dict]
    keys: list[str]
    """The cache folder name of each source's targets."""
    center: np.ndarray | None = None
    """(D,) float32 subtracted from every target (``train.distill_center``), or None."""
    embed_wall_s: float = 0.0
    """Wall seconds spent computing embeddings in this call (0 when every target was cached)."""
    embed_cpu_s: float = 0.0
    """CPU seconds of this process (all threads) spent computing them."""
    rows_computed: int = 0
    """Rows (of all sources and copies) embedded in this call; 0 when everything was cached. (A part of a copy
    finished by an earlier, killed call counts too.)"""

    def record(self) -> dict:
        """What ``RUN/teacher.json`` says (JSON-able)."""
        return {"teacher": self.spec, "embedding_size": self.embedding_size, "centred": self.center is not None,
                "foundation": self.provenance,
                "sources": [{"name": s.name, "rows": len(s), "copies": s.n_copies,
                             "mixed_rows": [int((lk >= 0).sum()) for lk in s.lookup[1:]], "key": key}
                            for s, key in zip(self.sources, self.keys)],
                "rows_computed": self.rows_computed, "embed_wall_s": round(self.embed_wall_s, 1),
                "embed_cpu_s": round(self.embed_cpu_s, 1)}


def teacher_key(config: Config, cache: WaveCache, inputs: HeadInputs, bank: BackgroundBank | None) -> str:
    """Hash of what changes a source's targets: :func:`~birdclef.birdnet.head_train.embedding_key` (teacher file,
    rate, windows, hop, seed, background settings, the source's files and lengths) and the background files."""
    from birdclef.birdnet.head_train import embedding_key

    files = [] if bank is None else [[Path(f).name, Path(f).stat().st_size] for f in bank.files]
    record = [embedding_key(config, cache, inputs), files]
    return hashlib.sha256(json.dumps(record).encode()).hexdigest()[:16]


def _source(name: str, cache: WaveCache, copies: list[tuple[np.ndarray, np.ndarray]]) -> TeacherSource:
    """A source from :func:`embed_copies`' (rows, (n, C, D) emb) per copy: targets averaged over the C windows."""
    clips, windows = clip_rows(cache)
    lookup, targets = [], []
    for rows, emb in copies:
        where = np.full(len(clips), -1, np.int64)
        where[rows] = np.arange(len(rows))
        lookup.append(where)
        targets.append(emb.astype(np.float32).mean(axis=1).astype(np.float16))  # (n, D)
    return TeacherSource(name, cache, clips, windows, lookup, targets)


def source_stores(config: Config, data_root: Path, cache: WaveCache, root: Path,
                  progress: bool = True) -> list[tuple[str, WaveCache]]:
    """(name, audio) of each source: the clips (`cache`), then each unlabelled folder's store (decoded once under
    ``root/audio``).

    Raises:
        DatasetError: an unlabelled folder is missing, or none of its recordings decodes.
    """
    named = [("clips", cache)]
    for folder in unlabelled_folders(config, data_root):
        store = prepare_audio_store(folder, root / "audio", config.data.sample_rate, config.train.distill_max_file_s,
                                    config.train.num_workers, progress=progress)
        named.append((str(folder), WaveCache(store.out)))
    return named


def prepare_teacher(config: Config, data_root: Path, cache: WaveCache, bank: BackgroundBank | None, root: Path,
                    progress: bool = True, stores: list[tuple[str, WaveCache]] | None = None) -> Teacher:
    """The targets of the clips (`cache`) and of every unlabelled folder, computed where not cached (module docstring).

    Args:
        stores: the sources to embed when the caller has prepared them (:func:`source_stores`, perhaps with more
            appended: a pseudo table's windows, :mod:`birdclef.train.distill_pseudo`); None: :func:`source_stores`.

    Raises:
        BirdclefError: the teacher cannot be loaded (unknown kind, missing file, missing runtime).
        DatasetError: an unlabelled folder is missing, or none of its recordings decodes.
    """
    started = time.perf_counter()
    teach = teacher_config(config)
    inputs = HeadInputs.from_config(teach)
    if not inputs.single:
        raise BirdclefError(f"train.distill_teacher {config.train.distill_teacher!r}: one foundation model, please")
    named = source_stores(config, data_root, cache, root, progress) if stores is None else stores
    decoded_s, cpu = time.perf_counter() - started, time.process_time()
    sources, keys, computed = [], [], 0
    for name, source in named:
        key = teacher_key(teach, source, inputs, bank)
        folder = root / "teacher" / key
        fresh = [c for c in range(config.train.embed_copies + 1) if not (folder / f"copy{c}.npz").is_file()]
        copies = embed_copies(teach, source, inputs, bank, folder, progress)
        computed += sum(len(copies[c][0]) for c in fresh)  # rows embedded (a copy holds the rows it mixed)
        sources.append(_source(name, source, copies))
        keys.append(key)
    teacher = Teacher(config.train.distill_teacher, inputs.embedding_size, sources, inputs.provenance(), keys,
                      rows_computed=computed)
    if config.train.distill_center:
        teacher.center = np.concatenate([s.targets[0].astype(np.float32) for s in sources]).mean(axis=0)
        for s in sources:
            s.targets = [(t.astype(np.float32) - teacher.center).astype(np.float16) for t in s.targets]
    if computed:
        teacher.embed_wall_s = time.perf_counter() - started - decoded_s
        teacher.embed_cpu_s = time.process_time() - cpu
    return teacher
