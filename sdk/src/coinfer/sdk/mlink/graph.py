"""Every link among a set of models, and one ensemble per target: what a deployment loads.

:meth:`LinkGraph.train` takes aligned outputs of every model (row ``n`` of each model
comes from the same time step), trains g_ij for every ordered pair (or the pairs given)
and h_{A,j} for every target, and keeps one token vocabulary per sequence model so all
links into and out of it agree. :meth:`LinkGraph.predict` fills in the models that were
not executed. A graph saves as one artifact (manifest + safetensors weights).

Example::

    graph = LinkGraph.train(outputs, specs, LinkOptions(epochs=60))
    scores = graph.link_performance(validation_outputs)        # {(source, target): p}
    predicted = graph.predict({"faces": face_out, "vad": vad_out})   # the other models
    graph.save("out/links")
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from coinfer.sdk.artifact import ArtifactError, Manifest, load_artifact, save_artifact
from coinfer.sdk.mlink.ensemble import Ensemble
from coinfer.sdk.mlink.links import Endpoint, Link, LinkError, LinkOptions
from coinfer.sdk.mlink.metrics import performance
from coinfer.sdk.mlink.outputs import OutputError, OutputSpec, Vocabulary

KIND = "link-graph"
WEIGHTS_FILE = "weights.safetensors"
NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
#: Bounds checked before a saved graph is rebuilt.
MAX_MODELS = 64
MAX_VOCABULARY = 100_000


def check_names(names: Iterable[str]) -> list[str]:
    names = list(names)
    bad = [name for name in names if not isinstance(name, str) or not NAME.match(name)]
    if bad:
        raise LinkError(f"model names are 1-64 letters, digits, '-' or '_'; got {bad[:3]}")
    if not 2 <= len(names) <= MAX_MODELS:
        raise LinkError(f"a link graph needs 2 to {MAX_MODELS} models, got {len(names)}")
    return names


@dataclass
class LinkGraph:
    """Models' output formats, their links g_ij and their ensembles h_j."""

    endpoints: dict[str, Endpoint]
    links: dict[tuple[str, str], Link]
    ensembles: dict[str, Ensemble]
    options: LinkOptions

    @property
    def models(self) -> list[str]:
        return list(self.endpoints)

    @staticmethod
    def create(specs: Mapping[str, OutputSpec], vocabularies: Mapping[str, Vocabulary] | None = None,
               options: LinkOptions | None = None,
               pairs: Iterable[tuple[str, str]] | None = None) -> LinkGraph:
        """Untrained links (seeded) for ``pairs`` (default: every ordered pair)."""
        options = options or LinkOptions()
        names = check_names(specs)
        vocabularies = dict(vocabularies or {})
        endpoints = {}
        for name in names:
            if specs[name].is_sequence and name not in vocabularies:
                raise LinkError(f"model {name!r} outputs sequences: give its vocabulary")
            vocabulary = vocabularies.get(name) if specs[name].is_sequence else None
            endpoints[name] = Endpoint(specs[name], vocabulary)
        pairs = list(itertools.permutations(names, 2) if pairs is None else pairs)
        for source, target in pairs:
            if source not in endpoints or target not in endpoints or source == target:
                raise LinkError(f"bad link {source!r} -> {target!r}: both must be distinct known models")
        links = {(source, target): Link.create(endpoints[source], endpoints[target],
                                               LinkOptions(**{**options.__dict__, "seed": options.seed + k}))
                 for k, (source, target) in enumerate(pairs)}
        ensembles = {}
        for target in names:
            into = {source: link for (source, end), link in links.items() if end == target}
            if into:
                ensembles[target] = Ensemble(endpoints[target], into, options)
        return LinkGraph(endpoints, links, ensembles, options)

    @staticmethod
    def train(outputs: Mapping[str, Any], specs: Mapping[str, OutputSpec], options: LinkOptions | None = None,
              pairs: Iterable[tuple[str, str]] | None = None,
              progress: Callable[[str], None] | None = None) -> LinkGraph:
        """Train every link on aligned ``outputs``, then every ensemble."""
        names = check_names(specs)
        missing = [name for name in names if name not in outputs]
        if missing:
            raise LinkError(f"no outputs for model(s) {missing}")
        try:
            vocabularies = {name: Vocabulary.build(specs[name].check(outputs[name], name))
                            for name in names if specs[name].is_sequence}
        except OutputError as error:
            raise LinkError(str(error)) from None
        graph = LinkGraph.create(specs, vocabularies, options, pairs)
        graph.fit(outputs, progress=progress)
        return graph

    def fit(self, outputs: Mapping[str, Any], epochs: int | None = None,
            progress: Callable[[str], None] | None = None) -> None:
        """(Re)train every link and ensemble on these aligned outputs."""
        self.check_aligned(outputs, self.models)
        for (source, target), link in self.links.items():
            if progress is not None:
                progress(f"{source}->{target}")
            link.fit(outputs[source], outputs[target], epochs)
        for target, ensemble in self.ensembles.items():
            if progress is not None:
                progress(f"ensemble->{target}")
            ensemble.fit({source: outputs[source] for source in ensemble.sources}, outputs[target], epochs)

    @staticmethod
    def check_aligned(outputs: Mapping[str, Any], names: Iterable[str]) -> int:
        counts = {name: len(outputs[name]) for name in names if name in outputs}
        if len(set(counts.values())) > 1:
            raise LinkError(f"outputs must align row by row; counts differ: {counts}")
        return next(iter(counts.values()), 0)

    def predict(self, executed: Mapping[str, Any], targets: Iterable[str] | None = None) -> dict[str, Any]:
        """Outputs of the models not in ``executed``, predicted by their ensembles from the
        executed ones (executed models' outputs are passed through)."""
        unknown = sorted(set(executed) - set(self.endpoints))
        if unknown:
            raise LinkError(f"unknown model(s) {unknown}; this graph links {self.models}")
        self.check_aligned(executed, executed)
        wanted = [name for name in (targets or self.models) if name not in executed]
        out = dict(executed)
        for name in wanted:
            if name not in self.ensembles:
                raise LinkError(f"no links into {name!r}")
            out[name] = self.ensembles[name].predict(executed)
        return out

    def link_performance(self, outputs: Mapping[str, Any]) -> dict[tuple[str, str], float]:
        """p(g_ij) on these outputs for every link."""
        self.check_aligned(outputs, self.models)
        return {(source, target): performance(self.endpoints[target].spec, link.predict(outputs[source]),
                                              outputs[target])
                for (source, target), link in self.links.items()}

    def ensemble_performance(self, outputs: Mapping[str, Any], executed: Iterable[str]) -> dict[str, float]:
        """p(h_{A,j}) of every non-executed target j, with A = ``executed``."""
        executed = list(executed)
        predicted = self.predict({name: outputs[name] for name in executed})
        return {name: performance(self.endpoints[name].spec, predicted[name], outputs[name])
                for name in self.models if name not in executed}

    def weights(self) -> dict[str, np.ndarray]:
        """Every parameter under ``link/SOURCE/TARGET/...`` and ``ensemble/TARGET/...``."""
        out = {}
        for (source, target), link in self.links.items():
            out.update({f"link/{source}/{target}/{name}": value for name, value in link.weights().items()})
        for target, ensemble in self.ensembles.items():
            out.update({f"ensemble/{target}/{name}": value for name, value in ensemble.weights().items()})
        return out

    def set_weights(self, weights: Mapping[str, np.ndarray]) -> None:
        """Replace every parameter; the names must be exactly those :meth:`weights` gives."""
        expected = set(self.weights())
        if set(weights) != expected:
            missing, extra = sorted(expected - set(weights)), sorted(set(weights) - expected)
            raise LinkError(f"weights do not fit this graph: missing {missing[:3]}, unexpected {extra[:3]}")
        for (source, target), link in self.links.items():
            prefix = f"link/{source}/{target}/"
            link.set_weights({name[len(prefix):]: value for name, value in weights.items()
                              if name.startswith(prefix)})
        for target, ensemble in self.ensembles.items():
            prefix = f"ensemble/{target}/"
            ensemble.set_weights({name[len(prefix):]: value for name, value in weights.items()
                                  if name.startswith(prefix)})

    def describe(self) -> dict[str, Any]:
        """Everything but the weights, as JSON-ready values (the artifact's metadata)."""
        return {
            "models": {name: {"output": endpoint.spec.describe(),
                              "vocabulary": list(endpoint.vocabulary.tokens) if endpoint.vocabulary else None}
                       for name, endpoint in self.endpoints.items()},
            "links": [[source, target] for source, target in self.links],
            "options": dict(self.options.__dict__),
        }

    @staticmethod
    def from_description(description: Mapping[str, Any]) -> LinkGraph:
        """An untrained graph shaped as ``description`` says (bounds checked first)."""
        try:
            models = description["models"]
            if not isinstance(models, dict) or len(models) > MAX_MODELS:
                raise LinkError(f"'models' must map at most {MAX_MODELS} names to outputs")
            specs, vocabularies = {}, {}
            for name, entry in models.items():
                specs[name] = OutputSpec.from_description(entry["output"])
                tokens = entry.get("vocabulary")
                if tokens is not None:
                    if not isinstance(tokens, list) or len(tokens) > MAX_VOCABULARY:
                        raise LinkError(f"vocabulary of {name!r} must be a list of at most "
                                        f"{MAX_VOCABULARY} ids")
                    vocabularies[name] = Vocabulary(tuple(int(token) for token in tokens))
            pairs = [(str(source), str(target)) for source, target in description["links"]]
            return LinkGraph.create(specs, vocabularies, LinkOptions(**description["options"]), pairs)
        except (KeyError, TypeError, ValueError) as error:
            raise LinkError(f"malformed link graph description: {error!r}") from None

    def save(self, path: str | os.PathLike, *, overwrite: bool = False) -> None:
        from safetensors.numpy import save

        manifest = Manifest(capability="mlink", kind=KIND, metadata=self.describe())
        save_artifact(path, manifest, {WEIGHTS_FILE: save(self.weights())}, overwrite=overwrite)

    @staticmethod
    def load(path: str | os.PathLike) -> LinkGraph:
        """A saved graph, hashes verified; any mismatch names the artifact and the problem."""
        from safetensors import SafetensorError
        from safetensors.numpy import load

        artifact = load_artifact(path, capability="mlink", kind=KIND)
        try:
            graph = LinkGraph.from_description(artifact.manifest.metadata)
            graph.set_weights(load(artifact.file(WEIGHTS_FILE).read_bytes()))
        except (LinkError, OutputError, SafetensorError) as error:
            raise ArtifactError(f"{artifact.path}: {error}") from error
        return graph

