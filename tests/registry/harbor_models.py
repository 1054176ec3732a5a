"""Checks of real responses against harborapi's pydantic models (generated from Harbor's swagger.yaml).

No Python or npm package ships Harbor's swagger.yaml itself (harbor-api-client
on PyPI is generated code without it; harborapi's models are generated from
it and kept up to date), so these models stand in for the document:

- `conforms` validates a JSON body against a model in pydantic's *strict*
  JSON mode (an integer must be a JSON integer, a boolean a JSON boolean; a
  time a string pydantic reads as a datetime), and then insists that every
  array, map and object field present is not ``null`` (Harbor sends ``[]``
  / ``{}`` or leaves the field out; the models accept null for everything,
  so strictness there has to be explicit). With `exact`, a field the model
  does not know is a failure too (for the endpoints added with this check).
"""

from __future__ import annotations

import json
import types
import typing
from typing import Any

from pydantic import BaseModel, RootModel


def _unwrap(annotation: Any) -> Any:
    """The type inside Optional[...] / X | None."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0] if len(args) == 1 else annotation
    return annotation


def _is_model(t: Any) -> bool:
    return isinstance(t, type) and issubclass(t, BaseModel)


def _container(t: Any) -> bool:
    origin = typing.get_origin(t)
    return origin in (list, dict) or t in (list, dict) or _is_model(t)


def conforms(model: type[BaseModel], data: Any, exact: bool = False, where: str = "$") -> None:
    """Raise AssertionError (naming the path) unless `data` is a valid, null-free `model`."""
    model.model_validate_json(json.dumps(data), strict=True)
    _walk(model, data, exact, where)


def _walk(model: type[BaseModel], data: Any, exact: bool, where: str) -> None:
    if issubclass(model, RootModel):
        return  # free-form maps (annotations, extra_attrs): their values are not Harbor-typed
    assert isinstance(data, dict), f"{where}: expected an object, got {type(data).__name__}"
    fields = {(f.alias or name): f for name, f in model.model_fields.items()}
    for key, value in data.items():
        field = fields.get(key)
        if field is None:
            assert not exact, f"{where}.{key}: Harbor's {model.__name__} has no such field"
            continue
        t = _unwrap(field.annotation)
        if _container(t):
            assert value is not None, f"{where}.{key}: null where Harbor sends {_describe(t)}"
        if _is_model(t):
            _walk(t, value, exact, f"{where}.{key}")
        elif typing.get_origin(t) is list:
            (item,) = typing.get_args(t) or (Any,)
            item = _unwrap(item)
            for i, element in enumerate(value):
                if _is_model(item):
                    _walk(item, element, exact, f"{where}.{key}[{i}]")


def _describe(t: Any) -> str:
    origin = typing.get_origin(t) or t
    return "an array" if origin is list else "an object"


def conforms_list(model: type[BaseModel], items: Any, exact: bool = False) -> None:
    assert isinstance(items, list), f"expected a JSON array, got {type(items).__name__}"
    for i, item in enumerate(items):
        conforms(model, item, exact, f"$[{i}]")
