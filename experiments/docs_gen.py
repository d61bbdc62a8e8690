"""Reference pages of the documentation, generated from the code so that they cannot drift from it.

`docs/hooks.py` calls `pages()` while `mkdocs build` runs and adds the Markdown it returns to the
site; `tests/test_docs.py` calls the same functions to check that every config key, CLI command,
registered plugin and cost-model constant is on its page. Nothing here imports MkDocs.

Sources, one per page:

- run config, sweep file, plan file: the pydantic models' JSON Schema (`config_schema()`,
  `SweepSpec`, `PlanSpec`), with defaults produced by ``default_factory`` taken from the models;
- CLI: the typer app of `experiments.cli`, walked command by command;
- plugins: `sim.registry.REGISTRY` after importing every module that registers built-ins;
- constants: `sim.cost.constants_table()`, `sim.cost.gpu_overrides_table()`, the engine profiles of
  ``sim/catalog/engines.yaml`` and the fitted constants of `sim.memory` (value from the module,
  source from the comment written above each);
- API: one page per public module, rendered by mkdocstrings (or, without it, a plain list of the
  module's public names and the first line of their docstrings).
"""
from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
import json
import pkgutil
import re
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

# Modules whose import registers the built-in plugins (policies, workloads, arrival processes, ...).
PLUGIN_MODULES = (
    "policies.batching", "policies.request_batching", "policies.ordering", "policies.victims", "policies.memory",
    "policies.admission", "policies.routing", "policies.speculative", "topologies.builders", "workloads.build", "workloads.arrivals", "workloads.lengths", "workloads.formats",
    "workloads.traces", "workloads.sessions", "workloads.shared_prefix", "workloads.closed_loop",
    "policies.kv_eviction", "policies.multimodal", "policies.result_cache", "policies.autoscaling",
)

# Packages documented in the API reference, and module prefixes left out of it (scripts, not API).
API_PACKAGES = ("servesim", "sim", "policies", "topologies", "workloads", "experiments")
API_EXCLUDE = ("experiments.validation", "experiments.benchmarks", "experiments.examples")

# What each plugin kind is for, and the config key that names a plugin of that kind.
PLUGIN_KINDS = {
    "scheduler": ("Batching schedulers: which requests run in the next iteration and how many tokens each "
                  "computes.", "scheduler"),
    "workload": ("Workload generators: turn a `workload:` section into a request stream.", "workload.type"),
    "arrival": ("Open-loop arrival processes.", "workload.arrival.process"),
    "length": ("Token-length distributions (for every `*_len` key).", "workload.input_len.dist"),
    "trace_format": ("Trace file loaders.", "workload.format"),
    "ordering": ("Orders of the waiting queue.", "ordering"),
    "victim": ("Which running request is preempted when KV blocks run out.", "preemption_victim"),
    "preemption": ("What a preempted request's KV becomes.", "engine.preemption_mode"),
    "kv_allocation": ("How KV memory is reserved for a request.", "kv_allocation"),
    "admission": ("Admission control at arrival; refused requests are counted.", "admission.type"),
    "speculative": ("Speculative-decoding drafters.", "speculative.method"),
    "router": ("Routers: which replica of a pool serves an arriving request.", "router"),
    "topology": ("Cluster topology builders.", "cluster.topology"),
    "kv_eviction": ("Token eviction from the KV cache (a KV budget per sequence).", "kv_eviction.type"),
    "encoder_mode": ("Where multimodal encoders run: inline on the replica, or a separate encoder pool.",
                     "multimodal.mode"),
    "result_cache": ("Result caches in front of the engine.", "result_cache.type"),
    "autoscaler": ("Autoscaling policies: how many replicas a pool should have.", "autoscaling.policy"),
}

# Kinds that are serving policies (`servesim catalog policies`).
POLICY_KINDS = ("scheduler", "ordering", "preemption", "victim", "admission", "kv_allocation", "speculative", "router",
                "kv_eviction", "encoder_mode", "result_cache", "autoscaler")

# Units of the engine-profile fields (sim.cost.EngineProfile); see the comment in engines.yaml.
ENGINE_FIELD_UNITS = {
    "step_overhead_s": "s per step",
    "per_seq_overhead_s": "s per running sequence per step",
    "per_prefill_seq_overhead_s": "s per sequence with prompt tokens in the step",
    "per_token_overhead_s": "s per new token of the step",
    "kernel_launch_s": "s per kernel launched from the host (without CUDA graphs)",
    "allreduce_latency_s": "s per TP all-reduce up to small_allreduce_max_bytes",
    "small_allreduce_max_bytes": "bytes",
    "frontend_latency_s": "s per request (added to TTFT and E2E)",
    "cuda_graphs": "flag",
    "async_scheduling": "flag",
    "roofline_only": "flag",
}
_ENGINE_TEXT_FIELDS = ("name", "description", "source")

# Units of the fitted memory constants in sim/memory.py.
MEMORY_UNITS = {
    "NON_TORCH_OVERHEAD_BYTES": "bytes per GPU",
    "ACTIVATION_FACTOR": "x (hidden + 2 x intermediate / tp) x activation bytes, per batched token",
    "SAMPLER_VOCAB_COPIES": "fp32 [max_num_seqs, vocab] tensors",
}

GENERATED_NOTE = ("<!-- Generated at build time by experiments/docs_gen.py ({fn}); edit the code it reads, "
                  "not this page. -->\n\n")


# ----------------------------------------------------------------------------- Markdown helpers

def cell(text: Any) -> str:
    """Text made safe for one Markdown table cell (no pipes or line breaks)."""
    return " ".join(str(text).split()).replace("|", "\\|")


def code(text: Any) -> str:
    """`text` as an inline code span (doubling the fence when the text holds a backtick)."""
    s = str(text)
    return f"`` {s} ``" if "`" in s else f"`{s}`"


def num(value: Any) -> str:
    """A number as a table shows it: integers whole, floats to 6 significant digits."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _table(header: list[str], rows: Iterable[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _json(value: Any) -> str:
    return json.dumps(value, default=str)


# ----------------------------------------------------------------------------- config schemas

def _pydantic_models(root: type) -> dict[str, type]:
    """Every pydantic model reachable from `root` through field annotations, by class name."""
    from pydantic import BaseModel

    found: dict[str, type] = {}

    def visit(tp: Any) -> None:
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            if tp.__name__ in found:
                return
            found[tp.__name__] = tp
            for f in tp.model_fields.values():
                visit(f.annotation)
            return
        for arg in typing.get_args(tp):
            visit(arg)

    visit(root)
    return found


def _factory_default(models: dict[str, type], model: str, key: str) -> tuple[bool, Any]:
    """(found, value) of a field's ``default_factory`` result; the JSON Schema leaves these out."""
    cls = models.get(model)
    field = getattr(cls, "model_fields", {}).get(key) if cls is not None else None
    if field is None or field.default_factory is None:
        return False, None
    try:
        value = field.default_factory()
    except TypeError:           # a factory that wants the validated data: not a constant
        return False, None
    return True, value


@dataclasses.dataclass
class SchemaSection:
    """One object type of a schema: its keys as table rows, and the dotted paths it appears at."""

    name: str
    anchor: str
    description: str
    used_at: list[str]
    rows: list[dict[str, str]]


class _SchemaWalker:
    """Renders pydantic's JSON Schema: one section per object type, one row per key."""

    def __init__(self, schema: dict, models: dict[str, type] | None = None) -> None:
        self.schema = schema
        self.defs: dict[str, dict] = schema.get("$defs", {})
        self.models = models or {}
        self.root = schema.get("title", "Root")

    # -- types --------------------------------------------------------------------------------
    @staticmethod
    def ref_name(ref: str) -> str:
        return ref.rsplit("/", 1)[-1]

    def link(self, name: str) -> str:
        return f"[{name}](#{name.lower()})"

    @staticmethod
    def constraints(s: dict) -> list[str]:
        out = []
        for key, sym in (("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<="), ("exclusiveMaximum", "<")):
            if key in s:
                out.append(f"{sym} {num(s[key])}")
        if "minItems" in s:
            out.append(f"at least {s['minItems']} item{'s' if s['minItems'] != 1 else ''}")
        if "maxItems" in s:
            out.append(f"at most {s['maxItems']} items")
        if "minLength" in s:
            out.append(f"length >= {s['minLength']}")
        if "pattern" in s:
            out.append(f"matches {code(s['pattern'])}")
        return out

    def describe(self, s: dict) -> tuple[str, list[str]]:
        """(type text, allowed-value notes) of a property schema."""
        if "$ref" in s:
            return self.link(self.ref_name(s["$ref"])), []
        options = s.get("oneOf") or s.get("anyOf")
        if options:
            disc = s.get("discriminator")
            if disc:
                prop = disc["propertyName"]
                mapping = disc.get("mapping", {})
                kinds = [f"{self.link(self.ref_name(ref))}" for ref in mapping.values()]
                return "one of " + ", ".join(kinds), [f"{code(prop)}: " + ", ".join(code(v) for v in mapping)]
            real = [o for o in options if o.get("type") != "null"]
            parts = [self.describe(o) for o in real]
            text = " or ".join(dict.fromkeys(p[0] for p in parts))
            if len(real) < len(options):
                text += " or null"
            return text, [a for p in parts for a in p[1]]
        if "enum" in s:
            return "string" if all(isinstance(v, str) for v in s["enum"]) else "value", \
                ["one of " + ", ".join(code(_json(v) if not isinstance(v, str) else v) for v in s["enum"])]
        if "const" in s:
            return "string" if isinstance(s["const"], str) else "value", [code(s["const"])]
        t = s.get("type")
        if t == "array":
            item, allowed = self.describe(s.get("items") or {})
            return f"list of {item}", self.constraints(s) + [f"items: {a}" for a in allowed]
        if t == "object":
            extra = s.get("additionalProperties")
            if isinstance(extra, dict) and extra:
                value, allowed = self.describe(extra)
                return f"mapping of string to {value}", allowed
            return "mapping", []
        names = {"integer": "integer", "number": "number", "string": "string", "boolean": "boolean", "null": "null"}
        if isinstance(t, list):
            return " or ".join(names.get(x, x) for x in t), self.constraints(s)
        return names.get(t, "any"), self.constraints(s)

    def refs(self, s: dict) -> list[tuple[str, str]]:
        """(def name, path suffix) of every object type a property schema leads to."""
        out: list[tuple[str, str]] = []
        if "$ref" in s:
            out.append((self.ref_name(s["$ref"]), ""))
        for key in ("oneOf", "anyOf", "allOf"):
            for o in s.get(key, []):
                out += self.refs(o)
        if s.get("type") == "array" and isinstance(s.get("items"), dict):
            out += [(n, "[]" + suffix) for n, suffix in self.refs(s["items"])]
        extra = s.get("additionalProperties")
        if isinstance(extra, dict):
            out += [(n, ".<key>" + suffix) for n, suffix in self.refs(extra)]
        return out

    # -- sections -------------------------------------------------------------------------------
    def object_schema(self, name: str) -> dict:
        return self.schema if name == self.root else self.defs[name]

    def sections(self) -> list[SchemaSection]:
        order = [self.root]
        used: dict[str, list[str]] = {self.root: []}
        i = 0
        while i < len(order):                      # breadth first: a type follows the first type using it
            name = order[i]
            i += 1
            obj = self.object_schema(name)
            for key, prop in obj.get("properties", {}).items():
                for target, suffix in self.refs(prop):
                    if target not in used:
                        used[target] = []
                        order.append(target)
        order += [n for n in self.defs if n not in used]
        for n in order:
            used.setdefault(n, [])
        self._paths(self.root, "", used, set())
        return [self.section(n, used[n]) for n in order]

    def _paths(self, name: str, prefix: str, used: dict[str, list[str]], stack: set[str]) -> None:
        if name in stack:
            return
        obj = self.object_schema(name)
        for key, prop in obj.get("properties", {}).items():
            path = f"{prefix}.{key}" if prefix else key
            for target, suffix in self.refs(prop):
                p = path + suffix
                if p not in used[target]:
                    used[target].append(p)
                self._paths(target, p, used, stack | {name})

    def section(self, name: str, used_at: list[str]) -> SchemaSection:
        obj = self.object_schema(name)
        required = set(obj.get("required", []))
        rows = []
        for key, prop in obj.get("properties", {}).items():
            typ, allowed = self.describe(prop)
            if key in required:
                default = "required"
            elif "default" in prop:
                default = code(_json(prop["default"]))
            else:
                found, value = _factory_default(self.models, name, key)
                if found and hasattr(value, "model_dump"):
                    default = "each key at its default"
                elif found:
                    default = code(_json(value))
                else:
                    default = "not set"
            rows.append({"key": key, "type": typ, "default": default, "allowed": "; ".join(allowed),
                         "description": prop.get("description", "")})
        return SchemaSection(name, name.lower(), obj.get("description", ""), used_at, rows)


def schema_reference(schema: dict, title: str, intro: str, models: dict[str, type] | None = None) -> str:
    """A Markdown page documenting every key of a JSON Schema, one section per object type."""
    walker = _SchemaWalker(schema, models)
    out = [f"# {title}\n", intro.strip() + "\n"]
    for sec in walker.sections():
        out.append(f"## {sec.name} {{#{sec.anchor}}}\n")
        if sec.description:
            out.append(" ".join(sec.description.split()) + "\n")
        if sec.used_at:
            shown = sec.used_at[:12]
            more = f" and {len(sec.used_at) - 12} more" if len(sec.used_at) > 12 else ""
            out.append("Used at: " + ", ".join(code(p) for p in shown) + more + ".\n")
        else:
            out.append("The top level of the file.\n")
        if sec.rows:
            out.append(_table(["key", "type", "default", "allowed values", "description"],
                              ([code(r["key"]), cell(r["type"]), cell(r["default"]), cell(r["allowed"]),
                                cell(r["description"])] for r in sec.rows)))
    return "\n".join(out)


def config_reference() -> str:
    """The run-config reference: every key of `experiments.config.config_schema()`."""
    from experiments.config import RunConfig, config_schema

    intro = """
Every key of a run config (the YAML file `servesim run` reads, or the dict `servesim.run` takes),
generated from `experiments.config.config_schema()`, the JSON Schema that `servesim schema` prints.
Unknown keys are errors. Any key can be overridden from the command line with a dotted path:
`--set engine.max_num_seqs=64`, `--set workload.stages[1].rate=12` (list items by index). Below,
`[]` in a path stands for any list index and `<key>` for any mapping key; where a key takes one
of several object types, the field named under *allowed values* (`type`, `dist`, `process`)
picks the type.

Two shorthands are accepted besides the forms in the tables: `model: NAME` means
`model: {name: NAME}`, and a bare number where a length or time distribution is expected means a
fixed value (`output_len: 250` is `{dist: fixed, value: 250}`).
"""
    return GENERATED_NOTE.format(fn="config_reference") + schema_reference(
        config_schema(), "Run config reference", intro, _pydantic_models(RunConfig))


def sweep_file_reference() -> str:
    """The sweep-file reference (`servesim sweep`): every key of `experiments.sweep.SweepSpec`."""
    from experiments.sweep import SweepSpec

    intro = """
Every key of a sweep file (`servesim sweep FILE`), generated from `experiments.sweep.SweepSpec`.
The factors (`grid`, `zip`, `random.space`) are dotted run-config keys, as in `--set`; see the
[run config reference](config.md) for what they can be and [Compare policies with a
sweep](../how-to/sweep.md) for an example.
"""
    return GENERATED_NOTE.format(fn="sweep_file_reference") + schema_reference(
        SweepSpec.model_json_schema(), "Sweep file reference", intro, _pydantic_models(SweepSpec))


def plan_file_reference() -> str:
    """The plan-file reference (`servesim plan`): every key of `experiments.planner.PlanSpec`."""
    from experiments.planner import PlanSpec

    intro = """
Every key of a capacity-plan file (`servesim plan FILE`), generated from
`experiments.planner.PlanSpec`. `base`, `model` and `workload` hold run-config keys (see the
[run config reference](config.md)); [Size a deployment](../how-to/plan.md) walks through an
example.
"""
    return GENERATED_NOTE.format(fn="plan_file_reference") + schema_reference(
        PlanSpec.model_json_schema(), "Plan file reference", intro, _pydantic_models(PlanSpec))


# ----------------------------------------------------------------------------- CLI

def _cli_root():
    import typer.main

    from experiments.cli import app

    cmd = typer.main.get_command(app)
    return cmd, cmd.context_class(cmd, info_name="servesim")


def cli_commands() -> list[tuple[str, Any, Any]]:
    """(full command path, command, context) of every `servesim` command, groups included, in order."""
    root, ctx = _cli_root()
    out = [("servesim", root, ctx)]

    def walk(group, gctx) -> None:
        for name in group.list_commands(gctx):
            sub = group.get_command(gctx, name)
            if sub is None or getattr(sub, "hidden", False):
                continue
            sctx = sub.context_class(sub, info_name=name, parent=gctx)
            out.append((sctx.command_path, sub, sctx))
            if hasattr(sub, "list_commands"):
                walk(sub, sctx)

    walk(root, ctx)
    return out


def _param_row(param, ctx) -> list[str] | None:
    if getattr(param, "hidden", False):
        return None
    record = param.get_help_record(ctx)
    if record is None:                       # click's plain Argument has no help record
        record = (param.name.upper(), getattr(param, "help", "") or "")
    decl, text = record
    kind = "argument" if getattr(param, "param_type_name", "") == "argument" else "option"
    if getattr(param, "multiple", False):
        text = (text + " Repeatable.").strip()
    return [code(decl), kind, cell(text)]


def cli_reference() -> str:
    """The CLI reference: every `servesim` command with its usage, help and options."""
    out = [GENERATED_NOTE.format(fn="cli_reference"), "# Command-line reference\n",
           "Every `servesim` command, generated from the typer app in `experiments.cli`. Each one also takes "
           "`--help`. A user mistake (a bad config key, an unknown GPU, a malformed trace) ends the command "
           "with one line on stderr and exit code 2.\n"]
    for path, cmd, ctx in cli_commands():
        level = "##" if path.count(" ") <= 1 else "###"
        out.append(f"{level} `{path}`\n")
        help_text = inspect.cleandoc(cmd.help or "")
        if help_text:
            out.append(help_text + "\n")
        pieces = " ".join(cmd.collect_usage_pieces(ctx))
        out.append(f"```\n{path} {pieces}\n```\n")
        if hasattr(cmd, "list_commands"):
            subs = [n for n in cmd.list_commands(ctx) if not getattr(cmd.get_command(ctx, n), "hidden", False)]
            out.append("Commands: " + ", ".join(code(f"{path} {n}") for n in subs) + ".\n")
            continue
        rows = [r for r in (_param_row(p, ctx) for p in cmd.get_params(ctx)) if r is not None]
        if rows:
            out.append(_table(["parameter", "kind", "description"], rows))
    return "\n".join(out)


# ----------------------------------------------------------------------------- plugins

def load_plugins():
    """Import every module that registers built-in plugins; returns `sim.registry.REGISTRY`."""
    for mod in PLUGIN_MODULES:
        importlib.import_module(mod)
    from sim.registry import REGISTRY

    return REGISTRY


def plugin_table() -> list[dict[str, str]]:
    """Every registered plugin: kind, name, one-line summary and where it is defined."""
    registry = load_plugins()
    rows = []
    for kind in registry.kinds():
        for spec in registry.specs(kind):
            obj = spec.load()
            summary = spec.summary or _first_line(obj)
            where = f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', getattr(obj, '__name__', '?'))}"
            rows.append({"kind": kind, "name": spec.name, "summary": summary, "defined_in": where,
                         "lazy": spec.entry_point or ""})
    return rows


def policy_table() -> list[dict[str, Any]]:
    """Every serving-policy plugin (`POLICY_KINDS`): kind, config key, name, summary and its options with their
    defaults and descriptions."""
    from sim.registry import plugin_options

    registry = load_plugins()
    rows = []
    for kind in POLICY_KINDS:
        for spec in registry.specs(kind):
            obj = spec.load()
            model = plugin_options(obj)
            options = {}
            if model is not None:
                for fname, f in model.model_fields.items():
                    default = f.get_default(call_default_factory=True)
                    options[fname] = {"default": default, "description": f.description or ""}
            rows.append({"kind": kind, "config_key": PLUGIN_KINDS.get(kind, ("", kind))[1], "name": spec.name,
                         "summary": spec.summary or _first_line(obj), "options": options})
    return rows


def _first_line(obj: Any) -> str:
    doc = inspect.getdoc(obj) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def plugin_reference() -> str:
    """The plugin reference: every entry of the registry, by kind, with its one-line docstring."""
    rows = plugin_table()
    out = [GENERATED_NOTE.format(fn="plugin_reference"), "# Plugin reference\n",
           "Every plugin registered in `sim.registry.REGISTRY` once the built-in modules are imported, "
           "generated from the registry itself; the summary is the first line of each plugin's docstring. "
           "A config names a plugin by kind and name (`scheduler: vllm`, `workload: {type: poisson, ...}`); "
           "[Add a policy](../how-to/add-policy.md) shows how to register your own.\n"]
    kinds: dict[str, list[dict[str, str]]] = {}
    for r in rows:
        kinds.setdefault(r["kind"], []).append(r)
    for kind, items in kinds.items():
        what, key = PLUGIN_KINDS.get(kind, ("", ""))
        out.append(f"## {kind}\n")
        if what:
            out.append(f"{what} Chosen by {code(key)}.\n")
        out.append(_table(["name", "summary", "defined in"],
                          ([code(r["name"]), cell(r["summary"]),
                            code(r["defined_in"]) + (f" (lazy: {code(r['lazy'])})" if r["lazy"] else "")]
                           for r in items)))
    return "\n".join(out)


# ----------------------------------------------------------------------------- constants

def engine_profile_rows() -> list[dict[str, Any]]:
    """Every engine profile of sim/catalog/engines.yaml: name, description, source and its numeric/flag
    fields as (field, value, unit)."""
    from sim.cost import list_engine_profiles

    out = []
    for prof in list_engine_profiles():
        fields = []
        for f in dataclasses.fields(prof):
            if f.name in _ENGINE_TEXT_FIELDS:
                continue
            value = getattr(prof, f.name)
            fields.append((f.name, value, ENGINE_FIELD_UNITS.get(f.name) or _unit_from_name(f.name, value)))
        out.append({"name": prof.name, "description": prof.description, "source": prof.source, "fields": fields})
    return out


def _unit_from_name(name: str, value: Any) -> str:
    if isinstance(value, bool):
        return "flag"
    if name.endswith("_s"):
        return "s"
    if name.endswith("_bytes"):
        return "bytes"
    if name.endswith("_eff"):
        return "fraction of peak"
    if isinstance(value, dict):
        return "per-constant replacements"
    return "see sim/catalog/engines.yaml"


def _value_text(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k} = {num(v)}" for k, v in value.items()) or "none"
    return num(value)


def memory_constants() -> list[dict[str, Any]]:
    """The fitted constants of `sim.memory`: name, value, unit and source (the comment above each)."""
    import sim.memory as memory

    lines = inspect.getsource(memory).splitlines()
    out = []
    for i, line in enumerate(lines):
        m = re.match(r"^([A-Z][A-Z0-9_]*)\s*(?::[^=]+)?=", line)
        if not m:
            continue
        name = m.group(1)
        value = getattr(memory, name, None)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        comment: list[str] = []
        j = i - 1
        while j >= 0 and lines[j].lstrip().startswith("#"):
            comment.insert(0, lines[j].lstrip()[1:].strip())
            j -= 1
        if not comment:
            continue                      # a unit (GIB), not a fitted constant
        paragraphs = " ".join(x if x else "\n" for x in comment).split("\n")
        paragraphs = [" ".join(p.split()) for p in paragraphs if p.strip()]
        out.append({"name": name, "value": value, "unit": MEMORY_UNITS.get(name, _unit_from_name(name.lower(), value)),
                    "source": paragraphs[-1], "context": paragraphs[:-1]})
    return out


def constants_reference() -> str:
    """The constants page: every kernel constant, per-GPU replacement, engine profile and memory constant."""
    from sim.cost import constants_table, gpu_overrides_table

    out = [GENERATED_NOTE.format(fn="constants_reference"), "# Cost-model constants\n",
           "Every named constant of the cost model, with its value, unit and where the value comes from, "
           "generated from the code when the docs are built (`sim.cost.constants_table()`, "
           "`sim.cost.gpu_overrides_table()`, `sim/catalog/engines.yaml`, `sim/memory.py`). "
           "[The cost model](cost-model.md) shows where each one enters the equations; "
           "[Validation](../VALIDATION.md) has the fits and the error tables. "
           "`servesim catalog constants` and `servesim catalog engines` print the same from the command line.\n",
           "## Kernel constants (`sim.cost.KernelConstants`)\n",
           "Achieved fractions of peak and fixed per-kernel costs; the defaults are the A100-fitted values.\n",
           _table(["name", "value", "unit", "source"],
                  ([code(r["name"]), num(r["value"]), cell(r["unit"]), cell(r["source"])] for r in constants_table()))]
    overrides = gpu_overrides_table()
    out.append("## Per-GPU-generation replacements (`sim.cost.kernel_constants`)\n")
    if overrides:
        out.append("On these parts the values below replace the defaults above.\n")
        out.append(_table(["name", "GPUs", "value", "unit", "source"],
                          ([code(r["name"]), cell(r["gpus"]), num(r["value"]), cell(r["unit"]), cell(r["source"])]
                           for r in overrides)))
    else:
        out.append("None at present: every GPU uses the defaults above.\n")
    out.append("## Engine profiles (`sim/catalog/engines.yaml`)\n")
    out.append("The host-side cost of a serving step, which the roofline cannot see; a run picks one with "
               "`engine.profile`.\n")
    for prof in engine_profile_rows():
        out.append(f"### `{prof['name']}`\n")
        out.append(" ".join(str(prof["description"]).split()) + "\n")
        out.append(_table(["field", "value", "unit"],
                          ([code(f), cell(_value_text(v)), cell(u)] for f, v, u in prof["fields"])))
        out.append(f"Source: {' '.join(str(prof['source']).split())}\n")
    mem = memory_constants()
    out.append("## GPU memory (`sim.memory`)\n")
    out.append("How much memory is left for KV blocks once weights, activations and the rest are counted "
               "([KV memory](kv-memory.md)).\n")
    if mem:
        context = list(dict.fromkeys(p for r in mem for p in r["context"]))
        out += [p + "\n" for p in context]
        out.append(_table(["name", "value", "unit", "source"],
                          ([code(r["name"]), num(r["value"]), cell(r["unit"]), cell(r["source"])] for r in mem)))
    return "\n".join(out)


# ----------------------------------------------------------------------------- API

def api_modules() -> list[str]:
    """Public modules of the API packages (no leading underscore, no scripts), sorted."""
    found: list[str] = []

    def walk(directory: Path, prefix: str) -> None:      # like pkgutil.walk_packages, without importing
        for info in pkgutil.iter_modules([str(directory)]):
            name = f"{prefix}.{info.name}"
            if info.name.startswith("_") or name.startswith(API_EXCLUDE):
                continue
            found.append(name)
            if info.ispkg:
                walk(directory / info.name, name)

    for pkg in API_PACKAGES:
        found.append(pkg)
        walk(ROOT / pkg, pkg)
    return sorted(dict.fromkeys(found))


def api_page(module: str, mkdocstrings: bool = True) -> str:
    """The API page of one module: a mkdocstrings block, or (without mkdocstrings) a plain listing."""
    if mkdocstrings:
        return f"# `{module}`\n\n::: {module}\n"
    mod = importlib.import_module(module)
    out = [f"# `{module}`\n", (inspect.getdoc(mod) or "").strip() + "\n"]
    rows = []
    for name, obj in vars(mod).items():
        if name.startswith("_") or getattr(obj, "__module__", None) != module:
            continue
        if inspect.isclass(obj) or inspect.isfunction(obj):
            rows.append([code(name), "class" if inspect.isclass(obj) else "function", cell(_first_line(obj))])
    if rows:
        out.append(_table(["name", "kind", "summary"], rows))
    return "\n".join(out)


def api_index(modules: list[str] | None = None) -> str:
    """The API reference's front page: every documented module with the first line of its docstring."""
    modules = modules or api_modules()
    rows = []
    for name in modules:
        doc = _module_docstring(name)
        first = doc.strip().splitlines()[0] if doc.strip() else ""
        rows.append([f"[`{name}`]({name}.md)", cell(first)])
    return (GENERATED_NOTE.format(fn="api_index") + "# API reference\n\n"
            "The Python API, rendered from the docstrings of every public module (the one-import facade "
            "`servesim` re-exports the entry points). The validation, benchmark and example scripts under "
            "`experiments/` are scripts, not API, and are left out.\n\n"
            + _table(["module", "what it is for"], rows))


def _module_docstring(name: str) -> str:
    path = _module_path(name)
    if path is None:
        return ""
    return ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""


def _module_path(name: str) -> Path | None:
    p = ROOT.joinpath(*name.split("."))
    if (p / "__init__.py").is_file():
        return p / "__init__.py"
    if p.with_suffix(".py").is_file():
        return p.with_suffix(".py")
    return None


def docstring_gaps(modules: Iterable[str] | None = None, skip: Iterable[str] = ()) -> list[str]:
    """Public modules, classes, functions and methods without a docstring, as ``module:qualname``.

    Read from the source (nothing is imported). `skip` holds ``module`` or ``module:qualname`` entries.
    """
    skip = set(skip)
    gaps = []
    for name in modules or api_modules():
        if name in skip:
            continue
        path = _module_path(name)
        if path is None:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        if not ast.get_docstring(tree):
            gaps.append(f"{name}:")

        def walk(node: ast.AST, prefix: str) -> None:
            for n in getattr(node, "body", []):
                if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and not n.name.startswith("_"):
                    qual = prefix + n.name
                    if not ast.get_docstring(n) and f"{name}:{qual}" not in skip:
                        gaps.append(f"{name}:{qual}")
                    if isinstance(n, ast.ClassDef):
                        walk(n, qual + ".")

        walk(tree, "")
    return gaps


# ----------------------------------------------------------------------------- all pages

def pages(mkdocstrings: bool = True) -> dict[str, str]:
    """Every generated page: path under docs/ -> Markdown."""
    out = {
        "reference/config.md": config_reference(),
        "reference/sweep-file.md": sweep_file_reference(),
        "reference/plan-file.md": plan_file_reference(),
        "reference/cli.md": cli_reference(),
        "reference/plugins.md": plugin_reference(),
        "concepts/constants.md": constants_reference(),
    }
    modules = api_modules()
    out["reference/api/index.md"] = api_index(modules)
    for name in modules:
        out[f"reference/api/{name}.md"] = api_page(name, mkdocstrings)
    return out


__all__ = ["api_index", "api_modules", "api_page", "cli_commands", "cli_reference", "config_reference",
           "constants_reference", "docstring_gaps", "engine_profile_rows", "load_plugins", "memory_constants",
           "pages", "plan_file_reference", "plugin_reference", "plugin_table", "schema_reference",
           "sweep_file_reference"]
