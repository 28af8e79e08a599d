"""The new-run form, generated from `TrainConfig`'s JSON schema (types, allowed values, defaults, help), and the
reading of a submitted form back into a config dict that `config.build_config` validates like a config file.

No second list of keys: every field comes from the schema. The server itself sets the keys that tie a run to its
folder (SERVER_KEYS); `PRIMARY` only orders a few keys first on the page.
"""
from __future__ import annotations

import html
import json
from typing import Any

import yaml

from ..config.schema import OBJECTIVE_DEFAULTS, TrainConfig
from ..errors import GlanceError
from .security import BodyTooLarge

# set by the server for every run: where the data and the outputs live, and resuming by re-running
SERVER_KEYS = {"data_backend_config": "the run's own dataloader JSON",
               "output_dir": "the run's output folder",
               "overwrite_output_dir": "never: a run folder holds one run",
               "resume_from_checkpoint": "latest: resume re-runs the same config"}
# shown first (model and the usual knobs); every other key follows under "All settings"
PRIMARY = ("model_family", "model_flavour", "pretrained_model_name_or_path", "max_train_steps", "learning_rate",
           "lora_rank", "seed", "validation_prompt", "validation_steps", "mixed_precision", "device")


ACRONYMS = {"vae": "VAE", "gib": "GiB", "lora": "LoRA", "lr": "LR", "ema": "EMA", "cfg": "CFG", "gpu": "GPU",
            "cpu": "CPU", "snr": "SNR", "id": "id", "te": "TE", "dtype": "dtype"}


def schema() -> dict:
    return TrainConfig.model_json_schema()


def _variants(prop: dict) -> list[dict]:
    return prop.get("anyOf", [prop])


def field_kind(prop: dict) -> str:
    """bool | choice | number | text (text only) | value (anything else: read as YAML, like --set)."""
    listed = [v for v in _variants(prop) if "enum" in v or "const" in v]
    types = {v.get("type") for v in _variants(prop) if v not in listed} - {"null"}
    if listed and types <= {"boolean"}:  # named values, or named values and true / false (compile_transformer)
        return "choice"
    if types == {"boolean"}:
        return "bool"
    if types <= {"integer", "number"} and types:
        return "number"
    if types == {"string"}:
        return "text"
    return "value"


def choices(prop: dict) -> list:
    out = []
    for v in _variants(prop):
        out += v.get("enum", []) + ([v["const"]] if "const" in v else []) + (
            ["true", "false"] if v.get("type") == "boolean" else [])
    return out


def objective_default(key: str, prop: dict) -> str | None:
    """A key whose default depends on the objective (OBJECTIVE_DEFAULTS), described; None for the others. Such a
    field starts empty, so the run gets its objective's default unless the user types a value."""
    per = {obj: d[key] for obj, d in OBJECTIVE_DEFAULTS.items() if key in d}
    if not per:
        return None
    plain = default_text(prop)
    return ", ".join([f"{v:g} with {obj}" for obj, v in per.items()] + ([f"{plain} otherwise"] if plain else []))


def default_text(prop: dict) -> str:
    """The default as the form shows it ("" for none)."""
    d = prop.get("default")
    if d is None:
        return ""
    if isinstance(d, bool):
        return "true" if d else "false"
    return d if isinstance(d, str) else json.dumps(d)


def form_keys() -> list[str]:
    keys = [k for k in schema()["properties"] if k not in SERVER_KEYS]
    return [k for k in PRIMARY if k in keys] + [k for k in keys if k not in PRIMARY]


def _widget(key: str, prop: dict) -> str:
    kind, default = field_kind(prop), default_text(prop)
    per_objective = objective_default(key, prop)
    if per_objective is not None:  # empty: the objective's default, not the schema's, unless a value is typed
        return (f'<input type="text" name="{key}" id="f-{key}" data-key="{key}" data-default="" value="" '
                f'placeholder="default: {html.escape(per_objective)}">')
    attrs = f'name="{key}" id="f-{key}" data-key="{key}" data-default="{html.escape(default)}"' + (
        " data-text" if kind == "text" else "")  # text as typed; other values are read as YAML (app.js too)
    if kind == "bool":
        return f'<input type="checkbox" {attrs}{" checked" if default == "true" else ""}>'
    if kind == "choice":
        opts = ([""] if {"type": "null"} in _variants(prop) else []) + [str(c) for c in choices(prop)]
        return f"<select {attrs}>" + "".join(
            f'<option value="{html.escape(o)}"{" selected" if o == default else ""}>{html.escape(o) or "(none)"}'
            "</option>" for o in opts) + "</select>"
    if key in ("model_family", "model_flavour"):
        return family_menu(key, attrs, default)
    extra = ' list="models"' if key == "pretrained_model_name_or_path" else ""
    return f'<input type="text" {attrs} value="{html.escape(default)}"{extra}>'


def family_menu(key: str, attrs: str, default: str) -> str:
    """model_family: a menu of the registered families; model_flavour: each family's flavours (data-family tells
    app.js which to show), and "(default)"."""
    from ..families.registry import FAMILIES

    if key == "model_family":
        opts = [(name, name, "") for name in FAMILIES]
    else:
        opts = [("", "(the family's default)", "")] + [
            (f, f, fam) for fam, family in FAMILIES.items()
            for f in [*(x for x in family.flavours if x), *family.flavour_families]]
    return f"<select {attrs}>" + "".join(
        f'<option value="{html.escape(v)}"{f" data-family={chr(34)}{fam}{chr(34)}" if fam else ""}'
        f'{" selected" if v == default else ""}>{html.escape(text)}</option>' for v, text, fam in opts) + "</select>"


def human(key: str, prop: dict) -> str:
    """The label people read: the schema's title ("Max Train Steps") in sentence case ("Max train steps")."""
    words = (prop.get("title") or key.replace("_", " ")).split()
    words = [ACRONYMS.get(w.lower(), w if k == 0 else w.lower()) for k, w in enumerate(words)]
    return " ".join(words)


def render_fields() -> str:
    """The settings as labelled inputs: the primary keys, then every other key in a collapsed section."""
    props = schema()["properties"]

    def row(key: str) -> str:
        prop = props[key]
        kind = "choice" if key in ("model_family", "model_flavour") else field_kind(prop)
        typ = {"choice": "one of the listed values", "bool": "true / false", "number": "number",
               "text": "text", "value": "YAML value (list, mapping, number or text), as --set"}[kind]
        default = objective_default(key, prop) or default_text(prop) or "none"
        help_ = html.escape(prop.get("description", ""))
        return (f'<div class="field" data-field="{key}"><label for="f-{key}">{html.escape(human(key, prop))} '
                f'<code>{key}</code></label>{_widget(key, prop)}'
                f'<div class="help">{help_} <span class="meta">({typ}; default {html.escape(default)})</span>'
                "</div></div>")

    keys = form_keys()
    first = [k for k in keys if k in PRIMARY]
    rest = [k for k in keys if k not in PRIMARY]
    from ..families.tiny import builders

    models = "".join(f'<option value="tiny:{m}">' for m in builders())  # or any hub id / local folder
    return ("".join(row(k) for k in first) + f'<datalist id="models">{models}</datalist>'
            + f'<details><summary>All settings ({len(rest)} more)</summary>{"".join(row(k) for k in rest)}'
            "</details>")


def parse_settings(text: str | None) -> dict[str, Any]:
    """The form's `settings` field (a JSON object of key -> text as typed) -> raw config values. Text-only keys
    stay text; the others are read as YAML scalars/lists, exactly as `--set key=value`. Empty means the default."""
    if not text:
        return {}
    try:
        given = json.loads(text)
    except ValueError as e:
        raise GlanceError(f"settings: not a JSON object ({e})") from None
    if not isinstance(given, dict):
        raise GlanceError("settings: expected a JSON object of key -> value")
    props = schema()["properties"]
    out: dict[str, Any] = {}
    for key, value in given.items():
        if key in SERVER_KEYS:
            raise GlanceError(f"settings: {key} is set by the server ({SERVER_KEYS[key]})")
        if key not in props:
            raise GlanceError(f"settings: unknown key {key!r}")
        if not isinstance(value, str):
            out[key] = value  # an API client may send typed JSON values; pydantic checks them
            continue
        if value.strip() == "":
            continue
        if field_kind(props[key]) == "text":
            out[key] = value
        else:
            try:
                out[key] = yaml.safe_load(value)
            except yaml.YAMLError:
                out[key] = value
    return out


async def json_body(request, what: str):
    """A request's JSON (FastAPI's Request): a malformed or absurdly nested body is one 400 line, never a 500."""
    try:
        return await request.json()
    except (ValueError, RecursionError):
        raise GlanceError(f"{what}: the body must be JSON (and nested less deeply)") from None


def whole_number(value, key: str, lo: int, hi: int, unit: str = "") -> int:
    """A JSON body's whole number (digits as text too) within [lo, hi], else one line naming `key`."""
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise GlanceError(f"{key}: {value!r} is not a whole number{unit} from {lo} to {hi}")
    return value


async def one_upload(request, field: str, what: str) -> tuple[str, bytes]:
    """The one file of a multipart form (FastAPI's Request), sent as `field`: (its file name, its bytes). A body over
    the size limit stays a 413; a malformed one, another field or no file is one 400 line naming `what`."""
    hint = f"send one file as the multipart form field {field!r}"
    try:
        form = await request.form(max_files=1, max_fields=1)
    except BodyTooLarge:
        raise
    except Exception as e:  # noqa: BLE001 - the multipart parser's errors: a malformed body, or over a limit
        raise GlanceError(f"{what}: malformed upload ({type(e).__name__}); {hint}") from None
    value = form.get(field)
    if value is None or not hasattr(value, "read") or set(form.keys()) != {field}:
        raise GlanceError(f"{what}: {hint}")
    return value.filename or field, await value.read()
