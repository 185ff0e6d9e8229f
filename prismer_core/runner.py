"""Runs a set of experts over a batch of images, each once, in dependency order, validated."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .experts.contract import Expert, ExpertOutput
from .experts.validate import ExpertLoadError, ExpertOutputError, describe_batch, validate_outputs
from .registry import Registry, get_registry

logger = logging.getLogger("prismer")
#: The device notices already given in this process (each is said once).
_SAID: set[str] = set()


class ExpertRunner:
    """Holds loaded experts and labels batches with them.

    ``names`` are the experts the caller wants; their dependencies are run too (once) but
    only the requested ones are returned by :meth:`__call__`.
    """

    def __init__(
        self,
        names: Sequence[str],
        registry: Registry | None = None,
        device: str = "cpu",
        settings: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        self.registry = registry or get_registry()
        self.requested = list(names)
        self.order = self.registry.resolve(self.requested)
        settings = settings or {}
        self.experts: dict[str, Expert] = {
            name: self.registry.create(name, **dict(settings.get(name, {}))) for name in self.order
        }
        self.device = device
        self._loaded = False

    @property
    def specs(self):
        return {name: expert.spec for name, expert in self.experts.items()}

    def versions(self) -> dict[str, str]:
        return {name: self.experts[name].spec.version for name in self.requested}

    def device_for(self, name: str) -> str:
        """The runner's device when the expert declares it (``spec.devices``), else the first
        device it declares, with a notice (once per process) that it runs there."""
        devices = self.experts[name].spec.devices
        if self.device.split(":")[0] in devices:
            return self.device
        fallback = "cpu" if "cpu" in devices else devices[0]
        notice = f"expert '{name}' runs on {fallback}: it supports {', '.join(devices)}, not {self.device}"
        if notice not in _SAID:
            _SAID.add(notice)
            logger.warning(notice)
        return fallback

    def load(self) -> None:
        if not self._loaded:
            for name in self.order:
                try:
                    self.experts[name].load(self.device_for(name))
                except Exception as exc:
                    raise ExpertLoadError(name, f"load() raised {exc!r}", self._plugin(name)) from exc
            self._loaded = True

    def __call__(
        self, images: Sequence[np.ndarray], image_ids: Sequence[str]
    ) -> dict[str, list[ExpertOutput]]:
        """Return ``{expert name: [output per image]}`` for the requested experts."""
        self.load()
        results: dict[str, list[ExpertOutput]] = {}
        for name in self.order:
            expert = self.experts[name]
            context = {dep: results[dep] for dep in expert.spec.depends_on}
            try:
                outputs = expert.predict(images, context)
            except ExpertOutputError:
                raise
            except Exception as exc:
                raise self._predict_error(name, images, image_ids, context, exc) from exc
            results[name] = validate_outputs(expert.spec, outputs, images, image_ids, self._plugin(name))
        return {name: results[name] for name in self.requested}

    def _predict_error(
        self,
        name: str,
        images: Sequence[np.ndarray],
        image_ids: Sequence[str],
        context: Mapping[str, Sequence[ExpertOutput]],
        exc: Exception,
    ) -> ExpertOutputError:
        """Name the image that made ``predict`` raise: re-run a failed batch one image at a time."""
        culprit, cause = describe_batch(image_ids), exc
        if len(images) > 1:
            for i, image_id in enumerate(image_ids):
                single = {dep: [outputs[i]] for dep, outputs in context.items()}
                try:
                    self.experts[name].predict([images[i]], single)
                except Exception as single_exc:
                    culprit, cause = image_id, single_exc
                    break
        return ExpertOutputError(
            name, culprit, f"predict() raised {type(cause).__name__}: {cause}", self._plugin(name)
        )

    def _plugin(self, name: str) -> str:
        return self.registry.experts[name].plugin.package
