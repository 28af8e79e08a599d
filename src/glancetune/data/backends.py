"""The dataloader JSON (SimpleTuner's multidatabackend.json): parse and check every entry into a `DatasetSpec`.

Two backends: the seeds' `simple` backend (`image_dir`, `caption_extension`, `resolution`, `shuffle`) and
SimpleTuner's `local` backend with `dataset_type` image | conditioning | text_embeds. Unknown keys fail with the
closest valid key; SimpleTuner keys we have not built fail with "not implemented yet" unless their value is
neutral, so nothing is silently ignored. Errors are one line naming the file, the entry and the key.
"""
from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, field
from pathlib import Path

from ..config.schema import NEUTRAL
from ..errors import GlanceError

SIMPLE_KEYS = {"backend", "image_dir", "caption_extension", "resolution", "shuffle", "id", "disabled"}
COMMON_KEYS = {"id", "type", "dataset_type", "disabled", "disable"}
GEOMETRY_KEYS = {"resolution", "resolution_type", "crop", "crop_style", "crop_aspect", "crop_aspect_buckets",
                 "maximum_image_size", "target_downsample_size", "cache_dir_vae", "metadata_backend",
                 "hash_filenames", "instance_data_dir"}
CAPTION_KEYS = {"caption_strategy", "instance_prompt", "prepend_instance_prompt", "only_instance_prompt",
                "caption_extension", "disable_multiline_split"}
IMAGE_KEYS = COMMON_KEYS | GEOMETRY_KEYS | CAPTION_KEYS | {
    "minimum_image_size", "minimum_aspect_ratio", "maximum_aspect_ratio", "repeats", "conditioning_data",
    "text_embeds"}
CONDITIONING_KEYS = COMMON_KEYS | GEOMETRY_KEYS | CAPTION_KEYS | {"conditioning_type", "source_dataset_id"}
TEXT_EMBEDS_KEYS = COMMON_KEYS | {"default", "cache_dir", "write_batch_size"}

# SimpleTuner keys we know but have not built -> extra neutral values (besides config.NEUTRAL)
NOT_IMPLEMENTED: dict[str, tuple] = {k: () for k in (
    "max_upscale_threshold", "end_epoch", "end_step", "is_regularisation_data", "is_regularization_data",
    "vae_cache_clear_each_epoch", "vae_cache_ondemand", "vae_cache_disable", "skip_file_discovery",
    "preserve_data_backend_cache", "caption_shuffle", "image_embeds", "conditioning_image_embeds",
    "cache_dir_conditioning_image_embeds", "conditioning_image_embed_batch_size", "conditioning",
    "timestep_sampling_offset", "slider_strength", "max_num_samples", "delete_unwanted_images",
    "delete_problematic_images", "delete_nsfw_images", "metadata_update_interval", "grounding", "video", "audio",
    "parquet", "caption_filter_list", "text_cache_ondemand", "text_cache_disable", "text_encoder_batch_size",
    "scan_for_errors", "aws_bucket_name", "aws_region_name", "aws_endpoint_url", "aws_access_key_id",
    "aws_secret_access_key", "aws_data_prefix", "csv_file", "csv_caption_column", "csv_cache_dir",
    "dataset_name", "image_column", "caption_column", "source", "metadata", "webshart", "s2v_datasets")}
NOT_IMPLEMENTED.update({"probability": (1, 1.0), "start_epoch": (1,), "start_step": (1,)})

CAPTION_STRATEGIES = {"textfile": "textfile", "filename": "filename", "instanceprompt": "instanceprompt",
                      "instance_prompt": "instanceprompt"}
LATER_STRATEGIES = ("parquet", "huggingface", "webshart", "csv")
RESOLUTION_TYPES = ("pixel", "area", "pixel_area")
CROP_STYLES = {"center": "center", "centre": "center", "random": "random", "corner": "corner"}
CROP_ASPECTS = ("square", "preserve", "closest", "random")
CONDITIONING_TYPES = ("reference_strict", "reference_loose")
LATER_TYPES = ("aws", "csv", "huggingface", "webshart", "memory")
LATER_DATASET_TYPES = ("video", "audio", "image_embeds", "conditioning_image_embeds", "eval")


@dataclass
class DatasetSpec:
    """One enabled dataloader entry, checked and with SimpleTuner's defaults filled in."""

    id: str
    where: str  # "<file>: dataset '<id>'" for error messages
    backend: str = "local"  # simple | local
    dataset_type: str = "image"  # image | conditioning | text_embeds
    root: Path | None = None
    root_key: str = "instance_data_dir"
    recursive: bool = True
    caption_strategy: str = "filename"
    caption_strategy_given: bool = False
    caption_extension: str = ".txt"
    instance_prompt: str | None = None
    prepend_instance_prompt: bool = False
    resolution: float = 1024
    resolution_type: str = "pixel_area"
    minimum_image_size: float | None = None
    maximum_image_size: float | None = None
    target_downsample_size: float | None = None
    minimum_aspect_ratio: float | None = None
    maximum_aspect_ratio: float | None = None
    crop: bool = False
    crop_style: str = "random"
    crop_aspect: str = "square"
    crop_aspect_buckets: tuple[tuple[float, float | None], ...] = ()
    repeats: int = 0
    shuffle: bool = True
    cache_dir_vae: str | None = None
    conditioning_data: tuple[str, ...] = ()
    conditioning_type: str | None = None
    source_dataset_id: str | None = None
    text_embeds: str | None = None
    default: bool = False
    cache_dir: str | None = None
    write_batch_size: int | None = None
    notices: list[str] = field(default_factory=list)


def _hint(key: str, valid) -> str:
    hint = difflib.get_close_matches(key, sorted(valid), n=1, cutoff=0.6)
    return f"; did you mean {hint[0]!r}?" if hint else ""


def _choice(where: str, key: str, value, valid, later=()) -> str:
    if isinstance(value, str) and value in later:
        raise GlanceError(f"{where}: {key} {value!r} is not implemented yet")
    if not isinstance(value, str) or value not in valid:
        raise GlanceError(f"{where}: unknown {key} {value!r}{_hint(str(value), valid)} (valid: {', '.join(valid)})")
    return valid[value] if isinstance(valid, dict) else value


def _number(where: str, key: str, value, *, positive=True, optional=False, integer=False):
    if value is None and optional:
        return None
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if ok and integer:
        ok = float(value).is_integer()
    if not ok or (positive and value <= 0) or (not positive and value < 0):
        kind = "a whole number" if integer else "a number"
        bound = "> 0" if positive else ">= 0"
        raise GlanceError(f"{where}: key {key!r} must be {kind} {bound}, got {value!r}")
    return int(value) if integer else value


def _flag(where: str, key: str, value) -> bool:
    if not isinstance(value, bool):
        raise GlanceError(f"{where}: key {key!r} must be true or false, got {value!r}")
    return value


def _text(where: str, key: str, value, optional=True) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value.strip():
        raise GlanceError(f"{where}: key {key!r} must be a non-empty string, got {value!r}")
    return value


def _check_keys(where: str, entry: dict, allowed: set[str], kind: str) -> None:
    for key, value in entry.items():
        if key in allowed:
            continue
        if key in NOT_IMPLEMENTED:
            if value in NEUTRAL or value in NOT_IMPLEMENTED[key]:
                continue
            raise GlanceError(f"{where}: key {key!r} is a SimpleTuner option that glancetune does not implement "
                              "yet; remove it")
        others = (IMAGE_KEYS | CONDITIONING_KEYS | TEXT_EMBEDS_KEYS) - allowed
        if key in others:
            raise GlanceError(f"{where}: key {key!r} does not apply to dataset_type {kind!r}")
        raise GlanceError(f"{where}: unknown key {key!r}{_hint(key, allowed | set(NOT_IMPLEMENTED))}")


def _aspect_buckets(where: str, value) -> tuple[tuple[float, float | None], ...]:
    if value in (None, []):
        return ()
    if not isinstance(value, list):
        raise GlanceError(f"{where}: key 'crop_aspect_buckets' must be a list of aspect ratios (width/height)")
    out = []
    for b in value:
        if isinstance(b, dict):
            extra = set(b) - {"aspect", "weight"}
            if extra or "aspect" not in b or "weight" not in b:
                raise GlanceError(f"{where}: crop_aspect_buckets entries are numbers or {{\"aspect\": x, \"weight\": w}}"
                                  f", got {b!r}")
            out.append((_number(where, "crop_aspect_buckets", b["aspect"]),
                        _number(where, "crop_aspect_buckets weight", b["weight"], positive=False)))
        else:
            out.append((_number(where, "crop_aspect_buckets", b), None))
    weighted = [w is not None for _, w in out]
    if any(weighted) and not all(weighted):
        raise GlanceError(f"{where}: crop_aspect_buckets mixes weighted and plain entries")
    if all(weighted) and abs(sum(w for _, w in out) - 1.0) > 1e-6:
        raise GlanceError(f"{where}: crop_aspect_buckets weights must add up to 1, got {sum(w for _, w in out):g}")
    return tuple(out)


def _simple(where: str, b: dict, index: int) -> DatasetSpec:
    for key in b:
        if key not in SIMPLE_KEYS:
            raise GlanceError(f"{where}: unknown key {key!r}{_hint(key, SIMPLE_KEYS)}")
    if not b.get("image_dir"):
        raise GlanceError(f"{where}: key 'image_dir' is required")
    ext = str(b.get("caption_extension", ".txt"))
    res = b.get("resolution", 1024)
    if isinstance(res, bool) or not isinstance(res, (int, float)) or res <= 0:
        raise GlanceError(f"{where}: key 'resolution' must be a positive number of pixels, got {res!r}")
    return DatasetSpec(
        id=str(b.get("id") or f"simple-{index}"), where=where, backend="simple", root=Path(b["image_dir"]),
        root_key="image_dir", recursive=False, caption_strategy="textfile", caption_strategy_given=True,
        caption_extension=ext if ext.startswith(".") else "." + ext, resolution=res, resolution_type="pixel_area",
        shuffle=_flag(where, "shuffle", b.get("shuffle", True)))


def _crop_keys(where: str, b: dict, spec: DatasetSpec) -> None:
    """crop, crop_style / aspect / buckets, maximum_image_size + target_downsample_size (SimpleTuner's semantics)."""
    spec.crop = _flag(where, "crop", b.get("crop", False))
    spec.crop_style = _choice(where, "crop_style", b.get("crop_style", "random"), CROP_STYLES, ("face",))
    spec.crop_aspect = _choice(where, "crop_aspect", b.get("crop_aspect", "square"), CROP_ASPECTS)
    spec.crop_aspect_buckets = _aspect_buckets(where, b.get("crop_aspect_buckets"))
    if spec.crop and spec.crop_aspect in ("closest", "random") and not spec.crop_aspect_buckets:
        raise GlanceError(f"{where}: crop_aspect {spec.crop_aspect!r} needs crop_aspect_buckets (a list of aspect "
                          "ratios, width/height)")
    if not spec.crop and any(k in b for k in ("crop_style", "crop_aspect", "crop_aspect_buckets")):
        spec.notices.append(f"{where}: crop is false, so crop_style / crop_aspect / crop_aspect_buckets have no "
                            "effect (the image keeps its aspect ratio)")
    mx = _number(where, "maximum_image_size", b.get("maximum_image_size"), optional=True)
    td = _number(where, "target_downsample_size", b.get("target_downsample_size"), optional=True)
    if (mx is not None or td is not None) and (mx is None or td is None or not spec.crop):
        spec.notices.append(f"{where}: maximum_image_size / target_downsample_size act only together and with "
                            "crop: true (SimpleTuner semantics); here they have no effect")
        mx = td = None
    spec.maximum_image_size, spec.target_downsample_size = mx, td


def _caption_keys(where: str, b: dict, spec: DatasetSpec) -> None:
    """caption_strategy, caption_extension and the instance prompt keys of an image dataset."""
    spec.caption_strategy_given = "caption_strategy" in b
    spec.caption_strategy = _choice(where, "caption_strategy", b.get("caption_strategy", "filename"),
                                    CAPTION_STRATEGIES, LATER_STRATEGIES)
    ext = _text(where, "caption_extension", b.get("caption_extension", ".txt"))
    spec.caption_extension = ext if ext.startswith(".") else "." + ext
    spec.instance_prompt = _text(where, "instance_prompt", b.get("instance_prompt"))
    spec.prepend_instance_prompt = _flag(where, "prepend_instance_prompt", b.get("prepend_instance_prompt", False))
    only = _flag(where, "only_instance_prompt", b.get("only_instance_prompt", False))
    _flag(where, "disable_multiline_split", b.get("disable_multiline_split", False))
    if only:
        spec.caption_strategy = "instanceprompt"
    if (spec.caption_strategy == "instanceprompt" or spec.prepend_instance_prompt) and not spec.instance_prompt:
        what = "caption_strategy 'instanceprompt'" if spec.caption_strategy == "instanceprompt" and not only \
            else ("only_instance_prompt" if only else "prepend_instance_prompt")
        raise GlanceError(f"{where}: {what} needs a non-empty 'instance_prompt'")
    if spec.instance_prompt and spec.caption_strategy != "instanceprompt" and not spec.prepend_instance_prompt:
        spec.notices.append(f"{where}: instance_prompt is not used with caption_strategy {spec.caption_strategy!r} "
                            "(set prepend_instance_prompt or only_instance_prompt to use it)")


def _local(where: str, b: dict) -> DatasetSpec:
    dtype = b.get("dataset_type", "image")
    _choice(where, "dataset_type", dtype, ("image", "conditioning", "text_embeds"), LATER_DATASET_TYPES)
    allowed = {"image": IMAGE_KEYS, "conditioning": CONDITIONING_KEYS, "text_embeds": TEXT_EMBEDS_KEYS}[dtype]
    _check_keys(where, b, allowed, dtype)
    spec = DatasetSpec(id=b["id"], where=where, dataset_type=dtype)
    if dtype == "text_embeds":
        spec.default = _flag(where, "default", b.get("default", False))
        spec.cache_dir = _text(where, "cache_dir", b.get("cache_dir"))
        spec.write_batch_size = _number(where, "write_batch_size", b.get("write_batch_size"), optional=True,
                                        integer=True)
        return spec
    root = b.get("instance_data_dir")
    if not isinstance(root, str) or not root.strip():
        raise GlanceError(f"{where}: key 'instance_data_dir' is required (the folder of images)"
                          if root in (None, "") else f"{where}: key 'instance_data_dir' must be a path, got {root!r}")
    spec.root = Path(root)
    spec.resolution = _number(where, "resolution", b.get("resolution", 1024))
    spec.resolution_type = _choice(where, "resolution_type", b.get("resolution_type", "pixel_area"), RESOLUTION_TYPES)
    _crop_keys(where, b, spec)
    spec.cache_dir_vae = _text(where, "cache_dir_vae", b.get("cache_dir_vae"))
    _choice(where, "metadata_backend", b.get("metadata_backend", "discovery"), ("discovery",),
            ("parquet", "huggingface", "webshart", "json"))
    if dtype == "conditioning":
        spec.conditioning_type = _choice(where, "conditioning_type", b.get("conditioning_type"), CONDITIONING_TYPES,
                                         ("controlnet", "mask"))
        spec.caption_strategy = ""
        spec.source_dataset_id = _text(where, "source_dataset_id", b.get("source_dataset_id"))
        if any(k in b for k in CAPTION_KEYS):
            spec.notices.append(f"{where}: caption keys are not used on a conditioning dataset (the target's caption "
                                "is the caption)")
        return spec
    spec.minimum_image_size = _number(where, "minimum_image_size", b.get("minimum_image_size"), positive=False,
                                      optional=True) or None
    for key in ("minimum_aspect_ratio", "maximum_aspect_ratio"):
        setattr(spec, key, _number(where, key, b.get(key), optional=True))
    reps = b.get("repeats", 0)
    if isinstance(reps, (int, float)) and not isinstance(reps, bool) and reps < 0:
        raise GlanceError(f"{where}: key 'repeats' must be >= 0 (0 = each image once per epoch), got {reps!r}")
    spec.repeats = _number(where, "repeats", reps, positive=False, integer=True)
    _caption_keys(where, b, spec)
    cond = b.get("conditioning_data", [])
    cond = [cond] if isinstance(cond, str) else cond
    if not isinstance(cond, list) or not all(isinstance(c, str) and c for c in cond):
        raise GlanceError(f"{where}: key 'conditioning_data' must be a dataset id or a list of ids, got {cond!r}")
    spec.conditioning_data = tuple(cond)
    spec.text_embeds = _text(where, "text_embeds", b.get("text_embeds"))
    return spec


def read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8-sig"))
    except FileNotFoundError:
        raise GlanceError(f"{path}: data_backend_config file not found") from None
    except json.JSONDecodeError as e:
        raise GlanceError(f"{path}: JSON syntax error at line {e.lineno}, column {e.colno}: {e.msg}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise GlanceError(f"{path}: cannot read data_backend_config ({e})") from None


def load_backends(path: str | Path) -> list[DatasetSpec]:
    """Parse and check the dataloader JSON; returns the enabled datasets (links between them are checked too)."""
    path = Path(path)
    data = read_json(path)
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list) or not all(isinstance(b, dict) for b in data):
        raise GlanceError(f"{path}: expected a list of dataset objects")
    specs: list[DatasetSpec] = []
    seen: dict[str, int] = {}
    for i, b in enumerate(data):
        kind = b["backend"] if "backend" in b else b.get("type") or ("simple" if "image_dir" in b else "local")
        label = f"entry {i}" if not b.get("id") else f"dataset {b['id']!r}"
        where = f"{path}: {label}"
        if kind != "simple" and "backend" in b:
            raise GlanceError(f"{where}: backend {kind!r} is not implemented yet (only 'simple'; SimpleTuner "
                              "datasets use \"type\": \"local\")")
        if kind != "simple":
            _choice(where, "type", kind, ("local",), LATER_TYPES)
            if "id" not in b:
                raise GlanceError(f"{where}: key 'id' is required (a unique name for the dataset)")
            if not isinstance(b["id"], str) or not b["id"].strip():
                raise GlanceError(f"{where}: key 'id' must be a non-empty string, got {b['id']!r}")
        if b.get("id") is not None:
            if b["id"] in seen:
                raise GlanceError(f"{where}: duplicate id {b['id']!r} (also entry {seen[b['id']]})")
            seen[b["id"]] = i
        disabled = b.get("disabled", b.get("disable", False))
        _flag(where, "disabled", disabled)
        spec = _simple(where, b, i) if kind == "simple" else _local(where, b)
        if not disabled:
            specs.append(spec)
    _link(path, specs)
    if not any(s.dataset_type == "image" for s in specs):
        raise GlanceError(f"{path}: no enabled image dataset")
    return specs


def _link(path: Path, specs: list[DatasetSpec]) -> None:
    """conditioning_data / text_embeds / source_dataset_id must name enabled datasets of the right type."""
    by_id = {s.id: s for s in specs}
    linked: set[str] = set()
    for s in specs:
        for cid in s.conditioning_data:
            c = by_id.get(cid)
            if c is None:
                raise GlanceError(f"{s.where}: conditioning_data names unknown dataset {cid!r}"
                                  f"{_hint(cid, by_id)}")
            if c.dataset_type != "conditioning":
                raise GlanceError(f"{s.where}: conditioning_data {cid!r} has dataset_type {c.dataset_type!r}; set "
                                  "\"dataset_type\": \"conditioning\" on it")
            linked.add(cid)
    for s in specs:
        if s.dataset_type == "conditioning":
            if s.id not in linked:
                raise GlanceError(f"{s.where}: conditioning dataset is not linked from any image dataset (add its "
                                  "id to that dataset's conditioning_data)")
            src = s.source_dataset_id
            if src is not None and (src not in by_id or s.id not in by_id[src].conditioning_data):
                raise GlanceError(f"{s.where}: source_dataset_id {src!r} is not an image dataset linking this one")
    embeds = [s for s in specs if s.dataset_type == "text_embeds"]
    defaults = [s for s in embeds if s.default]
    if len(defaults) > 1:
        raise GlanceError(f"{path}: several text_embeds datasets have default: true "
                          f"({', '.join(s.id for s in defaults)}); keep one")
    default = defaults[0] if defaults else (embeds[0] if len(embeds) == 1 else None)
    for s in specs:
        if s.dataset_type != "image":
            continue
        if s.text_embeds is not None:
            t = by_id.get(s.text_embeds)
            if t is None or t.dataset_type != "text_embeds":
                raise GlanceError(f"{s.where}: text_embeds {s.text_embeds!r} is not a text_embeds dataset")
        elif default is not None:
            s.text_embeds = default.id
        elif embeds:
            raise GlanceError(f"{path}: several text_embeds datasets and none has default: true")
